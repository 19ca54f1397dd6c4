"""The experiment loop of a run and what it records: metrics.json (rewritten after
every experiment), summary.md, the arrays each figure is drawn from, the findings
(the assignment's questions answered from the metrics), and --replot."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Callable

import torch

from .errors import Diverged, UserError
from .report import SMOKE_NOTE as SMOKE_BANNER
from .report import figures_by_experiment, report_page, write_report
from . import threads
from .threads import fit_and_say, threads_restored
from .store import as_arrays, fmt, jsonable, load_plot_data, save_plot_data, write_atomic

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Question:
    """One question of the assignment (shared/HANDOUT.md, the items marked Q), and
    the rule that answers it from this run's metrics. `answer(experiments)` gets
    metrics.json's "experiments" dict and returns (finding, evidence, figures): one
    sentence whose direction and size are computed from the numbers (never canned
    prose), the metric values it used with their split, n and seeds, and the figure
    files to look at. `needs` names the experiments it reads."""
    ref: str                      # the assignment's numbering, e.g. "1.2"
    ask: str                      # the question in a few words
    needs: tuple[str, ...]
    answer: Callable[[dict], tuple[str, list[str], list[str]]]


def answer_questions(script: str, questions: list[Question], experiments: dict) -> list[dict]:
    """Each question's entry: {ref, ask, finding, evidence, figures}, or {ref, ask,
    todo} when an experiment it needs has not run (or did not finish)."""
    entries = []
    for q in questions:
        e = {"ref": q.ref, "ask": q.ask}
        missing = [n for n in q.needs if n not in experiments]
        failed = [n for n in q.needs if n in experiments and "error" in experiments[n]]
        if missing:
            e["todo"] = f"not run yet: python {script} --experiments {','.join(q.needs)}"
        elif failed:
            e["todo"] = f"{failed[0]} did not finish ({experiments[failed[0]]['error']})"
        else:
            try:
                finding, evidence, figures = q.answer(experiments)
            except KeyError as k:  # metrics written by an older version of the script
                e["todo"] = f"metric {k} missing: rerun python {script} --experiments {','.join(q.needs)}"
            except (TypeError, ValueError, ZeroDivisionError):  # a metric this run left undefined (null)
                e["todo"] = ("not answered: a metric it reads is undefined in this run (null in metrics.json); "
                             "see the tables below")
            else:
                e.update(finding=finding, evidence=list(evidence), figures=list(figures))
        entries.append(e)
    return entries


def pct(x: float, digits: int = 1) -> str:
    """0.8743 -> '87.4%' (findings quote accuracies this way)."""
    return f"{100 * x:.{digits}f}%"


def pts(a: float, b: float) -> str:
    """Difference of two accuracies in percentage points, unsigned: 0.951, 0.942 -> '0.9'."""
    return f"{abs(100 * (a - b)):.1f}"


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists are kept as values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# Flags that change what runs, not what a result means: a rerun with other values
# keeps the earlier experiments' metrics.
_RUN_ONLY = {"experiments", "fresh", "device", "out", "replot"}


_figure_note = ""  # the note of the figures being drawn (figure_note)
# Set while harness.seeds runs one seed of a multi-seed run (seed_run): that run writes no report page
# (the merged run does), and with keep_finished an experiment it already recorded is not rerun.
_seed_run = {"on": False, "keep_finished": False}


@contextlib.contextmanager
def seed_run(keep_finished: bool):
    """While one seed of `--seeds` runs (harness/seeds.py)."""
    saved = dict(_seed_run)
    _seed_run.update(on=True, keep_finished=keep_finished)
    try:
        yield
    finally:
        _seed_run.update(saved)


def same_settings(old: dict, config: dict, recipe: dict) -> bool:
    """Whether a metrics.json (`old`) was written with these flags and recipe (flags that change only what
    runs, not what a result means, aside)."""
    return {k: v for k, v in old.get("config", {}).items() if k not in _RUN_ONLY} == \
        {k: v for k, v in config.items() if k not in _RUN_ONLY} and old.get("recipe", {}) == recipe


def set_aside(path: Path, keep: Callable[[dict], bool]) -> None:
    """Move an existing metrics.json written with other settings (`keep(old)` false, or unreadable) to
    metrics.previous.json, so a run with new settings never mixes its results with the old ones."""
    try:
        old = json.loads(path.read_text())
        if isinstance(old, dict) and keep(old):
            return
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pass
    try:
        os.replace(path, path.with_name("metrics.previous.json"))
    except OSError as e:
        raise UserError(f"could not move {path} aside ({e.strerror}); choose another --out") from None


def figure_note() -> str:
    """While a smoke run's figures are drawn, the line each of them carries below it (added by
    common.save_figure), so a smoke figure cannot pass for a real one; otherwise ''."""
    return _figure_note


def _plot(report: ModuleType, name: str, metrics: dict, arrays: dict, doc: dict, out: Path, note: str = "") -> None:
    """Draw `name`'s figures with report.plot_<name>(metrics, arrays, cfg, out), if any;
    cfg holds the run's flags as attributes, its recipe as cfg.recipe (a dict) and
    cfg.smoke. `note`: a line below each figure (a smoke run's is added here)."""
    global _figure_note
    fn = getattr(report, f"plot_{name}", None)
    config = doc.get("config", {})
    _figure_note = note or (f"{SMOKE_BANNER}." if config.get("smoke") else "")
    try:
        if fn is not None:
            fn(metrics, arrays, SimpleNamespace(**config, recipe=doc.get("recipe", {})), out)
    finally:
        _figure_note = ""


class Results:
    """metrics.json and summary.md for one task's run, rewritten atomically after
    every experiment so an interrupted run keeps what finished. Nothing is written
    until the first experiment ends, so an early error leaves `--out` untouched.
    A rerun with the same settings keeps the entries of experiments it does not
    rerun; a rerun with other settings first moves the old metrics.json aside to
    metrics.previous.json."""

    def __init__(self, report: ModuleType, args, device: torch.device, recipe=None):
        if getattr(args, "replot", False):  # a task's main handles --replot before it gets here
            raise UserError(f"{report.TASK.capitalize()}.py cannot redraw its figures without recomputing yet; "
                            f"run it without --replot")
        self.report, self.task, self.args, self.out = report, report.TASK, args, Path(args.out)
        self.script = f"{self.task.capitalize()}.py"
        self.config = jsonable({k: v for k, v in vars(args).items()  # one seed: `seed` says it all
                                if k != "seeds" or len(v) > 1})
        # The constants a task keeps out of its flags (its config dataclass), recorded beside them.
        self.recipe = jsonable(dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else recipe or {})
        self.env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                    "data": "smoke" if args.smoke else "real", "git_commit": git_commit(),
                    "date": datetime.now().isoformat(timespec="seconds")}
        self.experiments: dict[str, dict] = {}
        self._previous: Path | None = None
        path = self.out / "metrics.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
                same = same_settings(old, self.config, self.recipe)
            except (json.JSONDecodeError, AttributeError):
                old, same = {}, False
            if same:
                self.experiments = dict(old.get("experiments", {}))
            else:
                self._previous = path

    def record(self, name: str, metrics: dict) -> None:
        if self._previous is not None:  # keep the other settings' results, once
            set_aside(self._previous, lambda old: False)
            self._previous = None
        self.experiments[name] = jsonable(metrics)
        self.findings = findings = answer_questions(self.script, getattr(self.report, "QUESTIONS", []),
                                                    self.experiments)
        for f in findings:  # a rule may name optional figures (e.g. one per --embed method): keep those written
            if "figures" in f:
                f["figures"] = [p for p in f["figures"] if (self.out / p).exists()]
            if "finding" in f:  # issue 21: a reader should know a comparison rests on one draw
                f["finding"] += (f" (One seed, {self.config.get('seed')}: `--seeds 0,1,2` tells whether other "
                                 "seeds agree.)")
        doc = {"task": self.task, "config": self.config, **({"recipe": self.recipe} if self.recipe else {}),
               "env": self.env, "experiments": self.experiments, "findings": findings}
        write_atomic(self.out / "metrics.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
        write_atomic(self.out / "summary.md", self._summary(findings))
        if not _seed_run["on"]:  # one seed of --seeds: the merged run writes the page
            write_report(self.out.parent, self.out.name)

    def _summary(self, findings: list[dict]) -> str:
        figures = figures_by_experiment(self.out, list(self.experiments))
        lines = [f"# {self.task}: summary", ""] + ([f"**{SMOKE_BANNER}.**", ""] if self.args.smoke else []) + [
                 f"data: {self.env['data']}, device: {self.env['device']}, torch {self.env['torch']}, "
                 f"commit {self.env['git_commit']}, {self.env['date']}", "",
                 "config: " + ", ".join(f"`{k}={v}`" for k, v in self.config.items()), ""]
        if self.recipe:
            lines += ["recipe: " + ", ".join(f"`{k}={v}`" for k, v in self.recipe.items()), ""]
        if findings:
            lines += ["## Findings: the assignment's questions, answered from this run", "",
                      f"_Every number below comes from this run: seed {self.config.get('seed')}, "
                      f"{self.env['data']} data (all settings in the config line above)._", ""]
            lines += findings_md(findings)
        for name, m in self.experiments.items():
            lines += [f"## {name}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in flatten(m).items()]
            lines += [""] + [f"![{p}]({p})" for p in figures.get(name, [])] + [""]
        return "\n".join(lines)

    def run(self, experiments: dict[str, Callable[[], dict | tuple[dict, dict]]]) -> dict:
        """Run the chosen experiments in order. Each returns its metrics dict, or
        (metrics, arrays): the arrays its figures need beyond the metrics, stored in
        cache/plot/<name>.npz. Then the report's plot_<name> draws the figures from the
        metrics exactly as metrics.json holds them (a JSON round trip) and the arrays,
        so `--replot` redraws the same figures later without computing anything. A
        Diverged run is recorded with its reason (no figures) and the next one runs."""
        if self.args.smoke:
            print(SMOKE_BANNER, flush=True)
        with threads_restored():
            for name in self.args.experiments:
                if _seed_run["keep_finished"] and "error" not in self.experiments.get(name, {"error": 0}):
                    print(f"\n{self.task}: {name} already finished for seed {self.args.seed} in {self.out} "
                          f"(--fresh reruns it)", flush=True)
                    continue
                print(f"\n=== {self.task}: {name} ===", flush=True)
                fit_and_say(self.args.smoke)       # others may have started or stopped meanwhile
                first = len(threads.said) - 1      # threads.said[-1]: the count now
                t0 = time.perf_counter()
                try:
                    result = experiments[name]()
                    metrics, arrays = result if isinstance(result, tuple) else (result, {})
                except Diverged as e:
                    print(f"{name}: training diverged ({e}); continuing with the next experiment", flush=True)
                    metrics, arrays = {"error": f"diverged: {e}"}, {}
                metrics = json.loads(json.dumps(jsonable(metrics)))
                if arrays:
                    arrays = as_arrays(arrays)
                    save_plot_data(self.out, name, arrays)
                if "error" not in metrics:
                    _plot(self.report, name, metrics, arrays, {"config": self.config, "recipe": self.recipe}, self.out)
                metrics["seconds"] = round(time.perf_counter() - t0, 3)
                used = threads.said[first:]  # the counts this experiment ran with, in order
                self.env.setdefault("cpu_threads", {})[name] = used[0] if len(set(used)) == 1 else used
                self.record(name, metrics)
        if getattr(self.args, "print_metrics", False):
            self.print_metrics()
        self.print_findings()
        return self.experiments

    def print_metrics(self) -> None:
        """--print-metrics: every scalar metric of this run's experiments, one per line."""
        rows = [(n, k, fmt(v)) for n in self.args.experiments if n in self.experiments
                for k, v in flatten(self.experiments[n]).items() if isinstance(v, (int, float, str)) or v is None]
        w0, w1 = max([10] + [len(r[0]) for r in rows]), max([6] + [len(r[1]) for r in rows])
        print(f"\n{'experiment':<{w0}}  {'metric':<{w1}}  value")
        for n, k, v in rows:
            print(f"{n:<{w0}}  {k:<{w1}}  {v}")

    def print_findings(self) -> None:
        """The end of a run: the findings, one line each, then where to read them."""
        print("\nfindings" + (f" ({SMOKE_BANNER})" if self.args.smoke else "") + ":")
        for f in getattr(self, "findings", []):
            print(f"  {f['ref']} {f['ask']}: {f.get('finding', f.get('todo'))}")
        print(f"\nsummary: {self.out / 'summary.md'} (every metric: metrics.json, or --print-metrics)")
        if not _seed_run["on"]:
            print(f"report page: {report_page(self.out)}")
        if self.args.smoke:
            print(SMOKE_BANNER, flush=True)


def findings_md(findings: list[dict]) -> list[str]:
    """summary.md's lines for the findings: a heading per question, the finding (or what is missing),
    its evidence and figures."""
    lines = []
    for f in findings:
        lines += [f"### {f['ref']}. {f['ask']}", ""]
        if "todo" in f:
            lines += [f"_{f['todo']}_", ""]
            continue
        lines += [f"**Finding.** {f['finding']}", ""] + [f"- {ev}" for ev in f["evidence"]]
        lines += [f"- figure: [{p}]({p})" for p in f["figures"]] + [""]
    return lines


def seeds_summary(doc: dict, out: Path) -> str:
    """summary.md of a multi-seed run: findings with seed agreement, then per experiment every number's
    mean +- sd (min - max, n) and each seed's value, and its figures."""
    seeds, smoke = doc["seeds"], doc["env"].get("data") == "smoke"
    lines = [f"# {doc['task']}: summary over seeds {', '.join(map(str, seeds))}", ""] + \
        ([f"**{SMOKE_BANNER}.**", ""] if smoke else []) + \
        ["Each seed's run: " + ", ".join(f"[seed-{s}/summary.md](seed-{s}/summary.md)" for s in seeds)
         + ". Figures without `_seeds` in their name are the first seed's.", "",
         "config: " + ", ".join(f"`{k}={v}`" for k, v in doc["config"].items()), "",
         "## Findings: what most seeds find (one seed's numbers), how many seeds agree, the spread", ""]
    lines += findings_md(doc["findings"])
    figures = figures_by_experiment(out, list(doc["experiments"]))
    for name, m in doc["experiments"].items():
        lines += [f"## {name}", ""]
        if name not in doc["spread"]:
            lines += [f"_{m.get('error', 'no seed finished')}_", ""]
            continue
        lines += ["| metric | mean \u00b1 sd | min | max | n | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|---|---|---|" + "---|" * len(seeds)]
        for path, s in doc["spread"][name].items():
            each = [flatten(doc["per_seed"][str(x)].get(name, {})).get(path) for x in seeds]
            lines.append(f"| {path} | {fmt(s['mean'])} \u00b1 {fmt(s['sd'])} | {fmt(s['min'])} | {fmt(s['max'])} | "
                         f"{s['n']} | " + " | ".join(fmt(v) for v in each) + " |")
        lines += ["", f"seconds, all seeds: {m.get('seconds')}", ""]
        lines += [f"![{p}]({p})" for p in figures.get(name, [])] + [""]
    return "\n".join(lines)


def run(report: ModuleType, args, device: torch.device,
        experiments: dict[str, Callable[[], dict | tuple[dict, dict]]], recipe=None) -> dict:
    """Run the chosen experiments of `args` (see Results.run); returns the recorded ones.
    `recipe`: the task's config dataclass (the constants that are not flags), recorded
    in metrics.json beside the flags."""
    return Results(report, args, device, recipe).run(experiments)


def replot(report: ModuleType, out: str | Path) -> dict:
    """`--replot`: redraw the figures of every experiment recorded in out/metrics.json
    with the report's plot functions, given the metrics as the run gave them (without
    "seconds"), the arrays of cache/plot/ and the run's config. Figures only:
    metrics.json, summary.md and caches are left as they are. Returns the recorded
    experiments."""
    out = Path(out)
    try:
        doc = json.loads((out / "metrics.json").read_text())
        recorded = doc["experiments"]
        if "per_seed" in doc:  # a --seeds run: each seed's figures, then the merged ones
            from . import seeds
            for s in doc["seeds"]:
                replot(report, seeds.seed_dir(out, s))
            seeds.draw(report, out, doc)
            return recorded
    except FileNotFoundError:
        raise UserError(f"--replot: no {out / 'metrics.json'}; run the experiments first") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"--replot: {out / 'metrics.json'} is not a metrics file of this suite") from None
    for name, metrics in recorded.items():
        if "error" not in metrics and hasattr(report, f"plot_{name}"):
            m = {k: v for k, v in metrics.items() if k != "seconds"}  # the dict the run gave it
            _plot(report, name, m, load_plot_data(out, name), doc, out)
            print(f"replot: {name}", flush=True)
    return recorded
