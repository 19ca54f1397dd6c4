"""The science two or more tasks share (how a run runs lives in harness/):

    device      pick_device, amp_dtype/autocast/grad_scaler/optimiser_step (--precision), seed_everything, check_finite
    data        load_split: torchvision datasets on full runs, offline smoke sets
                (scikit-learn's digits, generated shapes); resize_normalise
    plots       save_figure, tile, image_grid, line_plot, scatter_by_class, embed_2d, confusion_matrix, plot_confusion
    measures    nearest_distance, linear_probe, Tasks 3 and 5's scoring CNN (scoring_classifier, classify_digits,
                sample_quality, classes_covered)
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import platform
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import matplotlib

matplotlib.use("Agg")  # files only; nothing is shown on screen
import matplotlib.pyplot as plt  # noqa: E402

from harness import Cache, Diverged, UserError, few_threads, figure_note, progress, save_png  # noqa: E402

# ----------------------------------------------------------------------------
# Device, precision, seeding
# ----------------------------------------------------------------------------

# --precision of this process (set by pick_device): "auto", "fp32", "bf16" or "fp16".
PRECISION = "auto"
# Device types whose images and conv weights use NHWC (channels_last), cuDNN's fastest; tests add "cpu".
CHANNELS_LAST = {"cuda"}
# fp16 loss scaling starts here, not at torch's 65,536: from 65,536 it skipped 7 of the first 16 steps of Task
# 5's VAE (a summed squared error, so large gradients; from 2^8: none; Task 3's GAN and Task 1's CIFAR ResNet
# skipped none either way; measured: smoke runs, --precision fp16, CPU). It doubles after 2,000 clean steps.
FP16_INIT_SCALE = 2.0 ** 8


def pick_device(name: str = "auto", precision: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; an explicit choice that is unavailable is a UserError.
    Sets the process's --precision (amp_dtype), then prints both."""
    global PRECISION
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this torch sees no CUDA GPU; use --device auto or cpu")
    elif name == "mps" and not mps_ok:
        raise UserError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    device, PRECISION = torch.device(name), precision
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({what}), precision: {precision_name(device)}", flush=True)
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on `device` under PRECISION, or None for full precision.

    auto: bf16 on CUDA GPUs of compute capability >= 8 (A100, RTX 30xx and later, H100): their tensor cores run bf16
    natively, and bf16 has fp32's exponent range, so no loss scaling. Below 8 (T4, V100, the free notebook GPUs)
    bf16 is emulated and cuDNN has no bf16 convolutions: fp16 there, and only where a model trains (with
    `grad_scaler`), since fp16's 65,504 ceiling is reached by random full-size networks' activations. CPU and MPS
    stay in fp32. fp32/bf16/fp16 choose the same on every device: on the CPU, torch's CPU autocast and
    GradScaler("cpu") run the very code a GPU runs."""
    if PRECISION != "auto":
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[PRECISION]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def autocast(device: torch.device, train: bool = False):
    """Mixed precision for a forward pass: bf16 where amp_dtype says so; fp16 only when
    `train` (the step then uses `grad_scaler`); otherwise full precision."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype(device, train))
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (`autocast(device, train=True)` in fp16): small gradients would underflow fp16's
    6e-8 floor. A disabled scaler elsewhere, so a training loop is written once (optimiser_step). A step whose
    scaled gradients overflow is skipped and the scale halved: normal, not divergence."""
    fp16 = amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE, enabled=fp16)


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """One optimiser step from `loss`: zero the gradients, backward and step through the loss scaler of grad_scaler (a
    pass-through where it is disabled). Returns whether the optimiser stepped (False: loss scaling skipped it), so a
    learning-rate schedule steps only with it."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    before = scaler.get_scale() if scaler.is_enabled() else None  # one sync per step, fp16 only
    scaler.step(opt)
    scaler.update()
    return before is None or scaler.get_scale() >= before  # the scale falls only when the step was skipped


def compute_dtype(device: torch.device, train: bool = False) -> str:
    """"fp32", "bf16" or "fp16": what autocast(device, train) computes in. Part of the key
    of every cached result whose numbers depend on it (features, embeddings, weights)."""
    dtype = amp_dtype(device)
    if dtype is None or (dtype == torch.float16 and not train):
        return "fp32"
    return "bf16" if dtype == torch.bfloat16 else "fp16"


def precision_name(device: torch.device) -> str:
    return {"fp32": "fp32", "bf16": "bf16 autocast"}.get(compute_dtype(device, train=True),
                                                         "fp16 autocast with loss scaling for training, fp32 inference")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def check_finite(loss: torch.Tensor, what: str) -> None:
    """Raise Diverged if a loss went NaN/inf (call once per step; costs one sync)."""
    if not torch.isfinite(loss).all():
        raise Diverged(f"{what} became {loss.detach().float().cpu().flatten()[0].item()}")


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
MNIST_CLASSES = [str(i) for i in range(10)]

# name -> (torchvision dataset class, image size: the smoke sets are made at this size)
DATASETS = {"mnist": ("MNIST", 28), "fashion-mnist": ("FashionMNIST", 28), "cifar10": ("CIFAR10", 32),
            "cifar100": ("CIFAR100", 32), "stl10": ("STL10", 96)}


def resize_normalise(x: torch.Tensor, size: int | tuple[int, int], mean, std, mode: str = "bilinear") -> torch.Tensor:
    """Images -> a pretrained model's input, on whatever device `x` is on (so upsampling thousands of 32 px images to
    224 px costs no CPU time on a GPU run). x: uint8 [B, C, h, w] in 0..255, or float in [0, 1]. Resized to `size`
    (H, W) with `mode` ("bilinear" or "bicubic") and antialiasing, as PIL and torchvision's transforms do when
    shrinking; clamped to [0, 1] (bicubic overshoots, and PIL's uint8 output is clamped too); minus `mean`, over
    `std` (per channel, [C] each). Returns float32 [B, C, H, W]; NHWC on CUDA (CHANNELS_LAST), cuDNN's fastest."""
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp_(0, 1)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.device.type in CHANNELS_LAST else x


def load_split(name: str, root: str | Path, train: bool, smoke: bool = False, seed: int = 0,
               smoke_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of a dataset as (images uint8 [N, C, H, W], labels int64 [N], class names).

    Full runs use torchvision with download=True under `root` (torchvision's own layout, so data a user already has
    is reused). STL-10's train split is its 5,000 labelled images. Smoke runs never touch the network: MNIST-like
    sets come from scikit-learn's 8x8 digits, the colour sets from `make_shapes`, with the real dataset's class
    names (CIFAR-100: "class00".."class99") and image size."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    tv_name, size = DATASETS[name]
    if smoke:
        if name in ("mnist", "fashion-mnist"):
            return (*smoke_digits(train, seed), MNIST_CLASSES)  # digits stand in for both: named as digits
        n_classes = 100 if name == "cifar100" else 10
        n = smoke_size or {("cifar10", True): 1000, ("cifar10", False): 500, ("cifar100", True): 2000,
                           ("cifar100", False): 500, ("stl10", True): 500, ("stl10", False): 300}[(name, train)]
        x, y = make_shapes(n, n_classes, size, seed=seed * 2 + (0 if train else 1))
        classes = {"cifar10": CIFAR10_CLASSES, "stl10": STL10_CLASSES}.get(
            name, [f"class{i:02d}" for i in range(n_classes)])
        return x, y, classes

    import torchvision

    cls = getattr(torchvision.datasets, tv_name)
    kwargs = {"split": "train" if train else "test"} if name == "stl10" else {"train": train}
    try:
        ds = cls(root=str(root), download=True, **kwargs)
    except Exception as e:  # URLError, OSError (disk full), RuntimeError (corrupt archive) ...
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"could not get {tv_name} ({'train' if train else 'test'} split) under "
                        f"{Path(root).resolve()} ({reason}); put the dataset there (torchvision layout) "
                        f"or pass --data-root, or run with --smoke") from None
    x = torch.as_tensor(np.asarray(ds.data))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x  # MNIST-like; CIFAR: HWC
    labels = ds.targets if hasattr(ds, "targets") else ds.labels  # STL-10 names them labels
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long), list(ds.classes)


def smoke_digits(train: bool, seed: int = 0, n_test: int = 360) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 1,797 8x8 handwritten digits laid out like MNIST: each digit is upsampled to 20x20 and
    centred on a 28x28 canvas (MNIST's 20x20 box in a 4-pixel border), uint8 0-255, white on black. A seeded split
    gives `n_test` test images and the rest for training."""
    x, y = _all_digits()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234 + seed))
    idx = order[n_test:] if train else order[:n_test]
    return x[idx], y[idx]  # indexing copies: callers may modify what they get


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    img = F.interpolate(img, size=(20, 20), mode="bilinear", align_corners=False)
    img = F.pad(img, (4, 4, 4, 4))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), torch.tensor(d.target, dtype=torch.long)


_PALETTE = np.array([matplotlib.colors.to_rgb(c) for c in plt.get_cmap("tab10").colors])  # tab10 as RGB in [0, 1]


def make_shapes(n: int, n_classes: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated colour-image set a small model can learn: class c = 10a + b has colour b (one of 10), shape (a + b)
    mod 5 (circle, square, triangle, ring, cross) and texture (a // 5 + b) mod 2 (solid or striped), so all 100
    combinations differ; with 10 classes colour alone separates them and shape/texture help. Position, scale,
    brightness and background vary at random. Returns uint8 [n, 3, size, size], int64 labels balanced over classes."""
    assert n_classes <= 100, "at most 100 distinct (colour, shape, texture) classes"
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    a, b = y // 10, y % 10
    shape, texture = (a + b) % 5, (a // 5 + b) % 2
    grid = (np.arange(size) + 0.5) / size
    gy, gx = grid[None, :, None], grid[None, None, :]
    cx, cy = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    r = rng.uniform(0.16, 0.3, (n, 1, 1))
    dx, dy = gx - cx, gy - cy
    d = np.sqrt(dx**2 + dy**2)
    masks = np.stack([
        d < r,                                                                  # circle
        np.maximum(abs(dx), abs(dy)) < r * 0.85,                                # square
        (dy < r * 0.7) & (dy > -r) & (abs(dx) < (dy + r) * 0.6),                # triangle (apex up)
        (d < r) & (d > r * 0.55),                                               # ring
        ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r)),  # cross
    ])  # [5, n, size, size]
    mask = masks[shape, np.arange(n)]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.where(np.sin(2 * np.pi * 4 * (gx + gy) / (2 * r) + phase) > 0, 1.0, 0.45)
    shade = np.where(texture[:, None, None] == 1, stripes, 1.0)
    colour = _PALETTE[b] * rng.uniform(0.75, 1.0, (n, 1))                      # [n, 3]
    background = rng.uniform(0.0, 0.35, (n, 1, 1, 1)) + rng.normal(0, 0.04, (n, 3, size, size))
    img = np.where(mask[:, None], colour[:, :, None, None] * shade[:, None], background)
    img = img + rng.normal(0, 0.03, img.shape)
    x = torch.from_numpy((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return x, torch.from_numpy(y.astype(np.int64))


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------


def save_figure(fig, path: str | Path) -> Path:
    """Save at 150 dpi, atomically, and close; a smoke PNG gets figure_note() in a strip below it, on no text
    (harness.save_png, which the seeds figures use too)."""
    return save_png(fig, path, figure_note())


def to_display(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, C, H, W] uint8 or float in [0, 1] (a tensor, or a figure's numpy array) ->
    [N, H, W, C] floats in [0, 1] for imshow."""
    x = torch.as_tensor(images).detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def tile(images: torch.Tensor, ncol: int, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] (uint8, or float in [0, 1]) -> one canvas [rows*(H+pad)+pad,
    ncol*(W+pad)+pad, C] in [0, 1] with white `pad`-pixel gutters (visible against black
    digits and against an untrained G's flat grey); empty cells stay white."""
    x = to_display(images)
    n, h, w, c = x.shape
    rows = max(1, math.ceil(n / ncol))
    canvas = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.float32)
    for i, (r, col) in enumerate(divmod(i, ncol) for i in range(n)):
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
    return canvas


def image_grid(images: torch.Tensor, path: str | Path | None = None, title: str = "", nrow: int = 8,
               row_labels: list[str] | None = None, cell_size: float = 1.0, ax=None, pad: int = 2):
    """A grid of images ([N, C, H, W], uint8 or float in [0, 1]), `nrow` per row, drawn as one imshow of `tile` (fast
    for hundreds of images); `row_labels` name each row at its left. With `ax`, draw into that axis (a panel of a
    larger figure) and return it; otherwise make a figure of its own and save it to `path`."""
    canvas = tile(images, nrow, pad)
    h, w = images.shape[-2:]
    rows = max(1, math.ceil(len(images) / nrow))
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(3.0, nrow * cell_size), max(1.5, rows * cell_size * h / w) + 0.6))
    ax.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)] if row_labels else [],
                  (row_labels or [])[:rows] if row_labels else [], fontsize=9 if own else 8)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    ax.set_title(title, fontsize=None if own else 10)
    return save_figure(fig, path) if own else ax


def line_plot(ax, series: dict[str, tuple], title: str, xlabel: str, ylabel: str, logy: bool = False):
    """Draw {label: (x, y)} curves on `ax` with title, axis labels and legend."""
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, marker="o" if len(x) <= 30 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1 or any(series):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def scatter_by_class(ax, xy: np.ndarray, labels: np.ndarray, class_names: list[str], title: str,
                     marker: str = "o", size: float = 6, legend: bool = True):
    """2-D points coloured by class (tab10, or a continuous map for more classes)."""
    labels = np.asarray(labels)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "nipy_spectral")
    for c in np.unique(labels):
        sel = labels == c
        colour = cmap(int(c) % 10) if len(class_names) <= 10 else cmap(int(c) / max(1, len(class_names) - 1))
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, marker=marker, color=colour, alpha=0.75,
                   label=class_names[int(c)] if legend else None)
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
    if legend and len(class_names) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    return ax


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] by t-SNE (PCA init, perplexity capped for small N) or UMAP.
    UMAP is imported lazily: numba compiles it for ~20 s in every new process."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        with few_threads(n):
            return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        with few_threads(n):
            return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x)
    raise ValueError(f"unknown embedding {method!r}")


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return np.bincount(labels * n_classes + preds, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * k + 2), max(4, 0.45 * k + 1.5)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    for (i, j), v in np.ndenumerate(norm if k <= 20 else norm[:0]):  # the values, where they fit
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------
# Shared measures: nearest neighbours, linear probe
# ----------------------------------------------------------------------------


@torch.no_grad()
def nearest_distance(x: torch.Tensor, ref: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """For each x [N, ...] the L2 distance to its nearest row of ref [M, ...] -> [N];
    ref is scanned in chunks, so a whole training set fits."""
    f = x.flatten(1).float()
    best = torch.full((len(f),), float("inf"), device=f.device)
    for i in range(0, len(ref), chunk):
        best = torch.minimum(best, torch.cdist(f, ref[i:i + chunk].flatten(1).float()).min(1).values)
    return best


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), val_fraction: float = 0.2,
                 seed: int = 0, max_iter: int = 1000) -> dict:
    """Logistic regression on standardised features, its inverse regularisation C chosen on a held-out part of the
    training set, then refitted on all of it. Returns {"test_acc", "val_acc", "C", "model", "scaler"}."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    with few_threads(len(x_train)):
        return _fit_probe(x_train, y_train, x_test, y_test, Cs, val_fraction, seed, max_iter)


def _fit_probe(x_train, y_train, x_test, y_test, Cs, val_fraction, seed, max_iter) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y_train)
    stratify = y_train if counts[counts > 0].min() >= 2 else None
    xa, xv, ya, yv = train_test_split(x_train, y_train, test_size=val_fraction, random_state=seed, stratify=stratify)
    best = (-1.0, Cs[0])
    for C in Cs:
        sc = StandardScaler().fit(xa)
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(sc.transform(xa), ya)
        acc = float((clf.predict(sc.transform(xv)) == yv).mean())
        if acc > best[0]:
            best = (acc, C)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=best[1], max_iter=max_iter).fit(scaler.transform(x_train), y_train)
    test_acc = float((clf.predict(scaler.transform(x_test)) == y_test).mean())
    return {"test_acc": test_acc, "val_acc": best[0], "C": best[1], "model": clf, "scaler": scaler}


# ----------------------------------------------------------------------------
# Scoring classifier (Tasks 3 and 5): one recipe, one input range, one coverage rule
# ----------------------------------------------------------------------------
# Tasks 3 and 5 judge generated 28x28 images with the same small CNN (architecture.DigitClassifier),
# trained by `scoring_classifier` below on pixels in [0, 1], background 0 (Task 5's data as is, Task
# 3's tanh images through (x + 1) / 2), so zero padding in the augmentation is background, as in the data.
# The recipe: a random affine map per image (rotation, isotropic scale, translation), the classic way to
# squeeze more out of few MNIST digits (Simard et al. 2003); label smoothing 0.1 (Szegedy et al. 2016)
# keeps the softmax from saturating on a small training set; AdamW with a linear warm-up over the first
# 5% of steps and a cosine decay to 0 (Loshchilov & Hutter 2017, 2019).
CLASSIFIER_RECIPE = {"batch": 128, "lr": 3e-3, "weight_decay": 5e-4, "warmup_frac": 0.05,
                     "label_smoothing": 0.1, "rotate_deg": 12.0, "scale": 0.1, "shift_px": 2.5}

# A class counts as covered when it receives at least this fraction of its fair share
# N/K of N samples (K classes): 0.2 x N/10 = 2% of the samples for 10 classes, so the
# few percent of stray blobs a classifier scatters over other classes are not modes.
COVERAGE_SHARE = 0.2


def classes_covered(hist, share: float = COVERAGE_SHARE) -> int:
    """Classes present in a histogram of predicted classes (counts or shares, length K): hist_k > 0 and hist_k >= share
    * sum(hist) / K. share 0 counts every class that occurs at all. The one definition Tasks 3 and 5 report."""
    h = np.asarray(hist.detach().cpu() if torch.is_tensor(hist) else hist, dtype=np.float64)
    need = share * h.sum() / len(h)
    return int(((h > 0) & (h >= need - 1e-12 * h.sum())).sum())


def affine(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor, dx: torch.Tensor,
           dy: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> each image rotated by angle_deg[b] degrees about its centre,
    scaled by scale[b] and moved by (dx[b], dy[b]) pixels (right, down); bilinear, zero
    fill (the background of [0, 1] images). One grid_sample on x's device."""
    B, _, H, W = x.shape
    a = torch.deg2rad(angle_deg.to(x.device, torch.float32))
    s = scale.to(x.device, torch.float32)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s           # affine_grid maps output to input coordinates
    tx, ty = -dx.to(x.device, torch.float32) * 2 / W, -dy.to(x.device, torch.float32) * 2 / H
    theta = torch.stack([torch.stack([cos, -sin, cos * tx - sin * ty], 1),
                         torch.stack([sin, cos, sin * tx + cos * ty], 1)], 1)          # [B, 2, 3]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x: torch.Tensor, rotate_deg: float, scale: float, shift_px: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """`affine` with, per image, an angle U(-rotate_deg, rotate_deg), a scale
    U(1 - scale, 1 + scale) and a shift U(-shift_px, shift_px) pixels per axis."""
    u = torch.rand(len(x), 4, generator=generator, device=generator.device if generator is not None else x.device)
    u = u.to(x.device) * 2 - 1
    return affine(x, u[:, 0] * rotate_deg, 1 + u[:, 1] * scale, u[:, 2] * shift_px, u[:, 3] * shift_px)


@torch.no_grad()
def classifier_accuracy(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)])
    return float((pred == y).float().mean())


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A fingerprint of a training set in [0, 1] (its uint8 pixels and labels), so a
    cached classifier is never reused on other data under the same settings."""
    h = hashlib.sha1()
    h.update((x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().tobytes())
    h.update(y.detach().cpu().numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def scoring_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                       *, epochs: int, width: int, seed: int, cache: Cache | None = None,
                       warn_below: float | None = 0.99, recipe: dict | None = None):
    """Train (or take from `cache`) the scoring CNN of Tasks 3 and 5 on images in [0, 1] (x [N, 1, 28, 28] float, y
    int64, on the device they train on) with CLASSIFIER_RECIPE for `epochs` epochs; returns (model in eval mode,
    test accuracy). The cache key holds the recipe, epochs, width, seed and a digest of the training data. Below
    `warn_below` test accuracy it warns (its scores of generated images are then rougher than they look)."""
    from architecture import DigitClassifier  # common stays importable without it

    r = {**CLASSIFIER_RECIPE, **(recipe or {})}
    settings = {"recipe": r, "epochs": epochs, "width": width, "seed": seed, "n_train": len(x_train),
                "data": data_digest(x_train, y_train), "precision": compute_dtype(x_train.device, train=True)}
    seed_everything(seed)                  # before the model: its initial weights come from this seed
    model = DigitClassifier(width).to(x_train.device)

    def fit() -> dict:
        acc = _train_classifier(model, x_train, y_train, x_test, y_test, epochs, r)
        return {"test_acc": acc, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}

    code = (DigitClassifier, _train_classifier, affine, random_affine)
    blob = cache("classifier", settings, fit, code) if cache is not None else fit()
    model.load_state_dict(blob["state_dict"])
    acc = float(blob["test_acc"])
    print(f"classifier: {epochs} epochs on {len(x_train)} images, test accuracy {acc:.4f}", flush=True)
    if warn_below is not None and acc < warn_below:
        print(f"warning: the scoring classifier reached only {acc:.4f} < {warn_below} test accuracy; its class "
              f"counts and features are rougher than they look (more epochs or more training data help)", flush=True)
    return model.eval(), acc


def _train_classifier(model, x_train, y_train, x_test, y_test, epochs: int, r: dict) -> float:
    """scoring_classifier's training loop: AdamW, linear warm-up then cosine decay to 0,
    random affine augmentation, label smoothing. Returns the test accuracy."""
    device = x_train.device
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    n, bs = len(x_train), r["batch"]
    steps = epochs * math.ceil(n / bs)
    warm = max(1, int(r["warmup_frac"] * steps))

    def lr_factor(i):   # linear warm-up, then cosine decay to 0
        return (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scaler = grad_scaler(device)
    model.train()
    bar = progress(total=steps, desc="classifier")
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            x = random_affine(x_train[idx], r["rotate_deg"], r["scale"], r["shift_px"])
            with autocast(device, train=True):
                loss = F.cross_entropy(model(x).float(), y_train[idx], label_smoothing=r["label_smoothing"])
            if optimiser_step(loss, opt, scaler):  # a step loss scaling skipped moves no schedule
                sched.step()
            bar.update(1)
    bar.close()
    return classifier_accuracy(model, x_test, y_test)


@torch.no_grad()
def classify_digits(clf, x01: torch.Tensor, chunk: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """x01 [N, 1, 28, 28] in [0, 1] -> (softmax probabilities [N, 10], the scoring CNN's
    penultimate features [N, 128], the ones FD-MNIST-classifier uses)."""
    probs, feats = [], []
    for i in range(0, len(x01), chunk):
        f = clf.features(x01[i:i + chunk]).float()
        feats.append(f)
        probs.append(clf.head(f).softmax(1))
    return torch.cat(probs), torch.cat(feats)


@torch.no_grad()
def sample_quality(probs: torch.Tensor, x01: torch.Tensor, train01: torch.Tensor, n_nn: int | None = None,
                   share: float = COVERAGE_SHARE) -> dict:
    """How Tasks 3 and 5 judge N generated (or real) images x01 [N, 1, 28, 28] in [0, 1], given the scoring CNN's
    probabilities [N, 10]; three proxies that fail differently: coverage, the classes receiving their share of
    samples (classes_covered); confidence, the CNN's mean max-probability (high when a sample looks like some class,
    low for a blurry average); nearest_train_rmse, the root-mean-square pixel distance of each of the first `n_nn`
    images (all: None; 0: skipped, NaN) to its nearest training image (low when samples resemble real data; 0 would
    be copying)."""
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    n_nn = len(x01) if n_nn is None else n_nn
    rmse = (nearest_distance(x01[:n_nn], train01) / math.sqrt(x01[0].numel())).mean().item() if n_nn else float("nan")
    return {"coverage": classes_covered(hist, share), "confidence": probs.max(1).values.mean().item(),
            "nearest_train_rmse": rmse}
