"""Task 5: the assignment's convolutional VAE on FashionMNIST (or MNIST): the two
terms of the ELBO, reconstructions, samples, the latent space, a tighter likelihood
bound, and posterior collapse provoked, diagnosed and cured.

Run:   python Task5.py                          (FashionMNIST, all experiments)
       python Task5.py --dataset mnist --experiments train,generate
       python Task5.py --smoke --out /tmp/t5    (offline, seconds)
Writes into --out (default outputs/task5/):
  train_curves.png            total / reconstruction / KL per epoch, train and validation
  reconstruct_grid.png        test images above their reconstructions
  generate_samples.png        decoded samples, Gaussian prior vs variance-matched Laplace
  collapse_kl_per_dim.png     KL of each latent dimension, healthy vs collapsed run
  collapse_dynamics.png       per-dimension KL, active units and I(x;z) over epochs
  collapse_reconstructions.png  originals, healthy and collapsed reconstructions, mean image
  mitigate_comparison.png     reconstructions and samples of every cure beside the collapsed run
  mitigate_curves.png         active units and KL over epochs for every arm
  latent_tsne.png             t-SNE of 20-d test means coloured by class
  latent_2d_scatter.png       the latent-2 model's test means, coloured by class
  latent_2d_manifold.png      the latent-2 model's decoder over a grid of Gaussian quantiles
  latent_interpolations.png   decoded straight lines between test images of different classes
  likelihood_bound_vs_k.png   IWAE bound vs number of importance samples, with the ELBO
  metrics.json, summary.md, cache/ (trained weights with their config and history)

The loss is the negative ELBO (Kingma & Welling 2014) per image:
  reconstruction  sum over 784 pixels of (x - x_hat)^2          (or BCE with --recon bce)
  KL              KL(q(z|x) || N(0, I)) in closed form, summed over latent dimensions
Summed squared error is -log N(x; x_hat, 0.5 I) up to the constant 392 log(pi), so the
MSE model is a proper Gaussian decoder with variance 0.5 and its ELBO a bound on a
log-density; `likelihood` adds that constant back.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import common
from architecture import VAE, DigitClassifier

# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------

EXPERIMENTS = ["train", "reconstruct", "generate", "collapse", "mitigate", "latent", "likelihood"]

# --smoke: every knob left at its default takes these values (a few seconds on CPU).
SMOKE = dict(epochs=1, val_size=200, n_samples=64, clf_epochs=2, clf_width=16, n_vis=200, iwae_k=32, iwae_n=32,
             warmup_epochs=1, aggressive_epochs=1, aggressive_steps=1, batch_size=64)


def build_parser():
    p = common.make_parser("task5", __doc__, EXPERIMENTS)
    g = p.add_argument_group("task 5 (defaults are the assignment's)")
    g.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"],
                   help="training data (default: fashion-mnist)")
    g.add_argument("--epochs", type=common.positive_int, default=20,
                   help="epochs for every VAE trained here (default: 20)")
    g.add_argument("--batch-size", type=common.positive_int, default=128, help="(default: 128)")
    g.add_argument("--lr", type=common.positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    g.add_argument("--latent-dim", type=common.positive_int, default=20, help="latent dimensions (default: 20)")
    g.add_argument("--recon", default="mse", choices=["mse", "bce"],
                   help="reconstruction term, summed over pixels per image (default: mse)")
    g.add_argument("--val-size", type=common.positive_int, default=5000,
                   help="training images held out for validation curves (default: 5000)")
    g.add_argument("--n-samples", type=common.positive_int, default=1000,
                   help="samples per prior for the sample-quality proxies (default: 1000)")
    g.add_argument("--clf-epochs", type=common.positive_int, default=3,
                   help="epochs of the small CNN that scores sample quality (default: 3)")
    g.add_argument("--clf-width", type=common.positive_int, default=32,
                   help="channels of the scoring CNN's first stage (default: 32)")
    g.add_argument("--collapse-beta", type=common.positive_float, default=30.0,
                   help="KL weight of the run that provokes posterior collapse (default: 30)")
    g.add_argument("--warmup-epochs", type=common.positive_int, default=10,
                   help="cure 1, KL warm-up: epochs over which beta rises linearly from 0 (default: 10)")
    g.add_argument("--free-bits", type=common.positive_float, default=0.5,
                   help="cure 2, free bits: KL floor per latent dimension, nats (default: 0.5)")
    g.add_argument("--aggressive-epochs", type=common.positive_int, default=5,
                   help="cure 3, aggressive encoder: epochs with extra encoder steps (default: 5)")
    g.add_argument("--aggressive-steps", type=common.positive_int, default=5,
                   help="extra encoder-only steps per joint step in those epochs (default: 5)")
    g.add_argument("--n-vis", type=common.positive_int, default=2000,
                   help="test images in the t-SNE of latent means (default: 2000)")
    g.add_argument("--iwae-k", type=common.positive_int, default=1000,
                   help="importance samples per image for the IWAE bound (default: 1000)")
    g.add_argument("--iwae-n", type=common.positive_int, default=1000,
                   help="test images the likelihood is estimated on (default: 1000)")
    return p


# ----------------------------------------------------------------------------
# Data: the whole dataset lives on the device as one float tensor in [0, 1]
# ----------------------------------------------------------------------------


def load_data(args, device) -> dict:
    """{x_train, x_val, x_test: float [N, 1, 28, 28] in [0, 1] on device; y_*: int64; classes}.
    The validation split is the last `val_size` images of a seeded shuffle of train."""
    x, y, classes = common.load_split(args.dataset, args.data_root, train=True, smoke=args.smoke, seed=args.seed)
    xt, yt, _ = common.load_split(args.dataset, args.data_root, train=False, smoke=args.smoke, seed=args.seed)
    if args.val_size >= len(x):
        raise common.UserError(f"--val-size {args.val_size} leaves no training images (the set has {len(x)})")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    tr, va = order[:-args.val_size], order[-args.val_size:]
    to = lambda t: (t.float() / 255.0).to(device)  # noqa: E731  uint8 -> [0, 1], the sigmoid decoder's range
    return {"x_train": to(x[tr]), "y_train": y[tr].to(device), "x_val": to(x[va]), "y_val": y[va].to(device),
            "x_test": to(xt), "y_test": yt.to(device), "classes": classes}


# ----------------------------------------------------------------------------
# The ELBO's terms
# ----------------------------------------------------------------------------

HALF_LOG_PI = 0.5 * math.log(math.pi)  # -log N(x; m, 0.5) = (x - m)^2 + 0.5 log(pi), per pixel


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per dimension, [B, D], in nats
    (Kingma & Welling 2014, appendix B): 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per image [B], summed over pixels: squared error or binary cross-entropy."""
    if kind == "mse":
        return (x_hat - x).pow(2).flatten(1).sum(1)
    return F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1)


def active_units(mu: torch.Tensor, threshold: float = 1e-2) -> int:
    """Latent dimensions whose posterior mean varies with x: Var_x(E_q[z_d|x]) > 0.01
    (Burda et al. 2016, section 5.2). mu: [N, D] means over a dataset."""
    return int((mu.float().var(0) > threshold).sum().item())


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """I(x; z) under q, the mixture estimator of He et al. 2019 (their calc_mi):
    E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], with q(z) the batch's mixture of
    posteriors. 0 when q(z|x) ignores x; at most log N for N points. Nats."""
    n, d = mu.shape
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(1)).mean()
    z = VAE.reparameterize(mu, logvar)                                    # [N, D], one z per x
    var = logvar.exp()
    # log q(z_i | x_j) for all pairs: [N, N]
    log_q = -0.5 * (((z[:, None] - mu[None]) ** 2) / var[None] + logvar[None] + math.log(2 * math.pi)).sum(-1)
    log_qz = torch.logsumexp(log_q, dim=1) - math.log(n)
    return float((neg_entropy - log_qz.mean()).item())


# ----------------------------------------------------------------------------
# Training: one loop for every VAE here; the arms differ only in their KL schedule
# ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, x, args, batch=1000) -> dict:
    """Per-image means of the loss terms over x (z sampled once per image), the
    per-dimension KL [D], active units, and I(x;z) on the first 1,000 images."""
    model.eval()
    rec, kl_dims, mus, logvars = 0.0, 0.0, [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        x_hat, mu, logvar = model(xb)
        rec += reconstruction_loss(x_hat, xb, args.recon).sum()
        kl_dims = kl_divergence(mu, logvar).sum(0) + kl_dims
        mus.append(mu), logvars.append(logvar)
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    kl_dims = (kl_dims / len(x)).cpu()
    rec = float(rec / len(x))
    model.train()
    return {"recon": rec, "kl": float(kl_dims.sum()), "total": rec + float(kl_dims.sum()),
            "kl_per_dim": kl_dims.tolist(), "active_units": active_units(mu),
            "mutual_info": mutual_information(mu[:1000], logvar[:1000])}


def train_vae(data, args, device, desc: str, latent_dim: int, beta: float = 1.0, warmup_epochs: int = 0,
              free_bits: float = 0.0, aggressive_epochs: int = 0) -> tuple[VAE, dict]:
    """Train a VAE from scratch on data["x_train"] with loss recon + beta_t * KL_term.

    beta_t    = beta * min(1, step / warm-up steps)      (KL warm-up, Bowman et al. 2016)
    KL_term   = sum_d max(KL_d, free_bits), KL_d averaged over the batch
                                                       (free bits, Kingma et al. 2016)
    aggressive: in the first epochs, `aggressive_steps` encoder-only updates before each
    joint update, so the encoder keeps up with the decoder (He et al. 2019; a fixed
    number of inner steps instead of their run-until-converged loop).
    Returns the model and its history: per epoch train/val total, recon, KL, the
    val per-dimension KL, active units and I(x; z). Reported KL is the true KL.
    """
    common.seed_everything(args.seed)
    model = VAE(latent_dim).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    enc_params = [p for n, p in model.named_parameters() if n.startswith(("encoder", "fc_mu", "fc_logvar"))]
    enc_opt = torch.optim.Adam(enc_params, lr=args.lr)
    x_train, n = data["x_train"], len(data["x_train"])
    steps_per_epoch = math.ceil(n / args.batch_size)
    warmup_steps = warmup_epochs * steps_per_epoch
    hist = {k: [] for k in ["train_total", "train_recon", "train_kl", "val_total", "val_recon", "val_kl",
                            "val_kl_per_dim", "active_units", "mutual_info", "beta"]}

    def loss_terms(xb, beta_t):
        with common.autocast(device):
            x_hat, mu, logvar = model(xb)
        rec = reconstruction_loss(x_hat.float(), xb, args.recon).mean()
        kl_d = kl_divergence(mu.float(), logvar.float()).mean(0)            # [D]
        kl_term = kl_d.clamp(min=free_bits).sum() if free_bits > 0 else kl_d.sum()
        return rec + beta_t * kl_term, rec, kl_d.sum()

    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n, device=device)
        sums = torch.zeros(3, device=device)                                 # total, recon, KL (summed)
        beta_t = beta
        for i in tqdm(range(steps_per_epoch), desc=f"{desc} {epoch + 1}/{args.epochs}", leave=False,
                      disable=None, mininterval=2):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = x_train[idx]
            beta_t = beta * min(1.0, step / warmup_steps) if warmup_steps else beta
            if epoch < aggressive_epochs:
                for _ in range(args.aggressive_steps):                      # encoder catches up first
                    xe = x_train[torch.randint(0, n, (args.batch_size,), device=device)]
                    enc_opt.zero_grad(set_to_none=True)
                    loss_terms(xe, beta_t)[0].backward()
                    enc_opt.step()
            loss, rec, kl = loss_terms(xb, beta_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([rec + kl, rec, kl]).detach() * len(idx)
            step += 1
        common.check_finite(sums, f"{desc}: the training loss")  # one sync per epoch
        tr = (sums / n).tolist()
        ev = evaluate(model, data["x_val"], args)
        for k, v in zip(["train_total", "train_recon", "train_kl"], tr):
            hist[k].append(v)
        for k in ["total", "recon", "kl", "kl_per_dim"]:
            hist[f"val_{k}"].append(ev[k])
        hist["active_units"].append(ev["active_units"])
        hist["mutual_info"].append(ev["mutual_info"])
        hist["beta"].append(beta_t)
        print(f"{desc} epoch {epoch + 1:>2}/{args.epochs}  train {tr[0]:8.2f} (rec {tr[1]:7.2f} kl {tr[2]:6.2f})  "
              f"val {ev['total']:8.2f} (rec {ev['recon']:7.2f} kl {ev['kl']:6.2f})  "
              f"AU {ev['active_units']:>2}/{latent_dim}  MI {ev['mutual_info']:.2f}  beta {beta_t:.3g}", flush=True)
    model.eval()
    return model, hist


def fit_or_load(name: str, data, args, device, **arm) -> tuple[VAE, dict]:
    """Train an arm, or load it from out/cache when the same settings trained it before.
    The checkpoint carries its config and training history."""
    latent_dim = arm.pop("latent_dim", args.latent_dim)
    settings = {"arm": name, "latent_dim": latent_dim, **arm, "dataset": args.dataset, "smoke": args.smoke,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "recon": args.recon,
                "val_size": args.val_size, "seed": args.seed,
                "aggressive_steps": args.aggressive_steps if arm.get("aggressive_epochs") else None}
    path = common.cache_path(args.out, f"vae-{name}", settings)
    ckpt = common.load_cache(path, args.fresh)
    if ckpt is not None:
        model = VAE(latent_dim).to(device)
        model.load_state_dict(ckpt["state_dict"])
        print(f"{name}: loaded trained weights from {path}")
        return model.eval(), ckpt["history"]
    t0 = time.perf_counter()
    model, hist = train_vae(data, args, device, name, latent_dim, **arm)
    hist["train_seconds"] = time.perf_counter() - t0
    common.save_cache(path, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                             "history": hist, "config": settings})
    return model, hist


# ----------------------------------------------------------------------------
# Sample quality: a small CNN classifier and nearest-training-image distance
# ----------------------------------------------------------------------------


def classifier(data, args, device) -> tuple[DigitClassifier, float]:
    """The scoring CNN shared with Task 3 (common.scoring_classifier: one recipe, inputs
    in [0, 1], cached in out/cache), trained on this task's training images; returns it
    in eval mode and its test accuracy. On MNIST it warns below 99%."""
    return common.scoring_classifier(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                                     epochs=args.clf_epochs, width=args.clf_width, seed=args.seed, out=args.out,
                                     fresh=args.fresh,
                                     warn_below=0.99 if args.dataset == "mnist" and not args.smoke else None)


def nearest_train_rmse(samples: torch.Tensor, x_train: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per sample [S]: root-mean-square pixel distance to its nearest training image."""
    return common.nearest_distance(samples, x_train, chunk) / math.sqrt(samples[0].numel())


@torch.no_grad()
def sample_quality(images: torch.Tensor, clf: DigitClassifier, x_train: torch.Tensor) -> dict:
    """Two proxies that fail differently: the scoring CNN's mean max-probability (high
    when a sample looks like some class; a blurry average scores low) and the RMSE to
    the nearest training image (low when samples resemble real data; 0 would be
    copying). Plus how many classes the CNN assigns to at least 2% of samples."""
    probs = torch.cat([clf(images[i:i + 1000]).softmax(1) for i in range(0, len(images), 1000)])
    hist = torch.bincount(probs.argmax(1), minlength=10).float() / len(images)
    return {"classifier_confidence": float(probs.max(1).values.mean()),
            "nearest_train_rmse": float(nearest_train_rmse(images, x_train).mean()),
            "classes_covered": common.classes_covered(hist)}


@torch.no_grad()
def decode_prior(model: VAE, n: int, device, prior: str = "gaussian", seed: int = 0) -> torch.Tensor:
    """n decoded samples from z ~ N(0, I) or the variance-matched Laplace(0, 1/sqrt(2))
    (a Laplace with scale b has variance 2 b^2 = 1): same spread, heavier tails."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    if prior == "gaussian":
        z = torch.randn(n, model.latent_dim, generator=g)
    else:
        u = torch.rand(n, model.latent_dim, generator=g).clamp(1e-6, 1 - 1e-6) - 0.5
        z = -(1 / math.sqrt(2)) * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF
    return model.decode(z.to(device))


# ----------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------


def exp_train(data, args, device, get) -> dict:
    """The assignment's VAE at beta = 1: ELBO terms per epoch, train and validation."""
    model, hist = get("vae")
    ep = list(range(1, len(hist["train_total"]) + 1))
    fig, axes = common.plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, term in zip(axes, ["total", "recon", "kl"]):
        common.line_plot(ax, {"train": (ep, hist[f"train_{term}"]), "validation": (ep, hist[f"val_{term}"])},
                         {"total": "negative ELBO", "recon": f"reconstruction ({args.recon}, summed)",
                          "kl": "KL(q(z|x) || N(0, I))"}[term], "epoch", "per image")
    fig.suptitle(f"VAE on {args.dataset} (latent {args.latent_dim}, batch {args.batch_size}, Adam {args.lr})")
    common.save_figure(fig, f"{args.out}/train_curves.png")
    test = evaluate(model, data["x_test"], args)
    return {"final_train": {k: hist[f"train_{k}"][-1] for k in ["total", "recon", "kl"]},
            "final_val": {k: hist[f"val_{k}"][-1] for k in ["total", "recon", "kl"]},
            "test": {k: test[k] for k in ["total", "recon", "kl", "active_units", "mutual_info"]},
            "epochs": len(ep), "train_seconds": hist.get("train_seconds")}


@torch.no_grad()
def exp_reconstruct(data, args, device, get, n: int = 16) -> dict:
    """Test images above their reconstructions (decoded from the posterior mean)."""
    model, _ = get("vae")
    x = data["x_test"][:n]
    mu, _ = model.encode(x)
    x_hat = model.decode(mu)
    common.image_grid(torch.cat([x, x_hat]), f"{args.out}/reconstruct_grid.png",
                      f"test images (top) and reconstructions from E[z|x] (bottom), {args.dataset}", nrow=n,
                      row_labels=["input", "recon."])
    test = evaluate(model, data["x_test"], args)
    sse = float((x_hat - x).pow(2).flatten(1).sum(1).mean())
    return {"test_recon_per_image": test["recon"], "shown_sse_per_image": sse,
            "shown_rmse_per_pixel": math.sqrt(sse / 784)}


@torch.no_grad()
def exp_generate(data, args, device, get) -> dict:
    """Samples from the Gaussian prior the model was trained with vs a Laplace prior
    of the same variance, scored by the CNN and by distance to the training set."""
    model, _ = get("vae")
    clf, clf_acc = get("classifier")
    out = {"classifier_test_acc": clf_acc}
    grids = {}
    for prior in ["gaussian", "laplace"]:
        s = decode_prior(model, args.n_samples, device, prior, seed=args.seed)
        out[prior] = sample_quality(s, clf, data["x_train"])
        grids[prior] = s[:64]
    idx = torch.randperm(len(data["x_test"]), generator=torch.Generator().manual_seed(args.seed))[:args.n_samples]
    out["real_test_images"] = sample_quality(data["x_test"][idx.to(device)], clf, data["x_train"])  # reference
    fig, axes = common.plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, prior in zip(axes, ["gaussian", "laplace"]):
        g = common.to_display(grids[prior])[..., 0].reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224)
        ax.imshow(g, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        q = out[prior]
        ax.set_title(f"{'z ~ N(0, I)' if prior == 'gaussian' else 'z ~ Laplace(0, 1/sqrt 2), var 1'}\n"
                     f"CNN confidence {q['classifier_confidence']:.3f}, NN-RMSE {q['nearest_train_rmse']:.3f}")
    fig.suptitle(f"decoded prior samples ({args.dataset}); real test images: confidence "
                 f"{out['real_test_images']['classifier_confidence']:.3f}, NN-RMSE "
                 f"{out['real_test_images']['nearest_train_rmse']:.3f}")
    common.save_figure(fig, f"{args.out}/generate_samples.png")
    return out


def kl_heatmap(ax, hist, title):
    kl = np.array(hist["val_kl_per_dim"]).T                                  # [D, epochs]
    im = ax.imshow(kl, aspect="auto", cmap="viridis", origin="lower",
                   extent=(0.5, kl.shape[1] + 0.5, -0.5, kl.shape[0] - 0.5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("latent dimension")
    ax.set_title(title)
    return im


@torch.no_grad()
def exp_collapse(data, args, device, get) -> dict:
    """Provoke posterior collapse with a large KL weight (beta = --collapse-beta: each
    nat of information about x now costs beta nats of loss, so most dimensions are
    better off matching the prior), then diagnose it: per-dimension KL, active units,
    I(x; z) over training, and reconstructions that fall back to the mean image."""
    healthy, h_hist = get("vae")
    collapsed, c_hist = get("collapsed")
    ev_h, ev_c = evaluate(healthy, data["x_test"], args), evaluate(collapsed, data["x_test"], args)
    d = np.arange(args.latent_dim)
    fig, ax = common.plt.subplots(figsize=(9, 3.8))
    ax.bar(d - 0.2, ev_h["kl_per_dim"], 0.4, label=f"beta = 1 ({ev_h['active_units']} active units)")
    ax.bar(d + 0.2, ev_c["kl_per_dim"], 0.4, label=f"beta = {args.collapse_beta:g} ({ev_c['active_units']} active)")
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL(q(z_d|x) || N(0,1)), nats (test mean)")
    ax.set_title("per-dimension KL: collapsed dimensions carry ~0 nats")
    ax.legend()
    common.save_figure(fig, f"{args.out}/collapse_kl_per_dim.png")

    fig, axes = common.plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    im = kl_heatmap(axes[0], c_hist, f"collapsed run: KL per dimension (beta {args.collapse_beta:g})")
    fig.colorbar(im, ax=axes[0], label="nats")
    ep = list(range(1, len(c_hist["active_units"]) + 1))
    common.line_plot(axes[1], {"beta = 1": (ep, h_hist["active_units"]),
                               f"beta = {args.collapse_beta:g}": (ep, c_hist["active_units"])},
                     "active units (Var_x E[z|x] > 0.01)", "epoch", "units")
    common.line_plot(axes[2], {"beta = 1": (ep, h_hist["mutual_info"]),
                               f"beta = {args.collapse_beta:g}": (ep, c_hist["mutual_info"])},
                     "I(x; z) under q (He et al. 2019 estimator)", "epoch", "nats")
    common.save_figure(fig, f"{args.out}/collapse_dynamics.png")

    x = data["x_test"][:12]
    mean_img = data["x_train"].mean(0, keepdim=True)
    # Decode one posterior sample z ~ q(z|x), as in training: a collapsed posterior is
    # N(0, I), and its mean z = 0 is an atypical input the decoder never saw (in 20-d,
    # samples have norm ~sqrt(20)), so decoding E[z|x] would misrepresent the model.
    torch.manual_seed(args.seed)
    rec_h, rec_c = healthy(x)[0], collapsed(x)[0]
    common.image_grid(torch.cat([x, rec_h, rec_c, mean_img.expand(12, -1, -1, -1)]),
                      f"{args.out}/collapse_reconstructions.png",
                      "collapse made visible: reconstructions (z ~ q(z|x)) of a collapsed VAE ignore the input",
                      nrow=12,
                      row_labels=["input", "beta 1", f"beta {args.collapse_beta:g}", "data mean"])
    dist = lambda r: float((r - mean_img).pow(2).flatten(1).mean(1).sqrt().mean())  # noqa: E731 RMSE to mean
    return {"healthy": {k: ev_h[k] for k in ["recon", "kl", "active_units", "mutual_info"]},
            "collapsed": {k: ev_c[k] for k in ["recon", "kl", "active_units", "mutual_info"]},
            "collapse_beta": args.collapse_beta,
            "recon_rmse_to_mean_image": {"healthy": dist(rec_h), "collapsed": dist(rec_c)},
            "inputs_rmse_to_mean_image": dist(x)}


@torch.no_grad()
def exp_mitigate(data, args, device, get) -> dict:
    """Cures that keep the architecture and the same final KL weight as the collapsed
    run: KL warm-up, free bits, aggressive encoder updates. One table, one figure."""
    arms = ["collapsed", "warmup", "free_bits", "aggressive"]
    clf, _ = get("classifier")
    x = data["x_test"][:8]
    rows, metrics = [], {}
    fig_c, axes_c = common.plt.subplots(1, 2, figsize=(12, 3.8))
    for arm in arms:
        model, hist = get(arm)
        ev = evaluate(model, data["x_test"], args)
        samples = decode_prior(model, args.n_samples, device, seed=args.seed)
        metrics[arm] = {"recon": ev["recon"], "kl": ev["kl"], "active_units": ev["active_units"],
                        "mutual_info": ev["mutual_info"], **sample_quality(samples, clf, data["x_train"])}
        torch.manual_seed(args.seed)
        rows.append(torch.cat([x, model(x)[0], samples[:8]]))               # reconstructions from z ~ q(z|x)
        ep = list(range(1, len(hist["active_units"]) + 1))
        axes_c[0].plot(ep, hist["active_units"], marker="o", ms=3, label=arm)
        axes_c[1].plot(ep, hist["val_kl"], marker="o", ms=3, label=arm)
    for ax, t, yl in [(axes_c[0], "active units", "units"), (axes_c[1], "validation KL", "nats per image")]:
        ax.set_title(f"{t} (final beta {args.collapse_beta:g} in every arm)")
        ax.set_xlabel("epoch"), ax.set_ylabel(yl), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    common.save_figure(fig_c, f"{args.out}/mitigate_curves.png")
    common.image_grid(torch.cat(rows), f"{args.out}/mitigate_comparison.png",
                      "per arm: 8 test images | their reconstructions (z ~ q(z|x)) | 8 samples (z ~ N(0, I))", nrow=24,
                      row_labels=arms, cell_size=0.6)
    print("\narm          recon      KL   AU     MI   conf.  NN-RMSE")
    for arm in arms:
        m = metrics[arm]
        print(f"{arm:<11} {m['recon']:7.2f} {m['kl']:7.2f} {m['active_units']:>4} {m['mutual_info']:6.2f} "
              f"{m['classifier_confidence']:6.3f} {m['nearest_train_rmse']:8.4f}")
    metrics["settings"] = {"beta": args.collapse_beta, "warmup_epochs": args.warmup_epochs,
                           "free_bits": args.free_bits, "aggressive_epochs": args.aggressive_epochs,
                           "aggressive_steps": args.aggressive_steps}
    return metrics


@torch.no_grad()
def exp_latent(data, args, device, get) -> dict:
    """The latent space: t-SNE of 20-d means, a latent-2 model's own plane and decoded
    manifold, and interpolations between test images of different classes."""
    model, _ = get("vae")
    classes = data["classes"]
    n = min(args.n_vis, len(data["x_test"]))
    mu = torch.cat([model.encode(data["x_test"][i:i + 1000])[0] for i in range(0, n, 1000)])[:n].cpu().numpy()
    y = data["y_test"][:n].cpu().numpy()
    xy = common.embed_2d(mu, "tsne", seed=args.seed)
    fig, ax = common.plt.subplots(figsize=(7, 6))
    common.scatter_by_class(ax, xy, y, classes, f"t-SNE of {args.latent_dim}-d posterior means, {n} test images")
    common.save_figure(fig, f"{args.out}/latent_tsne.png")
    from sklearn.metrics import silhouette_score

    mu_tr = torch.cat([model.encode(data["x_train"][i:i + 1000])[0] for i in range(0, min(10000, len(
        data["x_train"])), 1000)]).cpu().numpy()
    probe = common.linear_probe(mu_tr, data["y_train"][:len(mu_tr)].cpu().numpy(), mu, y, seed=args.seed)

    m2, hist2 = get("latent2")
    mu2 = torch.cat([m2.encode(data["x_test"][i:i + 1000])[0] for i in range(0, n, 1000)])[:n].cpu().numpy()
    fig, ax = common.plt.subplots(figsize=(7, 6))
    common.scatter_by_class(ax, mu2, y, classes, "latent-2 VAE: test posterior means")
    ax.set_xticks(np.arange(-3, 4)), ax.set_yticks(np.arange(-3, 4))
    ax.set_xlabel("z1"), ax.set_ylabel("z2")
    common.save_figure(fig, f"{args.out}/latent_2d_scatter.png")
    from scipy.stats import norm

    k = 15  # decoder over a k x k grid of Gaussian quantiles, so equal areas hold equal prior mass
    q = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, k)), dtype=torch.float32)
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)  # rows: z2 high -> low
    imgs = m2.decode(zz.to(device))
    common.image_grid(imgs, f"{args.out}/latent_2d_manifold.png",
                      "latent-2 decoder over Gaussian quantiles 5%..95% (z1 right, z2 up)", nrow=k, cell_size=0.5)

    # interpolations: 6 pairs of test images with different labels, 10 steps on the line mu_a -> mu_b
    g = torch.Generator().manual_seed(args.seed)
    yt = data["y_test"].cpu()
    pairs = []
    while len(pairs) < 6:
        a, b = torch.randint(0, len(yt), (2,), generator=g).tolist()
        if yt[a] != yt[b]:
            pairs.append((a, b))
    t = torch.linspace(0, 1, 10, device=device)[:, None]
    rows, labels = [], []
    for a, b in pairs:
        ma, mb = model.encode(data["x_test"][[a, b]])[0]
        rows.append(model.decode((1 - t) * ma + t * mb))
        labels.append(f"{classes[yt[a]]} -> {classes[yt[b]]}")
    common.image_grid(torch.cat(rows), f"{args.out}/latent_interpolations.png",
                      "decoded linear interpolation between posterior means", nrow=10, row_labels=labels)
    ev2 = evaluate(m2, data["x_test"], args)
    return {"tsne_silhouette": float(silhouette_score(xy, y)) if len(set(y)) > 1 else 0.0,
            "latent_probe_test_acc": probe["test_acc"], "latent2_test_total": ev2["total"],
            "latent2_test_recon": ev2["recon"], "latent2_test_kl": ev2["kl"], "n_vis": n}


def log_weights(model: VAE, x: torch.Tensor, k: int, recon: str) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x): [k, B].
    Decoder density: N(x; x_hat, 0.5 I) for mse, Bernoulli(x_hat) for bce."""
    mu, logvar = model.encode(x)
    std = (0.5 * logvar).exp()
    eps = torch.randn(k, *mu.shape, device=x.device)
    z = mu + std * eps                                                        # [k, B, D]
    log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p_z = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    x_hat = model.decode(z.flatten(0, 1)).view(k, *x.shape)
    log_px_z = -reconstruction_loss(x_hat.flatten(0, 1), x.repeat(k, 1, 1, 1), recon).view(k, -1)
    if recon == "mse":
        log_px_z = log_px_z - x[0].numel() * HALF_LOG_PI
    return log_px_z + log_p_z - log_q


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """IWAE bound per image (Burda et al. 2016): log (1/k) sum_i w_i over dim 0, [B].
    >= mean_i log w_i (the ELBO estimate) by Jensen, for every draw; k = 1 is the ELBO."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


@torch.no_grad()
def exp_likelihood(data, args, device, get) -> dict:
    """Test log-likelihood by importance sampling next to the ELBO, in nats per image."""
    model, _ = get("vae")
    x = data["x_test"][:args.iwae_n]
    ks = [k for k in [1, 10, 100, 1000, 5000] if k < args.iwae_k] + [args.iwae_k]
    per_image = max(1, 2 ** 22 // (args.iwae_k * 784))                       # keep [k, B, 784] near 16 MB
    sums = {k: 0.0 for k in ks}
    elbo = 0.0
    for i in tqdm(range(0, len(x), per_image), desc="IWAE", leave=False, disable=None):
        lw = log_weights(model, x[i:i + per_image], args.iwae_k, args.recon)  # [K, b]
        elbo += float(lw.mean(0).sum())
        for k in ks:  # the first k of the K samples: one unbiased draw of IWAE_k
            sums[k] += float(iwae_bound(lw[:k]).sum())
    n = len(x)
    iwae = {k: v / n for k, v in sums.items()}
    elbo /= n
    fig, ax = common.plt.subplots(figsize=(6.5, 4))
    ax.plot(ks, [iwae[k] for k in ks], marker="o", label="IWAE bound log p_k(x)")
    ax.axhline(elbo, color="C3", ls="--", label=f"ELBO ({elbo:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("importance samples k")
    ax.set_ylabel("nats per image (higher is tighter)")
    ax.set_title(f"test log-likelihood bounds, {n} images ({args.recon} decoder)")
    ax.legend(), ax.grid(alpha=0.3)
    common.save_figure(fig, f"{args.out}/likelihood_bound_vs_k.png")
    return {"elbo": elbo, "iwae": iwae[args.iwae_k], "iwae_minus_elbo": iwae[args.iwae_k] - elbo,
            "iwae_by_k": {str(k): v for k, v in iwae.items()}, "k": args.iwae_k, "n_images": n}


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv, SMOKE)
    with common.user_errors(parser.prog):
        device = common.pick_device(args.device)
        common.seed_everything(args.seed)
        data = load_data(args, device)
        print(f"{args.dataset} ({'smoke: scikit-learn digits' if args.smoke else 'torchvision'}): "
              f"{len(data['x_train'])} train, {len(data['x_val'])} val, {len(data['x_test'])} test")

        # Every trained network, built on first use and reused by later experiments.
        arms = {"vae": {}, "collapsed": {"beta": args.collapse_beta},
                "warmup": {"beta": args.collapse_beta, "warmup_epochs": args.warmup_epochs},
                "free_bits": {"beta": args.collapse_beta, "free_bits": args.free_bits},
                "aggressive": {"beta": args.collapse_beta, "aggressive_epochs": args.aggressive_epochs},
                "latent2": {"latent_dim": 2}}
        built = {}

        def get(name):
            if name not in built:  # training needs gradients even when called from a no_grad experiment
                with torch.enable_grad():
                    built[name] = classifier(data, args, device) if name == "classifier" else \
                        fit_or_load(name, data, args, device, **arms[name])
            return built[name]

        results = common.Results("task5", args, device)
        run = {name: (lambda f=f: f(data, args, device, get)) for name, f in [
            ("train", exp_train), ("reconstruct", exp_reconstruct), ("generate", exp_generate),
            ("collapse", exp_collapse), ("mitigate", exp_mitigate), ("latent", exp_latent),
            ("likelihood", exp_likelihood)]}
        results.run(run)


if __name__ == "__main__":
    main()
