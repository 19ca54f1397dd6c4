"""What a reader of a figure trips over, found on the matplotlib figure itself (issue 22):
two pieces of text that overlap (titles, axis labels, tick labels, legends, annotations,
the figure title), and a panel that shows nothing (no data, or all of it outside the
axes' limits, or bars of zero height). conftest.py wraps common.save_figure with
`figure_problems`, so every figure a test draws is checked as it is saved; each task's
smoke test asserts its figures have no problem."""
from __future__ import annotations

import numpy as np
from matplotlib.collections import Collection
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Polygon, Rectangle, Wedge

MIN_OVERLAP_PX = 4.0      # two text boxes must share more than this area (px^2 at the save dpi) ...
MIN_OVERLAP_SHARE = 0.05  # ... and more than this share of the smaller box, to count


def _texts(fig, renderer) -> list[tuple[str, object]]:
    """(owner label, bounding box) of every visible, non-empty piece of text."""
    out = []

    def add(label, t):
        if t is not None and t.get_visible() and t.get_text().strip():
            out.append((label, t.get_window_extent(renderer)))

    if fig._suptitle is not None:
        add("suptitle", fig._suptitle)
    for t in fig.texts:
        if t is not fig._suptitle:
            add("figure text", t)
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        name = f"axes {i} ({ax.get_title()[:30]!r})"
        for t in (ax.title, ax._left_title, ax._right_title):
            add(f"{name} title", t)
        if ax.axison:
            for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                if not axis.get_visible():  # a twin's shared axis: drawn by its host
                    continue
                add(f"{name} {which} label", axis.label)
                lo, hi = sorted(axis.get_view_interval())
                for t in axis.get_ticklabels(which="both"):  # only the ticks drawn: inside the view
                    loc = t.get_position()[0 if which == "x" else 1]
                    if lo - 1e-9 * (hi - lo) <= loc <= hi + 1e-9 * (hi - lo):
                        slant = " (rotated)" if t.get_rotation() % 90 else ""
                        add(f"{name} {which} tick {t.get_text()!r}{slant}", t)
        for t in ax.texts:
            add(f"{name} text {t.get_text()[:20]!r}", t)
        leg = ax.get_legend()
        if leg is not None and leg.get_visible():
            out.append((f"{name} legend", leg.get_window_extent(renderer)))
    for leg in fig.legends:
        out.append(("figure legend", leg.get_window_extent(renderer)))
    return out


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _same_place(la: str, lb: str) -> bool:
    """Pairs whose boxes may meet without a defect: a legend and an annotation inside its own
    axes (the legend is placed among them); two rotated tick labels of one axis (the boxes of
    slanted neighbours overlap while their letters, parallel, do not)."""
    same_axes = la.split(" ")[:2] == lb.split(" ")[:2]
    ticks = [t.split(" tick ")[0] for t in (la, lb) if " tick " in t]
    rotated = "(rotated)" in la + lb
    return same_axes and (("legend" in la) != ("legend" in lb) and " text " in la + lb
                          or len(ticks) == 2 and ticks[0] == ticks[1] and rotated)


def _panel_of(label: str) -> str:
    return " ".join(label.split(" ")[:2]) if label.startswith("axes ") else ""


def text_overlaps(fig) -> list[str]:
    """Pairs of texts whose boxes overlap, and texts of one panel that run into another
    panel's plot area (tick labels or an axis label too wide for the gap between panels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = _texts(fig, renderer)
    panels = {f"axes {i}": ax.bbox for i, ax in enumerate(a for a in fig.axes if a.get_visible())}
    found = []
    for label, box in boxes:
        own = panels.get(_panel_of(label))
        for other, area in panels.items():
            if own is None or other == _panel_of(label) or np.allclose(own.bounds, area.bounds):
                continue  # a twin shares its host's plot area
            if _overlap(box, area) > MIN_OVERLAP_SHARE * max(1.0, box.width * box.height):
                found.append(f"text in another panel: {label} / {other}")
    for i, (la, a) in enumerate(boxes):
        for lb, b in boxes[i + 1:]:
            area = _overlap(a, b)
            smaller = max(1.0, min(a.width * a.height, b.width * b.height))
            if area > MIN_OVERLAP_PX and area / smaller > MIN_OVERLAP_SHARE and not _same_place(la, lb):
                found.append(f"text overlap: {la} / {lb}")
    return found


def _shows_something(ax, renderer) -> bool:
    """Whether any data artist of `ax` puts a mark inside the plot area: an image, a data
    line with a finite point within the limits (not on the bottom or top edge), a patch (bar, histogram, polygon) or a
    collection (scatter, fill) whose drawn extent covers part of the axes."""
    x0, x1 = sorted(ax.get_xlim())
    y0, y1 = sorted(ax.get_ylim())
    for art in ax.get_children():
        if not art.get_visible() or art is ax.patch:
            continue
        if isinstance(art, AxesImage):
            return True
        if isinstance(art, Line2D):
            if art.get_transform() is not ax.transData:  # axhline / axvline: guides, not data
                continue
            xy = np.column_stack([np.asarray(art.get_xdata(), float), np.asarray(art.get_ydata(), float)])
            xy = xy[np.isfinite(xy).all(1)]
            eps = 2e-3 * (y1 - y0)  # a line lying on the bottom or top spine is hidden by it
            if ((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] > y0 + eps) & (xy[:, 1] < y1 - eps)).any():
                return True
        elif isinstance(art, Collection) and len(art.get_offsets()) and art.get_offset_transform() is ax.transData:
            if _has_points(art, x0, x1, y0, y1):               # a scatter: its points in data coordinates
                return True
        elif isinstance(art, (Rectangle, Polygon, PathPatch, Wedge, Collection)):
            box = art.get_window_extent(renderer)             # bars, histograms, fills, meshes
            if np.isfinite([box.x0, box.x1, box.y0, box.y1]).all() and _overlap(box, ax.bbox) > 0:
                return True
    return False


def _has_points(art, x0, x1, y0, y1) -> bool:
    xy = np.asarray(art.get_offsets(), float).reshape(-1, 2)
    return bool(((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).any())


def empty_panels(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [f"empty panel: axes {i} ({ax.get_title()[:40]!r})" for i, ax in enumerate(fig.axes)
            if ax.get_visible() and not ax.get_label() == "<colorbar>" and not _shows_something(ax, renderer)]


def figure_problems(fig) -> list[str]:
    return text_overlaps(fig) + empty_panels(fig)
