"""Task 3: an MLP GAN on MNIST: training dynamics, and three failure modes
(vanishing gradients, mode collapse, discriminator overfitting), each induced,
measured and cured.

Experiments (each trains one or more GANs from scratch, same seed and noise):
  baseline       the assignment's GAN: G z100 -> 256 -> 512 -> 784 (ReLU, tanh),
                 D 784 -> 256 -> 256 -> 1 (LeakyReLU 0.2, sigmoid), N(0, 0.02)
                 weights, Adam 2e-4 (0.5, 0.999), BCE, non-saturating G loss, batch
                 64, 20 epochs. Per-iteration D/G loss, mean D(x), mean D(G(z)) and
                 the gradient norm reaching G; fixed-noise grids every few epochs.
  reference      PyTorch-GAN's gan.py networks (deeper G with BatchNorm) trained
                 with the same budget; one table and one grid pair against baseline.
  vanishing      D overpowers G (D lr x5 and 5 D steps per G step early on) under
                 the saturating minimax loss log(1 - D(G(z))); cures at the same
                 learning rates: non-saturating loss, one-sided label smoothing 0.9,
                 both.
  mode_collapse  G lr x5 and 3 G steps per D step; cures: more D steps per G step,
                 instance noise, minibatch standard deviation in D, feature matching.
  d_overfit      1,000 training images (or 200 of one digit, --overfit-class); the
                 D(train) - D(held-out) gap over training and the memorisation
                 distance; cures: dropout 0.4 in D, D stopped early in each epoch,
                 DiffAugment (translation + cutout on real and fake alike).

Every run is measured with a small CNN classifier trained once on MNIST and cached:
mode coverage, KL(class histogram || uniform), classifier confidence,
"FD-MNIST-classifier" (a Frechet distance between the classifier's penultimate
features of real test images and of samples; not FID, which uses Inception),
diversity (mean pairwise distance of samples) and memorisation (distance of each
sample to its nearest training image), at the start, every few epochs and at the end.

Run:  python Task3.py                          # all experiments (planned < 15 min on one GPU)
      python Task3.py --epochs 5 --device cpu  # a laptop: lower the budgets
      python Task3.py --smoke --out /tmp/t3    # offline, < 30 s on 2 CPU cores
Writes into --out: <experiment>_<what>.png figures, metrics.json, summary.md and
cache/ (the classifier's weights and every training run's logs and samples, so a
rerun with the same settings, and `reference` reusing `baseline`, costs nothing).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
from architecture import (DigitClassifier, Discriminator, Generator, ReferenceDiscriminator, ReferenceGenerator,
                          init_gan_weights)

import matplotlib.pyplot as plt  # noqa: E402  (common selected the Agg backend)

EXPERIMENTS = ["baseline", "reference", "vanishing", "mode_collapse", "d_overfit"]

# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------


def build_parser() -> common.Parser:
    p = common.make_parser("task3", __doc__, EXPERIMENTS)
    pi, pf, uf = common.positive_int, common.positive_float, common.unit_float
    g = p.add_argument_group("GAN training (baseline and reference; the other experiments start from these)")
    g.add_argument("--epochs", type=pi, default=20, help="epochs for baseline and reference (default: 20)")
    g.add_argument("--batch-size", type=pi, default=64, help="images per batch (default: 64)")
    g.add_argument("--z-dim", type=pi, default=100, help="latent dimension (default: 100)")
    g.add_argument("--lr", type=pf, default=2e-4, help="Adam learning rate of G and D (default: 2e-4)")
    g.add_argument("--beta1", type=uf, default=0.5, help="Adam beta1 (default: 0.5)")
    g.add_argument("--beta2", type=uf, default=0.999, help="Adam beta2 (default: 0.999)")
    g.add_argument("--init-std", type=pf, default=0.02, help="std of the N(0, std) weight init (default: 0.02)")
    g.add_argument("--real-label", type=uf, default=1.0,
                   help="BCE target for real images in baseline/reference/mode_collapse/d_overfit; 0.9 = "
                        "one-sided label smoothing (default: 1.0, none)")
    g.add_argument("--d-dropout", type=uf, default=0.0,
                   help="dropout after each hidden layer of the baseline D (default: 0.0)")
    g.add_argument("--max-iters-per-epoch", type=int, default=0,
                   help="cap iterations per epoch, 0 = the whole training set (default: 0)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=pi, default=5,
                   help="evaluate and render the fixed noise every N epochs, plus start and end (default: 5)")
    e.add_argument("--eval-samples", type=pi, default=5000,
                   help="generated (and real test) images per evaluation: coverage, KL, FD (default: 5000)")
    e.add_argument("--pair-samples", type=pi, default=1000,
                   help="samples for the diversity (pairwise distance) and D(train)/D(held-out) probes "
                        "(default: 1000)")
    e.add_argument("--nn-samples", type=pi, default=500,
                   help="samples whose nearest training image is searched (memorisation) (default: 500)")
    e.add_argument("--coverage-share", type=uf, default=0.1,
                   help="a digit counts as covered when it gets at least this fraction of its fair share "
                        "N/10 of the samples (default: 0.1)")
    e.add_argument("--clf-epochs", type=pi, default=3, help="epochs of the evaluation classifier (default: 3)")
    e.add_argument("--clf-lr", type=pf, default=2e-3, help="AdamW learning rate of the classifier (default: 2e-3)")
    e.add_argument("--clf-width", type=pi, default=32, help="channels of the classifier's first conv (default: 32)")
    v = p.add_argument_group("vanishing: saturating loss against an overpowering D")
    v.add_argument("--vanish-epochs", type=pi, default=5, help="epochs per arm (default: 5)")
    v.add_argument("--vanish-d-lr-mult", type=pf, default=5.0,
                   help="D learning rate = this x --lr in every arm; G keeps --lr (default: 5)")
    v.add_argument("--vanish-d-steps", type=pi, default=5, help="D steps per G step early on (default: 5)")
    v.add_argument("--vanish-warmup-iters", type=int, default=500,
                   help="iterations at the start with --vanish-d-steps D steps (default: 500)")
    v.add_argument("--smooth-label", type=uf, default=0.9,
                   help="real-label target of the label-smoothing arms (default: 0.9)")
    m = p.add_argument_group("mode_collapse: a G that outruns D")
    m.add_argument("--collapse-epochs", type=pi, default=10, help="epochs per arm (default: 10)")
    m.add_argument("--arm-eval-every", type=pi, default=2,
                   help="vanishing and mode_collapse arms: evaluate and render every N epochs (default: 2)")
    m.add_argument("--collapse-g-lr-mult", type=pf, default=5.0, help="G learning rate = this x --lr (default: 5)")
    m.add_argument("--collapse-g-steps", type=pi, default=3, help="G steps per D step (default: 3)")
    m.add_argument("--collapse-d-width", type=pi, default=256,
                   help="hidden width of D in every arm (< 256 weakens D further) (default: 256)")
    m.add_argument("--cure-d-steps", type=pi, default=3,
                   help="D steps per G step in the more_d_steps arm (which takes 1 G step) (default: 3)")
    m.add_argument("--noise-std", type=pf, default=0.1,
                   help="initial std of the noise arm's Gaussian noise, annealed linearly to 0 (default: 0.1)")
    m.add_argument("--noise-on", default="d_input", choices=["d_input", "z"],
                   help="d_input: instance noise on D's real and fake inputs (Sonderby et al. 2016); z: noise "
                        "added to G's latent input (default: d_input)")
    o = p.add_argument_group("d_overfit: a small training set")
    o.add_argument("--overfit-n", type=pi, default=1000, help="training images: the first N of the train split "
                   "(default: 1000)")
    o.add_argument("--overfit-class", type=int, default=-1,
                   help="0..9: instead train on --overfit-class-n images of this digit only (default: -1, off)")
    o.add_argument("--overfit-class-n", type=pi, default=200, help="images of the single-class variant "
                   "(default: 200)")
    o.add_argument("--overfit-epochs", type=pi, default=300, help="epochs over the small set per arm (default: 300)")
    o.add_argument("--overfit-eval-every", type=pi, default=25, help="evaluate every N epochs (default: 25)")
    o.add_argument("--overfit-dropout", type=uf, default=0.4, help="D dropout of the dropout arm (default: 0.4)")
    o.add_argument("--d-stop-frac", type=uf, default=0.5,
                   help="d_early_stop arm: D trains on this first fraction of each epoch's batches, G on all "
                        "(default: 0.5)")
    o.add_argument("--diffaug-translate", type=uf, default=0.125,
                   help="DiffAugment: max shift as a fraction of the image side (default: 0.125)")
    o.add_argument("--diffaug-cutout", type=uf, default=0.5,
                   help="DiffAugment: cutout square side as a fraction of the image side (default: 0.5)")
    return p


# Smoke: the digits set, 5 iterations per epoch, two epochs per run, small probes.
SMOKE = {"epochs": 2, "max_iters_per_epoch": 5, "eval_every": 1, "eval_samples": 150, "pair_samples": 100,
         "nn_samples": 50, "clf_epochs": 2, "clf_width": 8, "vanish_epochs": 2, "vanish_warmup_iters": 5,
         "collapse_epochs": 2, "arm_eval_every": 1, "overfit_epochs": 2, "overfit_eval_every": 1, "overfit_n": 300,
         "overfit_class_n": 100}

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
    """[-1, 1] -> [0, 1]: the scale of every pixel distance Task 3 reports."""
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
# Models: the GANs live in architecture.py; here, the losses and the evaluation CNN
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


def classifier_settings(args) -> dict:
    return {"data": "smoke" if args.smoke else "mnist", "seed": args.seed, "epochs": args.clf_epochs,
            "lr": args.clf_lr, "width": args.clf_width, "batch": 128, "version": 1}


def classifier_cache_path(args):
    return common.cache_path(args.out, "classifier", classifier_settings(args))


def get_classifier(args, x_train, y_train, x_test, y_test, device) -> tuple[DigitClassifier, float]:
    """Train the evaluation CNN once (AdamW, linear decay, batch 128, small random
    shifts), cache its weights keyed by its settings; returns (model in eval mode, test
    accuracy). Full MNIST reaches >= 99% in 3 epochs (a warning says so otherwise)."""
    s = classifier_settings(args)
    path = classifier_cache_path(args)
    cached = common.load_cache(path, args.fresh)
    model = DigitClassifier(args.clf_width).to(device)
    if cached is not None and cached.get("settings") == s:
        model.load_state_dict(cached["state_dict"])
        print(f"classifier: cached {path.name}, test accuracy {cached['test_acc']:.4f}")
        return model.eval(), float(cached["test_acc"])
    common.seed_everything(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.clf_lr, weight_decay=1e-4)
    n, bs = len(x_train), s["batch"]
    steps = args.clf_epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    model.train()
    for ep in range(args.clf_epochs):
        perm = torch.randperm(n, device=device)
        for i in tqdm(range(0, n, bs), desc=f"classifier epoch {ep + 1}", leave=False, disable=None):
            idx = perm[i:i + bs]
            x = diff_augment(x_train[idx], translate=2 / 28, cutout=0.0)  # +-2 px shifts
            with common.autocast(device):
                loss = F.cross_entropy(model(x).float(), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
    acc = (pred == y_test).float().mean().item()
    print(f"classifier: trained {args.clf_epochs} epochs, test accuracy {acc:.4f}")
    if not args.smoke and acc < 0.99:
        print(f"warning: the evaluation classifier reached only {acc:.4f} < 0.99; raise --clf-epochs", flush=True)
    common.save_cache(path, {"settings": s, "state_dict": model.state_dict(), "test_acc": acc})
    return model, acc


# ----------------------------------------------------------------------------
# Measuring generators
# ----------------------------------------------------------------------------


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


def mode_coverage(hist, share: float = 0.1) -> int:
    """How many classes are present: count >= share * N / K (K classes, N samples),
    so a handful of misclassified blobs do not count as a mode; share 0 -> count >= 1."""
    hist = np.asarray(hist, dtype=np.float64)
    need = max(1.0, share * hist.sum() / len(hist))
    return int((hist >= need).sum())


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
    """(softmax probabilities [N, 10], penultimate features [N, 128])."""
    probs, feats = [], []
    for i in range(0, len(x), chunk):
        f = clf.features(x[i:i + chunk]).float()
        feats.append(f)
        probs.append(clf.head(f).softmax(1))
    return torch.cat(probs), torch.cat(feats)


def eval_context(args, clf, x_train, x_heldout, device) -> dict:
    """What every evaluation of generators on this training set compares against:
    real test-image feature statistics, the training set for nearest-neighbour search,
    D probes of training and held-out images, fixed noise, and the same numbers for
    real images (the reference a generator is read against)."""
    n = min(args.eval_samples, len(x_heldout))
    probs, feats = classify(clf, x_heldout[:n])
    mu, cov = gaussian_stats(feats)
    g = torch.Generator().manual_seed(args.seed + 1)
    z_eval = torch.randn(args.eval_samples, args.z_dim, generator=g).to(device)
    ctx = {"clf": clf, "mu": mu, "cov": cov, "train": x_train, "train01": to_unit(x_train), "z_eval": z_eval,
           "probe_train": x_train[:args.pair_samples], "probe_heldout": x_heldout[:args.pair_samples]}
    # real images measured like samples: training images vs the held-out statistics (FD floor),
    # and held-out images' distance to their nearest training image (what "not copied" looks like)
    tr_probs, tr_feats = classify(clf, x_train[:n])
    hist = class_histogram(tr_probs.argmax(1))
    held_nn = common.nearest_distance(to_unit(x_heldout[:args.nn_samples]), ctx["train01"]).mean().item()
    ctx["real"] = {"coverage": mode_coverage(hist, args.coverage_share), "kl_uniform": kl_from_uniform(hist),
                   "confidence": tr_probs.max(1).values.mean().item(),
                   "fd_mnist_classifier": frechet_distance(*gaussian_stats(tr_feats), mu, cov),
                   "diversity": mean_pairwise_distance(to_unit(x_heldout[:args.pair_samples])),
                   "memorisation_distance": held_nn}
    return ctx


@torch.no_grad()
def evaluate(G, D, ctx, args) -> tuple[dict, list]:
    """(metrics, class histogram): every generator metric on the fixed evaluation
    noise, plus D's mean output on training vs held-out real images (eval mode:
    dropout off)."""
    x = generate(G, ctx["z_eval"], args.batch_size)                     # [N, 1, 28, 28] in [-1, 1]
    probs, feats = classify(ctx["clf"], x)
    hist = class_histogram(probs.argmax(1))
    u = to_unit(x)
    mem = common.nearest_distance(u[:args.nn_samples], ctx["train01"]).mean().item()
    D.eval()
    d_train = torch.cat([torch.sigmoid(D(b).float()) for b in ctx["probe_train"].split(args.batch_size)]).mean()
    d_held = torch.cat([torch.sigmoid(D(b).float()) for b in ctx["probe_heldout"].split(args.batch_size)]).mean()
    D.train()
    m = {"coverage": mode_coverage(hist, args.coverage_share), "kl_uniform": kl_from_uniform(hist),
         "confidence": probs.max(1).values.mean().item(),
         "fd_mnist_classifier": frechet_distance(*gaussian_stats(feats), ctx["mu"], ctx["cov"]),
         "diversity": mean_pairwise_distance(u[:args.pair_samples]),
         "memorisation_distance": mem,
         "memorisation_ratio": mem / max(ctx["real"]["memorisation_distance"], 1e-12),
         "d_train": d_train.item(), "d_heldout": d_held.item()}
    m["d_gap"] = m["d_train"] - m["d_heldout"]
    return m, hist.tolist()


# ----------------------------------------------------------------------------
# Training: one loop for every arm; per-iteration logs stay on the device
# ----------------------------------------------------------------------------

LOG_KEYS = ["d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm"]


def base_config(args, **changes) -> dict:
    """One training run's settings: the baseline, with `changes` applied."""
    cfg = {"arch": "assignment", "epochs": args.epochs, "batch": args.batch_size, "z_dim": args.z_dim,
           "g_lr": args.lr, "d_lr": args.lr, "betas": [args.beta1, args.beta2], "init_std": args.init_std,
           "g_loss": "non_saturating", "real_label": args.real_label, "d_dropout": args.d_dropout,
           "d_width": 256, "minibatch_std": False, "d_steps": 1, "g_steps": 1, "early_d_steps": 1,
           "early_iters": 0, "noise_std": 0.0, "noise_on": "d_input", "diffaug": False,
           "d_stop_frac": 1.0, "eval_every": args.eval_every, "max_iters_per_epoch": args.max_iters_per_epoch}
    cfg.update(changes)
    return cfg


def build_gan(cfg, device):
    if cfg["arch"] == "reference":
        G, D = ReferenceGenerator(cfg["z_dim"]), ReferenceDiscriminator()   # PyTorch default init, as there
    else:
        G = Generator(cfg["z_dim"])
        D = Discriminator(hidden=(cfg["d_width"],) * 2, dropout=cfg["d_dropout"], minibatch_std=cfg["minibatch_std"])
        G.apply(lambda m: init_gan_weights(m, cfg["init_std"]))
        D.apply(lambda m: init_gan_weights(m, cfg["init_std"]))
    return G.to(device), D.to(device)


def grad_norm(params) -> torch.Tensor:
    """L2 norm of all gradients together, as a device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def gan_iteration(G, D, opt_g, opt_d, real: torch.Tensor, sample_real, cfg: dict, it: int, total: int,
                  train_d: bool, device, augment=None) -> torch.Tensor:
    """One iteration: n_d D steps, then n_g G steps. `real` [B, 1, 28, 28] is this
    iteration's batch; extra D steps draw `sample_real()`. `augment` (DiffAugment or
    None) is applied to every image D sees, real and fake, in D and G steps alike.
    Returns the log row [5] (LOG_KEYS) as a device tensor: nothing here syncs."""
    B = real.shape[0]
    aug = augment or (lambda t: t)
    sigma = cfg["noise_std"] * max(0.0, 1.0 - it / max(1, total))        # annealed to 0 (Sonderby et al. 2016)
    d_noise = sigma if cfg["noise_on"] == "d_input" else 0.0
    z_noise = sigma if cfg["noise_on"] == "z" else 0.0

    def d_view(x):  # what D sees: noisy (instance noise), augmented
        return aug(x + d_noise * torch.randn_like(x) if d_noise else x)

    def latent(n):
        z = torch.randn(n, cfg["z_dim"], device=device)
        return z + z_noise * torch.randn_like(z) if z_noise else z

    n_d = cfg["early_d_steps"] if it < cfg["early_iters"] else cfg["d_steps"]
    D.requires_grad_(True)
    for k in range(n_d):
        x = real if k == 0 else sample_real()
        with torch.no_grad():
            fake = G(latent(B))
        with common.autocast(device):
            real_logits, fake_logits = D(d_view(x)), D(d_view(fake))
        d_loss = d_loss_fn(real_logits, fake_logits, cfg["real_label"])
        if train_d:
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
    D.requires_grad_(False)   # the G step needs gradients through D, not into D's weights
    for _ in range(cfg["g_steps"]):
        with common.autocast(device):
            fake = G(latent(B))
            if cfg["g_loss"] == "feature_matching":
                g_loss = feature_matching_loss(D.features(d_view(real)).detach(), D.features(d_view(fake)))
            else:
                g_loss = g_loss_fn(D(d_view(fake)), cfg["g_loss"])
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        g_norm = grad_norm(G.parameters())
        opt_g.step()
    D.requires_grad_(True)
    return torch.stack([d_loss.detach().float(), g_loss.detach().float(),
                        torch.sigmoid(real_logits.detach().float()).mean(),
                        torch.sigmoid(fake_logits.detach().float()).mean(), g_norm.float()])


def train_gan(name: str, cfg: dict, x_train: torch.Tensor, ctx: dict, args, device, data_tag: str) -> dict:
    """Train one GAN arm from a fixed seed and return its record: per-iteration logs
    [T, 5] (LOG_KEYS), evaluations at epoch 0, every cfg["eval_every"] epochs and the
    end, fixed-noise renderings, final samples. Cached under the settings; a NaN/inf
    stops this arm with `diverged` set and the caller goes on with the next arm."""
    settings = {"cfg": cfg, "data": data_tag, "n_train": len(x_train), "seed": args.seed,
                "classifier": classifier_settings(args), "eval": [args.eval_samples, args.pair_samples,
                                                                  args.nn_samples, args.coverage_share],
                "version": 1}
    path = common.cache_path(args.out, "gan-run", settings)
    cached = common.load_cache(path, args.fresh)
    if cached is not None and cached.get("settings") == settings:
        print(f"[{name}] cached run {path.name}")
        return cached

    common.seed_everything(args.seed)
    G, D = build_gan(cfg, device)
    fused = device.type == "cuda"   # one kernel per Adam step instead of one per tensor
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["g_lr"], betas=tuple(cfg["betas"]), fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["d_lr"], betas=tuple(cfg["betas"]), fused=fused)
    augment = None
    if cfg["diffaug"]:                  # [translate, cutout] fractions
        def augment(t):
            return diff_augment(t, *cfg["diffaug"])

    n, B = len(x_train), cfg["batch"]
    ipe = math.ceil(n / B)
    if cfg["max_iters_per_epoch"] > 0:
        ipe = min(ipe, cfg["max_iters_per_epoch"])
    total = cfg["epochs"] * ipe
    d_iters = max(1, math.ceil(cfg["d_stop_frac"] * ipe))   # D trains on the first d_iters batches per epoch
    log = torch.zeros(total, len(LOG_KEYS), device=device)
    z_show = ctx["z_eval"][:25]
    evals = {"epoch": [], "iteration": [], "hist": []}
    frames, diverged = [], ""

    def do_eval(epoch, it):
        m, hist = evaluate(G, D, ctx, args)
        evals["epoch"].append(epoch)
        evals["iteration"].append(it)
        evals["hist"].append(hist)
        for k, v in m.items():
            evals.setdefault(k, []).append(v)
        frames.append(to_uint8(generate(G, z_show[:10], B)))
        return m

    def sample_real():
        return x_train[torch.randint(0, n, (B,), device=device)]

    do_eval(0, 0)
    bar = tqdm(total=total, desc=name, leave=False, disable=None)
    it = 0
    t0 = time.perf_counter()
    try:
        for epoch in range(1, cfg["epochs"] + 1):
            start = it
            perm = torch.randperm(n, device=device)
            for i in range(ipe):
                real = x_train[perm[i * B:(i + 1) * B]]
                log[it] = gan_iteration(G, D, opt_g, opt_d, real, sample_real, cfg, it, total,
                                        train_d=i < d_iters, device=device, augment=augment)
                it += 1
                bar.update(1)
            rows = log[start:it]
            if not torch.isfinite(rows).all():            # one sync per epoch
                bad = int((~torch.isfinite(rows)).any(1).nonzero()[0]) + start
                col = LOG_KEYS[int((~torch.isfinite(log[bad])).nonzero()[0])]
                raise common.Diverged(f"{col} became {log[bad].tolist()[LOG_KEYS.index(col)]} at iteration {bad}")
            show = epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]
            if show or ipe >= 100:
                mean = dict(zip(LOG_KEYS, rows.mean(0).tolist()))
                line = (f"[{name}] epoch {epoch}/{cfg['epochs']}  D {mean['d_loss']:.3f}  G {mean['g_loss']:.3f}  "
                        f"D(x) {mean['d_real']:.3f}  D(G(z)) {mean['d_fake']:.3f}  |grad G| {mean['g_grad_norm']:.2e}")
                if show:
                    m = do_eval(epoch, it)
                    line += (f"  | coverage {m['coverage']}  KL {m['kl_uniform']:.3f}  "
                             f"FD {m['fd_mnist_classifier']:.2f}  div {m['diversity']:.2f}")
                tqdm.write(line)
    except common.Diverged as e:
        diverged = str(e)
        print(f"[{name}] diverged: {diverged}; this arm stops, the others go on", flush=True)
    bar.close()
    seconds = time.perf_counter() - t0
    samples = generate(G, z_show, B)
    nn_idx = torch.cdist(to_unit(samples[:8]).flatten(1), to_unit(x_train).flatten(1)).argmin(1)
    rec = {"settings": settings, "logs": log[:it].cpu(), "evals": evals, "diverged": diverged,
           "iters_per_epoch": ipe, "iterations": it, "train_seconds": seconds,
           "frames": torch.stack(frames), "samples": to_uint8(samples), "nearest": to_uint8(x_train[nn_idx])}
    if not diverged:
        print(f"[{name}] {it} iterations in {seconds:.1f} s ({it / max(seconds, 1e-9):.0f} it/s)", flush=True)
        common.save_cache(path, rec)
    return rec


# ----------------------------------------------------------------------------
# Summaries and figures shared by the experiments
# ----------------------------------------------------------------------------

EVAL_KEYS = ["coverage", "kl_uniform", "confidence", "fd_mnist_classifier", "diversity", "memorisation_distance",
             "memorisation_ratio", "d_train", "d_heldout", "d_gap"]


def final_metrics(rec: dict) -> dict:
    """The last evaluation of a run, plus its last epoch's mean logs; None where a
    diverged run has no value (None is written as null in metrics.json)."""
    ev = rec["evals"]
    out = {k: (ev[k][-1] if ev.get(k) else None) for k in EVAL_KEYS}
    logs = rec["logs"]
    tail = logs[-max(1, min(len(logs), rec["iters_per_epoch"])):] if len(logs) else None
    for j, k in enumerate(LOG_KEYS):
        out[f"last_epoch_{k}"] = float(tail[:, j].mean()) if tail is not None else None
    out["iterations"] = rec["iterations"]
    out["diverged"] = rec["diverged"] or "no"
    return out


def smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Moving average over n iterations ('valid' part), for readable per-iteration curves."""
    n = max(1, min(n, len(y)))
    return np.convolve(y, np.ones(n) / n, mode="valid")


def curve(rec, key, window=None):
    y = rec["logs"][:, LOG_KEYS.index(key)].numpy().astype(np.float64)
    w = window or max(1, len(y) // 200)
    ys = smooth(y, w)
    return np.arange(len(ys)) + (w - 1), ys


def mosaic(images: torch.Tensor, ncol: int) -> np.ndarray:
    """uint8 [N, 1, H, W] -> one [rows*(H+2), ncol*(W+2)] image in [0, 1], 2-px white gutters
    (visible against black backgrounds and against the flat grey of an untrained G)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / ncol)
    canvas = np.full((rows * (h + 2), ncol * (w + 2)), 1.0)
    x = images[:, 0].numpy() / 255.0
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = x[i]
    return canvas


def show_grid(ax, images: torch.Tensor, ncol: int, title: str, row_labels: list[str] | None = None):
    """One imshow per grid (fast, unlike one axis per image); row labels on the y axis."""
    ax.imshow(mosaic(images, ncol), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h = images.shape[-2] + 2
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([h * (r + 0.5) for r in range(len(row_labels))], row_labels, fontsize=8)
    else:
        ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def plot_dynamics(rec, path, title):
    """Three panels over iterations: D and G losses, mean D(x) and D(G(z)), |grad G|."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    common.line_plot(axes[0], {"D loss": curve(rec, "d_loss"), "G loss": curve(rec, "g_loss")},
                     "losses (moving average)", "iteration", "BCE loss")
    common.line_plot(axes[1], {"D(x) real": curve(rec, "d_real"), "D(G(z)) fake": curve(rec, "d_fake")},
                     "discriminator outputs", "iteration", "mean D output")
    axes[1].set_ylim(-0.02, 1.02)
    x, y = curve(rec, "g_grad_norm")
    common.line_plot(axes[2], {"|grad G|": (x, np.maximum(y, 1e-30))}, "gradient norm reaching G",
                     "iteration", "L2 norm of G's parameter gradient", logy=True)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def plot_progression(rec, path, title):
    """Fixed-noise renderings: one row per evaluation (epoch), 10 fixed z per row."""
    frames = rec["frames"]                                              # [E, 10, 1, 28, 28]
    fig, ax = plt.subplots(figsize=(7, 0.75 * len(frames) + 0.9))
    show_grid(ax, frames.flatten(0, 1), frames.shape[1], title,
              [f"epoch {e}" for e in rec["evals"]["epoch"][:len(frames)]])
    ax.set_xlabel("10 fixed noise vectors (the same in every row and every run)")
    return common.save_figure(fig, path)


def plot_eval_curves(recs: dict, path, title, keys=("coverage", "kl_uniform", "fd_mnist_classifier", "diversity"),
                     real=None):
    """Evaluation metrics over epochs, one curve per run; dashed line = real images."""
    labels = {"coverage": "digits covered (of 10)", "kl_uniform": "KL(class hist || uniform) [nats]",
              "fd_mnist_classifier": "FD-MNIST-classifier", "diversity": "mean pairwise L2 distance",
              "confidence": "classifier confidence", "memorisation_distance": "L2 to nearest training image",
              "d_gap": "D(train) - D(held-out)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        series = {name: (r["evals"]["epoch"], r["evals"][k]) for name, r in recs.items()}
        common.line_plot(ax, series, labels.get(k, k), "epoch", labels.get(k, k))
        if real is not None and k in real:
            ax.axhline(real[k], color="k", ls="--", lw=1, label="real images")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return common.save_figure(fig, path)


def arm_table(recs: dict, keys) -> str:
    """A console table: one row per arm."""
    head = f"{'arm':<18}" + "".join(f"{k[:14]:>16}" for k in keys)
    rows = [head]
    for name, r in recs.items():
        m = final_metrics(r)
        rows.append(f"{name:<18}" + "".join(
            f"{m[k]:>16.4g}" if isinstance(m.get(k), (int, float)) else f"{str(m.get(k))[:14]:>16}" for k in keys))
    return "\n".join(rows)


# ----------------------------------------------------------------------------
# Experiment 1: baseline
# ----------------------------------------------------------------------------


def run_baseline(args, data, ctx, device) -> dict:
    return train_gan("baseline", base_config(args), data["x_train"], ctx, args, device, data["tag"])


def baseline(args, data, ctx, clf_acc, device) -> dict:
    """The assignment's GAN at the assignment's settings: dynamics, fixed-noise
    progression, final 5x5 grid, generator metrics over training."""
    rec = run_baseline(args, data, ctx, device)
    plot_dynamics(rec, f"{args.out}/baseline_dynamics.png", "Baseline GAN: training dynamics (non-saturating loss)")
    plot_progression(rec, f"{args.out}/baseline_progression.png", "Baseline: fixed noise over training")
    fig, ax = plt.subplots(figsize=(4.2, 4.6))
    show_grid(ax, rec["samples"], 5, f"Baseline: 25 samples after {rec['iterations']} iterations")
    common.save_figure(fig, f"{args.out}/baseline_samples.png")
    plot_eval_curves({"baseline": rec}, f"{args.out}/baseline_eval.png",
                     "Baseline: generator metrics over training (dashed: real images)", real=ctx["real"])
    ev = rec["evals"]
    return {"classifier_test_acc": clf_acc, "final": final_metrics(rec), "real_images": ctx["real"],
            "over_training": {"epoch": ev["epoch"], **{k: ev[k] for k in EVAL_KEYS if k in ev}},
            "train_seconds": rec["train_seconds"]}


# ----------------------------------------------------------------------------
# Experiment 2: PyTorch-GAN's reference networks, same budget
# ----------------------------------------------------------------------------


def reference(args, data, ctx, clf_acc, device) -> dict:
    """PyTorch-GAN's gan.py networks with baseline's optimiser, loss, data, noise and
    budget; baseline's run comes from the cache when `baseline` ran first."""
    base = run_baseline(args, data, ctx, device)   # cached when baseline ran first
    rec = train_gan("reference", base_config(args, arch="reference"), data["x_train"], ctx, args, device, data["tag"])
    plot_dynamics(rec, f"{args.out}/reference_dynamics.png",
                  "Reference (PyTorch-GAN gan.py, BatchNorm G): training dynamics")
    plot_progression(rec, f"{args.out}/reference_progression.png", "Reference: fixed noise over training")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.6))
    show_grid(axes[0], base["samples"], 5, "baseline (assignment MLP)")
    show_grid(axes[1], rec["samples"], 5, "reference (PyTorch-GAN gan.py)")
    fig.suptitle(f"Same noise, same budget ({rec['iterations']} iterations)")
    common.save_figure(fig, f"{args.out}/reference_vs_baseline.png")
    plot_eval_curves({"baseline": base, "reference": rec}, f"{args.out}/reference_eval.png",
                     "Baseline vs reference over training (dashed: real images)", real=ctx["real"])
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in
                [("baseline_G", Generator(args.z_dim)), ("reference_G", ReferenceGenerator(args.z_dim)),
                 ("baseline_D", Discriminator()), ("reference_D", ReferenceDiscriminator())]}
    keys = ["coverage", "kl_uniform", "fd_mnist_classifier", "diversity", "confidence", "train_seconds"]
    print(arm_table({"baseline": base, "reference": rec}, keys[:-1]))
    return {"classifier_test_acc": clf_acc, "baseline": final_metrics(base), "reference": final_metrics(rec),
            "parameters": n_params, "train_seconds": {"baseline": base["train_seconds"],
                                                      "reference": rec["train_seconds"]}}


# ----------------------------------------------------------------------------
# Experiment 3: vanishing gradients
# ----------------------------------------------------------------------------


def grad_stats(rec) -> dict:
    """How far the gradient reaching G fell: median |grad G| over the first and the last
    10% of iterations (at most 100 each) and log10 of their ratio; how flat G's loss is
    at the end (its std over the last 10%)."""
    logs = rec["logs"]
    if len(logs) == 0:
        return {"grad_start": None, "grad_end": None, "grad_log10_drop": None, "g_loss_std_end": None}
    w = max(1, min(100, len(logs) // 10))
    g = logs[:, LOG_KEYS.index("g_grad_norm")].double()
    start, end = g[:w].median().item(), g[-w:].median().item()
    return {"grad_start": start, "grad_end": end,
            "grad_log10_drop": math.log10(max(start, 1e-300) / max(end, 1e-300)),
            "g_loss_std_end": logs[-w:, LOG_KEYS.index("g_loss")].double().std().item() if w > 1 else 0.0}


def vanishing(args, data, ctx, clf_acc, device) -> dict:
    """Every arm gets the same overpowering D (higher D lr, extra D steps early on) and
    the same learning rates; only the G loss and the real-label target differ. With the
    minimax loss the gradient reaching G is proportional to D(G(z)) (see g_loss_fn), so
    once D rejects every fake, G stops learning (Goodfellow et al. 2014, section 3)."""
    common_cfg = dict(epochs=args.vanish_epochs, d_lr=args.lr * args.vanish_d_lr_mult, real_label=1.0,
                      early_d_steps=args.vanish_d_steps, early_iters=args.vanish_warmup_iters,
                      eval_every=args.arm_eval_every)
    arms = {"saturating": dict(g_loss="saturating"),
            "non_saturating": dict(g_loss="non_saturating"),
            "label_smoothing": dict(g_loss="saturating", real_label=args.smooth_label),
            "both": dict(g_loss="non_saturating", real_label=args.smooth_label)}
    recs = {name: train_gan(f"vanishing/{name}", base_config(args, **{**common_cfg, **a}), data["x_train"], ctx,
                            args, device, data["tag"]) for name, a in arms.items()}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    panels = [("d_loss", "D loss", False), ("g_loss", "G loss", False), ("d_real", "mean D(x), real", False),
              ("d_fake", "mean D(G(z)), fake", False), ("g_grad_norm", "|grad G| (log scale)", True)]
    for ax, (key, label, logy) in zip(axes.flat, panels):
        series = {}
        for name, r in recs.items():
            x, y = curve(r, key)
            series[name] = (x, np.maximum(y, 1e-30) if logy else y)
        common.line_plot(ax, series, label, "iteration", label, logy=logy)
        if args.vanish_warmup_iters:
            ax.axvline(args.vanish_warmup_iters, color="grey", ls=":", lw=1)
    show_grid(axes.flat[5], torch.cat([r["samples"][:8] for r in recs.values()]), 8, "final samples",
              list(recs))
    fig.subplots_adjust(hspace=0.35)
    fig.suptitle(f"Vanishing gradients: D lr x{args.vanish_d_lr_mult:g}, {args.vanish_d_steps} D steps per G step "
                 f"for the first {args.vanish_warmup_iters} iterations (dotted); arms differ only in G loss / labels")
    common.save_figure(fig, f"{args.out}/vanishing_curves.png")
    out = {name: {**grad_stats(r), **final_metrics(r)} for name, r in recs.items()}
    print(arm_table(recs, ["last_epoch_d_loss", "last_epoch_d_fake", "last_epoch_g_grad_norm", "coverage",
                           "fd_mnist_classifier"]))
    return {"classifier_test_acc": clf_acc, "arms": out,
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


# ----------------------------------------------------------------------------
# Experiment 4: mode collapse
# ----------------------------------------------------------------------------


def mode_collapse(args, data, ctx, clf_acc, device) -> dict:
    """Provoke collapse with a G that outruns D (higher G lr, several G steps per D
    step); each cure is one change on top of that setting. Coverage, KL and the class
    histogram (from the MNIST classifier) show which digits survive."""
    provoke = dict(epochs=args.collapse_epochs, g_lr=args.lr * args.collapse_g_lr_mult,
                   g_steps=args.collapse_g_steps, d_width=args.collapse_d_width,
                   eval_every=args.arm_eval_every)
    arms = {"collapse": {},
            "more_d_steps": dict(g_steps=1, d_steps=args.cure_d_steps),
            "noise": dict(noise_std=args.noise_std, noise_on=args.noise_on),
            "minibatch_std": dict(minibatch_std=True),
            "feature_matching": dict(g_loss="feature_matching")}
    recs = {name: train_gan(f"mode_collapse/{name}", base_config(args, **{**provoke, **a}), data["x_train"], ctx,
                            args, device, data["tag"]) for name, a in arms.items()}
    # histograms: final class shares per arm; the provoked arm's shares over training
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    w = 0.8 / len(recs)
    for j, (name, r) in enumerate(recs.items()):
        h = np.asarray(r["evals"]["hist"][-1], dtype=float)
        axes[0].bar(np.arange(10) + (j - (len(recs) - 1) / 2) * w, h / max(h.sum(), 1), w, label=name)
    axes[0].axhline(0.1, color="k", ls="--", lw=1, label="uniform (real MNIST)")
    axes[0].set(xticks=range(10), xlabel="digit predicted by the MNIST classifier", ylabel="share of samples",
                title="final class histogram per arm")
    axes[0].legend(fontsize=7)
    hist = np.asarray(recs["collapse"]["evals"]["hist"], dtype=float)
    share = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    im = axes[1].imshow(share.T, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.2, share.max()))
    ep = recs["collapse"]["evals"]["epoch"]
    axes[1].set(yticks=range(10), ylabel="digit", xlabel="epoch", title="collapse arm: class shares over training",
                xticks=range(len(ep)), xticklabels=[str(e) for e in ep])
    fig.colorbar(im, ax=axes[1], label="share of samples")
    fig.suptitle(f"Mode collapse: G lr x{args.collapse_g_lr_mult:g}, {args.collapse_g_steps} G steps per D step")
    common.save_figure(fig, f"{args.out}/mode_collapse_histograms.png")
    plot_eval_curves(recs, f"{args.out}/mode_collapse_coverage.png", "Mode collapse and its cures over training",
                     real=ctx["real"])
    plot_progression(recs["collapse"], f"{args.out}/mode_collapse_progression.png",
                     "Collapse arm: fixed noise every few epochs")
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(recs) + 1))
    show_grid(ax, torch.cat([r["samples"][:10] for r in recs.values()]), 10, "final samples (same noise per column)",
              list(recs))
    common.save_figure(fig, f"{args.out}/mode_collapse_samples.png")
    keys = ["coverage", "kl_uniform", "fd_mnist_classifier", "diversity"]
    print(arm_table(recs, keys))
    return {"classifier_test_acc": clf_acc, "arms": {n: final_metrics(r) for n, r in recs.items()},
            "final_histograms": {n: r["evals"]["hist"][-1] for n, r in recs.items()},
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


# ----------------------------------------------------------------------------
# Experiment 5: discriminator overfitting on a small training set
# ----------------------------------------------------------------------------


def small_training_set(args, data):
    """(x_small, x_heldout, tag): the first --overfit-n training images, or up to
    --overfit-class-n of one digit; held out: test images (of that digit)."""
    if args.overfit_class >= 0:
        keep = (data["y_train"] == args.overfit_class).nonzero().squeeze(1)[:args.overfit_class_n]
        held = (data["y_test"] == args.overfit_class).nonzero().squeeze(1)
        return (data["x_train"][keep], data["x_test"][held],
                f"{data['tag']}-class{args.overfit_class}-n{len(keep)}")
    return data["x_train"][:args.overfit_n], data["x_test"], f"{data['tag']}-first{args.overfit_n}"


def d_overfit(args, data, clf, clf_acc, device) -> dict:
    """On a small training set D can memorise it: its output on training images rises
    above its output on held-out real images of the same distribution (the gap), and G,
    chasing that D, drifts towards copies (memorisation distance). Evaluation is
    against this small set (nearest neighbours) and the held-out test images."""
    x_small, x_held, tag = small_training_set(args, data)
    ctx = eval_context(args, clf, x_small, x_held, device)
    common_cfg = dict(epochs=args.overfit_epochs, eval_every=args.overfit_eval_every)
    arms = {"no_cure": {}, "dropout": dict(d_dropout=args.overfit_dropout),
            "d_early_stop": dict(d_stop_frac=args.d_stop_frac),
            "diffaugment": dict(diffaug=[args.diffaug_translate, args.diffaug_cutout])}
    recs = {name: train_gan(f"d_overfit/{name}", base_config(args, **{**common_cfg, **a}), x_small, ctx, args,
                            device, tag) for name, a in arms.items()}
    fig, axes = plt.subplots(1, len(recs) + 1, figsize=(4.2 * (len(recs) + 1), 3.9), sharey=False)
    for ax, (name, r) in zip(axes, recs.items()):
        ev = r["evals"]
        common.line_plot(ax, {"D(train images)": (ev["epoch"], ev["d_train"]),
                              "D(held-out images)": (ev["epoch"], ev["d_heldout"])},
                         name, "epoch", "mean D output (eval mode)")
        ax.set_ylim(-0.02, 1.02)
    common.line_plot(axes[-1], {n: (r["evals"]["epoch"], r["evals"]["d_gap"]) for n, r in recs.items()},
                     "gap D(train) - D(held-out)", "epoch", "gap")
    which = f"of digit {args.overfit_class}" if args.overfit_class >= 0 else "(the first of the train split)"
    fig.suptitle(f"Discriminator overfitting on {len(x_small)} training images {which}; held out: test images")
    common.save_figure(fig, f"{args.out}/d_overfit_gap.png")
    plot_eval_curves(recs, f"{args.out}/d_overfit_memorisation.png",
                     "Memorisation and quality on the small set (dashed: held-out real images)",
                     keys=("memorisation_distance", "fd_mnist_classifier", "diversity"), real=ctx["real"])
    fig, ax = plt.subplots(figsize=(8, 1.6 * len(recs) + 1))
    rows, labels = [], []
    for name, r in recs.items():
        rows += [r["samples"][:8], r["nearest"]]
        labels += [f"{name}: sample", "nearest train"]
    show_grid(ax, torch.cat(rows), 8, "samples and their nearest training images (L2)", labels)
    common.save_figure(fig, f"{args.out}/d_overfit_samples.png")
    print(arm_table(recs, ["d_gap", "memorisation_distance", "memorisation_ratio", "fd_mnist_classifier"]))
    out = {}
    for name, r in recs.items():
        gaps = [g for g in r["evals"]["d_gap"] if g is not None]
        out[name] = {**final_metrics(r), "max_d_gap": max(gaps) if gaps else None}
    return {"classifier_test_acc": clf_acc, "n_train": len(x_small), "real_images": ctx["real"], "arms": out,
            "diverged_arms": sum(bool(r["diverged"]) for r in recs.values())}


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def validate(args) -> None:
    if args.max_iters_per_epoch < 0:
        raise common.UserError(f"--max-iters-per-epoch must be >= 0, got {args.max_iters_per_epoch}")
    if args.vanish_warmup_iters < 0:
        raise common.UserError(f"--vanish-warmup-iters must be >= 0, got {args.vanish_warmup_iters}")
    if not -1 <= args.overfit_class <= 9:
        raise common.UserError(f"--overfit-class must be a digit 0..9 (or -1 for off), got {args.overfit_class}")
    if args.d_stop_frac == 0:
        raise common.UserError("--d-stop-frac must be > 0 (D has to train on some batches)")
    if args.eval_samples < 2 or args.pair_samples < 2:
        raise common.UserError("--eval-samples and --pair-samples must be at least 2")
    if args.nn_samples > args.eval_samples or args.pair_samples > args.eval_samples:
        raise common.UserError(f"--nn-samples ({args.nn_samples}) and --pair-samples ({args.pair_samples}) "
                               f"cannot exceed --eval-samples ({args.eval_samples})")


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv, smoke=SMOKE)
    with common.user_errors(parser.prog):
        validate(args)
        device = common.pick_device(args.device)
        common.seed_everything(args.seed)
        x_train, y_train, x_test, y_test = load_mnist(args, device)
        if "d_overfit" in args.experiments and args.overfit_class < 0 and args.overfit_n > len(x_train):
            raise common.UserError(f"--overfit-n {args.overfit_n} exceeds the {len(x_train)} training images")
        data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                "tag": "smoke-digits" if args.smoke else "mnist"}
        clf, clf_acc = get_classifier(args, x_train, y_train, x_test, y_test, device)
        ctx = eval_context(args, clf, x_train, x_test, device)
        results = common.Results("task3", args, device)
        results.run({
            "baseline": lambda: baseline(args, data, ctx, clf_acc, device),
            "reference": lambda: reference(args, data, ctx, clf_acc, device),
            "vanishing": lambda: vanishing(args, data, ctx, clf_acc, device),
            "mode_collapse": lambda: mode_collapse(args, data, ctx, clf_acc, device),
            "d_overfit": lambda: d_overfit(args, data, clf, clf_acc, device),
        })
    return results


if __name__ == "__main__":
    main()
