"""Compare two runs' metrics.json leaf for leaf: the check that a refactor changed no
number. Timings (any key naming seconds, a rate per second or a throughput) are
skipped: they differ between any two runs. Keys a refactor renamed are mapped with
--rename OLD=NEW (a path with / between levels renames everything under it; a bare key name renames
that key at any level), and a key whose unit changed with --scale PATH=FACTOR
(new = old x FACTOR; PATH a path or a bare key name).

    python tools/compare_metrics.py BEFORE/metrics.json AFTER/metrics.json \
        --rename baseline/final/memorisation_distance=baseline/final/nearest_train_rmse

Prints every difference and exits 1 when there is one, else prints the number of
equal leaves and exits 0. Floats count as equal within --rtol (default 0: exact).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys

TIMING = re.compile(r"seconds|per_s\b|_per_s|throughput|images_per|ips\b|_time\b|^date$")


def leaves(node, prefix: str = "") -> dict:
    """{"a/b/0": value} for every scalar under node (lists index by position)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {prefix.rstrip("/"): node}
    out = {}
    for k, v in items:
        out.update(leaves(v, f"{prefix}{k}/"))
    return out


def renamed(path: str, renames: list[tuple[str, str]]) -> str:
    """OLD with a / renames that path (and everything under it); without one, that key
    at any level."""
    for old, new in renames:
        if "/" not in old:
            path = "/".join(new if part == old else part for part in path.split("/"))
        elif path == old or path.startswith(old + "/"):
            return new + path[len(old):]
    return path


def scale_of(path: str, scales: dict) -> float | None:
    """The factor for a path: given for it, or for a key on it (a bare key name: the leaf
    itself, or the list whose elements the leaf is)."""
    if path in scales:
        return scales[path]
    return next((scales[k] for k in path.split("/") if k in scales), None)


def equal(a, b, rtol: float) -> bool:
    """Numbers within rtol (NaN equals NaN); anything else exactly."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers:
        return a == b
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rtol * max(abs(a), abs(b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW")
    p.add_argument("--scale", action="append", default=[], metavar="PATH=FACTOR")
    p.add_argument("--rtol", type=float, default=0.0)
    args = p.parse_args(argv)
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    scales = {k: float(v) for k, v in (s.split("=", 1) for s in args.scale)}
    before = {renamed(k, renames): v for k, v in
              leaves(json.load(open(args.before))["experiments"]).items() if not TIMING.search(k.split("/")[-1])}
    after = {k: v for k, v in leaves(json.load(open(args.after))["experiments"]).items()
             if not TIMING.search(k.split("/")[-1])}
    diffs = [f"only before: {k} = {before[k]!r}" for k in sorted(set(before) - set(after))]
    diffs += [f"only after: {k} = {after[k]!r}" for k in sorted(set(after) - set(before))]
    for k in sorted(set(before) & set(after)):
        old, factor = before[k], scale_of(k, scales)
        if factor is not None and isinstance(old, (int, float)):
            old = old * factor
        if not equal(old, after[k], max(args.rtol, 1e-12 if factor is not None else 0.0)):
            diffs.append(f"differs: {k}: {before[k]!r} -> {after[k]!r}")
    for d in diffs:
        print(d)
    print(f"{len(set(before) & set(after)) - sum(d.startswith('differs') for d in diffs)} equal leaves, "
          f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
