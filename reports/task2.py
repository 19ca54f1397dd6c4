"""What a Task 2 run shows (ViT-B/16; the assignment's part 2): the figures of each
experiment, drawn from its metrics and arrays by plot_<experiment>, and the rules that
answer the assignment's questions from the metrics (QUESTIONS). Pure functions of
(metrics, arrays, config): no model, no data, so --replot redraws them. torch is used
as an array library only (bilinear upsampling; common.image_grid takes tensors).
How the numbers are computed: Task2.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from harness import Question, pct, pts

TASK = "task2"
STRATEGIES = ["random", "centre", "border", "most-attended", "least-attended"]  # masking orders (Task2.mask_orders)
FUSIONS = ["mean", "max", "min"]                                                 # rollout's head fusions

# ----------------------------------------------------------------------------
# Figure helpers: attention maps drawn over their image
# ----------------------------------------------------------------------------


def upsample_map(amap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[rows, cols] map -> [H, W], bilinear, scaled to [0, 1] (min -> 0, max -> 1)."""
    up = F.interpolate(amap[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)


def draw_overlay(ax, image: np.ndarray, amap: np.ndarray | None, title: str) -> None:
    """image uint8 [H, W, 3]; amap [rows, cols] drawn as red, opacity 0.75 at its max."""
    ax.imshow(image)
    if amap is not None:
        up = upsample_map(torch.as_tensor(amap), image.shape[:2]).numpy()
        rgba = np.zeros((*image.shape[:2], 4))
        rgba[..., 0], rgba[..., 3] = 1.0, 0.75 * up
        ax.imshow(rgba)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])


# ----------------------------------------------------------------------------
# Figures, one plot_<experiment> per experiment
# ----------------------------------------------------------------------------


def plot_classify(m: dict, a: dict, cfg, out: Path) -> None:
    images = a["images"]                                                         # uint8 [n, H, W, 3]
    fig, axes = plt.subplots(len(images), 2, figsize=(8, 2.0 * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for (name, v), image, (left, ax) in zip(m["images"].items(), images, axes):
        labels, probs = zip(*v["top5"])
        draw_overlay(left, image, None, name)
        ax.barh(range(len(labels))[::-1], probs, color="tab:blue")
        ax.set_yticks(range(len(labels))[::-1], labels, fontsize=8)
        ax.set(xlim=(0, 1), xlabel="softmax probability")
        ax.set_title(f"top-1: {labels[0]} ({probs[0]:.2f})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("ViT top-5 ImageNet predictions")
    fig.tight_layout()
    common.save_figure(fig, out / "classify_top5.png")


def plot_attention(m: dict, a: dict, cfg, out: Path) -> None:
    images, last, names = a["images"], a["last"], list(m["images"])              # last: [n, heads, rows, cols]
    last_mean, n_heads = last.mean(1), last.shape[1]
    for n, name in enumerate(names):
        fig, axes = plt.subplots(1, 5, figsize=(13, 3))
        draw_overlay(axes[0], images[n], None, name)
        draw_overlay(axes[1], images[n], last_mean[n], f"last layer CLS attention\n(mean of {n_heads} heads)")
        for ax, f in zip(axes[2:], FUSIONS):
            draw_overlay(ax, images[n], a[f"rollout_{f}"][n], f"rollout, {f} fusion\n(discard {cfg.discard_ratio:g})")
        fig.suptitle(f"Where the CLS token looks ({name}); red = more attention")
        common.save_figure(fig, out / f"attention_map_{name}.png")
    # Per-head grid: rows = images, columns = the mean map and every head of the last layer.
    fig, axes = plt.subplots(len(names), n_heads + 1, figsize=(1.3 * (n_heads + 1), 1.3 * len(names) + 0.8),
                             squeeze=False)
    for n, name in enumerate(names):
        draw_overlay(axes[n, 0], images[n], last_mean[n], "mean" if n == 0 else "")
        axes[n, 0].set_ylabel(name, fontsize=7)
        for h in range(n_heads):
            draw_overlay(axes[n, h + 1], images[n], last[n, h], f"head {h}" if n == 0 else "")
    fig.suptitle("Last layer CLS->patch attention per head (red = more attention; each map scaled to its max)")
    common.save_figure(fig, out / "attention_heads.png")


def plot_heads(m: dict, a: dict, cfg, out: Path) -> None:
    tokens = int(a["tokens"])                                                    # 197 for ViT-B/16
    for key, what, ref, ref_label, how in [
            ("entropy_bits", "entropy of CLS attention (bits)", math.log2(tokens), f"uniform over {tokens} tokens", ""),
            ("distance_px", "mean attention distance (pixels)", m["uniform_distance_px"],
             "uniform attention over patches", "\n(CLS dropped, each patch query's weights renormalised)")]:
        values = np.asarray(m[key])                                              # [layers, heads]
        layers, n_heads = values.shape
        x, colours = np.arange(1, layers + 1), plt.get_cmap("tab20")(np.arange(n_heads) % 20)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for h in range(n_heads):
            ax.scatter(x, values[:, h], s=14, color=colours[h], label=f"head {h}" if n_heads <= 12 else None)
        ax.plot(x, values.mean(1), color="black", lw=1, label="mean over heads")
        ax.axhline(ref, color="grey", ls="--", lw=1, label=ref_label)
        ax.set(xlabel="layer (network depth)", xticks=x, ylabel=what,
               title=f"{what[0].upper() + what[1:]} per head, {m['images']} images{how}")
        ax.legend(fontsize=6, ncol=2, loc="best")
        ax.grid(alpha=0.3)
        common.save_figure(fig, out / f"heads_{key.split('_')[0]}.png")
    sim = np.asarray(m["last_layer_head_similarity"])
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(sim, cmap="viridis", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(sim):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5 if len(sim) > 8 else 7,
                color="white" if v < 0.6 else "black")
    ax.set(xticks=range(len(sim)), yticks=range(len(sim)), xlabel="head", ylabel="head",
           title=f"Last layer: cosine similarity of heads' attention\npatterns (T x T), mean over {m['images']} images")
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    common.save_figure(fig, out / "heads_similarity.png")


def plot_masking(m: dict, a: dict, cfg, out: Path) -> None:
    fractions = m["fractions"]
    titles = {"pixel": "pixel masking (patch := dataset mean)", "token": "token dropping (patch token removed)"}
    for key, ylabel, fname in [("acc", "CIFAR-10 accuracy (linear probe)", "accuracy"),
                               ("agree", "agreement with unmasked prediction", "agreement")]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, how in zip(axes, ("pixel", "token")):
            for s in STRATEGIES:
                v = np.asarray(m[how][s][key])
                ax.plot(fractions, v, marker="o", markersize=3, label=s)
                if s == "random":
                    sd = np.asarray(m[how][s][key + "_std"])
                    ax.fill_between(fractions, v - sd, v + sd, alpha=0.25,
                                    label=f"random: ±1 std over {cfg.mask_seeds} seeds")
            if key == "acc":
                ax.axhline(1 / int(a["n_classes"]), color="grey", ls=":", lw=1, label="chance")
            ax.set_title(titles[how], fontsize=10)
            ax.set(xlabel="fraction of patches masked", ylabel=ylabel, ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{ylabel[0].upper() + ylabel[1:]} vs fraction of patches masked ({m['eval_images']} test images)")
        fig.tight_layout()
        common.save_figure(fig, out / f"masking_{fname}.png")
    shown, examples = a["shown_fractions"], torch.from_numpy(a["examples"]).permute(0, 3, 1, 2)  # [S*F, 3, H, W]
    fig, ax = plt.subplots(figsize=(1.6 * len(shown) + 1.2, 1.6 * len(STRATEGIES) + 0.6))
    common.image_grid(examples, nrow=len(shown), row_labels=STRATEGIES, ax=ax,
                      title="Masked patches (pixel masking; token dropping removes the same patches)")
    w, pad = examples.shape[-1], 2                                               # image_grid's gutter: 2 px
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(len(shown))], [f"f = {f:g}" for f in shown])
    ax.xaxis.tick_top()
    common.save_figure(fig, out / "masking_examples.png")


def plot_probe(m: dict, a: dict, cfg, out: Path) -> None:
    sd, n_classes = a["cosine_layer_std"], int(a["n_classes"])                  # [layers]; 10 for CIFAR-10
    n_layers = len(m["cls_layer_acc"])
    x = np.arange(1, n_layers + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    common.line_plot(ax, {"CLS token": (x, m["cls_layer_acc"]), "mean of patch tokens": (x, m["mean_layer_acc"])},
                     f"Linear probe test accuracy per layer ({m['train_images']} train / {m['test_images']} test)",
                     "layer (block output)", "CIFAR-10 test accuracy")
    for kind, colour in (("cls", "tab:blue"), ("mean", "tab:orange")):
        ax.scatter([n_layers], [m[f"{kind}_test_acc"]], marker="*", s=120, color=colour, zorder=3,
                   label=f"{'CLS' if kind == 'cls' else 'mean'} after final LayerNorm")
    ax.axhline(1 / n_classes, color="grey", ls=":", lw=1, label="chance")
    ax.set(xticks=x, ylim=(0, 1.02))
    ax.legend(fontsize=8)
    common.save_figure(fig, out / "probe_layers.png")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    mu = np.asarray(m["cosine_layer_mean"])
    ax.plot(x, mu, marker="o", label="mean over test images")
    ax.fill_between(x, mu - sd, mu + sd, alpha=0.25, label="±1 std")
    ax.scatter([n_layers], [m["cosine_final_mean"]], marker="*", s=120, color="tab:red", zorder=3,
               label="after final LayerNorm")
    ax.set(xlabel="layer (block output)", xticks=x, ylabel="cosine similarity",
           title="Cosine similarity of CLS token and mean patch token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    common.save_figure(fig, out / "probe_cosine.png")


# ----------------------------------------------------------------------------
# Findings: the assignment's questions (shared/HANDOUT.md, part 2), answered
# from this run's metrics. Each rule computes its sentence from the numbers, so
# its direction and size change with the run; tests/test_findings.py feeds every
# rule constructed metrics that make it come out both ways.
# ----------------------------------------------------------------------------


def _answer_classify(E: dict):
    c = E["classify"]
    images = c["images"]
    sure = [n for n, v in images.items() if v["top1_prob"] >= 0.5]
    finding = (f"the model gives its top-1 label at least 50% probability on {len(sure)} of {len(images)} images "
               f"(mean top-1 probability {pct(c['mean_top1_prob'])}); judge each label against the picture")
    evidence = [f"{n}: top-1 {v['top1']} ({pct(v['top1_prob'])}), top-5 "
                + ", ".join(f"{l} {pct(p)}" for l, p in v["top5"][1:]) for n, v in images.items()]
    return finding, evidence, ["classify_top5.png"]


def _answer_overlay(E: dict):
    a = E["attention"]
    figs = [f"attention_map_{n}.png" for n in a["images"]]
    finding = (f"{len(figs)} red overlays of the last layer's CLS attention (the CLS token's row, mean over heads, "
               f"reshaped to the patch grid and upsampled to the image, semi-transparent over it), one per image, "
               f"beside attention rollout; each head's own map is in attention_heads.png")
    evidence = [f"{n}: last-layer attention entropy {v['last_layer_entropy_bits']:.2f} bits (uniform "
                f"{a['uniform_entropy_bits']:.2f})" for n, v in a["images"].items()]
    return finding, evidence, figs + ["attention_heads.png"]


def _answer_attention(E: dict):
    a = E["attention"]
    uniform = a["uniform_entropy_bits"]
    share = a["mean_last_layer_entropy_bits"] / uniform
    kind = "concentrated on a few patches" if share < 0.8 else "spread out" if share < 0.95 else "close to uniform"
    rho = a["mean_spearman_last_vs_rollout"]
    selfa = [v["cls_self_attention_last_layer"] for v in a["images"].values()]
    finding = (f"last-layer CLS attention is {kind}: {a['mean_last_layer_entropy_bits']:.2f} bits of a uniform "
               f"{uniform:.2f} ({pct(share, 0)}); attention rollout ranks patches "
               f"{'like' if rho >= 0.5 else 'unlike'} the last layer (Spearman {rho:.2f})")
    evidence = [f"{n}: last-layer entropy {v['last_layer_entropy_bits']:.2f} bits, rollout "
                f"{v['rollout_entropy_bits']:.2f} bits, Spearman(last, rollout) {v['spearman_last_vs_rollout']:.2f}, "
                f"CLS->CLS attention {v['cls_self_attention_last_layer']:.3f}" for n, v in a["images"].items()]
    evidence.append(f"mean rollout entropy {a['mean_rollout_entropy_bits']:.2f} bits; CLS attends to itself with "
                    f"weight {min(selfa):.3f}-{max(selfa):.3f} in the last layer (mean of heads)")
    figs = [f"attention_map_{n}.png" for n in a["images"]] + ["attention_heads.png"]
    return finding, evidence, figs


def _answer_heads(E: dict):
    h = E["heads"]
    sim = h["last_layer_mean_offdiag_similarity"]
    kind = "attend differently (specialised)" if sim < 0.5 else "partly overlap" if sim < 0.8 else \
        "attend alike (redundant)"
    lo, hi = h["first_layer_distance_min_px"], h["first_layer_distance_max_px"]
    last = h["last_layer_distance_mean_px"]
    finding = (f"last-layer heads {kind}: mean cosine similarity of their attention patterns {sim:.2f}; first-layer "
               f"heads attend over {lo:.1f}-{hi:.1f} px, last-layer heads {last:.1f} px on average "
               f"({'more' if last > (lo + hi) / 2 else 'less'} global with depth)")
    evidence = [f"{h['images']} images; mean attention distance, uniform attention: {h['uniform_distance_px']:.1f} px",
                f"entropy of CLS attention, mean over heads: first layer {h['first_layer_entropy_mean_bits']:.2f} "
                f"bits, last layer {h['last_layer_entropy_mean_bits']:.2f} bits",
                f"last-layer head similarity (off-diagonal mean): {sim:.3f}"]
    return finding, evidence, ["heads_distance.png", "heads_entropy.png", "heads_similarity.png"]


def _answer_masking(E: dict):
    m = E["masking"]
    fr = m["fractions"]
    nonzero = [i for i, f in enumerate(fr) if f > 0]
    i = min(nonzero or [0], key=lambda j: abs(fr[j] - 0.5))   # the fraction nearest one half
    f, base = fr[i], m["unmasked_acc"]
    rnd, ctr = m["pixel"]["random"]["acc"][i], m["pixel"]["centre"]["acc"][i]
    tok = m["token"]["random"]["acc"][i]
    worse = ("random and centre masking hurt alike" if pts(rnd, ctr) == "0.0" else   # equal as quoted
             f"{'centre' if ctr < rnd else 'random'} masking hurts more by {pts(rnd, ctr)} points")
    finding = (f"with {pct(f, 0)} of patches masked, accuracy falls from {pct(base)} to "
               f"{pct(rnd)} (random patches) and {pct(ctr)} (centre block): {worse}; "
               f"dropping the same random tokens instead keeps {pct(tok)}")
    evidence = [f"{m['eval_images']} CIFAR-10 test images, linear probe on unmasked CLS features (C = {m['probe_C']})"]
    for how in ("pixel", "token"):
        for s, v in m[how].items():
            evidence.append(f"{how} masking, {s}: accuracy " + ", ".join(
                f"{pct(a)} with {pct(x, 0)} masked" for x, a in zip(fr, v["acc"])))
    return finding, evidence, ["masking_accuracy.png", "masking_agreement.png", "masking_examples.png"]


def _answer_probe(E: dict):
    p = E["probe"]
    cls, mean = p["cls_test_acc"], p["mean_test_acc"]
    winner, loser = ("mean pooling", "CLS") if mean > cls else ("CLS", "mean pooling")
    lead = (f"{winner} beats {loser} at the last layer by {pts(mean, cls)} points" if pts(mean, cls) != "0.0"
            else "CLS and mean pooling tie at the last layer")   # equal at the precision quoted
    layers = len(p["cls_layer_acc"])
    mean_wins = sum(m > c for m, c in zip(p["mean_layer_acc"], p["cls_layer_acc"]))
    best_cls = int(np.argmax(p["cls_layer_acc"])) + 1
    best_mean = int(np.argmax(p["mean_layer_acc"])) + 1
    finding = (f"{lead}: {pct(max(cls, mean))} vs "
               f"{pct(min(cls, mean))}, {p['test_images']:,} test images; the mean of patch tokens is ahead at "
               f"{mean_wins} of {layers} layers")
    evidence = [f"final layer (after LayerNorm), {p['train_images']:,} train / {p['test_images']:,} test images: CLS "
                f"{pct(cls)} (C = {p['cls_C']}), mean of patches {pct(mean)} (C = {p['mean_C']})",
                f"best block output: CLS layer {best_cls} ({pct(max(p['cls_layer_acc']))}), mean layer "
                f"{best_mean} ({pct(max(p['mean_layer_acc']))})",
                f"cosine(CLS, mean of patches) after the final LayerNorm {p['cosine_final_mean']:.3f} "
                f"± {p['cosine_final_std']:.3f}"]
    return finding, evidence, ["probe_layers.png", "probe_cosine.png"]


QUESTIONS = [
    Question("2.1", "Top-1 predictions: are they reasonable?", ("classify",), _answer_classify),
    Question("2.2", "The last layer's CLS attention as a red overlay on each image", ("attention",), _answer_overlay),
    Question("2.3", "Does the model attend to the object it predicts? Odd behaviour?", ("attention",),
                    _answer_attention),
    Question("2.3", "Are heads specialised, and how can you tell?", ("heads",), _answer_heads),
    Question("2.4", "How robust is the model to masked patches (random vs structured), and why?",
                    ("masking",), _answer_masking),
    Question("2.5", "CLS token or mean of patch tokens: which probes better?", ("probe",), _answer_probe),
]

