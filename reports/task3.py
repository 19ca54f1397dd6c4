"""What a Task 3 run shows (MLP GAN on MNIST; the assignment's part 3): the figures of each experiment,
drawn by plot_<experiment> from its metrics and arrays (Task3.run_arrays: per run its logs, fixed-noise
frames, samples, nearest training images and quick evaluations, named <run>_<what>), and the rules that
answer the assignment's questions from the metrics (QUESTIONS). Pure functions of (metrics, arrays,
config): no model, no data, so --replot redraws them. How the numbers are computed: Task3.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import common
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from harness import Question, pct

TASK = "task3"

# One row per training iteration (Task3.gan_iteration). d_real/d_fake: mean D output on the iteration's real
# and fake batch (last D step); d_acc_*: the fraction D classifies right (D(x) > 0.5 on reals, D(G(z)) < 0.5
# on fakes); g_grad_norm: L2 norm of the gradient reaching G's parameters; g_step_norm: L2 norm of the update
# Adam made from it (Adam divides by the gradient's running RMS, so a shrinking gradient need not mean a
# small step; logged in the vanishing arms, NaN elsewhere).
LOG_KEYS = ["d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake", "g_grad_norm", "g_step_norm"]
EVAL_LABELS = {"coverage": "digits covered (of 10)", "kl_uniform": "KL(class hist || uniform) [nats]",
               "fd_mnist_classifier": "FD-MNIST-classifier", "diversity": "mean pairwise L2 distance",
               "confidence": "classifier confidence", "nearest_train_rmse": "RMS distance to nearest training image",
               "d_gap": "D(train) - D(held-out)", "overfit_rv": "r_v on D logits (0: none, 1: full)"}
VANISH_PANELS = [("d_loss", "D loss", False), ("g_loss", "G loss", False),
                 ("g_grad_norm", "|grad G|: gradient reaching G (log)", True), ("d_real", "mean D(x), real", False),
                 ("d_fake", "mean D(G(z)), fake", False), ("g_step_norm", "|Adam step of G| (log)", True),
                 ("d_acc_real", "D accuracy on real batches", False),
                 ("d_acc_fake", "D accuracy on fake batches", False)]

# ---- Figure helpers: a run's curves, frames and samples (arrays named <run>_<what>) ----

def curve(a: dict, run: str, key: str, window=None):
    """(iterations, moving average over `window` iterations, default 1/200 of the run) of a LOG_KEYS column."""
    y = a[f"{run}_logs"][:, LOG_KEYS.index(key)].astype(np.float64)
    n = max(1, min(window or max(1, len(y) // 200), len(y)))
    ok = np.isfinite(y)  # NaN gradient norms: steps fp16 loss scaling skipped, left out of the average
    with np.errstate(invalid="ignore"):  # a window of skipped steps only: NaN, no point drawn
        ys = np.convolve(np.where(ok, y, 0), np.ones(n), mode="valid") / np.convolve(ok, np.ones(n), mode="valid")
    return np.arange(len(ys)) + (n - 1), ys


def plot_dynamics(a: dict, run: str, path: Path, title: str):
    """Four panels over iterations: D and G losses; mean D(x) and D(G(z)); D's accuracy
    on real and on fake batches; the gradient norm reaching G."""
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2), layout="constrained")
    common.line_plot(axes[0], {"D loss": curve(a, run, "d_loss"), "G loss": curve(a, run, "g_loss")},
                     "losses (moving average)", "iteration", "BCE loss")
    common.line_plot(axes[1], {"D(x) real": curve(a, run, "d_real"), "D(G(z)) fake": curve(a, run, "d_fake")},
                     "discriminator outputs", "iteration", "mean D output")
    common.line_plot(axes[2], {"on real batches": curve(a, run, "d_acc_real"),
                               "on fake batches": curve(a, run, "d_acc_fake")},
                     "D accuracy (threshold 0.5)", "iteration", "fraction classified correctly")
    for ax in axes[1:3]:
        ax.set_ylim(-0.02, 1.02)
    x, y = curve(a, run, "g_grad_norm")
    common.line_plot(axes[3], {"|grad G|": (x, np.maximum(y, 1e-30))}, "gradient norm reaching G", "iteration",
                     "L2 norm of G's parameter gradient", logy=True)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def plot_progression(a: dict, run: str, path: Path, title: str, unit: str = "epoch"):
    """Fixed-noise renderings: one row per evaluation, 10 fixed z per row."""
    frames = a[f"{run}_frames"]                                        # [E, 10, 1, 28, 28] uint8
    labels = ([f"epoch {e:g}" for e in np.round(a[f"{run}_epoch"], 1)] if unit == "epoch"
              else [f"iteration {i:.0f}" for i in a[f"{run}_iteration"]])
    fig, ax = plt.subplots(figsize=(7, 0.75 * len(frames) + 0.9))
    common.image_grid(frames.reshape(-1, *frames.shape[2:]), title=title, nrow=frames.shape[1],
                      row_labels=labels[:len(frames)], ax=ax)
    ax.set_xlabel("10 fixed noise vectors (the same in every row and every run)")
    return common.save_figure(fig, path)


def plot_eval_curves(a: dict, runs: list[str], path: Path, title: str, real: bool = True, x: str = "epoch",
                     keys=("coverage", "kl_uniform", "fd_mnist_classifier", "diversity")):
    """Quick evaluations over training, one curve per run (x: "epoch" or "iteration");
    dashed line = real images measured the same way."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False, layout="constrained")
    for ax, k in zip(axes[0], keys):
        common.line_plot(ax, {r: (a[f"{r}_{x}"], a[f"{r}_{k}"]) for r in runs}, EVAL_LABELS.get(k, k), x,
                         EVAL_LABELS.get(k, k))
        if real and f"real_{k}" in a:
            ax.axhline(float(a[f"real_{k}"]), color="k", ls="--", lw=1, label="real images")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def plot_arm_losses(a: dict, runs: list[str], path: Path, title: str):
    """D and G loss curves for every arm, one small panel per arm (same axes), so no
    arm's curves hide another's; D's accuracy on real/fake batches on the right axis.
    As few empty cells as the rows allow (removed), one legend for all panels."""
    rows = math.ceil(len(runs) / 4)
    cols = math.ceil(len(runs) / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows + 0.5), squeeze=False, layout="constrained")
    for ax, run in zip(axes.flat, runs):
        for key, colour, label in [("d_loss", "C0", "D loss"), ("g_loss", "C1", "G loss")]:
            ax.plot(*curve(a, run, key), color=colour, label=label)
        ax.set(title=run, xlabel="iteration", ylabel="loss (moving average)")
        ax.grid(alpha=0.3)
        acc = ax.twinx()
        acc.plot(*curve(a, run, "d_acc_real"), color="C2", lw=0.8, ls=":", label="D acc real")
        acc.plot(*curve(a, run, "d_acc_fake"), color="C3", lw=0.8, ls=":", label="D acc fake")
        acc.set_ylim(-0.02, 1.02)
        acc.set_ylabel("D accuracy", fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.remove()
    (h1, l1), (h2, l2) = axes[0, 0].get_legend_handles_labels(), acc.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, fontsize=8, loc="outside lower center", ncol=4)
    fig.suptitle(title)
    return common.save_figure(fig, path)


# ---- Figures, one plot_<experiment> per experiment ----

def plot_baseline(m: dict, a: dict, cfg, out: Path) -> None:
    plot_dynamics(a, "baseline", out / "baseline_dynamics.png", "Baseline GAN: training dynamics (non-saturating loss)")
    plot_progression(a, "baseline", out / "baseline_progression.png", "Baseline: fixed noise over training")
    common.image_grid(a["baseline_samples"], out / "baseline_samples.png",
                      f"Baseline: 25 samples after {m['final']['iterations']} iterations", nrow=5)
    plot_eval_curves(a, ["baseline"], out / "baseline_eval.png", f"Baseline: generator metrics over training "
                     f"({cfg.recipe['quick_samples']} samples per point; dashed: real images)")


def plot_reference(m: dict, a: dict, cfg, out: Path) -> None:
    plot_dynamics(a, "reference", out / "reference_dynamics.png",
                  "Reference (PyTorch-GAN gan.py, BatchNorm G): training dynamics")
    plot_progression(a, "reference", out / "reference_progression.png", "Reference: fixed noise over training")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.8))
    for ax, run, what in zip(axes, ("baseline", "reference"), ("assignment MLP", "PyTorch-GAN gan.py")):
        common.image_grid(a[f"{run}_samples"], title=f"{run} ({what})\n{m[run]['iterations']} iterations",
                          nrow=5, ax=ax)
    b = m["budget"]
    fig.suptitle(f"Same noise; budgets: baseline {b['baseline']['epochs']:g} epochs, reference "
                 f"{b['reference']['epochs']:g} epochs (gan.py's own: {b['gan_py_epochs']})")
    common.save_figure(fig, out / "reference_vs_baseline.png")
    plot_eval_curves(a, ["baseline", "reference"], out / "reference_eval.png",
                     "Baseline vs reference over training (dashed: real images)")


def plot_vanishing(m: dict, a: dict, cfg, out: Path) -> None:
    """vanishing_curves.png: eight per-iteration panels (a cure and its equal-lr retrain
    share a colour; the retrain is dashed) and the final samples of every arm."""
    runs = list(m["arms"])
    fig, axes = plt.subplots(3, 3, figsize=(17, 12.5), layout="constrained")
    colour = {"saturating": "C0", "non_saturating": "C1", "label_smoothing": "C2", "both": "C3"}
    for ax, (key, label, logy) in zip(axes.flat, VANISH_PANELS):
        for run in runs:
            x, y = curve(a, run, key)
            ax.plot(x, np.maximum(y, 1e-30) if logy else y, color=colour[run.removesuffix("_equal_lr")],
                    ls="--" if run.endswith("_equal_lr") else "-", lw=1.2, label=run)
        ax.set(title=label, xlabel="iteration", ylabel=label.split(":")[0].replace(" (log)", ""))
        if logy:
            ax.set_yscale("log")
        elif key.startswith(("d_real", "d_fake", "d_acc")):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if cfg.vanish_warmup_iters:
            ax.axvline(cfg.vanish_warmup_iters, color="grey", ls=":", lw=1)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(runs), fontsize=9)
    common.image_grid(np.concatenate([a[f"{r}_samples"][:8] for r in runs]), title="final samples", nrow=8,
                      row_labels=runs, ax=axes.flat[8])
    fig.suptitle(f"Vanishing gradients: D lr x{cfg.vanish_d_lr_mult:g} and {cfg.vanish_d_steps} D steps per G step "
                 f"for the first {cfg.vanish_warmup_iters} iterations (dotted line); solid: that D, "
                 f"dashed: cures retrained at equal learning rates")
    common.save_figure(fig, out / "vanishing_curves.png")


def plot_mode_collapse(m: dict, a: dict, cfg, out: Path) -> None:
    runs = list(m["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.6, 1]}, layout="constrained")
    class_shares(axes, {n: arm["final_histogram"] for n, arm in m["arms"].items()}, a, cfg.recipe)
    fig.colorbar(axes[1].images[0], ax=axes[1], label="share of samples")
    fig.suptitle(f"Mode collapse: G lr x{cfg.collapse_g_lr_mult:g}, {cfg.collapse_g_steps} G steps per D step")
    common.save_figure(fig, out / "mode_collapse_histograms.png")
    plot_eval_curves(a, runs, out / "mode_collapse_coverage.png", f"Mode collapse and its cures over training "
                     f"({cfg.recipe['quick_samples']} samples per point)", x="iteration")
    plot_progression(a, "collapse", out / "mode_collapse_progression.png", "Collapse arm: fixed noise over training",
                     unit="iteration")
    plot_arm_losses(a, runs, out / "mode_collapse_losses.png", "Mode collapse: D and G losses of every arm")
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(runs) + 1))
    common.image_grid(np.concatenate([a[f"{r}_samples"][:10] for r in runs]), nrow=10,
                      title="final samples (same noise per column)", row_labels=runs, ax=ax)
    common.save_figure(fig, out / "mode_collapse_samples.png")


def class_shares(axes, final_hists: dict, a: dict, recipe: dict) -> None:
    """Left: every arm's final class shares as one row of a matrix (digits in columns, so no
    bar sits between two digits), covered digits counted; right: the collapse arm's over training."""
    names, floor = list(final_hists), 0.1 * recipe["coverage_share"]       # the 'covered' threshold share
    shares = np.array([np.asarray(h, float) / max(np.sum(h), 1) for h in final_hists.values()])
    axes[0].imshow(shares, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.2, shares.max()))
    for (i, j), v in np.ndenumerate(shares):
        if v >= 0.005:
            axes[0].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "k")
    axes[0].set(xticks=range(10), xlabel="digit predicted by the scoring classifier", yticks=range(len(names)),
                yticklabels=[f"{n} ({int((r >= floor).sum())} covered)" for n, r in zip(names, shares)],
                title=f"final class shares per arm ({recipe['eval_samples']} samples; uniform: 0.10 each)")
    hist = a["collapse_hist"]
    share = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    axes[1].imshow(share.T, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.2, share.max()))
    its = [f"{i:.0f}" for i in a["collapse_iteration"]]
    step = max(1, len(its) // 8)
    axes[1].set(yticks=range(10), ylabel="digit", xlabel="iteration", title="collapse arm: class shares over training",
                xticks=range(0, len(its), step), xticklabels=its[::step])


def plot_d_overfit(m: dict, a: dict, cfg, out: Path) -> None:
    runs, n = list(m["arms"]), m["n_train"]
    which = f"of digit {cfg.overfit_class}" if cfg.overfit_class >= 0 else "(the first of the train split)"
    fig, axes = plt.subplots(1, len(runs) + 2, figsize=(4.2 * (len(runs) + 2), 3.9), layout="constrained")
    for ax, run in zip(axes, runs):
        ep = a[f"{run}_epoch"]
        common.line_plot(ax, {"training images": (ep, a[f"{run}_d_logit_train"]),
                              "held-out images": (ep, a[f"{run}_d_logit_heldout"]),
                              "G's samples": (ep, a[f"{run}_d_logit_fake"])}, run, "epoch", "mean D logit (eval mode)")
    for ax, key, title in [(axes[-2], "d_gap", "D(train) - D(held-out)"),
                           (axes[-1], "overfit_rv", "r_v on logits (Karras 2020)")]:
        common.line_plot(ax, {r: (a[f"{r}_epoch"], a[f"{r}_{key}"]) for r in runs}, title, "epoch",
                         "gap" if key == "d_gap" else "r_v")
    fig.suptitle(f"Discriminator overfitting on {n} training images {which}; held out: test images")
    common.save_figure(fig, out / "d_overfit_gap.png")
    plot_eval_curves(a, runs, out / "d_overfit_memorisation.png",
                     "Memorisation and quality on the small set (dashed: held-out real images)",
                     keys=("nearest_train_rmse", "fd_mnist_classifier", "diversity"))
    plot_arm_losses(a, runs, out / "d_overfit_losses.png", f"D overfitting: D and G losses of every arm ({n} training "
                    "images)")
    fig, ax = plt.subplots(figsize=(8, 1.6 * len(runs) + 1))
    rows = np.concatenate([x for r in runs for x in (a[f"{r}_samples"][:8], a[f"{r}_nearest"])])
    common.image_grid(rows, title="samples and their nearest training images (L2)", nrow=8,
                      row_labels=[label for r in runs for label in (f"{r}: sample", "nearest train")], ax=ax)
    common.save_figure(fig, out / "d_overfit_samples.png")


# ---- Findings: the assignment's questions (shared/HANDOUT.md, part 3) answered from this run's metrics ----
# Each rule computes its sentence from the numbers, so its direction and size change with the run;
# tests/test_findings.py feeds every rule metrics that make it come out both ways. Quality is read from the
# scoring classifier: coverage (digits holding a fair share of samples, of 10), classifier Frechet distance
# to held-out MNIST (lower is better), diversity.

def _first_above(curves: dict, key: str, level: float):
    """The first logged iteration whose windowed mean of `key` reaches `level`, or None."""
    return next((it for it, v in zip(curves["iteration"], curves[key]) if v is not None and v >= level), None)


def _quality(m: dict) -> str:
    return (f"{m['coverage']} of 10 digits covered, classifier FD {m['fd_mnist_classifier']:.2f}, "
            f"diversity {m['diversity']:.3f}, confidence {m['confidence']:.3f}")


def _ok(m: dict) -> bool:
    """A run with a final evaluation (a diverged arm has None)."""
    return m.get("fd_mnist_classifier") is not None and m.get("coverage") is not None


def _answer_dynamics(E: dict):
    b = E["baseline"]
    f, real, c, acc_fake = b["final"], b["real_images"], b["loss_curves"], b["final"]["last_epoch_d_acc_fake"]
    state = ("one-sided: D rejects almost every fake" if acc_fake >= 0.95 else
             "D ahead without saturating: it rejects most fakes, G still gets a gradient" if acc_fake >= 0.75 else
             "one-sided: D accepts almost every fake" if acc_fake <= 0.05 else
             "G ahead: D accepts most fakes" if acc_fake <= 0.25 else "balanced: neither network wins")
    recognisable = "recognisable" if f["confidence"] >= 0.9 * real["confidence"] else "not clearly recognisable"
    gap = real["coverage"] - f["coverage"]
    varied = "varied" if gap <= 1 else "partly varied" if gap <= 4 else "not varied"
    finding = (f"the dynamics are {state} (D's accuracy on fakes {pct(acc_fake)} and D(G(z)) "
               f"{f['last_epoch_d_fake']:.2f} over the last epoch; D loss {c['d_loss'][0]:.2f} -> "
               f"{c['d_loss'][-1]:.2f}, G loss {c['g_loss'][0]:.2f} -> {c['g_loss'][-1]:.2f}); the samples are "
               f"{recognisable} and {varied}: classifier confidence {f['confidence']:.3f} (real images "
               f"{real['confidence']:.3f}), {f['coverage']} of 10 digits covered (real {real['coverage']})")
    evidence = [f"{f['iterations']} iterations ({f['epochs']:.1f} epochs); last epoch: D loss "
                f"{f['last_epoch_d_loss']:.3f}, G loss {f['last_epoch_g_loss']:.3f}, D(x) "
                f"{f['last_epoch_d_real']:.3f}, D(G(z)) {f['last_epoch_d_fake']:.3f}",
                f"final samples (the recipe's eval_samples): {_quality(f)}",
                f"real training images scored the same way: {_quality(real)}",
                f"scoring classifier test accuracy {pct(b['classifier_test_acc'])}"]
    return finding, evidence, ["baseline_dynamics.png", "baseline_progression.png", "baseline_samples.png",
                               "baseline_eval.png"]


def _answer_progress(E: dict):
    c, f = E["baseline"]["loss_curves"], E["baseline"]["final"]
    finding = (f"a progress line every {c['iteration'][0]} batches ({len(c['iteration'])} lines over the baseline's "
               f"{f['iterations']} iterations): epoch, iteration, D and G loss, D(x), D(G(z)) and D's accuracy")
    evidence = [f"last line: D loss {c['d_loss'][-1]:.3f}, G loss {c['g_loss'][-1]:.3f}, D(x) {c['d_real'][-1]:.3f},"
                f" D(G(z)) {c['d_fake'][-1]:.3f}; every line's means: metrics.json, baseline/loss_curves"]
    return finding, evidence, ["baseline_dynamics.png"]


def _answer_reference(E: dict):
    r = E["reference"]
    b, ref = r["baseline"], r["reference"]
    if not (_ok(b) and _ok(ref)):
        return ("a run diverged: compare the curves", [f"baseline diverged: {b['diverged']}",
                                                       f"reference diverged: {ref['diverged']}"],
                ["reference_eval.png"])
    d = ref["fd_mnist_classifier"] - b["fd_mnist_classifier"]
    bud = r["budget"]
    finding = (f"the reference networks (PyTorch-GAN gan.py) reach a {'lower (better)' if d < 0 else 'higher (worse)'} "
               f"classifier FD "
               f"than the assignment's MLP ({ref['fd_mnist_classifier']:.2f} vs {b['fd_mnist_classifier']:.2f}) "
               f"after {bud['reference']['epochs']:g} vs {bud['baseline']['epochs']:g} epochs, covering "
               f"{ref['coverage']} vs {b['coverage']} digits; their G has {r['parameters']['reference_G']:,} "
               f"parameters vs {r['parameters']['baseline_G']:,}")
    evidence = [f"baseline: {_quality(b)}", f"reference: {_quality(ref)}",
                f"parameters: G {r['parameters']['baseline_G']:,} vs {r['parameters']['reference_G']:,}, "
                f"D {r['parameters']['baseline_D']:,} vs {r['parameters']['reference_D']:,}",
                f"budget: {bud['baseline']['images_seen']:,} vs {bud['reference']['images_seen']:,} images seen "
                f"(gan.py's own run: {bud['gan_py_epochs']} epochs)"]
    return finding, evidence, ["reference_vs_baseline.png", "reference_eval.png", "reference_dynamics.png"]


def _answer_vanishing(E: dict):
    arms = E["vanishing"]["arms"]
    sat = arms["saturating"]
    at = _first_above(sat["loss_curves"], "d_acc_fake", 0.99)
    saturates = (f"D's accuracy on fakes passed 99% at iteration {at}" if at is not None else
                 f"D's accuracy on fakes never reached 99% (last 10%: {pct(sat['d_acc_fake_end'])})")
    drop = sat["grad_log10_drop"]
    cures = [n for n in arms if n != "saturating" and _ok(arms[n])]
    best = min(cures, key=lambda n: arms[n]["fd_mnist_classifier"]) if cures else None
    cure = "" if best is None else (
        f"; the best cure, {best}, ends at classifier FD {arms[best]['fd_mnist_classifier']:.2f} "
        f"({arms[best]['coverage']} of 10 digits) against "
        + (f"{sat['fd_mnist_classifier']:.2f} ({sat['coverage']} of 10) without it" if _ok(sat) else
           "a diverged saturating run"))
    finding = (f"{saturates}; the gradient reaching G {'fell' if drop > 0 else 'rose'} by a factor of "
               f"{10 ** abs(drop):.3g} ({sat['grad_start']:.3g} -> {sat['grad_end']:.3g}) and G's loss varied by "
               f"{sat['g_loss_std_end']:.3g} (std) over the last 10% of iterations{cure}")
    evidence = [f"{n}: |grad G| {a['grad_start']:.3g} -> {a['grad_end']:.3g}, D accuracy on fakes at the end "
                f"{pct(a['d_acc_fake_end'])}, G loss std at the end {a['g_loss_std_end']:.3g}; "
                + (_quality(a) if _ok(a) else f"diverged ({a['diverged']})") for n, a in arms.items()]
    return finding, evidence, ["vanishing_curves.png"]


def _answer_collapse(E: dict):
    arms = E["mode_collapse"]["arms"]
    base = arms["collapse"]
    cures = [n for n in arms if n != "collapse" and _ok(arms[n])]
    # most digits covered, then closest to uniform class shares
    best = max(cures, key=lambda n: (arms[n]["coverage"], -arms[n]["kl_uniform"]))
    b = arms[best]
    if _ok(base):
        better = (b["coverage"], -b["kl_uniform"]) > (base["coverage"], -base["kl_uniform"])
        was = f"the provoked setting covers {base['coverage']} of 10 digits (KL from uniform {base['kl_uniform']:.3f})"
    else:
        better, was = True, "the provoked setting diverged"
    finding = (f"{was}; {best} restores diversity best{'' if better else ' of the cures, yet no better than that'}: "
               f"{b['coverage']} digits, KL {b['kl_uniform']:.3f}, diversity {b['diversity']:.3f}")
    evidence = [f"{n}: " + (f"{_quality(a)}, KL from uniform {a['kl_uniform']:.3f}, D loss (last epoch) "
                            f"{a['last_epoch_d_loss']:.3f}" if _ok(a) else f"diverged ({a['diverged']})")
                for n, a in arms.items()]
    return finding, evidence, ["mode_collapse_histograms.png", "mode_collapse_coverage.png",
                               "mode_collapse_samples.png", "mode_collapse_losses.png",
                               "mode_collapse_progression.png"]


def _answer_overfit(E: dict):
    o = E["d_overfit"]
    arms = o["arms"]
    base = arms["no_cure"]
    cures = [n for n in arms if n != "no_cure" and _ok(arms[n])]
    best = min(cures, key=lambda n: arms[n]["fd_mnist_classifier"])
    helped = [n for n in cures if _ok(base) and arms[n]["fd_mnist_classifier"] < base["fd_mnist_classifier"]]
    gap, rv = base["max_d_gap"], base.get("max_overfit_rv")
    finding = ((f"without a cure D rates its {o['n_train']:,} training images up to {gap:.3f} higher than held-out "
                f"ones (mean D output" + (f"; on logits held-out reals fall up to r_v = {rv:.2f} of the way to G's "
                                         f"samples, Karras et al. 2020" if rv is not None else "")
                + f") and G ends at classifier FD {base['fd_mnist_classifier']:.2f}; "
                if _ok(base) and gap is not None else "the uncured run diverged; ")
               + f"{len(helped)} of {len(cures)} cures lower G's FD, best {best} "
               f"({arms[best]['fd_mnist_classifier']:.2f}, D gap {arms[best]['max_d_gap'] or 0:.3f}, "
               f"memorisation ratio {arms[best]['memorisation_ratio']:.2f})")
    evidence = [f"{n}: " + (f"max D gap {a['max_d_gap'] or 0:.3f}, final gap {a['d_gap']:.3f}, "
                            + (f"max r_v {a['max_overfit_rv']:.2f}, " if a.get("max_overfit_rv") is not None else "")
                            + "memorisation ratio "
                            f"{a['memorisation_ratio']:.2f} (1 = as far from the training set as held-out images), "
                            + _quality(a) if _ok(a) else f"diverged ({a['diverged']})") for n, a in arms.items()]
    evidence.append(f"{o['n_train']:,} training images; held-out real images scored the same way: "
                    f"{_quality(o['real_images'])}")
    return finding, evidence, ["d_overfit_gap.png", "d_overfit_memorisation.png", "d_overfit_samples.png",
                               "d_overfit_losses.png"]


QUESTIONS = [
    Question("3.1", "Progress every n batches: epoch, D and G loss, D(x), D(G(z))", ("baseline",), _answer_progress),
    Question("3.2", "Expected dynamics or instability? Recognisable and varied digits?", ("baseline",),
             _answer_dynamics),
    Question("3.3", "How does the reference MLP GAN (PyTorch-GAN gan.py) compare?", ("reference",), _answer_reference),
    Question("3.4", "Vanishing gradients: does D's accuracy saturate and G's loss stall? Do the cures help?",
             ("vanishing",), _answer_vanishing),
    Question("3.5", "Mode collapse: which intervention restored diversity best?", ("mode_collapse",), _answer_collapse),
    Question("3.6", "D overfitting: does regularising D help G?", ("d_overfit",), _answer_overfit),
]
