"""Task 1: what an ImageNet-pretrained ResNet-152 knows about CIFAR-10, and why its shortcuts matter.

Six experiments on torchvision's ResNet-152 (He et al. 2016, "Deep Residual
Learning for Image Recognition"); --arch takes any torchvision ResNet, so ResNet-18
runs with the same code.
  baseline           frozen ImageNet backbone + a new linear head trained for --epochs on
                     CIFAR-10 (pooled features extracted once and cached, so the head
                     trains in seconds); loss/accuracy curves, test accuracy, confusion matrix
  residual           cut the shortcut of chosen blocks (block returns relu(F(x))), retrain
                     the head, compare with the baseline; per-block gradient norms at random
                     initialisation with and without shortcuts
  features           forward hooks at the stem and the four stages: t-SNE and UMAP panels
                     side by side, linear-probe accuracy and silhouette per depth, the
                     most-confused class pairs and how far apart they sit in feature space
  transfer           CIFAR-100: ImageNet weights vs random init, each fine-tuned as head
                     only, layer4 + head, and the full network; curves, accuracy, trainable
                     parameters and seconds per arm
  depth              ResNet-18 vs ResNet-152: probe and head accuracy, extraction speed
  scratch_shortcuts  convergence without shortcuts: a CIFAR-style ResNet-56 and the same
                     network with every shortcut removed (plain-56), trained from scratch
                     at the same budget (He et al. 2016, sec. 4.2, Fig. 6); training loss
                     and accuracy per step, test accuracy per epoch

Random weights (--weights none, and the scratch arms of transfer) get BatchNorm
statistics measured on --bn-calib-size training images before the network is frozen,
as a trained network has; see recalibrate_batchnorm.

Run:
  python Task1.py                          # everything (a GPU is strongly advised)
  python Task1.py --smoke --out /tmp/t1    # offline check: generated images, small random ResNets, ~15 s on CPU
  python Task1.py --experiments residual --arch resnet18
  python Task1.py --augment                # baseline head trained through the backbone, with flips and crops
  python Task1.py --experiments scratch_shortcuts --scratch-dataset fashion-mnist --scratch-train-size 5000
  python Task1.py --replot                 # redraw every figure from outputs/task1/metrics.json

Each experiment function computes and returns its metrics; plot_<experiment>, right
below it, draws its figures from those metrics (as written to metrics.json) and the
arrays in cache/plot/<experiment>.npz, so --replot redraws them without computing.

Writes into --out (default outputs/task1): baseline_curves.png, baseline_confusion.png,
residual_curves.png, residual_gradnorms.png, features_tsne.png, features_umap.png,
features_tsne_vs_umap.png (the two only with --embed both, the default; --smoke draws
t-SNE alone), features_separability.png, features_confused_pairs.png,
transfer_curves.png, transfer_compute.png, depth_comparison.png,
scratch_shortcuts_curves.png, metrics.json, summary.md and cache/ (pooled features,
stage features, embeddings and trained heads, keyed by every setting that produced them).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib.util
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import Bottleneck

import common
from architecture import CifarResNet
import matplotlib.pyplot as plt  # after common, which selects the Agg backend
from matplotlib.ticker import MaxNLocator

# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------

EXPERIMENTS = ["baseline", "residual", "features", "transfer", "depth", "scratch_shortcuts"]

# Every ResNet torchvision ships (ResNet, ResNeXt and wide ResNet share the ResNet class).
RESNETS = sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                 if n.startswith(("resnet", "resnext", "wide_resnet")))

# The stem (conv1-bn1-relu-maxpool) and the four stages, named by the module whose
# output the hooks of the `features` experiment read.
STAGES = {"stem": "maxpool", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
CUT_SETS = ("selected", "layer1", "layer2", "layer3", "layer4", "all")  # residual's ablations
TRANSFER_INITS = ("pretrained", "scratch")
TRANSFER_STRATEGIES = ("head", "layer4", "full")

# --smoke: ResNet-18 sized random models at CIFAR's own 32 px on a few hundred
# generated images; every experiment, figure and metric of the full run still happens.
SMOKE = {"arch": "resnet18", "weights": "none", "img_size": 32, "train_size": 300, "test_size": 150,
         "val_size": 60, "batch_size": 32, "eval_batch_size": 150, "grad_batch": 16, "n_vis": 100,
         "probe_train_size": 150, "transfer_train_size": 64, "transfer_val_size": 20,
         "transfer_test_size": 64, "transfer_epochs": 2, "transfer_batch_size": 32,
         "depth_archs": ["resnet18", "resnet34"], "throughput_batches": 1, "epochs": 3, "bn_calib_size": 128,
         "embed": "tsne",  # UMAP's ~20 s of numba compilation would double the smoke run
         "scratch_depth": 8, "scratch_train_size": 256, "scratch_test_size": 128, "scratch_epochs": 2,
         "scratch_batch_size": 32}


def resnet_arch(text: str) -> str:
    if text not in RESNETS:
        raise argparse.ArgumentTypeError(f"unknown ResNet {text!r}; choose from {', '.join(RESNETS)}")
    return text


def resnet_list(text: str) -> list[str]:
    return [resnet_arch(t.strip()) for t in text.split(",") if t.strip()]


class CifarDepth(common.Bounded):
    """Depth of a CIFAR-style ResNet: 6n + 2 layers (n blocks of two 3x3 convs in each of
    three stages, plus the first conv and the classifier): 8, 14, 20, 32, 44, 56, 110."""

    def __init__(self):
        super().__init__(int, lo=8)
        self.__name__ = self.describe()

    def describe(self) -> str:
        return "a depth 6n+2 >= 8 (e.g. 20, 32, 44, 56, 110)"

    def contains(self, v: float) -> bool:
        return super().contains(v) and (v - 2) % 6 == 0


def build_parser():
    parser = common.make_parser("task1", __doc__, EXPERIMENTS)
    # Every numeric flag's type states its valid range (common.Bounded): argparse refuses
    # anything outside it in one line; check_args below refuses bad combinations.
    pint, pfloat = common.positive_int, common.positive_float
    non_negative_int, non_negative_float = common.non_negative_int, common.non_negative_float
    g = parser.add_argument_group("model and data")
    g.add_argument("--arch", type=resnet_arch, default="resnet152", help="torchvision ResNet to study")
    g.add_argument("--weights", choices=["imagenet", "none"], default="imagenet",
                   help="imagenet: torchvision's IMAGENET1K_V2 weights (V1 where there is no V2); none: random init")
    g.add_argument("--img-size", type=pint, default=224,
                   help="CIFAR's 32 px images are resized to this on the device, bilinear with antialias")
    g.add_argument("--train-size", type=non_negative_int, default=0,
                   help="CIFAR-10 training images to use, 0 = all 50,000")
    g.add_argument("--test-size", type=non_negative_int, default=0, help="CIFAR-10 test images to use, 0 = all 10,000")
    g.add_argument("--val-size", type=pint, default=5000, help="training images held out for the validation curves")
    g.add_argument("--eval-batch-size", type=pint, default=512,
                   help="batch size for feature extraction and evaluation")
    g.add_argument("--bn-calib-size", type=common.Bounded(int, lo=2), default=2000,
                   help="training images whose batch statistics become the BatchNorm running mean and variance "
                        "of a randomly initialised backbone (--weights none, transfer's scratch arms) before it "
                        "is frozen")
    g = parser.add_argument_group("baseline (also the head training of residual and depth)")
    g.add_argument("--epochs", type=pint, default=5, help="epochs of linear-head training")
    g.add_argument("--batch-size", type=pint, default=256, help="head-training minibatch")
    g.add_argument("--lr", type=pfloat, default=1e-3, help="AdamW learning rate of the head, cosine-decayed")
    g.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay of the head")
    g.add_argument("--augment", action="store_true",
                   help="train the baseline head through the frozen backbone every epoch with random crops and "
                        "flips, instead of on cached features (slower: one backbone pass per epoch)")
    g = parser.add_argument_group("residual")
    g.add_argument("--ablate-blocks", default="auto", metavar="B1,B2",
                   help="blocks whose shortcut is cut, e.g. layer1.1,layer3.5; auto = the middle block of every "
                        "stage. The sweep over whole stages and all blocks always runs too")
    g.add_argument("--grad-batch", type=pint, default=32,
                   help="training images for the gradient norms at initialisation")
    g = parser.add_argument_group("features")
    g.add_argument("--n-vis", type=common.Bounded(int, lo=5), default=2000,
                   help="test images embedded and scored per depth; UMAP needs at least 4")
    g.add_argument("--probe-train-size", type=common.Bounded(int, lo=10), default=5000,
                   help="training images for the logistic-regression probes; a fifth of them chooses the "
                        "regularisation, so a few per class at least")
    g.add_argument("--embed", choices=["tsne", "umap", "both"], default="both",
                   help="2-D embedding; both draws t-SNE and UMAP side by side and scores each (--smoke: tsne, "
                        "since UMAP costs ~20 s of numba compilation per process)")
    g.add_argument("--n-pairs", type=pint, default=5, help="most-confused class pairs to analyse")
    g = parser.add_argument_group("transfer")
    g.add_argument("--transfer-dataset", choices=["cifar100", "cifar10", "stl10"], default="cifar100",
                   help="dataset to fine-tune on")
    g.add_argument("--transfer-train-size", type=non_negative_int, default=10000,
                   help="its training images, 0 = all; 10,000 keeps six arms of ResNet-152 at 224 px to minutes "
                        "on one GPU")
    g.add_argument("--transfer-val-size", type=pint, default=1000, help="of those, held out for validation curves")
    g.add_argument("--transfer-test-size", type=non_negative_int, default=0, help="its test images, 0 = all")
    g.add_argument("--transfer-epochs", type=pint, default=3, help="epochs for every arm")
    g.add_argument("--transfer-batch-size", type=pint, default=128, help="fine-tuning minibatch")
    g.add_argument("--transfer-lr", type=pfloat, default=1e-3,
                   help="AdamW learning rate of the new head, cosine-decayed per step")
    g.add_argument("--backbone-lr-mult", type=pfloat, default=0.1, help="backbone learning rate = this x --transfer-lr")
    g = parser.add_argument_group("depth")
    g.add_argument("--depth-archs", type=resnet_list, default=["resnet18", "resnet152"], metavar="A,B",
                   help="ResNets to compare")
    g.add_argument("--throughput-batches", type=pint, default=10,
                   help="timed batches of --eval-batch-size for images/s")
    g = parser.add_argument_group("scratch_shortcuts (He et al. 2016 sec. 4.2: CIFAR ResNet vs the plain net)")
    g.add_argument("--scratch-dataset", choices=["cifar10", "fashion-mnist"], default="cifar10",
                   help="training set; fashion-mnist is padded to 32x32 and repeated to 3 channels")
    g.add_argument("--scratch-depth", type=CifarDepth(), default=56,
                   help="layers, 6n+2; He et al. see plain nets degrade from 20 to 56")
    g.add_argument("--scratch-width", type=pint, default=16,
                   help="channels of the first stage, doubled at each of the two later stages")
    g.add_argument("--scratch-train-size", type=non_negative_int, default=0,
                   help="training images, 0 = the whole training split")
    g.add_argument("--scratch-test-size", type=non_negative_int, default=0, help="test images, 0 = the whole test split")
    g.add_argument("--scratch-epochs", type=pint, default=15,
                   help="epochs for both networks; the lr drops 10x at 50%% and 75%% of the steps, He et al.'s "
                        "schedule compressed from 164 epochs")
    g.add_argument("--scratch-batch-size", type=pint, default=128, help="SGD minibatch")
    g.add_argument("--scratch-lr", type=pfloat, default=0.1, help="SGD learning rate")
    g.add_argument("--scratch-warmup", type=common.unit_float, default=0.05,
                   help="fraction of the steps over which the lr ramps linearly up to --scratch-lr")
    g.add_argument("--scratch-momentum", type=common.unit_float, default=0.9, help="SGD momentum")
    g.add_argument("--scratch-weight-decay", type=non_negative_float, default=1e-4, help="SGD weight decay")
    g.add_argument("--scratch-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="4 px reflect-pad random crops and horizontal flips")
    g.add_argument("--scratch-target-acc", type=common.unit_float, default=0.8,
                   help="convergence speed = training steps until the running training accuracy first reaches this")
    return parser


def check_args(args) -> None:
    """Flags that only make sense together, checked right after parsing (one line, exit 2).
    Sizes of 0 mean the whole split: CIFAR-10 has 50,000 / 10,000 images (smoke: 1,000 / 500)."""
    chosen, req = set(args.experiments), common.require
    n_train = args.train_size or (1000 if args.smoke else 50000)
    n_test = args.test_size or (500 if args.smoke else 10000)
    if chosen - {"scratch_shortcuts"}:  # every other experiment splits CIFAR-10's training images
        req(args.val_size < n_train, f"--val-size {args.val_size} leaves no training images out of "
                                     f"{n_train} (--train-size {args.train_size})")
    if "features" in chosen:
        req(args.n_vis <= n_test, f"--n-vis {args.n_vis} exceeds the {n_test} test images (--test-size "
                                  f"{args.test_size}); t-SNE/UMAP would silently embed fewer")
        req(args.probe_train_size <= n_train - args.val_size,
            f"--probe-train-size {args.probe_train_size} exceeds the {n_train - args.val_size} training images "
            f"left after --val-size {args.val_size} (--train-size {args.train_size})")
    if "transfer" in chosen and args.transfer_train_size:
        req(args.transfer_val_size < args.transfer_train_size,
            f"--transfer-val-size {args.transfer_val_size} leaves no training images out of "
            f"--transfer-train-size {args.transfer_train_size}")
    if "scratch_shortcuts" in chosen:
        req(args.scratch_train_size != 1, "--scratch-train-size 1 leaves no minibatch of two images to train on")


# ----------------------------------------------------------------------------
# Data: uint8 images on the device, resized and normalised per batch
# ----------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Data:
    """One dataset on the device: images uint8 [N, 3, h, w] and labels int64 [N] of both
    splits, class names, and a seeded split of the training images into train_idx and
    val_idx (index tensors). CIFAR-10 train is 150 MB as uint8; resized to 224 px in
    float it would be 30 GB, so resizing happens per batch (preprocess)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list
    train_idx: torch.Tensor
    val_idx: torch.Tensor


def load_dataset(name: str, train_size: int, test_size: int, val_size: int, val_flag: str, args,
                 device: torch.device) -> Data:
    """Both splits of `name` on the device (a size > 0 keeps a seeded random subset of that
    many images) and `val_size` training images held out for validation."""
    def split(train: bool, size: int):
        x, y, classes = common.load_split(name, args.data_root, train, smoke=args.smoke, seed=args.seed,
                                          smoke_size=size or None)
        if 0 < size < len(y):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:size]
            x, y = x[keep], y[keep]
        return x.to(device), y.to(device), classes

    x_train, y_train, classes = split(True, train_size)
    if val_size >= len(y_train):
        raise common.UserError(f"{val_flag} {val_size} leaves no training images out of {len(y_train)}")
    x_test, y_test, _ = split(False, test_size)
    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    return Data(x_train, y_train, x_test, y_test, classes, perm[val_size:], perm[:val_size])


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
    """uint8 [B, 3, h, w] -> normalised float [B, 3, S, S] by common.resize_normalise
    (bilinear with antialias, which only matters when shrinking, e.g. STL-10's 96 px to
    64; channels_last on CUDA). With `augment`, crop/flip first at the native size.
    ImageNet statistics by default; scratch_shortcuts passes its training set's."""
    if augment:
        x = random_crop_flip(x.float().div(255.0), gen)
    return common.resize_normalise(x, img_size, mean, std)


# ----------------------------------------------------------------------------
# Models: torchvision ResNets, pooled features, shortcut ablation
# ----------------------------------------------------------------------------


def build_resnet(arch: str, weights: str, n_classes: int | None = None) -> nn.Module:
    """torchvision `arch` with ImageNet weights (the weights enum's IMAGENET1K_V2, or V1
    where there is no V2) or random init; `n_classes` replaces the 1000-way fc."""
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch)
        w = getattr(enum, "IMAGENET1K_V2", None) or enum.IMAGENET1K_V1
        try:  # torch.hub reports the download on stderr; it is progress, not an error
            with contextlib.redirect_stderr(sys.stdout):
                model = torchvision.models.get_model(arch, weights=w)
        except Exception as e:  # URLError offline, OSError (disk), RuntimeError (corrupt or wrong hash)
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise common.UserError(
                f"could not get the {arch} ImageNet weights ({w}) into {Path(torch.hub.get_dir()) / 'checkpoints'} "
                f"({reason}); put the .pth file there or set TORCH_HOME to a folder that has it, "
                f"or run with --weights none or --smoke") from None
    else:
        model = torchvision.models.get_model(arch, weights=None)
    if n_classes is not None:
        model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                          device: torch.device) -> int:
    """Set every BatchNorm layer's running mean and variance to the average of its batch
    statistics over `images` (uint8 [N, 3, h, w]), in batches of `batch_size`; returns
    the number of images used. The same computation as torch.optim.swa_utils.update_bn
    (running statistics reset, momentum None = a cumulative average, forward passes in
    train mode), with this task's preprocessing, autocast and progress.

    Why: torchvision initialises every running mean to 0 and variance to 1. A frozen
    backbone runs in eval mode, so a random one normalises nothing, and the 50
    bottleneck blocks of ResNet-152 add up: its pooled features reached 2.4e8 at 224 px
    (mean 3e7; 2.3e5 at 32 px), the scratch transfer arms trained at losses ~1e8, and
    features cached in float16 overflowed to inf. A trained network's statistics match its activations;
    recalibrated, a random network is a well-scaled random function, which is what
    `--weights none` is meant to measure. Recalibrating rather than running the frozen
    backbone in train mode keeps each image's features independent of the other
    images in its batch, so cached features, evaluation and embeddings stay
    deterministic per image, as they are with trained weights."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) < 2:
        return 0
    momenta, was_training = [m.momentum for m in bns], model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used, batch_size = 0, max(2, batch_size)  # batch statistics need two images
    try:
        for i in common.progress(range(0, len(images), batch_size), "BatchNorm statistics",
                                 math.ceil(len(images) / batch_size)):
            batch = images[i:i + batch_size]
            if len(batch) < 2:  # a batch of one has no variance (and BatchNorm refuses it at 1x1)
                break
            with common.autocast(device):
                model(preprocess(batch, img_size))
            used += len(batch)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used


def prepare_backbone(arch: str, weights: str, calib_images: torch.Tensor, args, device: torch.device) -> nn.Module:
    """`arch` with --weights on the device, in eval mode, ready to be frozen. A random
    init first gets BatchNorm statistics measured on `calib_images` (training images)."""
    model = to_device(build_resnet(arch, weights), device)
    if weights == "none":
        n = recalibrate_batchnorm(model, calib_images, args.img_size, args.eval_batch_size, device)
        print(f"{arch} (random init): BatchNorm statistics measured on {n} training images", flush=True)
    return model.eval()


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> pooled features [B, C] (C = 2048 for ResNet-50/101/152, 512 for
    ResNet-18/34): the network up to and including global average pooling, no fc."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of all residual blocks, input to output: layer1.0, layer1.1, ..., layer4.2."""
    return [f"layer{s}.{i}" for s in range(1, 5) for i in range(len(getattr(model, f"layer{s}")))]


def residual_branch_only(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision BasicBlock/Bottleneck with its shortcut cut: relu(F(x)) instead of
    relu(F(x) + x) (or relu(F(x) + downsample(x))). Installed as the block's forward."""
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):  # 1x1 -> 3x3 -> 1x1
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:  # BasicBlock: 3x3 -> 3x3
        out = block.bn2(block.conv2(out))
    return block.relu(out)


def cut_shortcuts(model: nn.Module, names: list[str]) -> None:
    """Replace each named block's forward (an instance attribute shadows the class's
    method, so restore_shortcuts undoes it exactly; no weights change)."""
    for name in names:
        block = model.get_submodule(name)
        block.forward = types.MethodType(residual_branch_only, block)


def restore_shortcuts(model: nn.Module, names: list[str]) -> None:
    for name in names:
        model.get_submodule(name).__dict__.pop("forward", None)


@contextlib.contextmanager
def shortcuts_cut(model: nn.Module, names: list[str]):
    cut_shortcuts(model, names)
    try:
        yield model
    finally:
        restore_shortcuts(model, names)


def resolve_blocks(arch: str, spec: str) -> list[str]:
    """--ablate-blocks -> block names, checked against the architecture (built on the
    meta device: no memory, no weights). auto = the middle block of every stage."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    if spec == "auto":
        return [f"layer{s}.{len(getattr(model, f'layer{s}')) // 2}" for s in range(1, 5)]
    names = [t.strip() for t in spec.split(",") if t.strip()]
    valid = residual_blocks(model)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        ranges = ", ".join(f"layer{s}.0-{len(getattr(model, f'layer{s}')) - 1}" for s in range(1, 5))
        raise common.UserError(f"--ablate-blocks: unknown block {','.join(bad) or repr(spec)} for {arch}; "
                               f"its blocks are {ranges}")
    return [n for n in valid if n in names]


# ----------------------------------------------------------------------------
# Feature extraction (cached) and head training
# ----------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                     device: torch.device, desc: str = "features") -> torch.Tensor:
    """uint8 [N, 3, h, w] -> pooled features float32 [N, C], one eval-mode pass in
    large batches (bf16 autocast on CUDA)."""
    model.eval()
    out = []
    for i in common.progress(range(0, len(images), batch_size), desc, math.ceil(len(images) / batch_size)):
        with common.autocast(device):
            out.append(backbone_features(model, preprocess(images[i:i + batch_size], img_size)).float())
    return torch.cat(out)


def feature_settings(args, arch: str, dataset: str, split: str, n: int, ablated: list[str] = ()) -> dict:
    """Everything that determines a set of pooled features (the cache key)."""
    return {"arch": arch, "weights": args.weights, "img_size": args.img_size, "dataset": dataset, "split": split,
            "n": n, "data": f"smoke-seed{args.seed}" if args.smoke else f"real-seed{args.seed}",
            "ablated": list(ablated), "bn_calib": args.bn_calib_size if args.weights == "none" else None,
            "dtype": "float32"}


def cached_features(model: nn.Module, images: torch.Tensor, settings: dict, args,
                    device: torch.device) -> tuple[torch.Tensor, float | None]:
    """Pooled features [N, C] on the device, from cache/, else extracted and saved.
    Saved as float32 (ResNet-152's 60k x 2048 features take 491 MB): float16 would
    halve that, but its range ends at 65,504, and random or ablated networks' features
    pass it (a random ResNet-152 with untouched BatchNorm statistics reached 2.4e8 at
    224 px, which float16 stored as inf and the head turned into NaN).
    Returns (features, extraction seconds or None when they came from the cache)."""
    path = common.cache_path(args.out, "features", settings)
    blob = common.load_cache(path, args.fresh)
    if blob is not None:
        feats = blob.get("features") if isinstance(blob, dict) else None
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(images):
            raise common.UserError(f"cache file {path} does not hold {len(images)} feature rows; "
                                   f"delete it or rerun with --fresh")
        return feats.to(device).float(), None
    sync(device)
    t0 = time.perf_counter()
    feats = extract_features(model, images, args.img_size, args.eval_batch_size, device,
                             f"{settings['arch']} {settings['split']}")
    sync(device)
    seconds = time.perf_counter() - t0
    print(f"extracted {settings['arch']} features of {len(images)} {settings['dataset']} {settings['split']} "
          f"images in {seconds:.1f} s ({len(images) / seconds:.0f} images/s)", flush=True)
    common.save_cache(path, {"features": feats.cpu(), "config": settings})
    return feats, seconds


def pooled_features(model: nn.Module, arch: str, data: Data, args, device: torch.device,
                    ablated: list[str] = ()) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """CIFAR-10 pooled features of `model` (`arch`, with the shortcuts of `ablated` cut):
    (train [N, C], test [M, C], extraction seconds, None when either came from cache/)."""
    ftr, t_train = cached_features(model, data.x_train, feature_settings(
        args, arch, "cifar10", "train", len(data.y_train), ablated), args, device)
    fte, t_test = cached_features(model, data.x_test, feature_settings(
        args, arch, "cifar10", "test", len(data.y_test), ablated), args, device)
    return ftr, fte, None if t_train is None or t_test is None else t_train + t_test


def cached_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator):
    """One epoch of shuffled (features [B, C], labels [B]) from cached features."""
    perm = torch.randperm(len(labels), generator=gen).to(labels.device)
    for i in range(0, len(perm) - 1, batch_size):  # "- 1": never a last batch of one (BatchNorm needs two)
        idx = perm[i:i + batch_size]
        yield feats[idx], labels[idx]


def backbone_batches(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     img_size: int, device: torch.device, gen: torch.Generator, augment: bool):
    """One epoch of the same minibatches, the features recomputed by the frozen backbone
    (eval mode, no gradients) from optionally augmented images: what training a head
    without a cache costs, and the only way to train it on augmented images."""
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
    """The linear head: BatchNorm without affine parameters, then Linear [C -> K], as in
    MAE's linear probing (He et al. 2022, "Masked Autoencoders Are Scalable Vision
    Learners", sec. A.2). Normalised features let one learning rate serve every
    backbone, depth and ablation, whose feature scales differ a lot."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_classes))


def train_head(epoch_batches, dim: int, n_classes: int, val_feats: torch.Tensor, val_labels: torch.Tensor,
               epochs: int, lr: float, weight_decay: float, seed: int, desc: str) -> tuple[nn.Module, dict]:
    """A linear head (make_head) trained with AdamW (lr cosine-decayed per epoch) on the
    minibatches `epoch_batches()` yields each epoch. Returns (head, history of per-epoch
    train loss/accuracy (running means over the epoch) and validation loss/accuracy)."""
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


def linear_head(ftr: torch.Tensor, data: Data, args, desc: str,
                through: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """The baseline recipe (--epochs, --batch-size, --lr, --weight-decay, --seed) on the
    pooled training features `ftr` [N, C], validated on data.val_idx; with `through` (a
    frozen backbone), minibatches are recomputed from augmented images instead (--augment)."""
    tr, va, y = data.train_idx, data.val_idx, data.y_train
    gen = torch.Generator().manual_seed(args.seed)

    def batches():  # one epoch of minibatches
        if through is not None:
            return backbone_batches(through, data.x_train[tr], y[tr], args.batch_size, args.img_size, ftr.device,
                                    gen, augment=True)
        return cached_batches(ftr[tr], y[tr], args.batch_size, gen)

    return train_head(batches, ftr.shape[1], len(data.classes), ftr[va], y[va], args.epochs, args.lr,
                      args.weight_decay, args.seed, desc)


def fit_baseline(model: nn.Module, data: Data, pooled: tuple, args, device: torch.device) -> dict:
    """The head-only baseline every other experiment compares with: a linear head trained
    for --epochs on the pooled features (train, test, seconds) of `pooled` (the head is
    cached too), its test accuracy and confusion matrix. With --augment the head instead
    trains through the backbone on augmented images each epoch (evaluation features are
    the same either way: the backbone is frozen)."""
    ftr, fte, extract_seconds = pooled
    k = len(data.classes)
    settings = {**feature_settings(args, args.arch, "cifar10", "head", len(data.y_train)), "epochs": args.epochs,
                "lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
                "val_size": args.val_size, "augment": args.augment, "seed": args.seed}
    path = common.cache_path(args.out, "head", settings)
    blob = common.load_cache(path, args.fresh)
    t0 = time.perf_counter()
    if blob is not None:
        head = make_head(ftr.shape[1], k).to(device)
        try:
            head.load_state_dict(blob["state"])
            hist = {key: list(blob["history"][key]) for key in ("train_loss", "train_acc", "val_loss", "val_acc")}
        except (KeyError, TypeError, RuntimeError):
            raise common.UserError(f"cache file {path} is not a head for these features; delete it or rerun "
                                   f"with --fresh") from None
        print(f"baseline head loaded from {path}", flush=True)
    else:
        head, hist = linear_head(ftr, data, args, "baseline head", through=model if args.augment else None)
        common.save_cache(path, {"state": head.state_dict(), "history": hist, "config": settings})
    head_seconds = time.perf_counter() - t0
    test_loss, test_acc, pred = evaluate_head(head, fte, data.y_test)
    return {"head": head, "history": hist, "test_loss": test_loss, "test_acc": test_acc,
            "confusion": common.confusion_matrix(data.y_test.cpu().numpy(), pred.cpu().numpy(), k),
            "feature_dim": ftr.shape[1], "extract_seconds": extract_seconds, "head_seconds": head_seconds}


# ----------------------------------------------------------------------------
# Experiment 1: baseline
# ----------------------------------------------------------------------------


def baseline(fit: dict, data: Data, args) -> dict:
    """Handout 1.1: a frozen backbone and a linear head (fit_baseline's result)."""
    h, n_img, extract = fit["history"], len(data.y_train) + len(data.y_test), fit["extract_seconds"]
    mode = "augmented, through the backbone" if args.augment else "cached features"
    common.save_plot_data(args.out, "baseline", classes=data.classes,
                          setup=f"{args.arch} (weights: {args.weights}, {args.img_size} px, {mode})")
    return {"test_acc": fit["test_acc"], "test_loss": fit["test_loss"],
            "final_train_acc": h["train_acc"][-1], "final_val_acc": h["val_acc"][-1],
            "final_train_loss": h["train_loss"][-1], "final_val_loss": h["val_loss"][-1],
            "history": h, "feature_dim": fit["feature_dim"], "extract_seconds": extract,
            "extract_images_per_s": None if not extract else n_img / extract,
            "head_seconds": fit["head_seconds"], "confusion": fit["confusion"]}


def plot_baseline(m: dict, out: Path) -> None:
    p = common.load_plot_data(out, "baseline")
    h = m["history"]
    epochs = list(range(1, len(h["train_loss"]) + 1))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    common.line_plot(a1, {"train": (epochs, h["train_loss"]), "validation": (epochs, h["val_loss"])},
                     "cross-entropy", "epoch", "loss")
    common.line_plot(a2, {"train": (epochs, h["train_acc"]), "validation": (epochs, h["val_acc"])},
                     "accuracy", "epoch", "accuracy")
    a2.axhline(m["test_acc"], color="k", ls="--", lw=1, label=f"test {m['test_acc']:.3f}")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Baseline: linear head on frozen {p['setup']}")
    common.save_figure(fig, out / "baseline_curves.png")
    common.plot_confusion(m["confusion"], p["classes"].tolist(), out / "baseline_confusion.png",
                          f"Baseline confusion on CIFAR-10 test (accuracy {m['test_acc']:.3f})")


# ----------------------------------------------------------------------------
# Experiment 2: residual connections
# ----------------------------------------------------------------------------


def gradient_norms(arch: str, images: torch.Tensor, labels: torch.Tensor, n_classes: int, img_size: int,
                   device: torch.device, seed: int, cut: bool) -> tuple[dict, float]:
    """One forward/backward of a randomly initialised `arch` (train mode, full
    precision) on a batch; returns the L2 norm of the gradient of each block's
    parameters ({"stem": ..., "layer1.0": ..., ...}) and the loss. With `cut`, every
    block's shortcut is cut: a plain 50-/152-layer network, whose early-layer
    gradients are what shortcuts preserve (He et al. 2016, sec. 4.1)."""
    torch.manual_seed(seed)
    model = to_device(torchvision.models.get_model(arch, weights=None, num_classes=n_classes), device).train()
    if cut:
        cut_shortcuts(model, residual_blocks(model))
    loss = F.cross_entropy(model(preprocess(images, img_size)), labels)
    loss.backward()

    def norm(module):
        return math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in module.parameters() if p.grad is not None))

    norms = {"stem": math.sqrt(norm(model.conv1) ** 2 + norm(model.bn1) ** 2)}
    norms.update({name: norm(model.get_submodule(name)) for name in residual_blocks(model)})
    return norms, loss.item()


def per_stage(norms: dict) -> dict:
    """Block gradient norms -> stem and one per stage (sqrt of the summed squares)."""
    return {"stem": norms["stem"], **{f"layer{s}": math.sqrt(sum(v ** 2 for n, v in norms.items()
                                                                 if n.startswith(f"layer{s}.")))
                                      for s in range(1, 5)}}


def residual(model: nn.Module, data: Data, base: dict, selected: list[str], args, device: torch.device) -> dict:
    """Handout 1.2: cut shortcuts in the pretrained backbone (each set of CUT_SETS),
    re-extract features and retrain the head exactly as in the baseline `base`; also
    score the baseline head on the ablated features without retraining. Then gradient
    norms at random initialisation with and without shortcuts."""
    blocks = residual_blocks(model)
    cuts = {"selected": selected, **{f"layer{s}": [b for b in blocks if b.startswith(f"layer{s}.")]
                                     for s in range(1, 5)}, "all": blocks}
    metrics = {"baseline_test_acc": base["test_acc"], "selected_blocks": ",".join(selected)}
    curves = {"baseline (no cut)": base["history"]}
    for name, cut in cuts.items():
        with shortcuts_cut(model, cut):
            ftr, fte, _ = pooled_features(model, args.arch, data, args, device, ablated=cut)
        head, hist = linear_head(ftr, data, args, f"cut {name} ({len(cut)} blocks)")
        _, acc, _ = evaluate_head(head, fte, data.y_test)
        _, acc_frozen_head, _ = evaluate_head(base["head"], fte, data.y_test)
        curves[f"cut {name} ({len(cut)})"] = hist
        metrics[name] = {"blocks_cut": len(cut), "test_acc_retrained": acc, "test_acc_no_retrain": acc_frozen_head,
                         "final_val_acc": hist["val_acc"][-1], "final_train_loss": hist["train_loss"][-1]}
        print(f"cut {name}: test acc {acc:.4f} retrained, {acc_frozen_head:.4f} with the baseline head", flush=True)

    idx = data.train_idx[:args.grad_batch]
    grads, losses = {}, {}
    for label, cut in (("with_shortcuts", False), ("without_shortcuts", True)):
        grads[label], losses[label] = gradient_norms(args.arch, data.x_train[idx], data.y_train[idx],
                                                     len(data.classes), args.img_size, device, args.seed, cut)
    metrics["gradnorm"] = {label: per_stage(g) for label, g in grads.items()}
    metrics["gradnorm_stem_over_layer4"] = {label: g["stem"] / max(g["layer4"], 1e-30)
                                            for label, g in metrics["gradnorm"].items()}
    metrics["init_loss"] = losses
    common.save_plot_data(args.out, "residual", curve_names=list(curves), n_classes=len(data.classes),
                          train_loss=[h["train_loss"] for h in curves.values()],
                          val_acc=[h["val_acc"] for h in curves.values()], block_names=list(grads["with_shortcuts"]),
                          grad_with=list(grads["with_shortcuts"].values()),
                          grad_without=list(grads["without_shortcuts"].values()),
                          arch=args.arch, weights=args.weights, grad_batch=len(idx))
    return metrics


def plot_residual(m: dict, out: Path) -> None:
    """residual_curves.png: every cut set's head curves against the baseline's, and the
    test accuracies; residual_gradnorms.png: gradient norm per block at initialisation."""
    p = common.load_plot_data(out, "residual")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ep = list(range(1, p["train_loss"].shape[1] + 1))
    common.line_plot(axes[0], {n: (ep, v) for n, v in zip(p["curve_names"], p["train_loss"])},
                     "head training loss", "epoch", "cross-entropy")
    common.line_plot(axes[1], {n: (ep, v) for n, v in zip(p["curve_names"], p["val_acc"])},
                     "validation accuracy", "epoch", "accuracy")
    xs, base = np.arange(len(CUT_SETS)), m["baseline_test_acc"]
    axes[2].bar(xs - 0.2, [m[n]["test_acc_retrained"] for n in CUT_SETS], 0.4, label="head retrained")
    axes[2].bar(xs + 0.2, [m[n]["test_acc_no_retrain"] for n in CUT_SETS], 0.4, label="baseline head, no retrain")
    axes[2].axhline(base, color="k", ls="--", lw=1, label=f"baseline {base:.3f}")
    axes[2].axhline(1 / int(p["n_classes"]), color="grey", ls=":", lw=1, label="chance")
    axes[2].set_xticks(xs, [f"{n}\n({m[n]['blocks_cut']} blocks)" for n in CUT_SETS], fontsize=8)
    axes[2].set(title="test accuracy with shortcuts cut", ylabel="accuracy", ylim=(0, 1))
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Residual ablation in {p['arch']} (weights: {p['weights']}): shortcuts cut, "
                 f"each cut block returns relu(F(x)); head retrained as in the baseline")
    common.save_figure(fig, out / "residual_curves.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = p["block_names"].tolist()
    for label, norms, style in (("with shortcuts", p["grad_with"], "-o"), ("without shortcuts", p["grad_without"], "-s")):
        ax.plot(range(len(names)), np.maximum(norms, 1e-30), style, ms=3, label=label)
    for i in [i for i, n in enumerate(names) if n.endswith(".0")]:  # the first block of each stage
        ax.axvline(i - 0.5, color="grey", lw=0.6, ls=":")
        ax.text(i - 0.3, 1.0, names[i].split(".")[0], transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    loss = m["init_loss"]
    ax.set(yscale="log", xlabel="block (input -> output; 0 = stem)", ylabel="||dL/dθ|| of the block",
           title=f"Gradient norm per block at random initialisation, {p['arch']}, batch of {p['grad_batch']}\n"
                 f"(initial loss {loss['with_shortcuts']:.2f} with shortcuts, {loss['without_shortcuts']:.2f} without)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "residual_gradnorms.png")


# ----------------------------------------------------------------------------
# Experiment 3: the feature hierarchy
# ----------------------------------------------------------------------------


@torch.no_grad()
def stage_features(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Forward hooks on the stem and the four stages collect each output, global-average
    pooled over space ([B, C, H, W] -> [B, C]); returns {stage: float32 [N, C] on CPU}.
    The hooks are removed afterwards, even on error."""
    store = {name: [] for name in STAGES}

    def hook(name):
        return lambda module, inputs, output: store[name].append(output.float().mean((2, 3)).cpu())

    handles = [model.get_submodule(mod).register_forward_hook(hook(name)) for name, mod in STAGES.items()]
    try:
        model.eval()
        for i in common.progress(range(0, len(images), batch_size), "stage features",
                                 math.ceil(len(images) / batch_size)):
            with common.autocast(device):
                model(preprocess(images[i:i + batch_size], img_size))
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v) for name, v in store.items()}


def most_confused_pairs(cm: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k unordered class pairs (i < j) with the most confusions cm[i, j] + cm[j, i],
    as (i, j, count), most confused first."""
    cm = np.asarray(cm)
    pairs = [(i, j, int(cm[i, j] + cm[j, i])) for i in range(len(cm)) for j in range(i + 1, len(cm))]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:k]


def class_separation(feats: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]]) -> list[float]:
    """For each class pair, the distance between the class centroids in units of the
    classes' spread: ||mu_i - mu_j|| / sqrt((s_i^2 + s_j^2) / 2), s_c = RMS distance of
    class c's points to mu_c. Above ~2 the classes barely overlap; near 0 they coincide."""
    feats, labels = np.asarray(feats, np.float64), np.asarray(labels)
    mu, s2 = {}, {}
    for c in {c for p in pairs for c in p}:
        x = feats[labels == c]
        mu[c] = x.mean(0)
        s2[c] = ((x - mu[c]) ** 2).sum(1).mean()
    return [float(np.linalg.norm(mu[i] - mu[j]) / math.sqrt(max((s2[i] + s2[j]) / 2, 1e-12))) for i, j in pairs]


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: each point takes the majority label of
    its k nearest other points (ties go to the smaller label). How well a space keeps
    classes together, comparable between the features and their 2-D maps."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    k = min(k, len(labels) - 1)
    if k < 1:
        return float("nan")
    nbrs = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)  # [N, k], self excluded
    votes = np.stack([np.bincount(row, minlength=labels.max() + 1) for row in labels[nbrs]])
    return float((votes.argmax(1) == labels).mean())


def trustworthiness(x: np.ndarray, xy: np.ndarray, k: int = 5) -> float:
    """scikit-learn's trustworthiness of a 2-D map (Venna & Kaski 2001): 1 when the k
    nearest neighbours of every point in the map are also among its nearest in the
    original space, lower the more strangers the map brings close."""
    from sklearn.manifold import trustworthiness as tw

    k = min(k, (len(x) - 1) // 2)  # scikit-learn needs k < N / 2
    return float(tw(x, xy, n_neighbors=k)) if k >= 1 else float("nan")


EMBED_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def cached_stage_features(model: nn.Module, test_images: torch.Tensor, train_images: torch.Tensor,
                          settings: dict, args, device: torch.device) -> dict:
    """{"test": stage_features of test_images, "train": of train_images}, from cache/ or computed and saved."""
    path = common.cache_path(args.out, "stagefeats", settings)
    blob = common.load_cache(path, args.fresh)
    if blob is None:
        blob = {"test": stage_features(model, test_images, args.img_size, args.eval_batch_size, device),
                "train": stage_features(model, train_images, args.img_size, args.eval_batch_size, device),
                "config": settings}
        common.save_cache(path, blob)
    elif not isinstance(blob, dict) or set(blob.get("test", {})) != set(STAGES):
        raise common.UserError(f"cache file {path} does not hold stage features; delete it or rerun with --fresh")
    return blob


def embed_stages(z: dict, labels: np.ndarray, method: str, settings: dict, args) -> tuple[dict, dict]:
    """2-D `method` maps of every stage's standardised features `z`, cached (t-SNE of
    2,000 points x 5 depths takes a minute), each scored by how much of the feature
    space's neighbourhoods it keeps. Returns ({stage: [N, 2]}, its metrics)."""
    path = common.cache_path(args.out, "embed", {**settings, "method": method})
    emb = common.load_cache(path, args.fresh)
    if emb is None or set(emb.get("xy", {})) != set(STAGES):
        t0 = time.perf_counter()
        with common.few_threads(len(labels)):
            emb_xy = {s: torch.from_numpy(common.embed_2d(z[s], method, args.seed)) for s in STAGES}
        emb = {"xy": emb_xy, "seconds": time.perf_counter() - t0, "config": {**settings, "method": method}}
        common.save_cache(path, emb)
    xy = {s: emb["xy"][s].numpy() for s in STAGES}
    return xy, {"seconds": emb.get("seconds"),  # when it was computed (it may come from the cache)
                "trustworthiness": {s: trustworthiness(z[s], xy[s]) for s in STAGES},
                "knn_acc_2d": {s: knn_accuracy(xy[s], labels) for s in STAGES}}


def features(model: nn.Module, data: Data, confusion: np.ndarray, args, device: torch.device) -> dict:
    """Handout 1.3 and 1.5: hooked stage features of --n-vis test images (embedded,
    silhouette, probe test set) and --probe-train-size training images (probe training
    set), scored per depth; where the baseline's most-confused class pairs (from its
    `confusion` matrix) sit at each depth."""
    from sklearn.metrics import silhouette_score

    g = torch.Generator().manual_seed(args.seed + 2)
    vis = torch.randperm(len(data.y_test), generator=g)[:args.n_vis].to(device)
    probe = data.train_idx[:args.probe_train_size]
    settings = {**feature_settings(args, args.arch, "cifar10", "stages", len(vis)), "probe_n": len(probe)}
    blob = cached_stage_features(model, data.x_test[vis], data.x_train[probe], settings, args, device)
    y_te, y_tr = data.y_test[vis].cpu().numpy(), data.y_train[probe].cpu().numpy()
    metrics = {"probe_acc": {}, "silhouette": {}, "dim": {}}
    z = {}  # standardised test features per stage, so a few high-variance channels do not dominate distances
    for stage in STAGES:
        te, trn = blob["test"][stage].numpy(), blob["train"][stage].numpy()
        z[stage] = (te - te.mean(0)) / (te.std(0) + 1e-6)
        with common.few_threads(max(len(trn), len(te))):
            metrics["probe_acc"][stage] = common.linear_probe(trn, y_tr, te, y_te, seed=args.seed)["test_acc"]
            n_labels = len(set(y_te.tolist()))  # silhouette is defined for 2 .. n - 1 clusters (NaN otherwise)
            metrics["silhouette"][stage] = float(silhouette_score(z[stage], y_te)) if 2 <= n_labels < len(y_te) \
                else float("nan")
        metrics["dim"][stage] = te.shape[1]
        print(f"{stage}: {te.shape[1]} channels, probe acc {metrics['probe_acc'][stage]:.4f}, "
              f"silhouette {metrics['silhouette'][stage]:.4f}", flush=True)
    metrics["knn_acc"] = {s: knn_accuracy(z[s], y_te) for s in STAGES}  # the full-dimensional reference
    xy, metrics["embedding"] = {}, {}
    for method in ["tsne", "umap"] if args.embed == "both" else [args.embed]:
        xy[method], metrics["embedding"][method] = embed_stages(z, y_te, method, settings, args)

    pairs = most_confused_pairs(confusion, args.n_pairs)
    all_pairs = [(i, j) for i in range(len(data.classes)) for j in range(i + 1, len(data.classes))
                 if (y_te == i).any() and (y_te == j).any()]
    sep = {s: class_separation(z[s], y_te, [(i, j) for i, j, _ in pairs]) for s in STAGES}
    metrics["mean_pair_separation"] = {s: float(np.mean(class_separation(z[s], y_te, all_pairs))) for s in STAGES}
    metrics["confused_pairs"] = {f"{data.classes[i]}_vs_{data.classes[j]}": {
        "confusions": count, "separation": {s: sep[s][n] for s in STAGES}} for n, (i, j, count) in enumerate(pairs)}
    common.save_plot_data(args.out, "features", labels=y_te, classes=data.classes,
                          setup=f"{args.arch} (weights: {args.weights})",
                          **{f"xy_{method}": np.stack([xy[method][s] for s in STAGES]) for method in xy})
    return metrics


def plot_embeddings(xy: dict, labels: np.ndarray, classes: list[str], metrics: dict, title: str, path: Path) -> None:
    """One row of depth panels per method in `xy` ({method: [stages, N, 2]}), points
    coloured by class; each panel names the probe accuracy and the map's scores."""
    rows = list(xy)
    fig, axes = plt.subplots(len(rows), len(STAGES), figsize=(4 * len(STAGES), 4.4 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, method in enumerate(rows):
        m = metrics["embedding"][method]
        for i, (ax, s) in enumerate(zip(axes[r], STAGES)):
            common.scatter_by_class(ax, xy[method][i], labels, classes,
                                    f"{s} ({metrics['dim'][s]} ch): probe {_num(metrics['probe_acc'][s], '.2f')}, "
                                    f"5-NN {_num(metrics['knn_acc'][s], '.2f')}\n{EMBED_NAMES[method]} map: "
                                    f"trustworthiness {_num(m['trustworthiness'][s], '.2f')}, "
                                    f"5-NN {_num(m['knn_acc_2d'][s], '.2f')}", size=5, legend=s == "layer4")
            ax.title.set_fontsize(9)
    fig.suptitle(title + "\n(5-NN: leave-one-out 5-nearest-neighbour accuracy in the features and in the map)")
    common.save_figure(fig, path)


def plot_features(m: dict, out: Path) -> None:
    """features_<method>.png (and features_tsne_vs_umap.png with both), the separability
    curves by depth, and the confused pairs' separation by depth."""
    p = common.load_plot_data(out, "features")
    labels, classes, xs = p["labels"], p["classes"].tolist(), list(range(len(STAGES)))
    xy = {method: p[f"xy_{method}"] for method in m["embedding"]}
    title = f"pooled features by depth, {p['setup']}, {len(labels)} test images"
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
    for ax in (a1, a2):
        ax.set_xticks(xs, list(STAGES))
    fig.suptitle(f"Class separability by depth, {p['setup']}")
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


# ----------------------------------------------------------------------------
# Experiment 4: transfer strategies
# ----------------------------------------------------------------------------


def freeze_for_transfer(model: nn.Module, strategy: str) -> int:
    """Make trainable only what `strategy` fine-tunes: head = fc; layer4 = layer4 + fc;
    full = everything. Returns the number of trainable parameters."""
    model.requires_grad_(strategy == "full")
    if strategy == "layer4":
        model.layer4.requires_grad_(True)
    model.fc.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def transfer_train_mode(model: nn.Module, strategy: str) -> None:
    """Train mode only where weights train: frozen BatchNorm layers stay in eval mode,
    so their running statistics stay the pretrained ones."""
    model.train(strategy == "full")
    if strategy == "layer4":
        model.layer4.train()


@torch.no_grad()
def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, img_size: int,
                   batch_size: int, device: torch.device, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a whole network on uint8 images, preprocessed
    with `mean`/`std` (transfer's ImageNet statistics, scratch_shortcuts' own)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        with common.autocast(device):
            logits = model(preprocess(images[i:i + batch_size], img_size, mean=mean, std=std)).float()
        loss_sum += F.cross_entropy(logits, labels[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == labels[i:i + batch_size]).sum().item()
    return loss_sum / len(labels), correct / len(labels)


def transfer_model(init: str, backbone: nn.Module, data: Data, args, device: torch.device) -> nn.Module:
    """An arm's starting network with a new len(data.classes)-way fc: a copy of the
    --weights backbone (ImageNet on full runs; random in smoke, there are none offline),
    or a random init with BatchNorm statistics of the transfer images (its frozen layers
    need them)."""
    k = len(data.classes)
    if init == "pretrained":
        model = copy.deepcopy(backbone)
        model.fc = nn.Linear(model.fc.in_features, k)
        return to_device(model, device)
    model = to_device(torchvision.models.get_model(args.arch, weights=None, num_classes=k), device)
    recalibrate_batchnorm(model, data.x_train[data.train_idx[:args.bn_calib_size]], args.img_size,
                          args.eval_batch_size, device)
    return model


def fine_tune(model: nn.Module, strategy: str, data: Data, args, device: torch.device, arm: str) -> tuple[dict, float]:
    """--transfer-epochs of AdamW on what `strategy` trains (fc at --transfer-lr, the
    backbone part at --backbone-lr-mult x that, cosine-decayed per step). Returns the
    per-epoch history (train loss, validation loss and accuracy) and training seconds."""
    x, y, tr, va = data.x_train, data.y_train, data.train_idx, data.val_idx
    bs = args.transfer_batch_size
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    groups = [{"params": list(model.fc.parameters()), "lr": args.transfer_lr}]
    if body:
        groups.append({"params": body, "lr": args.transfer_lr * args.backbone_lr_mult})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
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
        for i in common.progress(range(0, len(perm) - 1, bs), arm, math.ceil((len(perm) - 1) / bs)):  # no batch of one
            idx = perm[i:i + bs]
            with common.autocast(device, train=True):
                logits = model(preprocess(x[idx], args.img_size)).float()
            loss = F.cross_entropy(logits, y[idx])
            common.optimiser_step(loss, opt, scaler)
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


def transfer(backbone: nn.Module, data: Data, args, device: torch.device) -> dict:
    """Handout 1.4: six arms, {pretrained, scratch} x {head, layer4, full}, each trained
    for the same --transfer-epochs with the same AdamW schedule (fine_tune) on
    --transfer-dataset (`data`)."""
    metrics, curves = {}, {}
    for init in TRANSFER_INITS:
        for strategy in TRANSFER_STRATEGIES:
            arm = f"{init}_{strategy}"
            common.seed_everything(args.seed)
            model = transfer_model(init, backbone, data, args, device)
            n_trainable = freeze_for_transfer(model, strategy)
            curves[arm], seconds = fine_tune(model, strategy, data, args, device, arm)
            _, test_acc = evaluate_model(model, data.x_test, data.y_test, args.img_size, args.eval_batch_size, device)
            metrics[arm] = {"test_acc": test_acc, "final_val_acc": curves[arm]["val_acc"][-1],
                            "final_train_loss": curves[arm]["train_loss"][-1], "trainable_params": n_trainable,
                            "train_seconds": seconds}
            del model
    metrics["pretrained_weights"] = args.weights
    common.save_plot_data(args.out, "transfer", arms=list(curves), n_classes=len(data.classes),
                          train_loss=[h["train_loss"] for h in curves.values()],
                          val_acc=[h["val_acc"] for h in curves.values()], dataset=args.transfer_dataset,
                          setup=f"{args.arch}, pretrained (weights: {args.weights}) vs scratch, "
                                f"{len(data.train_idx)} training images")
    return metrics


# A loss axis turns logarithmic when the curves on it span this factor or more (a
# diverging arm at loss 1e3 next to arms at 1 would flatten them into one line).
LOG_AXIS_RATIO = 100.0


def spans_orders_of_magnitude(values, ratio: float = LOG_AXIS_RATIO) -> bool:
    """True when the positive finite values span at least `ratio` (max / min)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x) and x > 0]
    return bool(v) and max(v) / min(v) >= ratio


def plot_transfer_curves(curves: dict, title: str, path: Path) -> None:
    """Training loss and validation accuracy per epoch of every arm; pretrained solid,
    scratch dashed; the loss axis is logarithmic when the arms differ by orders of
    magnitude."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    logy = spans_orders_of_magnitude([v for h in curves.values() for v in h["train_loss"]])
    epochs = {a: list(range(1, len(h["train_loss"]) + 1)) for a, h in curves.items()}
    common.line_plot(a1, {a: (epochs[a], h["train_loss"]) for a, h in curves.items()},
                     "training loss" + (" (log scale)" if logy else ""), "epoch", "cross-entropy", logy=logy)
    common.line_plot(a2, {a: (epochs[a], h["val_acc"]) for a, h in curves.items()}, "validation accuracy", "epoch",
                     "accuracy")
    a2.set_ylim(0, 1)
    n_epochs = max(len(e) for e in epochs.values())
    for ax in (a1, a2):  # pretrained solid, scratch dashed
        if n_epochs <= 20:
            ax.set_xticks(range(1, n_epochs + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for line in ax.get_lines():
            line.set_linestyle("--" if line.get_label().startswith("scratch") else "-")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    common.save_figure(fig, path)


def plot_transfer(m: dict, out: Path) -> None:
    """transfer_curves.png (plot_transfer_curves) and transfer_compute.png: test accuracy
    against training seconds, marker size ~ trainable parameters."""
    p = common.load_plot_data(out, "transfer")
    arms, dataset = p["arms"].tolist(), str(p["dataset"])
    curves = {a: {"train_loss": p["train_loss"][i].tolist(), "val_acc": p["val_acc"][i].tolist()}
              for i, a in enumerate(arms)}
    plot_transfer_curves(curves, f"Transfer to {dataset}: {p['setup']}", out / "transfer_curves.png")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    most = max(m[a]["trainable_params"] for a in arms)
    for a in arms:
        ax.scatter(m[a]["train_seconds"], m[a]["test_acc"], s=30 + 170 * m[a]["trainable_params"] / most,
                   marker="o" if a.startswith("pretrained") else "s",
                   label=f"{a} ({m[a]['trainable_params'] / 1e6:.2f} M trainable)")
    ax.axhline(1 / int(p["n_classes"]), color="grey", ls=":", lw=1, label="chance")
    ax.set(xscale="log", xlabel="training wall-clock seconds (log)", ylabel="test accuracy",
           title=f"Accuracy vs compute, {dataset} (marker size ~ trainable parameters)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "transfer_compute.png")


# ----------------------------------------------------------------------------
# Experiment 5: depth (ResNet-18 vs ResNet-152)
# ----------------------------------------------------------------------------


@torch.no_grad()
def measure_throughput(model: nn.Module, images: torch.Tensor, img_size: int, batch_size: int,
                       device: torch.device, n_batches: int) -> float:
    """Feature-extraction images/s, resize included: one warm-up batch, then the
    median over n_batches timed batches."""
    model.eval()
    batch = images[:batch_size]
    times = []
    for i in range(n_batches + 1):
        sync(device)
        t0 = time.perf_counter()
        with common.autocast(device):
            backbone_features(model, preprocess(batch, img_size))
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return len(batch) / float(np.median(times))


def depth(backbone: nn.Module, pooled: tuple | None, data: Data, args, device: torch.device) -> dict:
    """Handout 1.5 (optional): the same pipeline for each of --depth-archs: pooled
    features (for --arch, `pooled`, the baseline's own), a linear head trained as in the
    baseline, a logistic-regression probe, and extraction speed."""
    metrics, calib = {}, data.x_train[data.train_idx[:args.bn_calib_size]]  # BatchNorm statistics of random inits
    for arch in args.depth_archs:
        model = backbone if arch == args.arch else prepare_backbone(arch, args.weights, calib, args, device)
        ftr, fte, _ = pooled if model is backbone else pooled_features(model, arch, data, args, device)
        head, _ = linear_head(ftr, data, args, f"{arch} head")
        _, head_acc, _ = evaluate_head(head, fte, data.y_test)
        p = data.train_idx[:args.probe_train_size]
        with common.few_threads(max(len(p), len(fte))):
            probe_acc = common.linear_probe(ftr[p].cpu().numpy(), data.y_train[p].cpu().numpy(), fte.cpu().numpy(),
                                            data.y_test.cpu().numpy(), seed=args.seed)["test_acc"]
        ips = measure_throughput(model, data.x_test, args.img_size, args.eval_batch_size, device,
                                 args.throughput_batches)
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
        metrics[arch] = {"head_acc": head_acc, "probe_acc": probe_acc, "images_per_s": ips,
                         "backbone_params_millions": n_params / 1e6, "feature_dim": ftr.shape[1]}
        print(f"{arch}: head acc {head_acc:.4f}, probe acc {probe_acc:.4f}, {ips:.0f} images/s", flush=True)
        del model
    common.save_plot_data(args.out, "depth", setup=f"weights: {args.weights}, {args.img_size} px, "
                                                   f"batch {args.eval_batch_size}, {device.type}")
    return metrics


def plot_depth(m: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = [a for a in m if isinstance(m[a], dict)]  # the architectures (not "seconds")
    for ax, key, title in zip(axes, ("head_acc", "probe_acc", "images_per_s"),
                              ("linear head (baseline recipe), test acc", "logistic probe, test acc",
                               "feature extraction, images/s")):
        bars = ax.bar(names, [m[n][key] for n in names], color=plt.get_cmap("tab10").colors[:len(names)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set(title=title, ylabel=key.replace("_", " "))
        if key != "images_per_s":
            ax.set_ylim(0, 1)
    fig.suptitle(f"Depth: feature quality vs cost ({common.load_plot_data(out, 'depth')['setup']})")
    common.save_figure(fig, out / "depth_comparison.png")


# ----------------------------------------------------------------------------
# Experiment 6: convergence from scratch, with and without shortcuts
# ----------------------------------------------------------------------------


def scratch_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, h, w] -> uint8 [N, 3, 32, 32], the CIFAR network's input:
    FashionMNIST's 28 px greyscale is zero-padded by 2 px (as LeNet-5 padded MNIST)
    and repeated to 3 channels; CIFAR passes unchanged."""
    pad = 32 - x.shape[-1]
    if pad > 0:
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def scratch_optimizer(model: nn.Module, total: int, args) -> tuple[torch.optim.Optimizer, object]:
    """SGD (momentum, weight decay) with the learning rate divided by 10 at 50% and 75% of
    the `total` steps: He et al.'s schedule (drops at 32k and 48k of 64k iterations)
    compressed to this budget, after a linear warm-up over --scratch-warmup of the steps
    (He et al. warm ResNet-110 up at lr 0.01 for 400 iterations; Goyal et al. 2017 ramp
    linearly). Returns (optimizer, per-step scheduler)."""
    opt = torch.optim.SGD(model.parameters(), lr=args.scratch_lr, momentum=args.scratch_momentum,
                          weight_decay=args.scratch_weight_decay)
    warmup, drops = round(args.scratch_warmup * total), (total // 2, total * 3 // 4)

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / (warmup + 1)) * 0.1 ** sum(step >= d for d in drops)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def train_from_scratch(model: nn.Module, data: Data, mean: torch.Tensor, std: torch.Tensor, args,
                       device: torch.device, desc: str) -> dict:
    """--scratch-epochs with scratch_optimizer on the training images (standardised with
    `mean`, `std` [3]; cropped and flipped with --scratch-augment, He et al. 2016, sec.
    4.2). Returns the training loss and accuracy of every step (on its augmented
    minibatch, before the update), the test accuracy after every epoch, and the training
    seconds. A NaN/inf loss stops this network only; `diverged_at_step` says when."""
    x, y = data.x_train, data.y_train
    bs = min(args.scratch_batch_size, len(y))
    # Full minibatches only (a reshuffled remainder is left out each epoch): a last batch
    # of a few images gives BatchNorm noisy statistics and, at lr 0.1, loss spikes.
    starts = range(0, len(y) - bs + 1, bs)
    total = args.scratch_epochs * len(starts)
    opt, sched = scratch_optimizer(model, total, args)
    scaler = common.grad_scaler(device)
    gen = torch.Generator().manual_seed(args.seed)  # the same minibatches and crops for both networks
    hist = {"step_loss": [], "step_acc": [], "test_acc": [], "diverged_at_step": None, "seconds": 0.0,
            "steps_per_epoch": len(starts), "total_steps": total}
    for epoch in range(args.scratch_epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen).to(device)
        losses, accs = [], []
        for i in common.progress(starts, f"{desc} epoch {epoch + 1}", len(starts)):
            idx = perm[i:i + bs]
            with common.autocast(device, train=True):
                logits = model(preprocess(x[idx], 32, args.scratch_augment, gen, mean, std)).float()
            loss = F.cross_entropy(logits, y[idx])
            common.optimiser_step(loss, opt, scaler)
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
    """Means over consecutive windows of `window` steps (the last may be shorter), with
    the step number (1-based) at each window's end: a readable curve of noisy steps."""
    starts = range(0, len(values), window)
    ends = [min(i + window, len(values)) for i in starts]
    return ends, [float(np.mean(values[i:e])) for i, e in zip(starts, ends)]


def steps_to_reach(ends: list[int], curve: list[float], target: float) -> int | None:
    """The first window end at which `curve` reaches `target`, None if it never does."""
    return next((e for e, v in zip(ends, curve) if v >= target), None)


def scratch_metrics(h: dict, n_params: int, target_acc: float) -> dict:
    """One network's summary of train_from_scratch's history `h`: training loss at 10 / 25
    / 50% of the budget and over the last epoch, test accuracy, steps to `target_acc`,
    and the windowed curves. ~100 points on long runs; on short ones windows of at least
    10 steps (if that still leaves 10 points), so a point is not one noisy minibatch."""
    window = max(1, h["total_steps"] // 100, min(10, h["total_steps"] // 10))
    ends, loss_curve = windowed(h["step_loss"], window)
    _, acc_curve = windowed(h["step_acc"], window)
    last = h["step_loss"][-h["steps_per_epoch"]:]  # the last epoch (or what ran of it)

    def loss_at(fraction):  # windowed training loss at this fraction of the budget
        step = max(1, round(fraction * h["total_steps"]))
        return next((v for e, v in zip(ends, loss_curve) if e >= step), None)

    return {"params": n_params, "train_loss_at_10pct": loss_at(0.1), "train_loss_at_25pct": loss_at(0.25),
            "train_loss_at_50pct": loss_at(0.5), "final_train_loss": float(np.mean(last)) if last else None,
            "final_train_acc": float(np.mean(h["step_acc"][-h["steps_per_epoch"]:])) if last else None,
            "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
            "steps_to_target_acc": steps_to_reach(ends, acc_curve, target_acc),
            "diverged_at_step": h["diverged_at_step"], "train_seconds": h["seconds"],
            "history": {"step": ends, "train_loss": loss_curve, "train_acc": acc_curve, "test_acc": h["test_acc"]}}


def scratch_shortcuts(data: Data, args, device: torch.device) -> dict:
    """Handout 1.2, He et al. 2016, sec. 4.2 and Fig. 6: the CIFAR ResNet of
    --scratch-depth layers and the same network with every shortcut removed, trained from
    scratch at the same budget: same initial weights (option A shortcuts have no
    parameters, so one seed gives both networks the same ones), same minibatches, same
    schedule."""
    pixels = data.x_train[:10000].float().div(255.0)  # per-channel statistics from up to 10,000 training images
    mean, std = pixels.mean((0, 2, 3)), pixels.std((0, 2, 3)).clamp_min(1e-3)
    del pixels
    metrics = {"dataset": args.scratch_dataset, "depth": args.scratch_depth, "train_images": len(data.y_train),
               "target_acc": args.scratch_target_acc}
    for arm, shortcuts in (("residual", True), ("plain", False)):
        common.seed_everything(args.seed)
        model = to_device(CifarResNet(args.scratch_depth, args.scratch_width, len(data.classes), shortcuts), device)
        h = train_from_scratch(model, data, mean, std, args, device,
                               f"{'ResNet' if shortcuts else 'plain'}-{args.scratch_depth}")
        metrics[arm] = scratch_metrics(h, sum(p.numel() for p in model.parameters()), args.scratch_target_acc)
        del model
    r, p = metrics["residual"], metrics["plain"]
    metrics["steps"] = h["total_steps"]  # the same budget for both networks
    metrics["plain_minus_residual_final_train_loss"] = (
        p["final_train_loss"] - r["final_train_loss"] if None not in (p["final_train_loss"], r["final_train_loss"])
        else None)
    metrics["plain_over_residual_steps_to_target"] = (
        p["steps_to_target_acc"] / r["steps_to_target_acc"]
        if p["steps_to_target_acc"] and r["steps_to_target_acc"] else None)
    common.save_plot_data(args.out, "scratch_shortcuts",
                          setup=f"{args.scratch_epochs} epochs = {h['total_steps']} steps of {args.scratch_batch_size}")
    return metrics


def plot_scratch_shortcuts(m: dict, out: Path) -> None:
    """Training loss and accuracy per step (windowed means) and test accuracy per epoch,
    ResNet solid, plain dashed, the learning-rate drops dotted."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), layout="constrained")
    total, target = m["steps"], m["target_acc"]
    for arm, name, style in (("residual", f"ResNet-{m['depth']}", "-"), ("plain", f"plain-{m['depth']}", "--")):
        h, a = m[arm]["history"], m[arm]
        axes[0].plot(h["step"], h["train_loss"], style,
                     label=f"{name} (test {a['test_acc']:.3f})" if a["test_acc"] is not None else name)
        axes[1].plot(h["step"], h["train_acc"], style, label=name + (
            f", {target:.0%} at step {a['steps_to_target_acc']}" if a["steps_to_target_acc"] else f", never {target:.0%}"))
        axes[2].plot(range(1, len(h["test_acc"]) + 1), h["test_acc"], style + "o", ms=3, label=name)
    if spans_orders_of_magnitude([v for arm in ("residual", "plain") for v in m[arm]["history"]["train_loss"]], 10.0):
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
    fig.suptitle(f"Trained from scratch with and without shortcuts (He et al. 2016, Fig. 6): {m['dataset']}, "
                 f"{m['train_images']} images,\n{common.load_plot_data(out, 'scratch_shortcuts')['setup']}, "
                 f"same initial weights and minibatches")
    common.save_figure(fig, out / "scratch_shortcuts_curves.png")


# ----------------------------------------------------------------------------
# Findings: the assignment's questions (shared/HANDOUT.md, part 1), answered
# from this run's metrics. Each rule computes its sentence from the numbers, so
# its direction and size change with the run; tests/test_findings.py feeds every
# rule constructed metrics that make it come out both ways.
# ----------------------------------------------------------------------------


def _pts(a: float, b: float) -> str:
    """Difference of two accuracies in percentage points, unsigned: 0.951, 0.942 -> '0.9'."""
    return f"{abs(100 * (a - b)):.1f}"


def _num(v, spec: str = ".3f") -> str:
    """A metric for a sentence; None (a value undefined in this run, e.g. a silhouette
    with one image per class) reads as 'undefined'."""
    return "undefined" if v is None else format(v, spec)


def _answer_frozen(E: dict):
    b = E["baseline"]
    cm = np.asarray(b["confusion"])
    n_test, k = int(cm.sum()), len(cm)
    chance = 1 / k
    ratio = b["test_acc"] / chance
    level = "far above" if ratio >= 3 else "above" if ratio >= 1.5 else "no better than"
    head_params = b["feature_dim"] * k + k
    gap = b["final_train_acc"] - b["final_val_acc"]
    finding = (f"a linear head of {head_params:,} parameters on the frozen backbone reaches {common.pct(b['test_acc'])} "
               f"test accuracy, {level} chance ({common.pct(chance)}), after {len(b['history']['train_loss'])} "
               f"epochs; training accuracy is {_pts(gap, 0)} points {'above' if gap >= 0 else 'below'} validation")
    evidence = [f"baseline test accuracy {common.pct(b['test_acc'])} on {n_test:,} CIFAR-10 test images "
                f"(loss {b['test_loss']:.3f})",
                f"final epoch: train accuracy {common.pct(b['final_train_acc'])}, validation "
                f"{common.pct(b['final_val_acc'])}",
                f"trainable: {head_params:,} head parameters ({b['feature_dim']}-d pooled features x {k} classes)",
                f"cost: features extracted once in {b['extract_seconds'] or 0:.1f} s "
                f"(0 = cached), head trained in {b['head_seconds']:.1f} s"]
    if "transfer" in E and "pretrained_head" in E["transfer"]:
        t = E["transfer"]
        evidence.append(f"transfer (its test split): pretrained frozen + head {common.pct(t['pretrained_head']['test_acc'])}"
                        f" vs random init trained in full {common.pct(t['scratch_full']['test_acc'])} "
                        f"({t['scratch_full']['train_seconds']:.0f} s vs {t['pretrained_head']['train_seconds']:.0f} s)")
    return finding, evidence, ["baseline_curves.png", "baseline_confusion.png"]


def _answer_shortcuts(E: dict):
    r = E["residual"]
    base, sel = r["baseline_test_acc"], r["selected"]
    d = sel["test_acc_retrained"] - base
    g_with = r["gradnorm_stem_over_layer4"]["with_shortcuts"]
    g_without = r["gradnorm_stem_over_layer4"]["without_shortcuts"]
    finding = (f"cutting the shortcuts of {sel['blocks_cut']} blocks ({r['selected_blocks']}) "
               f"{'lowers' if d < 0 else 'raises'} test accuracy by {_pts(d, 0)} points after retraining the head "
               f"({common.pct(sel['test_acc_retrained'])} vs {common.pct(base)}); at random initialisation the stem "
               f"gets {g_with:.3g}x layer4's gradient norm with shortcuts and {g_without:.3g}x without "
               f"({'less' if g_without < g_with else 'more'} gradient reaches the early layers without them)")
    evidence = [f"test accuracy, head retrained: baseline {common.pct(base)}, "
                + ", ".join(f"cut {n} ({r[n]['blocks_cut']} blocks) {common.pct(r[n]['test_acc_retrained'])}"
                            for n in ("selected", "layer1", "layer2", "layer3", "layer4", "all") if n in r),
                "test accuracy with the baseline head, not retrained: "
                + ", ".join(f"cut {n} {common.pct(r[n]['test_acc_no_retrain'])}"
                            for n in ("selected", "all") if n in r),
                f"gradient norm stem / layer4 at init, one batch: {g_with:.3g} with shortcuts, {g_without:.3g} without; "
                f"initial loss {r['init_loss']['with_shortcuts']:.3f} vs {r['init_loss']['without_shortcuts']:.3f}"]
    return finding, evidence, ["residual_curves.png", "residual_gradnorms.png"]


def _answer_scratch(E: dict):
    s = E["scratch_shortcuts"]
    res, plain = s["residual"], s["plain"]
    d_loss = plain["final_train_loss"] - res["final_train_loss"]
    d_acc = plain["test_acc"] - res["test_acc"]
    reach = lambda m: (f"after {m['steps_to_target_acc']} steps" if m["steps_to_target_acc"]  # noqa: E731
                       else "not reached")
    finding = (f"trained from scratch for {s['steps']} steps, plain-{s['depth']} ends with a training loss "
               f"{abs(d_loss):.3f} {'above' if d_loss > 0 else 'below'} ResNet-{s['depth']}'s "
               f"({plain['final_train_loss']:.3f} vs {res['final_train_loss']:.3f}) and test accuracy "
               f"{_pts(d_acc, 0)} points {'lower' if d_acc < 0 else 'higher'} ({common.pct(plain['test_acc'])} vs "
               f"{common.pct(res['test_acc'])}); training accuracy {common.pct(s['target_acc'], 0)}: {reach(res)} with "
               f"shortcuts, {reach(plain)} without")
    evidence = [f"{s['dataset']}, {s['train_images']:,} training images, {s['steps']} steps, same initial weights "
                f"and minibatches",
                "training loss at 10% / 25% / 50% of the budget: "
                f"ResNet {res['train_loss_at_10pct']:.3f} / {res['train_loss_at_25pct']:.3f} / "
                f"{res['train_loss_at_50pct']:.3f}; plain {plain['train_loss_at_10pct']:.3f} / "
                f"{plain['train_loss_at_25pct']:.3f} / {plain['train_loss_at_50pct']:.3f}",
                f"test accuracy: ResNet {common.pct(res['test_acc'])}, plain {common.pct(plain['test_acc'])}"]
    return finding, evidence, ["scratch_shortcuts_curves.png"]


def _answer_hierarchy(E: dict):
    f = E["features"]
    probe, sil = f["probe_acc"], f["silhouette"]
    stages = list(probe)
    first, last = stages[0], stages[-1]
    best = max(stages, key=lambda s: probe[s])
    d = probe[last] - probe[first]
    finding = (f"linear-probe accuracy {'rises' if d > 0 else 'falls'} by {_pts(d, 0)} points from the {first} "
               f"({common.pct(probe[first])}) to {last} ({common.pct(probe[last])}), peaking at {best} "
               f"({common.pct(probe[best])}); silhouette {_num(sil[first])} -> {_num(sil[last])}")
    evidence = ["linear-probe test accuracy by depth: " + ", ".join(f"{s} {common.pct(probe[s])}" for s in stages),
                "silhouette of standardised features by depth: " + ", ".join(f"{s} {_num(sil[s])}" for s in stages),
                "5-NN accuracy in the full feature space: " + ", ".join(f"{s} {common.pct(f['knn_acc'][s])}"
                                                                        for s in stages),
                "channels: " + ", ".join(f"{s} {f['dim'][s]}" for s in stages),
                "test images: --n-vis of the config; probe trained on --probe-train-size training images"]
    figs = ["features_separability.png"] + [f"features_{m}.png" for m in f["embedding"]]
    return finding, evidence, figs


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
             f"{cheap} comes within {_pts(t[best]['test_acc'], t[cheap]['test_acc'])} points of it in "
             f"{t[cheap]['train_seconds']:.1f} s instead of {t[best]['train_seconds']:.1f} s")
    finding = (f"{best} is the most accurate ({common.pct(t[best]['test_acc'])}); {trade}; ImageNet weights "
               f"{'beat' if gains[top] > 0 else 'do not beat'} random init by up to {_pts(gains[top], 0)} points "
               f"(largest when training {top})")
    evidence = [f"{a}: test accuracy {common.pct(t[a]['test_acc'])}, {t[a]['trainable_params']:,} trainable "
                f"parameters, {t[a]['train_seconds']:.1f} s training" for a in arms]
    evidence.append(f"pretrained weights: {t['pretrained_weights']}; transfer dataset, sizes and epochs: the config's "
                    f"--transfer-* flags")
    return finding, evidence, ["transfer_curves.png", "transfer_compute.png"]


def _answer_depth(E: dict):
    d = E["depth"]
    archs = sorted((a for a in d if isinstance(d[a], dict)), key=lambda a: d[a]["backbone_params_millions"])
    small, big = archs[0], archs[-1]
    diff = d[big]["head_acc"] - d[small]["head_acc"]
    slower = d[small]["images_per_s"] / d[big]["images_per_s"]   # > 1: the deeper network is slower
    finding = (f"{big} {'beats' if diff > 0 else 'does not beat'} {small} (linear head: "
               f"{common.pct(d[big]['head_acc'])} vs {common.pct(d[small]['head_acc'])}, {_pts(diff, 0)} points) "
               f"while extracting features {max(slower, 1 / slower):.1f}x {'slower' if slower >= 1 else 'faster'}")
    evidence = [f"{a}: head {common.pct(d[a]['head_acc'])}, logistic probe {common.pct(d[a]['probe_acc'])}, "
                f"{d[a]['images_per_s']:.0f} images/s, {d[a]['backbone_params_millions']:.1f} M parameters, "
                f"{d[a]['feature_dim']}-d features" for a in archs]
    return finding, evidence, ["depth_comparison.png"]


def _answer_embeddings(E: dict):
    emb = E["features"]["embedding"]
    methods = list(emb)
    mean = {m: float(np.mean(list(emb[m]["trustworthiness"].values()))) for m in methods}
    evidence = [f"{EMBED_NAMES[m]}: trustworthiness " + ", ".join(f"{s} {v:.3f}" for s, v in
                                                                   emb[m]["trustworthiness"].items())
                + "; 5-NN accuracy in 2-D " + ", ".join(f"{s} {common.pct(v)}" for s, v in emb[m]["knn_acc_2d"].items())
                for m in methods]
    if len(methods) < 2:
        m = methods[0]
        return (f"only {EMBED_NAMES[m]} ran (mean trustworthiness {mean[m]:.3f}); --embed both compares t-SNE with UMAP",
                evidence, [f"features_{m}.png"])
    better = max(methods, key=mean.get)
    other = min(methods, key=mean.get)
    finding = (f"{EMBED_NAMES[better]} keeps more of the feature space's neighbourhoods than {EMBED_NAMES[other]}: "
               f"mean trustworthiness {mean[better]:.3f} vs {mean[other]:.3f} over the five depths")
    for m in methods:
        evidence.append(f"{EMBED_NAMES[m]} took {emb[m]['seconds'] or 0:.1f} s")
    return finding, evidence, ["features_tsne_vs_umap.png"]


def _answer_confused(E: dict):
    f = E["features"]
    pairs = f["confused_pairs"]
    last = list(f["probe_acc"])[-1]
    mean_sep = f["mean_pair_separation"][last]
    closer = [p for p, v in pairs.items() if v["separation"][last] < mean_sep]
    finding = (f"at {last}, {len(closer)} of the {len(pairs)} most-confused class pairs sit closer together than the "
               f"average pair (separation {mean_sep:.2f})")
    evidence = [f"{p.replace('_vs_', ' / ')}: {v['confusions']} test confusions, separation at {last} "
                f"{v['separation'][last]:.2f}" for p, v in pairs.items()]
    return finding, evidence, ["features_confused_pairs.png", "baseline_confusion.png"]


QUESTIONS = [
    common.Question("1.1", "Why is training ResNet-152 from scratch unnecessary; how well do frozen features transfer?",
                    ("baseline",), _answer_frozen),
    common.Question("1.2", "How do skips change gradient flow (pretrained backbone, shortcuts cut)?",
                    ("residual",), _answer_shortcuts),
    common.Question("1.2", "Convergence speed and performance without skips (trained from scratch)?",
                    ("scratch_shortcuts",), _answer_scratch),
    common.Question("1.3", "How does class separability evolve with depth?", ("features",), _answer_hierarchy),
    common.Question("1.4", "Best compute/accuracy trade-off; which layers transfer best?", ("transfer",),
                    _answer_transfer),
    common.Question("1.5", "Optional: ResNet-152 vs a shallower ResNet", ("depth",), _answer_depth),
    common.Question("1.5", "Optional: t-SNE vs UMAP", ("features",), _answer_embeddings),
    common.Question("1.5", "Optional: are the classes the network confuses close in feature space?",
                    ("features", "baseline"), _answer_confused),
]


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------

PLOTS = {"baseline": plot_baseline, "residual": plot_residual, "features": plot_features, "transfer": plot_transfer,
         "depth": plot_depth, "scratch_shortcuts": plot_scratch_shortcuts}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = common.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    # Out of GPU memory: feature extraction and evaluation batches are the largest
    # (--eval-batch-size); transfer and scratch_shortcuts name their own batch flags.
    with common.user_errors(parser.prog, batch_flag="--eval-batch-size"):
        if args.replot:
            return common.replot(args.out, PLOTS)
        # Check everything a user can get wrong before anything is loaded or written.
        selected = resolve_blocks(args.arch, args.ablate_blocks)
        chosen = set(args.experiments)
        if "features" in chosen and args.embed != "tsne" and importlib.util.find_spec("umap") is None:
            raise common.UserError(f"--embed {args.embed} needs umap-learn (pip install umap-learn); "
                                   f"or use --embed tsne")

        device = common.pick_device(args.device)
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick the fastest kernels
        common.seed_everything(args.seed)
        data = tdata = sdata = backbone = None
        if chosen - {"scratch_shortcuts"}:  # every other experiment reads CIFAR-10 and the backbone
            data = load_dataset("cifar10", args.train_size, args.test_size, args.val_size, "--val-size", args, device)
            print(f"CIFAR-10 ({'smoke' if args.smoke else 'real'}): {len(data.train_idx)} train, "
                  f"{len(data.val_idx)} val, {len(data.y_test)} test images, resized to {args.img_size} px", flush=True)
        if "transfer" in chosen:
            tdata = load_dataset(args.transfer_dataset, args.transfer_train_size, args.transfer_test_size,
                                 args.transfer_val_size, "--transfer-val-size", args, device)
        if "scratch_shortcuts" in chosen:
            s = load_dataset(args.scratch_dataset, args.scratch_train_size, args.scratch_test_size, 0, "", args, device)
            sdata = dataclasses.replace(s, x_train=scratch_images(s.x_train), x_test=scratch_images(s.x_test))
            print(f"{args.scratch_dataset} ({'smoke' if args.smoke else 'real'}) for scratch_shortcuts: "
                  f"{len(s.y_train)} train, {len(s.y_test)} test images at 32 px", flush=True)
        if data is not None:
            backbone = prepare_backbone(args.arch, args.weights, data.x_train[data.train_idx[:args.bn_calib_size]],
                                        args, device)
            print(f"{args.arch} (weights: {args.weights}): "
                  f"{sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters", flush=True)

        @functools.cache
        def pooled():  # --arch's pooled CIFAR-10 features (train, test, seconds): baseline and depth share them
            return pooled_features(backbone, args.arch, data, args, device)

        @functools.cache
        def fitted():  # the baseline head, which residual and features compare with
            return fit_baseline(backbone, data, pooled(), args, device)

        def naming(batch_flag: str, experiment, *inputs):  # out of GPU memory in `experiment` names its batch flag
            with common.user_errors(parser.prog, batch_flag=batch_flag):
                return experiment(*inputs)

        results = common.Results("task1", args, device, questions=QUESTIONS)
        return results.run({
            "baseline": lambda: baseline(fitted(), data, args),
            "residual": lambda: residual(backbone, data, fitted(), selected, args, device),
            "features": lambda: features(backbone, data, fitted()["confusion"], args, device),
            "transfer": lambda: naming("--transfer-batch-size (or --eval-batch-size)", transfer, backbone, tdata,
                                       args, device),
            "depth": lambda: depth(backbone, pooled() if args.arch in args.depth_archs else None, data, args, device),
            "scratch_shortcuts": lambda: naming("--scratch-batch-size (or --eval-batch-size)", scratch_shortcuts,
                                                sdata, args, device),
        }, PLOTS)


if __name__ == "__main__":
    main()
