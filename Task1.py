"""Task 1: what an ImageNet-pretrained ResNet-152 knows about CIFAR-10, and why its shortcuts matter.

Six experiments on torchvision's ResNet-152 (He et al. 2016, "Deep Residual Learning for
Image Recognition"); --arch takes any torchvision ResNet, so ResNet-18 runs with the same code.
  baseline           frozen backbone + a new linear head on cached pooled features: curves, confusion
  residual           shortcuts cut (a block returns relu(F(x))), head retrained; gradient norms at init
  features           stem and four stages hooked: t-SNE/UMAP maps, probes, silhouette, confused pairs
  transfer           CIFAR-100: ImageNet vs random init x head / layer4 / full fine-tuning vs compute
  depth              ResNet-18 vs ResNet-152: probe and head accuracy, extraction speed
  scratch_shortcuts  CIFAR ResNet-20/56 vs their plain twins from scratch: degradation (He et al. 2016, Fig. 6)
Constants that are not flags (held-out sizes, learning rates, He et al.'s SGD recipe...) are Recipe's
fields below; metrics.json and summary.md record them beside the flags.

Run:
  python Task1.py                          # everything (a GPU is strongly advised)
  python Task1.py --smoke --out /tmp/t1    # offline check: generated images, small random ResNets, ~15 s on CPU
  python Task1.py --augment                # baseline head trained through the backbone, with flips and crops
  python Task1.py --experiments scratch_shortcuts --scratch-dataset fashion-mnist --scratch-train-size 5000
  python Task1.py --replot                 # redraw every figure from outputs/task1/metrics.json

Writes into --out (default outputs/task1) the figures <experiment>_<what>.png (reports/task1.py
draws them from metrics and cache/plot/, so --replot needs no model), metrics.json, summary.md
and cache/ (pooled and stage features, embeddings, keyed by the settings and code behind them).
"""
from __future__ import annotations

import argparse
import copy
import contextlib
import dataclasses
import functools
import importlib.util
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import common
import harness
from architecture import CifarResNet, cut_shortcuts, residual_blocks, residual_branch_only, shortcuts_cut
from reports import task1 as report
from reports.task1 import CUT_SETS, STAGES, TRANSFER_INITS, TRANSFER_STRATEGIES

EXPERIMENTS = ["baseline", "residual", "features", "transfer", "depth", "scratch_shortcuts"]

# Every ResNet torchvision ships (ResNet, ResNeXt and wide ResNet share the ResNet class).
RESNETS = sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                 if n.startswith(("resnet", "resnext", "wide_resnet")))

# ---- Config: the recipe (constants, not flags) and the flags ----


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Task 1's constants that a student does not vary, each with its source (the head's are also
    residual's and depth's); recorded in metrics.json ("recipe") and in the cache keys they decide."""
    val_size: int = 5000             # ours: CIFAR-10 training images held out for the validation curves (10%)
    lr: float = 1e-3                 # ours: AdamW lr of the head (make_head), cosine-decayed per epoch
    weight_decay: float = 1e-4       # ours: AdamW weight decay of the head (AdamW's usual small value)
    bn_calib_size: int = 2000        # ours: training images that calibrate a random backbone's BatchNorm
    grad_batch: int = 32             # ours: images in the one batch of the gradient norms at initialisation
    probe_train_size: int = 5000     # ours: training images of the logistic probes; a fifth of them picks C
    n_pairs: int = 5                 # ours: most-confused class pairs whose separation features follows
    throughput_batches: int = 10     # ours: timed batches of --eval-batch-size; depth quotes their median
    transfer_val_size: int = 1000    # ours: of --transfer-train-size, held out for the validation curves
    transfer_test_size: int = 0      # ours: test images of --transfer-dataset, 0 = all
    transfer_lr: float = 1e-3        # ours: AdamW lr of the new fc, cosine-decayed per step
    backbone_lr_mult: float = 0.1    # usual fine-tuning practice: trained backbone layers at 1/10 of the head's lr
    transfer_scratch_lr: float = 1e-3  # He et al. 2019, "Rethinking ImageNet Pre-training": random init needs its
    # own lr; the scratch arms train every layer at AdamW's usual 1e-3, same epochs: equal compute, not convergence
    transfer_weight_decay: float = 1e-4  # ours: AdamW weight decay of every arm
    depth_archs: tuple = ("resnet18", "resnet152")  # the handout's 1.5: ResNet-152 against a shallower ResNet-18
    scratch_depths: tuple[int, ...] = (20, 56)  # He et al. 2016, Fig. 6 (6n+2 layers) compares plain-20/32/44/56 and
    # ResNet-20/32/44/56/110: the deeper plain nets train worse (degradation), the deeper ResNets better
    scratch_width: int = 16          # He et al. 2016, sec. 4.2 (CIFAR-10): 16, 32, 64 filters in the three stages
    scratch_test_size: int = 0       # ours: test images, 0 = the whole test split
    scratch_batch_size: int = 128    # He et al.: minibatch 128
    scratch_lr: float = 0.1          # He et al.: SGD lr 0.1, divided by 10 at 50% and 75% of the steps
    scratch_warmup: float = 0.05     # ours, after Goyal et al. 2017: fraction of the steps of linear lr warm-up
    scratch_momentum: float = 0.9    # He et al.
    scratch_weight_decay: float = 1e-4  # He et al.
    scratch_augment: bool = True     # He et al.: 4 px padding, random 32x32 crops, horizontal flips
    scratch_target_acc: float = 0.8  # ours: convergence speed = steps until training accuracy first reaches it

    def __post_init__(self):
        d = self.scratch_depths
        bad = [f"scratch_depths: {n} is not 6n+2 >= 8" for n in d if n % 6 != 2 or n < 8] + (
            len(d) < 2 or list(d) != sorted(set(d))) * [f"scratch_depths {d}: two or more, increasing"]
        if bad := bad + [f"depth_archs: unknown ResNet {a}" for a in self.depth_archs if a not in RESNETS]:
            raise ValueError("; ".join(bad))


# --smoke: ResNet-18 sized random models at CIFAR's own 32 px on a few hundred generated images
# (held-out sets, probes and batches to match); every experiment, figure and metric still happens.
RECIPE = Recipe()
SMOKE_RECIPE = dataclasses.replace(RECIPE, val_size=60, bn_calib_size=128, grad_batch=16, probe_train_size=150,
                                   throughput_batches=1, transfer_val_size=20, transfer_test_size=64,
                                   scratch_test_size=128, scratch_batch_size=32, depth_archs=("resnet18", "resnet34"),
                                   scratch_depths=(8, 14))
SMOKE = {"arch": "resnet18", "weights": "none", "img_size": 32, "train_size": 300, "test_size": 150,
         "batch_size": 32, "eval_batch_size": 150, "n_vis": 100, "transfer_train_size": 64, "transfer_epochs": 2,
         "transfer_batch_size": 32, "epochs": 3,
         "embed": "tsne",  # UMAP's ~20 s of numba compilation would double the smoke run
         "scratch_train_size": 256, "scratch_epochs": 2}


def resnet_arch(text: str) -> str:
    if text not in RESNETS:
        raise argparse.ArgumentTypeError(f"unknown ResNet {text!r}; choose from {', '.join(RESNETS)}")
    return text


def build_parser() -> harness.Parser:
    parser = harness.make_parser("task1", __doc__, EXPERIMENTS)
    # Every numeric flag's type states its valid range (harness.Bounded): argparse refuses
    # anything outside it in one line; check_args below refuses bad combinations.
    pint, n0 = harness.positive_int, harness.non_negative_int
    g = parser.add_argument_group("model and data")
    g.add_argument("--arch", type=resnet_arch, default="resnet152", help="torchvision ResNet to study")
    g.add_argument("--weights", choices=["imagenet", "imagenet-v2", "none"], default="imagenet", help="imagenet: "
                   "IMAGENET1K_V1, one recipe at every depth; imagenet-v2: IMAGENET1K_V2 (label smoothing, mixup, "
                   "EMA...) where it exists, which changes ResNet-50/101/152, ResNeXt-50/101-32x8d and wide ResNets "
                   "only; none: random init")
    g.add_argument("--img-size", type=pint, default=224, help="CIFAR's 32 px images are resized to this (bilinear)")
    g.add_argument("--train-size", type=n0, default=0, help="CIFAR-10 training images to use, 0 = all 50,000")
    g.add_argument("--test-size", type=n0, default=0, help="CIFAR-10 test images to use, 0 = all 10,000")
    g.add_argument("--eval-batch-size", type=pint, default=512, help="batch of feature extraction and evaluation")
    g = parser.add_argument_group("baseline (also the head training of residual and depth)")
    g.add_argument("--epochs", type=pint, default=5, help="epochs of linear-head training")
    g.add_argument("--batch-size", type=pint, default=256, help="head-training minibatch")
    g.add_argument("--augment", action="store_true", help="train the head through the frozen backbone on randomly "
                   "cropped and flipped images instead of on cached features (one backbone pass per epoch)")
    g = parser.add_argument_group("residual")
    g.add_argument("--ablate-blocks", default="auto", metavar="B1,B2", help="blocks whose shortcut is cut, e.g. "
                   "layer1.1,layer3.5; auto = the middle block of every stage (whole stages and all blocks too)")
    g = parser.add_argument_group("features")
    g.add_argument("--n-vis", type=harness.Bounded(int, lo=5), default=2000, help="test images embedded per depth")
    g.add_argument("--embed", choices=["tsne", "umap", "both"], default="both", help="2-D maps; both: side by side, "
                   "each scored (--smoke: tsne, since UMAP costs ~20 s of numba compilation per process)")
    g = parser.add_argument_group("transfer")
    g.add_argument("--transfer-dataset", choices=["cifar100", "cifar10", "stl10"], default="cifar100", help="data")
    g.add_argument("--transfer-train-size", type=n0, default=10000, help="its training images, 0 = all; 10,000 "
                   "keeps six arms of ResNet-152 at 224 px to minutes on one GPU")
    g.add_argument("--transfer-epochs", type=pint, default=3, help="epochs for every arm")
    g.add_argument("--transfer-batch-size", type=pint, default=128, help="fine-tuning minibatch")
    g = parser.add_argument_group("scratch_shortcuts (He et al. 2016 sec. 4.2: CIFAR ResNet vs the plain net)")
    g.add_argument("--scratch-dataset", choices=["cifar10", "fashion-mnist"], default="cifar10",
                   help="training set; fashion-mnist is padded to 32x32 and repeated to 3 channels")
    g.add_argument("--scratch-train-size", type=n0, default=0, help="training images, 0 = the whole split")
    g.add_argument("--scratch-epochs", type=pint, default=15, help="epochs for both networks (He et al.'s 164-epoch "
                   "schedule compressed: lr / 10 at 50%% and 75%% of the steps)")
    return parser


def check_args(args, recipe: Recipe | None = None) -> None:
    """Flags that only make sense together or with the recipe, checked right after parsing (one
    line, exit 2). Size 0 = the whole split: CIFAR-10 has 50,000 / 10,000 images (smoke 1,000 / 500)."""
    r, chosen, req = recipe or (SMOKE_RECIPE if args.smoke else RECIPE), set(args.experiments), harness.require
    n_train = args.train_size or (1000 if args.smoke else 50000)
    n_test = args.test_size or (500 if args.smoke else 10000)
    if chosen - {"scratch_shortcuts"}:  # every other experiment splits CIFAR-10's training images
        req(r.val_size < n_train, f"--train-size {args.train_size} leaves no training images beside the recipe's "
                                  f"val_size {r.val_size} held out for validation")
    if "features" in chosen:
        req(args.n_vis <= n_test, f"--n-vis {args.n_vis} exceeds the {n_test} test images (--test-size "
                                  f"{args.test_size}); t-SNE/UMAP would silently embed fewer")
        req(r.probe_train_size <= n_train - r.val_size,
            f"--train-size {args.train_size} leaves {n_train - r.val_size} training images beside the validation "
            f"set, fewer than the recipe's probe_train_size {r.probe_train_size}")
    if "transfer" in chosen and args.transfer_train_size:
        req(r.transfer_val_size < args.transfer_train_size, f"--transfer-train-size {args.transfer_train_size} "
            f"leaves no training images beside the recipe's transfer_val_size {r.transfer_val_size}")
    if "scratch_shortcuts" in chosen:
        req(args.scratch_train_size != 1, "--scratch-train-size 1 leaves no minibatch of two images to train on")


# ---- Data: uint8 images on the device, resized per batch; models: torchvision ResNets ----

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Data:
    """One dataset on the device: uint8 images [N, 3, h, w] (CIFAR-10 train: 150 MB, 30 GB as 224 px
    floats: preprocess resizes per batch), labels [N], class names, a seeded train/val split."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list
    train_idx: torch.Tensor
    val_idx: torch.Tensor


def load_dataset(name: str, train_size: int, test_size: int, val_size: int, args, device: torch.device) -> Data:
    """Both splits of `name` on the device (size > 0: a seeded subset), `val_size` images held out."""
    def split(train: bool, size: int):
        x, y, classes = common.load_split(name, args.data_root, train, smoke=args.smoke, seed=args.seed,
                                          smoke_size=size or None)
        if 0 < size < len(y):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:size]
            x, y = x[keep], y[keep]
        return x.to(device), y.to(device), classes

    (x_train, y_train, classes), (x_test, y_test, _) = split(True, train_size), split(False, test_size)
    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    return Data(x_train, y_train, x_test, y_test, classes, perm[val_size:], perm[:val_size])


def load_data(args, r: Recipe, device: torch.device) -> tuple[Data | None, Data | None, Data | None]:
    """(CIFAR-10, the transfer dataset, the scratch_shortcuts dataset at 32 px), each when read."""
    chosen, data, tdata, sdata = set(args.experiments), None, None, None
    if chosen - {"scratch_shortcuts"}:  # every other experiment reads CIFAR-10 and the backbone
        data = load_dataset("cifar10", args.train_size, args.test_size, r.val_size, args, device)
        print(f"CIFAR-10: {len(data.train_idx)} train, {len(data.val_idx)} val, {len(data.y_test)} test images, "
              f"resized to {args.img_size} px", flush=True)
    if "transfer" in chosen:
        tdata = load_dataset(args.transfer_dataset, args.transfer_train_size, r.transfer_test_size,
                             r.transfer_val_size, args, device)
    if "scratch_shortcuts" in chosen:
        s = load_dataset(args.scratch_dataset, args.scratch_train_size, r.scratch_test_size, 0, args, device)
        sdata = dataclasses.replace(s, x_train=scratch_images(s.x_train), x_test=scratch_images(s.x_test))
        print(f"{args.scratch_dataset}: {len(s.y_train)} train, {len(s.y_test)} test images at 32 px", flush=True)
    return data, tdata, sdata


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation on a float batch [B, 3, H, W]: reflect-pad 4 px,
    crop back to H x W at a random offset, flip half the images left-right."""
    b, _, h, w = x.shape
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    oy, ox = (torch.randint(0, 9, (2, b), generator=gen)).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    out = pad[torch.arange(b, device=x.device)[:, None, None, None],
              torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


def preprocess(x: torch.Tensor, img_size: int, augment: bool = False, gen: torch.Generator | None = None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> normalised float [B, 3, S, S] (common.resize_normalise), with
    `augment` cropped and flipped first; ImageNet statistics unless `mean`/`std` are given."""
    if augment:
        x = random_crop_flip(x.float().div(255.0), gen)
    return common.resize_normalise(x, img_size, mean, std)


def weights_name(arch: str, weights: str) -> str:
    """The torchvision weights --weights names for `arch`, recorded in metrics.json and the cache keys: "none",
    "IMAGENET1K_V1" (imagenet, so `depth` compares depths, not recipes: Kornblith et al. 2021 found label smoothing
    and the like make frozen features transfer worse) or "IMAGENET1K_V2" (imagenet-v2, where it exists). Both share
    ImageNet's mean and std; their 256 vs 232 px resize-then-crop is for photos, preprocess resizes CIFAR's."""
    if weights == "none":
        return "none"
    v2 = weights == "imagenet-v2" and hasattr(torchvision.models.get_model_weights(arch), "IMAGENET1K_V2")
    return "IMAGENET1K_V2" if v2 else "IMAGENET1K_V1"


def build_resnet(arch: str, weights: str) -> nn.Module:
    """torchvision `arch` with the ImageNet weights weights_name names, or random."""
    if (name := weights_name(arch, weights)) == "none":
        return torchvision.models.get_model(arch, weights=None)
    w = torchvision.models.get_model_weights(arch)[name]  # the enum member, e.g. ResNet152_Weights.IMAGENET1K_V1
    try:  # torch.hub reports the download on stderr; it is progress, not an error
        with contextlib.redirect_stderr(sys.stdout):
            return torchvision.models.get_model(arch, weights=w)
    except Exception as e:  # URLError offline, OSError (disk), RuntimeError (corrupt or wrong hash)
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise harness.UserError(
            f"could not get the {arch} ImageNet weights ({w}) into {Path(torch.hub.get_dir()) / 'checkpoints'} "
            f"({reason}); put the .pth file there or set TORCH_HOME to a folder that has it, "
            f"or run with --weights none or --smoke") from None


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    return model.to(device, memory_format=torch.channels_last) if device.type in common.CHANNELS_LAST \
        else model.to(device)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                          device: torch.device) -> int:
    """Set every BatchNorm layer's running mean and variance to the average of its batch
    statistics over `images` (uint8 [N, 3, h, w]): torch.optim.swa_utils.update_bn on
    batches of `batch_size` (two images at least), preprocessed and autocast like this
    task's forward passes. Returns the number of images used.
    Why: torchvision starts every running mean at 0 and variance at 1, so a frozen random
    ResNet-152 in eval mode normalises nothing: its pooled features reached 2.4e8 at 224 px
    and the scratch transfer arms trained at losses ~1e8. Recalibrated, it is a
    well-scaled random function, and each image's features stay independent of its batch."""
    step = max(2, batch_size)  # a batch of one has no variance (and BatchNorm refuses it at 1x1)
    batches = [b for b in (images[i:i + step] for i in range(0, len(images), step)) if len(b) >= 2]
    with common.autocast(device):
        torch.optim.swa_utils.update_bn((preprocess(b, img_size) for b in harness.progress(
            batches, "BatchNorm statistics")), model)
    return sum(len(b) for b in batches)


def prepare_backbone(arch: str, weights: str, calib_images: torch.Tensor, args, device: torch.device) -> nn.Module:
    """`arch` with --weights on the device in eval mode; a random init with BatchNorm
    statistics measured on `calib_images`."""
    model = to_device(build_resnet(arch, weights), device)
    n = weights == "none" and recalibrate_batchnorm(model, calib_images, args.img_size, args.eval_batch_size, device)
    print(f"{arch} (weights: {weights_name(arch, weights)}): {sum(p.numel() for p in model.parameters()) / 1e6:.1f}"
          f" M parameters" + (f", BatchNorm statistics measured on {n} training images" if n else ""), flush=True)
    return model.eval()


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> globally average-pooled features [B, C] (C = 2048 for ResNet-50/101/152)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def resolve_blocks(arch: str, spec: str) -> list[str]:
    """--ablate-blocks -> block names checked against `arch` (built on the meta device);
    auto = the middle block of every stage."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    if spec == "auto":
        return [f"layer{s}.{len(getattr(model, f'layer{s}')) // 2}" for s in range(1, 5)]
    names = [t.strip() for t in spec.split(",") if t.strip()]
    valid = residual_blocks(model)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        ranges = ", ".join(f"layer{s}.0-{len(getattr(model, f'layer{s}')) - 1}" for s in range(1, 5))
        raise harness.UserError(f"--ablate-blocks: unknown block {','.join(bad) or repr(spec)} for {arch}; "
                                f"its blocks are {ranges}")
    return [n for n in valid if n in names]


# ---- Feature extraction (cached), head training and experiment 1: baseline ----


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                     device: torch.device, desc: str = "features") -> torch.Tensor:
    """uint8 [N, 3, h, w] -> pooled features float32 [N, C], one eval-mode pass."""
    model.eval()
    out = []
    for i in harness.progress(range(0, len(images), batch_size), desc, math.ceil(len(images) / batch_size)):
        with common.autocast(device):
            out.append(backbone_features(model, preprocess(images[i:i + batch_size], img_size)).float())
    return torch.cat(out)


# What decides a backbone's features besides their settings: the cache keys hash their source.
FEATURE_CODE = (extract_features, backbone_features, preprocess, recalibrate_batchnorm, residual_branch_only)


def feature_settings(args, r: Recipe, arch: str, split: str, n: int, device, ablated: list[str] = ()) -> dict:
    """Everything that determines a set of CIFAR-10 features (their cache key), their precision too."""
    return {"arch": arch, "weights": weights_name(arch, args.weights), "img_size": args.img_size, "split": split,
            "n": n, "data": f"{'smoke' if args.smoke else 'real'}-seed{args.seed}", "ablated": list(ablated),
            "bn_calib": r.bn_calib_size if args.weights == "none" else None, "precision": common.compute_dtype(device)}


def pooled_features(model: nn.Module, arch: str, data: Data, args, r: Recipe, device: torch.device,
                    cached: harness.Cache, ablated: list[str] = ()) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """CIFAR-10 pooled features of `model` (`arch`, with the shortcuts of `ablated` cut) on
    the device: (train [N, C], test [M, C], extraction seconds, None when either came from
    cache/). Cached in float32: random or ablated networks' features pass float16's 65,504."""
    feats, seconds = [], []
    for split, images in (("train", data.x_train), ("test", data.x_test)):
        def extract(split=split, images=images) -> torch.Tensor:
            sync(device)
            t0 = time.perf_counter()
            f = extract_features(model, images, args.img_size, args.eval_batch_size, device, f"{arch} {split}")
            sync(device)
            seconds.append(time.perf_counter() - t0)
            print(f"extracted {arch} features of {len(images)} {split} images in {seconds[-1]:.1f} s "
                  f"({len(images) / seconds[-1]:.0f} images/s)", flush=True)
            return f.cpu()

        settings = feature_settings(args, r, arch, split, len(images), device, ablated)
        feats.append(cached("features", settings, extract, code=FEATURE_CODE).to(device))
    return feats[0], feats[1], sum(seconds) if len(seconds) == 2 else None


def cached_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator):
    """One epoch of shuffled (features [B, C], labels [B]) from cached features."""
    perm = torch.randperm(len(labels), generator=gen).to(labels.device)
    for i in range(0, len(perm) - 1, batch_size):  # "- 1": never a last batch of one (BatchNorm needs two)
        idx = perm[i:i + batch_size]
        yield feats[idx], labels[idx]


def backbone_batches(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     img_size: int, device: torch.device, gen: torch.Generator, augment: bool):
    """One epoch of the same minibatches, the features recomputed by the frozen backbone
    from optionally augmented images (--augment; also what a head without a cache costs)."""
    model.eval()
    perm = torch.randperm(len(labels), generator=gen).to(labels.device)
    for i in range(0, len(perm) - 1, batch_size):  # "- 1": never a last batch of one (BatchNorm needs two)
        idx = perm[i:i + batch_size]
        with torch.no_grad(), common.autocast(device):
            feats = backbone_features(model, preprocess(images[idx], img_size, augment, gen)).float()
        yield feats, labels[idx]


@torch.no_grad()
def evaluate_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(mean cross-entropy, accuracy, predictions) of a head on features."""
    head.eval()
    logits = head(feats)
    pred = logits.argmax(1)
    return F.cross_entropy(logits, labels).item(), (pred == labels).float().mean().item(), pred


def make_head(dim: int, n_classes: int) -> nn.Module:
    """BatchNorm without affine parameters, then Linear [C -> K]: MAE's linear-probing head (He et al. 2022, sec.
    A.2), so one learning rate serves every backbone, depth and ablation, whose feature scales differ a lot. Not
    MAE's recipe (BatchNorm eps 1e-6, trunc_normal init std 0.01, LARS, 90 epochs): PyTorch's defaults, AdamW."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_classes))


def train_head(epoch_batches, dim: int, n_classes: int, val_feats: torch.Tensor, val_labels: torch.Tensor,
               epochs: int, lr: float, weight_decay: float, seed: int, desc: str) -> tuple[nn.Module, dict]:
    """A linear head (make_head) trained with AdamW (lr cosine-decayed per epoch) on the
    minibatches `epoch_batches()` yields each epoch. Returns (head, per-epoch history: train
    loss/accuracy as running means over the epoch, validation loss/accuracy)."""
    torch.manual_seed(seed)
    head = make_head(dim, n_classes).to(val_feats.device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    hist = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    for epoch in range(epochs):
        head.train()
        loss_sum = correct = torch.zeros((), device=val_feats.device)
        n = 0
        for f, y in epoch_batches():
            logits = head(f)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + (logits.argmax(1) == y).sum()
            n += len(y)
        common.check_finite(loss_sum, f"{desc} training loss")  # one sync per epoch
        sched.step()
        val_loss, val_acc, _ = evaluate_head(head, val_feats, val_labels)
        for k, v in zip(hist, (loss_sum.item() / n, correct.item() / n, val_loss, val_acc)):
            hist[k].append(v)
        print(f"{desc} epoch {epoch + 1}/{epochs}: train loss {hist['train_loss'][-1]:.4f} "
              f"acc {hist['train_acc'][-1]:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
    return head, hist


def linear_head(ftr: torch.Tensor, data: Data, args, r: Recipe, desc: str,
                through: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """train_head with the baseline's recipe on the pooled training features `ftr` [N, C],
    validated on data.val_idx; with `through` (the frozen backbone) on augmented images."""
    tr, va, y = data.train_idx, data.val_idx, data.y_train
    gen = torch.Generator().manual_seed(args.seed)

    def batches():  # one epoch of minibatches
        if through is not None:
            return backbone_batches(through, data.x_train[tr], y[tr], args.batch_size, args.img_size, ftr.device,
                                    gen, augment=True)
        return cached_batches(ftr[tr], y[tr], args.batch_size, gen)

    return train_head(batches, ftr.shape[1], len(data.classes), ftr[va], y[va], args.epochs, r.lr, r.weight_decay,
                      args.seed, desc)


def fit_baseline(model: nn.Module, data: Data, pooled: tuple, args, r: Recipe) -> dict:
    """The head every other experiment compares with, trained on `pooled` (train, test, seconds) or with
    --augment through the frozen backbone on augmented images; its test accuracy, confusion matrix and costs."""
    ftr, fte, extract_seconds = pooled
    t0 = time.perf_counter()
    head, hist = linear_head(ftr, data, args, r, "baseline head", through=model if args.augment else None)
    head_seconds = time.perf_counter() - t0
    test_loss, test_acc, pred = evaluate_head(head, fte, data.y_test)
    return {"head": head, "history": hist, "test_loss": test_loss, "test_acc": test_acc,
            "confusion": common.confusion_matrix(data.y_test.cpu().numpy(), pred.cpu().numpy(), len(data.classes)),
            "feature_dim": ftr.shape[1], "extract_seconds": extract_seconds, "head_seconds": head_seconds,
            "weights_loaded": weights_name(args.arch, args.weights)}


def baseline(fit: dict, data: Data) -> tuple[dict, dict]:
    """Handout 1.1: a frozen backbone and a linear head (fit_baseline's result)."""
    h, n_img, extract = fit["history"], len(data.y_train) + len(data.y_test), fit["extract_seconds"]
    return {"test_acc": fit["test_acc"], "test_loss": fit["test_loss"],
            "final_train_acc": h["train_acc"][-1], "final_val_acc": h["val_acc"][-1],
            "final_train_loss": h["train_loss"][-1], "final_val_loss": h["val_loss"][-1],
            "history": h, "feature_dim": fit["feature_dim"], "extract_seconds": extract,
            "extract_images_per_s": None if not extract else n_img / extract,
            "head_seconds": fit["head_seconds"], "confusion": fit["confusion"],
            "weights_loaded": fit["weights_loaded"]}, {"classes": data.classes}


# ---- Experiment 2: residual connections ----


def gradient_norms(arch: str, images: torch.Tensor, labels: torch.Tensor, n_classes: int, img_size: int,
                   device: torch.device, seed: int, cut: bool) -> tuple[dict, float]:
    """One forward/backward of a random `arch` (train mode, fp32) on a batch: ({"stem": ..., "layer1.0": ...} L2 norms
    of each block's gradient without the downsample shortcuts, which the plain network (`cut`) never uses; the loss).
    He et al. 2016 (sec. 4.1) found healthy gradients in plain nets with BatchNorm; a random ResNet-152 (64 px, batch 8,
    seed 0) gives stem / layer4 494 with shortcuts (467 counting layer4.0's downsample) and 2.4e10 without."""
    torch.manual_seed(seed)
    model = to_device(torchvision.models.get_model(arch, weights=None, num_classes=n_classes), device).train()
    if cut:
        cut_shortcuts(model, residual_blocks(model))
    loss = F.cross_entropy(model(preprocess(images, img_size)), labels)
    loss.backward()

    def norm(module):  # over the parameters both networks use
        return math.sqrt(sum(float(p.grad.float().pow(2).sum()) for n, p in module.named_parameters()
                             if p.grad is not None and not n.startswith("downsample.")))

    norms = {"stem": math.sqrt(norm(model.conv1) ** 2 + norm(model.bn1) ** 2)}
    norms.update({name: norm(model.get_submodule(name)) for name in residual_blocks(model)})
    return norms, loss.item()


def residual(model: nn.Module, data: Data, base: dict, selected: list[str], args, r: Recipe, device: torch.device,
             cached: harness.Cache) -> tuple[dict, dict]:
    """Handout 1.2: shortcuts cut in the backbone (each set of CUT_SETS), features
    re-extracted, the head retrained as in the baseline `base` and `base`'s head scored
    unchanged; gradient norms at random initialisation with and without shortcuts."""
    blocks = residual_blocks(model)
    cuts = dict(zip(CUT_SETS, [selected, *([b for b in blocks if b.startswith(f"layer{s}.")] for s in range(1, 5)),
                               blocks]))  # selected, each stage, all
    metrics = {"baseline_test_acc": base["test_acc"], "selected_blocks": ",".join(selected)}
    curves = {"baseline (no cut)": base["history"]}
    for name, cut in cuts.items():
        with shortcuts_cut(model, cut):
            ftr, fte, _ = pooled_features(model, args.arch, data, args, r, device, cached, ablated=cut)
        head, hist = linear_head(ftr, data, args, r, f"cut {name} ({len(cut)} blocks)")
        _, acc, _ = evaluate_head(head, fte, data.y_test)
        _, acc_frozen_head, _ = evaluate_head(base["head"], fte, data.y_test)
        curves[f"cut {name} ({len(cut)})"] = hist
        metrics[name] = {"blocks_cut": len(cut), "test_acc_retrained": acc, "test_acc_no_retrain": acc_frozen_head,
                         "final_val_acc": hist["val_acc"][-1], "final_train_loss": hist["train_loss"][-1]}
        print(f"cut {name}: test acc {acc:.4f} retrained, {acc_frozen_head:.4f} with the baseline head", flush=True)

    idx = data.train_idx[:r.grad_batch]
    grads, losses = {}, {}
    for label, cut in (("with_shortcuts", False), ("without_shortcuts", True)):
        grads[label], losses[label] = gradient_norms(args.arch, data.x_train[idx], data.y_train[idx],
                                                     len(data.classes), args.img_size, device, args.seed, cut)
    metrics["gradnorm"] = {label: {"stem": g["stem"], **{  # per stage: sqrt of its blocks' summed squares
        f"layer{s}": math.sqrt(sum(v ** 2 for n, v in g.items() if n.startswith(f"layer{s}."))) for s in range(1, 5)}}
        for label, g in grads.items()}
    metrics["gradnorm_stem_over_layer4"] = {label: g["stem"] / max(g["layer4"], 1e-30)
                                            for label, g in metrics["gradnorm"].items()}
    metrics["init_loss"] = losses
    return metrics, {"curve_names": list(curves), "n_classes": len(data.classes), "grad_images": len(idx),
                     "train_loss": [h["train_loss"] for h in curves.values()],
                     "val_acc": [h["val_acc"] for h in curves.values()], "block_names": list(grads["with_shortcuts"]),
                     **{f"grad_{k}": list(grads[f"{k}_shortcuts"].values()) for k in ("with", "without")}}


# ---- Experiment 3: the feature hierarchy ----


@torch.no_grad()
def stage_features(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """{stage: float32 [N, C] on the CPU}: forward hooks on the stem and the four stages
    average each output over space; removed afterwards, even on error."""
    store = {name: [] for name in STAGES}

    def hook(name):
        return lambda module, inputs, output: store[name].append(output.float().mean((2, 3)).cpu())

    handles = [model.get_submodule(mod).register_forward_hook(hook(name)) for name, mod in STAGES.items()]
    try:
        model.eval()
        for i in harness.progress(range(0, len(images), batch_size), "stage features",
                                  math.ceil(len(images) / batch_size)):
            with common.autocast(device):
                model(preprocess(images[i:i + batch_size], img_size))
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v) for name, v in store.items()}


def most_confused_pairs(cm: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k class pairs (i < j, count) with the most confusions cm[i, j] + cm[j, i], most first."""
    cm = np.asarray(cm)
    pairs = [(i, j, int(cm[i, j] + cm[j, i])) for i in range(len(cm)) for j in range(i + 1, len(cm))]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:k]


def class_separation(feats: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]]) -> list[float]:
    """Per class pair, ||mu_i - mu_j|| / sqrt((s_i^2 + s_j^2) / 2), s_c = RMS distance of
    class c's points to its centroid mu_c: above ~2 the classes barely overlap."""
    feats, labels = np.asarray(feats, np.float64), np.asarray(labels)
    mu, s2 = {}, {}
    for c in {c for p in pairs for c in p}:
        x = feats[labels == c]
        mu[c] = x.mean(0)
        s2[c] = ((x - mu[c]) ** 2).sum(1).mean()
    return [float(np.linalg.norm(mu[i] - mu[j]) / math.sqrt(max((s2[i] + s2[j]) / 2, 1e-12))) for i, j in pairs]


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (majority of the k nearest other points, ties to the
    smaller label): how well a space, features or 2-D map, keeps classes together."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    k = min(k, len(labels) - 1)
    if k < 1:
        return float("nan")
    nbrs = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)  # [N, k], self excluded
    votes = np.stack([np.bincount(row, minlength=labels.max() + 1) for row in labels[nbrs]])
    return float((votes.argmax(1) == labels).mean())


def trustworthiness(x: np.ndarray, xy: np.ndarray, k: int = 5) -> float:
    """scikit-learn's trustworthiness of a 2-D map (Venna & Kaski 2001): 1 when every point's
    k nearest neighbours in the map are among its nearest in the original space."""
    from sklearn.manifold import trustworthiness as tw

    k = min(k, (len(x) - 1) // 2)  # scikit-learn needs k < N / 2
    return float(tw(x, xy, n_neighbors=k)) if k >= 1 else float("nan")


def features(model: nn.Module, data: Data, confusion: np.ndarray, args, r: Recipe, device: torch.device,
             cached: harness.Cache) -> tuple[dict, dict]:
    """Handout 1.3 and 1.5: stage features of --n-vis test and probe_train_size training images
    scored per depth (probe, silhouette, k-NN); cached 2-D maps (t-SNE of 2,000 points x 5 depths
    takes a minute) scored by the neighbourhoods they keep; where the most-confused pairs sit."""
    from sklearn.metrics import silhouette_score

    g = torch.Generator().manual_seed(args.seed + 2)
    vis = torch.randperm(len(data.y_test), generator=g)[:args.n_vis].to(device)
    probe = data.train_idx[:r.probe_train_size]
    settings = {**feature_settings(args, r, args.arch, "stages", len(vis), device), "probe_n": len(probe),
                "val_size": r.val_size}  # which training images the probe set holds
    blob = cached("stagefeats", settings, lambda: {
        split: stage_features(model, images, args.img_size, args.eval_batch_size, device)
        for split, images in (("test", data.x_test[vis]), ("train", data.x_train[probe]))},
        code=(stage_features, preprocess, recalibrate_batchnorm))
    y_te, y_tr = data.y_test[vis].cpu().numpy(), data.y_train[probe].cpu().numpy()
    metrics = {"probe_acc": {}, "silhouette": {}, "dim": {}}
    z = {}  # standardised test features per stage, so a few high-variance channels do not dominate distances
    for stage in STAGES:
        te, trn = blob["test"][stage].numpy(), blob["train"][stage].numpy()
        z[stage] = (te - te.mean(0)) / (te.std(0) + 1e-6)
        metrics["probe_acc"][stage] = common.linear_probe(trn, y_tr, te, y_te, seed=args.seed)["test_acc"]
        n_labels = len(set(y_te.tolist()))  # silhouette is defined for 2 .. n - 1 clusters (NaN otherwise)
        with harness.few_threads(len(te)):
            metrics["silhouette"][stage] = float(silhouette_score(z[stage], y_te)) if 2 <= n_labels < len(y_te) \
                else float("nan")
        metrics["dim"][stage] = te.shape[1]
        print(f"{stage}: {te.shape[1]} channels, probe acc {metrics['probe_acc'][stage]:.4f}, "
              f"silhouette {metrics['silhouette'][stage]:.4f}", flush=True)
    metrics["knn_acc"] = {s: knn_accuracy(z[s], y_te) for s in STAGES}  # the full-dimensional reference
    xy, metrics["embedding"] = {}, {}
    for method in ["tsne", "umap"] if args.embed == "both" else [args.embed]:
        def embed(method=method) -> dict:
            t0 = time.perf_counter()
            maps = {s: torch.from_numpy(common.embed_2d(z[s], method, args.seed)) for s in STAGES}
            return {"xy": maps, "seconds": time.perf_counter() - t0}

        emb = cached("embed", {**settings, "method": method}, embed, code=(common.embed_2d, stage_features, features))
        xy[method] = {s: emb["xy"][s].numpy() for s in STAGES}
        metrics["embedding"][method] = {"seconds": emb["seconds"],  # when it was computed (maybe by an earlier run)
                                        "trustworthiness": {s: trustworthiness(z[s], xy[method][s]) for s in STAGES},
                                        "knn_acc_2d": {s: knn_accuracy(xy[method][s], y_te) for s in STAGES}}
    pairs = most_confused_pairs(confusion, r.n_pairs)
    all_pairs = [(i, j) for i in range(len(data.classes)) for j in range(i + 1, len(data.classes))
                 if (y_te == i).any() and (y_te == j).any()]
    sep = {s: class_separation(z[s], y_te, [(i, j) for i, j, _ in pairs]) for s in STAGES}
    metrics["mean_pair_separation"] = {s: float(np.mean(class_separation(z[s], y_te, all_pairs))) for s in STAGES}
    metrics["confused_pairs"] = {f"{data.classes[i]}_vs_{data.classes[j]}": {
        "confusions": count, "separation": {s: sep[s][n] for s in STAGES}} for n, (i, j, count) in enumerate(pairs)}
    return metrics, {"labels": y_te, "classes": data.classes,
                     **{f"xy_{method}": np.stack([xy[method][s] for s in STAGES]) for method in xy}}


# ---- Experiment 4: transfer strategies ----


def freeze_for_transfer(model: nn.Module, strategy: str) -> int:
    """Trainable only what `strategy` fine-tunes (head: fc; layer4: layer4 + fc; full); returns their count."""
    model.requires_grad_(strategy == "full")
    if strategy == "layer4":
        model.layer4.requires_grad_(True)
    model.fc.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def transfer_train_mode(model: nn.Module, strategy: str) -> None:
    """Train mode where weights train and in the fc (its BatchNorm): frozen BatchNorm layers keep their statistics."""
    model.train(strategy == "full")
    if strategy == "layer4":
        model.layer4.train()
    model.fc.train()


@torch.no_grad()
def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, img_size: int,
                   batch_size: int, device: torch.device, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a whole network on uint8 images, normalised with `mean`/`std`."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        with common.autocast(device):
            logits = model(preprocess(images[i:i + batch_size], img_size, mean=mean, std=std)).float()
        loss_sum += F.cross_entropy(logits, labels[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == labels[i:i + batch_size]).sum().item()
    return loss_sum / len(labels), correct / len(labels)


def transfer_model(init: str, strategy: str, backbone: nn.Module, data: Data, args, r: Recipe,
                   device: torch.device) -> nn.Module:
    """An arm's starting network: a copy of the --weights backbone, or a random init with BatchNorm statistics
    of the transfer images (its frozen layers need them); a new fc, the baseline's make_head for `head`."""
    if init == "pretrained":
        model = copy.deepcopy(backbone)
    else:
        model = to_device(torchvision.models.get_model(args.arch, weights=None), device)
        recalibrate_batchnorm(model, data.x_train[data.train_idx[:r.bn_calib_size]], args.img_size,
                              args.eval_batch_size, device)
    model.fc = (make_head if strategy == "head" else nn.Linear)(model.fc.in_features, len(data.classes))
    return to_device(model, device)


def transfer_optimizer(model: nn.Module, init: str, r: Recipe) -> torch.optim.Optimizer:
    """AdamW over what trains: pretrained arms fc at transfer_lr, backbone at backbone_lr_mult x that;
    scratch arms every layer at transfer_scratch_lr (a from-scratch lr, Recipe)."""
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    fc_lr, body_lr = ((r.transfer_lr, r.transfer_lr * r.backbone_lr_mult) if init == "pretrained"
                      else (r.transfer_scratch_lr, r.transfer_scratch_lr))
    groups = [{"params": list(model.fc.parameters()), "lr": fc_lr}, {"params": body, "lr": body_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=r.transfer_weight_decay)


def fine_tune(model: nn.Module, init: str, strategy: str, data: Data, args, r: Recipe,
              device: torch.device) -> tuple[dict, float]:
    """--transfer-epochs of transfer_optimizer, cosine-decayed per step, on what `strategy` trains: (history, s)."""
    x, y, tr, va, bs = data.x_train, data.y_train, data.train_idx, data.val_idx, args.transfer_batch_size
    arm, opt = f"{init}_{strategy}", transfer_optimizer(model, init, r)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.transfer_epochs * math.ceil(len(tr) / bs))
    scaler = common.grad_scaler(device)  # loss scaling where training runs in float16
    gen = torch.Generator().manual_seed(args.seed)
    hist, train_seconds = {"train_loss": [], "val_loss": [], "val_acc": []}, 0.0
    for epoch in range(args.transfer_epochs):
        transfer_train_mode(model, strategy)
        sync(device)
        t0 = time.perf_counter()
        perm = tr[torch.randperm(len(tr), generator=gen).to(device)]
        loss_sum, seen = torch.zeros((), device=device), 0
        for i in harness.progress(range(0, len(perm) - 1, bs), arm, math.ceil((len(perm) - 1) / bs)):  # no batch of one
            idx = perm[i:i + bs]
            with common.autocast(device, train=True):
                logits = model(preprocess(x[idx], args.img_size)).float()
            loss = F.cross_entropy(logits, y[idx])
            if common.optimiser_step(loss, opt, scaler):  # a step loss scaling skipped moves no schedule
                sched.step()
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
        common.check_finite(loss_sum, f"{arm} training loss")
        sync(device)
        train_seconds += time.perf_counter() - t0
        val_loss, val_acc = evaluate_model(model, x[va], y[va], args.img_size, args.eval_batch_size, device)
        for key, v in zip(hist, (loss_sum.item() / seen, val_loss, val_acc)):
            hist[key].append(v)
        print(f"transfer {arm} epoch {epoch + 1}/{args.transfer_epochs}: train loss {hist['train_loss'][-1]:.4f} "
              f"| val loss {val_loss:.4f} acc {val_acc:.4f} ({train_seconds:.1f} s)", flush=True)
    return hist, train_seconds


def transfer(backbone: nn.Module, data: Data, args, r: Recipe, device: torch.device) -> tuple[dict, dict]:
    """Handout 1.4: {pretrained, scratch} x {head, layer4, full}, each fine_tune'd alike on `data`."""
    metrics, curves = {}, {}
    for init in TRANSFER_INITS:
        for strategy in TRANSFER_STRATEGIES:
            arm = f"{init}_{strategy}"
            common.seed_everything(args.seed)
            model = transfer_model(init, strategy, backbone, data, args, r, device)
            n_trainable = freeze_for_transfer(model, strategy)
            curves[arm], seconds = fine_tune(model, init, strategy, data, args, r, device)
            _, test_acc = evaluate_model(model, data.x_test, data.y_test, args.img_size, args.eval_batch_size, device)
            metrics[arm] = {"test_acc": test_acc, "final_val_acc": curves[arm]["val_acc"][-1],
                            "final_train_loss": curves[arm]["train_loss"][-1], "trainable_params": n_trainable,
                            "train_seconds": seconds}
            del model
    metrics["pretrained_weights"] = weights_name(args.arch, args.weights)
    metrics["recipe"] = {"epochs": args.transfer_epochs, "pretrained_fc_lr": r.transfer_lr, "scratch_lr":
                         r.transfer_scratch_lr, "pretrained_backbone_lr": r.transfer_lr * r.backbone_lr_mult}
    return metrics, {"arms": list(curves), "n_classes": len(data.classes), "train_images": len(data.train_idx),
                     "train_loss": [h["train_loss"] for h in curves.values()],
                     "val_acc": [h["val_acc"] for h in curves.values()]}


# ---- Experiment 5: depth (ResNet-18 vs ResNet-152) ----


@torch.no_grad()
def measure_throughput(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                       device: torch.device, n_batches: int) -> float:
    """Feature-extraction images/s, resize included: the median of n_batches after a warm-up."""
    model.eval()
    batch, times = images[:batch_size], []
    for _ in range(n_batches + 1):
        sync(device)
        t0 = time.perf_counter()
        with common.autocast(device):
            backbone_features(model, preprocess(batch, img_size))
        sync(device)
        times.append(time.perf_counter() - t0)
    return len(batch) / float(np.median(times[1:]))  # the first batch warms up


def depth(backbone: nn.Module, pooled, data: Data, args, r: Recipe, device: torch.device,
          cached: harness.Cache) -> tuple[dict, dict]:
    """Handout 1.5 (optional), for each of the recipe's depth_archs: pooled features (--arch's from
    `pooled()`, the baseline's), the baseline's head, a logistic probe, extraction speed."""
    metrics, calib = {}, data.x_train[data.train_idx[:r.bn_calib_size]]  # BatchNorm statistics of random inits
    for arch in r.depth_archs:
        model = backbone if arch == args.arch else prepare_backbone(arch, args.weights, calib, args, device)
        ftr, fte, _ = pooled() if model is backbone else pooled_features(model, arch, data, args, r, device, cached)
        head, _ = linear_head(ftr, data, args, r, f"{arch} head")
        _, head_acc, _ = evaluate_head(head, fte, data.y_test)
        p = data.train_idx[:r.probe_train_size]
        probe_acc = common.linear_probe(ftr[p].cpu().numpy(), data.y_train[p].cpu().numpy(), fte.cpu().numpy(),
                                        data.y_test.cpu().numpy(), seed=args.seed)["test_acc"]
        ips = measure_throughput(model, data.x_test, args.img_size, args.eval_batch_size, device, r.throughput_batches)
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
        metrics[arch] = {"head_acc": head_acc, "probe_acc": probe_acc, "images_per_s": ips,
                         "backbone_params_millions": n_params / 1e6, "feature_dim": ftr.shape[1],
                         "weights_loaded": weights_name(arch, args.weights)}
        print(f"{arch}: head acc {head_acc:.4f}, probe acc {probe_acc:.4f}, {ips:.0f} images/s", flush=True)
        del model
    return metrics, {"device": device.type}  # the figure names where the speeds were measured


# ---- Experiment 6: convergence from scratch, with and without shortcuts ----


def scratch_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, h, w] -> [N, 3, 32, 32]: FashionMNIST's 28 px zero-padded by 2 px (as
    LeNet-5 padded MNIST) and repeated to 3 channels; CIFAR unchanged."""
    pad = 32 - x.shape[-1]
    if pad > 0:
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def scratch_optimizer(model: nn.Module, total: int, r: Recipe) -> tuple[torch.optim.Optimizer, object]:
    """(SGD, per-step scheduler): lr / 10 at 50% and 75% of the `total` steps, He et al.'s
    schedule (32k and 48k of 64k) compressed, after a linear warm-up over scratch_warmup."""
    opt = torch.optim.SGD(model.parameters(), lr=r.scratch_lr, momentum=r.scratch_momentum,
                          weight_decay=r.scratch_weight_decay)
    warmup, drops = round(r.scratch_warmup * total), (total // 2, total * 3 // 4)

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / (warmup + 1)) * 0.1 ** sum(step >= d for d in drops)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def train_from_scratch(model: nn.Module, data: Data, mean: torch.Tensor, std: torch.Tensor, args, r: Recipe,
                       device: torch.device, desc: str) -> dict:
    """--scratch-epochs of scratch_optimizer on the training images (standardised by `mean`,
    `std`; scratch_augment crops and flips): every step's training loss and accuracy, test
    accuracy per epoch, seconds. A NaN/inf loss stops this network only (diverged_at_step)."""
    x, y = data.x_train, data.y_train
    bs = min(r.scratch_batch_size, len(y))
    # Full minibatches only: a last batch of a few images gives BatchNorm noisy statistics and, at lr 0.1, spikes.
    starts = range(0, len(y) - bs + 1, bs)
    total = args.scratch_epochs * len(starts)
    opt, sched = scratch_optimizer(model, total, r)
    scaler = common.grad_scaler(device)
    gen = torch.Generator().manual_seed(args.seed)  # the same minibatches and crops for every network
    hist = {"step_loss": [], "step_acc": [], "test_acc": [], "diverged_at_step": None, "seconds": 0.0,
            "steps_per_epoch": len(starts), "total_steps": total}
    for epoch in range(args.scratch_epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen).to(device)
        losses, accs = [], []
        for i in harness.progress(starts, f"{desc} epoch {epoch + 1}", len(starts)):
            idx = perm[i:i + bs]
            with common.autocast(device, train=True):
                logits = model(preprocess(x[idx], 32, r.scratch_augment, gen, mean, std)).float()
            loss = F.cross_entropy(logits, y[idx])
            if common.optimiser_step(loss, opt, scaler):  # a step loss scaling skipped moves no schedule
                sched.step()
            losses.append(loss.detach())
            accs.append((logits.argmax(1) == y[idx]).float().mean())
        losses, accs = torch.stack(losses).cpu(), torch.stack(accs).cpu()  # one sync per epoch
        sync(device)
        hist["seconds"] += time.perf_counter() - t0
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        ok = bad[0] if bad else len(losses)  # the steps before the first NaN/inf loss
        hist["step_loss"] += losses[:ok].tolist()
        hist["step_acc"] += accs[:ok].tolist()
        if ok < len(losses):
            hist["diverged_at_step"] = epoch * len(starts) + ok + 1
            print(f"{desc}: loss became {losses[ok].item()} at step {hist['diverged_at_step']}; this network stops",
                  flush=True)
            break
        hist["test_acc"].append(evaluate_model(model, data.x_test, data.y_test, 32, args.eval_batch_size, device,
                                               mean, std)[1])
        print(f"{desc} epoch {epoch + 1}/{args.scratch_epochs}: train loss {losses.mean():.4f} "
              f"acc {accs.mean():.4f} | test acc {hist['test_acc'][-1]:.4f} ({hist['seconds']:.1f} s)", flush=True)
    return hist


def windowed(values: list[float], window: int) -> tuple[list[int], list[float]]:
    """Means over consecutive windows of `window` steps (the last may be shorter) and the
    1-based step at each window's end."""
    starts = range(0, len(values), window)
    ends = [min(i + window, len(values)) for i in starts]
    return ends, [float(np.mean(values[i:e])) for i, e in zip(starts, ends)]


def steps_to_reach(ends: list[int], curve: list[float], target: float) -> int | None:
    """The first window end at which `curve` reaches `target`, None if it never does."""
    return next((e for e, v in zip(ends, curve) if v >= target), None)


def scratch_metrics(h: dict, n_params: int, target_acc: float) -> dict:
    """One network's summary of train_from_scratch's `h`: training loss at 10/25/50/100% of the
    budget and over the last epoch, test accuracy, steps to `target_acc`, windowed curves
    (~100 points; windows of 10 steps at least where that leaves 10 points)."""
    window = max(1, h["total_steps"] // 100, min(10, h["total_steps"] // 10))
    ends, loss_curve = windowed(h["step_loss"], window)
    _, acc_curve = windowed(h["step_acc"], window)
    last = h["step_loss"][-h["steps_per_epoch"]:]  # the last epoch (or what ran of it)

    def loss_at(fraction):  # windowed training loss at this fraction of the budget (None: diverged before it)
        step = max(1, round(fraction * h["total_steps"]))
        return next((v for e, v in zip(ends, loss_curve) if e >= step), None)

    return {"params": n_params, **{f"train_loss_at_{p}pct": loss_at(p / 100) for p in (10, 25, 50, 100)},
            "final_train_loss": float(np.mean(last)) if last else None,
            "final_train_acc": float(np.mean(h["step_acc"][-h["steps_per_epoch"]:])) if last else None,
            "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
            "steps_to_target_acc": steps_to_reach(ends, acc_curve, target_acc),
            "diverged_at_step": h["diverged_at_step"], "train_seconds": h["seconds"],
            "history": {"step": ends, "train_loss": loss_curve, "train_acc": acc_curve, "test_acc": h["test_acc"]}}


def scratch_shortcuts(data: Data, args, r: Recipe, device: torch.device) -> dict:
    """Handout 1.2, He et al. 2016, sec. 4.2, Fig. 6: at each of the recipe's scratch_depths the CIFAR ResNet
    and its plain twin from scratch, the pair from the same initial weights (option A shortcuts have no
    parameters); all networks see the same minibatches, crops and schedule. Degradation: the deeper plain net
    trains worse than the shallower (its final training loss is higher); shortcuts cure it."""
    pixels = data.x_train[:10000].float().div(255.0)  # per-channel statistics from up to 10,000 training images
    mean, std = pixels.mean((0, 2, 3)), pixels.std((0, 2, 3)).clamp_min(1e-3)
    del pixels
    nets = {}
    for depth, (arm, shortcuts) in itertools.product(r.scratch_depths, (("resnet", True), ("plain", False))):
        common.seed_everything(args.seed)  # initial weights: the same for both nets of a depth
        model = to_device(CifarResNet(depth, r.scratch_width, len(data.classes), shortcuts), device)
        h = train_from_scratch(model, data, mean, std, args, r, device, f"{'ResNet' if shortcuts else 'plain'}-{depth}")
        nets[f"{arm}{depth}"] = scratch_metrics(h, sum(p.numel() for p in model.parameters()), r.scratch_target_acc)
        del model
    lo, hi = r.scratch_depths[0], r.scratch_depths[-1]
    sub = lambda a, b, k: None if None in (a[k], b[k]) else a[k] - b[k]  # noqa: E731
    # Deepest minus shallowest: plain > 0 is the degradation problem, resnet <= 0 its cure; then the deepest pair.
    metrics = {"dataset": args.scratch_dataset, "depths": list(r.scratch_depths), "train_images": len(data.y_train),
               "target_acc": r.scratch_target_acc, "steps": h["total_steps"], "nets": nets,  # the same budget for all
               **{f"{a}_deeper_minus_shallower_{k}": sub(nets[f"{a}{hi}"], nets[f"{a}{lo}"], k)
                  for a in ("plain", "resnet") for k in ("final_train_loss", "test_acc")}}
    p, res, steps = nets[f"plain{hi}"], nets[f"resnet{hi}"], "steps_to_target_acc"
    metrics["plain_minus_residual_final_train_loss"] = sub(p, res, "final_train_loss")
    metrics["plain_over_residual_steps_to_target"] = p[steps] / res[steps] if p[steps] and res[steps] else None
    return metrics


# ---- main ----


def main(argv: list[str] | None = None, recipe: Recipe | None = None) -> dict:
    """`python Task1.py argv...`; `recipe` replaces RECIPE / SMOKE_RECIPE (tests: smaller sizes)."""
    parser = build_parser()
    args = harness.parse_args(parser, argv, smoke=SMOKE, check=lambda a: check_args(a, recipe))
    r = recipe or (SMOKE_RECIPE if args.smoke else RECIPE)
    with harness.user_errors(parser.prog, batch_flag="--eval-batch-size (transfer: --transfer-batch-size; "
                                                     "with --augment: --batch-size)"):
        if args.replot or len(args.seeds) > 1:  # figures only (no model, no data), or one run per seed
            return harness.redirect(report, args, argv, lambda a: main(a, recipe))
        # Check everything a user can get wrong before anything is loaded or written.
        selected = resolve_blocks(args.arch, args.ablate_blocks)
        if "features" in args.experiments and args.embed != "tsne" and importlib.util.find_spec("umap") is None:
            raise harness.UserError(f"--embed {args.embed} needs umap-learn (pip install umap-learn); "
                                    f"or use --embed tsne")
        device = common.pick_device(args.device, args.precision)
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick the fastest kernels
        common.seed_everything(args.seed)
        data, tdata, sdata = load_data(args, r, device)
        backbone = None if data is None else prepare_backbone(
            args.arch, args.weights, data.x_train[data.train_idx[:r.bn_calib_size]], args, device)
        cached = harness.Cache(args.out, args.fresh)

        @functools.cache
        def pooled():  # --arch's pooled CIFAR-10 features (train, test, seconds): baseline and depth share them
            return pooled_features(backbone, args.arch, data, args, r, device, cached)

        @functools.cache
        def fitted():  # the baseline head, which residual and features compare with
            return fit_baseline(backbone, data, pooled(), args, r)

        return harness.run(report, args, device, {
            "baseline": lambda: baseline(fitted(), data),
            "residual": lambda: residual(backbone, data, fitted(), selected, args, r, device, cached),
            "features": lambda: features(backbone, data, fitted()["confusion"], args, r, device, cached),
            "transfer": lambda: transfer(backbone, tdata, args, r, device),
            "depth": lambda: depth(backbone, pooled, data, args, r, device, cached),
            "scratch_shortcuts": lambda: scratch_shortcuts(sdata, args, r, device),
        }, recipe=r)


if __name__ == "__main__":
    main()
