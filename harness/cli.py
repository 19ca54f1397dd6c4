"""The command line every task shares: argparse with one-line errors, numeric flags
that carry their valid range (Bounded), --help that shows each default and range, and
--smoke values that replace only the flags a user left alone.

Why argparse and not a dataclass-to-CLI library such as tyro: tyro prints its errors
as a multi-line panel, while this suite's contract is one line and exit status 2 for
every mistake; the declared ranges would need custom constructors either way; and the
generated flag test (tests/test_flags.py) reads each flag's range from its Bounded type.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
from pathlib import Path
from typing import Callable

from .errors import UserError
from . import threads
from .threads import fit_and_say


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (argparse prints usage + error)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Bounded:
    """A numeric flag's type together with its valid range, stated once next to
    `add_argument` (`type=Bounded(int, lo=1)`): argparse refuses anything else before
    the run starts, with one line naming the flag and the range. The generated flag
    test reads `kind`, `lo` and `hi` from here, so every numeric flag must use one.

    kind: int or float; lo/hi: inclusive bounds (None: unbounded); lo_open/hi_open:
    exclude that bound. Floats must be finite."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False):
        assert kind in (int, float)
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = self.describe()  # what argparse names in messages

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        if lo == 0 and self.lo_open:
            return "a positive number (> 0)" if self.kind is float else "a positive integer (>= 1)"
        if lo == 1 and self.kind is int and not self.lo_open:
            return "a positive integer (>= 1)"
        if lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {lo:g}"
        if hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {hi:g}"
        return what

    def contains(self, v: float) -> bool:
        lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return lo_ok and hi_ok

    def __call__(self, text: str):
        try:
            v = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        if (self.kind is float and not math.isfinite(v)) or not self.contains(v):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}")
        return v

    def __repr__(self):
        return f"Bounded({self.describe()})"


# The ranges most flags need.
positive_int = Bounded(int, lo=1)                    # counts, epochs, batch sizes
non_negative_int = Bounded(int, lo=0)                # counts where 0 means "all" or "off"
positive_float = Bounded(float, lo=0, lo_open=True)  # learning rates, scales
non_negative_float = Bounded(float, lo=0)            # weight decay, penalties that may be off
unit_float = Bounded(float, lo=0, hi=1)              # probabilities and fractions in [0, 1]
any_int = Bounded(int)                               # seeds


class BoundedList:
    """A comma-separated list flag ("0.1,0.5") whose every element is `element`, a
    Bounded; sorted, duplicates dropped, at least one."""

    def __init__(self, element: Bounded):
        self.element = element
        self.__name__ = f"a comma-separated list, each {element.describe()}"

    def __call__(self, text: str) -> list:
        values = [self.element(t.strip()) for t in text.split(",") if t.strip()]  # each refused in its own words
        if not values:
            raise argparse.ArgumentTypeError(f"expected {self.__name__}, got {text!r}")
        return sorted(set(values))

    def __repr__(self):
        return f"BoundedList({self.element.describe()})"


def require(ok: bool, message: str) -> None:
    """A check of flags that only make sense together (run by parse_args right after
    parsing, before anything else): a UserError when `ok` is false."""
    if not ok:
        raise UserError(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help ends every flag's line with its default (from `default=`, so help strings
    never repeat it by hand) and every numeric flag's line with its valid range."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        d = action.default
        if action.option_strings and "default" not in text and d is not None and d is not argparse.SUPPRESS \
                and not isinstance(d, bool):
            text += " (default: %(default)s)" if not isinstance(d, (list, tuple)) else \
                f" (default: {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in d) or 'none'})"
        kind = getattr(action.type, "element", action.type)
        if isinstance(kind, Bounded):
            text += f" [{'each ' if kind is not action.type else ''}{kind.describe()}]"
        return text


class _Seeds(argparse.Action):
    """--seed/--seeds: args.seeds is the list, args.seed its first (a --seeds run gives each seed its own run
    with --seed S: harness/seeds.py)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.seeds, namespace.seed = values, values[0]


def make_parser(task: str, doc: str, experiments: list[str]) -> Parser:
    """The flags every task has. `task` is e.g. "task5"; `doc` the module docstring
    (its first paragraph becomes the description, the rest the epilog)."""
    head, _, tail = doc.strip().partition("\n\n")
    p = Parser(prog=f"{task.capitalize()}.py", description=head, epilog=tail or None,
               formatter_class=lambda prog: _HelpFormatter(prog, max_help_position=32))

    def experiment_list(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [n for n in names if n not in experiments]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown experiment {','.join(unknown) or repr(text)}; choose from {','.join(experiments)}")
        return [e for e in experiments if e in names]  # canonical order: later ones reuse earlier caches

    g = p.add_argument_group("common flags (the same in every task)")
    g.add_argument("--smoke", action="store_true",
                   help="offline and tiny: smoke data, small randomly initialised models, a few steps")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto picks cuda, then mps, then cpu")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA compute capability >= 8, fp16 with loss scaling below, fp32 on "
                        "CPU and MPS; bf16/fp16 run the same mixed-precision code on any device")
    g.add_argument("--data-root", default="data", metavar="DIR",
                   help="datasets in torchvision's layout; downloaded here if missing")
    g.add_argument("--out", default=f"outputs/{task}", metavar="DIR",
                   help="figures, metrics.json, summary.md and cache/ go here")
    g.add_argument("--seed", "--seeds", dest="seeds", type=BoundedList(any_int), default=[0], metavar="S[,S]",
                   action=_Seeds,
                   help="seeds python, numpy and torch; a list (0,1,2) runs every experiment once per seed into "
                        "OUT/seed-S/ and reports each number's mean +- sd and how many seeds agree with each finding")
    g.add_argument("--experiments", default=experiments, type=experiment_list, metavar="A,B",
                   help=f"comma-separated subset of: {', '.join(experiments)} (default: all)")
    p.set_defaults(seed=0)  # args.seed: the run's seed, the first of --seeds (_Seeds)
    g.add_argument("--fresh", action="store_true", help="ignore cached weights/features and recompute")
    g.add_argument("--print-metrics", action="store_true",
                   help="end with every metric of the run on the console (metrics.json always has them)")
    g.add_argument("--replot", action="store_true",
                   help="compute nothing: redraw every figure of --out from its metrics.json (and cache/plot/), "
                        "e.g. after changing a plot function")
    return p


def parse_args(parser: Parser, argv: list[str] | None, smoke: dict | None = None,
               check: Callable[[argparse.Namespace], None] | None = None) -> argparse.Namespace:
    """Parse argv; with --smoke, every knob in `smoke` that the user left at its
    default takes the smoke value instead (an explicit flag always wins). Then
    `check(args)` tests the flags that only make sense together (with `require`),
    and `--out` must be a place we can write to: a failure is one line, exit 2,
    before anything runs. Then the run's CPU threads are chosen (harness/threads.py)."""
    args = parser.parse_args(argv)
    if args.smoke:
        given = _explicit_flags(parser, argv)
        for k, v in (smoke or {}).items():
            if k not in given:
                setattr(args, k, v)
    try:
        if check is not None:
            check(args)
        check_writable(args.out)
    except UserError as e:
        parser.error(str(e))
    if not args.replot:  # CPU threads for the data and models built before the experiments
        threads.said.clear()  # a new run says its count (a smoke run after its banner, at the first experiment)
        threads.fit_to_machine(True) if args.smoke else fit_and_say(False)
    return args


def check_writable(out: str | Path) -> None:
    """--out must be a directory we can create and write in: checked by creating it and a
    probe file there (then removing both again, so a refused run leaves nothing), which
    also catches what permission bits do not say (a read-only file system, a full disk,
    root on a read-only mount)."""
    p = Path(out).absolute()
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a directory")
    created = [d for d in [p, *p.parents] if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe.{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e}); choose another --out") from None
    finally:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()


def _explicit_flags(parser: Parser, argv: list[str] | None) -> set[str]:
    """Names of the options the user gave on the command line (even at their default
    value): parse again with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, d in saved:
            a.default = d
