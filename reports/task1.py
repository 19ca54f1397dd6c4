"""What a Task 1 run shows (ResNet-152 on CIFAR-10; the assignment's part 1): each experiment's
figures (plot_<experiment>) and the rules answering the assignment's questions (QUESTIONS), pure
functions of (metrics, arrays, config), so --replot redraws them. The numbers: Task1.py."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

import common
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from harness import Question, pct, pts
from matplotlib.ticker import MaxNLocator

TASK = "task1"

# The stem (conv1-bn1-relu-maxpool) and the four stages, by the module the `features` hooks read.
STAGES = {"stem": "maxpool", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
CUT_SETS = ("selected", "layer1", "layer2", "layer3", "layer4", "all")  # residual's ablations
TRANSFER_INITS, TRANSFER_STRATEGIES = ("pretrained", "scratch"), ("head", "layer4", "full")  # transfer's arms
EMBED_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def spans_orders_of_magnitude(values, ratio: float = 100.0) -> bool:
    """Whether the positive finite values span `ratio` (max / min): a loss axis then turns logarithmic."""
    v = [float(x) for x in values if x is not None and math.isfinite(x) and x > 0]
    return bool(v) and max(v) / min(v) >= ratio


def gradient_flow(g_with: float, g_without: float) -> str:
    """Stem / layer4 gradient-norm ratios at init with and without shortcuts -> what the plain net's early
    gradients do: explode (10x the ratio with shortcuts or more), vanish (a tenth or less) or stay similar."""
    r = g_without / max(g_with, 1e-30)
    return (f"explode ({r:.2g}x larger relative to layer4 than with them)" if r >= 10 else
            f"vanish ({1 / max(r, 1e-30):.2g}x smaller relative to layer4 than with them)" if r <= 0.1 else
            f"stay similar (within 10x of the ratio with them: {r:.2g}x)")


def _num(v, spec: str = ".3f") -> str:
    """A metric for a sentence or title; None (undefined in this run, e.g. a silhouette) reads 'undefined'."""
    return "undefined" if v is None else format(v, spec)


def plot_baseline(m: dict, a: dict, cfg, out: Path) -> None:
    h, epochs = m["history"], list(range(1, len(m["history"]["train_loss"]) + 1))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    common.line_plot(a1, {"train": (epochs, h["train_loss"]), "validation": (epochs, h["val_loss"])},
                     "cross-entropy", "epoch", "loss")
    common.line_plot(a2, {"train": (epochs, h["train_acc"]), "validation": (epochs, h["val_acc"])},
                     "accuracy", "epoch", "accuracy")
    a2.axhline(m["test_acc"], color="k", ls="--", lw=1, label=f"test {m['test_acc']:.3f}")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    mode = "augmented, through the backbone" if cfg.augment else "cached features"
    fig.suptitle(f"Baseline: linear head on frozen {cfg.arch} (weights: {cfg.weights}, {cfg.img_size} px, {mode})")
    common.save_figure(fig, out / "baseline_curves.png")
    common.plot_confusion(m["confusion"], a["classes"].tolist(), out / "baseline_confusion.png",
                          f"Baseline confusion on CIFAR-10 test (accuracy {m['test_acc']:.3f})")


def plot_residual(m: dict, a: dict, cfg, out: Path) -> None:
    """residual_curves.png: head curves and test accuracy per cut set; residual_gradnorms.png."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ep = list(range(1, a["train_loss"].shape[1] + 1))
    common.line_plot(axes[0], {n: (ep, v) for n, v in zip(a["curve_names"], a["train_loss"])},
                     "head training loss", "epoch", "cross-entropy")
    common.line_plot(axes[1], {n: (ep, v) for n, v in zip(a["curve_names"], a["val_acc"])},
                     "validation accuracy", "epoch", "accuracy")
    xs, base = np.arange(len(CUT_SETS)), m["baseline_test_acc"]
    axes[2].bar(xs - 0.2, [m[n]["test_acc_retrained"] for n in CUT_SETS], 0.4, label="head retrained")
    axes[2].bar(xs + 0.2, [m[n]["test_acc_no_retrain"] for n in CUT_SETS], 0.4, label="baseline head, no retrain")
    axes[2].axhline(base, color="k", ls="--", lw=1, label=f"baseline {base:.3f}")
    axes[2].axhline(1 / int(a["n_classes"]), color="grey", ls=":", lw=1, label="chance")
    axes[2].set_xticks(xs, [f"{n}\n({m[n]['blocks_cut']} blocks)" for n in CUT_SETS], fontsize=8)
    axes[2].set(title="test accuracy with shortcuts cut", ylabel="accuracy", ylim=(0, 1))
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Residual ablation in {cfg.arch} (weights: {cfg.weights}): shortcuts cut, "
                 f"each cut block returns relu(F(x)); head retrained as in the baseline")
    common.save_figure(fig, out / "residual_curves.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = a["block_names"].tolist()
    for label, norms, style in (("with shortcuts", a["grad_with"], "-o"), ("without shortcuts", a["grad_without"], "-s")):
        ax.plot(range(len(names)), np.maximum(norms, 1e-30), style, ms=3, label=label)
    for i in [i for i, n in enumerate(names) if n.endswith(".0")]:  # the first block of each stage
        ax.axvline(i - 0.5, color="grey", lw=0.6, ls=":")
        ax.text(i - 0.3, 1.0, names[i].split(".")[0], transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    g_with, g_without = (m["gradnorm_stem_over_layer4"][k] for k in ("with_shortcuts", "without_shortcuts"))
    loss = m["init_loss"]
    ax.set(yscale="log", xlabel="block (input -> output; 0 = stem)", ylabel="||dL/dθ|| of the block (no downsample)",
           title=f"Gradient norm per block at random initialisation, {cfg.arch}, batch of {int(a['grad_images'])}\n"
                 f"stem / layer4: {g_with:.3g} with shortcuts, {g_without:.3g} without; without them the early "
                 f"gradients {gradient_flow(g_with, g_without).split(' (')[0]}\n(initial loss "
                 f"{loss['with_shortcuts']:.2f} with shortcuts, {loss['without_shortcuts']:.2f} without)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "residual_gradnorms.png")


def plot_embeddings(xy: dict, labels: np.ndarray, classes: list[str], m: dict, title: str, path: Path) -> None:
    """One row of depth panels per method in `xy` ({method: [stages, N, 2]}), with their scores."""
    fig, axes = plt.subplots(len(xy), len(STAGES), figsize=(4 * len(STAGES), 4.4 * len(xy)), squeeze=False,
                             layout="constrained")
    for r, method in enumerate(xy):
        e = m["embedding"][method]
        for i, (ax, s) in enumerate(zip(axes[r], STAGES)):
            common.scatter_by_class(ax, xy[method][i], labels, classes,
                                    f"{s} ({m['dim'][s]} ch): probe {_num(m['probe_acc'][s], '.2f')}, "
                                    f"5-NN {_num(m['knn_acc'][s], '.2f')}\n{EMBED_NAMES[method]} map: "
                                    f"trustworthiness {_num(e['trustworthiness'][s], '.2f')}, "
                                    f"5-NN {_num(e['knn_acc_2d'][s], '.2f')}", size=5, legend=s == "layer4")
            ax.title.set_fontsize(9)
    fig.suptitle(title + "\n(5-NN: leave-one-out 5-nearest-neighbour accuracy in the features and in the map)")
    common.save_figure(fig, path)


def plot_features(m: dict, a: dict, cfg, out: Path) -> None:
    """features_<method>.png (_tsne_vs_umap with both), separability and confused pairs by depth."""
    labels, classes, xs = a["labels"], a["classes"].tolist(), list(range(len(STAGES)))
    xy = {method: a[f"xy_{method}"] for method in m["embedding"]}
    setup = f"{cfg.arch} (weights: {cfg.weights})"
    title = f"pooled features by depth, {setup}, {len(labels)} test images"
    for method in xy:
        plot_embeddings({method: xy[method]}, labels, classes, m, f"{EMBED_NAMES[method]} of {title}",
                        out / f"features_{method}.png")
    if len(xy) > 1:
        plot_embeddings(xy, labels, classes, m, f"t-SNE (top) vs UMAP (bottom) of {title}",
                        out / "features_tsne_vs_umap.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    common.line_plot(a1, {"linear probe": (xs, [m["probe_acc"][s] for s in STAGES])},
                     "linear-probe test accuracy", "depth", "accuracy")
    a1.axhline(1 / len(classes), color="grey", ls=":", lw=1, label="chance")
    a1.legend(fontsize=8)
    common.line_plot(a2, {"silhouette": (xs, [m["silhouette"][s] for s in STAGES])},
                     "silhouette score (standardised features)", "depth", "silhouette")
    a1.set_xticks(xs, list(STAGES)), a2.set_xticks(xs, list(STAGES))
    fig.suptitle(f"Class separability by depth, {setup}")
    common.save_figure(fig, out / "features_separability.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pair, v in m["confused_pairs"].items():
        ax.plot(xs, [v["separation"][s] for s in STAGES], "-o", ms=3,
                label=f"{pair.replace('_vs_', ' / ')} ({v['confusions']} confused)")
    ax.plot(xs, [m["mean_pair_separation"][s] for s in STAGES], "k--", lw=2, label="mean over all class pairs")
    ax.set_xticks(xs, list(STAGES))
    ax.set(xlabel="depth", ylabel="centroid distance / class spread",
           title="Most-confused class pairs (baseline head) in feature space")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    common.save_figure(fig, out / "features_confused_pairs.png")


def plot_transfer_curves(curves: dict, title: str, path: Path) -> None:
    """Training loss and validation accuracy per epoch of every arm, pretrained solid, scratch dashed."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    logy = spans_orders_of_magnitude([v for h in curves.values() for v in h["train_loss"]])
    epochs = {a: list(range(1, len(h["train_loss"]) + 1)) for a, h in curves.items()}
    common.line_plot(a1, {a: (epochs[a], h["train_loss"]) for a, h in curves.items()},
                     "training loss" + (" (log scale)" if logy else ""), "epoch", "cross-entropy", logy=logy)
    common.line_plot(a2, {a: (epochs[a], h["val_acc"]) for a, h in curves.items()}, "validation accuracy", "epoch",
                     "accuracy")
    a2.set_ylim(-0.02, 1.02)  # an arm at accuracy 0 stays visible above the axis
    n_epochs = max(len(e) for e in epochs.values())
    for ax in (a1, a2):  # pretrained solid, scratch dashed
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_epochs, 10)))  # whole epochs only
        for line in ax.get_lines():
            line.set_linestyle("--" if line.get_label().startswith("scratch") else "-")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    common.save_figure(fig, path)


def plot_transfer(m: dict, a: dict, cfg, out: Path) -> None:
    """transfer_curves.png and transfer_compute.png (test accuracy vs training seconds)."""
    arms, dataset = a["arms"].tolist(), cfg.transfer_dataset
    curves = {arm: {"train_loss": a["train_loss"][i].tolist(), "val_acc": a["val_acc"][i].tolist()}
              for i, arm in enumerate(arms)}
    plot_transfer_curves(curves, f"Transfer to {dataset}: {cfg.arch}, pretrained (weights: {cfg.weights}) vs "
                                 f"scratch, {int(a['train_images'])} training images", out / "transfer_curves.png")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    most = max(m[arm]["trainable_params"] for arm in arms)
    for arm in arms:
        ax.scatter(m[arm]["train_seconds"], m[arm]["test_acc"], s=30 + 170 * m[arm]["trainable_params"] / most,
                   marker="o" if arm.startswith("pretrained") else "s",
                   label=f"{arm} ({m[arm]['trainable_params'] / 1e6:.2f} M trainable)")
    ax.axhline(1 / int(a["n_classes"]), color="grey", ls=":", lw=1, label="chance")
    ax.set(xscale="log", xlabel="training wall-clock seconds (log)", ylabel="test accuracy",
           title=f"Accuracy vs compute, {dataset} (marker size ~ trainable parameters)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "transfer_compute.png")


def plot_depth(m: dict, a: dict, cfg, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    names = [n for n in m if isinstance(m[n], dict)]  # the architectures
    for ax, key, title in zip(axes, ("head_acc", "probe_acc", "images_per_s"),
                              ("linear head (baseline recipe), test acc", "logistic probe, test acc",
                               "feature extraction, images/s")):
        bars = ax.bar(names, [m[n][key] for n in names], color=plt.get_cmap("tab10").colors[:len(names)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set(title=title, ylabel=key.replace("_", " "))
        if key != "images_per_s":
            ax.set_ylim(0, 1)
    fig.suptitle(f"Depth: feature quality vs cost (weights: {cfg.weights}, {cfg.img_size} px, "
                 f"batch {cfg.eval_batch_size}, {a['device']})")
    common.save_figure(fig, out / "depth_comparison.png")


def plot_scratch_shortcuts(m: dict, a: dict, cfg, out: Path) -> None:
    """Loss and accuracy per step (windowed) and test accuracy per epoch of every network: colour = depth,
    ResNet solid, plain dashed."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), layout="constrained")
    total, target, colours = m["steps"], m["target_acc"], plt.get_cmap("tab10").colors
    arms = (("resnet", "-"), ("plain", "--"))  # He et al.'s Fig. 6 draws its plain and residual nets side by side
    for (depth, colour), (arm, style) in itertools.product(zip(m["depths"], colours), arms):
        r, name = m["nets"][f"{arm}{depth}"], f"{'ResNet' if arm == 'resnet' else 'plain'}-{depth}"
        h, kw = r["history"], {"color": colour, "ls": style}
        axes[0].plot(h["step"], h["train_loss"], **kw, label=f"{name} (test {_num(r['test_acc'])})")
        axes[1].plot(h["step"], h["train_acc"], **kw, label=name + (
            f", {target:.0%} at step {r['steps_to_target_acc']}" if r["steps_to_target_acc"] else
            f", never {target:.0%}"))
        axes[2].plot(range(1, len(h["test_acc"]) + 1), h["test_acc"], **kw, marker="o", ms=3, label=name)
    if spans_orders_of_magnitude([v for r in m["nets"].values() for v in r["history"]["train_loss"]], 10.0):
        axes[0].set_yscale("log")
    axes[1].axhline(target, color="grey", ls=":", lw=1)
    for ax in axes[:2]:
        for drop in (total // 2, total * 3 // 4):
            ax.axvline(drop, color="grey", lw=0.6, ls=":")
    axes[0].set(title="training loss (lr / 10 at the dotted lines)", xlabel="SGD step", ylabel="cross-entropy")
    axes[1].set(title="training accuracy (augmented minibatches)", xlabel="SGD step", ylabel="accuracy", ylim=(0, 1))
    axes[2].set(title="test accuracy after each epoch", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Degradation from scratch (He et al. 2016, Fig. 6): CIFAR ResNet (solid) vs plain (dashed) at "
                 f"{', '.join(map(str, m['depths']))} layers (colour); {m['dataset']}, {m['train_images']} images, "
                 f"{cfg.scratch_epochs} epochs = {total} steps of {cfg.recipe['scratch_batch_size']},\n"
                 "each depth's ResNet and plain net from the same initial weights, every network the same minibatches")
    common.save_figure(fig, out / "scratch_shortcuts_curves.png")


# ---- Findings: shared/HANDOUT.md's part 1, from the metrics (tests/test_findings.py: both ways) ----


def _answer_frozen(E: dict):
    b = E["baseline"]
    n_test, k = int(np.sum(b["confusion"])), len(b["confusion"])
    chance, head_params, gap = 1 / k, b["feature_dim"] * k + k, b["final_train_acc"] - b["final_val_acc"]
    ratio = b["test_acc"] / chance
    level = "far above" if ratio >= 3 else "above" if ratio >= 1.5 else "no better than"
    finding = (f"a linear head of {head_params:,} parameters on the frozen backbone reaches {pct(b['test_acc'])} "
               f"test accuracy, {level} chance ({pct(chance)}), after {len(b['history']['train_loss'])} "
               f"epochs; training accuracy is {pts(gap, 0)} points {'above' if gap >= 0 else 'below'} validation")
    evidence = [f"baseline test accuracy {pct(b['test_acc'])} on {n_test:,} CIFAR-10 test images "
                f"(loss {b['test_loss']:.3f})",
                f"final epoch: train accuracy {pct(b['final_train_acc'])}, validation {pct(b['final_val_acc'])}",
                f"trainable: {head_params:,} head parameters ({b['feature_dim']}-d pooled features x {k} classes)",
                f"cost: features extracted once in {b['extract_seconds'] or 0:.1f} s (0 = cached), head trained in "
                f"{b['head_seconds']:.1f} s"]
    if "transfer" in E and "pretrained_head" in E["transfer"]:
        h, f = E["transfer"]["pretrained_head"], E["transfer"]["scratch_full"]
        evidence.append(f"transfer (its test split): frozen + head {pct(h['test_acc'])} in {h['train_seconds']:.1f} s "
                        f"of training vs random init trained in full {pct(f['test_acc'])} in {f['train_seconds']:.1f} s")
    return finding, evidence, ["baseline_curves.png", "baseline_confusion.png"]


def _answer_shortcuts(E: dict):
    r = E["residual"]
    base, sel = r["baseline_test_acc"], r["selected"]
    d = sel["test_acc_retrained"] - base
    g_with, g_without = (r["gradnorm_stem_over_layer4"][k] for k in ("with_shortcuts", "without_shortcuts"))
    finding = (f"cutting the shortcuts of {sel['blocks_cut']} blocks ({r['selected_blocks']}) "
               f"{'lowers' if d < 0 else 'raises'} test accuracy by {pts(d, 0)} points after retraining the head "
               f"({pct(sel['test_acc_retrained'])} vs {pct(base)}); at random initialisation the stem "
               f"gets {g_with:.3g}x layer4's gradient norm with shortcuts and {g_without:.3g}x without: without "
               f"shortcuts the early layers' gradients {gradient_flow(g_with, g_without)}")
    evidence = [f"test accuracy, head retrained: baseline {pct(base)}, "
                + ", ".join(f"cut {n} ({r[n]['blocks_cut']} blocks) {pct(r[n]['test_acc_retrained'])}"
                            for n in CUT_SETS if n in r),
                "test accuracy with the baseline head, not retrained: "
                + ", ".join(f"cut {n} {pct(r[n]['test_acc_no_retrain'])}" for n in ("selected", "all") if n in r),
                f"gradient norm stem / layer4 at init, one batch, downsample shortcuts left out (the plain net has "
                f"none): {g_with:.3g} with shortcuts, {g_without:.3g} without; initial loss "
                f"{r['init_loss']['with_shortcuts']:.3f} vs {r['init_loss']['without_shortcuts']:.3f}"]
    return finding, evidence, ["residual_curves.png", "residual_gradnorms.png"]


def _with_depth(s: dict, arm: str) -> str:
    """How `arm`'s final training loss changes from the shallowest to the deepest net, and whether that is
    He et al.'s degradation (the deeper net trains worse)."""
    d, (a, b) = s[f"{arm}_deeper_minus_shallower_final_train_loss"], (s["nets"][f"{arm}{n}"]["final_train_loss"]
                                                                      for n in (s["depths"][0], s["depths"][-1]))
    return ("cannot be compared (a network diverged)" if d is None else f"{'rises' if d > 0 else 'falls'} by "
            f"{abs(d):.3f} ({a:.3f} -> {b:.3f}): it {'degrades' if d > 0 else 'does not degrade'}")


def _answer_scratch(E: dict):
    s = E["scratch_shortcuts"]
    (lo, hi), nets = (s["depths"][0], s["depths"][-1]), s["nets"]
    res, plain = nets[f"resnet{hi}"], nets[f"plain{hi}"]
    d_loss, d_acc = plain["final_train_loss"] - res["final_train_loss"], plain["test_acc"] - res["test_acc"]
    reach = lambda m: f"after {m['steps_to_target_acc']} steps" if m["steps_to_target_acc"] else "not reached"  # noqa
    finding = (f"trained from scratch for {s['steps']} steps, plain-{hi} ends with a training loss "
               f"{abs(d_loss):.3f} {'above' if d_loss > 0 else 'below'} ResNet-{hi}'s "
               f"({plain['final_train_loss']:.3f} vs {res['final_train_loss']:.3f}) and test accuracy "
               f"{pts(d_acc, 0)} points {'lower' if d_acc < 0 else 'higher'} ({pct(plain['test_acc'])} vs "
               f"{pct(res['test_acc'])}); training accuracy {pct(s['target_acc'], 0)}: {reach(res)} with "
               f"shortcuts, {reach(plain)} without; from {lo} to {hi} layers the plain net's final training loss "
               f"{_with_depth(s, 'plain')} with depth, the ResNet's {_with_depth(s, 'resnet')}")
    name = lambda k: k.replace("resnet", "ResNet-").replace("plain", "plain-")  # noqa: E731  resnet56 -> ResNet-56
    signed = lambda v: "undefined" if v is None else f"{100 * v:+.1f} points"  # noqa: E731
    evidence = [f"{s['dataset']}, {s['train_images']:,} training images, {s['steps']} steps; each depth's ResNet "
                f"and plain net from the same initial weights, all {len(nets)} networks the same minibatches"]
    evidence += [f"{name(k)}: training loss at 10% / 25% / 50% / 100% of the budget "
                 + " / ".join(_num(n[f"train_loss_at_{p}pct"]) for p in (10, 25, 50, 100))
                 + f", test accuracy {'undefined' if n['test_acc'] is None else pct(n['test_acc'])}, training accuracy "
                   f"{pct(s['target_acc'], 0)} {reach(n)}" for k, n in nets.items()]
    evidence.append(f"test accuracy from {lo} to {hi} layers: plain "
                    f"{signed(s['plain_deeper_minus_shallower_test_acc'])}, ResNet "
                    f"{signed(s['resnet_deeper_minus_shallower_test_acc'])}")
    return finding, evidence, ["scratch_shortcuts_curves.png"]


def _answer_hierarchy(E: dict):
    f = E["features"]
    probe, sil, stages = f["probe_acc"], f["silhouette"], list(f["probe_acc"])
    first, last, best = stages[0], stages[-1], max(stages, key=lambda s: probe[s])
    d = probe[last] - probe[first]
    finding = (f"linear-probe accuracy {'rises' if d > 0 else 'falls'} by {pts(d, 0)} points from the {first} "
               f"({pct(probe[first])}) to {last} ({pct(probe[last])}), peaking at {best} "
               f"({pct(probe[best])}); silhouette {_num(sil[first])} -> {_num(sil[last])}")
    evidence = ["linear-probe test accuracy by depth: " + ", ".join(f"{s} {pct(probe[s])}" for s in stages),
                "silhouette of standardised features by depth: " + ", ".join(f"{s} {_num(sil[s])}" for s in stages),
                "5-NN accuracy in the full feature space: " + ", ".join(f"{s} {pct(f['knn_acc'][s])}" for s in stages),
                "channels: " + ", ".join(f"{s} {f['dim'][s]}" for s in stages),
                "test images: --n-vis of the config; probe trained on the recipe's probe_train_size training images"]
    return finding, evidence, ["features_separability.png"] + [f"features_{m}.png" for m in f["embedding"]]


def _answer_transfer(E: dict):
    t = E["transfer"]
    arms = [f"{i}_{s}" for i in TRANSFER_INITS for s in TRANSFER_STRATEGIES if f"{i}_{s}" in t]
    best = max(arms, key=lambda a: t[a]["test_acc"])
    # the cheapest arm (training seconds) within one point of the best accuracy
    near = [a for a in arms if t[best]["test_acc"] - t[a]["test_acc"] <= 0.01]
    cheap = min(near, key=lambda a: t[a]["train_seconds"])
    gains = {s: t[f"pretrained_{s}"]["test_acc"] - t[f"scratch_{s}"]["test_acc"] for s in TRANSFER_STRATEGIES}
    top = max(gains, key=gains.get)
    trade = (f"{best} is also the cheapest within a point of it" if cheap == best else
             f"{cheap} comes within {pts(t[best]['test_acc'], t[cheap]['test_acc'])} points of it in "
             f"{t[cheap]['train_seconds']:.1f} s instead of {t[best]['train_seconds']:.1f} s")
    init = "ImageNet weights" if t["pretrained_weights"] != "none" else (  # --weights none: every arm is random
        "with no ImageNet weights loaded (--weights none), the 'pretrained' arms (random weights, their recipe)")
    rec = t.get("recipe")  # absent in runs before issue 20
    compute = "" if rec is None else (f" at equal compute ({rec['epochs']} epochs each, not convergence; random init "
                                      f"at a from-scratch lr {rec['scratch_lr']:g} in every layer, pretrained "
                                      f"backbones at {rec['pretrained_backbone_lr']:g})")
    finding = (f"{best} is the most accurate ({pct(t[best]['test_acc'])}); {trade}; {init} "
               f"{'beat' if gains[top] > 0 else 'do not beat'} random init by up to {pts(gains[top], 0)} points "
               f"(largest when training {top}){compute}")
    evidence = [f"{a}: test accuracy {pct(t[a]['test_acc'])}, {t[a]['trainable_params']:,} trainable "
                f"parameters, {t[a]['train_seconds']:.1f} s training" for a in arms] + [
        f"pretrained weights: {t['pretrained_weights']}; transfer dataset, sizes and epochs: the config's --transfer-* "
        "flags and the recipe's transfer_* fields"]
    return finding, evidence, ["transfer_curves.png", "transfer_compute.png"]


def _answer_depth(E: dict):
    d = E["depth"]
    archs = sorted((a for a in d if isinstance(d[a], dict)), key=lambda a: d[a]["backbone_params_millions"])
    small, big = archs[0], archs[-1]
    diff = d[big]["head_acc"] - d[small]["head_acc"]
    slower = d[small]["images_per_s"] / d[big]["images_per_s"]   # > 1: the deeper network is slower
    finding = (f"{big} {'beats' if diff > 0 else 'does not beat'} {small} (linear head: "
               f"{pct(d[big]['head_acc'])} vs {pct(d[small]['head_acc'])}, {pts(diff, 0)} points) "
               f"while extracting features {max(slower, 1 / slower):.1f}x {'slower' if slower >= 1 else 'faster'}")
    evidence = [f"{a}: head {pct(d[a]['head_acc'])}, logistic probe {pct(d[a]['probe_acc'])}, "
                f"{d[a]['images_per_s']:.0f} images/s, {d[a]['backbone_params_millions']:.1f} M parameters, "
                f"{d[a]['feature_dim']}-d features" for a in archs]
    return finding, evidence, ["depth_comparison.png"]


def _answer_embeddings(E: dict):
    emb = E["features"]["embedding"]
    methods = list(emb)
    mean = {m: float(np.mean(list(emb[m]["trustworthiness"].values()))) for m in methods}
    evidence = [f"{EMBED_NAMES[m]}: trustworthiness " + ", ".join(f"{s} {v:.3f}" for s, v in
                                                                   emb[m]["trustworthiness"].items())
                + "; 5-NN accuracy in 2-D " + ", ".join(f"{s} {pct(v)}" for s, v in emb[m]["knn_acc_2d"].items())
                for m in methods]
    if len(methods) < 2:
        m = methods[0]
        return (f"only {EMBED_NAMES[m]} ran (mean trustworthiness {mean[m]:.3f}); --embed both compares t-SNE with UMAP",
                evidence, [f"features_{m}.png"])
    better, other = max(methods, key=mean.get), min(methods, key=mean.get)
    finding = (f"{EMBED_NAMES[better]} keeps more of the feature space's neighbourhoods than {EMBED_NAMES[other]}: "
               f"mean trustworthiness {mean[better]:.3f} vs {mean[other]:.3f} over the five depths")
    evidence += [f"{EMBED_NAMES[m]} took {emb[m]['seconds'] or 0:.1f} s" for m in methods]
    return finding, evidence, ["features_tsne_vs_umap.png"]


def _answer_confused(E: dict):
    f = E["features"]
    pairs, last = f["confused_pairs"], list(f["probe_acc"])[-1]
    mean_sep = f["mean_pair_separation"][last]
    closer = [p for p, v in pairs.items() if v["separation"][last] < mean_sep]
    finding = (f"at {last}, {len(closer)} of the {len(pairs)} most-confused class pairs sit closer together than the "
               f"average pair (separation {mean_sep:.2f})")
    evidence = [f"{p.replace('_vs_', ' / ')}: {v['confusions']} test confusions, separation at {last} "
                f"{v['separation'][last]:.2f}" for p, v in pairs.items()]
    return finding, evidence, ["features_confused_pairs.png", "baseline_confusion.png"]


QUESTIONS = [
    Question("1.1", "Why is training ResNet-152 from scratch unnecessary; how well do frozen features transfer?",
             ("baseline",), _answer_frozen),
    Question("1.2", "How do skips change gradient flow (pretrained backbone, shortcuts cut)?", ("residual",),
             _answer_shortcuts),
    Question("1.2", "Convergence and performance without skips, trained from scratch; does depth degrade them?",
             ("scratch_shortcuts",), _answer_scratch),
    Question("1.3", "How does class separability evolve with depth?", ("features",), _answer_hierarchy),
    Question("1.4", "Best compute/accuracy trade-off; which layers transfer best?", ("transfer",), _answer_transfer),
    Question("1.5", "Optional: ResNet-152 vs a shallower ResNet", ("depth",), _answer_depth),
    Question("1.5", "Optional: t-SNE vs UMAP", ("features",), _answer_embeddings),
    Question("1.5", "Optional: are the classes the network confuses close in feature space?",
             ("features", "baseline"), _answer_confused),
]
