"""CPU thread policy: wall time of each task's --smoke run and of the two small real-size
models (Task 3's MLP GAN, Task 5's conv VAE; `--real` runs them on generated images of
the real sizes) under three thread settings, on an idle machine and on a busy one.

    python benchmarks/bench_threads.py                       # every smoke run, idle and busy
    python benchmarks/bench_threads.py --tasks 3,5 --real    # the small models at real size too

Settings (environment variables read when torch starts, so each run is its own process):
  auto      the suite's policy (harness.fit_to_machine): one thread per core no other
            process is using, one for a smoke run
  all       OMP_NUM_THREADS=<cores>: torch's own default, a thread per core; its OpenMP
            threads spin-wait for each other (the policy stands aside when it is set)
  passive   the same with OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps instead
  one       OMP_NUM_THREADS=1: a single thread
Busy: as many processes as there are cores spin in a Python loop while the run is timed
(another job holding every core, e.g. a second training run or a notebook). Loaded: no
spinners added; whatever else runs now is the load (its 1-minute load average is printed). A run that
takes longer than --timeout seconds is stopped and shown as "> timeout".
Prints a table of medians over --repeats and each setting's ratio to `all` (torch's default).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
SETTINGS = {"auto": {}, "all": {"OMP_NUM_THREADS": CORES},
            "passive": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"}, "one": {"OMP_NUM_THREADS": "1"}}

# Real-size pieces, run as `python -c`: 500 GAN iterations at Task 3's batch 64, and 100 VAE
# training steps at Task 5's batch 128, on generated 28x28 images (the cost does not depend
# on the pixels); each prints its own loop time, so torch's import is not counted.
GAN = """
import sys, time, torch; sys.path.insert(0, '.'); import harness; harness.fit_to_machine(False); from architecture import Generator, Discriminator
torch.manual_seed(0); G, D = Generator(100), Discriminator(); x = torch.rand(64, 784) * 2 - 1
og, od = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
bce = torch.nn.BCEWithLogitsLoss()
t = time.perf_counter()
for _ in range(500):
    fake = G(torch.randn(64, 100))
    ld = bce(D(x), torch.ones(64)) + bce(D(fake.detach()), torch.zeros(64))
    od.zero_grad(); ld.backward(); od.step()
    lg = bce(D(fake), torch.ones(64)); og.zero_grad(); lg.backward(); og.step()
print('seconds', time.perf_counter() - t)
"""
VAE = """
import sys, time, torch; sys.path.insert(0, '.'); import harness; harness.fit_to_machine(False); from architecture import VAE
torch.manual_seed(0); m = VAE(20); opt = torch.optim.Adam(m.parameters(), 1e-3); x = torch.rand(128, 1, 28, 28)
t = time.perf_counter()
for _ in range(100):
    xh, mu, lv = m(x)
    loss = (xh - x).pow(2).sum() + (-0.5 * (1 + lv - mu ** 2 - lv.exp())).sum()
    opt.zero_grad(); loss.backward(); opt.step()
print('seconds', time.perf_counter() - t)
"""


def spin() -> None:
    while True:
        pass


def timed(cmd: list[str], env: dict, timeout: float) -> float:
    """Wall seconds of one run (inf when it ran past `timeout`); a failure stops the benchmark."""
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed: {r.stderr.strip().splitlines()[-1:]}")
    own = [float(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("seconds ")]
    return own[-1] if own else time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="1,2,3,4,5", help="which tasks' smoke runs (comma list; '' for none)")
    ap.add_argument("--real", action="store_true", help="also time the real-size GAN and VAE pieces")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per cell (median)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds before a run counts as '> timeout'")
    ap.add_argument("--conditions", default="idle,busy", help="comma list of idle, busy, loaded")
    args = ap.parse_args(argv)
    jobs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in [t for t in args.tasks.split(",") if t]:
            jobs[f"Task{t} --smoke"] = [sys.executable, f"Task{t}.py", "--smoke", "--out", f"{tmp}/task{t}"]
        if args.real:
            jobs["GAN 500 it, batch 64"] = [sys.executable, "-c", GAN]
            jobs["VAE 100 steps, b. 128"] = [sys.executable, "-c", VAE]
        print(f"{CORES} cores; {args.repeats} repeat(s); times in s; ratio = setting / all")
        print(f"{'run':<26}{'condition':<10}" + "".join(f"{s:>9}" for s in SETTINGS)
              + "".join(f"{s + '/all':>12}" for s in SETTINGS if s != "all"))
        for cond in args.conditions.split(","):
            spinners = [mp.Process(target=spin, daemon=True) for _ in range(os.cpu_count() if cond == "busy" else 0)]
            for p in spinners:
                p.start()
            if cond == "loaded":
                print(f"(load average over the last minute: {os.getloadavg()[0]:.2f})")
            try:
                for name, cmd in jobs.items():
                    # Round robin (all settings once, then again): this VM's speed drifts by up to 2x over
                    # minutes, which consecutive repeats of one setting would mistake for the setting's.
                    runs = [[timed(cmd, env, args.timeout) for env in SETTINGS.values()] for _ in range(args.repeats)]
                    med = {s: statistics.median(r[i] for r in runs) for i, s in enumerate(SETTINGS)}
                    cells = "".join(f"{'>' + format(args.timeout, 'g') if v == float('inf') else format(v, '.1f'):>9}"
                                    for v in med.values())
                    ratios = "".join(f"{'' if float('inf') in (med[s], med['all']) else format(med[s] / med['all'], '.2f'):>12}"
                                     for s in SETTINGS if s != "all")
                    print(f"{name:<26}{cond:<10}{cells}{ratios}", flush=True)
            finally:
                for p in spinners:
                    p.terminate()


if __name__ == "__main__":
    main()
