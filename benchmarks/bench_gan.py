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
    cfg = Task3.base_config(args)
    torch.manual_seed(seed)
    G, D = Task3.build_gan(cfg, device)
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["g_lr"], betas=tuple(cfg["betas"]), fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["d_lr"], betas=tuple(cfg["betas"]), fused=fused)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="(default: cpu)")
    p.add_argument("--n-images", type=common.positive_int, default=4096, help="synthetic images (default: 4096)")
    p.add_argument("--iters", type=common.positive_int, default=60, help="timed iterations per run (default: 60)")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timed runs per side (default: 5)")
    p.add_argument("--batch-size", type=common.positive_int, default=64, help="(default: 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--full", action="store_true", help="60,000 images, 500 iterations per run (for a GPU)")
    args = p.parse_args(argv)
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
