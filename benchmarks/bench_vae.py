"""One VAE training epoch: Task 5's device-tensor loop vs the pytorch/examples way.

    A  device tensor  the whole dataset is one float tensor on the device; a batch is an
                      index slice of a random permutation (what Task5.py does)
    B  DataLoader     a torchvision-style dataset that turns each uint8 image into a PIL
                      image and applies transforms.ToTensor(), batched by a DataLoader
                      (as in pytorch/examples' vae/main.py)

Same model (architecture.VAE), optimiser, loss and batch size on the same synthetic
MNIST-shaped images; each side runs `--repeats` epochs and the median is compared.
A second comparison times the input pipelines alone (no model): on a CPU the model's
compute hides the pipeline, on a GPU the pipeline is what limits the epoch.
A third times one encoder-only update of aggressive training (He et al. 2019), the step
its inner loop repeats 20-100 times per decoder step:

    C  frozen decoder  decoder parameters set requires_grad=False, so backward computes
                       only the encoder's gradients (what Task5.train_vae does)
    D  discarded       full backward, then only the encoder's optimiser steps (the
                       decoder's gradients are computed and thrown away, as in He et
                       al.'s code)
Run:  python benchmarks/bench_vae.py                      (CPU, 10,000 images)
      python benchmarks/bench_vae.py --n 60000 --device cuda --workers 4
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
from architecture import VAE  # noqa: E402
from Task5 import kl_divergence, reconstruction_loss  # noqa: E402


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST.__getitem__ does: uint8 array -> PIL -> transform."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i], mode="L")), 0


def step(model, opt, x):
    x_hat, mu, logvar = model(x)
    loss = reconstruction_loss(x_hat, x, "mse").mean() + kl_divergence(mu, logvar).sum(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def encoder_step(model, opt, x, frozen: bool):
    """One encoder-only update; opt holds the encoder's parameters only."""
    dec = [p for n, p in model.named_parameters() if n.startswith(VAE.DECODER)]
    if frozen:
        for p in dec:
            p.requires_grad_(False)
    x_hat, mu, logvar = model(x)
    loss = reconstruction_loss(x_hat, x, "mse").mean() + kl_divergence(mu, logvar).sum(1).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    for p in dec:
        p.requires_grad_(True)


def time_encoder_steps(model, opt, x_dev, batch, device, frozen, steps):
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        j = (i * batch) % max(1, len(x_dev) - batch)
        encoder_step(model, opt, x_dev[j:j + batch], frozen)
    sync(device)
    return (time.perf_counter() - t0) / steps


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_device_tensor(model, opt, x_dev, batch, device):
    """model=None times the batching alone: the ceiling the input pipeline sets."""
    sync(device)
    t0 = time.perf_counter()
    perm = torch.randperm(len(x_dev), device=device)
    for i in range(0, len(x_dev), batch):
        x = x_dev[perm[i:i + batch]]
        if model is not None:
            step(model, opt, x)
    sync(device)
    return time.perf_counter() - t0


def epoch_dataloader(model, opt, loader, device):
    sync(device)
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        if model is not None:
            step(model, opt, x)
    sync(device)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="images per epoch (MNIST: 60000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per side; the median is reported")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--encoder-steps", type=int, default=40, help="encoder-only updates timed per side and repeat")
    args = p.parse_args()
    from torchvision import transforms

    device = common.pick_device(args.device)
    rng = np.random.default_rng(0)
    images = (rng.random((args.n, 28, 28)) ** 3 * 255).astype(np.uint8)          # MNIST-like: mostly dark
    x_dev = torch.from_numpy(images).unsqueeze(1).float().div(255).to(device)
    loader = torch.utils.data.DataLoader(PILDataset(images, transforms.ToTensor()), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = VAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch_device_tensor(model, opt, x_dev[:2 * args.batch_size], args.batch_size, device)  # warm-up
    a, b = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
        a.append(epoch_device_tensor(model, opt, x_dev, args.batch_size, device))
        b.append(epoch_dataloader(model, opt, loader, device))
    da = [epoch_device_tensor(None, None, x_dev, args.batch_size, device) for _ in range(args.repeats)]
    db = [epoch_dataloader(None, None, loader, device) for _ in range(args.repeats)]
    enc_opt = torch.optim.Adam([p for n, p in model.named_parameters() if n.startswith(VAE.ENCODER)], lr=1e-3)
    time_encoder_steps(model, enc_opt, x_dev, args.batch_size, device, True, 3)  # warm-up
    c, d = [], []
    for _ in range(args.repeats):
        c.append(time_encoder_steps(model, enc_opt, x_dev, args.batch_size, device, True, args.encoder_steps))
        d.append(time_encoder_steps(model, enc_opt, x_dev, args.batch_size, device, False, args.encoder_steps))
    print(f"{args.n} images, batch {args.batch_size}, {args.repeats} epochs each, device {device}, "
          f"workers {args.workers}")
    for what, ta, tb in [("training epoch", a, b), ("input pipeline only", da, db)]:
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"{what}:")
        print(f"  device tensor : median {ma:.3f} s/epoch  ({args.n / ma:,.0f} images/s)")
        print(f"  DataLoader+PIL: median {mb:.3f} s/epoch  ({args.n / mb:,.0f} images/s)")
        print(f"  ratio (DataLoader / device tensor): {mb / ma:.2f}x")
    mc, md = statistics.median(c), statistics.median(d)
    print(f"encoder-only update (aggressive training's inner step), {args.encoder_steps} steps x {args.repeats}:")
    print(f"  frozen decoder (no decoder gradients): median {1000 * mc:.1f} ms/step")
    print(f"  full backward, decoder gradients discarded: median {1000 * md:.1f} ms/step")
    print(f"  ratio (discarded / frozen): {md / mc:.2f}x")


if __name__ == "__main__":
    main()
