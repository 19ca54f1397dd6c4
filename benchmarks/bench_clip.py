"""Images/s of CLIP image encoding at batch 1 vs a large batch (Task 4's encode_images:
on-device resize + normalisation, inference mode, bf16 autocast on CUDA).

Both sides run in one process on the same synthetic uint8 STL-10-sized images; each
side is warmed up once, then timed `--repeats` times and the median quoted.

  python benchmarks/bench_clip.py                      # small random CLIP (Task 4's smoke config), CPU
  python benchmarks/bench_clip.py --full --device cuda --batch 256 --n 2048
                                                       # ViT-B-32 as Task4.py --pretrained none builds it
                                                       # (QuickGELU, random init) on a GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import Task4  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true",
                   help="ViT-B-32 architecture at 224 px (random init: speed does not depend on the weights)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="(default: cpu)")
    p.add_argument("--n", type=common.positive_int, default=128, help="images encoded per timed run (default: 128)")
    p.add_argument("--batch", type=common.positive_int, default=64, help="the large batch size (default: 64)")
    p.add_argument("--repeats", type=common.positive_int, default=5, help="timed runs per side (default: 5)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default (default: 0)")
    args = p.parse_args(argv)

    with common.user_errors("bench_clip.py"):
        device = common.pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    common.seed_everything(0)
    import open_clip
    from open_clip.transform import PreprocessCfg

    if args.full:
        # Task 4's own --pretrained none: ViT-B-32 with the QuickGELU the openai weights need, random init
        model, _, _ = Task4.load_clip("ViT-B-32", "none", smoke=False, device=torch.device("cpu"))
        name = "ViT-B-32 (random init, QuickGELU)"
    else:
        model = open_clip.CLIP(**Task4.SMOKE_CLIP)
        size = Task4.SMOKE_CLIP["vision_cfg"]["image_size"]
        open_clip.set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=size)))
        name = "small CLIP (Task 4 smoke config)"
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    model = model.to(device).eval()
    images = torch.randint(0, 256, (args.n, 3, 96, 96), dtype=torch.uint8)  # STL-10 sized, uint8 like the data

    def images_per_s(batch: int) -> float:
        Task4.encode_images(model, images[:batch], pp, device, batch, progress=False)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            Task4.encode_images(model, images, pp, device, batch, progress=False)  # .cpu() per batch syncs
            times.append(time.perf_counter() - t0)
        return args.n / statistics.median(times)

    print(f"{name}, input {pp['size']} px, {args.n} images, device {device}, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats}")
    one, big = images_per_s(1), images_per_s(args.batch)
    print(f"batch 1:   {one:10.1f} images/s")
    print(f"batch {args.batch:<4d} {big:10.1f} images/s")
    print(f"ratio (batch {args.batch} / batch 1): {big / one:.2f}x")


if __name__ == "__main__":
    main()
