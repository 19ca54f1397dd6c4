"""The figure check itself (tests/figure_check.py), on figures built to have or lack
each defect, so a clean report of it means something."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figure_check import empty_panels, figure_problems, text_overlaps  # noqa: E402


def test_a_clean_figure_has_no_problems():
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    axes[0].plot([0, 1, 2], [1, 0, 1], label="a")
    axes[0].legend()
    axes[1].bar(["x", "y"], [1, 2])
    axes[1].set_title("bars")
    fig.suptitle("clean")
    assert figure_problems(fig) == []
    plt.close(fig)


def test_overlapping_labels_and_a_title_on_a_title_are_found():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter([0, 10], [0, 10])
    ax.annotate("airplane", (5, 5))
    ax.annotate("automobile", (5.05, 5.05))                          # the modality gap's prompt cluster
    assert any("airplane" in p and "automobile" in p for p in text_overlaps(fig))
    plt.close(fig)
    fig, axes = plt.subplots(2, 1, figsize=(4, 3))                 # no room between the panels
    for ax in axes:
        ax.plot([0, 1])
        ax.set_title("a long panel title")
        ax.set_xlabel("an x label")
    assert any("axes 1" in p and "title" in p and "axes 0" in p for p in text_overlaps(fig))
    plt.close(fig)


def test_panels_that_show_nothing_are_found():
    fig, axes = plt.subplots(2, 2)
    axes[0, 0].plot([0, 1], [0, 1])                                 # shows a line
    axes[0, 1].bar([0, 1], [0, 0])                                   # bars of zero height
    axes[1, 0].plot([5, 6], [5, 6])
    axes[1, 0].set_xlim(0, 1)                                        # all data outside the limits
    axes[1, 1].axhline(0.5)                                          # a guide line only
    found = empty_panels(fig)
    assert len(found) == 3 and "axes 0" not in " ".join(found)
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0, 0])                                          # accuracy 0 at every epoch ...
    ax.set_ylim(0, 1)                                                # ... drawn on the bottom spine
    assert len(empty_panels(fig)) == 1
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.hist(np.random.default_rng(0).normal(size=100), histtype="step")
    ax.imshow(np.zeros((2, 2)))
    assert empty_panels(fig) == []
    plt.close(fig)


def test_slanted_tick_labels_side_by_side_are_not_an_overlap():
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(np.eye(10))
    ax.set_xticks(range(10), names, rotation=45, ha="right")
    assert text_overlaps(fig) == []
    ax.set_xticks(range(10), names, rotation=0)                      # upright, the long names collide
    assert any("x tick" in p for p in text_overlaps(fig))
    plt.close(fig)


def test_tick_labels_running_into_the_next_panel_are_found():
    """d_overfit_gap once had its gap panel's long tick labels inside the panel to its left."""
    fig, axes = plt.subplots(1, 4, figsize=(8, 2.5))
    for ax in axes:
        ax.plot([0, 1], [-0.00123456, 0.00098765])
        ax.set_ylabel("a long y label")
    assert any("text in another panel" in p for p in text_overlaps(fig))
    plt.close(fig)
    fig, axes = plt.subplots(1, 4, figsize=(8, 2.5), layout="constrained")
    for ax in axes:
        ax.plot([0, 1], [-0.00123456, 0.00098765])
        ax.set_ylabel("a long y label")
    assert not any("text in another panel" in p for p in text_overlaps(fig))
    plt.close(fig)
