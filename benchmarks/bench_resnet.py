"""Benchmark Task 1's performance claims on synthetic CIFAR-sized images, both sides in one process.

1. Feature extraction: images/s of the frozen backbone at --img-size (resize on the
   device included, bf16 autocast and channels_last on CUDA), median of --repeats
   passes over the --n-train images.
2. The whole head-only baseline for --epochs epochs, two ways on the same images:
   cached   one backbone pass over train + test, then the linear head trains on the
            stored features (what Task1.py does);
   through  the head trains on features recomputed by the frozen backbone every
            epoch (test features extracted once, for the per-epoch validation).
   Prints both medians and the ratio through/cached.

CPU, small (the default; 2 minutes measured on a busy shared 2-core box, well under one idle):
    python benchmarks/bench_resnet.py
GPU, full size (ResNet-152, 224 px, bf16, CIFAR-10's 50,000 + 10,000 images):
    python benchmarks/bench_resnet.py --full
Weights are random (speed does not depend on their values), so nothing is downloaded.

3. --flops: no timing. Counts the FLOPs of every Task 1 experiment at Task1.py's
   defaults (torch.utils.flop_counter on meta tensors: convolutions and matmuls, a
   multiply-add = 2 FLOPs; BatchNorm, ReLU and adds are not counted) and turns them into
   an ESTIMATED GPU time at an assumed sustained throughput (--tflops for ResNet-152/18
   at 224 px, --tflops-small for the CIFAR ResNets at 32 px). CPU-side work (t-SNE,
   UMAP, logistic-regression probes) is not included. Seconds on CPU:
    python benchmarks/bench_resnet.py --flops
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import architecture  # noqa: E402
import common  # noqa: E402
import harness  # noqa: E402
import Task1  # noqa: E402

FULL = {"arch": "resnet152", "img_size": 224, "batch_size": 512, "n_train": 50000, "n_test": 10000, "epochs": 5,
        "repeats": 3}


def timed(fn, device):
    Task1.sync(device)
    t0 = time.perf_counter()
    out = fn()
    Task1.sync(device)
    return time.perf_counter() - t0, out


def forward_flops(model, x, train: bool = False) -> float:
    """FLOPs of one forward (train=False, no_grad) or forward + backward of `model` on x."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x).float().logsumexp(1).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return float(counter.get_total_flops())


def flop_estimates(tflops: float, tflops_small: float) -> dict:
    """Per-experiment FLOPs of `python Task1.py` at its defaults, and the seconds they
    take at the assumed sustained throughputs. Models live on the meta device: shapes
    only, no memory, no arithmetic."""
    a, r = Task1.build_parser().parse_args([]), Task1.RECIPE
    n_train, n_test = 50000, 10000  # CIFAR-10 (--train-size 0, --test-size 0 = all)
    t_train, t_test = a.transfer_train_size - r.transfer_val_size, 10000  # CIFAR-100 train subset, test
    s = a.img_size
    with torch.device("meta"):
        big = torchvision.models.get_model(a.arch, weights=None)
        small = {arch: torchvision.models.get_model(arch, weights=None) for arch in r.depth_archs if arch != a.arch}
        x = torch.empty(1, 3, s, s)
        fwd = forward_flops(big, x)
        cut_fwd = {}
        blocks = architecture.residual_blocks(big)
        sets = {"selected": Task1.resolve_blocks(a.arch, a.ablate_blocks), "all": blocks,
                **{f"layer{i}": [b for b in blocks if b.startswith(f"layer{i}.")] for i in range(1, 5)}}
        for name, cut in sets.items():
            with architecture.shortcuts_cut(big, cut):
                cut_fwd[name] = forward_flops(big, x)
        train = {}
        for strategy in Task1.TRANSFER_STRATEGIES:
            model = torchvision.models.get_model(a.arch, weights=None, num_classes=100)
            Task1.freeze_for_transfer(model, strategy)
            train[strategy] = forward_flops(model, x, train=True)
        grad = forward_flops(torchvision.models.get_model(a.arch, weights=None, num_classes=10), x, train=True)
        small_fwd = {arch: forward_flops(m, x) for arch, m in small.items()}
        xc = torch.empty(1, 3, 32, 32)
        cifar = {d: architecture.CifarResNet(d, r.scratch_width) for d in r.scratch_depths}
        cifar_train, cifar_fwd = ({d: forward_flops(m, xc, train=t) for d, m in cifar.items()} for t in (True, False))
    tput = (r.throughput_batches + 1) * a.eval_batch_size
    flops = {
        "baseline": (n_train + n_test) * fwd,
        "residual": sum((n_train + n_test) * f for f in cut_fwd.values()) + 2 * r.grad_batch * grad,
        "features": (a.n_vis + r.probe_train_size) * fwd,
        "transfer": sum(a.transfer_epochs * (t_train * train[st] + r.transfer_val_size * fwd) + t_test * fwd
                        for st in Task1.TRANSFER_STRATEGIES) * 2 + 3 * min(r.bn_calib_size, t_train) * fwd,
        "depth": sum((n_train + n_test) * f + tput * f for f in small_fwd.values()) + tput * fwd,
    }
    small_flops = {"scratch_shortcuts": 2 * a.scratch_epochs * sum(n_train * cifar_train[d] + n_test * cifar_fwd[d]
                                                                   for d in r.scratch_depths)}
    rows = {}
    for name, f in {**flops, **small_flops}.items():
        rate = (tflops_small if name in small_flops else tflops) * 1e12
        rows[name] = {"tflop": f / 1e12, "est_seconds": f / rate}
    per_image = {f"{a.arch}_fwd_gflop": fwd / 1e9, **{f"{k}_fwd_gflop": v / 1e9 for k, v in small_fwd.items()},
                 **{f"{a.arch}_train_{k}_gflop": v / 1e9 for k, v in train.items()},
                 **{f"cifar_resnet{d}_train_gflop": cifar_train[d] / 1e9 for d in r.scratch_depths},
                 **{f"cifar_resnet{d}_fwd_gflop": cifar_fwd[d] / 1e9 for d in r.scratch_depths}}
    return {"per_image": per_image, "experiments": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", default="resnet18", choices=Task1.RESNETS, help="backbone (default: resnet18)")
    p.add_argument("--img-size", type=int, default=64, help="resize 32 px images to this (default: 64)")
    p.add_argument("--batch-size", type=int, default=128, help="extraction batch (default: 128)")
    p.add_argument("--head-batch", type=int, default=256, help="head-training minibatch, as Task1 (default: 256)")
    p.add_argument("--n-train", type=int, default=384, help="synthetic training images (default: 384)")
    p.add_argument("--n-test", type=int, default=128, help="synthetic test images (default: 128)")
    p.add_argument("--epochs", type=int, default=3, help="head-training epochs (default: 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side; medians quoted (default: 3)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--full", action="store_true",
                   help="GPU sizes: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FULL.items()))
    p.add_argument("--flops", action="store_true",
                   help="count every Task 1 experiment's FLOPs at Task1.py's defaults and print estimated GPU times")
    p.add_argument("--tflops", type=harness.positive_float, default=100.0,
                   help="assumed sustained TFLOP/s for ResNet-152/18 at 224 px in bf16 (default: 100, about 10%% "
                        "of an H100 SXM's 989 dense bf16 peak)")
    p.add_argument("--tflops-small", type=harness.positive_float, default=15.0,
                   help="assumed sustained TFLOP/s for the CIFAR ResNet-56 at 32 px, whose 16-64-channel layers are "
                        "bound by memory traffic and kernel launches (default: 15)")
    args = p.parse_args(argv)
    if args.flops:
        est = flop_estimates(args.tflops, args.tflops_small)
        print("per image, GFLOP (multiply-add = 2):")
        for k, v in est["per_image"].items():
            print(f"  {k:32s} {v:10.3f}")
        print(f"\nTask1.py at its defaults, ESTIMATED GPU seconds at {args.tflops:g} TFLOP/s "
              f"({args.tflops_small:g} for scratch_shortcuts); GPU arithmetic only:")
        for k, v in est["experiments"].items():
            print(f"  {k:18s} {v['tflop']:10.1f} TFLOP  ~{v['est_seconds']:7.0f} s")
        total = sum(v["est_seconds"] for v in est["experiments"].values())
        print(f"  {'all':18s} {sum(v['tflop'] for v in est['experiments'].values()):10.1f} TFLOP  ~{total:7.0f} s")
        return est
    if args.full:
        for k, v in FULL.items():
            setattr(args, k, v)

    device = common.pick_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    common.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x_train = torch.randint(0, 256, (args.n_train, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    x_test = torch.randint(0, 256, (args.n_test, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    y_train = torch.randint(0, 10, (args.n_train,), generator=g).to(device)
    y_test = torch.randint(0, 10, (args.n_test,), generator=g).to(device)
    model = Task1.to_device(Task1.build_resnet(args.arch, "none"), device).eval()
    precision = common.precision_name(device) + (", channels_last" if device.type in common.CHANNELS_LAST else "")
    print(f"{args.arch} at {args.img_size} px, {precision}, extraction batch {args.batch_size}, "
          f"{args.n_train} train + {args.n_test} test synthetic images, {args.epochs} epochs, "
          f"{args.repeats} repeats", flush=True)

    def extract(x):
        return Task1.extract_features(model, x, args.img_size, args.batch_size, device)

    extract(x_train[:args.batch_size])  # warm-up: cuDNN autotuning, allocator, lazy init

    # (1) extraction throughput
    ips = [args.n_train / timed(lambda: extract(x_train), device)[0] for _ in range(args.repeats)]
    print(f"feature extraction: median {statistics.median(ips):.0f} images/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in ips)})", flush=True)

    # (2) the head-only baseline, cached vs through the backbone every epoch
    def cached():
        ftr, fte = extract(x_train), extract(x_test)
        gen = torch.Generator().manual_seed(0)
        head, _ = Task1.train_head(lambda: Task1.cached_batches(ftr, y_train, args.head_batch, gen), ftr.shape[1],
                                   10, fte, y_test, args.epochs, 1e-3, 1e-4, 0, "cached")
        return Task1.evaluate_head(head, fte, y_test)[1]

    def through():
        fte = extract(x_test)
        gen = torch.Generator().manual_seed(0)
        head, _ = Task1.train_head(lambda: Task1.backbone_batches(model, x_train, y_train, args.head_batch,
                                                                  args.img_size, device, gen, augment=False),
                                   fte.shape[1], 10, fte, y_test, args.epochs, 1e-3, 1e-4, 0, "through")
        return Task1.evaluate_head(head, fte, y_test)[1]

    t_cached, t_through = [], []
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both sides alike
        t_cached.append(timed(cached, device)[0])
        t_through.append(timed(through, device)[0])
    mc, mt = statistics.median(t_cached), statistics.median(t_through)
    print(f"\nhead-only baseline, {args.epochs} epochs, {args.arch} at {args.img_size} px on {device.type}:")
    print(f"  cached features (1 backbone pass):        median {mc:8.2f} s  (runs: "
          f"{', '.join(f'{v:.2f}' for v in t_cached)})")
    print(f"  through the backbone ({args.epochs} passes + test):  median {mt:8.2f} s  (runs: "
          f"{', '.join(f'{v:.2f}' for v in t_through)})")
    print(f"  ratio through / cached: {mt / mc:.2f}x")
    print(f"feature extraction: {statistics.median(ips):.0f} images/s")
    return {"images_per_s": statistics.median(ips), "cached_s": mc, "through_s": mt, "ratio": mt / mc}


if __name__ == "__main__":
    main()
