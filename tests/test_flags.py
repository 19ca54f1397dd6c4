"""Every numeric flag of every task, generated from the parsers (issue 12).

For each task's parser, every option that takes numbers must declare its range with a
harness.Bounded type (or a harness.BoundedList of them): a new flag without one fails
here. Each is given -1, 0 and a value far above its range through the task's own
parsing (harness.parse_args with its smoke values and check_args): it is either
accepted, and then inside its range, or refused with exit 2 and one line naming the
flag. Then every flag whose range admits 0 (often "0 = all" or "off") runs end to end
in smoke mode, grouped into as few runs as check_args allows, each run restricted to
the experiments the flags belong to (read from the parser's argument group titles:
"transfer", "gap_shift: ..."; a flag of a shared group, such as --train-size, runs with
the task's first experiment, which loads the data and trains the first model).

Below them, one test per combination check of every task's check_args (each failed
before the check existed: the run went ahead, silently capped or crashed later).
"""
from __future__ import annotations

import importlib
import json

import pytest

import common
import harness

TASKS = ["Task1", "Task2", "Task3", "Task4", "Task5"]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _takes_numbers(action) -> bool:
    """Whether an option without a Bounded type still takes numbers: its default is one
    (or a list of them), or its type turns "1" into one."""
    d = action.default
    if _is_number(d) or (isinstance(d, list) and d and all(_is_number(x) for x in d)):
        return True
    if action.type in (int, float):
        return True
    if callable(action.type):
        try:
            v = action.type("1")
        except Exception:  # noqa: BLE001  a type that refuses "1" takes no plain numbers
            return False
        return _is_number(v) or (isinstance(v, list) and bool(v) and all(_is_number(x) for x in v))
    return False


def numeric_flags(parser) -> list[tuple[str, harness.Bounded, bool, object]]:
    """[(option string, its Bounded, whether it is a list, the action)] for every option
    that takes numbers."""
    flags = []
    for a in parser._actions:
        if not a.option_strings or a.nargs == 0 or a.choices is not None:
            continue
        kind = getattr(a.type, "element", a.type)  # list flags ("0.1,0.5") declare their element's range
        if isinstance(kind, harness.Bounded):
            flags.append((a.option_strings[-1], kind, kind is not a.type, a))
    return flags


def unranged_numeric_flags(parser) -> list[str]:
    ranged = {a for *_, a in numeric_flags(parser)}
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and a.nargs != 0 and a.choices is None and a not in ranged and _takes_numbers(a)]


def parse(mod, argv):
    return harness.parse_args(mod.build_parser(), argv, mod.SMOKE, mod.check_args)


def probe_values(b: harness.Bounded) -> list[str]:
    far = b.hi * 10 + 10 if b.hi is not None else 10 ** 9
    return ["-1", "0", str(b.kind(far))]


@pytest.mark.parametrize("task", TASKS)
def test_help_offers_at_most_30_options(task):
    """Issue 23's budget: a flag exists where a student would change it; recipe constants
    live in the task's config dataclass. Shared flags and -h count."""
    parser = importlib.import_module(task).build_parser()
    options = [a.option_strings[-1] for a in parser._actions if a.option_strings]
    assert len(options) <= 30, (len(options), options)


@pytest.mark.parametrize("task", TASKS)
def test_every_numeric_flag_declares_its_range(task):
    mod = importlib.import_module(task)
    parser = mod.build_parser()
    assert len(numeric_flags(parser)) >= 5, f"{task}: the sweep found almost no numeric flags"
    assert unranged_numeric_flags(parser) == [], f"{task}: numeric flags without a harness.Bounded type"
    # and --help states each range
    text = " ".join(parser.format_help().split())
    for _, b, _, _ in numeric_flags(parser):
        assert b.describe() in text


def test_the_sweep_notices_a_flag_without_a_range():
    p = harness.make_parser("task9", "Task 9.", ["a"])
    p.add_argument("--ranged", type=harness.positive_int, default=3)
    p.add_argument("--plain-int", type=int, default=3)
    p.add_argument("--hand-made", type=lambda t: max(0.0, float(t)), default=None)
    p.add_argument("--name", default="x")
    p.add_argument("--fractions", type=harness.BoundedList(harness.unit_float), default=[0.5])
    assert unranged_numeric_flags(p) == ["--plain-int", "--hand-made"]
    assert [f[0] for f in numeric_flags(p)] == ["--seeds", "--ranged", "--fractions"]


@pytest.mark.parametrize("task", TASKS)
def test_every_numeric_flag_parses_or_is_refused_in_one_line(task, capsys, tmp_path):
    mod = importlib.import_module(task)
    for name, b, is_list, action in numeric_flags(mod.build_parser()):
        if b.lo is not None and not b.lo_open:  # the bound itself belongs to the range
            assert b.contains(b.lo) and action.type(str(b.kind(b.lo))) is not None
        for v in probe_values(b):
            capsys.readouterr()
            try:
                args = parse(mod, ["--smoke", "--out", str(tmp_path / "o"), f"{name}={v}"])
            except SystemExit as e:
                err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
                assert e.code == 2, f"{task} {name} {v}: exit {e.code}"
                assert len(err) == 1 and "Traceback" not in err[0], (task, name, v, err)
                assert err[0].startswith(f"{task}.py: error: ") and "--" in err[0], (task, name, v, err[0])
                if not b.contains(b.kind(v)):  # refused by the type: the message names the flag and range
                    assert name in err[0] and b.describe() in err[0], (task, name, v, err[0])
                continue
            assert b.contains(b.kind(v)), f"{task} {name} {v} is outside {b.describe()} but was accepted"
            got = getattr(args, action.dest)
            assert got == ([b.kind(v)] if is_list else b.kind(v)), (task, name, v, got)
    assert not (tmp_path / "o").exists()  # parsing writes nothing


def zero_runs(mod) -> list[tuple[list[str], list[str]]]:
    """[(flags, experiments)]: every flag whose range admits 0, except those whose smoke
    value is already 0 (every smoke test runs them), set to 0 together in as few runs as
    check_args accepts (greedy: a flag refused beside the group waits for the next run).
    Each run covers the experiments its flags belong to: a flag in an argument group
    whose title starts with an experiment's name belongs to that one, any other to the
    first experiment (they all load the data and build the models the same way)."""
    parser = mod.build_parser()
    smoke = parse(mod, ["--smoke"])
    owner = {}
    for grp in parser._action_groups:
        head = grp.title.split()[0].rstrip(":") if grp.title else ""
        for a in grp._group_actions:
            owner[a.dest] = [head] if head in mod.EXPERIMENTS else mod.EXPERIMENTS[:1]
    pending = [(name, a.dest) for name, b, _, a in numeric_flags(parser)
               if b.contains(0) and getattr(smoke, a.dest) not in (0, [0])]
    runs = []
    while pending:
        group = []
        for name, dest in pending:
            trial = group + [(name, dest)]
            exps = sorted({e for _, d in trial for e in owner[d]}, key=mod.EXPERIMENTS.index)
            try:
                parse(mod, ["--smoke", "--experiments", ",".join(exps), *[f"{n}=0" for n, _ in trial]])
            except SystemExit:
                continue
            group = trial
        assert group, f"{mod.__name__}: {pending[0][0]} 0 lies in its range but is refused on its own"
        exps = sorted({e for _, d in group for e in owner[d]}, key=mod.EXPERIMENTS.index)
        runs.append(([n for n, _ in group], exps))
        pending = [p for p in pending if p not in group]
    return runs


@pytest.mark.parametrize("task", TASKS)
def test_flags_that_accept_zero_run_end_to_end(task, tmp_path, capsys, monkeypatch):
    mod = importlib.import_module(task)
    # "0 = all" means a whole smoke split (up to 2,000 generated images): cap the splits
    # that no task sizes itself at 150 images, so these runs cost what a smoke run costs.
    load_split = common.load_split
    monkeypatch.setattr(common, "load_split", lambda *a, smoke_size=None, **k: load_split(
        *a, smoke_size=smoke_size or 150, **k))
    for i, (flags, exps) in enumerate(zero_runs(mod)):
        out = tmp_path / f"zero{i}"
        mod.main(["--smoke", "--out", str(out), "--experiments", ",".join(exps), *[f"{n}=0" for n in flags]])
        doc = json.loads((out / "metrics.json").read_text())
        assert list(doc["experiments"]) == exps, (task, flags)
        for name, m in doc["experiments"].items():
            assert "error" not in m, (task, flags, name, m["error"])
        for n in flags:
            assert doc["config"][n.lstrip("-").replace("-", "_")] in (0, [0]), (task, n)


# ----------------------------------------------------------------------------
# The combination checks (check_args) and the ranges that replaced hand checks
# ----------------------------------------------------------------------------

REFUSED = [
    # Task 1: the recipe's validation and probe sets come out of the training images (smoke: 60 and 150),
    # t-SNE/UMAP points out of the test set
    ("Task1", ["--train-size", "60"], ["--train-size", "val_size 60"]),
    ("Task1", ["--test-size", "150", "--n-vis", "151"], ["--n-vis", "--test-size"]),
    ("Task1", ["--train-size", "209"], ["--train-size", "probe_train_size 150"]),
    ("Task1", ["--transfer-train-size", "20"], ["--transfer-train-size", "transfer_val_size 20"]),
    ("Task1", ["--scratch-train-size", "1"], ["--scratch-train-size"]),
    ("Task1", ["--n-vis", "3"], ["--n-vis"]),                        # UMAP fails below 4 points, t-SNE below 3
    # Task 2: the head statistics take the first --heads-images of the --test-images subset
    ("Task2", ["--test-images", "150", "--heads-images", "151"], ["--heads-images", "--test-images"]),
    ("Task2", ["--cifar-images", "11"], ["--cifar-images"]),         # one per class: at most 10
    ("Task2", ["--discard-ratio", "1"], ["--discard-ratio"]),
    ("Task2", ["--mask-fractions", "0,0.5,1.5"], ["--mask-fractions"]),
    # Task 3: the D warm-up lies within the run (probe sizes, Adam's betas, --d-stop-frac are recipe
    # constants now: tests/test_task3.py test_recipe_refuses_inconsistent_constants)
    ("Task3", ["--vanish-iters", "10", "--vanish-warmup-iters", "11"], ["--vanish-warmup-iters", "--vanish-iters"]),
    ("Task3", ["--overfit-class", "10"], ["--overfit-class"]),
    # Task 4: the joint views sample from the 300 smoke test images; the shift range must be a range
    ("Task4", ["--tsne-large", "301"], ["--tsne-large"]),
    ("Task4", ["--tsne-small", "4"], ["--tsne-small"]),
    ("Task4", ["--shift-min", "2", "--shift-max", "2"], ["--shift-min", "--shift-max"]),
    ("Task4", ["--shift-steps", "1"], ["--shift-steps"]),
    # Task 5: warm-ups within their runs (the sweep's is the recipe's: 1 epoch in --smoke), the sweep's
    # sets inside the main ones. The sample counts are recipe fields: test_task5 checks their ranges.
    ("Task5", ["--epochs", "3", "--warmup-epochs", "3"], ["--warmup-epochs", "--epochs"]),
    ("Task5", ["--sweep-epochs", "1"], ["--sweep-epochs", "sweep_warmup_epochs"]),
    ("Task5", ["--val-size", "200", "--sweep-val", "201"], ["--sweep-val", "--val-size"]),
    ("Task5", ["--train-size", "500", "--sweep-size", "501"], ["--sweep-size", "--train-size"]),
    ("Task5", ["--sweep-betas", "1,0"], ["--sweep-betas"]),
]


@pytest.mark.parametrize("task,argv,flags", REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_combinations_are_refused_in_one_line_before_anything_runs(task, argv, flags, capsys, tmp_path):
    mod = importlib.import_module(task)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        mod.main(["--smoke", "--out", str(out), *argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{task}.py: error: ") and all(f in err[0] for f in flags), err[0]
    assert not out.exists()  # refused before anything was loaded or written


ACCEPTED = [
    ("Task1", ["--n-vis", "150", "--test-size", "150"]),       # the bounds themselves are fine
    ("Task1", ["--train-size", "210"]),                        # 150 left beside validation: the probe's 150
    ("Task1", ["--experiments", "scratch_shortcuts", "--train-size", "10"]),  # no CIFAR split: val_size unused
    ("Task2", ["--heads-images", "150", "--test-images", "150"]),
    ("Task2", ["--mask-fractions", "0,1"]),                    # 1 = every patch masked: the chance-level end
    ("Task3", ["--vanish-iters", "10", "--vanish-warmup-iters", "10"]),
    ("Task4", ["--tsne-large", "300", "--shift-min", "-3", "--shift-max", "-2"]),
    ("Task4", ["--experiments", "zeroshot", "--shift-min", "2", "--shift-max", "1"]),  # gap_shift not run
    ("Task5", ["--sweep-val", "200", "--sweep-size", "500", "--sweep-epochs", "2"]),
    ("Task5", ["--experiments", "train", "--epochs", "1", "--warmup-epochs", "10"]),
]


@pytest.mark.parametrize("task,argv", ACCEPTED, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_combinations_at_their_limits_are_accepted(task, argv, tmp_path):
    mod = importlib.import_module(task)
    assert parse(mod, ["--smoke", "--out", str(tmp_path), *argv]) is not None
