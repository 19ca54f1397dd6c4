"""The benchmarks import the tasks' own code, so a renamed task function breaks them:
run each cheap entry point once at a tiny size."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_gan_projects_a_default_task3_run():
    import bench_gan

    out = bench_gan.project([], n_train=1200, n_test=600, iters=2, device=torch.device("cpu"))
    for name in ["classifier", "baseline", "reference", "vanishing", "mode_collapse", "d_overfit"]:
        assert out[name] > 0, name
    assert abs(out["total"] - sum(v for k, v in out.items() if k != "total")) < 1e-6 * out["total"] + 1e-9
