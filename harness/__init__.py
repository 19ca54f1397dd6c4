"""How a run runs, the same for every task (imports neither common.py nor a script):

    errors    UserError (one line, exit 2; also GPU out-of-memory), Diverged (NaN/inf:
              stop this experiment only), user_errors
    cli       make_parser (the flags every task has), Bounded ranges, parse_args
              (smoke overrides, combination checks, a writable --out)
    results   run (the experiment loop: metrics.json, summary.md, figure arrays,
              findings), replot, Question, pct
    seeds     run_seeds (--seeds 0,1,2: a run per seed, then mean +- sd and seed agreement;
              seeds_plot draws the figure that shows every seed),
              redirect (where a task's main hands over for --replot and --seeds)
    store     Cache (cached results keyed by settings and code), atomic writes
    report    write_report (outputs/index.html)
    threads   fit_to_machine (the thread policy), few_threads
    console   progress (tqdm on a terminal, periodic plain lines in a log)
"""
from .cli import (Bounded, BoundedList, Parser, any_int, make_parser, non_negative_float, non_negative_int,
                  parse_args, positive_float, positive_int, require, unit_float)
from .errors import Diverged, UserError, user_errors
from .console import progress
from .report import TASK_TITLES, write_report
from .results import Question, Results, figure_note, flatten, pct, pts, replot, run
from .seeds import redirect, run_seeds
from .store import Cache, atomic_path, fmt, jsonable, save_png, save_torch, write_atomic
from .threads import few_threads, fit_to_machine

__all__ = ["Bounded", "BoundedList", "Parser", "any_int", "make_parser", "non_negative_float", "non_negative_int",
           "parse_args", "positive_float", "positive_int", "require", "unit_float", "Diverged", "UserError",
           "user_errors", "progress", "TASK_TITLES", "write_report", "Question", "Results", "figure_note", "flatten",
           "pct", "pts", "replot", "run", "run_seeds", "redirect", "Cache", "atomic_path", "fmt", "jsonable",
           "save_png", "save_torch", "write_atomic", "few_threads", "fit_to_machine"]
