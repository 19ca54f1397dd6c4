"""Shared test helpers: run a task's CLI, check PNGs and metrics, check bad input.

Every test runs offline on CPU. Task tests import these as plain functions
(`from conftest import ...`) or use the fixtures below.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Offline everywhere: a test must never wait on a network that is not there.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
os.environ.update(OFFLINE_ENV)


def run_cli(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, as a user would."""
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def assert_png_ok(path: Path) -> None:
    """A real, non-blank PNG: it opens, is not tiny, and its pixels vary."""
    from PIL import Image

    assert path.exists(), f"missing figure {path.name}"
    with Image.open(path) as im:
        assert im.format == "PNG", path.name
        assert im.width >= 100 and im.height >= 100, f"{path.name} is only {im.size}"
        px = np.asarray(im.convert("L"), dtype=np.float32)
    assert px.std() > 2.0, f"{path.name} looks blank (pixel std {px.std():.2f})"


def load_metrics(out: Path) -> dict:
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc) >= {"task", "config", "env", "experiments"}
    assert doc["env"]["data"] in ("real", "smoke")
    return doc


def assert_in_range(metrics: dict, key: str, lo: float, hi: float) -> None:
    """metrics["a/b/c"] (a path into nested dicts) exists and lies in [lo, hi]."""
    node = metrics
    for part in key.split("/"):
        assert isinstance(node, dict) and part in node, f"missing metric {key}"
        node = node[part]
    assert isinstance(node, (int, float)) and not isinstance(node, bool), f"{key} = {node!r} is not a number"
    assert lo <= node <= hi, f"{key} = {node} not in [{lo}, {hi}]"


def _snapshot(out: Path) -> dict:
    """Every file in `out` (an earlier run's metrics.json is put there first)."""
    out.mkdir(parents=True, exist_ok=True)
    sentinel = out / "metrics.json"
    if not sentinel.exists():
        sentinel.write_text('{"task": "earlier run", "experiments": {"kept": {"x": 1}}}\n')
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _assert_kept(before: dict) -> None:
    for p, content in before.items():
        assert p.exists() and p.read_bytes() == content, f"{p} was lost or changed"


def _one_error_line(stderr: str, expect: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr[-2000:]}"
    assert "Traceback" not in stderr and "error" in lines[0], lines[0]
    assert expect.lower() in lines[0].lower(), f"{expect!r} not in {lines[0]!r}"
    return lines[0]


def assert_bad_input(script: str, args: list[str], out: Path, expect: str = "", env: dict | None = None) -> str:
    """The run exits 2 with exactly one line on stderr (no traceback) containing
    `expect`, and whatever was in `out` before is still there, unchanged."""
    before = _snapshot(out)
    r = run_cli(script, *args, "--out", str(out), env=env)
    assert r.returncode == 2, f"exit {r.returncode}, stderr:\n{r.stderr[-2000:]}"
    line = _one_error_line(r.stderr, expect)
    _assert_kept(before)
    return line


def assert_bad_input_in_process(main, args: list[str], capsys, expect: str = "", out: Path | None = None) -> str:
    """assert_bad_input without a new interpreter (saves ~5 s of imports): main(args)
    exits 2 with one stderr line containing `expect`. With `out`, it runs with
    `--out out` and the files already there must stay unchanged."""
    before = _snapshot(out) if out is not None else {}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(out)] if out is not None else args)
    assert e.value.code == 2, f"exit {e.value.code}"
    line = _one_error_line(capsys.readouterr().err, expect)
    _assert_kept(before)
    return line


# Every figure a test draws is checked as it is saved (tests/figure_check.py): its
# problems (overlapping text, empty panels) are kept here by path; each task's smoke
# test asserts that its figures have none.
FIGURE_PROBLEMS: dict[Path, list[str]] = {}


@pytest.fixture(autouse=True, scope="session")
def check_every_figure():
    import common
    from figure_check import figure_problems

    save = common.save_figure

    def checked(fig, path):
        FIGURE_PROBLEMS[Path(path).absolute()] = figure_problems(fig)
        return save(fig, path)

    common.save_figure = checked
    yield
    common.save_figure = save


def assert_figures_readable(out: Path) -> None:
    """Every PNG in `out` was drawn in this test session and has no overlapping text and
    no empty panel."""
    pngs = sorted(Path(out).absolute().glob("*.png"))
    assert pngs, f"no figures in {out}"
    unchecked = [p.name for p in pngs if p not in FIGURE_PROBLEMS]
    assert not unchecked, f"figures not drawn through common.save_figure: {unchecked}"
    problems = [f"{p.name}: {msg}" for p in pngs for msg in FIGURE_PROBLEMS[p]]
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def precision_back_to_auto():
    """A task's main sets the process's --precision (common.PRECISION); in-process runs
    must not hand theirs to the next test."""
    yield
    import common

    common.PRECISION = "auto"


@pytest.fixture(autouse=True)
def threads_back():
    """parse_args sets the process's CPU threads (harness/threads.py's policy: one for a
    smoke run); in-process runs must not hand theirs to the next test."""
    from harness.threads import threads_restored

    with threads_restored():
        yield


@pytest.fixture
def empty_data_root(tmp_path) -> Path:
    """A --data-root with no datasets in it (so a full run must try to download)."""
    d = tmp_path / "no-data"
    d.mkdir()
    return d


def assert_replot_redraws(task, run_dir: Path, tmp_path: Path, monkeypatch, figures: list[str],
                          must_not_run: list[str]) -> None:
    """`--replot` on a copy of `run_dir`, with every PNG and every cache/*.pt deleted and
    the task's named loaders/trainers (`must_not_run`, attributes of the task module)
    raising: it draws exactly `figures` (file stems) again, the same pixels as the run,
    from metrics.json and cache/plot/ alone, and leaves metrics.json byte for byte."""
    out = tmp_path / "replot"
    shutil.copytree(run_dir, out)
    before = {p.stem: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(before) == sorted(figures)
    metrics = (out / "metrics.json").read_bytes()
    for p in [*out.glob("*.png"), *(out / "cache").glob("*.pt")]:
        p.unlink()

    def fail(*args, **kwargs):
        raise AssertionError("--replot loaded data, a model or a cached run")

    for name in must_not_run:
        monkeypatch.setattr(task, name, fail)
    recorded = task.main(["--smoke", "--replot", "--out", str(out)])
    assert list(recorded) == task.EXPERIMENTS
    after = {p.stem: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(after) == sorted(figures)
    for name in figures:
        assert_png_ok(out / f"{name}.png")
    assert after == before, [n for n in figures if after[n] != before[n]]
    assert (out / "metrics.json").read_bytes() == metrics


def assert_replot_needs_plot_data(task, run_dir: Path, tmp_path: Path, capsys, experiment: str) -> None:
    """`--replot` where cache/plot/<experiment>.npz is gone: one line naming it, exit 2,
    every file kept."""
    out = tmp_path / "no-plot-data"
    shutil.copytree(run_dir, out)
    (out / "cache" / "plot" / f"{experiment}.npz").unlink()
    assert_bad_input_in_process(task.main, ["--replot"], capsys, expect=f"{experiment}.npz is missing", out=out)


def check_two_seed_smoke(task, smoke_out: Path, tmp_path: Path) -> dict:
    """Issue 21: `TaskN.py --smoke --seeds 0,1`. Seed 0 is the module's finished smoke run, copied into
    OUT/seed-0 (so it is reused, not rerun: only seed 1 trains); then every seed's metrics, the merged
    metrics.json (per_seed, spread, findings with seed agreement), every figure of the first seed at the
    top, a _seeds figure wherever a number a finding reads differs between the seeds, summary.md and the
    report page. Returns the merged metrics.json."""
    from harness.seeds_plot import _at

    out = tmp_path / task.__name__.lower()
    shutil.copytree(smoke_out, out / "seed-0")
    before = json.loads((out / "seed-0" / "metrics.json").read_text())["experiments"]
    task.main(["--smoke", "--seeds", "0,1", "--out", str(out)])
    one = {s: json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)}
    assert one[0]["experiments"] == before, "seed 0 had finished: it must be reused, not rerun"
    assert list(one[1]["experiments"]) == list(before) and one[1]["config"]["seed"] == 1
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["config"]["seeds"] == [0, 1] and set(doc["per_seed"]) == {"0", "1"}
    assert list(doc["experiments"]) == list(before)
    for name, spread in doc["spread"].items():
        assert spread, name
        for key, s in spread.items():
            # n 1: a key only one seed has (Task 1's most-confused class pairs differ between seeds)
            assert s["n"] in (1, 2) and s["min"] <= s["mean"] <= s["max"] and s["sd"] >= 0, (name, key, s)
        assert any(s["n"] == 2 for s in spread.values()), name
    answered = [f for f in doc["findings"] if "finding" in f]
    # Every question a seed answered is answered over the seeds.
    assert [f["ref"] for f in answered] == [f["ref"] for f in one[0]["findings"] if "finding" in f]
    assert answered and all(" of 2 seeds reach this finding on their own numbers" in f["finding"] for f in answered)
    for png in sorted((out / "seed-0").glob("*.png")):  # the first seed's figures, drawn at the top
        assert_png_ok(out / png.name)
    drawn = 0
    for name, paths in doc["reads"].items():
        values = [[_at(doc["per_seed"][s].get(name, {}), p) for s in ("0", "1")] for p in paths]
        if any(a != b and isinstance(a, (int, float)) for a, b in values):
            assert_png_ok(out / f"{name}_seeds.png")
            drawn += 1
    assert drawn, "no number a finding reads differs between two seeds: the _seeds figures went untested"
    assert "| metric | mean \u00b1 sd | min | max | n | seed 0 | seed 1 |" in (out / "summary.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert f'id="{out.name}"' in page and 'id="seed-1"' not in page
    return doc
