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
import importlib.util
import json
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
    g.add_argument("--arch", type=resnet_arch, default="resnet152",
                   help="torchvision ResNet to study (default: resnet152; smoke: resnet18)")
    g.add_argument("--weights", choices=["imagenet", "none"], default="imagenet",
                   help="imagenet: torchvision's IMAGENET1K_V2 weights (V1 where there is no V2); "
                        "none: random init (default: imagenet; smoke: none)")
    g.add_argument("--img-size", type=pint, default=224,
                   help="CIFAR's 32 px images are resized to this on the device, bilinear with antialias "
                        "(default: 224)")
    g.add_argument("--train-size", type=non_negative_int, default=0,
                   help="CIFAR-10 training images to use, 0 = all 50,000 (default: 0)")
    g.add_argument("--test-size", type=non_negative_int, default=0,
                   help="CIFAR-10 test images to use, 0 = all 10,000 (default: 0)")
    g.add_argument("--val-size", type=pint, default=5000,
                   help="training images held out for the validation curves (default: 5000)")
    g.add_argument("--eval-batch-size", type=pint, default=512,
                   help="batch size for feature extraction and evaluation (default: 512)")
    g.add_argument("--bn-calib-size", type=common.Bounded(int, lo=2), default=2000,
                   help="training images whose batch statistics become the BatchNorm running mean and variance "
                        "of a randomly initialised backbone (--weights none, transfer's scratch arms) before it "
                        "is frozen (default: 2000; smoke: 128)")
    g = parser.add_argument_group("baseline (also the head training of residual and depth)")
    g.add_argument("--epochs", type=pint, default=5, help="epochs of linear-head training (default: 5)")
    g.add_argument("--batch-size", type=pint, default=256, help="head-training minibatch (default: 256)")
    g.add_argument("--lr", type=pfloat, default=1e-3,
                   help="AdamW learning rate of the head, cosine-decayed (default: 1e-3)")
    g.add_argument("--weight-decay", type=non_negative_float, default=1e-4,
                   help="AdamW weight decay of the head (default: 1e-4)")
    g.add_argument("--augment", action="store_true",
                   help="train the baseline head through the frozen backbone every epoch with random crops and "
                        "flips, instead of on cached features (slower: one backbone pass per epoch)")
    g = parser.add_argument_group("residual")
    g.add_argument("--ablate-blocks", default="auto", metavar="B1,B2",
                   help="blocks whose shortcut is cut, e.g. layer1.1,layer3.5; auto = the middle block of every "
                        "stage (default: auto). The sweep over whole stages and all blocks always runs too")
    g.add_argument("--grad-batch", type=pint, default=32,
                   help="training images for the gradient norms at initialisation (default: 32)")
    g = parser.add_argument_group("features")
    g.add_argument("--n-vis", type=common.Bounded(int, lo=5), default=2000,
                   help="test images embedded and scored per depth; UMAP needs at least 4 (default: 2000)")
    g.add_argument("--probe-train-size", type=common.Bounded(int, lo=10), default=5000,
                   help="training images for the logistic-regression probes; a fifth of them chooses the "
                        "regularisation, so a few per class at least (default: 5000)")
    g.add_argument("--embed", choices=["tsne", "umap", "both"], default="both",
                   help="2-D embedding; both draws t-SNE and UMAP side by side and scores each (default: both; "
                        "smoke: tsne, since UMAP costs ~20 s of numba compilation per process)")
    g.add_argument("--n-pairs", type=pint, default=5, help="most-confused class pairs to analyse (default: 5)")
    g = parser.add_argument_group("transfer")
    g.add_argument("--transfer-dataset", choices=["cifar100", "cifar10", "stl10"], default="cifar100",
                   help="dataset to fine-tune on (default: cifar100)")
    g.add_argument("--transfer-train-size", type=non_negative_int, default=10000,
                   help="its training images, 0 = all (default: 10000, which keeps six arms of ResNet-152 at 224 px "
                        "to minutes on one GPU)")
    g.add_argument("--transfer-val-size", type=pint, default=1000,
                   help="of those, held out for validation curves (default: 1000)")
    g.add_argument("--transfer-test-size", type=non_negative_int, default=0,
                   help="its test images, 0 = all (default: 0)")
    g.add_argument("--transfer-epochs", type=pint, default=3, help="epochs for every arm (default: 3)")
    g.add_argument("--transfer-batch-size", type=pint, default=128, help="fine-tuning minibatch (default: 128)")
    g.add_argument("--transfer-lr", type=pfloat, default=1e-3,
                   help="AdamW learning rate of the new head, cosine-decayed per step (default: 1e-3)")
    g.add_argument("--backbone-lr-mult", type=pfloat, default=0.1,
                   help="backbone learning rate = this x --transfer-lr (default: 0.1)")
    g = parser.add_argument_group("depth")
    g.add_argument("--depth-archs", type=resnet_list, default=["resnet18", "resnet152"], metavar="A,B",
                   help="ResNets to compare (default: resnet18,resnet152; smoke: resnet18,resnet34)")
    g.add_argument("--throughput-batches", type=pint, default=10,
                   help="timed batches of --eval-batch-size for images/s (default: 10)")
    g = parser.add_argument_group("scratch_shortcuts (He et al. 2016 sec. 4.2: CIFAR ResNet vs the plain net)")
    g.add_argument("--scratch-dataset", choices=["cifar10", "fashion-mnist"], default="cifar10",
                   help="training set; fashion-mnist is padded to 32x32 and repeated to 3 channels (default: cifar10)")
    g.add_argument("--scratch-depth", type=CifarDepth(), default=56,
                   help="layers, 6n+2; He et al. see plain nets degrade from 20 to 56 (default: 56; smoke: 8)")
    g.add_argument("--scratch-width", type=pint, default=16,
                   help="channels of the first stage, doubled at each of the two later stages (default: 16)")
    g.add_argument("--scratch-train-size", type=non_negative_int, default=0,
                   help="training images, 0 = the whole training split (default: 0; smoke: 256)")
    g.add_argument("--scratch-test-size", type=non_negative_int, default=0,
                   help="test images, 0 = the whole test split (default: 0; smoke: 128)")
    g.add_argument("--scratch-epochs", type=pint, default=15,
                   help="epochs for both networks; the lr drops 10x at 50%% and 75%% of the steps, He et al.'s "
                        "schedule compressed from 164 epochs (default: 15; smoke: 2)")
    g.add_argument("--scratch-batch-size", type=pint, default=128, help="SGD minibatch (default: 128; smoke: 32)")
    g.add_argument("--scratch-lr", type=pfloat, default=0.1, help="SGD learning rate (default: 0.1)")
    g.add_argument("--scratch-warmup", type=common.unit_float, default=0.05,
                   help="fraction of the steps over which the lr ramps linearly up to --scratch-lr (default: 0.05)")
    g.add_argument("--scratch-momentum", type=common.unit_float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--scratch-weight-decay", type=non_negative_float, default=1e-4,
                   help="SGD weight decay (default: 1e-4)")
    g.add_argument("--scratch-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="4 px reflect-pad random crops and horizontal flips (default: on)")
    g.add_argument("--scratch-target-acc", type=common.unit_float, default=0.8,
                   help="convergence speed = training steps until the running training accuracy first reaches "
                        "this (default: 0.8)")
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
# Data: uint8 CIFAR on the device, resized and normalised per batch
# ----------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_data(name: str, args, train: bool, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list]:
    """One split as uint8 [N, 3, h, w] and int64 [N] on the device (CIFAR-10 train is
    150 MB as uint8; resized to 224 px in float it would be 30 GB, so resizing happens
    per batch). `size` > 0 keeps a seeded random subset of that many images."""
    x, y, classes = common.load_split(name, args.data_root, train, smoke=args.smoke, seed=args.seed,
                                      smoke_size=size or None)
    if 0 < size < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:size]
        x, y = x[keep], y[keep]
    return x.to(device), y.to(device), classes


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded train/validation split of n training images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return perm[val_size:], perm[:val_size]


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


def preprocess(x: torch.Tensor, img_size: int, augment: bool = False, gen: torch.Generator | None = None):
    """uint8 [B, 3, h, w] -> float [B, 3, S, S]: optional crop/flip at the native size,
    bilinear resize with antialias (it only matters when shrinking, e.g. STL-10's 96 px
    to 64), ImageNet normalisation; channels_last on CUDA, where cuDNN's convolutions
    are fastest in NHWC."""
    x = x.float().div_(255.0)
    if augment:
        x = random_crop_flip(x, gen)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.new_tensor(IMAGENET_MEAN)[:, None, None]) / x.new_tensor(IMAGENET_STD)[:, None, None]
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


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


class CifarBlock(nn.Module):
    """The CIFAR ResNet's basic block (He et al. 2016, sec. 4.2): 3x3 conv-BN-ReLU,
    3x3 conv-BN, then relu(F(x) + shortcut(x)). Option A shortcut: the identity, or
    where the block halves the resolution and doubles the channels, x subsampled by 2
    with the new channels zero-padded, so the shortcut has no parameters and the plain
    network (shortcut=False: relu(F(x))) has exactly the same ones."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels, self.shortcut = stride, c_out - c_in, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.shortcut:
            s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            out = out + (F.pad(s, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else s)
        return F.relu(out)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR-10 network with depth = 6n + 2 weighted layers: a 3x3 conv with
    `width` filters, three stages of n blocks at 32, 16, 8 px with width, 2 width and
    4 width filters, global average pooling and a linear classifier. ResNet-20 has
    0.27 M parameters and ResNet-56 0.85 M (their Table 6). shortcuts=False is their
    plain net of the same depth. Convolutions start as in He et al. 2015 (Kaiming
    normal, fan_out), BatchNorm at weight 1, bias 0."""

    def __init__(self, depth: int, width: int = 16, n_classes: int = 10, shortcuts: bool = True):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, c_in = [], width
        for stage in range(3):
            c_out = width * 2 ** stage
            for i in range(n):
                blocks.append(CifarBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, shortcuts))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, 32, 32] -> logits [B, K]
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


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


def cached_features(model: nn.Module, images: torch.Tensor, settings: dict, args, device: torch.device,
                    memo: dict | None = None) -> tuple[torch.Tensor, float | None]:
    """Pooled features [N, C] on the device, from memo, then cache/, else extracted and
    saved. Saved as float32 (ResNet-152's 60k x 2048 features take 491 MB): float16
    would halve that, but its range ends at 65,504, and random or ablated networks'
    features pass it (a random ResNet-152 with untouched BatchNorm statistics reached
    2.4e8 at 224 px, which float16 stored as inf and the head turned into NaN).
    Returns (features, extraction seconds or None when they came from a cache)."""
    key = json.dumps(settings, sort_keys=True)
    if memo is not None and key in memo:
        return memo[key], None
    path = common.cache_path(args.out, "features", settings)
    blob, seconds = common.load_cache(path, args.fresh), None
    if blob is not None:
        feats = blob.get("features") if isinstance(blob, dict) else None
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(images):
            raise common.UserError(f"cache file {path} does not hold {len(images)} feature rows; "
                                   f"delete it or rerun with --fresh")
        feats = feats.to(device).float()
    else:
        sync(device)
        t0 = time.perf_counter()
        feats = extract_features(model, images, args.img_size, args.eval_batch_size, device,
                                 f"{settings['arch']} {settings['split']}")
        sync(device)
        seconds = time.perf_counter() - t0
        print(f"extracted {settings['arch']} features of {len(images)} {settings['dataset']} {settings['split']} "
              f"images in {seconds:.1f} s ({len(images) / seconds:.0f} images/s)", flush=True)
        common.save_cache(path, {"features": feats.cpu(), "config": settings})
    if memo is not None:
        memo[key] = feats
    return feats, seconds


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


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return np.bincount(labels * n_classes + preds, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def fit_baseline(model: nn.Module, data: dict, args, device: torch.device, memo: dict) -> dict:
    """The head-only baseline every other experiment compares with: pooled features of
    train and test (cached), a linear head trained for --epochs on them (also cached),
    its test accuracy and confusion matrix. With --augment the head instead trains
    through the backbone on augmented images each epoch (evaluation features are the
    same either way: the backbone is frozen)."""
    k = len(data["classes"])
    ftr, t_train = cached_features(model, data["x_train"], feature_settings(
        args, args.arch, "cifar10", "train", len(data["y_train"])), args, device, memo)
    fte, t_test = cached_features(model, data["x_test"], feature_settings(
        args, args.arch, "cifar10", "test", len(data["y_test"])), args, device, memo)
    tr, va = data["train_idx"].to(device), data["val_idx"].to(device)
    y = data["y_train"]
    settings = {**feature_settings(args, args.arch, "cifar10", "head", len(y)), "epochs": args.epochs,
                "lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
                "val_size": args.val_size, "augment": args.augment, "seed": args.seed}
    path = common.cache_path(args.out, "head", settings)
    blob = common.load_cache(path, args.fresh)
    head = make_head(ftr.shape[1], k).to(device)
    t0 = time.perf_counter()
    if blob is not None:
        try:
            head.load_state_dict(blob["state"])
            hist = {key: list(blob["history"][key]) for key in ("train_loss", "train_acc", "val_loss", "val_acc")}
        except (KeyError, TypeError, RuntimeError):
            raise common.UserError(f"cache file {path} is not a head for these features; delete it or rerun "
                                   f"with --fresh") from None
        print(f"baseline head loaded from {path}", flush=True)
    else:
        gen = torch.Generator().manual_seed(args.seed)

        def batches():  # one epoch of minibatches
            if args.augment:
                return backbone_batches(model, data["x_train"][tr], y[tr], args.batch_size, args.img_size, device,
                                        gen, augment=True)
            return cached_batches(ftr[tr], y[tr], args.batch_size, gen)

        head, hist = train_head(batches, ftr.shape[1], k, ftr[va], y[va], args.epochs, args.lr,
                                args.weight_decay, args.seed, "baseline head")
        common.save_cache(path, {"state": head.state_dict(), "history": hist, "config": settings})
    head_seconds = time.perf_counter() - t0
    test_loss, test_acc, pred = evaluate_head(head, fte, data["y_test"])
    cm = confusion_matrix(data["y_test"].cpu().numpy(), pred.cpu().numpy(), k)
    extract = None if t_train is None or t_test is None else t_train + t_test
    return {"head": head, "history": hist, "test_loss": test_loss, "test_acc": test_acc, "confusion": cm,
            "extract_seconds": extract, "head_seconds": head_seconds, "train_feats": ftr, "test_feats": fte}


# ----------------------------------------------------------------------------
# Experiment 1: baseline
# ----------------------------------------------------------------------------


def baseline(fit, classes: list[str], args) -> dict:
    r = fit()
    h, out = r["history"], Path(args.out)
    epochs = list(range(1, len(h["train_loss"]) + 1))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    common.line_plot(a1, {"train": (epochs, h["train_loss"]), "validation": (epochs, h["val_loss"])},
                     "cross-entropy", "epoch", "loss")
    common.line_plot(a2, {"train": (epochs, h["train_acc"]), "validation": (epochs, h["val_acc"])},
                     "accuracy", "epoch", "accuracy")
    a2.axhline(r["test_acc"], color="k", ls="--", lw=1, label=f"test {r['test_acc']:.3f}")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    mode = "augmented, through the backbone" if args.augment else "cached features"
    fig.suptitle(f"Baseline: linear head on frozen {args.arch} (weights: {args.weights}, {args.img_size} px, {mode})")
    common.save_figure(fig, out / "baseline_curves.png")
    common.plot_confusion(r["confusion"], classes, out / "baseline_confusion.png",
                          f"Baseline confusion on CIFAR-10 test (accuracy {r['test_acc']:.3f})")
    n_img = len(r["train_feats"]) + len(r["test_feats"])
    return {"test_acc": r["test_acc"], "test_loss": r["test_loss"],
            "final_train_acc": h["train_acc"][-1], "final_val_acc": h["val_acc"][-1],
            "final_train_loss": h["train_loss"][-1], "final_val_loss": h["val_loss"][-1],
            "history": h, "feature_dim": r["train_feats"].shape[1],
            "extract_seconds": r["extract_seconds"],
            "extract_images_per_s": None if not r["extract_seconds"] else n_img / r["extract_seconds"],
            "head_seconds": r["head_seconds"], "confusion": r["confusion"]}


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


def residual(model: nn.Module, data: dict, fit, selected: list[str], args, device: torch.device) -> dict:
    """Cut shortcuts in the pretrained backbone, re-extract features and retrain the
    head exactly as in the baseline; also score the baseline head on the ablated
    features without retraining. Then gradient norms at init with and without."""
    base = fit()
    k, out = len(data["classes"]), Path(args.out)
    blocks = residual_blocks(model)
    configs = {"selected": selected}
    configs.update({f"layer{s}": [b for b in blocks if b.startswith(f"layer{s}.")] for s in range(1, 5)})
    configs["all"] = blocks
    tr, va = data["train_idx"].to(device), data["val_idx"].to(device)
    y = data["y_train"]
    metrics = {"baseline_test_acc": base["test_acc"], "selected_blocks": ",".join(selected)}
    curves = {"baseline (no cut)": base["history"]}
    for name, cut in configs.items():
        with shortcuts_cut(model, cut):  # no memo: each ablated set is used once
            ftr, _ = cached_features(model, data["x_train"], feature_settings(
                args, args.arch, "cifar10", "train", len(y), cut), args, device)
            fte, _ = cached_features(model, data["x_test"], feature_settings(
                args, args.arch, "cifar10", "test", len(data["y_test"]), cut), args, device)
        gen = torch.Generator().manual_seed(args.seed)
        head, hist = train_head(lambda: cached_batches(ftr[tr], y[tr], args.batch_size, gen), ftr.shape[1], k,
                                ftr[va], y[va], args.epochs, args.lr, args.weight_decay, args.seed,
                                f"cut {name} ({len(cut)} blocks)")
        _, acc, _ = evaluate_head(head, fte, data["y_test"])
        _, acc_frozen_head, _ = evaluate_head(base["head"], fte, data["y_test"])
        curves[f"cut {name} ({len(cut)})"] = hist
        metrics[name] = {"blocks_cut": len(cut), "test_acc_retrained": acc, "test_acc_no_retrain": acc_frozen_head,
                         "final_val_acc": hist["val_acc"][-1], "final_train_loss": hist["train_loss"][-1]}
        print(f"cut {name}: test acc {acc:.4f} retrained, {acc_frozen_head:.4f} with the baseline head", flush=True)

    # Figure 1: curves of every configuration against the baseline, and the accuracies.
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ep = list(range(1, args.epochs + 1))
    common.line_plot(axes[0], {n: (ep, h["train_loss"]) for n, h in curves.items()},
                     "head training loss", "epoch", "cross-entropy")
    common.line_plot(axes[1], {n: (ep, h["val_acc"]) for n, h in curves.items()},
                     "validation accuracy", "epoch", "accuracy")
    names = list(configs)
    xs = np.arange(len(names))
    axes[2].bar(xs - 0.2, [metrics[n]["test_acc_retrained"] for n in names], 0.4, label="head retrained")
    axes[2].bar(xs + 0.2, [metrics[n]["test_acc_no_retrain"] for n in names], 0.4, label="baseline head, no retrain")
    axes[2].axhline(base["test_acc"], color="k", ls="--", lw=1, label=f"baseline {base['test_acc']:.3f}")
    axes[2].axhline(1 / k, color="grey", ls=":", lw=1, label="chance")
    axes[2].set_xticks(xs, [f"{n}\n({len(configs[n])} blocks)" for n in names], fontsize=8)
    axes[2].set(title="test accuracy with shortcuts cut", ylabel="accuracy", ylim=(0, 1))
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Residual ablation in {args.arch} (weights: {args.weights}): shortcuts cut, "
                 f"each cut block returns relu(F(x)); head retrained as in the baseline")
    common.save_figure(fig, out / "residual_curves.png")

    # Figure 2: gradient norms at random initialisation, with and without shortcuts.
    idx = data["train_idx"][:args.grad_batch].to(device)
    grads, losses = {}, {}
    for label, cut in (("with_shortcuts", False), ("without_shortcuts", True)):
        grads[label], losses[label] = gradient_norms(args.arch, data["x_train"][idx], y[idx], k, args.img_size,
                                                     device, args.seed, cut)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = list(grads["with_shortcuts"])
    for label, style in (("with_shortcuts", "-o"), ("without_shortcuts", "-s")):
        ax.plot(range(len(names)), [max(grads[label][n], 1e-30) for n in names], style, ms=3,
                label=label.replace("_", " "))
    starts = [i for i, n in enumerate(names) if n.endswith(".0")]
    for i in starts:
        ax.axvline(i - 0.5, color="grey", lw=0.6, ls=":")
        ax.text(i - 0.3, 1.0, names[i].split(".")[0], transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    ax.set(yscale="log", xlabel="block (input -> output; 0 = stem)", ylabel="||dL/dθ|| of the block",
           title=f"Gradient norm per block at random initialisation, {args.arch}, batch of {len(idx)}\n"
                 f"(initial loss {losses['with_shortcuts']:.2f} with shortcuts, "
                 f"{losses['without_shortcuts']:.2f} without)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "residual_gradnorms.png")

    def per_stage(g):  # sqrt of the summed squares over a stage's blocks
        stages = {f"layer{s}": math.sqrt(sum(v ** 2 for n, v in g.items() if n.startswith(f"layer{s}.")))
                  for s in range(1, 5)}
        return {"stem": g["stem"], **stages}

    metrics["gradnorm"] = {label: per_stage(g) for label, g in grads.items()}
    metrics["gradnorm_stem_over_layer4"] = {label: per_stage(g)["stem"] / max(per_stage(g)["layer4"], 1e-30)
                                            for label, g in grads.items()}
    metrics["init_loss"] = losses
    return metrics


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


def plot_embeddings(xy: dict, labels: np.ndarray, classes: list[str], metrics: dict, title: str, path: Path) -> None:
    """One row of depth panels per method in `xy` ({method: {stage: [N, 2]}}), points
    coloured by class; each panel names the probe accuracy and the map's scores."""
    rows = list(xy)
    fig, axes = plt.subplots(len(rows), len(STAGES), figsize=(4 * len(STAGES), 4.4 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, method in enumerate(rows):
        m = metrics["embedding"][method]
        for ax, s in zip(axes[r], STAGES):
            common.scatter_by_class(ax, xy[method][s], labels, classes,
                                    f"{s} ({metrics['dim'][s]} ch): probe {metrics['probe_acc'][s]:.2f}, "
                                    f"5-NN {metrics['knn_acc'][s]:.2f}\n{EMBED_NAMES[method]} map: trustworthiness "
                                    f"{m['trustworthiness'][s]:.2f}, 5-NN {m['knn_acc_2d'][s]:.2f}",
                                    size=5, legend=s == "layer4")
            ax.title.set_fontsize(9)
    fig.suptitle(title + "\n(5-NN: leave-one-out 5-nearest-neighbour accuracy in the features and in the map)")
    common.save_figure(fig, path)


def features(model: nn.Module, data: dict, confusion, args, device: torch.device) -> dict:
    """Hooked stage features of --n-vis test images (embedded, silhouette, probe test
    set) and --probe-train-size training images (probe training set)."""
    from sklearn.metrics import silhouette_score

    out, classes = Path(args.out), data["classes"]
    g = torch.Generator().manual_seed(args.seed + 2)
    vis = torch.randperm(len(data["y_test"]), generator=g)[:args.n_vis].to(device)
    probe = data["train_idx"][:args.probe_train_size].to(device)
    settings = {**feature_settings(args, args.arch, "cifar10", "stages", len(vis)), "probe_n": len(probe)}
    path = common.cache_path(args.out, "stagefeats", settings)
    blob = common.load_cache(path, args.fresh)
    if blob is None:
        blob = {"test": stage_features(model, data["x_test"][vis], args.img_size, args.eval_batch_size, device),
                "train": stage_features(model, data["x_train"][probe], args.img_size, args.eval_batch_size, device),
                "config": settings}
        common.save_cache(path, blob)
    elif not isinstance(blob, dict) or set(blob.get("test", {})) != set(STAGES):
        raise common.UserError(f"cache file {path} does not hold stage features; delete it or rerun with --fresh")
    y_te, y_tr = data["y_test"][vis].cpu().numpy(), data["y_train"][probe].cpu().numpy()

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

    # 2-D embeddings per depth, cached (t-SNE of 2,000 points x 5 depths takes a minute),
    # each scored by how much of the feature space's neighbourhoods it keeps.
    metrics["knn_acc"] = {s: knn_accuracy(z[s], y_te) for s in STAGES}  # the full-dimensional reference
    methods = ["tsne", "umap"] if args.embed == "both" else [args.embed]
    xy, metrics["embedding"] = {}, {}
    for method in methods:
        epath = common.cache_path(args.out, "embed", {**settings, "method": method})
        emb = common.load_cache(epath, args.fresh)
        if emb is None or set(emb.get("xy", {})) != set(STAGES):
            t0 = time.perf_counter()
            with common.few_threads(len(y_te)):
                emb_xy = {s: torch.from_numpy(common.embed_2d(z[s], method, args.seed)) for s in STAGES}
            emb = {"xy": emb_xy, "seconds": time.perf_counter() - t0, "config": {**settings, "method": method}}
            common.save_cache(epath, emb)
        xy[method] = {s: emb["xy"][s].numpy() for s in STAGES}
        metrics["embedding"][method] = {
            "seconds": emb.get("seconds"),  # when it was computed (it may come from the cache)
            "trustworthiness": {s: trustworthiness(z[s], xy[method][s]) for s in STAGES},
            "knn_acc_2d": {s: knn_accuracy(xy[method][s], y_te) for s in STAGES}}
    title = f"pooled features by depth, {args.arch} (weights: {args.weights}), {len(y_te)} test images"
    for method in methods:
        plot_embeddings({method: xy[method]}, y_te, classes, metrics, f"{EMBED_NAMES[method]} of {title}",
                        out / f"features_{method}.png")
    if len(methods) > 1:
        plot_embeddings(xy, y_te, classes, metrics, f"t-SNE (top) vs UMAP (bottom) of {title}",
                        out / "features_tsne_vs_umap.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(len(STAGES)))
    common.line_plot(a1, {"linear probe": (xs, [metrics["probe_acc"][s] for s in STAGES])},
                     "linear-probe test accuracy", "depth", "accuracy")
    a1.axhline(1 / len(classes), color="grey", ls=":", lw=1, label="chance")
    a1.legend(fontsize=8)
    common.line_plot(a2, {"silhouette": (xs, [metrics["silhouette"][s] for s in STAGES])},
                     "silhouette score (standardised features)", "depth", "silhouette")
    for ax in (a1, a2):
        ax.set_xticks(xs, list(STAGES))
    fig.suptitle(f"Class separability by depth, {args.arch} (weights: {args.weights})")
    common.save_figure(fig, out / "features_separability.png")

    # The baseline's most-confused pairs, and how far apart they sit at each depth.
    pairs = most_confused_pairs(confusion(), args.n_pairs)
    all_pairs = [(i, j) for i in range(len(classes)) for j in range(i + 1, len(classes))
                 if (y_te == i).any() and (y_te == j).any()]
    sep = {s: class_separation(z[s], y_te, [(i, j) for i, j, _ in pairs]) for s in STAGES}
    mean_sep = {s: float(np.mean(class_separation(z[s], y_te, all_pairs))) for s in STAGES}
    metrics["mean_pair_separation"] = mean_sep
    metrics["confused_pairs"] = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, (i, j, count) in enumerate(pairs):
        label = f"{classes[i]}_vs_{classes[j]}"
        metrics["confused_pairs"][label] = {"confusions": count, "separation": {s: sep[s][n] for s in STAGES}}
        ax.plot(xs, [sep[s][n] for s in STAGES], "-o", ms=3, label=f"{classes[i]} / {classes[j]} ({count} confused)")
    ax.plot(xs, [mean_sep[s] for s in STAGES], "k--", lw=2, label="mean over all class pairs")
    ax.set_xticks(xs, list(STAGES))
    ax.set(xlabel="depth", ylabel="centroid distance / class spread",
           title="Most-confused class pairs (baseline head) in feature space")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    common.save_figure(fig, out / "features_confused_pairs.png")
    return metrics


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
                   batch_size: int, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        with common.autocast(device):
            logits = model(preprocess(images[i:i + batch_size], img_size)).float()
        loss_sum += F.cross_entropy(logits, labels[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == labels[i:i + batch_size]).sum().item()
    return loss_sum / len(labels), correct / len(labels)


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


def transfer(backbone: nn.Module, tdata: dict, args, device: torch.device) -> dict:
    """Six arms, {pretrained, scratch} x {head, layer4, full}, each trained for the same
    --transfer-epochs with the same AdamW schedule (backbone lr = --backbone-lr-mult x
    head lr, cosine-decayed per step)."""
    out, k = Path(args.out), len(tdata["classes"])
    x, y = tdata["x_train"], tdata["y_train"]
    tr, va = tdata["train_idx"].to(device), tdata["val_idx"].to(device)
    steps = args.transfer_epochs * math.ceil(len(tr) / args.transfer_batch_size)
    metrics, curves = {}, {}
    for init in TRANSFER_INITS:
        for strategy in TRANSFER_STRATEGIES:
            arm = f"{init}_{strategy}"
            common.seed_everything(args.seed)
            if init == "pretrained":  # --weights (ImageNet on full runs; random in smoke, there are none offline)
                model = copy.deepcopy(backbone)
                model.fc = nn.Linear(model.fc.in_features, k)
                model = to_device(model, device)
            else:  # random init, with BatchNorm statistics of the transfer images (the frozen layers need them)
                model = to_device(torchvision.models.get_model(args.arch, weights=None, num_classes=k), device)
                recalibrate_batchnorm(model, x[tr[:args.bn_calib_size]], args.img_size, args.eval_batch_size, device)
            n_trainable = freeze_for_transfer(model, strategy)
            body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fc.")]
            groups = [{"params": list(model.fc.parameters()), "lr": args.transfer_lr}]
            if body:
                groups.append({"params": body, "lr": args.transfer_lr * args.backbone_lr_mult})
            opt = torch.optim.AdamW(groups, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            scaler = common.grad_scaler(device)  # loss scaling where training runs in float16
            gen = torch.Generator().manual_seed(args.seed)
            hist = {"train_loss": [], "val_loss": [], "val_acc": []}
            train_seconds = 0.0
            for epoch in range(args.transfer_epochs):
                transfer_train_mode(model, strategy)
                sync(device)
                t0 = time.perf_counter()
                perm = tr[torch.randperm(len(tr), generator=gen).to(device)]
                loss_sum, seen = torch.zeros((), device=device), 0
                for i in common.progress(range(0, len(perm) - 1, args.transfer_batch_size), arm,  # no batch of one
                                  math.ceil((len(perm) - 1) / args.transfer_batch_size)):
                    idx = perm[i:i + args.transfer_batch_size]
                    with common.autocast(device, train=True):
                        logits = model(preprocess(x[idx], args.img_size)).float()
                    loss = F.cross_entropy(logits, y[idx])
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    loss_sum += loss.detach() * len(idx)
                    seen += len(idx)
                common.check_finite(loss_sum, f"{arm} training loss")
                sync(device)
                train_seconds += time.perf_counter() - t0
                val_loss, val_acc = evaluate_model(model, x[va], y[va], args.img_size, args.eval_batch_size, device)
                hist["train_loss"].append(loss_sum.item() / seen)
                hist["val_loss"].append(val_loss)
                hist["val_acc"].append(val_acc)
                print(f"transfer {arm} epoch {epoch + 1}/{args.transfer_epochs}: train loss "
                      f"{hist['train_loss'][-1]:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} "
                      f"({train_seconds:.1f} s)", flush=True)
            _, test_acc = evaluate_model(model, tdata["x_test"], tdata["y_test"], args.img_size,
                                         args.eval_batch_size, device)
            curves[arm] = hist
            metrics[arm] = {"test_acc": test_acc, "final_val_acc": hist["val_acc"][-1],
                            "final_train_loss": hist["train_loss"][-1], "trainable_params": n_trainable,
                            "train_seconds": train_seconds}
            del model, opt
    metrics["pretrained_weights"] = args.weights

    plot_transfer_curves(curves, f"Transfer to {args.transfer_dataset}: {args.arch}, pretrained (weights: "
                         f"{args.weights}) vs scratch, {len(tr)} training images", out / "transfer_curves.png")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for arm in curves:
        m = metrics[arm]
        ax.scatter(m["train_seconds"], m["test_acc"], s=30 + 170 * m["trainable_params"] / max(
            metrics[a]["trainable_params"] for a in curves), marker="o" if arm.startswith("pretrained") else "s",
            label=f"{arm} ({m['trainable_params'] / 1e6:.2f} M trainable)")
    ax.axhline(1 / k, color="grey", ls=":", lw=1, label="chance")
    ax.set(xscale="log", xlabel="training wall-clock seconds (log)", ylabel="test accuracy",
           title=f"Accuracy vs compute, {args.transfer_dataset} (marker size ~ trainable parameters)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, out / "transfer_compute.png")
    return metrics


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


def depth(backbone: nn.Module, data: dict, args, device: torch.device, memo: dict) -> dict:
    """Same pipeline for each of --depth-archs: cached pooled features, a linear head
    trained as in the baseline, a logistic-regression probe, and extraction speed."""
    k, tr, va = len(data["classes"]), data["train_idx"].to(device), data["val_idx"].to(device)
    y = data["y_train"]
    metrics, calib = {}, data["x_train"][tr[:args.bn_calib_size]]  # BatchNorm statistics of random inits
    for arch in args.depth_archs:
        model = backbone if arch == args.arch else prepare_backbone(arch, args.weights, calib, args, device)
        ftr, _ = cached_features(model, data["x_train"], feature_settings(args, arch, "cifar10", "train", len(y)),
                                 args, device, memo if arch == args.arch else None)
        fte, _ = cached_features(model, data["x_test"], feature_settings(
            args, arch, "cifar10", "test", len(data["y_test"])), args, device, memo if arch == args.arch else None)
        gen = torch.Generator().manual_seed(args.seed)
        head, _ = train_head(lambda: cached_batches(ftr[tr], y[tr], args.batch_size, gen), ftr.shape[1], k,
                             ftr[va], y[va], args.epochs, args.lr, args.weight_decay, args.seed, f"{arch} head")
        _, head_acc, _ = evaluate_head(head, fte, data["y_test"])
        p = tr[:args.probe_train_size]
        with common.few_threads(max(len(p), len(fte))):
            probe_acc = common.linear_probe(ftr[p].cpu().numpy(), y[p].cpu().numpy(), fte.cpu().numpy(),
                                            data["y_test"].cpu().numpy(), seed=args.seed)["test_acc"]
        ips = measure_throughput(model, data["x_test"], args.img_size, args.eval_batch_size, device,
                                 args.throughput_batches)
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
        metrics[arch] = {"head_acc": head_acc, "probe_acc": probe_acc, "images_per_s": ips,
                         "backbone_params_millions": n_params / 1e6, "feature_dim": ftr.shape[1]}
        print(f"{arch}: head acc {head_acc:.4f}, probe acc {probe_acc:.4f}, {ips:.0f} images/s", flush=True)
        if model is not backbone:
            del model

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = list(metrics)
    for ax, key, title in zip(axes, ("head_acc", "probe_acc", "images_per_s"),
                              ("linear head (baseline recipe), test acc", "logistic probe, test acc",
                               "feature extraction, images/s")):
        bars = ax.bar(names, [metrics[n][key] for n in names], color=plt.get_cmap("tab10").colors[:len(names)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set(title=title, ylabel=key.replace("_", " "))
        if key != "images_per_s":
            ax.set_ylim(0, 1)
    fig.suptitle(f"Depth: feature quality vs cost (weights: {args.weights}, {args.img_size} px, "
                 f"batch {args.eval_batch_size}, {device.type})")
    common.save_figure(fig, Path(args.out) / "depth_comparison.png")
    return metrics


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


def scratch_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, augment: bool = False,
                  gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] -> float, optionally cropped and flipped (He et al. 2016,
    sec. 4.2: 4 px padding, random 32 px crops, horizontal flips), standardised per
    channel with the training set's mean and std [3]."""
    x = x.float().div_(255.0)
    if augment:
        x = random_crop_flip(x, gen)
    x = (x - mean[:, None, None]) / std[:, None, None]
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


@torch.no_grad()
def scratch_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int,
                     device: torch.device) -> float:
    model.eval()
    correct = torch.zeros((), device=y.device)
    for i in range(0, len(y), batch_size):
        with common.autocast(device):
            correct += (model(scratch_batch(x[i:i + batch_size], mean, std)).argmax(1) == y[i:i + batch_size]).sum()
    return correct.item() / len(y)


def train_from_scratch(model: nn.Module, sdata: dict, args, device: torch.device, desc: str) -> dict:
    """SGD (momentum, weight decay) on the training images for --scratch-epochs, the
    learning rate divided by 10 at 50% and 75% of the steps: He et al.'s schedule
    (drops at 32k and 48k of 64k iterations) compressed to this budget, after a linear
    warm-up over --scratch-warmup of the steps (He et al. warm ResNet-110 up at lr 0.01
    for 400 iterations; Goyal et al. 2017 ramp linearly). Returns the
    training loss and accuracy of every step (on its augmented minibatch, before the
    update), the test accuracy after every epoch, and the training seconds. A NaN/inf
    loss stops this network only; `diverged_at_step` says when."""
    x, y, mean, std = sdata["x_train"], sdata["y_train"], sdata["mean"], sdata["std"]
    bs = min(args.scratch_batch_size, len(y))
    # Full minibatches only (a reshuffled remainder is left out each epoch): a last batch
    # of a few images gives BatchNorm noisy statistics and, at lr 0.1, loss spikes.
    starts = range(0, len(y) - bs + 1, bs)
    total = args.scratch_epochs * len(starts)
    opt = torch.optim.SGD(model.parameters(), lr=args.scratch_lr, momentum=args.scratch_momentum,
                          weight_decay=args.scratch_weight_decay)
    warmup = round(args.scratch_warmup * total)
    drops = (total // 2, total * 3 // 4)

    def lr_factor(step: int) -> float:  # linear warm-up, then He et al.'s two drops by 10
        return min(1.0, (step + 1) / (warmup + 1)) * 0.1 ** sum(step >= d for d in drops)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scaler = common.grad_scaler(device)
    gen = torch.Generator().manual_seed(args.seed)  # the same minibatches and crops for both networks
    hist = {"step_loss": [], "step_acc": [], "test_acc": [], "diverged_at_step": None, "seconds": 0.0}
    for epoch in range(args.scratch_epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen).to(device)
        losses, accs = [], []
        for i in common.progress(starts, f"{desc} epoch {epoch + 1}", len(starts)):
            idx = perm[i:i + bs]
            with common.autocast(device, train=True):
                logits = model(scratch_batch(x[idx], mean, std, args.scratch_augment, gen)).float()
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.detach())
            accs.append((logits.argmax(1) == y[idx]).float().mean())
        losses, accs = torch.stack(losses).cpu(), torch.stack(accs).cpu()  # one sync per epoch
        sync(device)
        hist["seconds"] += time.perf_counter() - t0
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            hist["diverged_at_step"] = epoch * len(starts) + int(bad[0]) + 1
            hist["step_loss"] += losses[:int(bad[0])].tolist()
            hist["step_acc"] += accs[:int(bad[0])].tolist()
            print(f"{desc}: loss became {losses[int(bad[0])].item()} at step {hist['diverged_at_step']}; "
                  f"this network stops", flush=True)
            break
        hist["step_loss"] += losses.tolist()
        hist["step_acc"] += accs.tolist()
        hist["test_acc"].append(scratch_accuracy(model, sdata["x_test"], sdata["y_test"], mean, std,
                                                 args.eval_batch_size, device))
        print(f"{desc} epoch {epoch + 1}/{args.scratch_epochs}: train loss {losses.mean():.4f} "
              f"acc {accs.mean():.4f} | test acc {hist['test_acc'][-1]:.4f} ({hist['seconds']:.1f} s)", flush=True)
    hist["steps_per_epoch"], hist["total_steps"] = len(starts), total
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


def scratch_shortcuts(sdata: dict, args, device: torch.device) -> dict:
    """He et al. 2016, sec. 4.2 and Fig. 6: the CIFAR ResNet of --scratch-depth layers
    and the same network with every shortcut removed, trained from scratch at the same
    budget: same initial weights (option A shortcuts have no parameters, so one seed
    gives both networks the same ones), same minibatches, same schedule."""
    k = len(sdata["classes"])
    hists, metrics = {}, {"dataset": args.scratch_dataset, "depth": args.scratch_depth,
                          "train_images": len(sdata["y_train"]), "target_acc": args.scratch_target_acc}
    for arm, shortcuts in (("residual", True), ("plain", False)):
        common.seed_everything(args.seed)
        model = to_device(CifarResNet(args.scratch_depth, args.scratch_width, k, shortcuts), device)
        name = f"{'ResNet' if shortcuts else 'plain'}-{args.scratch_depth}"
        hists[arm] = h = train_from_scratch(model, sdata, args, device, name)
        # ~100 points on long runs; on short ones windows of at least 10 steps (if that still
        # leaves 10 points), so a point is not one noisy minibatch
        window = max(1, h["total_steps"] // 100, min(10, h["total_steps"] // 10))
        h["ends"], h["loss_curve"] = windowed(h["step_loss"], window)
        _, h["acc_curve"] = windowed(h["step_acc"], window)
        last = h["step_loss"][-h["steps_per_epoch"]:]  # the last epoch (or what ran of it)

        def loss_at(fraction):  # windowed training loss at this fraction of the budget
            step = max(1, round(fraction * h["total_steps"]))
            return next((v for e, v in zip(h["ends"], h["loss_curve"]) if e >= step), None)

        metrics[arm] = {
            "params": sum(p.numel() for p in model.parameters()),
            "train_loss_at_10pct": loss_at(0.1), "train_loss_at_25pct": loss_at(0.25),
            "train_loss_at_50pct": loss_at(0.5),
            "final_train_loss": float(np.mean(last)) if last else None,
            "final_train_acc": float(np.mean(h["step_acc"][-h["steps_per_epoch"]:])) if last else None,
            "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
            "steps_to_target_acc": steps_to_reach(h["ends"], h["acc_curve"], args.scratch_target_acc),
            "diverged_at_step": h["diverged_at_step"], "train_seconds": h["seconds"],
            "history": {"step": h["ends"], "train_loss": h["loss_curve"], "train_acc": h["acc_curve"],
                        "test_acc": h["test_acc"]}}
        del model
    r, p = metrics["residual"], metrics["plain"]
    metrics["steps"] = hists["residual"]["total_steps"]
    metrics["plain_minus_residual_final_train_loss"] = (
        p["final_train_loss"] - r["final_train_loss"] if None not in (p["final_train_loss"], r["final_train_loss"])
        else None)
    metrics["plain_over_residual_steps_to_target"] = (
        p["steps_to_target_acc"] / r["steps_to_target_acc"]
        if p["steps_to_target_acc"] and r["steps_to_target_acc"] else None)
    plot_scratch_curves(hists, metrics, args, Path(args.out) / "scratch_shortcuts_curves.png")
    return metrics


def plot_scratch_curves(hists: dict, metrics: dict, args, path: Path) -> None:
    """Training loss and accuracy per step (windowed means) and test accuracy per epoch,
    ResNet solid, plain dashed, the learning-rate drops dotted."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), layout="constrained")
    total = hists["residual"]["total_steps"]
    names = {"residual": f"ResNet-{args.scratch_depth}", "plain": f"plain-{args.scratch_depth}"}
    for arm, style in (("residual", "-"), ("plain", "--")):
        h, m = hists[arm], metrics[arm]
        label = f"{names[arm]} (test {m['test_acc']:.3f})" if m["test_acc"] is not None else names[arm]
        axes[0].plot(h["ends"], h["loss_curve"], style, label=label)
        axes[1].plot(h["ends"], h["acc_curve"], style, label=names[arm] + (
            f", {args.scratch_target_acc:.0%} at step {m['steps_to_target_acc']}" if m["steps_to_target_acc"] else
            f", never {args.scratch_target_acc:.0%}"))
        axes[2].plot(range(1, len(h["test_acc"]) + 1), h["test_acc"], style + "o", ms=3, label=names[arm])
    if spans_orders_of_magnitude([v for h in hists.values() for v in h["loss_curve"]], 10.0):
        axes[0].set_yscale("log")
    axes[1].axhline(args.scratch_target_acc, color="grey", ls=":", lw=1)
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
    fig.suptitle(f"Trained from scratch with and without shortcuts (He et al. 2016, Fig. 6): {args.scratch_dataset}, "
                 f"{metrics['train_images']} images,\n{args.scratch_epochs} epochs = {total} steps of "
                 f"{args.scratch_batch_size}, same initial weights and minibatches")
    common.save_figure(fig, path)


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


def once(fn):
    """fn() the first time, its result afterwards (the baseline that several experiments share)."""
    box = []

    def get():
        if not box:
            box.append(fn())
        return box[0]
    return get


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = common.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    # Out of GPU memory: feature extraction and evaluation batches are the largest
    # (--eval-batch-size); transfer and scratch_shortcuts name their own batch flags.
    with common.user_errors(parser.prog, batch_flag="--eval-batch-size"):
        # Check everything a user can get wrong before anything is loaded or written.
        selected = resolve_blocks(args.arch, args.ablate_blocks)
        chosen = set(args.experiments)
        use_cifar = bool(chosen - {"scratch_shortcuts"})  # every other experiment reads CIFAR-10 and the backbone
        if "features" in chosen and args.embed != "tsne" and importlib.util.find_spec("umap") is None:
            raise common.UserError(f"--embed {args.embed} needs umap-learn (pip install umap-learn); "
                                   f"or use --embed tsne")

        device = common.pick_device(args.device)
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick the fastest kernels
        common.seed_everything(args.seed)
        data = tdata = sdata = backbone = None
        if use_cifar:
            x_train, y_train, classes = load_data("cifar10", args, True, args.train_size, device)
            x_test, y_test, _ = load_data("cifar10", args, False, args.test_size, device)
            if args.val_size >= len(y_train):
                raise common.UserError(f"--val-size {args.val_size} leaves no training images out of {len(y_train)}")
            train_idx, val_idx = split_train_val(len(y_train), args.val_size, args.seed)
            data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "classes": classes,
                    "train_idx": train_idx, "val_idx": val_idx}
            print(f"CIFAR-10 ({'smoke' if args.smoke else 'real'}): {len(train_idx)} train, {len(val_idx)} val, "
                  f"{len(y_test)} test images, resized to {args.img_size} px", flush=True)
        if "transfer" in chosen:
            xt, yt, tclasses = load_data(args.transfer_dataset, args, True, args.transfer_train_size, device)
            if args.transfer_val_size >= len(yt):
                raise common.UserError(f"--transfer-val-size {args.transfer_val_size} leaves no training images "
                                       f"out of {len(yt)}")
            xte, yte, _ = load_data(args.transfer_dataset, args, False, args.transfer_test_size, device)
            ttr, tva = split_train_val(len(yt), args.transfer_val_size, args.seed)
            tdata = {"x_train": xt, "y_train": yt, "x_test": xte, "y_test": yte, "classes": tclasses,
                     "train_idx": ttr, "val_idx": tva}
        if "scratch_shortcuts" in chosen:
            xs, ys, sclasses = load_data(args.scratch_dataset, args, True, args.scratch_train_size, device)
            xst, yst, _ = load_data(args.scratch_dataset, args, False, args.scratch_test_size, device)
            xs, xst = scratch_images(xs), scratch_images(xst)
            pixels = xs[:10000].float().div(255.0)  # per-channel statistics from up to 10,000 training images
            sdata = {"x_train": xs, "y_train": ys, "x_test": xst, "y_test": yst, "classes": sclasses,
                     "mean": pixels.mean((0, 2, 3)), "std": pixels.std((0, 2, 3)).clamp_min(1e-3)}
            del pixels
            print(f"{args.scratch_dataset} ({'smoke' if args.smoke else 'real'}) for scratch_shortcuts: "
                  f"{len(ys)} train, {len(yst)} test images at 32 px", flush=True)
        if use_cifar:
            backbone = prepare_backbone(args.arch, args.weights, data["x_train"][data["train_idx"][
                :args.bn_calib_size].to(device)], args, device)
            print(f"{args.arch} (weights: {args.weights}): "
                  f"{sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters", flush=True)

        results = common.Results("task1", args, device, questions=QUESTIONS)
        memo: dict = {}
        fit = once(lambda: fit_baseline(backbone, data, args, device, memo))

        def run_transfer():
            with common.user_errors(parser.prog, batch_flag="--transfer-batch-size (or --eval-batch-size)"):
                return transfer(backbone, tdata, args, device)

        def run_scratch():
            with common.user_errors(parser.prog, batch_flag="--scratch-batch-size (or --eval-batch-size)"):
                return scratch_shortcuts(sdata, args, device)

        return results.run({
            "baseline": lambda: baseline(fit, data["classes"], args),
            "residual": lambda: residual(backbone, data, fit, selected, args, device),
            "features": lambda: features(backbone, data, lambda: fit()["confusion"], args, device),
            "transfer": run_transfer,
            "depth": lambda: depth(backbone, data, args, device, memo),
            "scratch_shortcuts": run_scratch,
        })


if __name__ == "__main__":
    main()
