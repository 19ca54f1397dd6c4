"""What a Task 4 run shows (CLIP ViT-B/32 on STL-10; the assignment's part 5): the figures
of each experiment, drawn from its metrics and arrays by plot_<experiment>, and the
rules that answer the assignment's questions from the metrics (QUESTIONS). Pure
functions of (metrics, arrays, config): no model, no data, so --replot redraws them.
How the numbers are computed: Task4.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import common
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from harness import Question, pct, pts

TASK = "task4"

# ----------------------------------------------------------------------------
# Figure helpers: 2-D views of images and prompts, grouped bars
# ----------------------------------------------------------------------------


def joint_view(ax, xy: np.ndarray, labels: np.ndarray, classes: list[str], method: str, title: str) -> None:
    """One 2-D fit: images are dots (the first len(labels) rows), prompts stars in their
    class's colour (the legend names the colours: with the modality gap the prompts sit in
    one tight cluster, where name labels would pile up on each other)."""
    n = len(labels)
    common.scatter_by_class(ax, xy[:n], labels, classes, title, size=8)
    cmap = plt.get_cmap("tab10")
    for k in range(len(classes)):
        ax.scatter(*xy[n + k], s=220, marker="*", color=cmap(k % 10), edgecolor="black", linewidth=0.8, zorder=3)
    ax.set_xlabel(f"{method} 1 (dots: images, stars: class prompts)")
    ax.set_ylabel(f"{method} 2")


def plot_joint(d: dict, prompt: str, what: str, name: str, caption: str, out: Path) -> None:
    """<name>_<method>.png per embedding method in `d` (Task4.joint_coordinates): small | large view."""
    classes = d["classes"].tolist()
    for m in [m for m in ("tsne", "umap") if f"{m}_small" in d]:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
        for ax, size in zip(axes, ("small", "large")):
            y = d[f"y_{size}"]
            joint_view(ax, d[f"{m}_{size}"], y, classes, m,
                       f"{len(y)} {what} + {len(classes)} class prompts ({prompt})")
        fig.suptitle(f"Joint {m} {caption}")
        common.save_figure(fig, out / f"{name}_{m}.png")


def pca_view(ax, xy: np.ndarray, var: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    """Images (dots) and class prompts (stars, the last K rows) on the first two principal
    axes of both together (pca_2d), with equal axis scales, so the arrow between the two
    modality centroids shows the gap (its part in this plane) in the embedding's own units."""
    n = len(labels)
    common.scatter_by_class(ax, xy[:n], labels, classes, title, size=8, legend=False)
    cmap = plt.get_cmap("tab10")
    for k in range(len(xy) - n):
        ax.scatter(*xy[n + k], s=160, marker="*", color=cmap(k % 10), edgecolor="black", linewidth=0.8, zorder=3)
    ci, ct = xy[:n].mean(0), xy[n:].mean(0)
    ax.annotate("", xy=ct, xytext=ci, arrowprops=dict(arrowstyle="->", color="black", lw=1.5), zorder=4)
    ax.scatter(*np.stack([ci, ct]).T, s=60, marker="X", color="black", zorder=4, label="modality centroids")
    ax.scatter([], [], s=8, color="grey", label="test images (colour: class)")
    ax.scatter([], [], s=120, marker="*", color="grey", edgecolor="black", label="class prompts")
    ax.xaxis.set_major_locator(plt.AutoLocator()), ax.yaxis.set_major_locator(plt.AutoLocator())  # units matter here
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"PC 1 ({100 * var[0]:.0f}% of variance; embedding units)")
    ax.set_ylabel(f"PC 2 ({100 * var[1]:.0f}%)")
    ax.legend(fontsize=7, loc="best")


def grouped_bars(ax, series: dict[str, list[float]], ticks: list[str], xlabel: str, ylabel: str, title: str):
    """One group of bars per tick, one bar per series, on a 0..1 scale."""
    w = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(ticks)) + (i - (len(series) - 1) / 2) * w, values, w, label=label)
    ax.set_xticks(np.arange(len(ticks)), ticks)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)


# ----------------------------------------------------------------------------
# Figures, one plot_<experiment> per experiment
# ----------------------------------------------------------------------------


def plot_zeroshot(m: dict, d: dict, cfg, out: Path) -> None:
    classes, strategies, best = d["classes"].tolist(), list(m["top1"]), m["best_strategy"]
    chance = 1 / len(classes)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    grouped_bars(ax, {"top-1": [m["top1"][s] for s in strategies], "top-5": [m["top5"][s] for s in strategies]},
                 strategies, "prompt strategy", "accuracy", f"Zero-shot accuracy on {m['n_test']} STL-10 test images")
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.legend(fontsize=8)
    common.save_figure(fig, out / "zeroshot_accuracy.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    grouped_bars(ax, m["per_class_top1"], classes, "true class", "top-1 accuracy",
                 "Zero-shot accuracy per class and prompt strategy")
    ax.legend(fontsize=7, ncol=len(strategies))
    common.save_figure(fig, out / "zeroshot_per_class.png")
    common.plot_confusion(d["confusion"], classes, out / "zeroshot_confusion.png",
                          f"Zero-shot confusion, best strategy: {best} (top-1 {m['top1'][best]:.3f})")


def plot_gap(m: dict, d: dict, cfg, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    bins = np.linspace(-1, 1, 101)
    for k, label in [("matched", "image - its class prompt"), ("unmatched", "image - other class prompts"),
                     ("image_image", "image - image"), ("text_text", "text - text (80 templates x classes)")]:
        vals = d[f"cos_{k}"]
        ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.5, label=f"{label} (mean {vals.mean():.2f})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"Cosine similarities (prompt: {m['prompt']}); modality gap ||centroid diff|| = "
                 f"{m['gap_normalised']:.3f}")
    ax.legend(fontsize=7)
    common.save_figure(fig, out / "gap_cosine_hist.png")

    plot_joint(d, m["prompt"], "test images", "gap_joint",
               "of L2-normalised image and text embeddings (one fit per panel): the modality gap", out)
    plot_raw_vs_normalised(m, d, out)


def plot_raw_vs_normalised(m: dict, d: dict, out: Path) -> None:
    """gap_raw_vs_normalised.png: the --tsne-small test sample and the class prompts, raw
    (the encoders' outputs) in the left column and L2-normalised (what CLIP compares) in
    the right; top row PCA (linear, to scale), then one row per --embed method. The gap
    numbers in the titles are those of the whole test split."""
    classes, y = d["classes"].tolist(), d["y_small"]
    rows = ["pca"] + [r for r in ("tsne", "umap") if f"raw_{r}" in d]
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 5.2 * len(rows)), squeeze=False, layout="constrained")
    for c, name in enumerate(("raw", "normalised")):
        head = (f"{'raw (unnormalised)' if name == 'raw' else 'L2-normalised'} embeddings: "
                f"||gap|| {m[f'gap_{name}']:.3f}, gap / spread {m[f'separation_{name}']:.2f}")
        pca_view(axes[0, c], d[f"pca_{name}"], d[f"pca_{name}_var"], y, classes,
                 f"{head}\nPCA of {len(y)} images + {len(classes)} prompts")
        for r, method in enumerate(rows[1:], 1):
            xy = d[f"raw_{method}"] if name == "raw" else d[f"{method}_small"]
            joint_view(axes[r, c], xy, y, classes, method, f"{method} of the same points (one fit per panel)")
    fig.suptitle(f"Does normalisation change the modality gap? Same test sample, raw vs L2-normalised "
                 f"(prompt: {m['prompt']}; gap numbers: all {len(d['cos_matched'])} test images)")
    common.save_figure(fig, out / "gap_raw_vs_normalised.png")


def plot_procrustes(m: dict, d: dict, cfg, out: Path) -> None:
    strategies, probe = [s for s in m if isinstance(m[s], dict)], m["linear_probe_top1"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    grouped_bars(ax, {"zero-shot (before)": [m[s]["top1_before"] for s in strategies],
                      "after R (fit on train)": [m[s]["top1_after"] for s in strategies]},
                 strategies, "prompt strategy", "top-1 accuracy on the test split",
                 "Orthogonal Procrustes image -> text map, fitted on STL-10 train only")
    ax.axhline(probe, color="black", ls=":", lw=1.2, label=f"linear probe ({probe:.2f})")
    ax.axhline(1 / len(d["classes"]), color="grey", ls="--", lw=1, label="chance")
    ax.legend(fontsize=7)
    common.save_figure(fig, out / "procrustes_accuracy.png")
    plot_joint(d, cfg.prompt, "rotated test images", "procrustes_joint",
               "after the Procrustes rotation (fit on train): images move onto their prompts", out)


def plot_gap_shift(m: dict, d: dict, cfg, out: Path) -> None:
    lambdas = np.asarray(m["lambdas"])
    i0 = int(np.argmin(np.abs(lambdas)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(s for s in m if isinstance(m[s], dict)):
        acc, signed_gap = d[f"top1_{s}"], d[f"signed_gap_{s}"]
        axes[0].plot(lambdas, acc, marker="o", ms=2.5, color=cmap(i), label=s)
        axes[0].axhline(m[s]["top1_centred"], color=cmap(i), ls=":", lw=1)
        axes[1].plot(signed_gap, acc, marker="o", ms=2.5, color=cmap(i), label=s)
        axes[1].scatter([signed_gap[i0]], [acc[i0]], s=60, color=cmap(i), edgecolor="black", zorder=3)
    axes[0].axvline(0, color="grey", lw=1)
    axes[0].set_xlabel("shift lambda along the unit gap direction")
    axes[0].set_title("Accuracy vs shift (dotted: centring each modality)")
    axes[0].legend(fontsize=7)
    axes[1].axvline(0, color="grey", lw=1)
    axes[1].set_xlabel("resulting gap on test (signed: < 0 once the modalities cross)")
    axes[1].set_title("Accuracy vs resulting gap (circles: unshifted CLIP)")
    for ax in axes:
        ax.set_ylabel("zero-shot top-1 (test)")
        ax.grid(alpha=0.3)
    fig.suptitle("Shifting image and text embeddings along the modality gap (Liang et al. 2022)")
    common.save_figure(fig, out / "gap_shift_accuracy.png")


# ----------------------------------------------------------------------------
# Findings: the assignment's questions (shared/HANDOUT.md; the assignment calls CLIP
# part 5), answered from this run's metrics. Each rule computes its sentence from the
# numbers, so its direction and size change with the run; tests/test_findings.py feeds
# every rule constructed metrics that make it come out both ways.
# ----------------------------------------------------------------------------


def _answer_zeroshot(E: dict):
    z = E["zeroshot"]
    top1, best = z["top1"], z["best_strategy"]
    plain = top1["label"]
    versus = ("plain class names are the best prompt" if best == "label" else
              f"{pts(top1[best], plain)} points above plain class names ({pct(plain)})")
    finding = f"{best} prompts are the most accurate: {pct(top1[best])} top-1 on {z['n_test']:,} test images, " \
              f"{versus}"
    evidence = [f"{s}: top-1 {pct(top1[s])}, top-5 {pct(z['top5'][s])}" for s in top1]
    evidence.append(f"whole STL-10 test split used: {z['n_test']:,} images")
    return finding, evidence, ["zeroshot_accuracy.png", "zeroshot_per_class.png", "zeroshot_confusion.png"]


def _answer_gap(E: dict):
    g = E["gap"]
    sep, sep_raw = g["separation_normalised"], g["separation_raw"]
    apart = "sit apart" if sep > 1 else "overlap"
    matched, unmatched = round(g["cos_matched_mean"], 3), round(g["cos_unmatched_mean"], 3)  # as printed
    why = (f"zero-shot still works because an image is closer to its own class prompt than to the others "
           f"(mean cosine {matched:.3f} vs {unmatched:.3f}), even though both are far below image-image cosine "
           f"{g['cos_image_image_mean']:.3f}" if matched > unmatched else
           f"and zero-shot has nothing to work with here: an image is no closer to its own class prompt than to "
           f"the others (mean cosine {matched:.3f} vs {unmatched:.3f})")
    finding = (f"images and texts {apart}: their centroids are {sep:.2f} times as far apart as the modalities are "
               f"wide after L2 normalisation ({sep_raw:.2f} raw, so normalisation "
               f"{'narrows' if sep < sep_raw else 'widens'} the separation); {why}")
    evidence = [f"prompt strategy {g['prompt']}; test images",
                f"gap = ||centroid(images) - centroid(texts)||: {g['gap_normalised']:.3f} normalised, "
                f"{g['gap_raw']:.3f} raw ({g['gap_raw_relative']:.3f} of the mean raw norm; image norm "
                f"{g['image_norm_raw_mean']:.2f}, text norm {g['text_norm_raw_mean']:.2f})",
                f"separation (gap / spread): normalised {sep:.3f}, raw {sep_raw:.3f}",
                f"mean cosine: image-own prompt {g['cos_matched_mean']:.3f}, image-other prompts "
                f"{g['cos_unmatched_mean']:.3f}, image-image {g['cos_image_image_mean']:.3f}, text-text "
                f"{g['cos_text_text_mean']:.3f}",
                f"2-D views: {g['n_small']} and {g['n_large']} images"]
    # one joint view per --embed method; the report keeps the figures this run wrote
    return finding, evidence, ["gap_joint_tsne.png", "gap_joint_umap.png", "gap_raw_vs_normalised.png",
                               "gap_cosine_hist.png"]


def _answer_gap_shift(E: dict):
    s = E["gap_shift"]
    strategies = [k for k in s if isinstance(s[k], dict)]
    d = {k: s[k]["top1_selected"] - s[k]["top1_unshifted"] for k in strategies}
    k = E.get("gap", {}).get("prompt", "photo")   # the strategy of the 2-D views (--prompt), when gap ran
    k = k if k in s else strategies[0]
    finding = (f"closing the gap does not decide accuracy: shifting along it (lambda {s[k]['lambda_selected_on_train']:+.2f}"
               f", chosen on train) {'raises' if d[k] > 0 else 'lowers' if d[k] < 0 else 'keeps'} {k} top-1 "
               f"{'by ' + pts(d[k], 0) + ' points ' if d[k] else ''}({pct(s[k]['top1_unshifted'])} -> "
               f"{pct(s[k]['top1_selected'])}); over {len(strategies)} strategies the change is "
               f"{min(100 * v for v in d.values()):+.1f} to {max(100 * v for v in d.values()):+.1f} points")
    evidence = [f"{k}: unshifted {pct(s[k]['top1_unshifted'])} (gap {s[k]['gap_unshifted']:.3f}), shifted "
                f"{pct(s[k]['top1_selected'])}, best on test {pct(s[k]['top1_best_on_test'])} "
                f"(lambda {s[k]['lambda_best_on_test']:+.2f}), each modality centred {pct(s[k]['top1_centred'])}"
                for k in strategies]
    return finding, evidence, ["gap_shift_accuracy.png"]


def _answer_procrustes(E: dict):
    p = E["procrustes"]
    strategies = [k for k in p if isinstance(p[k], dict)]
    k = E.get("gap", {}).get("prompt", "photo")   # the strategy of the 2-D views (--prompt), when gap ran
    k = k if k in p else strategies[0]
    r = p[k]
    d = r["top1_after"] - r["top1_before"]
    mean_d = float(np.mean([p[s]["top1_after"] - p[s]["top1_before"] for s in strategies]))
    finding = (f"the rotation fitted on {p['n_train']:,} train images {'shrinks' if r['gap_after'] < r['gap_before'] else 'widens'}"
               f" the {k} gap from {r['gap_before']:.3f} to {r['gap_after']:.3f} and {'raises' if d > 0 else 'lowers'}"
               f" test top-1 by {pts(d, 0)} points ({pct(r['top1_before'])} -> {pct(r['top1_after'])});"
               f" mean change over {len(strategies)} prompt strategies {100 * mean_d:+.1f} points; a linear probe on "
               f"the same labels reaches {pct(p['linear_probe_top1'])}")
    evidence = [f"{s}: top-1 {pct(p[s]['top1_before'])} -> {pct(p[s]['top1_after'])}, gap "
                f"{p[s]['gap_before']:.3f} -> {p[s]['gap_after']:.3f}" for s in strategies]
    evidence.append(f"R fitted on the train split only; ||R^T R - I|| at most {p['max_orthogonality_error']:.1e}")
    return finding, evidence, ["procrustes_accuracy.png", "procrustes_joint_tsne.png", "procrustes_joint_umap.png"]


QUESTIONS = [
    Question("5.1", "Zero-shot accuracy per prompt strategy", ("zeroshot",), _answer_zeroshot),
    Question("5.2", "How separated are the modalities? Does normalisation change the gap? Why does CLIP "
                           "still work?", ("gap",), _answer_gap),
    Question("5.2", "Does closing the gap change accuracy (Liang et al. 2022)?", ("gap_shift",),
                    _answer_gap_shift),
    Question("5.3", "How does Procrustes alignment change the gap and the accuracy?", ("procrustes",),
                    _answer_procrustes),
]
