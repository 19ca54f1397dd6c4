"""Task 5: the assignment's convolutional VAE on FashionMNIST (or MNIST): the two
terms of the ELBO, reconstructions, samples, the latent space, a tighter likelihood
bound, and posterior collapse: the assignment's own loss collapses, why, and which
cure works where.

Run:   python Task5.py                          (FashionMNIST, all experiments)
       python Task5.py --data-root DATA --experiments collapse_sweep
       python Task5.py --dataset mnist --experiments train,generate
       python Task5.py --smoke --out /tmp/t5    (offline, seconds)
       python Task5.py --replot                 (redraw the figures from metrics.json, computing nothing)
Writes into --out (default outputs/task5/): each experiment's figures, <experiment>_<what>.png
(listed, and drawn, in reports/task5.py), metrics.json (flags as "config", Recipe constants as
"recipe"), summary.md, cache/ (trained weights with their history; plot/<experiment>.npz, the
arrays the figures are drawn from)

The loss is the negative ELBO (Kingma & Welling 2014) per image:
  reconstruction  sum over 784 pixels of (x - x_hat)^2          (or BCE with --recon bce)
  KL              KL(q(z|x) || N(0, I)) in closed form, summed over latent dimensions
Summed squared error is -log N(x; x_hat, 0.5 I) up to the constant 392 log(pi), so the
MSE model is a proper Gaussian decoder with variance 0.5 and its ELBO a bound on a
log-density; `likelihood` adds that constant back. SSE + beta * KL is the same
Gaussian with variance beta / 2. The assignment's literal loss, nn.MSELoss() (the
mean over pixels) + KL, is (SSE + 784 KL) / 784: beta = 784, variance 392.
"""
from __future__ import annotations

import dataclasses, functools  # noqa: E401
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

import common
import harness
from architecture import VAE
from reports import task5 as report
from reports.task5 import SWEEP_METHODS, TERMS, format_mi, shown_beta

EXPERIMENTS = ["train", "reconstruct", "generate", "collapse", "collapse_sweep", "mitigate", "latent", "likelihood"]

# ----------------------------------------------------------------------------
# Config: the flags a student varies, and the recipe's constants
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Task 5's constants that are not flags, each with its source; metrics.json records them."""
    # KL warm-up (Bowman et al. 2016) in collapse_sweep: epochs over which beta rises linearly from
    # 0. Ours: 2 of its 5 epochs per run (mitigate's warm-up is the flag --warmup-epochs).
    sweep_warmup_epochs: int = 2
    # Aggressive encoder (He et al. 2019, "Lagging Inference Networks", Algorithm 1): the inner
    # encoder loop stops when the mean loss of `aggressive_window` steps no longer falls, or after
    # `aggressive_max_steps` encoder steps per decoder step; 10 and 100 are their image setting.
    aggressive_window: int = 10
    aggressive_max_steps: int = 100
    # Free bits (Kingma et al. 2016, appendix C.8): KL floor per latent dimension in nats. Ours.
    free_bits: float = 0.5
    # The scoring CNN (common.scoring_classifier, shared with Task 3): epochs and first-stage
    # channels. Ours; on MNIST it warns when it ends below 99% test accuracy.
    clf_epochs: int = 3
    clf_width: int = 32
    # Evaluation sample counts, ours:
    n_samples: int = 1000   # decoded samples per prior for the sample-quality proxies (mitigate shows 8 per arm)
    n_vis: int = 2000       # test images in the t-SNE of posterior means
    iwae_k: int = 1000      # importance samples per image, IWAE bound (Burda et al. 2016 evaluate with 5,000)
    iwae_n: int = 1000      # test images the likelihood is estimated on

    def __post_init__(self):  # every field is positive; mitigate's figure shows 8 samples, a t-SNE needs 5 points
        for name, lo in ({f.name: 0 for f in dataclasses.fields(self)} | {"n_samples": 7, "n_vis": 4}).items():
            if not getattr(self, name) > lo:
                raise ValueError(f"Recipe.{name} = {getattr(self, name)} must exceed {lo}")


# --smoke: seconds on a CPU; SMOKE the flags a user left at their defaults, SMOKE_RECIPE the recipe.
SMOKE = dict(epochs=2, val_size=200, train_size=500, batch_size=64, warmup_epochs=1, sweep_size=64, sweep_val=64,
             sweep_epochs=2)
SMOKE_RECIPE = replace(Recipe(), sweep_warmup_epochs=1, aggressive_window=2, aggressive_max_steps=4,
                       clf_epochs=2, clf_width=16, n_samples=64, n_vis=200, iwae_k=32, iwae_n=32)


def build_parser() -> harness.Parser:
    p = harness.make_parser("task5", __doc__, EXPERIMENTS)
    # Each numeric flag's type states its range (harness.Bounded); check_args refuses bad combinations.
    g = p.add_argument_group("task 5: the VAE (defaults are ours where the assignment is silent)")
    g.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"],
                   help="training data (fashion-mnist is the assignment's)")
    g.add_argument("--epochs", type=harness.positive_int, default=20, help="epochs for every full-data VAE here")
    g.add_argument("--batch-size", type=harness.positive_int, default=128, help="images per minibatch")
    g.add_argument("--lr", type=harness.positive_float, default=1e-3, help="Adam learning rate")
    g.add_argument("--latent-dim", type=harness.positive_int, default=20, help="latent dimensions (the assignment's)")
    g.add_argument("--recon", default="mse", choices=["mse", "bce"],
                   help="reconstruction term, summed over pixels per image")
    g.add_argument("--val-size", type=harness.positive_int, default=5000,
                   help="training images held out for validation curves")
    g.add_argument("--train-size", type=harness.positive_int, default=None,
                   help="train on a seeded subset of this many images; without it, all the rest (55,000)")

    g = p.add_argument_group("task 5: posterior collapse and its cures (collapse, collapse_sweep, mitigate)")
    g.add_argument("--mitigate-beta", type=harness.positive_float, default=1.0,
                   help="KL weight at which `mitigate` compares the optimisation-side cures (warm-up, aggressive "
                        "encoder, learning rates) with plain training; collapse_sweep shows where they can work")
    g.add_argument("--warmup-epochs", type=harness.positive_int, default=10,
                   help="KL warm-up (Bowman et al. 2016): beta rises linearly from 0 over this many of the epochs")
    g.add_argument("--enc-lr", type=harness.positive_float, default=1e-3,
                   help="separate learning rates: the encoder's Adam learning rate")
    g.add_argument("--dec-lr", type=harness.positive_float, default=1e-4,
                   help="separate learning rates: the decoder's, slower so the encoder keeps up")
    g.add_argument("--sweep-betas", type=harness.BoundedList(harness.positive_float),
                   default=[1.0, 3.0, 10.0, 30.0, 100.0, 784.0], metavar="B,B",
                   help="collapse_sweep: KL weights (784 = the assignment's literal loss)")
    g.add_argument("--sweep-size", type=harness.positive_int, default=5000, help="collapse_sweep: seeded subset")
    g.add_argument("--sweep-val", type=harness.positive_int, default=2000,
                   help="collapse_sweep: validation images its numbers are measured on")
    g.add_argument("--sweep-epochs", type=harness.positive_int, default=5, help="collapse_sweep: epochs per run")
    return p


def check_args(args) -> None:
    """Flags that only make sense together or with the recipe: one line, exit 2, before anything runs."""
    r = SMOKE_RECIPE if args.smoke else Recipe()
    if "mitigate" in args.experiments:
        harness.require(args.warmup_epochs < args.epochs,
                        f"--warmup-epochs {args.warmup_epochs} must be below --epochs {args.epochs}: otherwise beta "
                        f"never reaches its final value and the warm-up arm trains a different objective")
    if "collapse_sweep" in args.experiments:
        harness.require(r.sweep_warmup_epochs < args.sweep_epochs,
                        f"--sweep-epochs {args.sweep_epochs} must exceed collapse_sweep's KL warm-up of "
                        f"{r.sweep_warmup_epochs} epochs (Recipe.sweep_warmup_epochs in Task5.py)")
        harness.require(args.sweep_val <= args.val_size,
                        f"--sweep-val {args.sweep_val} exceeds --val-size {args.val_size} (it measures on the "
                        f"first images of the validation split)")
        harness.require(args.train_size is None or args.sweep_size <= args.train_size,
                        f"--sweep-size {args.sweep_size} exceeds --train-size {args.train_size}")


# ----------------------------------------------------------------------------
# Data: the whole dataset lives on the device as one float tensor in [0, 1]
# ----------------------------------------------------------------------------


def load_data(args, device) -> dict:
    """{x_train, x_val, x_test: float [N, 1, 28, 28] in [0, 1] on device; y_*: int64; classes}.
    The validation split is the last `val_size` images of a seeded shuffle of train;
    --train-size keeps the first that many of the rest."""
    x, y, classes = common.load_split(args.dataset, args.data_root, train=True, smoke=args.smoke, seed=args.seed)
    xt, yt, _ = common.load_split(args.dataset, args.data_root, train=False, smoke=args.smoke, seed=args.seed)
    if args.val_size >= len(x):
        raise harness.UserError(f"--val-size {args.val_size} leaves no training images (the set has {len(x)})")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    tr, va = order[:-args.val_size], order[-args.val_size:]
    if args.train_size is not None:
        tr = tr[:args.train_size]
    to = lambda t: (t.float() / 255.0).to(device)  # noqa: E731  uint8 -> [0, 1], the sigmoid decoder's range
    return {"x_train": to(x[tr]), "y_train": y[tr].to(device), "x_val": to(x[va]), "y_val": y[va].to(device),
            "x_test": to(xt), "y_test": yt.to(device), "classes": classes}


def pc_variances(x: torch.Tensor) -> torch.Tensor:
    """Variances of the data along its principal directions, descending [784]: the
    eigenvalues of the pixel covariance (pixels in [0, 1], per image). A linear
    Gaussian VAE with decoder variance s2 keeps latent d active only while the d-th
    of these exceeds s2 (Lucas et al. 2019, "Don't blame the ELBO", section 4). In float64,
    on the CPU: MPS has no float64, and a 784x784 covariance costs the CPU a second."""
    f = x.flatten(1).cpu().double()
    f = f - f.mean(0)
    return torch.linalg.eigvalsh(f.T @ f / (len(f) - 1)).flip(0).float().cpu()


# ----------------------------------------------------------------------------
# The ELBO's terms and the diagnostics of collapse
# ----------------------------------------------------------------------------

HALF_LOG_PI = 0.5 * math.log(math.pi)  # -log N(x; m, 0.5) = (x - m)^2 + 0.5 log(pi), per pixel
LOG_SIGMA_MIN = -6.0  # the calibrated decoder's soft floor on log sigma (Rybkin et al. 2021, their code)


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


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[float, float]:
    """I(x; z) under q, the mixture estimator of He et al. 2019 (their calc_mi):
    E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], with q(z) the batch's mixture of
    posteriors and one z per x. 0 when q(z|x) ignores x; at most log N for N points.
    Returns (estimate, its standard error) in nats: the estimate is a mean over the N
    points of t_i = -H[q(z|x_i)] - log q(z_i), so its noise is std(t) / sqrt(N); a
    collapsed model's estimate scatters around 0 by that much, either side."""
    n, d = mu.shape
    mu, logvar = mu.float(), logvar.float()
    neg_entropy = -0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(1)  # [N]
    z = VAE.reparameterize(mu, logvar)                                           # [N, D], one z per x
    var = logvar.exp()
    # log q(z_i | x_j) for all pairs: [N, N]
    log_q = -0.5 * (((z[:, None] - mu[None]) ** 2) / var[None] + logvar[None] + math.log(2 * math.pi)).sum(-1)
    log_qz = torch.logsumexp(log_q, dim=1) - math.log(n)
    t = neg_entropy - log_qz
    return float(t.mean()), float(t.std() / math.sqrt(n)) if n > 1 else 0.0


# ----------------------------------------------------------------------------
# Training: one loop for every VAE here; arms differ in their loss and schedule
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeConfig:
    """One training recipe: every field that changes the trained weights. Arms are
    `dataclasses.replace(base, ...)` of the run's `from_args(args, recipe)`: a misspelt
    field is a TypeError.
      loss   "sum":     recon summed over pixels + beta * KL    (for mse: Gaussian, variance beta/2)
             "literal": the assignment's nn.MSELoss() (mean over pixels and images) + beta * KL
             "sigma":   calibrated Gaussian decoder, variance = the batch's MSE (Rybkin et al. 2021)
    `name` only labels progress lines: it takes no part in equality, so equal recipes
    under two names (`plain` at --mitigate-beta 1 is `vae`) are one network."""
    epochs: int
    latent_dim: int
    enc_lr: float
    dec_lr: float
    aggressive_window: int      # the aggressive encoder loop's window and cap (aggressive runs only; Recipe)
    aggressive_max_steps: int
    loss: str = "sum"
    beta: float = 1.0
    warmup_epochs: int = 0
    free_bits: float = 0.0
    aggressive: bool = False
    name: str = field(default="vae", compare=False)

    @classmethod
    def from_args(cls, args, r: Recipe) -> VaeConfig:
        return cls(epochs=args.epochs, latent_dim=args.latent_dim, enc_lr=args.lr, dec_lr=args.lr,
                   aggressive_window=r.aggressive_window, aggressive_max_steps=r.aggressive_max_steps)

    def key(self) -> dict:
        """The fields of the cache key: all but the name, and the aggressive loop's two
        settings only where the run is aggressive (no other run depends on them)."""
        d = asdict(self)
        del d["name"]
        if not self.aggressive:
            del d["aggressive_window"], d["aggressive_max_steps"]
        return d


def arm_configs(args, r: Recipe) -> dict[str, VaeConfig]:
    """Every network the full-data experiments train, by name."""
    base = VaeConfig.from_args(args, r)
    cure = replace(base, beta=args.mitigate_beta)  # the optimisation-side cures' setting
    arms = {"vae": base, "latent2": replace(base, latent_dim=2), "literal": replace(base, loss="literal"),
            "literal_free_bits": replace(base, loss="literal", free_bits=r.free_bits),
            "sigma": replace(base, loss="sigma"), "plain": cure,
            "warmup": replace(cure, warmup_epochs=args.warmup_epochs), "aggressive": replace(cure, aggressive=True),
            "lr_split": replace(cure, enc_lr=args.enc_lr, dec_lr=args.dec_lr)}
    return {name: replace(cfg, name=name) for name, cfg in arms.items()}


def vae_objective(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, loss: str,
                  beta: float, free_bits: float, recon: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss of one minibatch (a scalar) and, for the logs, the reconstruction
    term of kind `recon` [B] and the KL [B] per image (always the true KL).

    KL_term = sum_d max(KL_d, free_bits), KL_d the batch mean of dimension d's KL
              (free bits, Kingma et al. 2016, eq. in appendix C.8), or the plain sum.
    loss "sum":     mean_b recon_b + beta * KL_term
    loss "literal": F.mse_loss(x_hat, x) + beta * KL_term = (SSE + 784 beta KL) / 784 per image
    loss "sigma":   mean_b [SSE_b / (2 s2) + 784 log s] + beta * KL_term, with s2 the batch's mean
                    squared error per pixel, the variance that minimises this Gaussian's negative
                    log-likelihood (Rybkin et al. 2021, "optimal sigma"; log s soft-clipped at -6)."""
    rec = reconstruction_loss(x_hat, x, recon)                                # [B]
    kl = kl_divergence(mu, logvar)                                            # [B, D]
    kl_d = kl.mean(0)
    kl_term = kl_d.clamp(min=free_bits).sum() if free_bits > 0 else kl_d.sum()
    if loss == "literal":
        rec_term = F.mse_loss(x_hat, x)
    elif loss == "sigma":
        sse = (x_hat - x).pow(2).flatten(1).sum(1)                           # [B]
        mse = sse.mean().detach() / x[0].numel()                              # s2; its gradient is 0 at the optimum
        log_sigma = LOG_SIGMA_MIN + F.softplus(0.5 * torch.log(mse) - LOG_SIGMA_MIN)
        rec_term = (sse / (2 * torch.exp(2 * log_sigma)) + x[0].numel() * log_sigma).mean()
    else:
        rec_term = rec.mean()
    return rec_term + beta * kl_term, rec, kl.sum(1)


def encoder_catch_up(step, batches, window: int, max_steps: int) -> int:
    """The inner loop of aggressive training (He et al. 2019, Algorithm 1 lines 5-9, as
    in their image.py): encoder-only updates on fresh minibatches until the mean loss
    over the last `window` steps is no lower than over the window before (the first
    window is compared with +inf), or `max_steps` updates. `step(batch)` makes one
    update and returns its loss; `batches` yields minibatches (the outer batch first).
    Returns the number of updates made."""
    prev, cur = math.inf, 0.0
    for n in range(1, max_steps + 1):
        cur = cur + step(next(batches))                    # a tensor: one sync per window, not per step
        if n % window == 0:
            mean = float(cur) / window
            if mean >= prev:
                return n
            prev, cur = mean, 0.0
    return max_steps


@torch.no_grad()
def evaluate(model, x, args, batch: int = 1000) -> dict:
    """Per-image means of the loss terms over x (z sampled once per image), the
    per-dimension KL [D], active units, and I(x;z) with its standard error on the
    first 1,000 images (reported as max(0, estimate): an information is never negative)."""
    was_training = model.training
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
    mi, mi_se = mutual_information(mu[:1000], logvar[:1000])
    model.train(was_training)
    return {"recon": rec, "kl": float(kl_dims.sum()), "total": rec + float(kl_dims.sum()),
            "kl_per_dim": kl_dims.tolist(), "active_units": active_units(mu),
            "mutual_info": max(0.0, mi), "mutual_info_estimate": mi, "mutual_info_se": mi_se}


def vae_loss(model: VAE, xb: torch.Tensor, cfg: VaeConfig, beta_t: float, recon: str, device,
             frozen_encoder: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vae_objective of one minibatch under autocast; frozen_encoder: the decoder's step of
    aggressive training, with no encoder gradients."""
    with common.autocast(device, train=True):
        if frozen_encoder:
            with torch.no_grad():
                mu, logvar = model.encode(xb)
            x_hat = model.decode(model.reparameterize(mu, logvar))
        else:
            x_hat, mu, logvar = model(xb)
    return vae_objective(x_hat.float(), xb, mu.float(), logvar.float(), cfg.loss, beta_t, cfg.free_bits, recon)


def train_epoch(model: VAE, update, x_train: torch.Tensor, cfg: VaeConfig, args, device, epoch: int,
                aggressive: bool) -> tuple[torch.Tensor, int, float]:
    """One pass over x_train in a fresh random order; `update(loss)` makes one optimiser step.
    beta_t = beta * min(1, step / warm-up steps)      (KL warm-up, Bowman et al. 2016)
    Aggressive (He et al. 2019, Algorithm 1): before every decoder step the encoder alone is
    trained to convergence (encoder_catch_up), then one step updates the decoder alone; no
    gradient is computed for the half that does not move. Returns the sums over images of
    [total, recon, KL, SSE] (on device), the encoder steps made and the last beta_t."""
    n, bs = len(x_train), args.batch_size
    steps = math.ceil(n / bs)
    warmup_steps = cfg.warmup_epochs * steps
    dec = [p for name, p in model.named_parameters() if name.startswith(VAE.DECODER)]
    perm = torch.randperm(n, device=device)
    sums = torch.zeros(4, device=device)
    inner, beta_t = 0, cfg.beta

    def encoder_step(xe):  # one encoder-only update at the current beta_t
        loss = vae_loss(model, xe, cfg, beta_t, args.recon, device)[0]
        update(loss)
        return loss.detach()

    def random_batches(first):
        yield first
        while True:
            yield x_train[torch.randint(0, n, (min(bs, n),), device=device)]

    for i in harness.progress(range(steps), desc=f"{cfg.name} {epoch + 1}/{cfg.epochs}"):
        xb = x_train[perm[i * bs:(i + 1) * bs]]
        step = epoch * steps + i
        beta_t = cfg.beta * min(1.0, step / warmup_steps) if warmup_steps else cfg.beta
        if aggressive:  # decoder frozen: backward computes the encoder's gradients only
            for p in dec:
                p.requires_grad_(False)
            inner += encoder_catch_up(encoder_step, random_batches(xb), cfg.aggressive_window,
                                      cfg.aggressive_max_steps)
            for p in dec:
                p.requires_grad_(True)
        loss, rec, kl = vae_loss(model, xb, cfg, beta_t, args.recon, device, frozen_encoder=aggressive)
        update(loss)
        sums += torch.stack([(rec + kl).sum(), rec.sum(), kl.sum(),
                             rec.sum() if args.recon == "mse" else torch.zeros((), device=device)]).detach()
    return sums, inner, beta_t


def train_vae(x_train: torch.Tensor, x_val: torch.Tensor, cfg: VaeConfig, args, device) -> tuple[VAE, dict]:
    """Train a VAE from scratch on x_train with the recipe `cfg`, evaluating on x_val after
    every epoch. Encoder and decoder are two Adam parameter groups (enc_lr, dec_lr). The
    aggressive phase ends after the first epoch whose validation I(x;z) is lower than the
    epoch before's (He et al.'s text.py; Algorithm 1 line 20), then training is plain.
    Returns the model (eval mode) and its history per epoch: train/val total, recon, KL,
    val per-dimension KL, active units, I(x;z) and its error, beta, encoder steps."""
    common.seed_everything(args.seed)
    model = VAE(cfg.latent_dim).to(device)
    if device.type in common.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    enc = [p for n, p in model.named_parameters() if n.startswith(VAE.ENCODER)]
    dec = [p for n, p in model.named_parameters() if n.startswith(VAE.DECODER)]
    # Adam skips parameters whose .grad is None, so one optimiser serves joint, encoder-only
    # and decoder-only steps.
    opt = torch.optim.Adam([{"params": enc, "lr": cfg.enc_lr}, {"params": dec, "lr": cfg.dec_lr}])
    update = functools.partial(common.optimiser_step, opt=opt, scaler=common.grad_scaler(device))

    steps_per_epoch, aggressive, hist = math.ceil(len(x_train) / args.batch_size), cfg.aggressive, {}
    for epoch in range(cfg.epochs):
        sums, inner, beta_t = train_epoch(model, update, x_train, cfg, args, device, epoch, aggressive)
        common.check_finite(sums, f"{cfg.name}: the training loss")  # one sync per epoch
        tr, ev = (sums / len(x_train)).tolist(), evaluate(model, x_val, args)
        enc_steps = inner / steps_per_epoch if aggressive else 0.0
        for k, v in [("train_total", tr[0]), ("train_recon", tr[1]), ("train_kl", tr[2]),
                     ("train_mse_per_pixel", tr[3] / x_train[0].numel() if args.recon == "mse" else None),
                     *((f"val_{k}", ev[k]) for k in ["total", "recon", "kl", "kl_per_dim"]),
                     ("active_units", ev["active_units"]), ("mutual_info", ev["mutual_info_estimate"]),
                     ("mutual_info_se", ev["mutual_info_se"]), ("beta", beta_t),
                     ("encoder_steps_per_decoder_step", enc_steps)]:
            hist.setdefault(k, []).append(v)
        print(f"{cfg.name} epoch {epoch + 1:>2}/{cfg.epochs}  train {tr[0]:8.2f} (rec {tr[1]:7.2f} kl {tr[2]:6.2f})  "
              f"val {ev['total']:8.2f} (rec {ev['recon']:7.2f} kl {ev['kl']:6.2f})  "
              f"AU {ev['active_units']:>2}/{cfg.latent_dim}  I(x;z) "
              f"{format_mi(ev['mutual_info_estimate'], ev['mutual_info_se'])}  {shown_beta(cfg.loss, beta_t)}"
              + (f"  encoder steps/decoder step {enc_steps:.1f}" if aggressive else ""), flush=True)
        if aggressive and epoch > 0 and hist["mutual_info"][-1] < hist["mutual_info"][-2]:
            aggressive = False                                           # I(x;z) stopped rising
            print(f"{cfg.name}: aggressive phase ends after epoch {epoch + 1} (I(x;z) fell)", flush=True)
    hist["aggressive_epochs"] = sum(1 for s in hist["encoder_steps_per_decoder_step"] if s > 0)
    model.eval()
    return model, hist


def training_split(data: dict, args, which: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x_train, x_val, the tag naming them in cache keys) of "full", the run's own splits,
    or "sweep": collapse_sweep's seeded subset of --sweep-size training images, measured on
    the first --sweep-val validation images."""
    tag = {"dataset": args.dataset, "smoke": args.smoke, "val_size": args.val_size}
    x_train, x_val = data["x_train"], data["x_val"]
    if which == "full":
        return x_train, x_val, {"train": len(x_train), "val": len(x_val), **tag, "train_size": args.train_size}
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[:args.sweep_size]
    x_tr, x_va = x_train[idx.to(x_train.device)], x_val[:args.sweep_val]
    return x_tr, x_va, {"train": f"sweep subset {len(x_tr)}", "val": len(x_va), **tag}


def fit_or_load(cfg: VaeConfig, split: tuple[torch.Tensor, torch.Tensor, dict], args, device,
                cached: harness.Cache) -> tuple[VAE, dict]:
    """Train an arm, or load it from out/cache when the same settings, data, precision and code trained it
    before; the file holds the weights and the training history. A diverged run is remembered too (its cache
    entry says so), so no later experiment or rerun trains it again; --fresh retries it."""
    x_train, x_val, data_tag = split
    settings = {**cfg.key(), **data_tag, "batch_size": args.batch_size, "recon": args.recon, "seed": args.seed,
                "precision": common.compute_dtype(device, train=True)}
    trained = {}

    def fit() -> dict:
        t0 = time.perf_counter()
        try:
            trained["model"], hist = train_vae(x_train, x_val, cfg, args, device)
        except harness.Diverged as e:
            trained["model"] = None
            return {"diverged": str(e)}
        hist["train_seconds"] = time.perf_counter() - t0
        return {"state_dict": {k: v.cpu() for k, v in trained["model"].state_dict().items()}, "history": hist}

    # Looked up when called: the functions in use are hashed, whatever they are.
    got = cached("vae", settings, fit, code=(VAE, VaeConfig, vae_objective, encoder_catch_up, vae_loss, train_epoch,
                                             train_vae, kl_divergence, reconstruction_loss))
    if "diverged" in got:
        raise harness.Diverged(got["diverged"] if trained else
                               f"{got['diverged']} (remembered from an earlier run; --fresh retries)")
    if trained:
        return trained["model"], got["history"]
    model = VAE(cfg.latent_dim).to(device)
    model.load_state_dict(got["state_dict"])
    print(f"{cfg.name}: loaded trained weights", flush=True)
    return model.eval(), got["history"]


# ----------------------------------------------------------------------------
# Experiments: each returns its metrics and the arrays its figures need;
# reports/task5.py draws them, in the run and under --replot
# ----------------------------------------------------------------------------


def sample_quality(clf, images: torch.Tensor, x_train: torch.Tensor) -> dict:
    """The shared proxies of Tasks 3 and 5 (common.sample_quality): the classes the CNN
    assigns a share of the samples to (coverage), its mean max-probability (confidence:
    low for a blurry average) and the RMSE to the nearest training image (0: copying)."""
    return common.sample_quality(common.classify_digits(clf, images)[0], images, x_train)


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


def train(hist: dict, test: dict, n_train: int) -> tuple[dict, dict]:
    """The assignment's VAE at beta = 1: ELBO terms per epoch, train and validation."""
    return {"final_train": {k: hist[f"train_{k}"][-1] for k in TERMS},
            "final_val": {k: hist[f"val_{k}"][-1] for k in TERMS},
            "test": {k: test[k] for k in ["total", "recon", "kl", "active_units", "mutual_info", "mutual_info_se"]},
            "epochs": len(hist["train_total"]), "train_images": n_train, "train_seconds": hist.get("train_seconds")}, \
        {f"{s}_{k}": hist[f"{s}_{k}"] for s in ["train", "val"] for k in TERMS}


@torch.no_grad()
def reconstruct(model: VAE, test: dict, x_test: torch.Tensor, n: int = 16) -> tuple[dict, dict]:
    """Test images above their reconstructions (decoded from the posterior mean)."""
    x = x_test[:n]
    x_hat = model.decode(model.encode(x)[0])
    sse = float((x_hat - x).pow(2).flatten(1).sum(1).mean())
    print(f"reconstruct: SSE {sse:.2f} per image on the {len(x)} shown (from E[z|x]); test set {test['recon']:.2f}")
    return {"test_recon_per_image": test["recon"], "shown_sse_per_image": sse,
            "shown_rmse_per_pixel": math.sqrt(sse / 784)}, {"images": torch.cat([x, x_hat])}


def real_test_sample(data: dict, n: int, seed: int) -> torch.Tensor:
    """n seeded test images: the sample-quality proxies' reference values."""
    idx = torch.randperm(len(data["x_test"]), generator=torch.Generator().manual_seed(seed))[:n]
    return data["x_test"][idx.to(data["x_test"].device)]


@torch.no_grad()
def generate(model: VAE, scorer: tuple, data: dict, n: int, seed: int, device) -> tuple[dict, dict]:
    """n samples from the Gaussian prior the model was trained with vs a Laplace prior
    of the same variance, scored by the CNN and by distance to the training set."""
    clf, clf_acc = scorer
    out, shown = {"classifier_test_acc": clf_acc}, {}
    for prior in ["gaussian", "laplace"]:
        s = decode_prior(model, n, device, prior, seed=seed)
        out[prior] = sample_quality(clf, s, data["x_train"])
        shown[prior] = s[:64]
    out["real_test_images"] = sample_quality(clf, real_test_sample(data, n, seed), data["x_train"])
    return out, shown


@torch.no_grad()
def collapse(healthy: tuple[VAE, dict], literal: tuple[VAE, dict], ev_h: dict, ev_l: dict, data: dict,
             seed: int) -> tuple[dict, dict]:
    """The assignment's literal loss, nn.MSELoss() + KL, beside the summed-SSE VAE.
    MSELoss averages the squared error over 784 pixels while the KL is summed over the
    latent dimensions, so the loss is (SSE + 784 KL) / 784: beta = 784, a Gaussian
    decoder of variance 392 per pixel. A latent direction earns its KL only where the
    data vary along it by more than that (Lucas et al. 2019), and no direction of
    FashionMNIST does: the optimum ignores x. Diagnosed with per-dimension KL, active
    units, I(x;z) over training, and reconstructions next to the mean image."""
    (model_h, h_hist), (model_l, l_hist) = healthy, literal
    pcs = pc_variances(data["x_train"])
    mean_img = data["x_train"].mean(0, keepdim=True)
    mean_sse = float((data["x_test"] - mean_img).pow(2).flatten(1).sum(1).mean())  # a model that ignores x
    x = data["x_test"][:12]
    # Decode one posterior sample z ~ q(z|x), as in training: a collapsed posterior is
    # N(0, I), and its mean z = 0 is an atypical input the decoder never saw (in 20-d,
    # samples have norm ~sqrt(20)), so decoding E[z|x] would misrepresent the model.
    torch.manual_seed(seed)
    rec_h, rec_l = model_h(x)[0], model_l(x)[0]
    arrays = {"images": torch.cat([x, rec_h, rec_l, mean_img.expand(12, -1, -1, -1)]),
              "literal_val_kl_per_dim": l_hist["val_kl_per_dim"],
              **{f"{arm}_{k}": hist[k] for arm, hist in [("healthy", h_hist), ("literal", l_hist)]
                 for k in ["active_units", "mutual_info", "mutual_info_se"]}}
    dist = lambda r: float((r - mean_img).pow(2).flatten(1).mean(1).sqrt().mean())  # noqa: E731 RMSE to mean
    keep = ["recon", "kl", "active_units", "mutual_info", "mutual_info_estimate", "mutual_info_se", "kl_per_dim"]
    n_above = lambda beta: int((pcs > beta / 2).sum())  # noqa: E731
    return {"healthy": {k: ev_h[k] for k in keep}, "literal": {k: ev_l[k] for k in keep},
            "recon_rmse_to_mean_image": {"healthy": dist(rec_h), "literal": dist(rec_l), "inputs": dist(x)},
            "mean_image_sse": mean_sse, "top_pc_variance": float(pcs[0]),
            "pcs_above_decoder_variance": {"beta_1": n_above(1.0), "beta_784": n_above(784.0)},
            "literal_beta_equivalent": 784,
            "literal_loss_note": (
                f"nn.MSELoss() + KL = (SSE + 784 KL) / 784: beta 784, a Gaussian decoder of variance 392 per "
                f"pixel; the largest variance of the training data along any direction is {float(pcs[0]):.1f} "
                f"< 392, so ignoring x is the optimum. It ended with {ev_l['active_units']} active units, KL "
                f"{ev_l['kl']:.3f} nats and test SSE {ev_l['recon']:.1f} against {mean_sse:.1f} for predicting "
                f"the mean image; the summed-SSE VAE (variance 0.5; {n_above(1.0)} directions above it) "
                f"has {ev_h['active_units']} active units and SSE {ev_h['recon']:.1f}.")}, arrays


@torch.no_grad()
def collapse_sweep(net, split: tuple[torch.Tensor, torch.Tensor, dict], args, r: Recipe) -> dict:
    """Where each cure can work: active units, reconstruction and I(x;z) against beta
    (SSE + beta KL, a Gaussian decoder of variance beta/2) for plain training and each
    cure, every run on the same seeded subset `split` for --sweep-epochs (`net(cfg)`
    trains there). The reference line is the linear VAE's optimum (Lucas et al. 2019):
    the number of principal directions whose data variance exceeds beta/2. The
    calibrated decoder has no beta (its variance is fitted): one run, a horizontal line."""
    x_tr, x_va, _ = split
    keys = ["active_units", "recon", "kl", "mutual_info"]

    def final(cfg: VaeConfig) -> dict:  # a run's last-epoch validation numbers (None where it diverged)
        try:
            hist = net(cfg)[1]
        except harness.Diverged:
            return {k: None for k in keys}
        return {"active_units": hist["active_units"][-1], "recon": hist["val_recon"][-1], "kl": hist["val_kl"][-1],
                "mutual_info": max(0.0, hist["mutual_info"][-1])}

    base = replace(VaeConfig.from_args(args, r), epochs=args.sweep_epochs)
    cures = {"plain": {}, "warmup": {"warmup_epochs": r.sweep_warmup_epochs}, "aggressive": {"aggressive": True},
             "lr_split": {"enc_lr": args.enc_lr, "dec_lr": args.dec_lr}, "free_bits": {"free_bits": r.free_bits}}
    res = {m: {k: [] for k in keys} for m in SWEEP_METHODS}
    for beta in args.sweep_betas:
        for m in SWEEP_METHODS:
            got = final(replace(base, name=f"sweep {m} beta {beta:g}", beta=beta, **cures[m]))
            for k in keys:
                res[m][k].append(got[k])
    sigma = final(replace(base, name="sweep sigma", loss="sigma"))
    pcs = pc_variances(x_tr)
    linear = [min(args.latent_dim, int((pcs > b / 2).sum())) for b in args.sweep_betas]
    mean_sse = float((x_va - x_tr.mean(0, keepdim=True)).pow(2).flatten(1).sum(1).mean())
    print("\nactive units / validation reconstruction per beta")
    print(f"{'beta':>6} " + " ".join(f"{m:>16}" for m in SWEEP_METHODS) + f" {'linear optimum':>15}")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for i, beta in enumerate(args.sweep_betas):
        print(f"{beta:>6g} " + " ".join(f"{fmt(res[m]['active_units'][i], 'd'):>5} / "
                                        f"{fmt(res[m]['recon'][i], '7.1f'):>8}" for m in SWEEP_METHODS)
              + f" {linear[i]:>15}")
    print(f"calibrated decoder: {sigma['active_units']} active units, reconstruction {fmt(sigma['recon'], '.1f')}")
    return {"betas": args.sweep_betas, **res, "sigma": sigma, "linear_optimum_active_units": linear,
            "top_pc_variance": float(pcs[0]), "mean_image_sse": mean_sse, "train_images": len(x_tr),
            "val_images": len(x_va), "epochs": args.sweep_epochs}


def mitigate_arms(args, r: Recipe) -> list[tuple[str, str]]:
    """(name, label) of every arm `mitigate` compares, grouped by the kind of collapse."""
    B = f"beta {args.mitigate_beta:g}"
    return [("literal", "MSELoss + KL (beta 784)"), ("literal_free_bits", f"+ free bits {r.free_bits:g}"),
            ("sigma", "calibrated decoder"),
            ("plain", f"{B}: plain"), ("warmup", f"{B}: KL warm-up"), ("aggressive", f"{B}: aggressive enc."),
            ("lr_split", f"{B}: enc/dec lr")]


@torch.no_grad()
def mitigate(arms: list[tuple[VaeConfig, str]], net, tested, scorer: tuple, data: dict, args, r: Recipe,
             device) -> tuple[dict, dict]:
    """Cures that keep the architecture, each where it can work. Where collapse is the
    optimum of the objective (the assignment's literal loss), only a change of the
    objective helps: free bits (Kingma et al. 2016) and the calibrated decoder (Rybkin
    et al. 2021). Where collapse comes from the optimisation (beta = --mitigate-beta),
    the optimisation-side cures: KL warm-up (Bowman et al. 2016), aggressive encoder
    updates (He et al. 2019) and a slower decoder. `net(cfg)` trains an arm, `tested(cfg)`
    evaluates it on the test set. Each arm's figure row: 8 test images, their
    reconstructions (z ~ q(z|x)) and 8 of its Recipe.n_samples prior samples."""
    clf, x = scorer[0], data["x_test"][:8]
    metrics, rows, curves = {}, [], {}
    for cfg, label in arms:
        try:
            model, hist = net(cfg)
        except harness.Diverged as e:
            metrics[cfg.name] = {"error": f"diverged: {e}"}
            continue
        ev, samples = tested(cfg), decode_prior(model, r.n_samples, device, seed=args.seed)
        keep = {k: ev[k] for k in ["recon", "kl", "active_units", "mutual_info", "mutual_info_se"]}
        metrics[cfg.name] = {"label": label, **keep, **sample_quality(clf, samples, data["x_train"]),
                             "aggressive_epochs": hist.get("aggressive_epochs", 0),
                             "train_seconds": hist.get("train_seconds")}
        torch.manual_seed(args.seed)
        rows.append(torch.cat([x, model(x)[0], samples[:8]]))
        curves.update({f"active_units_{cfg.name}": hist["active_units"], f"val_kl_{cfg.name}": hist["val_kl"]})
    metrics["real_test_images"] = sample_quality(clf, real_test_sample(data, r.n_samples, args.seed), data["x_train"])
    metrics["settings"] = {"mitigate_beta": args.mitigate_beta, "warmup_epochs": args.warmup_epochs,
                           "free_bits": r.free_bits, "enc_lr": args.enc_lr, "dec_lr": args.dec_lr,
                           "aggressive_window": r.aggressive_window, "aggressive_max_steps": r.aggressive_max_steps,
                           "epochs": args.epochs}
    return metrics, {"images": torch.cat(rows) if rows else torch.zeros(0, 1, 28, 28), **curves,
                     "n_test": len(data["x_test"])}


def posterior_means(model: VAE, x: torch.Tensor, n: int) -> np.ndarray:
    """E[z|x] of the first n images of x, [n, D], encoded 1,000 at a time."""
    return torch.cat([model.encode(x[i:i + 1000])[0] for i in range(0, n, 1000)])[:n].cpu().numpy()


def interpolations(model: VAE, data: dict, seed: int, pairs: int = 6, steps: int = 10) -> tuple[torch.Tensor, list]:
    """Decoded points on the line mu_a -> mu_b between the posterior means of `pairs`
    seeded test images of different classes, `steps` per line; and "a -> b" per line."""
    g = torch.Generator().manual_seed(seed)
    yt, classes, chosen = data["y_test"].cpu(), data["classes"], []
    while len(chosen) < pairs:
        a, b = torch.randint(0, len(yt), (2,), generator=g).tolist()
        if yt[a] != yt[b]:
            chosen.append((a, b))
    t = torch.linspace(0, 1, steps, device=data["x_test"].device)[:, None]
    rows = []
    for a, b in chosen:
        ma, mb = model.encode(data["x_test"][[a, b]])[0]
        rows.append(model.decode((1 - t) * ma + t * mb))
    return torch.cat(rows), [f"{classes[yt[a]]} -> {classes[yt[b]]}" for a, b in chosen]


@torch.no_grad()
def latent(model: VAE, latent2: VAE, ev2: dict, data: dict, n_vis: int, seed: int, device) -> tuple[dict, dict]:
    """The latent space: t-SNE of 20-d means, a latent-2 model's own plane and decoded
    manifold, and interpolations between test images of different classes."""
    from scipy.stats import norm
    from sklearn.metrics import silhouette_score

    n = min(n_vis, len(data["x_test"]))
    mu, y = posterior_means(model, data["x_test"], n), data["y_test"][:n].cpu().numpy()
    xy = common.embed_2d(mu, "tsne", seed=seed)
    mu_tr = posterior_means(model, data["x_train"], min(10000, len(data["x_train"])))
    probe = common.linear_probe(mu_tr, data["y_train"][:len(mu_tr)].cpu().numpy(), mu, y, seed=seed)
    k = 15  # decoder over a k x k grid of Gaussian quantiles, so equal areas hold equal prior mass
    q = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, k)), dtype=torch.float32)
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)  # rows: z2 high -> low
    lines, pair_labels = interpolations(model, data, seed)
    arrays = {"tsne": xy, "y": y, "classes": data["classes"], "mu2": posterior_means(latent2, data["x_test"], n),
              "manifold": latent2.decode(zz.to(device)), "interpolations": lines, "pair_labels": pair_labels}
    return {"tsne_silhouette": float(silhouette_score(xy, y)) if len(set(y)) > 1 else 0.0,
            "latent_probe_test_acc": probe["test_acc"], "latent2_test_total": ev2["total"],
            "latent2_test_recon": ev2["recon"], "latent2_test_kl": ev2["kl"], "n_vis": n}, arrays


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
def likelihood(model: VAE, x_test: torch.Tensor, K: int, n_images: int, recon: str) -> dict:
    """Test log-likelihood of the first n_images test images by importance sampling with
    K samples each (and every smaller power of 10), next to the ELBO, in nats per image."""
    x = x_test[:n_images]
    ks = [k for k in [1, 10, 100, 1000, 5000] if k < K] + [K]
    per_image = max(1, 2 ** 22 // (K * 784))                                 # keep [k, B, 784] near 16 MB
    sums = {k: 0.0 for k in ks}
    elbo = 0.0
    for i in harness.progress(range(0, len(x), per_image), desc="IWAE"):
        lw = log_weights(model, x[i:i + per_image], K, recon)                # [K, b]
        elbo += float(lw.mean(0).sum())
        for k in ks:  # the first k of the K samples: one unbiased draw of IWAE_k
            sums[k] += float(iwae_bound(lw[:k]).sum())
    n = len(x)
    iwae = {k: v / n for k, v in sums.items()}
    elbo /= n
    print(f"likelihood, {n} test images: ELBO {elbo:.2f}, IWAE (k = {K}) {iwae[K]:.2f} nats per image")
    return {"elbo": elbo, "iwae": iwae[K], "iwae_minus_elbo": iwae[K] - elbo,
            "iwae_by_k": {str(k): v for k, v in iwae.items()}, "k": K, "n_images": n}


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


class Networks:
    """Every network of a run, trained (or loaded from out/cache) on first use and kept:
    one per recipe and split, whatever the arm is called (VaeConfig compares without its
    name). A divergence is kept too and raised again, never retrained."""

    def __init__(self, data: dict, args, r: Recipe, device, cached: harness.Cache):
        self.data, self.args, self.r, self.device, self.cached = data, args, r, device, cached
        self.splits = {which: training_split(data, args, which) for which in ("full", "sweep")}

    @functools.cache
    def fitted(self, cfg: VaeConfig, which: str) -> tuple[VAE, dict] | harness.Diverged:
        try:  # training needs gradients even when called from a no_grad experiment
            with torch.enable_grad():
                return fit_or_load(cfg, self.splits[which], self.args, self.device, self.cached)
        except harness.Diverged as e:
            return e

    def net(self, cfg: VaeConfig, which: str = "full") -> tuple[VAE, dict]:
        got = self.fitted(cfg, which)
        if isinstance(got, harness.Diverged):
            raise got
        return got

    @functools.cache
    def tested(self, cfg: VaeConfig) -> dict:  # a full-data network's test-set evaluation, once
        return evaluate(self.net(cfg)[0], self.data["x_test"], self.args)

    @functools.cache
    def scorer(self) -> tuple:
        """The scoring CNN of Tasks 3 and 5 on this task's training images: (model, test accuracy)."""
        d, mnist = self.data, self.args.dataset == "mnist" and not self.args.smoke
        with torch.enable_grad():
            return common.scoring_classifier(d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                                             epochs=self.r.clf_epochs, width=self.r.clf_width, seed=self.args.seed,
                                             cache=self.cached, warn_below=0.99 if mnist else None)


def main(argv=None) -> dict:
    parser = build_parser()
    args = harness.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    with harness.user_errors(parser.prog, batch_flag="--batch-size"):
        if args.replot or len(args.seeds) > 1:  # figures only (no model, no data), or one run per seed
            return harness.redirect(report, args, argv, main)
        r, device = SMOKE_RECIPE if args.smoke else Recipe(), common.pick_device(args.device, args.precision)
        common.seed_everything(args.seed)
        data = load_data(args, device)
        print(f"{args.dataset} ({'smoke: scikit-learn digits' if args.smoke else 'torchvision'}): "
              f"{len(data['x_train'])} train, {len(data['x_val'])} val, {len(data['x_test'])} test")
        arms = arm_configs(args, r)
        nets = Networks(data, args, r, device, harness.Cache(args.out, args.fresh))
        net, tested, seed = nets.net, nets.tested, args.seed
        vae, literal, latent2 = arms["vae"], arms["literal"], arms["latent2"]
        return harness.run(report, args, device, {
            "train": lambda: train(net(vae)[1], tested(vae), len(data["x_train"])),
            "reconstruct": lambda: reconstruct(net(vae)[0], tested(vae), data["x_test"]),
            "generate": lambda: generate(net(vae)[0], nets.scorer(), data, r.n_samples, seed, device),
            "collapse": lambda: collapse(net(vae), net(literal), tested(vae), tested(literal), data, seed),
            "collapse_sweep": lambda: collapse_sweep(lambda cfg: net(cfg, "sweep"), nets.splits["sweep"], args, r),
            "mitigate": lambda: mitigate([(arms[n], label) for n, label in mitigate_arms(args, r)], net, tested,
                                         nets.scorer(), data, args, r, device),
            "latent": lambda: latent(net(vae)[0], net(latent2)[0], tested(latent2), data, r.n_vis, seed, device),
            "likelihood": lambda: likelihood(net(vae)[0], data["x_test"], r.iwae_k, r.iwae_n, args.recon),
        }, recipe=r)


if __name__ == "__main__":
    main()
