"""common.py: flags, smoke data, outputs and caches, probe; against known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import common


def _parser():
    p = common.make_parser("task9", "Task 9: a test.\n\nMore text.", ["a", "b", "c"])
    p.add_argument("--epochs", type=common.positive_int, default=20, help="passes")
    p.add_argument("--lr", type=float, default=1e-3, help="step size")
    return p


def test_smoke_overrides_only_what_the_user_left_alone():
    p = _parser()
    smoke = {"epochs": 2, "lr": 0.5}
    a = common.parse_args(p, ["--smoke"], smoke)
    assert (a.epochs, a.lr) == (2, 0.5)
    a = common.parse_args(p, ["--smoke", "--epochs", "20"], smoke)      # explicit, even at the default
    assert (a.epochs, a.lr) == (20, 0.5)
    a = common.parse_args(p, ["--epochs", "7"], smoke)                  # no --smoke: nothing overridden
    assert (a.epochs, a.lr) == (7, 1e-3)
    assert a.experiments == ["a", "b", "c"] and a.out == "outputs/task9" and a.seed == 0


def test_experiments_run_in_canonical_order_and_unknown_ones_are_one_line_errors(capsys):
    p = _parser()
    assert common.parse_args(p, ["--experiments", "c,a"]).experiments == ["a", "c"]
    with pytest.raises(SystemExit) as e:
        common.parse_args(p, ["--experiments", "a,zzz"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown experiment zzz" in err and "a,b,c" in err


def test_user_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        with common.user_errors("Task9.py"):
            raise common.UserError("could not get X\nunder Y")
    assert e.value.code == 2
    assert capsys.readouterr().err == "Task9.py: error: could not get X under Y\n"


def test_gpu_out_of_memory_is_one_line_naming_the_batch_flag(capsys):
    with pytest.raises(SystemExit) as e:
        with common.user_errors("Task9.py", batch_flag="--extract-batch"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of GPU memory" in err and "--extract-batch" in err
    with pytest.raises(SystemExit):  # MPS reports it as a RuntimeError
        with common.user_errors("Task9.py"):
            raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="shape"):  # any other RuntimeError is a bug: traceback
        with common.user_errors("Task9.py"):
            raise RuntimeError("shape mismatch")


@pytest.mark.parametrize("capability, expect_dtype, train_autocast, inference_autocast, scaled", [
    ((9, 0), torch.bfloat16, True, True, False),    # H100: bf16 everywhere, no scaling
    ((8, 0), torch.bfloat16, True, True, False),    # A100
    ((7, 5), torch.float16, True, False, True),     # T4: fp16 + loss scaling to train, fp32 inference
    ((7, 0), torch.float16, True, False, True),     # V100
])
def test_precision_follows_compute_capability(monkeypatch, capability, expect_dtype, train_autocast,
                                              inference_autocast, scaled):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert common.amp_dtype(cuda) == expect_dtype
    assert isinstance(common.autocast(cuda, train=True), torch.autocast) == train_autocast
    assert isinstance(common.autocast(cuda), torch.autocast) == inference_autocast
    if train_autocast:
        assert common.autocast(cuda, train=True).fast_dtype == expect_dtype
    assert common.grad_scaler(cuda).is_enabled() == (scaled and torch.cuda.is_available())
    assert ("bf16" in common.precision_name(cuda)) == (expect_dtype == torch.bfloat16)


def test_cpu_and_mps_stay_full_precision():
    for name in ("cpu", "mps"):
        d = torch.device(name)
        assert common.amp_dtype(d) is None and common.precision_name(d) == "fp32"
        assert not isinstance(common.autocast(d, train=True), torch.autocast)
        assert not common.grad_scaler(d).is_enabled()


def test_progress_prints_plain_lines_off_a_terminal():
    """Output to a file: a long loop prints a line every PROGRESS_EVERY_S seconds and a
    last one at 100%; a short loop prints nothing (run in a child so stderr is a pipe)."""
    import subprocess
    import sys
    code = ("import time, common\ncommon.PROGRESS_EVERY_S = 0.2\n"
            "for i in common.progress(range(12), desc='long'): time.sleep(0.05)\n"
            "for i in common.progress(range(3), desc='short'): pass\n"
            "bar = common.progress(total=8, desc='manual')\n"
            "for i in range(8):\n    time.sleep(0.05); bar.update(1); bar.set_postfix(loss=i)\nbar.close()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=common.REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    long_lines = [ln for ln in lines if ln.startswith("long:")]
    assert 2 <= len(long_lines) <= 4 and "12/12" in long_lines[-1], lines
    assert not any(ln.startswith("short") for ln in lines)
    manual = [ln for ln in lines if ln.startswith("manual:")]
    assert 1 <= len(manual) <= 3 and "8/8" in manual[-1] and "loss=7" in manual[-1], lines
    assert "\r" not in r.stdout


def test_pick_device_rejects_an_unavailable_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(common.UserError, match="cuda"):
        common.pick_device("cuda")
    assert common.pick_device("cpu").type == "cpu"


def test_smoke_digits_look_like_mnist():
    x, y = common.smoke_digits(train=True)
    xt, yt = common.smoke_digits(train=False)
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28) and len(x) + len(xt) == 1797
    assert x.max() > 200 and x[:, :, :4].max() == 0 and x[:, :, -4:].max() == 0  # MNIST's empty border
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())


def test_shapes_set_is_balanced_distinct_and_learnable():
    from sklearn.linear_model import LogisticRegression

    x, y = common.make_shapes(600, 10, 32, seed=0)
    xt, yt = common.make_shapes(300, 10, 32, seed=1)
    assert x.shape == (600, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [60] * 10
    feats = lambda t: torch.nn.functional.avg_pool2d(t.float() / 255, 4).flatten(1).numpy()  # noqa: E731
    acc = LogisticRegression(max_iter=2000).fit(feats(x), y.numpy()).score(feats(xt), yt.numpy())
    assert acc > 0.8, acc  # chance is 0.1
    x100, y100 = common.make_shapes(1000, 100, 32)
    assert len(torch.unique(y100)) == 100
    # the (colour, shape, texture) code of 100 classes is one-to-one
    c = np.arange(100)
    a, b = c // 10, c % 10
    assert len({(bb, (aa + bb) % 5, (aa // 5 + bb) % 2) for aa, bb in zip(a, b)}) == 100


def test_load_split_smoke_uses_real_class_names_and_sizes():
    x, y, names = common.load_split("stl10", "nowhere", train=False, smoke=True)
    assert x.shape[1:] == (3, 96, 96) and names == common.STL10_CLASSES
    x, y, names = common.load_split("cifar100", "nowhere", train=True, smoke=True)
    assert x.shape[1:] == (3, 32, 32) and len(names) == 100
    with pytest.raises(common.UserError, match="unknown dataset"):
        common.load_split("imagenet", "nowhere", True, smoke=True)


def test_results_write_atomically_keep_earlier_entries_and_back_up_other_settings(tmp_path):
    p = _parser()
    args = common.parse_args(p, ["--out", str(tmp_path), "--experiments", "a,b"])
    r = common.Results("task9", args, torch.device("cpu"))
    assert not any(tmp_path.iterdir())                                 # nothing written before a result
    r.run({"a": lambda: {"acc": np.float32(0.5), "curve": torch.tensor([1.0, 2.0])},
           "b": lambda: {"nan": float("nan"), "nested": {"x": 1}}})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["experiments"]["a"]["acc"] == 0.5 and doc["experiments"]["a"]["curve"] == [1.0, 2.0]
    assert doc["experiments"]["b"]["nan"] is None and doc["experiments"]["b"]["seconds"] >= 0
    assert "| nested/x | 1 |" in (tmp_path / "summary.md").read_text()
    # same settings, other experiment: a and b are kept
    args2 = common.parse_args(p, ["--out", str(tmp_path), "--experiments", "c"])
    common.Results("task9", args2, torch.device("cpu")).run({"c": lambda: {"v": 3}})
    assert set(json.loads((tmp_path / "metrics.json").read_text())["experiments"]) == {"a", "b", "c"}
    # other settings: the old file is moved aside, not lost
    args3 = common.parse_args(p, ["--out", str(tmp_path), "--experiments", "c", "--epochs", "3"])
    common.Results("task9", args3, torch.device("cpu")).run({"c": lambda: {"v": 4}})
    assert set(json.loads((tmp_path / "metrics.previous.json").read_text())["experiments"]) == {"a", "b", "c"}
    assert set(json.loads((tmp_path / "metrics.json").read_text())["experiments"]) == {"c"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_diverged_experiment_is_recorded_and_the_next_runs(tmp_path):
    args = common.parse_args(_parser(), ["--out", str(tmp_path)])

    def bad():
        common.check_finite(torch.tensor(float("inf")), "loss")

    done = common.Results("task9", args, torch.device("cpu")).run({"a": bad, "b": lambda: {"ok": 1}, "c": dict})
    assert done["a"]["error"].startswith("diverged: loss became inf") and done["b"]["ok"] == 1


def test_cache_roundtrip_keying_and_corruption(tmp_path):
    p1 = common.cache_path(tmp_path, "feat", {"arch": "resnet18", "size": 224})
    assert p1 == common.cache_path(tmp_path, "feat", {"size": 224, "arch": "resnet18"})  # order-free
    assert p1 != common.cache_path(tmp_path, "feat", {"arch": "resnet18", "size": 112})
    assert common.load_cache(p1) is None
    common.save_cache(p1, {"x": torch.arange(3), "config": {"arch": "resnet18"}})
    assert common.load_cache(p1)["x"].tolist() == [0, 1, 2]
    assert common.load_cache(p1, fresh=True) is None
    p1.write_bytes(b"garbage")
    with pytest.raises(common.UserError, match="--fresh"):
        common.load_cache(p1)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 16))
    y = rng.integers(0, 4, 800)
    x = centres[y] + rng.normal(0, 1, (800, 16))
    r = common.linear_probe(x[:600], y[:600], x[600:], y[600:])
    assert r["test_acc"] > 0.97 and r["C"] in (0.01, 0.1, 1.0, 10.0)
    r = common.linear_probe(rng.normal(size=(600, 16)), y[:600], rng.normal(size=(200, 16)), y[600:])
    assert r["test_acc"] < 0.4  # noise features: near chance (0.25)


def test_embed_2d_and_plots(tmp_path):
    from conftest import assert_png_ok

    x = np.concatenate([np.random.default_rng(0).normal(m, 1, (40, 8)) for m in (0, 10)])
    xy = common.embed_2d(x, "tsne")
    assert xy.shape == (80, 2)
    from sklearn.metrics import silhouette_score

    assert silhouette_score(xy, np.repeat([0, 1], 40)) > 0.5  # two far-apart clusters stay apart in 2-D
    fig, ax = common.plt.subplots()
    common.scatter_by_class(ax, xy, np.repeat([0, 1], 40), ["a", "b"], "t")
    common.save_figure(fig, tmp_path / "s.png")
    common.plot_confusion(np.array([[5, 1], [2, 7]]), ["a", "b"], tmp_path / "c.png", "cm")
    common.image_grid(torch.rand(10, 3, 8, 8), tmp_path / "g.png", "grid", nrow=5)
    for f in ["s.png", "c.png", "g.png"]:
        assert_png_ok(tmp_path / f)


# ----------------------------------------------------------------------------
# Flag ranges, interrupts, failed writes (issue 12)
# ----------------------------------------------------------------------------


def test_bounded_types_state_and_enforce_their_range():
    B = common.Bounded
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
        common.positive_int("2.5")
    assert common.non_negative_int("0") == 0 and common.any_int("-3") == -3


def test_a_bad_flag_value_is_one_line_naming_the_flag_and_its_range(capsys):
    p = common.make_parser("task9", "Task 9.", ["a"])
    p.add_argument("--weight-decay", type=common.non_negative_float, default=1e-4)
    with pytest.raises(SystemExit) as e:
        common.parse_args(p, ["--weight-decay", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weight-decay" in err and "a number >= 0" in err and "-1" in err


def test_combination_checks_run_right_after_parsing(capsys, tmp_path):
    p = _parser()
    p.add_argument("--warmup-epochs", type=common.non_negative_int, default=0)

    def check(args):
        common.require(args.warmup_epochs < args.epochs, f"--warmup-epochs {args.warmup_epochs} must be below "
                                                          f"--epochs {args.epochs}")
    assert common.parse_args(p, ["--warmup-epochs", "3"], check=check).warmup_epochs == 3
    with pytest.raises(SystemExit) as e:
        common.parse_args(p, ["--warmup-epochs", "20", "--out", str(tmp_path / "o")], check=check)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--warmup-epochs 20 must be below --epochs 20" in err
    assert not (tmp_path / "o").exists()


def test_an_out_that_cannot_be_a_directory_is_refused_before_anything_runs(capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        common.parse_args(_parser(), ["--out", str(f / "sub")])
    assert e.value.code == 2 and "is a file, not a directory" in capsys.readouterr().err


def test_interrupt_is_one_line_and_exit_130(capsys):
    with pytest.raises(SystemExit) as e:
        with common.user_errors("Task9.py"):
            raise KeyboardInterrupt
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err


def _no_temp_files(d):
    return [p.name for p in d.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "metrics.json"
    common.write_atomic(path, "old\n")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common.os, "replace", disk_full)
    with pytest.raises(common.UserError, match="No space left on device.*another --out"):
        common.write_atomic(path, "new\n")
    with pytest.raises(common.UserError, match="No space left"):
        common.save_cache(tmp_path / "cache" / "c.pt", {"x": torch.zeros(3)})
    import matplotlib.pyplot as plt
    with pytest.raises(common.UserError, match="No space left"):
        common.save_figure(plt.figure(), tmp_path / "fig.png")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and not (tmp_path / "fig.png").exists()
    assert _no_temp_files(tmp_path) == []


def test_torch_save_failing_is_a_user_error(tmp_path, monkeypatch):
    def broken_writer(obj, f):  # what torch.save raises when the disk fills mid-write
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(common.torch, "save", broken_writer)
    with pytest.raises(common.UserError, match="torch.save failed"):
        common.save_cache(tmp_path / "c.pt", {})
    assert not (tmp_path / "c.pt").exists() and _no_temp_files(tmp_path) == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    common.write_atomic(path, "old\n")

    def interrupted(self, text, *a, **k):
        open(self, "w").write(text[:1])
        raise KeyboardInterrupt
    monkeypatch.setattr(common.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        common.write_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and _no_temp_files(tmp_path) == []


# ----------------------------------------------------------------------------
# Findings and the report page (issue 11)
# ----------------------------------------------------------------------------


def _question():
    def answer(m):
        a, b = m["probe"]["cls_acc"], m["probe"]["mean_acc"]
        better = "mean pooling" if b > a else "CLS"
        return (f"{better} wins by {abs(a - b) * 100:.1f} points", [f"`probe/cls_acc` = {a}"], ["probe_curves.png"])
    return common.Question("2.5", "CLS or mean pooling?", ("probe",), answer)


def test_questions_are_answered_only_from_experiments_that_ran():
    q = [_question()]
    [e] = common.answer_questions("Task2.py", q, {})
    assert "finding" not in e and e["todo"] == "not run yet: python Task2.py --experiments probe"
    [e] = common.answer_questions("Task2.py", q, {"probe": {"error": "diverged: loss nan"}})
    assert "did not finish" in e["todo"] and "nan" in e["todo"]
    [e] = common.answer_questions("Task2.py", q, {"probe": {"cls_acc": 0.9}})   # an older metrics.json
    assert "probe/mean_acc" in e["todo"] or "mean_acc" in e["todo"]
    [e] = common.answer_questions("Task2.py", q, {"probe": {"cls_acc": 0.9, "mean_acc": 0.95}})
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
    res = common.Results("task2", args, torch.device("cpu"), questions=[_question()])
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    common.save_figure(fig, out / "probe_curves.png")
    res.record("probe", {"cls_acc": 0.91, "mean_acc": 0.87, "seconds": 1.0})
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["findings"][0]["finding"] == "CLS wins by 4.0 points"
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


# ----------------------------------------------------------------------------
# The scoring classifier of Tasks 3 and 5: coverage rule, augmentation, recipe and cache
# ----------------------------------------------------------------------------


def test_classes_covered_on_constructed_histograms():
    assert common.COVERAGE_SHARE == 0.2
    assert common.classes_covered([100] * 10) == 10
    assert common.classes_covered([0, 0, 0, 1000, 0, 0, 0, 0, 0, 0]) == 1
    # fair share N/10 = 100; 20% of it = 20 samples (2%): strays below do not count
    stray = [470, 465, 20, 19, 11, 9, 5, 1, 0, 0]
    assert common.classes_covered(stray) == 3
    assert common.classes_covered(stray, share=0.1) == 5          # 10 samples = 1% counts
    assert common.classes_covered(stray, share=0.0) == 8          # every class that occurs
    shares = np.array(stray) / 1000                                  # shares count the same as counts
    assert common.classes_covered(shares) == 3 and common.classes_covered(list(shares), 0.0) == 8
    assert common.classes_covered(torch.tensor(stray)) == 3                # a tensor on any device


def test_affine_augmentation_known_transforms():
    """Rotating a square image by 90 degrees maps pixel centres onto pixel centres, so
    the bilinear warp must equal torch.rot90; a whole-pixel shift equals a roll with
    zeros shifted in; zero angle, scale and shift is the identity."""
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(common.affine(x, torch.zeros(3), torch.ones(3), torch.zeros(3), torch.zeros(3)), x,
                          atol=1e-5)
    rot = common.affine(x, torch.full((3,), 90.0), torch.ones(3), torch.zeros(3), torch.zeros(3))
    assert torch.allclose(rot, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or \
        torch.allclose(rot, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    right = common.affine(x, torch.zeros(3), torch.ones(3), torch.full((3,), 2.0), torch.zeros(3))
    expect = torch.zeros_like(x)
    expect[..., 2:] = x[..., :-2]                                     # content moves 2 px right, zeros enter
    assert torch.allclose(right, expect, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    out = common.random_affine(x, rotate_deg=12, scale=0.1, shift_px=2.5, generator=g)
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_scoring_classifier_is_reproducible_whatever_the_global_rng_state():
    """The seed decides everything, the initial weights included: two trainings with
    the same seed give the same weights even when the global RNG was used in between
    (the model was once built before seeding, so accuracies on the digits varied from
    0.13 to 0.67 between identical calls)."""
    x, y = common.smoke_digits(train=True)
    xt, yt = common.smoke_digits(train=False)
    x, xt = x[:256].float() / 255, xt.float() / 255
    states = []
    for burn in (1, 1000):
        torch.rand(burn)                                              # a different global RNG state each time
        model, _ = common.scoring_classifier(x, y[:256], xt, yt, epochs=1, width=8, seed=0, warn_below=None)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_scoring_classifier_learns_caches_and_keys_by_data(tmp_path, capsys):
    """The shared recipe learns the bundled digits (images in [0, 1]); a second call
    loads the cache; other training data gets its own cache file."""
    x, y = common.smoke_digits(train=True)
    xt, yt = common.smoke_digits(train=False)
    x, xt = x.float() / 255, xt.float() / 255
    kw = dict(epochs=2, width=8, seed=0, out=tmp_path, warn_below=0.999)
    model, acc = common.scoring_classifier(x, y, xt, yt, **kw)
    out = capsys.readouterr().out
    assert acc > 0.6 and "warning: the scoring classifier reached only" in out
    assert not model.training
    assert common.classifier_accuracy(model, xt, yt) == pytest.approx(acc)
    _, acc2 = common.scoring_classifier(x, y, xt, yt, **kw)
    assert acc2 == acc and "classifier: cached" in capsys.readouterr().out
    common.scoring_classifier(x[:-1], y[:-1], xt, yt, **kw)           # other data: trained, not loaded
    assert "classifier: cached" not in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("classifier-*.pt"))) == 2


def test_figures_are_drawn_from_the_recorded_metrics_and_replot_redraws_them(tmp_path, capsys):
    """run() hands each plot function the metrics exactly as metrics.json holds them (a
    JSON round trip: tensors become lists), and --replot draws from that file alone."""
    seen = []

    def plot_a(m, out):
        seen.append(dict(m))
        x = common.load_plot_data(out, "a")["images"]
        common.image_grid(torch.from_numpy(x), out / "a_grid.png", f"acc {m['acc']}", nrow=2)

    def experiment_a():
        common.save_plot_data(tmp_path, "a", images=torch.zeros(4, 1, 5, 5))
        return {"acc": np.float32(0.5), "curve": torch.tensor([1.0, 2.0])}

    args = common.parse_args(_parser(), ["--out", str(tmp_path), "--experiments", "a"])
    common.Results("task9", args, torch.device("cpu")).run({"a": experiment_a}, plots={"a": plot_a})
    assert seen == [{"acc": 0.5, "curve": [1.0, 2.0]}] and (tmp_path / "a_grid.png").exists()
    (tmp_path / "a_grid.png").unlink()
    recorded = common.replot(tmp_path, {"a": plot_a})
    assert (tmp_path / "a_grid.png").exists() and recorded["a"]["acc"] == 0.5
    assert seen[1] == seen[0] and "seconds" in recorded["a"]   # the same dict as in the run
    (tmp_path / "cache" / "plot" / "a.npz").unlink()
    with pytest.raises(common.UserError, match="a.npz is missing"):
        common.replot(tmp_path, {"a": plot_a})
    with pytest.raises(common.UserError, match="no .*metrics.json"):
        common.replot(tmp_path / "elsewhere", {"a": plot_a})


def test_tile_confusion_matrix_and_resize_normalise_known_answers():
    # two 1x1 images, 2 per row, 1-px gutters: [white | img0 | white | img1 | white]
    canvas = common.tile(torch.tensor([[[[0]]], [[[255]]]], dtype=torch.uint8), ncol=2, pad=1)
    assert canvas.shape == (3, 5, 1) and canvas[1, :, 0].tolist() == [1, 0, 1, 1, 1]
    assert canvas[0].min() == 1 and canvas[2].min() == 1
    assert common.confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # a constant image stays constant through any resize; normalisation per channel
    x = torch.full((1, 3, 7, 7), 51, dtype=torch.uint8)  # 0.2
    y = common.resize_normalise(x, (4, 6), mean=[0.2, 0.1, 0.0], std=[1.0, 0.5, 0.2], mode="bicubic")
    assert y.shape == (1, 3, 4, 6) and torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]), atol=1e-5)
    # bicubic overshoot is clamped like PIL's uint8 output: a step edge stays within [0, 1]
    step = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    step[..., 4:] = 255
    z = common.resize_normalise(step, 32, mean=[0.0], std=[1.0], mode="bicubic")
    assert z.min() >= 0 and z.max() <= 1


def test_help_shows_each_default_once():
    text = " ".join(_parser().format_help().split())
    assert "(default: 20)" in text and "(default: 0.001)" in text and text.count("(default: 0)") == 1
    assert "(default: all)" in text and "default: False" not in text


def test_a_task_whose_main_ignores_replot_refuses_it_in_one_line(tmp_path, capsys):
    """Every task's main returns common.replot(...) under --replot before it builds its
    Results; one that forgets reaches Results, which refuses in one line (exit 2)
    instead of recomputing, and writes nothing."""
    args = common.parse_args(_parser(), ["--replot", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e, common.user_errors("Task9.py"):
        common.Results("task9", args, torch.device("cpu"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "without --replot" in err
    assert not (tmp_path / "out").exists()


