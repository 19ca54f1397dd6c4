"""Task 2: what a pretrained Vision Transformer (ViT-B/16) looks at, how much it needs
each patch, and where its class information lives (CLS token vs mean of patch tokens).

Model: Hugging Face google/vit-base-patch16-224 (Dosovitskiy et al. 2021; ImageNet-21k
pretrained, ImageNet-1k fine-tuned): 12 layers x 12 heads, 16x16 patches, so a 224x224 image
is a 14x14 grid of 196 patch tokens plus one CLS token (197 tokens). Images are resized and
normalised on the device as the model's own ViTImageProcessor does (bilinear, mean/std 0.5).

Experiments (--experiments, default all):
  classify   top-1 and top-5 ImageNet labels with probabilities for each image
  attention  last layer's CLS->patch attention (mean over heads, and each head) as red
             overlays; attention rollout (Abnar & Zuidema 2020), mean/max/min head fusion
  heads      per layer and head: entropy of the CLS attention and mean attention
             distance in pixels (ViT paper, Fig. 7); head similarity in the last layer
  masking    CIFAR-10 accuracy (linear probe on unmasked CLS features) when a fraction of
             patches is masked: random (several seeds), centre block, border, most- and
             least-attended by rollout; pixel masking (patch := dataset mean) and token
             dropping (patch token removed, the kept tokens keep their position embeddings)
  probe      linear probes on the CLS token vs the mean of patch tokens, final layer and
             every layer; cosine similarity between the two

Images: --images PATH... (your own pictures); by default scikit-learn's two clean 427x640
sample photos, china.jpg and flower.jpg (--cifar-images N adds N upsampled CIFAR-10 test
images). CIFAR-10 (downloaded under --data-root) serves heads, masking and probe.

Run:
  python Task2.py                                   # everything; a GPU is recommended
  python Task2.py --images cat.jpg dog.jpg --experiments classify,attention
  python Task2.py --weights none                    # ViT-B/16's architecture, random weights,
                                                    # nothing downloaded from the hub (a dry run)
  python Task2.py --smoke --out /tmp/t2             # offline: tiny random ViT, seconds
  python Task2.py --replot                          # redraw the figures of outputs/task2 only

Writes into --out: classify_top5.png, attention_map_<image>.png (one per image),
attention_heads.png, heads_{entropy,distance,similarity}.png, masking_{accuracy,agreement,
examples}.png, probe_{layers,cosine}.png (drawn by reports/task2.py), metrics.json, summary.md,
cache/ (features and rollout maps, keyed by settings and code; plot/<experiment>.npz, the
arrays --replot redraws every figure from, without a model or data).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

import common
import harness
from reports import task2 as report
from reports.task2 import FUSIONS, STRATEGIES  # masking orders, rollout fusions: the figures use them too

# A user's mistake must print one line: silence transformers' and the hub's warnings, and
# transformers 5's "Loading weights" bar (drawn on stderr for every from_pretrained, under a
# second); the hub's download bars stay.
transformers.logging.set_verbosity_error()
with contextlib.suppress(Exception):
    import huggingface_hub
    huggingface_hub.utils.logging.set_verbosity_error()
with contextlib.suppress(AttributeError):
    transformers.utils.logging.set_tqdm_hook(
        lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True})
        if kwargs.get("desc") == "Loading weights" else factory(*args, **kwargs))

EXPERIMENTS = ["classify", "attention", "heads", "masking", "probe"]  # their figures: reports/task2.py
VIT_B16 = "google/vit-base-patch16-224"  # the default checkpoint (ImageNet-21k pretrained, 1k fine-tuned)

# ----------------------------------------------------------------------------
# Arguments and the probe recipe
# ----------------------------------------------------------------------------


# --discard-ratio 1 would zero every attention weight (rollout undefined); a mask fraction
# of 1 is fine: every patch masked (only CLS left) gives the chance-level end of the curve.
DISCARD = harness.Bounded(float, lo=0, hi=1, hi_open=True)


def build_parser() -> harness.Parser:
    parser = harness.make_parser("task2", __doc__, EXPERIMENTS)
    # Every numeric flag's type states its valid range (harness.Bounded): argparse refuses
    # anything outside it in one line; check_args below refuses bad combinations.
    g = parser.add_argument_group("task 2")
    g.add_argument("--model", default=VIT_B16,
                   help="Hugging Face ViT image classifier (with its ImageNet head) and its image processor")
    g.add_argument("--weights", default="pretrained", choices=["pretrained", "none"],
                   help="pretrained: the checkpoint's weights from the hub; none: its architecture with random "
                        f"weights, nothing downloaded (a dry run; {VIT_B16}: built offline, 1,000 labels)")
    g.add_argument("--images", nargs="+", metavar="PATH", default=None,
                   help="your own images for classify/attention/heads (default: scikit-learn's china.jpg, flower.jpg)")
    g.add_argument("--cifar-images", type=harness.Bounded(int, lo=0, hi=10), default=0, metavar="N",
                   help="CIFAR-10 test images added to the sample photos (one per class, at most 10; 32x32, upsampled)")
    g.add_argument("--batch-size", type=harness.positive_int, default=64, metavar="N",
                   help="images per forward pass")
    g.add_argument("--train-images", type=harness.positive_int, default=5000, metavar="N",
                   help="CIFAR-10 training subset the linear probes are fitted on")
    g.add_argument("--test-images", type=harness.positive_int, default=2000, metavar="N",
                   help="CIFAR-10 test subset for probe accuracy and the masking evaluation")
    g.add_argument("--discard-ratio", type=DISCARD, default=0.0, metavar="R",
                   help="rollout (attention, masking): zero this fraction of the lowest attention weights per layer")
    g = parser.add_argument_group("heads: per-head statistics")
    g.add_argument("--heads-images", type=harness.non_negative_int, default=64, metavar="N",
                   help="CIFAR-10 test images (the first of --test-images) added to the images for head statistics")
    g = parser.add_argument_group("masking: accuracy as patches are masked")
    g.add_argument("--rollout-fusion", default="mean", choices=FUSIONS,
                   help="how rollout fuses heads for the masking experiment")
    g.add_argument("--mask-fractions", type=harness.BoundedList(harness.unit_float),
                   default=[round(0.1 * i, 1) for i in range(10)], metavar="F,F",
                   help="fractions of patches to mask; 1 masks all, the chance-level end")
    g.add_argument("--mask-seeds", type=harness.positive_int, default=3, metavar="N",
                   help="seeds for random masking; the figure shows mean and spread")
    return parser


def check_args(args) -> None:
    """Flags that only make sense together, checked right after parsing (one line, exit 2)."""
    if "heads" in args.experiments:
        harness.require(args.heads_images <= args.test_images,
                        f"--heads-images {args.heads_images} exceeds --test-images {args.test_images} (the head "
                        f"statistics use the first images of that subset)")


# --smoke: values for knobs left at their defaults (an explicit flag wins).
SMOKE = {"train_images": 300, "test_images": 150, "heads_images": 8, "batch_size": 150, "mask_seeds": 2,
         "mask_fractions": [0.0, 0.25, 0.5, 0.75]}


@dataclass(frozen=True)
class Recipe:
    """How the linear probes are fitted (common.linear_probe, fit_probe): constants, not flags."""
    probe_max_iter: int = 1000        # ours: L-BFGS iterations per fit, 10x scikit-learn's default of 100
    probe_Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # ours: C on a decade grid around scikit-learn's C = 1
    probe_val_fraction: float = 0.2   # ours: the share of the training subset held out to choose C


SMOKE_RECIPE = dataclasses.replace(Recipe(), probe_max_iter=100)  # --smoke: scikit-learn's default; 64-wide probes

# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def read_images(paths: list[str]) -> list[tuple[str, torch.Tensor]]:
    """The user's pictures as (name, uint8 [3, H, W]); an unreadable one is a UserError."""
    from PIL import Image, UnidentifiedImageError
    out, seen = [], set()
    for p in paths:
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, UnidentifiedImageError) as e:
            reason = type(e).__name__ if isinstance(e, UnidentifiedImageError) else (str(e) or type(e).__name__)
            raise harness.UserError(f"cannot read image {p} ({reason.splitlines()[0][:120]}); "
                                    f"pass readable image files to --images") from None
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(p).stem) or "image"
        while name in seen:  # two files called cat.jpg in different folders
            name += "_"
        seen.add(name)
        out.append((name, torch.from_numpy(arr.copy()).permute(2, 0, 1)))
    return out


def sample_photos() -> list[tuple[str, torch.Tensor]]:
    """scikit-learn's two bundled photos (427x640): a Chinese temple and a flower."""
    from sklearn.datasets import load_sample_images
    d = load_sample_images()
    return [(Path(f).stem, torch.from_numpy(np.array(img)).permute(2, 0, 1))
            for f, img in zip(d.filenames, d.images)]


def subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """n indices of a seeded random permutation of range(n_total)."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def processor_settings(processor) -> dict:
    """What the image processor does, as numbers we can apply on the device: resize to
    (H, W), scale to [0, 1], subtract mean, divide by std (per channel)."""
    mode = {2: "bilinear", 3: "bicubic"}.get(int(processor.resample), "bilinear")
    if not (processor.size.get("height") and processor.size.get("width")):
        raise harness.UserError(f"the image processor resizes to {processor.size}, not to a fixed height and "
                                f"width; Task2.py supports fixed-size ViT processors only")
    return {"size": (int(processor.size["height"]), int(processor.size["width"])), "mode": mode,
            "mean": torch.tensor(processor.image_mean, dtype=torch.float32),
            "std": torch.tensor(processor.image_std, dtype=torch.float32)}


def preprocess(images: torch.Tensor, pre: dict, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> model input float [B, 3, H, W] on the device (cheap there), as ViTImageProcessor
    does (common.resize_normalise, antialiased like PIL: within about 0.01 on the [-1, 1] scale, tested)."""
    return common.resize_normalise(images.to(device, non_blocking=True), pre["size"], pre["mean"], pre["std"],
                                   pre["mode"])


def display_images(pixels: torch.Tensor, pre: dict) -> np.ndarray:
    """Model input [n, 3, H, W] -> what a figure shows: uint8 RGB [n, H, W, 3] (normalisation undone)."""
    rgb = pixels.cpu().float() * pre["std"][:, None, None] + pre["mean"][:, None, None]
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class Cifar:
    """The run's CIFAR-10 subsets (x uint8 [N, 3, 32, 32], y int64 [N]; None where unused): test,
    --test-images (the head statistics use its first --heads-images); train, --train-images."""
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def load_cifar(args) -> tuple[Cifar, list[tuple[str, torch.Tensor]]]:
    """The subsets the chosen experiments need, and the --cifar-images shown beside the
    sample photos (the first test image of each class, named by its index in the split)."""
    exps = set(args.experiments)
    n_shown = args.cifar_images if args.images is None and exps & {"classify", "attention", "heads"} else 0
    need_test = bool(exps & {"masking", "probe"}) or ("heads" in exps and args.heads_images > 0) or n_shown > 0
    data, shown = {}, []
    if need_test:
        n_test = max(args.test_images, args.heads_images)
        x, y, classes = common.load_split("cifar10", args.data_root, train=False, smoke=args.smoke, seed=args.seed,
                                          smoke_size=max(n_test, 500))
        if n_test > len(x):
            raise harness.UserError(f"--test-images/--heads-images {n_test} exceed the {len(x)} CIFAR-10 test images")
        first = [int((y == c).nonzero()[0]) for c in range(min(n_shown, len(classes)))]  # each class's first image
        shown = [(f"cifar{i}_{classes[c]}", x[i]) for c, i in enumerate(first)]
        idx = subset(len(x), args.test_images, args.seed)
        data.update(x_test=x[idx], y_test=y[idx])
    if exps & {"masking", "probe"}:
        x, y, _ = common.load_split("cifar10", args.data_root, train=True, smoke=args.smoke, seed=args.seed,
                                    smoke_size=max(args.train_images, 1000))
        if args.train_images > len(x):
            raise harness.UserError(f"--train-images {args.train_images} exceeds the {len(x)} CIFAR-10 training images")
        idx = subset(len(x), args.train_images, args.seed + 1)
        data.update(x_train=x[idx], y_train=y[idx])
    return Cifar(**data), shown


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------

# Smoke labels: the first ten ImageNet classes, so smoke figures read like the real ones.
SMOKE_LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray",
                "stingray", "cock", "hen", "ostrich"]


def smoke_vit_config() -> ViTConfig:
    """A tiny random ViT of the same family: 32x32 input, 8x8 patches (4x4 grid = 16 tokens +
    CLS), 3 layers x 4 heads, width 64; weights drawn 10x wider than transformers' default (std
    0.2) so that attention is not uniform and the smoke maps exercise overlays, rollout, masking."""
    return ViTConfig(image_size=32, patch_size=8, num_hidden_layers=3, num_attention_heads=4, hidden_size=64,
                     intermediate_size=128, num_labels=len(SMOKE_LABELS), initializer_range=0.2,
                     id2label=dict(enumerate(SMOKE_LABELS)), label2id={n: i for i, n in enumerate(SMOKE_LABELS)})


def vit_b16_config() -> ViTConfig:
    """google/vit-base-patch16-224's architecture (its config.json), built offline for --weights
    none: 224x224 input, 16x16 patches, 12 layers x 12 heads, width 768, MLP 3072, exact GELU,
    LayerNorm eps 1e-12, no dropout, the 1,000 ImageNet-1k labels in class-index order
    (torchvision's bundled list: "tench", ...; the hub's config says "tench, Tinca tinca")."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES as labels
    return ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, qkv_bias=True, initializer_range=0.02,
                     id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})


def vit_b16_processor() -> ViTImageProcessor:
    """google/vit-base-patch16-224's preprocessor_config.json: resize to 224x224 (bilinear),
    scale to [0, 1], normalise with mean = std = 0.5 per channel."""
    return ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224}, resample=2, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@dataclass(frozen=True)
class Vit:
    """What every experiment needs: the classifier (eval mode, SDPA attention), its
    preprocessing settings (processor_settings), the device, and images per forward pass."""
    model: ViTForImageClassification
    pre: dict
    device: torch.device
    batch_size: int


def load_vit(args, device: torch.device) -> Vit:
    """The classifier (SDPA attention; eager only where attention weights are read) and its
    preprocessing settings. A failed fetch is a UserError, and so is a checkpoint without a
    classification head when classify runs: transformers would quietly add a random one
    (google/vit-base-patch16-224-in21k gets 2 random labels)."""
    if args.smoke:
        config = smoke_vit_config()
        model = ViTForImageClassification(config)  # seeded by seed_everything
        processor = ViTImageProcessor(size={"height": config.image_size, "width": config.image_size},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    else:
        random_init = args.weights == "none"
        try:
            if random_init and args.model == VIT_B16:  # nothing to fetch: the architecture is written out above
                model, processor, missing = ViTForImageClassification(vit_b16_config()), vit_b16_processor(), []
            elif random_init:  # another checkpoint: its config.json and preprocessor_config.json only (kilobytes)
                model = ViTForImageClassification(ViTConfig.from_pretrained(args.model))
                processor, missing = ViTImageProcessor.from_pretrained(args.model), []
            else:
                model, info = ViTForImageClassification.from_pretrained(args.model, attn_implementation="sdpa",
                                                                        output_loading_info=True)
                processor = ViTImageProcessor.from_pretrained(args.model)
                missing = sorted(k for k in info["missing_keys"] if k.startswith("classifier."))
        except Exception as e:  # OSError (offline, unknown id), ValueError (not a ViT), disk full ...
            from huggingface_hub import constants
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise harness.UserError(
                f"could not load {args.model} from the Hugging Face hub or its cache {constants.HF_HUB_CACHE} "
                f"({reason}); check the model id, connect to the internet or set HF_HOME to a cache that has it, "
                f"or run with --weights none (random weights) or --smoke") from None
        # Only classify reads the head; attention, heads, masking and probe use the backbone
        # (the probes fit their own linear heads), which such a checkpoint does hold.
        if missing and "classify" in args.experiments:
            raise harness.UserError(
                f"{args.model} has no image-classification head (its checkpoint lacks {', '.join(missing)}); "
                f"transformers would add a random {model.config.num_labels}-label head and every prediction would "
                f"be noise. Pass a checkpoint fine-tuned for classification, e.g. --model {VIT_B16}, or leave "
                f"classify out (--experiments attention,heads,masking,probe use the backbone only)")
        if missing:
            print(f"note: {args.model} has no classification head; its backbone is used, classify is not run")
    if not hasattr(model.vit, "layers"):
        raise harness.UserError(f"Task2.py needs transformers >= 5 (found {transformers.__version__}); "
                                f"pip install -U transformers")
    model.set_attn_implementation("sdpa")
    return Vit(model.to(device).eval(), processor_settings(processor), device, args.batch_size)


@contextlib.contextmanager
def eager_attention(model):
    """transformers 5 returns attention weights only from its eager implementation; SDPA
    (fused kernels: faster, no T x T matrix kept) is used everywhere else."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def weights_fingerprint(model) -> str:
    """A digest of the weights (sum and sum of squares of all parameters): a cache made by other
    weights (another checkpoint or random init) is never reused. On the CPU in float64, one
    parameter at a time: MPS has no float64, and the digest must not depend on the device."""
    s = s2 = 0.0
    with torch.no_grad():
        for p in model.parameters():
            q = p.detach().cpu().double()
            s, s2 = s + q.sum().item(), s2 + q.square().sum().item()
    return f"{s:.8e}/{s2:.8e}"


def grid_shape(model) -> tuple[int, int]:
    """(rows, cols) of the patch grid: 14x14 for ViT-B/16 at 224."""
    h, w = model.vit.embeddings.patch_embeddings.image_size
    ph, pw = model.vit.embeddings.patch_embeddings.patch_size
    return h // ph, w // pw


def embed_tokens(model, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Patch embedding + position embedding + CLS, optionally keeping only some patches:
    pixels [B, 3, H, W] -> tokens [B, 1 + K, D]; keep [B, K]: patch indices in 0..N-1 (row-major
    over the grid), None for all N. Positions are added before the selection, so every kept token
    carries its own: dropping a patch shortens the sequence without shifting the others (no mask)."""
    emb = model.vit.embeddings
    pos = emb.position_embeddings                                   # [1, 1 + N, D]
    patches = emb.patch_embeddings(pixels) + pos[:, 1:]             # [B, N, D]
    if keep is not None:
        patches = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
    cls = (emb.cls_token + pos[:, :1]).expand(len(pixels), -1, -1)  # [B, 1, D]
    return torch.cat([cls, patches], dim=1)                         # dropout: identity in eval


def vit_forward(model, pixels: torch.Tensor, keep: torch.Tensor | None = None, attentions: bool = False) -> dict:
    """The classifier's forward pass, run layer by layer so tokens can be dropped and every
    block's output read. Returns hidden: L tensors [B, T, D] (residual stream after each
    block), last: [B, T, D] after the final LayerNorm, logits: [B, classes], and with
    attentions=True (inside eager_attention) attentions: L tensors [B, heads, T, T]."""
    captured = []
    hooks = [layer.attention.register_forward_hook(lambda m, inp, out: captured.append(out[1]))
             for layer in model.vit.layers] if attentions else []
    try:
        x = embed_tokens(model, pixels, keep)
        hidden = []
        for layer in model.vit.layers:
            x = layer(x)
            hidden.append(x)
        last = model.vit.layernorm(x)
        logits = model.classifier(last[:, 0])
    finally:
        for h in hooks:
            h.remove()
    if attentions and any(a is None for a in captured):
        raise RuntimeError("attention weights are only returned inside eager_attention(model)")
    return {"hidden": hidden, "last": last, "logits": logits, "attentions": captured}


def batches(x: torch.Tensor, size: int, desc: str):
    """x in consecutive chunks of `size` along dim 0, with a progress bar."""
    return (x[i:i + size] for i in harness.progress(range(0, len(x), size), desc=desc))


def forward(vit: Vit, pixels: torch.Tensor, **kwargs) -> dict:
    """vit_forward on the device under autocast (bf16 on recent GPUs, fp32 on CPU)."""
    with common.autocast(vit.device):
        return vit_forward(vit.model, pixels.to(vit.device), **kwargs)


# ----------------------------------------------------------------------------
# Attention analysis and masking (pure functions; tested against constructed cases)
# ----------------------------------------------------------------------------


def cls_attention_map(attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, heads, T, T] -> [B, heads, rows, cols]: how much the CLS query attends to each
    patch (row 0, keys 1..N), laid out on the patch grid (token 1 + r*cols + c is patch (r, c))."""
    return attn[:, :, 0, 1:].reshape(*attn.shape[:2], *grid)


def attention_rollout(attentions: list[torch.Tensor], fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    attentions: L tensors [B, heads, T, T] (rows: queries, sum to 1). Per layer: fuse heads
    (mean/max/min), optionally zero the lowest `discard_ratio` of the weights (jacobgil's
    vit-explain; the CLS->CLS weight is never discarded), add the residual as
    A' = 0.5*A + 0.5*I, renormalise rows, and multiply: R = A'_L ... A'_1. Returns [B, T, T];
    R[:, 0, 1:] is how much each patch flowed into the CLS token."""
    rollout = None
    for attn in attentions:
        a = {"mean": attn.mean(1), "max": attn.amax(1), "min": attn.amin(1)}[fusion].float()  # [B, T, T]
        b, t, _ = a.shape
        if discard_ratio > 0:
            flat = a.reshape(b, t * t).clone()
            low = flat.topk(int(t * t * discard_ratio), dim=1, largest=False).indices
            flat.scatter_(1, low, 0.0)
            flat[:, 0] = a[:, 0, 0]                                 # CLS->CLS is never discarded
            a = flat.reshape(b, t, t)
        a = 0.5 * a + 0.5 * torch.eye(t, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def entropy_bits(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in bits of distributions along `dim` (0 log 0 = 0)."""
    p = p.float()
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(dim)


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """[N, N] Euclidean distance in pixels between patch centres."""
    r, c = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    xy = torch.stack([r.flatten(), c.flatten()], 1).float() * patch_size
    return torch.cdist(xy, xy)


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Mean attention distance (ViT paper, Fig. 7 / App. D.7): for every patch query, the pixel
    distance to each patch key weighted by attention, averaged over queries; CLS left out, each
    query's patch weights renormalised to sum to 1. [B, heads, T, T] -> [B, heads] in pixels."""
    a = attn[:, :, 1:, 1:].float()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    d = patch_distances(grid, patch_size).to(a.device)
    return (a * d).sum(-1).mean(-1)


def head_similarity(attn: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between heads' full attention patterns, averaged over images.
    [B, heads, T, T] -> [heads, heads]."""
    v = F.normalize(attn.flatten(2).float(), dim=-1)  # [B, heads, T*T]
    return (v @ v.transpose(1, 2)).mean(0)


def n_masked(fraction: float, n_patches: int) -> int:
    """Exactly round(f * N) patches are masked (no .5 ties for N = 196 or 16 at f = k/10)."""
    return int(round(fraction * n_patches))


def spatial_order(strategy: str, grid: tuple[int, int]) -> torch.Tensor:
    """Patch indices [N] in masking order for the fixed strategies. "centre": square rings
    from the middle outwards (Chebyshev distance to the image centre, then Euclidean, then
    index), so round(f*N) = 4, 16, 36 ... on an even grid is an exact centred square;
    "border": the same order reversed, outermost ring first (corners first within a ring)."""
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    dy, dx = (r.flatten() + 0.5 - rows / 2).abs(), (c.flatten() + 0.5 - cols / 2).abs()
    cheb, eucl = torch.maximum(dy, dx), torch.sqrt(dy**2 + dx**2)
    sign = -1 if strategy == "border" else 1
    return torch.tensor(sorted(range(rows * cols), key=lambda i: (sign * cheb[i].item(), sign * eucl[i].item(), i)))


def mask_orders(strategy: str, n_images: int, grid: tuple[int, int], rollout: torch.Tensor | None = None,
                seed: int = 0) -> torch.Tensor:
    """[n_images, N] patch indices in the order they get masked; the first round(f*N) of
    each row are masked at fraction f, so masks are nested across fractions. random: a
    seeded permutation per image; most/least-attended: by the image's rollout [n_images, N]."""
    n = grid[0] * grid[1]
    if strategy == "random":
        return torch.rand(n_images, n, generator=torch.Generator().manual_seed(seed)).argsort(1)
    if strategy in ("centre", "border"):
        return spatial_order(strategy, grid).expand(n_images, -1)
    if strategy in ("most-attended", "least-attended"):
        return rollout.argsort(dim=1, descending=strategy == "most-attended", stable=True)
    raise ValueError(f"unknown strategy {strategy!r}")


def mask_from_order(order: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N] order -> bool [B, N], True for the first k patches of each row."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :k], True)


def pixel_mask(pixels: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """Set the pixels of masked patches to `fill` [3] (the dataset mean, normalised).
    pixels [B, 3, H, W], mask bool [B, N] over the row-major patch grid."""
    ph, pw = pixels.shape[2] // grid[0], pixels.shape[3] // grid[1]
    m = mask.reshape(-1, 1, *grid).repeat_interleave(ph, 2).repeat_interleave(pw, 3)  # [B, 1, H, W]
    return torch.where(m, fill.to(pixels)[None, :, None, None], pixels)


def kept_tokens(mask: torch.Tensor) -> torch.Tensor:
    """bool [B, N] with the same count per row -> [B, N - k] indices of the unmasked
    patches, ascending (nonzero lists them row by row)."""
    return (~mask).nonzero()[:, 1].reshape(len(mask), -1)


# ----------------------------------------------------------------------------
# Features (extracted once, cached)
# ----------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(vit: Vit, images: torch.Tensor, desc: str) -> dict:
    """CIFAR uint8 [N, 3, 32, 32] -> {"cls", "mean": [N, L, D] float16 per block (residual
    stream; CLS token and mean of patch tokens), "cls_final", "mean_final": [N, D] float32
    after the final LayerNorm (what the classifier head reads)}. SDPA attention."""
    out = {"cls": [], "mean": [], "cls_final": [], "mean_final": []}
    for x in batches(images, vit.batch_size, desc):
        r = forward(vit, preprocess(x, vit.pre, vit.device))
        h = torch.stack(r["hidden"], 1).float()                    # [B, L, T, D]
        out["cls"].append(h[:, :, 0].half().cpu())
        out["mean"].append(h[:, :, 1:].mean(2).half().cpu())
        out["cls_final"].append(r["last"][:, 0].float().cpu())
        out["mean_final"].append(r["last"][:, 1:].float().mean(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def cache_settings(vit: Vit, images: torch.Tensor, args) -> dict:
    """What a cached feature or rollout file depends on besides its code (harness.Cache)."""
    return {"model": args.model, "weights": weights_fingerprint(vit.model), "smoke": args.smoke, "n": len(images),
            "seed": args.seed, "preprocess": vit.pre, "precision": common.compute_dtype(vit.device)}


FORWARD_CODE = (forward, vit_forward, embed_tokens, preprocess, common.resize_normalise)  # in every cache key


def cached_features(vit: Vit, images: torch.Tensor, split: str, args, cached: harness.Cache) -> dict:
    """extract_features of one CIFAR split, computed once per model, subset and code."""
    return cached("features", {**cache_settings(vit, images, args), "split": split},
                  lambda: extract_features(vit, images, f"features ({split})"), code=(extract_features, *FORWARD_CODE))


def rollout_maps(vit: Vit, images: torch.Tensor, args, cached: harness.Cache) -> torch.Tensor:
    """Per-image rollout of CLS onto the patches, [N, patches] float32 (cached; eager attention)."""
    def compute() -> torch.Tensor:
        maps = []
        with torch.inference_mode(), eager_attention(vit.model):
            for x in batches(images, vit.batch_size, "rollout"):
                attns = forward(vit, preprocess(x, vit.pre, vit.device), attentions=True)["attentions"]
                maps.append(attention_rollout(attns, args.rollout_fusion, args.discard_ratio)[:, 0, 1:].cpu())
            return torch.cat(maps)

    settings = {**cache_settings(vit, images, args), "fusion": args.rollout_fusion, "discard": args.discard_ratio}
    return cached("rollout", settings, compute, code=(rollout_maps, attention_rollout, *FORWARD_CODE))


def fit_probe(train_x, y_train, test_x, y_test, seed: int, recipe: Recipe = Recipe()) -> dict:
    """common.linear_probe (standardised logistic regression, C chosen on a validation split,
    refitted on all training features) with the recipe; returns test_acc, val_acc, C, model, scaler."""
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():  # an unconverged fit is still a valid probe; say nothing
        warnings.simplefilter("ignore", ConvergenceWarning)
        return common.linear_probe(np.asarray(train_x, np.float32), np.asarray(y_train),
                                   np.asarray(test_x, np.float32), np.asarray(y_test), Cs=recipe.probe_Cs,
                                   val_fraction=recipe.probe_val_fraction, seed=seed, max_iter=recipe.probe_max_iter)


def probe_per_layer(train: torch.Tensor, y_train, test: torch.Tensor, y_test, seed: int,
                    recipe: Recipe = Recipe()) -> list[float]:
    """Test accuracy of a linear probe on each layer's features: train/test [N, L, D]."""
    return [fit_probe(train[:, l].float(), y_train, test[:, l].float(), y_test, seed, recipe)["test_acc"]
            for l in harness.progress(range(train.shape[1]), desc="per-layer probes")]


# ----------------------------------------------------------------------------
# Experiment 1: classify
# ----------------------------------------------------------------------------


@torch.inference_mode()
def classify(vit: Vit, names: list[str], pixels: torch.Tensor) -> tuple[dict, dict]:
    """Top-1/top-5 ImageNet labels with softmax probabilities for each image (pixels
    [n, 3, H, W] model input on CPU, sent through in batches of --batch-size)."""
    probs = torch.cat([forward(vit, x)["logits"].float().cpu()
                       for x in batches(pixels, vit.batch_size, "classify")]).softmax(-1)
    top_p, top_i = probs.topk(min(5, probs.shape[-1]), dim=-1)  # a checkpoint may have fewer than five labels
    per_image = {}
    for name, p, i in zip(names, top_p, top_i):
        labels = [vit.model.config.id2label[int(j)].split(",")[0] for j in i]  # "tabby, tabby cat" -> "tabby"
        per_image[name] = {"top1": labels[0], "top1_prob": float(p[0]), "top5_prob_mass": float(p.sum()),
                           "top5": [[l, float(q)] for l, q in zip(labels, p)]}  # [label, probability]
        print(f"  {name:<28} top-1 {labels[0]} ({p[0]:.3f}); top-5 {', '.join(labels[1:])}")
    return {"mean_top1_prob": float(top_p[:, 0].mean()), "mean_top5_prob_mass": float(top_p.sum(1).mean()),
            "images": per_image}, {"images": display_images(pixels, vit.pre)}


# ----------------------------------------------------------------------------
# Experiment 2: attention maps and rollout
# ----------------------------------------------------------------------------


@torch.inference_mode()
def attention(vit: Vit, names: list[str], pixels: torch.Tensor, discard_ratio: float) -> tuple[dict, dict]:
    """Last layer's CLS->patch attention (mean over heads, and each head) and attention
    rollout with mean/max/min head fusion. Per image: the entropy of the maps (how spread
    the attention is), their Spearman rank correlation, and CLS's attention to itself."""
    from scipy.stats import spearmanr
    grid = grid_shape(vit.model)
    # In batches of --batch-size: the weights of all 12 layers of ViT-B/16 take 22 MB per
    # image (12 x 12 heads x 197 x 197 x 4 bytes); only the CLS rows are kept.
    last, self_attention, rollouts = [], [], {f: [] for f in FUSIONS}
    with eager_attention(vit.model):
        for x in batches(pixels, vit.batch_size, "attention"):
            attns = [a.float() for a in forward(vit, x, attentions=True)["attentions"]]
            last.append(cls_attention_map(attns[-1], grid).cpu())                # [b, heads, rows, cols]
            self_attention.append(attns[-1][:, :, 0, 0].mean(1).cpu())           # [b]: CLS -> CLS, mean of heads
            for f in FUSIONS:
                rollouts[f].append(attention_rollout(attns, f, discard_ratio)[:, 0, 1:].reshape(-1, *grid).cpu())
    last, self_attention = torch.cat(last), torch.cat(self_attention)            # [n, heads, rows, cols], [n]
    rollouts = {f: torch.cat(r) for f, r in rollouts.items()}                    # [n, rows, cols] each
    last_mean, per_image = last.mean(1), {}                                      # [n, rows, cols]
    for n, name in enumerate(names):
        p_last = last_mean[n].flatten() / last_mean[n].sum()
        p_roll = rollouts["mean"][n].flatten() / rollouts["mean"][n].sum()
        per_image[name] = {"last_layer_entropy_bits": float(entropy_bits(p_last)),
                           "rollout_entropy_bits": float(entropy_bits(p_roll)),
                           "spearman_last_vs_rollout": float(spearmanr(p_last.numpy(), p_roll.numpy())[0]),
                           "cls_self_attention_last_layer": float(self_attention[n])}
    avg = lambda k: float(np.mean([v[k] for v in per_image.values()]))
    uniform = math.log2(grid[0] * grid[1])
    print(f"  entropy of CLS attention: last layer {avg('last_layer_entropy_bits'):.2f} bits, rollout "
          f"{avg('rollout_entropy_bits'):.2f} bits (uniform: {uniform:.2f})")
    return {"uniform_entropy_bits": uniform, "mean_last_layer_entropy_bits": avg("last_layer_entropy_bits"),
            "mean_rollout_entropy_bits": avg("rollout_entropy_bits"),
            "mean_spearman_last_vs_rollout": avg("spearman_last_vs_rollout"), "images": per_image}, \
        {"images": display_images(pixels, vit.pre), "last": last, **{f"rollout_{f}": r for f, r in rollouts.items()}}


# ----------------------------------------------------------------------------
# Experiment 3: do heads specialise?
# ----------------------------------------------------------------------------


@torch.inference_mode()
def heads(vit: Vit, pixels: torch.Tensor, cifar: torch.Tensor | None) -> tuple[dict, dict]:
    """Per layer and head, over the images (pixels: model input) and the CIFAR images (uint8,
    the first --heads-images of the test subset): entropy (bits) of the CLS attention over all
    tokens, and mean attention distance in input pixels (ViT paper Fig. 7: early layers mix
    local and global heads, later layers are global). Last layer: head similarity."""
    if cifar is not None:
        pixels = torch.cat([pixels, preprocess(cifar, vit.pre, vit.device).cpu()])
    grid, patch = grid_shape(vit.model), vit.model.config.patch_size
    ent, dist, sim = 0.0, 0.0, 0.0
    with eager_attention(vit.model):
        for x in batches(pixels, vit.batch_size, "head statistics"):
            a = torch.stack(forward(vit, x, attentions=True)["attentions"], 1).float()  # [B, L, heads, T, T]
            ent = ent + entropy_bits(a[:, :, :, 0, :]).sum(0).cpu()                    # [L, heads]
            dist = dist + torch.stack([mean_attention_distance(a[:, l], grid, patch) for l in range(a.shape[1])],
                                      1).sum(0).cpu()
            sim = sim + head_similarity(a[:, -1]).cpu() * len(a)                         # [heads, heads]
    n = len(pixels)
    ent, dist, sim = ent / n, dist / n, sim / n
    uniform_dist = float(patch_distances(grid, patch).mean())
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    print(f"  mean attention distance: layer 1 {dist[0].min():.1f}-{dist[0].max():.1f} px, "
          f"layer {len(dist)} {dist[-1].min():.1f}-{dist[-1].max():.1f} px (uniform {uniform_dist:.1f} px)")
    return {"images": n, "entropy_bits": ent, "distance_px": dist, "uniform_distance_px": uniform_dist,
            "first_layer_distance_min_px": float(dist[0].min()), "first_layer_distance_max_px": float(dist[0].max()),
            "last_layer_distance_mean_px": float(dist[-1].mean()),
            "first_layer_entropy_mean_bits": float(ent[0].mean()),
            "last_layer_entropy_mean_bits": float(ent[-1].mean()), "last_layer_head_similarity": sim,
            "last_layer_mean_offdiag_similarity": float(off.mean())}, {"tokens": grid[0] * grid[1] + 1}


# ----------------------------------------------------------------------------
# Experiment 4: masking patches
# ----------------------------------------------------------------------------


@torch.inference_mode()
def masked_cls(vit: Vit, images: torch.Tensor, orders: torch.Tensor, k: int, how: str, fill) -> torch.Tensor:
    """Final CLS features [N, D] with the first k patches of each order row masked: "pixel"
    sets their pixels to `fill`, "token" drops their tokens."""
    grid, feats = grid_shape(vit.model), []
    for i in range(0, len(images), vit.batch_size):
        pixels = preprocess(images[i:i + vit.batch_size], vit.pre, vit.device)
        mask = mask_from_order(orders[i:i + vit.batch_size].to(vit.device), k)
        r = forward(vit, pixel_mask(pixels, mask, grid, fill)) if how == "pixel" else \
            forward(vit, pixels, keep=kept_tokens(mask))
        feats.append(r["last"][:, 0].float().cpu())
    return torch.cat(feats)


def masking(vit: Vit, data: Cifar, probe: dict, unmasked_cls: torch.Tensor, rollout: torch.Tensor,
            fractions: list[float], n_seeds: int, seed: int) -> tuple[dict, dict]:
    """CIFAR-10 test accuracy of the linear probe (fitted on unmasked training features) with
    round(f*N) patches masked, and agreement with the unmasked prediction, per strategy, for pixel
    masking and token dropping. unmasked_cls [N, D]: final CLS features; rollout [N, patches]."""
    grid, y, hows = grid_shape(vit.model), data.y_test.numpy(), ("pixel", "token")
    n_patches = grid[0] * grid[1]
    # Masked patches are filled with the training images' mean colour, in model-input units.
    fill = ((data.x_train.float().mean((0, 2, 3)) / 255.0 - vit.pre["mean"]) / vit.pre["std"]).to(vit.device)
    predict = lambda feats: probe["model"].predict(probe["scaler"].transform(feats.numpy().astype(np.float64)))
    base_pred = predict(unmasked_cls)
    orders = {s: [mask_orders(s, len(y), grid, rollout, seed=seed * 1000 + j)
                  for j in range(n_seeds if s == "random" else 1)] for s in STRATEGIES}
    acc = {(how, s): np.zeros((len(orders[s]), len(fractions))) for how in hows for s in STRATEGIES}
    agree = {key: np.zeros_like(a) for key, a in acc.items()}
    jobs = [(how, s, j, fi) for how, s in acc for j in range(len(orders[s])) for fi in range(len(fractions))]
    for how, s, j, fi in harness.progress(jobs, desc="masking"):
        k = n_masked(fractions[fi], n_patches)
        pred = base_pred if k == 0 else predict(masked_cls(vit, data.x_test, orders[s][j], k, how, fill))
        acc[how, s][j, fi], agree[how, s][j, fi] = (pred == y).mean(), (pred == base_pred).mean()
    metrics = {"unmasked_acc": float((base_pred == y).mean()), "probe_C": probe["C"], "eval_images": len(y),
               "patches": n_patches, "fractions": fractions,
               "masked_patches": [n_masked(f, n_patches) for f in fractions]}
    for how in hows:
        metrics[how] = {s: {"acc": acc[how, s].mean(0), "agree": agree[how, s].mean(0),
                            "mean_acc_over_fractions": float(acc[how, s].mean()),
                            "mean_agree_over_fractions": float(agree[how, s].mean()),
                            **({"acc_std": acc[how, s].std(0), "agree_std": agree[how, s].std(0)}
                               if s == "random" else {})} for s in STRATEGIES}
        print(f"  {how:<5} mean accuracy over fractions: " +
              ", ".join(f"{s} {metrics[how][s]['mean_acc_over_fractions']:.3f}" for s in STRATEGIES))
    shown, examples = masking_examples(vit, data.x_test[:1], orders, fractions, fill)
    return metrics, {"examples": examples, "shown_fractions": shown, "n_classes": len(np.unique(y))}


def masking_examples(vit: Vit, image: torch.Tensor, orders: dict, fractions: list[float], fill):
    """Pixel masking as the model sees it (token dropping removes the same patches): image uint8
    [1, 3, h, w], each strategy's first order, up to five nonzero fractions -> (them, uint8 [S*F, H, W, 3])."""
    grid = grid_shape(vit.model)
    nonzero = [f for f in fractions if f > 0] or fractions
    shown = [nonzero[i] for i in np.unique(np.linspace(0, len(nonzero) - 1, min(5, len(nonzero))).round().astype(int))]
    pixels = preprocess(image, vit.pre, vit.device)
    tiles = [pixel_mask(pixels, mask_from_order(orders[s][0][:1].to(vit.device), n_masked(f, grid[0] * grid[1])),
                        grid, fill) for s in STRATEGIES for f in shown]
    return shown, display_images(torch.cat(tiles), vit.pre)


# ----------------------------------------------------------------------------
# Experiment 5: CLS token vs mean of patch tokens
# ----------------------------------------------------------------------------


def probe(train: dict, y_train, test: dict, y_test, cls_probe: dict, seed: int, recipe: Recipe) -> tuple[dict, dict]:
    """Linear probes on the final (LayerNorm'd) CLS token (`cls_probe`, shared with the
    masking experiment) vs the mean of patch tokens, the same for every block's output,
    and the cosine similarity between the two feature kinds. train/test: extract_features."""
    final = {"cls": cls_probe,
             "mean": fit_probe(train["mean_final"], y_train, test["mean_final"], y_test, seed, recipe)}
    layers = {kind: probe_per_layer(train[kind], y_train, test[kind], y_test, seed, recipe)
              for kind in ("cls", "mean")}
    cos_layers = F.cosine_similarity(test["cls"].float(), test["mean"].float(), dim=-1)  # [N, L]
    cos_final = F.cosine_similarity(test["cls_final"], test["mean_final"], dim=-1)        # [N]
    print(f"  test accuracy: CLS {final['cls']['test_acc']:.3f} (C={final['cls']['C']}), "
          f"mean of patches {final['mean']['test_acc']:.3f} (C={final['mean']['C']}); "
          f"cosine(CLS, mean) {cos_final.mean():.3f}")
    return {"cls_test_acc": final["cls"]["test_acc"], "mean_test_acc": final["mean"]["test_acc"],
            "cls_val_acc": final["cls"]["val_acc"], "mean_val_acc": final["mean"]["val_acc"],
            "cls_C": final["cls"]["C"], "mean_C": final["mean"]["C"],
            "cls_layer_acc": layers["cls"], "mean_layer_acc": layers["mean"],
            "cosine_final_mean": float(cos_final.mean()), "cosine_final_std": float(cos_final.std()),
            "cosine_layer_mean": cos_layers.mean(0), "train_images": len(y_train), "test_images": len(y_test)}, \
        {"cosine_layer_std": cos_layers.std(0), "n_classes": len(np.unique(y_test.numpy()))}


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = harness.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    with harness.user_errors(parser.prog, batch_flag="--batch-size"):
        if args.replot or len(args.seeds) > 1:  # figures only (no model, no data), or one run per seed
            return harness.redirect(report, args, argv, main)
        user_images = read_images(args.images) if args.images else None  # checked before anything is loaded
        device, recipe = common.pick_device(args.device, args.precision), SMOKE_RECIPE if args.smoke else Recipe()
        common.seed_everything(args.seed)
        vit = load_vit(args, device)
        grid, cfg = grid_shape(vit.model), vit.model.config
        print(f"model: {'smoke ViT' if args.smoke else args.model}"
              f"{' (random weights)' if args.smoke or args.weights == 'none' else ''}, "
              f"{cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
              f"{vit.pre['size'][0]}x{vit.pre['size'][1]} input, {grid[0]}x{grid[1]} patches")
        data, cifar_shown = load_cifar(args)
        named = user_images or (sample_photos() + cifar_shown
                                if set(args.experiments) & {"classify", "attention", "heads"} else [])
        names = [n for n, _ in named]  # images of different sizes -> one model-input batch [n, 3, H, W] on the CPU
        pixels = torch.cat([preprocess(img[None], vit.pre, device).cpu() for _, img in named]) if named else None
        cached = harness.Cache(args.out, args.fresh)

        # Results two experiments share, computed once per run on first use (and cached on disk).
        @functools.cache
        def features(split: str) -> dict:
            return cached_features(vit, data.x_train if split == "train" else data.x_test, split, args, cached)

        @functools.cache
        def cls_probe() -> dict:  # the final-layer CLS probe: probe reports it, masking predicts with it
            return fit_probe(features("train")["cls_final"], data.y_train, features("test")["cls_final"],
                             data.y_test, args.seed, recipe)

        return harness.run(report, args, device, {
            "classify": lambda: classify(vit, names, pixels),
            "attention": lambda: attention(vit, names, pixels, args.discard_ratio),
            "heads": lambda: heads(vit, pixels, data.x_test[:args.heads_images] if args.heads_images else None),
            "masking": lambda: masking(vit, data, cls_probe(), features("test")["cls_final"],
                                       rollout_maps(vit, data.x_test, args, cached), args.mask_fractions,
                                       args.mask_seeds, args.seed),
            "probe": lambda: probe(features("train"), data.y_train, features("test"), data.y_test, cls_probe(),
                                   args.seed, recipe),
        }, recipe=recipe)


if __name__ == "__main__":
    main()
