"""--seeds (issue 21): one run per seed, the numbers over seeds, and how many seeds agree with each finding.

Known answers for the statistics, the agreement rule on constructed metrics (seeds that agree and seeds
that split, with a real task's rule), and a whole multi-seed run of a tiny task built on the harness:
merged metrics, figures, summary, report page, reuse of finished seeds, --fresh and --replot.
Each task's own two-seed smoke run is tested in its test_taskN.py (conftest.check_two_seed_smoke)."""
from __future__ import annotations

import json
import math
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from conftest import assert_png_ok  # noqa: E402
from figure_check import figure_problems  # noqa: E402
from harness import seeds  # noqa: E402
from test_findings import R3, R5, t3_collapse  # noqa: E402


def test_mean_of_known_answers():
    assert seeds.mean_of([8, 8, 9]) == 8.333            # 4 significant digits
    assert seeds.mean_of([3, 3, 3]) == 3 and isinstance(seeds.mean_of([3, 3, 3]), int)
    assert seeds.mean_of([2, 4]) == 3 and isinstance(seeds.mean_of([2, 4]), int)
    assert seeds.mean_of([2.0, 4.0]) == 3.0 and isinstance(seeds.mean_of([2.0, 4.0]), float)
    assert seeds.mean_of([None, 2, 4]) == 3.0           # one of three undefined: the others' mean
    assert seeds.mean_of([None, None, 3]) is None       # most seeds undefined: undefined
    assert seeds.mean_of([True, False, True]) is True and seeds.mean_of([False, True]) is False  # tie: first
    assert seeds.mean_of([[1, 2], [3, 6]]) == [2.0, 4.0]
    assert seeds.mean_of([[1, 2], [3]]) == [1, 2]       # lengths differ: the first seed's
    assert seeds.mean_of(["more_d_steps", "minibatch_std"]) == "more_d_steps"
    assert seeds.mean_of([{"a": 1, "b": {"c": 2.0}}, {"a": 3, "b": {"c": 4.0}}]) == {"a": 2.0, "b": {"c": 3.0}}


def test_spread_of_known_answers():
    s = seeds.spread_of([{"arms": {"x": {"cov": 8}}, "seconds": 1}, {"arms": {"x": {"cov": 8}}, "seconds": 2},
                         {"arms": {"x": {"cov": 9}}, "seconds": 3}])
    assert list(s) == ["arms/x/cov"]                    # seconds are not a result
    assert s["arms/x/cov"] == {"mean": 8.333, "sd": 0.5774, "min": 8.0, "max": 9.0, "n": 3}  # sd: ddof 1
    assert seeds.spread_of([{"a": 1.5}])["a"]["sd"] == 0.0
    assert seeds.spread_of([{"a": 1.0}, {"a": None}])["a"]["n"] == 1


def test_wording_takes_out_numbers_and_nothing_else():
    a = "more_d_steps restores diversity best: 9 digits, KL 0.500, diversity 9.000, FD 1.2e+03, -3.5%"
    b = "more_d_steps restores diversity best: 7 digits, KL 0.617, diversity 8.1, FD 980, +1%"
    assert seeds.wording(a) == seeds.wording(b)
    assert seeds.wording(a) != seeds.wording(b.replace("more_d_steps", "minibatch_std"))
    assert seeds.wording("D ahead without saturating") != seeds.wording("balanced: neither network wins")


def test_clauses_split_outside_brackets_only():
    assert seeds._clauses("a (b; c); d [e; f]; g") == ["a (b; c)", "d [e; f]", "g"]
    assert seeds._clauses("no clauses here") == ["no clauses here"]


def _merge_task3(covs: list[int]) -> dict:
    docs = {s: {"task": "task3", "config": {"seed": s}, "env": {"data": "real"},
                "experiments": {"mode_collapse": {**t3_collapse(c), "seconds": 1.0}}} for s, c in enumerate(covs)}
    return seeds.merge(R3, list(docs), docs, {"seed": 0, "seeds": list(docs)})


def test_task3_finding_states_seed_agreement_when_seeds_agree():
    doc = _merge_task3([9, 8, 9])
    f = next(f for f in doc["findings"] if f["ref"] == "3.5")
    assert f["finding"] == ("the provoked setting covers 3 of 10 digits (KL from uniform 1.500); more_d_steps "
                            "restores diversity best: 9 digits, KL 0.500, diversity 9.000 (seed 0's numbers; 3 of 3 "
                            "seeds reach this finding on their own numbers)")
    assert doc["spread"]["mode_collapse"]["arms/more_d_steps/coverage"] == \
        {"mean": 8.667, "sd": 0.5774, "min": 8.0, "max": 9.0, "n": 3}
    ev = " ".join(f["evidence"])
    assert "mode_collapse/arms/more_d_steps/coverage 8.67 \u00b1 0.577 (8-9)" in ev
    assert "the same in all 3 seeds: " in ev and "mode_collapse/arms/collapse/coverage 3" in ev


def test_task3_finding_states_seed_agreement_when_seeds_split():
    doc = _merge_task3([9, 9, 3])                 # seed 2: normal_lr (5 digits) beats more_d_steps (3)
    f = next(f for f in doc["findings"] if f["ref"] == "3.5")
    assert doc["experiments"]["mode_collapse"]["arms"]["more_d_steps"]["coverage"] == 7  # a whole mean: an int
    assert "more_d_steps restores diversity best: 9 digits" in f["finding"]
    assert f["finding"].endswith(  # only the part that reads differently is quoted
        "(seed 0's numbers; 2 of 3 seeds reach this finding on their own numbers: seeds 0, 1; seed 2 instead: "
        "\u00abnormal_lr restores diversity best: 5 digits, KL 0.500, diversity 9.000\u00bb)")
    assert doc["per_seed"]["2"]["mode_collapse"]["arms"]["more_d_steps"]["coverage"] == 3


def test_a_number_only_some_seeds_define_is_not_the_same_in_all():
    lines = seeds._spread_lines(["x/steps", "x/n"], {"x": seeds.spread_of([{"steps": None, "n": 5},
                                                                           {"steps": 240, "n": 5}])}, 2)
    assert lines == ["over 2 seeds, mean \u00b1 sd (min-max): x/steps 240 \u00b1 0 (240-240; defined in 1 of 2 seeds)",
                     "the same in all 2 seeds: x/n 5"]


def test_seeds_that_all_differ_are_each_shown():
    """Two cures that each win one seed (and would both lose on the mean to a steady third): 1 of 2 seeds
    each, the first seed's finding stated, the other's quoted."""
    docs = {}
    for s, (more, mbstd) in enumerate([(9, 0), (0, 9)]):
        m = t3_collapse(more)
        m["arms"]["minibatch_std"]["coverage"] = mbstd
        m["arms"]["normal_lr"]["coverage"] = 6
        docs[s] = {"task": "task3", "config": {"seed": s}, "env": {}, "experiments": {"mode_collapse": m}}
    f = next(f for f in seeds.merge(R3, [0, 1], docs, {"seeds": [0, 1]})["findings"] if f["ref"] == "3.5")
    assert "more_d_steps restores diversity best: 9 digits" in f["finding"]
    assert "(seed 0's numbers; 1 of 2 seeds reach this finding on their own numbers: seed 0; seed 1 instead: " \
           "\u00abminibatch_std restores diversity best: 9 digits" in f["finding"]


# ----------------------------------------------------------------------------
# A tiny task on the harness, run with --seeds
# ----------------------------------------------------------------------------

# Constructed per-seed results: the cure beats the plain arm in seeds 0 and 1, not in seed 2.
ACC = {0: {"plain": 0.50, "cure": 0.70}, 1: {"plain": 0.52, "cure": 0.66}, 2: {"plain": 0.60, "cure": 0.55}}
CALLS: list[int] = []


def _answer(ex):
    a = ex["probe"]["arms"]
    better = a["cure"]["acc"] > a["plain"]["acc"]
    return (f"the cure {'helps' if better else 'does not help'}: {a['cure']['acc']:.3f} vs {a['plain']['acc']:.3f}",
            [f"n {ex['probe']['n']}"], ["probe_curve.png"])


def _plot_probe(m, arrays, cfg, out):
    import common

    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot(arrays["curve"], label="curve")
    ax.set_title(f"probe, seed {cfg.seed}")
    ax.legend()
    common.save_figure(fig, out / "probe_curve.png")


REPORT = types.ModuleType("fake_report")
REPORT.TASK = "task9"
REPORT.QUESTIONS = [harness.Question("9.1", "Does the cure help?", ("probe",), _answer)]
REPORT.plot_probe = _plot_probe


def _main(argv=None):
    args = harness.parse_args(harness.make_parser("task9", "A tiny task.", ["probe"]), argv)
    if args.replot or len(args.seeds) > 1:
        return harness.redirect(REPORT, args, argv, _main)

    def probe():
        CALLS.append(args.seed)
        if args.seed == 99:
            raise harness.UserError("seed 99 cannot be had")
        acc = ACC.get(args.seed, ACC[0])
        curve = np.random.default_rng(args.seed).random(5)
        return {"arms": {k: {"acc": v} for k, v in acc.items()}, "n": 100, "best": max(acc, key=acc.get)}, \
            {"curve": curve}

    with harness.user_errors("Task9.py"):
        return harness.run(REPORT, args, torch.device("cpu"), {"probe": probe})


def test_a_seed_that_fails_is_one_line_and_exit_2_keeping_the_others(tmp_path, capsys):
    out = tmp_path / "task9"
    _main(["--seeds", "0,1", "--out", str(out)])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(["--seeds", "0,1,99", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["Task9.py: error: seed 99 cannot be had"]
    assert all(p.read_bytes() == b for p, b in before.items())  # nothing written before is lost or changed


def test_a_multi_seed_run_merges_reuses_finished_seeds_and_replots(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(harness.report.TASK_TITLES, "task9", "Task9.py: a tiny task")
    out = tmp_path / "task9"
    CALLS.clear()
    ex = _main(["--seeds", "0,1", "--out", str(out)])
    assert CALLS == [0, 1]
    assert ex["probe"]["arms"]["cure"]["acc"] == 0.68 and ex["probe"]["n"] == 100
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["config"]["seeds"] == [0, 1] and doc["config"]["seed"] == 0
    assert doc["per_seed"]["1"]["probe"]["arms"]["plain"]["acc"] == 0.52
    for s in (0, 1):  # each seed's run is the single-seed command's: its own metrics.json and figures
        one = json.loads((out / f"seed-{s}" / "metrics.json").read_text())
        assert one["config"]["seed"] == s and "seeds" not in one["config"]
        assert one["findings"][0]["finding"].endswith(f"(One seed, {s}: `--seeds 0,1,2` tells whether other "
                                                      "seeds agree.)")
        assert_png_ok(out / f"seed-{s}" / "probe_curve.png")
    assert doc["findings"][0]["finding"] == ("the cure helps: 0.700 vs 0.500 (seed 0's numbers; 2 of 2 seeds reach "
                                             "this finding on their own numbers)")
    assert doc["findings"][0]["evidence"] == [
        "n 100", "over 2 seeds, mean \u00b1 sd (min-max): probe/arms/cure/acc 0.68 \u00b1 0.0283 (0.66-0.7); "
        "probe/arms/plain/acc 0.51 \u00b1 0.0141 (0.5-0.52)", "the same in all 2 seeds: probe/n 100"]
    assert_png_ok(out / "probe_curve.png") and assert_png_ok(out / "probe_seeds.png")
    summary = (out / "summary.md").read_text()
    assert "| arms/cure/acc | 0.68 \u00b1 0.02828 | 0.66 | 0.7 | 2 | 0.7 | 0.66 |" in summary
    page = (tmp_path / "index.html").read_text()
    assert 'id="task9"' in page and 'id="seed-0"' not in page and "seeds 0, 1 &middot;" in page

    # A third seed: the first two are reused, not rerun; the finding now splits.
    capsys.readouterr()
    CALLS.clear()
    _main(["--seeds", "0,1,2", "--out", str(out)])
    assert CALLS == [2]
    printed = capsys.readouterr().out
    assert "about 0.0 min" in printed and "already finished for seed 0" in printed
    doc = json.loads((out / "metrics.json").read_text())
    f = doc["findings"][0]["finding"]
    assert f.startswith("the cure helps: 0.700 vs 0.500") and "2 of 3 seeds reach this finding" in f
    assert "seed 2 instead: \u00abthe cure does not help: 0.550 vs 0.600\u00bb" in f
    assert doc["spread"]["probe"]["arms/cure/acc"]["n"] == 3

    # --fresh reruns every seed; --replot redraws every seed's figures and the merged ones, computing nothing.
    CALLS.clear()
    _main(["--seeds", "0,1,2", "--out", str(out), "--fresh"])
    assert CALLS == [0, 1, 2]
    for p in [out / "probe_seeds.png", out / "probe_curve.png", out / "seed-2" / "probe_curve.png"]:
        p.unlink()
    CALLS.clear()
    _main(["--seeds", "0,1,2", "--out", str(out), "--replot"])
    assert CALLS == [] and (out / "probe_seeds.png").exists() and (out / "seed-2" / "probe_curve.png").exists()


def test_the_seeds_figure_shows_every_seed_and_reads_cleanly(tmp_path):
    docs = {s: {"task": "task3", "config": {"seed": s}, "env": {"data": "real"},
                "experiments": {"mode_collapse": {**t3_collapse(c), "seconds": 1.0}}} for s, c in enumerate([9, 8, 3])}
    doc = seeds.merge(R3, [0, 1, 2], docs, {"seed": 0, "seeds": [0, 1, 2]})
    fig = seeds.seeds_figure("task3", "mode_collapse", doc)
    assert figure_problems(fig) == []
    coverage = next(ax for ax in fig.axes if ax.get_title() == "coverage")
    labels = [t.get_text() for t in coverage.get_xticklabels()]
    assert sorted(labels) == sorted(t3_collapse(1)["arms"])  # the arms, their shared path ("arms/") cut
    dots = [line for line in coverage.get_lines() if line.get_marker() == "o"]
    assert len(dots) == 3 * 7                    # a dot per seed and arm
    y = sorted(float(d.get_ydata()[0]) for d in dots if abs(d.get_xdata()[0] - labels.index("more_d_steps")) < 0.2)
    assert y == [3.0, 8.0, 9.0]
    harness.save_png(fig, tmp_path / "x_seeds.png", note="smoke")
    assert_png_ok(tmp_path / "x_seeds.png")
    # Numbers equal in every seed are not drawn: nothing varies, no figure.
    same = seeds.merge(R3, [0, 1], {0: docs[0], 1: docs[0]}, {"seed": 0, "seeds": [0, 1]})
    assert seeds.seeds_figure("task3", "mode_collapse", same) is None
    plt.close("all")


def test_seed_flags(capsys):
    parser = harness.make_parser("task9", "A tiny task.", ["probe"])
    a = harness.parse_args(parser, ["--seeds", "2,0,2"])
    assert a.seeds == [0, 2] and a.seed == 0
    assert harness.parse_args(parser, ["--seed", "7"]).seeds == [7]
    assert harness.parse_args(parser, ["--seeds", "0,1", "--seed", "5"]).seeds == [5]  # the last one given wins
    with pytest.raises(SystemExit) as e:
        harness.parse_args(parser, ["--seeds", "0,x"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert math.isclose(seeds.mean_of([0.1, 0.2]), 0.15)


def test_short_lists_get_a_spread_per_element_and_a_panel_with_their_axis():
    """collapse_sweep's active units per beta: a list per method, its positions the betas beside it."""
    def sweep(plain):
        return {"betas": [1.0, 10.0, 784.0], "plain": {"active_units": plain}, "free_bits": {"active_units": [20, 20, 19]},
                "sigma": {"active_units": 20}, "linear_optimum_active_units": [20, 12, 0], "train_images": 2000,
                "val_images": 500, "epochs": 5, "curve": list(range(40))}
    docs = {s: {"task": "task5", "config": {}, "env": {}, "experiments": {"collapse_sweep": sweep(p)}}
            for s, p in enumerate([[20, 16, 0], [20, 14, 0]])}
    doc = seeds.merge(R5, [0, 1], docs, {"seeds": [0, 1]})
    sp = doc["spread"]["collapse_sweep"]
    assert sp["plain/active_units/1"] == {"mean": 15.0, "sd": 1.414, "min": 14.0, "max": 16.0, "n": 2}
    assert "curve/0" not in sp                      # longer than MAX_LIST: a curve, not a per-setting list
    f = next(f for f in doc["findings"] if f["ask"] == "Collapse against the KL weight beta")
    assert any("collapse_sweep/plain/active_units/1 15 \u00b1 1.41 (14-16)" in e for e in f["evidence"])
    fig = seeds.seeds_figure("task5", "collapse_sweep", doc)
    panel = next(ax for ax in fig.axes if ax.get_title() == "plain active units")
    assert [t.get_text() for t in panel.get_xticklabels()] == ["beta 1", "beta 10", "beta 784"]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["plain active units"]  # the rest are equal
    assert figure_problems(fig) == []
    plt.close("all")
