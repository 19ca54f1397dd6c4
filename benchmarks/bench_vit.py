"""Benchmark: images/s of ViT feature extraction with SDPA vs eager attention.

Task 2 extracts features with PyTorch's scaled_dot_product_attention (SDPA: fused
kernels, the T x T attention matrix is never kept) and switches to transformers' eager
attention only where it must read the attention weights. This measures what that costs.
Both sides run in one process on the same random batch and the same randomly initialised
weights, through Task2.vit_forward (torch.inference_mode; bf16 autocast on CUDA), with
the repetitions of the two sides interleaved so a busy machine slows both alike. A third
line times eager attention with the weights captured (what the attention, heads and
rollout passes do).

    python benchmarks/bench_vit.py                           # small ViT on CPU, seconds
    python benchmarks/bench_vit.py --full --device cuda      # ViT-B/16 at 224 (random init)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import Task2  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    p.add_argument("--full", action="store_true",
                   help="ViT-B/16 at 224 (12 layers, 12 heads, width 768): the size Task 2 runs; for a GPU")
    p.add_argument("--image-size", type=common.positive_int, default=64, help="input side in pixels")
    p.add_argument("--patch-size", type=common.positive_int, default=8, help="patch side in pixels")
    p.add_argument("--layers", type=common.positive_int, default=4, help="transformer blocks")
    p.add_argument("--heads", type=common.positive_int, default=4, help="attention heads")
    p.add_argument("--hidden", type=common.positive_int, default=128, help="model width")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="images per forward pass")
    p.add_argument("--repeats", type=common.positive_int, default=7, help="timed passes per side (median quoted)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes per side first")
    p.add_argument("--threads", type=common.positive_int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    args = p.parse_args(argv)
    if args.full:
        args.image_size, args.patch_size, args.layers, args.heads, args.hidden = 224, 16, 12, 12, 768
        if args.batch_size == p.get_default("batch_size"):
            args.batch_size = 64
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Task2.ViTConfig(image_size=args.image_size, patch_size=args.patch_size, num_hidden_layers=args.layers,
                             num_attention_heads=args.heads, hidden_size=args.hidden,
                             intermediate_size=4 * args.hidden, num_labels=1000)
    model = Task2.ViTForImageClassification(config).to(device).eval()
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    tokens = (args.image_size // args.patch_size) ** 2 + 1
    print(f"ViT {args.layers} layers x {args.heads} heads, width {args.hidden}, {args.image_size}px / "
          f"{args.patch_size}px patches = {tokens} tokens; batch {args.batch_size}; torch threads "
          f"{torch.get_num_threads()}; {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sides = {"sdpa": ("sdpa", False), "eager": ("eager", False), "eager + weights": ("eager", True)}

    @torch.inference_mode()
    def one_pass(side: str) -> tuple[float, torch.Tensor]:
        impl, weights = sides[side]
        model.set_attn_implementation(impl)
        sync()
        t0 = time.perf_counter()
        with common.autocast(device):
            cls = Task2.vit_forward(model, pixels, attentions=weights)["last"][:, 0].float()
        sync()
        return time.perf_counter() - t0, cls

    for side in sides:
        for _ in range(args.warmup):
            one_pass(side)
    times = {side: [] for side in sides}
    outputs = {}
    for _ in range(args.repeats):  # interleaved: contention hits every side alike
        for side in sides:
            t, outputs[side] = one_pass(side)
            times[side].append(t)
    rates = {side: args.batch_size / statistics.median(ts) for side, ts in times.items()}
    diff = (outputs["sdpa"] - outputs["eager"]).abs().max().item()
    print(f"\n{'attention':<16} {'images/s (median of ' + str(args.repeats) + ')':>26} {'ms/batch':>10}")
    for side, rate in rates.items():
        print(f"{side:<16} {rate:>26.4g} {1e3 * statistics.median(times[side]):>10.2f}")
    print(f"\nsdpa / eager: {rates['sdpa'] / rates['eager']:.2f}x; "
          f"sdpa / (eager + weights): {rates['sdpa'] / rates['eager + weights']:.2f}x; "
          f"max |CLS feature difference| sdpa vs eager: {diff:.2e}")
    return rates


if __name__ == "__main__":
    main()
