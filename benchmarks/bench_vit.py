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
    python benchmarks/bench_vit.py --flops                   # FLOPs of every Task 2 experiment at its
                                                             # defaults, and the time they imply at
                                                             # --gpu-tflops (an estimate, not a timing)

--flops counts with torch.utils.flop_counter.FlopCounterMode on ViT-B/16 built on the
meta device (shapes only: nothing is computed, it takes a second): one forward pass per
token count Task 2 uses (197 tokens; 1 + 196 - k when token dropping removes k patches),
times the passes each experiment makes at Task 2's default flags.
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
import harness  # noqa: E402
import Task2  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    p.add_argument("--full", action="store_true",
                   help="ViT-B/16 at 224 (12 layers, 12 heads, width 768): the size Task 2 runs; for a GPU")
    p.add_argument("--image-size", type=harness.positive_int, default=64, help="input side in pixels")
    p.add_argument("--patch-size", type=harness.positive_int, default=8, help="patch side in pixels")
    p.add_argument("--layers", type=harness.positive_int, default=4, help="transformer blocks")
    p.add_argument("--heads", type=harness.positive_int, default=4, help="attention heads")
    p.add_argument("--hidden", type=harness.positive_int, default=128, help="model width")
    p.add_argument("--batch-size", type=harness.positive_int, default=32, help="images per forward pass")
    p.add_argument("--repeats", type=harness.positive_int, default=7, help="timed passes per side (median quoted)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes per side first")
    p.add_argument("--threads", type=harness.positive_int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOPs of Task 2's experiments at its defaults instead of timing")
    p.add_argument("--gpu-tflops", type=harness.positive_float, default=100.0,
                   help="--flops: sustained GPU throughput assumed for the time estimate, in TFLOP/s")
    args = p.parse_args(argv)
    if args.full:
        args.image_size, args.patch_size, args.layers, args.heads, args.hidden = 224, 16, 12, 12, 768
        if args.batch_size == p.get_default("batch_size"):
            args.batch_size = 64
    return args


def forward_flops(model, tokens: int, attentions: bool) -> int:
    """FLOPs (multiply and add counted separately) of one Task2.vit_forward of one image
    with `tokens` tokens (CLS included): a 224x224 input with only tokens - 1 patches kept."""
    from torch.utils.flop_counter import FlopCounterMode

    n_patches = Task2.grid_shape(model)[0] * Task2.grid_shape(model)[1]
    x = torch.zeros(1, 3, model.config.image_size, model.config.image_size, device="meta")
    keep = None if tokens == n_patches + 1 else torch.arange(tokens - 1, device="meta")[None]
    model.set_attn_implementation("eager" if attentions else "sdpa")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        Task2.vit_forward(model, x, keep=keep, attentions=attentions)
    return counter.get_total_flops()


def task2_flops(gpu_tflops: float) -> dict:
    """Per experiment of `python Task2.py` at its defaults: forward passes (images) and FLOPs."""
    t2 = Task2.build_parser().parse_args([])
    with torch.device("meta"):
        model = Task2.ViTForImageClassification(Task2.vit_b16_config()).eval()
    n_patches = Task2.grid_shape(model)[0] * Task2.grid_shape(model)[1]
    full, full_eager = forward_flops(model, n_patches + 1, False), forward_flops(model, n_patches + 1, True)
    n_images = len(Task2.sample_photos()) + t2.cifar_images                # the default photos
    runs = t2.mask_seeds + len(Task2.STRATEGIES) - 1                       # random x seeds + 4 fixed orders
    nonzero = [f for f in t2.mask_fractions if f > 0]                      # fraction 0 reuses the features
    token_flops = sum(forward_flops(model, n_patches + 1 - Task2.n_masked(f, n_patches), False) for f in nonzero)
    rows = {
        "classify": (n_images, n_images * full),
        "attention": (n_images, n_images * full_eager),
        "heads": (n_images + t2.heads_images, (n_images + t2.heads_images) * full_eager),
        # features of the train and test subsets (shared with probe), rollout of the test subset,
        # then every strategy run x non-zero fraction: pixel masking (all tokens), token dropping
        "masking": (t2.train_images + 2 * t2.test_images + 2 * runs * len(nonzero) * t2.test_images,
                    (t2.train_images + t2.test_images) * full + t2.test_images * full_eager
                    + runs * t2.test_images * (len(nonzero) * full + token_flops)),
        "probe": (0, 0),                                                   # features cached by masking
    }
    print(f"ViT-B/16 at 224: {full / 1e9:.2f} GFLOP per image forward ({n_patches + 1} tokens); Task 2 defaults: "
          f"{n_images} photos, {t2.heads_images} heads images, {t2.train_images} train / {t2.test_images} test "
          f"images, {len(nonzero)} non-zero fractions x {runs} strategy runs x 2 ways of masking")
    print(f"estimated GPU time at an assumed sustained {gpu_tflops:g} TFLOP/s (ESTIMATE, not measured):\n")
    print(f"{'experiment':<10} {'forward passes':>15} {'TFLOP':>10} {'est. GPU s':>11}")
    for name, (passes, flops) in rows.items():
        print(f"{name:<10} {passes:>15,} {flops / 1e12:>10.2f} {flops / (gpu_tflops * 1e12):>11.2f}")
    total = sum(f for _, f in rows.values())
    print(f"{'total':<10} {sum(n for n, _ in rows.values()):>15,} {total / 1e12:>10.2f} "
          f"{total / (gpu_tflops * 1e12):>11.2f}")
    print(f"\nprobe: {2 + 2 * model.config.num_hidden_layers} logistic-regression probes on {t2.train_images} x "
          f"{model.config.hidden_size} features run on the CPU (scikit-learn), not on the GPU; probe alone (no "
          f"cached features) also extracts {t2.train_images + t2.test_images:,} images: "
          f"{(t2.train_images + t2.test_images) * full / (gpu_tflops * 1e12):.1f} s at the same rate")
    return {name: flops for name, (_, flops) in rows.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.flops:
        return task2_flops(args.gpu_tflops)
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
          f"{torch.get_num_threads()}; {common.precision_name(device)}")

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
