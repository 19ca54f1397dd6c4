"""Every task's smoke run under --precision bf16 and fp16 on the CPU (issue 19): torch's CPU
autocast and GradScaler("cpu") run the code an A100 (bf16) or a T4 (fp16 with loss scaling)
runs. Every metric finite (the nulls a float32 smoke run has too aside), no arm diverged,
every experiment's figures written and readable.

fp16 is emulated on most CPUs (the VAE's training step: 1.56 s against 0.12 s in float32,
measured here), so the fp16 runs of Tasks 1 and 5 leave out their longest training
experiments; those loops run under fp16 elsewhere: Task 1's transfer and scratch_shortcuts
in tests/test_task1.py (amp_spy), Task 3's every loop below and in tests/test_task3.py.
A separate step of .ci/run: `python -m pytest -m "fullsize or precision"`.
"""
from __future__ import annotations

import importlib
import math
import re

import pytest

from conftest import assert_figures_readable, assert_png_ok, load_metrics
from harness.report import figures_by_experiment

pytestmark = pytest.mark.precision

# Leaves that are null in a float32 smoke run too: a target accuracy never reached, no
# divergence to date, Adam's step norm logged only by the vanishing arms, Karras et al.'s r_v
# while D cannot yet tell samples from reals.
NULL_IN_FP32 = {"Task1": r"(diverged_at_step|steps_to_target_acc|plain_over_residual_steps_to_target)$",
                "Task3": r"(g_step_norm|overfit_rv)"}
FP16_SUBSET = {"Task1": "baseline,residual,features,depth",
               "Task5": "train,reconstruct,generate,collapse,latent,likelihood"}
RUNS = [(t, "bf16", None) for t in ("Task1", "Task2", "Task3", "Task4", "Task5")] + \
       [(t, "fp16", FP16_SUBSET.get(t)) for t in ("Task1", "Task2", "Task3", "Task4", "Task5")]


def leaves(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{path}{k}/")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{path}{i}/")
    else:
        yield path.rstrip("/"), node


@pytest.mark.parametrize("task,precision,experiments", RUNS, ids=[f"{t}-{p}" for t, p, _ in RUNS])
def test_smoke_under_mixed_precision(task, precision, experiments, tmp_path):
    mod = importlib.import_module(task)
    out = tmp_path / task.lower()
    mod.main(["--smoke", "--precision", precision, "--out", str(out)]
             + (["--experiments", experiments] if experiments else []))
    doc = load_metrics(out)
    assert doc["config"]["precision"] == precision
    ran = doc["experiments"]
    assert list(ran) == (experiments.split(",") if experiments else mod.EXPERIMENTS)
    assert not [n for n, m in ran.items() if "error" in m]
    allowed = re.compile(NULL_IN_FP32.get(task, r"$^"))
    bad = [k for k, v in leaves(ran) if (v is None or isinstance(v, float) and not math.isfinite(v))
           and not allowed.search(k)]
    assert not bad, bad[:10]
    assert not [k for k, v in leaves(ran) if k.split("/")[-1] == "diverged" and v not in ("no", "", False)]
    figures = figures_by_experiment(out, list(ran))
    assert set(figures) == set(ran), sorted(set(ran) - set(figures))  # every experiment drew its figures
    for pngs in figures.values():
        for p in pngs:
            assert_png_ok(out / p)
    assert_figures_readable(out)


@pytest.mark.parametrize("task,experiments", [("Task1", "baseline,residual"), ("Task5", "train,collapse"),
                                              ("Task4", "zeroshot")])
def test_the_cuda_memory_layout_runs_on_the_cpu_and_changes_no_result(task, experiments, tmp_path, monkeypatch):
    """channels_last (NHWC) images and convolution weights are what a CUDA run uses
    (common.CHANNELS_LAST); here the CPU takes that path too: the same numbers as the
    default layout, to float32 rounding."""
    import common

    mod = importlib.import_module(task)
    runs = {}
    for layout, types in (("nchw", {"cuda"}), ("nhwc", {"cuda", "cpu"})):
        monkeypatch.setattr(common, "CHANNELS_LAST", types)
        mod.main(["--smoke", "--experiments", experiments, "--out", str(tmp_path / layout)])
        runs[layout] = dict(leaves(load_metrics(tmp_path / layout)["experiments"]))
    numbers = [k for k, v in runs["nchw"].items() if isinstance(v, float) and "seconds" not in k
               and "per_s" not in k]
    assert numbers and runs["nchw"].keys() == runs["nhwc"].keys()
    assert [k for k in numbers if runs["nhwc"][k] != pytest.approx(runs["nchw"][k], rel=1e-3, abs=1e-4)] == []
