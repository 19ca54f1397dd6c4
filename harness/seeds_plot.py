"""The figure of a --seeds run (harness/seeds.py) that shows every seed: for each experiment, the numbers its
findings read, one dot per seed and mean +- sd, one panel per metric (or per short list, along its axis)."""
from __future__ import annotations

import math
import textwrap

import numpy as np


MAX_PANELS = 12  # a seeds figure shows at most this many metrics (4 x 3 panels); all are in metrics.json
MAX_LIST = 12    # a list of at most this many numbers (one per beta, per stage) gets a spread per element


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short_list(v) -> bool:
    return isinstance(v, list) and 0 < len(v) <= MAX_LIST and all(_is_number(x) or x is None for x in v)


def seeds_figure(task: str, name: str, doc: dict):
    """Each seed's value (a dot, one colour per seed) and mean +- sd (a bar) of the numbers the findings
    read from `name`, one panel per metric (the last part of its path), its arms along x; metrics that
    are equal in every seed are left out. None when nothing is left to show."""
    import matplotlib.pyplot as plt

    seeds, ex = doc["seeds"], [doc["per_seed"][str(s)].get(name, {}) for s in doc["seeds"]]
    value = {p: [_at(e, p) for e in ex] for p in doc["reads"].get(name, [])
             if not p.endswith("seconds")}  # timings are not results
    order = list(dict.fromkeys(p.rsplit("/", 1)[0] for p in value))  # arms in the order the rules read them
    groups: dict[str, list[tuple[str, list]]] = {}  # panel title -> [(x label, each seed's value)]
    for path in sorted(value, key=lambda p: order.index(p.rsplit("/", 1)[0])):
        vals = value[path]
        if all(_is_number(v) for v in vals if v is not None) and any(_is_number(v) for v in vals):
            groups.setdefault(path.rsplit("/", 1)[-1], []).append((path.rsplit("/", 1)[0] if "/" in path else name,
                                                                   vals))
        elif all(_short_list(v) for v in vals) and len({len(v) for v in vals}) == 1:  # one panel per list
            axis = _axis(ex, path, len(vals[0]))
            groups[path.replace("/", " ")] = [(f"{axis[0]} {axis[1][i]:g}" if axis else f"[{i}]", [v[i] for v in vals])
                                              for i in range(len(vals[0]))]
    groups = {k: xs for k, xs in groups.items() if any(len(set(v)) > 1 for _, v in xs)}  # something differs
    if not groups:
        return None
    shown = list(groups.items())[:MAX_PANELS]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax, (metric, points) in zip(axes.flat, shown):
        labels = [lab for lab, _ in points]
        common = _common_prefix(labels)
        for x, (_, each) in enumerate(points):
            v = np.array([np.nan if u is None else u for u in each], dtype=float)
            for j, s in enumerate(seeds):
                ax.plot(x + 0.08 * (j - (len(seeds) - 1) / 2), v[j], "o", ms=5,
                        color=f"C{j % 10}", label=f"seed {s}" if x == 0 else None)
            if np.isfinite(v).sum() > 1:
                ax.errorbar(x + 0.3, np.nanmean(v), yerr=np.nanstd(v, ddof=1), fmt="_", color="black", ms=12,
                            capsize=3, label="mean \u00b1 sd" if x == 0 else None)
        shown_values = np.array([u for _, each in points for u in each if u is not None], dtype=float)
        if shown_values.min() > 0 and shown_values.max() > 1e3 * shown_values.min():  # gradients: 1e-5 .. 10
            ax.set_yscale("log")
        ax.set_xticks(range(len(points)), [(lab[len(common):] or lab).replace("/", " ")[:28] for lab in labels],
                      rotation=30 if len(points) > 2 else 0, ha="right" if len(points) > 2 else "center", fontsize=7)
        ax.set_xlim(-0.5, len(points) - 0.3)
        ax.set_title(textwrap.fill(metric.replace("_", " "), 34), fontsize=9)  # whole names: two may share 30 letters
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    handles, labs = axes.flat[0].get_legend_handles_labels()  # right of the first row (constrained layout)
    axes[0, -1].legend(handles, labs, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    more = f"; {len(groups) - MAX_PANELS} more in metrics.json (spread)" if len(groups) > MAX_PANELS else ""
    title = f"{task} {name}: each of {len(seeds)} seeds ({', '.join(map(str, seeds))}) for the numbers the findings " \
            f"read{more}"
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 72 / 5.5)), fontsize=10)  # 10 pt: ~5.5 pt a letter
    return fig


def _at(d, path: str):
    """d["a"]["b"][2] for path "a/b/2"; None where it is missing."""
    for part in path.split("/"):
        if isinstance(d, list) and part.isdigit() and int(part) < len(d):
            d = d[int(part)]
        elif not isinstance(d, dict) or part not in d:
            return None
        else:
            d = d[part]
    return d


def _axis(ex: list[dict], path: str, n: int) -> tuple[str, list] | None:
    """What a list's positions stand for: an increasing list of n numbers beside it (or at the experiment's
    top), the same in every seed, e.g. collapse_sweep's betas for plain/active_units."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    for where in dict.fromkeys([parent, ""]):
        for k, v in (_at(ex[0], where) if where else ex[0]).items():
            if k != path.rsplit("/", 1)[-1] and _short_list(v) and len(v) == n and None not in v and \
                    all(a < b for a, b in zip(v, v[1:])) and all(_at(e, f"{where}/{k}".strip("/")) == v for e in ex):
                return (k[:-1] if k.endswith("s") else k), v
    return None


def _common_prefix(labels: list[str]) -> str:
    """The shared leading path parts ("arms/"), so tick labels name only what differs."""
    if len(labels) < 2:
        return ""
    parts = [lab.split("/") for lab in labels]
    n = 0
    while all(len(p) > n + 1 for p in parts) and len({p[n] for p in parts}) == 1:
        n += 1
    return "/".join(parts[0][:n]) + "/" if n else ""
