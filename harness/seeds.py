"""--seeds 0,1,2: one run per seed, then what the seeds say together (issue 21).

Each seed's run is the single-seed command `--seed S --out OUT/seed-S`, with its own figures,
metrics.json, summary.md and cache/; adding a seed later reuses the finished ones (an experiment
a seed recorded with the same settings is kept; --fresh reruns everything). Then in OUT/:

    metrics.json   experiments: each metric's mean over the seeds (what the findings read);
                   per_seed: every seed's experiments as its run recorded them;
                   spread: {experiment: {metric path: {mean, sd, min, max, n}}} for each number
    findings       each question's finding as most seeds reach it (one seed's sentence, its
                   numbers consistent), how many seeds reach it and what the others found
                   (`agree`), and the mean +- sd of every number the rule read
    <exp>_seeds.png  each seed's value of those numbers (dots) with mean +- sd (seeds_plot.py)
    <exp>_*.png    the first seed's figures, marked as such below the picture
    summary.md     tables of mean +- sd (min - max, n) and each seed's value
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from . import results
from .report import SMOKE_NOTE, report_page, write_report
from .seeds_plot import _is_number, _short_list, seeds_figure
from .store import load_plot_data, save_png, write_atomic



def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def _round(x: float, digits: int = 4) -> float:
    """x to `digits` significant digits (a mean of 8, 8 and 9 digits reads 8.333, not 8.333333333333334)."""
    return x if x == 0 or not math.isfinite(x) else round(x, digits - 1 - math.floor(math.log10(abs(x))))


def mean_of(values: list):
    """One metric over the seeds that recorded it. Numbers: the mean (an int when the seeds gave ints and it
    is whole: 7 digits, not 7.0); None when more than half the seeds left it undefined, else the others' mean.
    Equal-length lists: element by element. Booleans: the majority (ties: the first seed). Anything else
    (names): the first seed's."""
    defined = [v for v in values if v is not None]
    if len(defined) * 2 < len(values) or not defined:
        return None
    if all(_is_number(v) for v in defined):
        mean = _round(float(np.mean(defined)))
        return int(mean) if all(isinstance(v, int) for v in defined) and mean == int(mean) else mean
    if all(isinstance(v, bool) for v in defined):
        return sum(defined) * 2 > len(defined) or (sum(defined) * 2 == len(defined) and defined[0])
    if all(isinstance(v, list) for v in defined) and len({len(v) for v in defined}) == 1:
        return [mean_of([v[i] for v in defined]) for i in range(len(defined[0]))]
    if all(isinstance(v, dict) for v in defined):
        keys = list(dict.fromkeys(k for v in defined for k in v))
        return {k: mean_of([v.get(k) for v in defined]) for k in keys}
    return defined[0]


def spread_of(per_seed: list[dict], prefix: str = "") -> dict[str, dict]:
    """{metric path: {mean, sd, min, max, n}} for every number in the seeds' metrics dicts (sd: the sample
    standard deviation, ddof 1; 0 with one seed). Paths as in summary.md: "arms/collapse/coverage"."""
    out: dict[str, dict] = {}
    keys = list(dict.fromkeys(k for m in per_seed for k in m))
    for k in keys:
        values = [m.get(k) for m in per_seed]
        if all(isinstance(v, dict) or v is None for v in values) and any(isinstance(v, dict) for v in values):
            out.update(spread_of([v or {} for v in values], f"{prefix}{k}/"))
        elif all(_short_list(v) for v in values if v is not None) and len({len(v) for v in values if v}) == 1:
            out.update(spread_of([dict(enumerate(v or [])) for v in values], f"{prefix}{k}/"))
        elif k != "seconds" and any(_is_number(v) for v in values):
            x = np.array([v for v in values if _is_number(v)], dtype=float)
            out[f"{prefix}{k}"] = {"mean": _round(float(x.mean())),
                                   "sd": _round(float(x.std(ddof=1))) if len(x) > 1 else 0.0,
                                   "min": _round(float(x.min())), "max": _round(float(x.max())), "n": len(x)}
    return out


class _Reads(dict):
    """A metrics dict that remembers the path of every value a question's rule read from it, so the
    findings can show the spread of exactly the numbers they rest on."""

    def __init__(self, d: dict, path: tuple = (), seen: list | None = None):
        super().__init__(d)
        self._path, self._seen = path, seen if seen is not None else []

    def _wrap(self, k, v):
        if isinstance(v, dict):
            return _Reads(v, self._path + (k,), self._seen)
        if (self._path + (k,)) not in self._seen:
            self._seen.append(self._path + (k,))
        return v

    def __getitem__(self, k):
        return self._wrap(k, super().__getitem__(k))

    def get(self, k, default=None):
        return self[k] if k in self else default

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]


_NUMBER = re.compile(r"[-+\u2212]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")  # 1,558  -0.5  1.2e+03


def wording(finding: str) -> str:
    """A finding with its numbers taken out: two seeds agree when their rules chose the same words
    (direction, ranking, verdict), whatever the numbers. "8 of 10 digits: varied" -> "# of # digits: varied"."""
    return _NUMBER.sub("#", finding)


def agree(seed_findings: dict[int, str | None]) -> tuple[int | None, str]:
    """Group the seeds by the words of their findings (numbers aside). Returns the seed that speaks for the
    largest group (ties: the earliest seed's group), whose finding a multi-seed run states with its own,
    consistent numbers, and the words that follow it: how many seeds reach it and what the others found.
    (None, "") when no seed answered."""
    groups: dict[str, list[int]] = {}
    for s, f in seed_findings.items():
        if f is not None:
            groups.setdefault(wording(f), []).append(s)
    if not groups:
        return None, ""
    main = max(groups.values(), key=len)  # the first of the largest: the earliest seed's on a tie
    n = len(seed_findings)
    text = f" (seed {main[0]}'s numbers; {len(main)} of {n} seeds reach this finding on their own numbers"
    text += f": seed{'s' if len(main) > 1 else ''} {', '.join(map(str, main))}" if len(main) < n else ""
    said = {wording(c) for c in _clauses(seed_findings[main[0]])}
    for others in (g for g in groups.values() if g is not main):  # only the parts that read differently
        differ = [c for c in _clauses(seed_findings[others[0]]) if wording(c) not in said]
        text += f"; seed{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} instead: " \
                f"\u00ab{'; '.join(differ)}\u00bb"
    silent = [str(s) for s, f in seed_findings.items() if f is None]
    return main[0], text + (f"; not answered in seed {', '.join(silent)}" if silent else "") + ")"


def _clauses(finding: str) -> list[str]:
    """A finding's parts: split at "; " outside brackets ("a (b; c); d" -> ["a (b; c)", "d"])."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(finding):
        depth += (ch in "([\u00ab") - (ch in ")]\u00bb")
        if depth == 0 and finding.startswith("; ", i):
            parts.append(finding[start:i])
            start = i + 2
    return parts + [finding[start:]]


def merge(report: ModuleType, seeds: list[int], docs: dict[int, dict], config: dict) -> dict:
    """The metrics.json of a multi-seed run from its seeds' metrics.json (see the module docstring)."""
    first = docs[seeds[0]]
    names = list(dict.fromkeys(n for s in seeds for n in docs[s].get("experiments", {})))
    experiments, spread, per_seed = {}, {}, {str(s): docs[s].get("experiments", {}) for s in seeds}
    for name in names:
        ok = [docs[s]["experiments"][name] for s in seeds
              if name in docs[s].get("experiments", {}) and "error" not in docs[s]["experiments"][name]]
        if not ok:
            experiments[name] = next(docs[s]["experiments"][name] for s in seeds if name in docs[s]["experiments"])
            continue
        m = mean_of([{k: v for k, v in e.items() if k != "seconds"} for e in ok])
        m["seconds"] = round(sum(e.get("seconds", 0) for e in ok), 3)
        experiments[name], spread[name] = m, spread_of(ok)
    questions, script = getattr(report, "QUESTIONS", []), f"{first['task'].capitalize()}.py"
    by_seed = {s: results.answer_questions(script, questions, per_seed[str(s)]) for s in seeds}
    findings, reads = [], []
    for i, q in enumerate(questions):
        speaker, text = agree({s: by_seed[s][i].get("finding") for s in seeds})
        f = dict(by_seed[seeds[0] if speaker is None else speaker][i])
        if speaker is not None:
            read = _reads(q, per_seed[str(speaker)])
            f.update(finding=f["finding"] + text, evidence=f["evidence"] + _spread_lines(read, spread, len(seeds)))
            reads += read
        findings.append(f)
    return {"task": first["task"], "config": config, **({"recipe": first["recipe"]} if "recipe" in first else {}),
            "env": {**first.get("env", {}), "git_commit": results.git_commit(), "date": datetime.now().isoformat(
                timespec="seconds"), "seeds_env": {str(s): docs[s].get("env", {}) for s in seeds}},
            "seeds": seeds, "experiments": experiments, "findings": findings, "spread": spread,
            "reads": {n: list(dict.fromkeys(p.split("/", 1)[1] for p in reads if p.split("/")[0] == n))
                      for n in spread}, "per_seed": per_seed}


def _reads(question, experiments: dict) -> list[str]:
    """The metric paths ("experiment/a/b") the question's rule reads from these experiments."""
    seen: list[tuple] = []
    try:
        question.answer(_Reads(experiments, seen=seen))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return ["/".join(map(str, p)) for p in seen if len(p) > 1]


def _spread_lines(paths: list[str], spread: dict, n: int) -> list[str]:
    """Evidence for a finding over n seeds: each number its rule read, mean +- sd (min-max) where the seeds
    differ (and how many defined it, where some did not), once for those that are the same in every seed."""
    found = [(f"{e}/{k}", v) for e, _, rest in (p.partition("/") for p in paths)
             for k, v in spread.get(e, {}).items() if k == rest or k.rsplit("/", 1)[0] == rest]  # lists: elements
    g = lambda x: str(int(x)) if float(x).is_integer() and abs(x) < 1e7 else f"{x:.3g}"  # noqa: E731  6300, 0.0417
    same = [f"{p} {g(s['mean'])}" for p, s in found if s["min"] == s["max"] and s["n"] == n]
    vary = [f"{p} {g(s['mean'])} \u00b1 {g(s['sd'])} ({g(s['min'])}-{g(s['max'])}"
            + (f"; defined in {s['n']} of {n} seeds)" if s["n"] < n else ")")
            for p, s in found if s["min"] != s["max"] or s["n"] < n]
    return ([f"over {n} seeds, mean \u00b1 sd (min-max): " + "; ".join(vary)] if vary else []) + \
        ([f"the same in all {n} seeds: " + "; ".join(same)] if same else [])


# ----------------------------------------------------------------------------
# Figures (harness/seeds_plot.py draws the one that shows every seed)
# ----------------------------------------------------------------------------

def draw(report: ModuleType, out: Path, doc: dict) -> None:
    """The merged run's figures: each experiment's figures from the first seed (metrics and arrays as its
    run recorded them), marked below as that seed's, and its seeds figure."""
    first, seeds = seed_dir(out, doc["seeds"][0]), doc["seeds"]
    first_doc = json.loads((first / "metrics.json").read_text())
    smoke = f"{SMOKE_NOTE}. " if doc["env"].get("data") == "smoke" else ""
    note = (f"{smoke}Seed {seeds[0]}, the first of seeds {', '.join(map(str, seeds))}: each seed's figures are in "
            f"seed-S/; the spread over seeds is in the _seeds figures and summary.md.")
    for name, metrics in doc["per_seed"][str(seeds[0])].items():
        if "error" not in metrics and hasattr(report, f"plot_{name}"):
            m = {k: v for k, v in metrics.items() if k != "seconds"}
            results._plot(report, name, m, load_plot_data(first, name), first_doc, out, note=note)
        if (fig := seeds_figure(doc["task"], name, doc)) is not None:
            save_png(fig, out / f"{name}_seeds.png", smoke.rstrip())


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def _projection(out: Path, seeds: list[int], experiments: list[str]) -> str:
    """Seconds the seeds still to run will take, from a finished seed's record of these experiments."""
    todo, per_seed = [], None
    for s in seeds:
        try:
            ex = json.loads((seed_dir(out, s) / "metrics.json").read_text()).get("experiments", {})
        except (OSError, ValueError, AttributeError):  # none yet, or unreadable: that seed runs
            ex = {}
        if all(n in ex and "error" not in ex[n] for n in experiments):
            per_seed = per_seed or sum(ex[n].get("seconds", 0) for n in experiments)
        else:
            todo.append(s)
    if not todo:
        return "every seed has finished these experiments: merging"
    if per_seed is None:
        return f"{len(todo)} seeds to run; the time is projected once the first one finishes"
    return (f"{len(todo)} seeds to run, about {per_seed * len(todo) / 60:.1f} min "
            f"({per_seed / 60:.1f} min per seed, as a finished seed took)")


def run_seeds(report: ModuleType, args, argv: list[str] | None, main: Callable[[list[str]], dict]) -> dict:
    """`--seeds a,b,...`: main(argv + ["--seed", S, "--out", OUT/seed-S]) for each seed, then the merged
    metrics.json, summary.md, figures and report page in OUT (module docstring). Returns the merged
    experiments."""
    out, seeds = Path(args.out), list(args.seeds)
    argv = list(sys.argv[1:] if argv is None else argv)
    print(f"seeds {', '.join(map(str, seeds))}: one run per seed into {out}/seed-S/ (each the command with "
          f"--seed S --out {out}/seed-S); {_projection(out, seeds, args.experiments)}", flush=True)
    for i, s in enumerate(seeds):
        print(f"\n##### {report.TASK}: seed {s} ({i + 1} of {len(seeds)}) #####", flush=True)
        t0 = time.perf_counter()
        with results.seed_run(keep_finished=not args.fresh):
            main(argv + ["--seed", str(s), "--out", str(seed_dir(out, s))])
        if i + 1 < len(seeds):
            left = (time.perf_counter() - t0) * (len(seeds) - i - 1)
            print(f"seed {s} took {(time.perf_counter() - t0) / 60:.1f} min; the other {len(seeds) - i - 1} "
                  f"about {left / 60:.1f} min more if they run as long", flush=True)
    docs = {s: json.loads((seed_dir(out, s) / "metrics.json").read_text()) for s in seeds}
    config = {**docs[seeds[0]]["config"], "seed": seeds[0], "seeds": seeds, "out": str(args.out)}
    doc = merge(report, seeds, docs, config)
    results.set_aside(out / "metrics.json", lambda old: old.get("seeds") == seeds and
                      results.same_settings(old, doc["config"], doc.get("recipe", {})))
    draw(report, out, doc)
    write_atomic(out / "metrics.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_atomic(out / "summary.md", results.seeds_summary(doc, out))
    write_report(out.parent, out.name)
    print(f"\nfindings over seeds {', '.join(map(str, seeds))}" + (f" ({SMOKE_NOTE})" if args.smoke else "") + ":")
    for f in doc["findings"]:
        print(f"  {f['ref']} {f['ask']}: {f.get('finding', f.get('todo'))}")
    print(f"\nsummary: {out / 'summary.md'} (each seed: {out}/seed-S/)\nreport page: {report_page(out)}", flush=True)
    return doc["experiments"]


def redirect(report: ModuleType, args, argv: list[str] | None, main: Callable[[list[str]], dict]) -> dict:
    """Where a task's main hands over: --replot redraws the figures of --out; --seeds a,b runs main per seed."""
    return results.replot(report, args.out) if args.replot else run_seeds(report, args, argv, main)
