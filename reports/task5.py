"""What a Task 5 run shows (the conv VAE on FashionMNIST; the assignment's part 4): the
figures of each experiment, drawn from its metrics and arrays by plot_<experiment>, and
the rules that answer the assignment's questions from the metrics (QUESTIONS). Pure
functions of (metrics, arrays, config): no model, no data, so --replot redraws them.
How the numbers are computed: Task5.py. The figures:
  train_curves.png            total / reconstruction / KL per epoch, train and validation
  reconstruct_grid.png        test images above their reconstructions
  generate_samples.png        decoded samples, Gaussian prior vs variance-matched Laplace
  collapse_kl_per_dim.png     KL of each latent dimension: summed-SSE VAE vs the assignment's literal loss
  collapse_dynamics.png       per-dimension KL, active units and I(x;z) over epochs
  collapse_reconstructions.png  originals, both models' reconstructions, the mean image
  collapse_sweep_beta.png     active units, reconstruction and KL against beta, per cure
  mitigate_comparison.png     reconstructions and samples of every arm
  mitigate_metrics.png        reconstruction, KL, active units, I(x;z), sample proxies per arm
  mitigate_curves.png         active units and KL over epochs for every arm
  latent_tsne.png             t-SNE of 20-d test means coloured by class
  latent_2d_scatter.png       the latent-2 model's test means, coloured by class
  latent_2d_manifold.png      the latent-2 model's decoder over a grid of Gaussian quantiles
  latent_interpolations.png   decoded straight lines between test images of different classes
  likelihood_bound_vs_k.png   IWAE bound vs number of importance samples, with the ELBO
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import common
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from harness import Question, pct

TASK = "task5"
TERMS = ["total", "recon", "kl"]                                  # the negative ELBO and its two terms
SWEEP_METHODS = ["plain", "warmup", "aggressive", "lr_split", "free_bits"]  # the sigma-VAE has no beta: one run


def format_mi(estimate: float, se: float) -> str:
    """I(x;z) for a reader: never a negative information. An estimate within two
    standard errors of 0 is shown as '~0 (< 2se)'."""
    if estimate < 2 * se:
        return f"~0 (<{max(estimate, 0) + 2 * se:.2f})"
    return f"{estimate:.2f}+-{se:.2f}"


def shown_beta(loss: str, beta: float, pixels: int = 784) -> str:
    """The KL weight as the summed-SSE loss counts it: the literal loss, MSELoss (a mean over
    784 pixels) + beta * KL, weighs the KL 784 beta times a pixel's error ("beta 784")."""
    return f"beta {beta * pixels:.3g} (MSELoss + KL)" if loss == "literal" else f"beta {beta:.3g}"


def data_name(cfg) -> str:
    """What the run trained on, for titles: --smoke uses scikit-learn's digits for either dataset."""
    return f"scikit-learn digits (smoke stand-in for {cfg.dataset})" if cfg.smoke else cfg.dataset


def grid(images: np.ndarray, path: Path | None = None, title: str = "", **kw):
    """common.image_grid of an array [N, 1, 28, 28] in [0, 1]."""
    return common.image_grid(images, path, title, **kw)


# ----------------------------------------------------------------------------
# Figures, one plot_<experiment> per experiment
# ----------------------------------------------------------------------------


def plot_train(m: dict, d: dict, cfg, out: Path) -> None:
    ep = list(range(1, m["epochs"] + 1))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, term, title in zip(axes, TERMS, ["negative ELBO", f"reconstruction ({cfg.recon}, summed)",
                                             "KL(q(z|x) || N(0, I))"]):
        common.line_plot(ax, {"train": (ep, d[f"train_{term}"]), "validation": (ep, d[f"val_{term}"])}, title,
                         "epoch", "nats (or summed SE) per image")
    fig.suptitle(f"VAE on {data_name(cfg)}, {m['train_images']} images (latent {cfg.latent_dim}, batch "
                 f"{cfg.batch_size}, Adam {cfg.lr:g})")
    common.save_figure(fig, out / "train_curves.png")


def plot_reconstruct(m: dict, d: dict, cfg, out: Path) -> None:
    grid(d["images"], out / "reconstruct_grid.png",
         f"test images (top) and reconstructions from E[z|x] (bottom), {data_name(cfg)}",
         nrow=len(d["images"]) // 2, row_labels=["input", "recon."])


def plot_generate(m: dict, d: dict, cfg, out: Path) -> None:
    shown, real = len(d["gaussian"]), m["real_test_images"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, prior, z in zip(axes, ["gaussian", "laplace"], ["z ~ N(0, I)", "z ~ Laplace(0, 1/sqrt 2), var 1"]):
        q = m[prior]
        grid(d[prior], nrow=math.ceil(math.sqrt(shown)), ax=ax,  # 64: 8 x 8; 10: 4 x 3
             title=f"{z}\nCNN confidence {q['confidence']:.3f}, NN-RMSE {q['nearest_train_rmse']:.3f}")
    fig.suptitle(f"{shown} of {cfg.recipe['n_samples']} decoded prior samples ({data_name(cfg)}); real test images: "
                 f"confidence {real['confidence']:.3f}, NN-RMSE {real['nearest_train_rmse']:.3f}")
    common.save_figure(fig, out / "generate_samples.png")


def plot_collapse(m: dict, d: dict, cfg, out: Path) -> None:
    h, lit = m["healthy"], m["literal"]
    dims = np.arange(len(h["kl_per_dim"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.bar(dims - 0.2, np.maximum(h["kl_per_dim"], 1e-8), 0.4,
           label=f"summed SSE, beta 1 ({h['active_units']} active units)")
    ax.bar(dims + 0.2, np.maximum(lit["kl_per_dim"], 1e-8), 0.4,
           label=f"nn.MSELoss() + KL = beta 784 ({lit['active_units']} active)")
    ax.axhline(0.01, color="gray", lw=0.8, ls=":", label="0.01 nats")
    ax.set_yscale("log")
    ax.set(xlabel="latent dimension", ylabel="KL(q(z_d|x) || N(0,1)), nats (test mean)",
           title="per-dimension KL on the test set (bars floored at 1e-8 to show on a log axis)")
    ax.legend(fontsize=8)
    common.save_figure(fig, out / "collapse_kl_per_dim.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    kl = d["literal_val_kl_per_dim"].T                                       # [D, epochs]
    im = axes[0].imshow(kl, aspect="auto", cmap="viridis", origin="lower",
                        extent=(0.5, kl.shape[1] + 0.5, -0.5, kl.shape[0] - 0.5))
    axes[0].set(xlabel="epoch", ylabel="latent dimension", title="literal loss: validation KL per dimension")
    fig.colorbar(im, ax=axes[0], label="nats")
    ep = list(range(1, len(d["literal_active_units"]) + 1))
    arms = {"healthy": "summed SSE (beta 1)", "literal": "nn.MSELoss() + KL (beta 784)"}
    common.line_plot(axes[1], {label: (ep, d[f"{a}_active_units"]) for a, label in arms.items()},
                     "active units (Var_x E[z|x] > 0.01)", "epoch", f"units of {len(dims)}")
    for (a, label), color in zip(arms.items(), ["C0", "C1"]):  # I(x;z) clipped at 0, +-2 standard errors
        mi, se = d[f"{a}_mutual_info"], d[f"{a}_mutual_info_se"]
        axes[2].plot(ep, np.maximum(mi, 0), marker="o", ms=3, color=color, label=label)
        axes[2].fill_between(ep, np.maximum(mi - 2 * se, 0), mi + 2 * se, color=color, alpha=0.2)
    axes[2].set(title="I(x; z) under q, +-2 standard errors (He et al. 2019)", xlabel="epoch", ylabel="nats")
    axes[2].legend(fontsize=8), axes[2].grid(alpha=0.3)
    common.save_figure(fig, out / "collapse_dynamics.png")
    grid(d["images"], out / "collapse_reconstructions.png",
         "reconstructions (z ~ q(z|x)): the literal loss's stay near the mean image", nrow=12,
         row_labels=["input", "SSE, beta 1", "MSELoss+KL", "data mean"])


def plot_collapse_sweep(m: dict, d: dict, cfg, out: Path) -> None:
    b, sigma, r = m["betas"], m["sigma"], cfg.recipe
    labels = {"plain": "plain", "warmup": f"KL warm-up ({r['sweep_warmup_epochs']} ep.)",
              "aggressive": "aggressive encoder (He et al.)", "lr_split": f"enc/dec lr {cfg.enc_lr:g}/{cfg.dec_lr:g}",
              "free_bits": f"free bits {r['free_bits']:g} nats/dim"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), layout="constrained")
    for ax, key, title, yl in [(axes[0], "active_units", "active units", f"units of {cfg.latent_dim}"),
                               (axes[1], "recon", "validation reconstruction", "summed squared error per image"),
                               (axes[2], "mutual_info", "I(x; z) under q", "nats")]:
        for i, method in enumerate(SWEEP_METHODS):
            ys = [np.nan if v is None else v for v in m[method][key]]
            ax.plot(b, ys, marker="os^vD"[i], ms=5, label=labels[method], alpha=0.85)
        if sigma[key] is not None:
            ax.axhline(sigma[key], color="k", ls="--", lw=1, label="calibrated decoder (sigma-VAE, no beta)")
        if key == "active_units":
            ax.plot(b, m["linear_optimum_active_units"], color="gray", lw=2, alpha=0.5, ls="-.",
                    label="linear VAE optimum: #PCs with variance > beta/2")
        if key == "recon":
            ax.axhline(m["mean_image_sse"], color="gray", ls=":", label="predicting the mean image")
        ax.axvline(784, color="C3", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set(title=title, xlabel="beta (KL weight; decoder variance beta/2); 784 = nn.MSELoss() + KL", ylabel=yl)
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines() if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=5, fontsize=8)
    fig.suptitle(f"posterior collapse against beta: {m['train_images']} training images, {m['epochs']} epochs per "
                 f"run, measured on {m['val_images']} validation images ({data_name(cfg)})")
    common.save_figure(fig, out / "collapse_sweep_beta.png")


def plot_mitigate(m: dict, d: dict, cfg, out: Path) -> None:
    ok = [n for n, v in m.items() if isinstance(v, dict) and "label" in v]  # the arms that finished
    labels, real, s = [m[n]["label"] for n in ok], m["real_test_images"], m["settings"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), layout="constrained")
    for n, label in zip(ok, labels):
        ep = list(range(1, len(d[f"active_units_{n}"]) + 1))
        axes[0].plot(ep, d[f"active_units_{n}"], marker="o", ms=3, label=label)
        axes[1].plot(ep, d[f"val_kl_{n}"], marker="o", ms=3, label=label)
    for ax, t, yl in [(axes[0], "active units", f"units of {cfg.latent_dim}"),
                      (axes[1], "validation KL", "nats per image")]:
        ax.set_title(f"{t} per epoch")
        ax.set_xlabel("epoch"), ax.set_ylabel(yl), ax.grid(alpha=0.3)
    axes[1].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(fontsize=7)
    common.save_figure(fig, out / "mitigate_curves.png")
    if ok:
        grid(d["images"], out / "mitigate_comparison.png",
             "per arm: 8 test images | their reconstructions (z ~ q(z|x)) | 8 samples (z ~ N(0, I))",
             nrow=24, row_labels=labels, cell_size=0.6)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), layout="constrained")
    panels = [("recon", "test reconstruction (summed SE)"), ("kl", "test KL (nats)"), ("active_units", "active units"),
              ("mutual_info", "I(x; z), nats (+-2 s.e.)"), ("confidence", "samples: CNN confidence"),
              ("nearest_train_rmse", "samples: RMSE to nearest train image")]
    for ax, (key, title) in zip(axes.flat, panels):
        err = [2 * m[n]["mutual_info_se"] for n in ok] if key == "mutual_info" else None
        values = [m[n][key] for n in ok]
        ax.barh(range(len(ok)), values, xerr=err,
                color=["C3" if n.startswith("literal") or n == "sigma" else "C0" for n in ok])
        ax.scatter(values, range(len(ok)), s=10, color="black", zorder=3)  # a bar of length 0 still shows
        if key == "active_units":
            ax.set_xlim(0, cfg.latent_dim + 0.5)
        if key in real:
            ax.axvline(real[key], color="k", ls="--", lw=1, label="real test images")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(range(len(ok)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title), ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"cures, architecture unchanged (red: the literal loss's setting; blue: beta "
                 f"{s['mitigate_beta']:g}); {s['epochs']} epochs each, {d['n_test']} test images, "
                 f"{cfg.recipe['n_samples']} samples")
    common.save_figure(fig, out / "mitigate_metrics.png")


def plot_latent(m: dict, d: dict, cfg, out: Path) -> None:
    classes = d["classes"].tolist()
    for what, title, name in [("tsne", f"t-SNE of {cfg.latent_dim}-d posterior means, {m['n_vis']} test images",
                               "latent_tsne"), ("mu2", "latent-2 VAE: test posterior means", "latent_2d_scatter")]:
        fig, ax = plt.subplots(figsize=(7, 6))
        common.scatter_by_class(ax, d[what], d["y"], classes, title)
        if what == "mu2":
            ax.set_xticks(np.arange(-3, 4)), ax.set_yticks(np.arange(-3, 4))
            ax.set_xlabel("z1"), ax.set_ylabel("z2")
        common.save_figure(fig, out / f"{name}.png")
    grid(d["manifold"], out / "latent_2d_manifold.png",
         "latent-2 decoder over Gaussian quantiles 5%..95% (z1 right, z2 up)",
         nrow=math.isqrt(len(d["manifold"])), cell_size=0.5)
    grid(d["interpolations"], out / "latent_interpolations.png", "decoded linear interpolation between posterior means",
         nrow=len(d["interpolations"]) // len(d["pair_labels"]), row_labels=d["pair_labels"].tolist())


def plot_likelihood(m: dict, d: dict, cfg, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([int(k) for k in m["iwae_by_k"]], list(m["iwae_by_k"].values()), marker="o",
            label="IWAE bound log p_k(x)")
    ax.axhline(m["elbo"], color="C3", ls="--", label=f"ELBO ({m['elbo']:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("importance samples k")
    ax.set_ylabel("nats per image (higher is tighter)")
    ax.set_title(f"test log-likelihood bounds, {m['n_images']} images ({cfg.recon} decoder)")
    ax.legend(), ax.grid(alpha=0.3)
    common.save_figure(fig, out / "likelihood_bound_vs_k.png")


# ----------------------------------------------------------------------------
# Findings: the assignment's questions (shared/HANDOUT.md; the assignment calls
# the VAE part 4), answered from this run's metrics. Each rule computes its
# sentence from the numbers, so its direction and size change with the run;
# tests/test_findings.py feeds every rule constructed metrics that make it come
# out both ways. "Active units": latent dimensions whose posterior mean varies
# with x (Var_x E[z|x] > 0.01, Burda et al. 2016).
# ----------------------------------------------------------------------------


def _answer_losses(E: dict):
    t = E["train"]
    tr, va, te = t["final_train"], t["final_val"], t["test"]
    gap = va["total"] - tr["total"]
    finding = (f"after {t['epochs']} epochs the validation negative ELBO ({va['total']:.2f} per image) is "
               f"{abs(gap):.2f} ({abs(gap) / tr['total']:.1%}) {'above' if gap > 0 else 'below'} the training one "
               f"({tr['total']:.2f}); of it, reconstruction {va['recon']:.2f} and KL {va['kl']:.2f} nats")
    evidence = [f"final epoch, train ({t['train_images']:,} images): total {tr['total']:.2f}, reconstruction "
                f"{tr['recon']:.2f}, KL {tr['kl']:.2f}",
                f"final epoch, validation: total {va['total']:.2f}, reconstruction {va['recon']:.2f}, KL {va['kl']:.2f}",
                f"test: total {te['total']:.2f}, {te['active_units']} active units, I(x;z) "
                f"{format_mi(te['mutual_info'], te['mutual_info_se'])} nats"]
    return finding, evidence, ["train_curves.png"]


def _answer_reconstruct(E: dict):
    r = E["reconstruct"]
    finding = (f"test images are reconstructed with a root-mean-square error of {r['shown_rmse_per_pixel']:.3f} per "
               f"pixel (pixel values in [0, 1]) on the images shown; summed squared error {r['test_recon_per_image']:.2f}"
               f" per test image")
    evidence = [f"shown images: summed squared error {r['shown_sse_per_image']:.2f} per image, decoded from E[z|x]",
                f"whole test split: reconstruction term {r['test_recon_per_image']:.2f} per image"]
    return finding, evidence, ["reconstruct_grid.png"]


def _answer_priors(E: dict):
    g = E["generate"]
    ga, la, real = g["gaussian"], g["laplace"], g["real_test_images"]
    # directions at the precision quoted (3 decimals): equal there is a tie
    d = round(la["confidence"], 3) - round(ga["confidence"], 3)
    r = round(la["nearest_train_rmse"], 3) - round(ga["nearest_train_rmse"], 3)
    finding = (f"samples from the Laplace prior look {'less' if d < 0 else 'more' if d > 0 else 'as much'} like some "
               f"class {'as' if d == 0 else 'than'} those from the Gaussian prior the VAE was trained with (classifier "
               f"confidence {la['confidence']:.3f} vs {ga['confidence']:.3f}; real test images "
               f"{real['confidence']:.3f}) and sit "
               f"{'further from' if r > 0 else 'closer to' if r < 0 else 'as far from'} the training images "
               f"(nearest-image RMSE {la['nearest_train_rmse']:.3f} vs {ga['nearest_train_rmse']:.3f})")
    evidence = [f"{name}: classifier confidence {q['confidence']:.3f}, RMSE to the nearest training image "
                f"{q['nearest_train_rmse']:.3f}, {q['coverage']} of 10 classes covered"
                for name, q in [("Gaussian prior", ga), ("Laplace prior (same variance)", la),
                                ("real test images", real)]]
    evidence.append(f"scoring classifier test accuracy {pct(g['classifier_test_acc'])}")
    return finding, evidence, ["generate_samples.png"]


def _answer_collapse(E: dict):
    c = E["collapse"]
    lit, ok = c["literal"], c["healthy"]
    dims = len(lit["kl_per_dim"])
    ignores = lit["active_units"] == 0 or lit["mutual_info"] < 0.1
    finding = (f"with the assignment's loss (nn.MSELoss() + KL, i.e. beta 784) q(z|x) "
               f"{'ignores' if ignores else 'does not ignore'} x: {lit['active_units']} of {dims} active units, "
               f"I(x;z) {lit['mutual_info']:.3f} nats, KL {lit['kl']:.3f} nats, and its reconstructions sit "
               f"{c['recon_rmse_to_mean_image']['literal']:.3f} RMSE from the mean image (inputs: "
               f"{c['recon_rmse_to_mean_image']['inputs']:.3f}); the summed-SSE VAE keeps {ok['active_units']} units")
    evidence = [f"literal loss: test SSE {lit['recon']:.1f} per image vs {c['mean_image_sse']:.1f} for predicting the "
                f"mean image; KL {lit['kl']:.3f}; I(x;z) {format_mi(lit['mutual_info'], lit['mutual_info_se'])}",
                f"summed SSE (beta 1): test SSE {ok['recon']:.1f}, KL {ok['kl']:.2f}, I(x;z) "
                f"{format_mi(ok['mutual_info'], ok['mutual_info_se'])}",
                f"why: the literal loss is a Gaussian decoder of variance {c['literal_beta_equivalent'] / 2:g} per pixel;"
                f" the training data's largest variance along any direction is {c['top_pc_variance']:.1f}, and "
                f"{c['pcs_above_decoder_variance']['beta_784']} directions exceed it "
                f"({c['pcs_above_decoder_variance']['beta_1']} exceed 0.5, the beta-1 decoder's variance)"]
    return finding, evidence, ["collapse_kl_per_dim.png", "collapse_dynamics.png", "collapse_reconstructions.png"]


def _answer_sweep(E: dict):
    s = E["collapse_sweep"]
    betas, plain, linear = s["betas"], s["plain"]["active_units"], s["linear_optimum_active_units"]
    lo, hi = int(np.argmin(betas)), int(np.argmax(betas))
    au = lambda v: "diverged" if v is None else str(v)  # noqa: E731
    finding = (f"plain training keeps {au(plain[lo])} active units at beta {betas[lo]:g} and {au(plain[hi])} at beta "
               f"{betas[hi]:g}; the linear-VAE optimum (data directions with variance above beta/2) predicts "
               f"{linear[lo]} and {linear[hi]}")
    methods = [m for m in s if isinstance(s[m], dict) and "active_units" in s[m] and m != "sigma"]
    evidence = [f"{m}: active units per beta {', '.join(f'{b:g}: {au(v)}' for b, v in zip(betas, s[m]['active_units']))}"
                for m in methods]
    evidence.append(f"calibrated decoder: {au(s['sigma']['active_units'])} active units; {s['train_images']:,} training "
                    f"/ {s['val_images']:,} validation images, {s['epochs']} epochs per run")
    return finding, evidence, ["collapse_sweep_beta.png"]


def _answer_mitigate(E: dict):
    m = E["mitigate"]
    ok = lambda n: n in m and "error" not in m[n]  # noqa: E731
    parts, evidence = [], []
    for base, cures in [("literal", ["literal_free_bits", "sigma"]), ("plain", ["warmup", "aggressive", "lr_split"])]:
        done = [n for n in cures if ok(n)]
        if not ok(base) or not done:
            parts.append(f"the {base} arm or its cures did not finish")
            continue
        best = max(done, key=lambda n: (m[n]["active_units"], m[n]["mutual_info"]))
        b, c = m[base], m[best]
        gain = c["active_units"] - b["active_units"]
        mi = [format_mi(x["mutual_info"], x["mutual_info_se"]) for x in (c, b)]  # as the evidence quotes it
        parts.append(f"against '{b['label']}', '{c['label']}' {'adds' if gain > 0 else 'does not add'} active units "
                     f"({c['active_units']} vs {b['active_units']}; I(x;z) {mi[0]} vs {mi[1]} nats; "
                     f"reconstruction {c['recon']:.1f} vs {b['recon']:.1f})")
    for n in ["literal", "literal_free_bits", "sigma", "plain", "warmup", "aggressive", "lr_split"]:
        if ok(n):
            a = m[n]
            evidence.append(f"{a['label']}: reconstruction {a['recon']:.1f}, KL {a['kl']:.2f}, {a['active_units']} "
                            f"active units, I(x;z) {format_mi(a['mutual_info'], a['mutual_info_se'])}, samples' "
                            f"classifier confidence {a['confidence']:.3f}, nearest-image RMSE "
                            f"{a['nearest_train_rmse']:.3f}")
        elif n in m:
            evidence.append(f"{n}: {m[n]['error']}")
    return "; ".join(parts), evidence, ["mitigate_comparison.png", "mitigate_metrics.png", "mitigate_curves.png"]


QUESTIONS = [
    Question("4.1", "Training and validation losses", ("train",), _answer_losses),
    Question("4.2", "Reconstructions of test images", ("reconstruct",), _answer_reconstruct),
    Question("4.2", "Samples from N(0, I) vs another prior (Laplace): the differences", ("generate",), _answer_priors),
    Question("4.3", "Posterior collapse: does q(z|x) ignore x, and why?", ("collapse",), _answer_collapse),
    Question("4.3", "Collapse against the KL weight beta", ("collapse_sweep",), _answer_sweep),
    Question("4.4", "Does a cure that keeps the architecture restore the latent code?", ("mitigate",),
             _answer_mitigate),
]
