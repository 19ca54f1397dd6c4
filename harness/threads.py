"""CPU threads: how many a run's pieces use (torch's intra-op pool and the BLAS/OpenMP
pools under numpy and scikit-learn).

The policy (benchmarks/bench_threads.py measured it; README "CPU threads"): at the start, before
each experiment and at most every REFIT_S seconds within one, `fit_to_machine` gives torch
and the BLAS pools one thread per core that other processes left free, at least one; a smoke
run uses one thread. torch's
default, a thread per core whatever else runs, is fastest on an idle machine at real
sizes but collapses when another job holds the cores: its OpenMP threads spin-wait for
each other (measured on 2 cores, another job holding both: Task 1's smoke 224 s instead
of 14 s). OMP_NUM_THREADS, when set, is obeyed and this policy stays out of the way."""
from __future__ import annotations

import contextlib
import os
import time

import torch

# How long `busy_cores` watches /proc/stat when it has no earlier reading, s: long enough to
# average over a scheduler's time slices (a few ms), short enough not to be noticed.
SAMPLE_S = 0.25
# Other processes' use of a core below this counts as idle (a shell, an editor, a browser).
IDLE_BELOW = 0.3
# Within an experiment the count is chosen again at most this often (at the start of a
# progress bar: an epoch, a training run), from the machine's use since the last choice.
REFIT_S = 30.0

_last: tuple[int, int, float, float] | None = None  # /proc/stat busy and total jiffies, own CPU s, wall s


def _reading() -> tuple[int, int, float, float]:
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, *rest = map(int, f.readline().split()[1:9])
    busy = user + nice + system + sum(rest)
    return busy, busy + idle + iowait, time.process_time(), time.monotonic()


def busy_cores(sample_s: float = SAMPLE_S) -> float | None:
    """How many cores other processes kept busy since the last call (this process's own CPU
    time, all its threads, taken off), or over `sample_s` seconds of sleep when there is no
    reading at least that old; from /proc/stat's jiffy counters. None where there is no
    /proc (macOS, Windows)."""
    global _last
    try:
        now = _reading()
        if _last is None or now[3] - _last[3] < sample_s:
            before, _ = _reading(), time.sleep(sample_s)
            now = _reading()
        else:
            before = _last
    except (OSError, ValueError):
        return None
    _last = now
    every = (now[0] - before[0]) / max(now[1] - before[1], 1) * (os.cpu_count() or 1)
    return max(0.0, every - (now[2] - before[2]) / max(now[3] - before[3], 1e-9))


def fit_to_machine(smoke: bool) -> tuple[int, str]:
    """Set the CPU threads for what runs next (see the module's policy); returns
    (threads, why) for the console and metrics.json."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if smoke:
        n, why = 1, "smoke: small models run fastest on one"
    else:
        busy = busy_cores()
        if busy is None:
            return torch.get_num_threads(), "torch's default"
        others = round(busy) if busy >= IDLE_BELOW else 0
        n, why = max(1, cores - others), f"{cores} cores, other processes busy on {busy:.1f}"
    torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # numpy's and scikit-learn's BLAS/OpenMP pools, until the next call
    return n, why


said: list[int] = []  # every thread count printed, in order
_fitted: dict = {}      # the last fit_and_say: {"smoke": bool, "at": monotonic seconds}


def fit_and_say(smoke: bool) -> int:
    """fit_to_machine, printing the thread count when it differs from the last printed."""
    n, why = fit_to_machine(smoke)
    _fitted.update(smoke=smoke, at=time.monotonic())
    if said[-1:] != [n]:
        print(f"CPU threads: {n} ({why}; OMP_NUM_THREADS=N to choose)", flush=True)
        said.append(n)
    return n


def refit() -> None:
    """Within a run (not --smoke), choose the count again if REFIT_S have passed: a job that
    started or ended meanwhile is seen (called as each progress bar starts)."""
    if _fitted.get("smoke") is False and time.monotonic() - _fitted["at"] >= REFIT_S:
        fit_and_say(False)


@contextlib.contextmanager
def threads_restored():
    """Give torch and the BLAS pools their thread counts of before the block back after
    it (a run inside a test or a notebook leaves the process as it found it)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=None):  # restores the pools' original limits on exit
            yield
    finally:
        torch.set_num_threads(before)


def few_threads(n_rows: int, limit: int = 1000):
    """One BLAS/OpenMP thread for scikit-learn on fewer than `limit` rows (smoke-sized
    probes and t-SNE): there threads cost more in synchronisation than they save, and
    on a busy machine far more (measured on a shared 2-core box: a 240 x 512 probe took
    14.6 s of CPU with 2 threads and 0.4 s with one; a 110-point t-SNE 90 s vs 2 s).
    Larger problems keep every thread. linear_probe and embed_2d apply it themselves."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1) if n_rows < limit else contextlib.nullcontext()
