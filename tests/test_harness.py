"""harness/: flags, the experiment loop and its files, caches, findings, the report
page, errors; against known answers."""
from __future__ import annotations

import json
import os
import time
import types

import numpy as np
import pytest
import torch

import common
import harness
from harness import store

# A task's report module, as the harness sees it: its name, questions and plot functions.
REPORT = types.SimpleNamespace(TASK="task9", QUESTIONS=[])


def _parser():
    p = harness.make_parser("task9", "Task 9: a test.\n\nMore text.", ["a", "b", "c"])
    p.add_argument("--epochs", type=harness.positive_int, default=20, help="passes")
    p.add_argument("--lr", type=float, default=1e-3, help="step size")
    return p


def test_smoke_overrides_only_what_the_user_left_alone():
    p = _parser()
    smoke = {"epochs": 2, "lr": 0.5}
    a = harness.parse_args(p, ["--smoke"], smoke)
    assert (a.epochs, a.lr) == (2, 0.5)
    a = harness.parse_args(p, ["--smoke", "--epochs", "20"], smoke)      # explicit, even at the default
    assert (a.epochs, a.lr) == (20, 0.5)
    a = harness.parse_args(p, ["--epochs", "7"], smoke)                  # no --smoke: nothing overridden
    assert (a.epochs, a.lr) == (7, 1e-3)
    assert a.experiments == ["a", "b", "c"] and a.out == "outputs/task9" and a.seed == 0


def test_experiments_run_in_canonical_order_and_unknown_ones_are_one_line_errors(capsys):
    p = _parser()
    assert harness.parse_args(p, ["--experiments", "c,a"]).experiments == ["a", "c"]
    with pytest.raises(SystemExit) as e:
        harness.parse_args(p, ["--experiments", "a,zzz"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown experiment zzz" in err and "a,b,c" in err


def test_user_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        with harness.user_errors("Task9.py"):
            raise harness.UserError("could not get X\nunder Y")
    assert e.value.code == 2
    assert capsys.readouterr().err == "Task9.py: error: could not get X under Y\n"


def test_gpu_out_of_memory_is_one_line_naming_the_batch_flag(capsys):
    with pytest.raises(SystemExit) as e:
        with harness.user_errors("Task9.py", batch_flag="--extract-batch"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of GPU memory" in err and "--extract-batch" in err
    with pytest.raises(SystemExit):  # MPS reports it as a RuntimeError
        with harness.user_errors("Task9.py"):
            raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")
    assert "--batch-size" in capsys.readouterr().err
    for words in ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                                            "`cublasCreate(handle)`"):
        with pytest.raises(SystemExit) as e:  # cuDNN and cuBLAS say it in their own words
            with harness.user_errors("Task9.py", batch_flag="--eval-batch-size"):
                raise RuntimeError(words)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "out of GPU memory" in err and "--eval-batch-size" in err
    with pytest.raises(RuntimeError, match="shape"):  # any other RuntimeError is a bug: traceback
        with harness.user_errors("Task9.py"):
            raise RuntimeError("shape mismatch")


def test_progress_prints_plain_lines_off_a_terminal():
    """Output to a file: a long loop prints a line every PROGRESS_EVERY_S seconds and a
    last one at 100%; a short loop prints nothing (run in a child so stderr is a pipe)."""
    import subprocess
    import sys
    code = ("import time\nfrom harness import console as p\np.PROGRESS_EVERY_S = 0.2\n"
            "for i in p.progress(range(12), desc='long'): time.sleep(0.05)\n"
            "for i in p.progress(range(3), desc='short'): pass\n"
            "bar = p.progress(total=8, desc='manual')\n"
            "for i in range(8):\n    time.sleep(0.05); bar.update(1); bar.set_postfix(loss=i)\nbar.close()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=harness.results.REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    long_lines = [ln for ln in lines if ln.startswith("long:")]
    assert 2 <= len(long_lines) <= 4 and "12/12" in long_lines[-1], lines
    assert not any(ln.startswith("short") for ln in lines)
    manual = [ln for ln in lines if ln.startswith("manual:")]
    assert 1 <= len(manual) <= 3 and "8/8" in manual[-1] and "loss=7" in manual[-1], lines
    assert "\r" not in r.stdout


def test_results_write_atomically_keep_earlier_entries_and_back_up_other_settings(tmp_path):
    p = _parser()
    args = harness.parse_args(p, ["--out", str(tmp_path), "--experiments", "a,b"])
    r = harness.Results(REPORT, args, torch.device("cpu"))
    assert not any(tmp_path.iterdir())                                 # nothing written before a result
    r.run({"a": lambda: {"acc": np.float32(0.5), "curve": torch.tensor([1.0, 2.0])},
           "b": lambda: {"nan": float("nan"), "nested": {"x": 1}}})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["experiments"]["a"]["acc"] == 0.5 and doc["experiments"]["a"]["curve"] == [1.0, 2.0]
    assert doc["experiments"]["b"]["nan"] is None and doc["experiments"]["b"]["seconds"] >= 0
    assert "| nested/x | 1 |" in (tmp_path / "summary.md").read_text()
    # same settings, other experiment: a and b are kept
    args2 = harness.parse_args(p, ["--out", str(tmp_path), "--experiments", "c"])
    harness.Results(REPORT, args2, torch.device("cpu")).run({"c": lambda: {"v": 3}})
    assert set(json.loads((tmp_path / "metrics.json").read_text())["experiments"]) == {"a", "b", "c"}
    # other settings: the old file is moved aside, not lost
    args3 = harness.parse_args(p, ["--out", str(tmp_path), "--experiments", "c", "--epochs", "3"])
    harness.Results(REPORT, args3, torch.device("cpu")).run({"c": lambda: {"v": 4}})
    assert set(json.loads((tmp_path / "metrics.previous.json").read_text())["experiments"]) == {"a", "b", "c"}
    assert set(json.loads((tmp_path / "metrics.json").read_text())["experiments"]) == {"c"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_diverged_experiment_is_recorded_and_the_next_runs(tmp_path):
    args = harness.parse_args(_parser(), ["--out", str(tmp_path)])

    def bad():
        common.check_finite(torch.tensor(float("inf")), "loss")

    done = harness.Results(REPORT, args, torch.device("cpu")).run({"a": bad, "b": lambda: {"ok": 1}, "c": dict})
    assert done["a"]["error"].startswith("diverged: loss became inf") and done["b"]["ok"] == 1


def test_cache_keys_by_settings_and_code_reuses_and_recomputes_a_corrupt_file(tmp_path, capsys):
    cache = harness.Cache(tmp_path)
    calls = []

    def compute(v=1):
        calls.append(v)
        return {"x": torch.arange(3) * v}

    def other_code():
        return 2

    key = {"arch": "resnet18", "size": 224}
    assert cache.path("feat", key) == cache.path("feat", {"size": 224, "arch": "resnet18"})  # order-free
    assert cache.path("feat", key) != cache.path("feat", {"arch": "resnet18", "size": 112})
    assert cache.path("feat", key, code=(compute,)) != cache.path("feat", key, code=(other_code,))
    assert cache("feat", key, compute)["x"].tolist() == [0, 1, 2] and calls == [1]
    assert harness.Cache(tmp_path)("feat", key, compute)["x"].tolist() == [0, 1, 2] and calls == [1]  # reused
    blob = torch.load(cache.path("feat", key), weights_only=True)
    assert blob["settings"] == key                                   # the file carries its settings
    fresh = harness.Cache(tmp_path, fresh=True)
    fresh("feat", key, compute)
    fresh("feat", key, compute)                                      # --fresh recomputes once per run
    assert calls == [1, 1]
    cache.path("feat", key).write_bytes(b"garbage")
    capsys.readouterr()
    assert harness.Cache(tmp_path)("feat", key, lambda: compute(5))["x"].tolist() == [0, 5, 10]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreadable" in err and "computing it again" in err
    assert harness.Cache(tmp_path)("feat", key, compute)["x"].tolist() == [0, 5, 10]  # the good file now
    skipped = harness.Cache(tmp_path)("run", key, lambda: {"diverged": "loss nan"}, keep=lambda v: not v["diverged"])
    assert skipped == {"diverged": "loss nan"} and not list((tmp_path / "cache").glob("run-*.pt"))  # not stored

def test_bounded_types_state_and_enforce_their_range():
    B = harness.Bounded
    assert B(int, lo=1).describe() == "a positive integer (>= 1)"
    assert B(int, lo=0).describe() == "an integer >= 0"
    assert B(float, 0, 1, hi_open=True).describe() == "a number in [0, 1)"
    assert B(float, lo=0, lo_open=True).describe() == "a positive number (> 0)"
    frac = B(float, 0, 1, hi_open=True)
    assert frac("0") == 0.0 and frac("0.99") == 0.99
    for bad in ("1", "-0.1", "nan", "inf", "x"):
        with pytest.raises(Exception, match=r"expected a number in \[0, 1\)"):
            frac(bad)
    with pytest.raises(Exception, match=r"expected a positive integer \(>= 1\)"):
        harness.positive_int("2.5")
    assert harness.non_negative_int("0") == 0 and harness.any_int("-3") == -3


def test_a_bad_flag_value_is_one_line_naming_the_flag_and_its_range(capsys):
    p = harness.make_parser("task9", "Task 9.", ["a"])
    p.add_argument("--weight-decay", type=harness.non_negative_float, default=1e-4)
    with pytest.raises(SystemExit) as e:
        harness.parse_args(p, ["--weight-decay", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weight-decay" in err and "a number >= 0" in err and "-1" in err


def test_combination_checks_run_right_after_parsing(capsys, tmp_path):
    p = _parser()
    p.add_argument("--warmup-epochs", type=harness.non_negative_int, default=0)

    def check(args):
        harness.require(args.warmup_epochs < args.epochs, f"--warmup-epochs {args.warmup_epochs} must be below "
                                                          f"--epochs {args.epochs}")
    assert harness.parse_args(p, ["--warmup-epochs", "3"], check=check).warmup_epochs == 3
    with pytest.raises(SystemExit) as e:
        harness.parse_args(p, ["--warmup-epochs", "20", "--out", str(tmp_path / "o")], check=check)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--warmup-epochs 20 must be below --epochs 20" in err
    assert not (tmp_path / "o").exists()


def test_an_out_that_cannot_be_a_directory_is_refused_before_anything_runs(capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        harness.parse_args(_parser(), ["--out", str(f / "sub")])
    assert e.value.code == 2 and "is a file, not a directory" in capsys.readouterr().err


def test_interrupt_is_one_line_and_exit_130(capsys):
    with pytest.raises(SystemExit) as e:
        with harness.user_errors("Task9.py"):
            raise KeyboardInterrupt
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err


def _no_temp_files(d):
    return [p.name for p in d.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "metrics.json"
    harness.write_atomic(path, "old\n")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store.os, "replace", disk_full)
    with pytest.raises(harness.UserError, match="No space left on device.*another --out"):
        harness.write_atomic(path, "new\n")
    with pytest.raises(harness.UserError, match="No space left"):
        harness.save_torch(tmp_path / "cache" / "c.pt", {"x": torch.zeros(3)})
    import matplotlib.pyplot as plt
    with pytest.raises(harness.UserError, match="No space left"):
        common.save_figure(plt.figure(), tmp_path / "fig.png")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and not (tmp_path / "fig.png").exists()
    assert _no_temp_files(tmp_path) == []


def test_torch_save_failing_is_a_user_error(tmp_path, monkeypatch):
    def broken_writer(obj, f):  # what torch.save raises when the disk fills mid-write
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(store.torch, "save", broken_writer)
    with pytest.raises(harness.UserError, match="torch.save failed"):
        harness.save_torch(tmp_path / "c.pt", {})
    assert not (tmp_path / "c.pt").exists() and _no_temp_files(tmp_path) == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    harness.write_atomic(path, "old\n")

    def interrupted(self, text, *a, **k):
        open(self, "w").write(text[:1])
        raise KeyboardInterrupt
    monkeypatch.setattr(store.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        harness.write_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and _no_temp_files(tmp_path) == []


def test_ctrl_c_inside_a_zip_write_is_still_an_interrupt(tmp_path, monkeypatch):
    """np.savez_compressed (and torch.save) write a zip: Ctrl-C while an array is written made zipfile's
    cleanup raise "Can't close the ZIP file while there is an open writing handle" over the interrupt, so a
    run stopped with a traceback and exit 1 instead of one line and 130 (seen in test_interrupts)."""
    import zipfile

    def interrupted(*a, **k):  # where the real interrupt landed: while zipfile opened the array's entry
        raise KeyboardInterrupt
    monkeypatch.setattr(zipfile, "_get_compressor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save_plot_data(tmp_path, "probe", {"x": np.zeros(3)})
    monkeypatch.undo()
    assert _no_temp_files(tmp_path / "cache" / "plot") == []
    with pytest.raises(harness.UserError):  # a real write error still names the way out
        with harness.atomic_path(tmp_path / "y"):
            raise OSError(28, "No space left on device")


def _question():
    def answer(m):
        a, b = m["probe"]["cls_acc"], m["probe"]["mean_acc"]
        better = "mean pooling" if b > a else "CLS"
        return (f"{better} wins by {abs(a - b) * 100:.1f} points", [f"`probe/cls_acc` = {a}"], ["probe_curves.png"])
    return harness.Question("2.5", "CLS or mean pooling?", ("probe",), answer)


def test_questions_are_answered_only_from_experiments_that_ran():
    q = [_question()]
    [e] = harness.results.answer_questions("Task2.py", q, {})
    assert "finding" not in e and e["todo"] == "not run yet: python Task2.py --experiments probe"
    [e] = harness.results.answer_questions("Task2.py", q, {"probe": {"error": "diverged: loss nan"}})
    assert "did not finish" in e["todo"] and "nan" in e["todo"]
    [e] = harness.results.answer_questions("Task2.py", q, {"probe": {"cls_acc": 0.9}})   # an older metrics.json
    assert "probe/mean_acc" in e["todo"] or "mean_acc" in e["todo"]
    [e] = harness.results.answer_questions("Task2.py", q, {"probe": {"cls_acc": 0.9, "mean_acc": 0.95}})
    assert e["finding"] == "mean pooling wins by 5.0 points" and e["figures"] == ["probe_curves.png"]


def _parse_page(path):
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links, self.ids, self.text = [], [], set(), []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a["src"])
            if tag == "a":
                self.links.append(a["href"])
            if "id" in a:
                self.ids.add(a["id"])

        def handle_data(self, data):
            self.text.append(data)
    c = Collect()
    c.feed(path.read_text())
    return c


def test_the_report_page_shows_each_run_and_says_how_to_run_the_others(tmp_path):
    import argparse
    import matplotlib.pyplot as plt

    out = tmp_path / "task2"
    args = argparse.Namespace(out=str(out), smoke=True, seed=0, experiments=["probe"], lr=0.1)
    res = harness.Results(types.SimpleNamespace(TASK="task2", QUESTIONS=[_question()]), args, torch.device("cpu"))
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    common.save_figure(fig, out / "probe_curves.png")
    res.record("probe", {"cls_acc": 0.91, "mean_acc": 0.87, "seconds": 1.0})
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["findings"][0]["finding"] == ("CLS wins by 4.0 points (One seed, 0: `--seeds 0,1,2` tells whether "
                                             "other seeds agree.)")
    summary = (out / "summary.md").read_text()
    assert summary.index("**Finding.** CLS wins by 4.0 points") < summary.index("## probe")
    page = _parse_page(tmp_path / "index.html")
    assert page.imgs == ["task2/probe_curves.png"]
    for src in page.imgs + [h for h in page.links if not h.startswith("#")]:
        assert (tmp_path / src).exists(), src
    assert all(h[1:] in page.ids for h in page.links if h.startswith("#"))
    text = " ".join(page.text)
    assert "CLS wins by 4.0 points" in text and "assignment part 2" in text
    for script in ("Task1.py", "Task3.py", "Task4.py", "Task5.py"):
        assert f"not run yet: python {script}" in " ".join(text.split())
    assert "not run yet: python Task2.py" not in " ".join(text.split())


def test_the_report_page_shows_only_the_runs_that_wrote_to_it(tmp_path):
    """A run registers its folder in index.runs.json beside the page; a folder beside it
    holding a metrics.json that no run wrote to this page (an old copy, another project)
    gets no section, and a run whose folder was deleted loses its section."""
    doc = {"task": "task3", "config": {"seed": 0}, "env": {}, "findings": [], "experiments": {}}
    for name in ("mine", "unrelated", "also_mine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(doc))
    harness.write_report(tmp_path, "mine")
    page = _parse_page(harness.write_report(tmp_path, "also_mine"))
    assert page.ids >= {"mine", "also_mine"} and "unrelated" not in page.ids
    assert json.loads((tmp_path / "index.runs.json").read_text()) == ["also_mine", "mine"]
    import shutil
    shutil.rmtree(tmp_path / "mine")
    page = _parse_page(harness.write_report(tmp_path))
    assert "also_mine" in page.ids and "mine" not in page.ids
    assert json.loads((tmp_path / "index.runs.json").read_text()) == ["also_mine"]
    (tmp_path / "index.runs.json").write_text("{not json")               # a damaged list: start afresh
    assert "unrelated" in _parse_page(harness.write_report(tmp_path, "unrelated")).ids


def test_figures_are_drawn_from_the_recorded_metrics_and_replot_redraws_them(tmp_path, capsys):
    """run() stores the arrays an experiment returns in cache/plot/ and hands the report's
    plot function the metrics exactly as metrics.json holds them (a JSON round trip:
    tensors become lists), the arrays and the config; --replot draws from those alone."""
    seen = []

    def plot_a(m, a, cfg, out):
        seen.append((dict(m), a["images"].shape, cfg.seed))
        common.image_grid(torch.from_numpy(a["images"]), out / "a_grid.png", f"acc {m['acc']}", nrow=2)

    report = types.SimpleNamespace(TASK="task9", QUESTIONS=[], plot_a=plot_a)
    args = harness.parse_args(_parser(), ["--out", str(tmp_path), "--experiments", "a"])
    harness.run(report, args, torch.device("cpu"), {"a": lambda: (
        {"acc": np.float32(0.5), "curve": torch.tensor([1.0, 2.0])}, {"images": torch.zeros(4, 1, 5, 5)})})
    assert seen == [({"acc": 0.5, "curve": [1.0, 2.0]}, (4, 1, 5, 5), 0)] and (tmp_path / "a_grid.png").exists()
    (tmp_path / "a_grid.png").unlink()
    recorded = harness.replot(report, tmp_path)
    assert (tmp_path / "a_grid.png").exists() and recorded["a"]["acc"] == 0.5
    assert seen[1] == seen[0] and "seconds" in recorded["a"]   # the same dict as in the run
    (tmp_path / "cache" / "plot" / "a.npz").unlink()
    with pytest.raises(harness.UserError, match="a.npz is missing"):
        harness.replot(report, tmp_path)
    with pytest.raises(harness.UserError, match="no .*metrics.json"):
        harness.replot(report, tmp_path / "elsewhere")

def test_help_shows_each_default_once():
    text = " ".join(_parser().format_help().split())
    assert "(default: 20)" in text and "(default: 0.001)" in text and text.count("(default: 0)") == 1
    assert "(default: all)" in text and "default: False" not in text


def test_a_task_whose_main_ignores_replot_refuses_it_in_one_line(tmp_path, capsys):
    """Every task's main returns harness.replot(...) under --replot before it runs its
    experiments; one that forgets reaches Results, which refuses in one line (exit 2)
    instead of recomputing, and writes nothing."""
    args = harness.parse_args(_parser(), ["--replot", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e, harness.user_errors("Task9.py"):
        harness.Results(REPORT, args, torch.device("cpu"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "without --replot" in err
    assert not (tmp_path / "out").exists()




def test_a_recipe_is_recorded_beside_the_flags_and_reaches_the_figures(tmp_path):
    """A task's config dataclass (its constants that are not flags) goes into metrics.json
    as "recipe" and into summary.md; plot functions see it as cfg.recipe; a rerun with
    another recipe moves the earlier metrics aside like other flags would."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Recipe:
        momentum: float = 0.9      # He et al. 2016, sec. 4.2
        warmup_steps: int = 10

    seen = []
    report = types.SimpleNamespace(TASK="task9", QUESTIONS=[], plot_a=lambda m, a, cfg, out: seen.append(cfg.recipe))
    args = harness.parse_args(_parser(), ["--out", str(tmp_path), "--experiments", "a"])
    harness.run(report, args, torch.device("cpu"), {"a": lambda: {"v": 1}}, recipe=Recipe())
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["recipe"] == {"momentum": 0.9, "warmup_steps": 10} and seen == [doc["recipe"]]
    assert "recipe: `momentum=0.9`, `warmup_steps=10`" in (tmp_path / "summary.md").read_text()
    harness.replot(report, tmp_path)
    assert seen[1] == seen[0]
    harness.run(report, args, torch.device("cpu"), {"a": lambda: {"v": 2}}, recipe=Recipe(momentum=0.5))
    assert json.loads((tmp_path / "metrics.previous.json").read_text())["recipe"]["momentum"] == 0.9


def test_pct_and_pts_known_answers():
    assert harness.pct(0.8743) == "87.4%" and harness.pct(1, 0) == "100%"
    assert harness.pts(0.951, 0.942) == "0.9" and harness.pts(0.5, 0.75) == "25.0"


def test_a_run_ends_with_its_findings_and_where_to_read_them(tmp_path, capsys):
    """The console ends with the findings, one line each, then summary.md and the report
    page; the metric table only with --print-metrics. A smoke run says it is one at the
    start and the end of the console, atop summary.md and in its section of the page."""
    report = types.SimpleNamespace(TASK="task2", QUESTIONS=[_question()])
    out = tmp_path / "task2"
    args = harness.parse_args(_parser(), ["--smoke", "--out", str(out), "--experiments", "a"])
    harness.run(report, args, torch.device("cpu"), {"a": lambda: {"v": 1}})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("smoke: small random models") and lines[-1] == lines[0]
    assert lines[-3] == f"summary: {out / 'summary.md'} (every metric: metrics.json, or --print-metrics)"
    assert lines[-2] == f"report page: {tmp_path / 'index.html'}" and (tmp_path / "index.html").exists()
    assert "  2.5 CLS or mean pooling?: not run yet: python Task2.py --experiments probe" in lines
    assert not any(ln.startswith("experiment ") for ln in lines)           # no metric table
    assert (out / "summary.md").read_text().splitlines()[2].startswith("**smoke: small random models")
    page = (tmp_path / "index.html").read_text()
    assert "<small>[smoke]</small>" in page and "class=smoke" in page
    args = harness.parse_args(_parser(), ["--out", str(out), "--experiments", "a", "--print-metrics"])
    harness.run(report, args, torch.device("cpu"), {"a": lambda: {"v": 1, "nested": {"longer_name": 2.5}}})
    text = capsys.readouterr().out
    assert "a           nested/longer_name  2.5" in text and "smoke:" not in text
    assert "[smoke]" not in (tmp_path / "index.html").read_text()


def test_the_report_page_orders_tasks_and_gives_wide_figures_the_full_width(tmp_path):
    import matplotlib.pyplot as plt

    for task, size in (("task5", (12, 4)), ("task4", (5, 5))):
        out = tmp_path / task
        out.mkdir()
        fig = plt.figure(figsize=size)
        plt.plot([0, 1])
        common.save_figure(fig, out / "a_fig.png")
        (out / "metrics.json").write_text(json.dumps({"task": task, "config": {}, "env": {}, "findings": [],
                                                      "experiments": {"a": {}}}))
        harness.write_report(tmp_path, task)                              # task5's run first
    page = (tmp_path / "index.html").read_text()
    assert page.index('<section id="task4">') < page.index('<section id="task5">')
    assert '<figure id="task5-a_fig.png" class=wide>' in page and '<figure id="task4-a_fig.png">' in page


def test_an_out_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    """Permission bits do not tell root about a read-only file system: --out is probed by
    writing, and the refused run leaves no folder behind."""
    import errno

    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(harness.cli.Path, "write_bytes", read_only)
    with pytest.raises(SystemExit) as e:
        harness.parse_args(_parser(), ["--out", str(tmp_path / "new" / "out")])
    assert e.value.code == 2 and "Read-only file system" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    harness.parse_args(_parser(), ["--out", str(tmp_path / "new" / "out")])
    assert not (tmp_path / "new").exists()                         # probed, then removed again


def test_a_smoke_run_marks_every_figure_it_draws(tmp_path):
    """While a smoke run's figures are drawn (in the run and under --replot), figure_note()
    is the smoke banner and common.save_figure writes it in red in a strip below the figure
    (where a layout engine cannot move it onto a legend); a real run's figures carry nothing."""
    import matplotlib.pyplot as plt

    notes = []

    def plot_a(m, a, cfg, out):
        notes.append(harness.figure_note())
        fig = plt.figure(figsize=(4, 3))
        plt.plot([0, 1])
        common.save_figure(fig, out / "a_fig.png")

    report = types.SimpleNamespace(TASK="task9", QUESTIONS=[], plot_a=plot_a)
    for smoke, out in ((True, tmp_path / "smoke"), (False, tmp_path / "real")):
        args = harness.parse_args(_parser(), ["--out", str(out), "--experiments", "a"] + ["--smoke"] * smoke)
        harness.run(report, args, torch.device("cpu"), {"a": lambda: {"v": 1}})
    smoke_png = (tmp_path / "smoke" / "a_fig.png").read_bytes()
    harness.replot(report, tmp_path / "smoke")
    assert notes[0].startswith("smoke: small random models") and notes[1] == "" and notes[2] == notes[0]
    assert harness.figure_note() == "" and (tmp_path / "smoke" / "a_fig.png").read_bytes() == smoke_png
    smoke, real = (plt.imread(tmp_path / d / "a_fig.png") for d in ("smoke", "real"))
    assert smoke.shape[1] == real.shape[1] and smoke.shape[0] in (real.shape[0] + 33, real.shape[0] + 57)  # 1-2 lines
    np.testing.assert_array_equal(smoke[:real.shape[0]], real)                          # the figure untouched
    strip = smoke[real.shape[0]:]
    assert ((strip[..., 0] > 0.5) & (strip[..., 1] < 0.3)).any()                        # red text in it


def test_the_thread_policy_gives_each_free_core_a_thread_and_obeys_omp_num_threads(monkeypatch):
    """fit_to_machine: one thread per core other processes leave free (at least one), one
    for a smoke run, and hands off when OMP_NUM_THREADS is set; busy_cores reads a real
    spinning process from /proc/stat."""
    from harness import threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    try:
        for busy, want in ((0.1, 4), (1.6, 2), (3.9, 1), (7.5, 1)):
            monkeypatch.setattr(threads, "busy_cores", lambda b=busy: b)
            assert threads.fit_to_machine(smoke=False)[0] == want == torch.get_num_threads(), busy
        assert threads.fit_to_machine(smoke=True)[0] == 1 == torch.get_num_threads()
        monkeypatch.setattr(threads, "busy_cores", lambda: None)           # no /proc: torch's default stays
        torch.set_num_threads(3)
        assert threads.fit_to_machine(smoke=False) == (3, "torch's default")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.fit_to_machine(smoke=True) == (3, "OMP_NUM_THREADS")
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")
def test_busy_cores_sees_another_process_spinning():
    import multiprocessing as mp

    from harness import threads

    threads._last = None
    idle = threads.busy_cores(0.3)
    spinner = mp.get_context("spawn").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        time.sleep(1.0)                                                    # let it start spinning
        threads._last = None                                               # a fresh 0.5 s sample
        busy = threads.busy_cores(0.5)
    finally:
        spinner.terminate()
    # >= 0.5: the spinner holds a core, or shares one with whatever else runs (on a loaded
    # machine `idle` is already near every core, so no difference is asserted)
    assert 0 <= idle <= os.cpu_count() + 0.1 and busy >= 0.5, (idle, busy)


def test_busy_cores_takes_this_processs_own_cpu_off_and_a_run_refits_within_experiments(monkeypatch, capsys):
    """Between two readings, every core's busy share minus this process's CPU time per wall
    second; within a (non-smoke) run, a progress bar after REFIT_S re-chooses the count."""
    from harness import threads

    readings = iter([(150, 200, 10.5, 101.0)])                            # 2 cores: 1.5 busy, 0.5 ours
    monkeypatch.setattr(threads, "_reading", lambda: next(readings))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "_last", (0, 0, 10.0, 100.0))
    assert threads.busy_cores() == pytest.approx(1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.2)
    threads.fit_and_say(False)
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)                # the other job ended
    harness.progress(range(2), desc="x").close()                           # too soon: no re-check
    assert torch.get_num_threads() == 1
    threads._fitted["at"] -= threads.REFIT_S
    harness.progress(range(2), desc="x").close()
    assert torch.get_num_threads() == 2 and "CPU threads: 2" in capsys.readouterr().out
    threads.fit_and_say(True)                                              # smoke: never re-checked
    threads._fitted["at"] -= threads.REFIT_S
    harness.progress(range(2), desc="x").close()
    assert torch.get_num_threads() == 1


def _spin():
    while True:
        pass


def test_a_run_records_its_threads_and_leaves_the_process_as_it_found_it(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    report = types.SimpleNamespace(TASK="task9", QUESTIONS=[])
    args = harness.parse_args(_parser(), ["--out", str(tmp_path), "--experiments", "a,b", "--smoke"])
    assert torch.get_num_threads() == 1                                     # chosen at the start
    torch.set_num_threads(before := 2)                                      # e.g. a notebook's own setting
    seen = []
    harness.run(report, args, torch.device("cpu"), {n: (lambda: seen.append(torch.get_num_threads()) or {"v": 1})
                                                      for n in "ab"})
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert json.loads((tmp_path / "metrics.json").read_text())["env"]["cpu_threads"] == {"a": 1, "b": 1}
