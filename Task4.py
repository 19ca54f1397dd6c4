"""Task 4: CLIP ViT-B/32 on STL-10: zero-shot prompting, the modality gap, and
orthogonal Procrustes alignment fitted without test leakage.

Experiments (each computes its metrics; plot_<experiment> draws `<experiment>_<what>.png`):
  zeroshot    top-1/top-5 on the 8,000 STL-10 test images for five prompt strategies
              (plain label, "a photo of a {}.", one hand-written description per class,
              CLIP's own STL-10 templates, the 80-template ImageNet ensemble);
              per-class accuracy and the confusion matrix of the best strategy
  gap         the modality gap of Liang et al. 2022 ("Mind the Gap", NeurIPS): distance
              between image and text centroids, with and without L2 normalisation;
              cosine-similarity distributions; joint 2-D t-SNE (or UMAP) of images + prompts
  procrustes  orthogonal map R from image embeddings to their class's text embedding,
              fitted on the TRAIN split only, applied to the test split: gap and accuracy
              before/after for every prompt strategy, ||R^T R - I||, the 2-D view after
  gap_shift   Liang et al.'s shift: move images by -lambda/2 and texts by +lambda/2 along
              the gap direction, renormalise, plot accuracy against the resulting gap;
              plus the baseline of centring each modality

Run:
  python Task4.py                         # open_clip ViT-B-32, pretrained="openai", STL-10
  python Task4.py --model ViT-B-32 --pretrained laion2b_s34b_b79k
  python Task4.py --pretrained none       # the full ViT-B-32 (QuickGELU, as "openai" needs), random
                                          # weights: a dry run without the weights download
  python Task4.py --smoke --out /tmp/t4   # offline: small random CLIP, generated images
  python Task4.py --replot                # redraw the figures from metrics.json, computing nothing

STL-10 comes through torchvision, which downloads the whole 2.6 GB archive (the 100,000
unlabelled images included) under --data-root once, and checks it once per run.

Writes into --out: zeroshot_accuracy.png, zeroshot_per_class.png, zeroshot_confusion.png,
gap_cosine_hist.png, gap_joint_<tsne|umap>.png, gap_raw_vs_normalised.png, procrustes_accuracy.png,
procrustes_joint_<tsne|umap>.png, procrustes_rotations.npz, gap_shift_accuracy.png,
metrics.json, summary.md, cache/ (image and text embeddings, one file per model,
split and prompt set; plot/<experiment>.npz, the arrays the figures are drawn from).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import orthogonal_procrustes

import common
import harness
from reports import task4 as report

EXPERIMENTS = ["zeroshot", "gap", "procrustes", "gap_shift"]  # their figures: reports/task4.py

# ----------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------

# CLIP's own STL-10 templates: openai/CLIP, data/prompts.md, section "STL10". open_clip 3.3
# ships only the ImageNet templates (open_clip/zero_shot_metadata.py), so they are written here.
CLIP_STL10_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")

# One hand-written sentence per STL-10 class describing what it looks like.
DESCRIPTIONS = {
    "airplane": "a photo of an airplane, a large metal aircraft with long wings and jet engines, in the sky "
                "or on a runway.",
    "bird": "a photo of a bird, a small feathered animal with a beak and wings, perched on a branch or flying.",
    "car": "a photo of a car, a four-wheeled passenger vehicle with windows and headlights, on a road.",
    "cat": "a photo of a cat, a small furry pet with pointed ears, whiskers and a long tail.",
    "deer": "a photo of a deer, a slender brown wild animal with long legs and antlers, in a forest or field.",
    "dog": "a photo of a dog, a furry four-legged pet with a wet nose, floppy or upright ears and a wagging tail.",
    "horse": "a photo of a horse, a large hoofed animal with a long mane and tail, in a field or with a rider.",
    "monkey": "a photo of a monkey, a primate with long arms, grasping hands and a tail, climbing in trees.",
    "ship": "a photo of a ship, a large vessel with a hull and decks, sailing on the sea or docked in a harbour.",
    "truck": "a photo of a truck, a big motor vehicle with a cab and a cargo bed or trailer, on a road.",
}

STRATEGIES = ["label", "photo", "descriptive", "clip_stl10", "ensemble"]


def build_prompts(strategy: str, classes: list[str]) -> list[list[str]]:
    """prompts[k] = the list of sentences for class k (one for most strategies,
    2 for clip_stl10, 80 for ensemble). Their embeddings are averaged per class."""
    if strategy == "label":
        return [[c] for c in classes]
    if strategy == "photo":
        return [[f"a photo of a {c}."] for c in classes]
    if strategy == "descriptive":
        return [[DESCRIPTIONS[c]] for c in classes]
    if strategy == "clip_stl10":
        return [[t.format(c) for t in CLIP_STL10_TEMPLATES] for c in classes]
    if strategy == "ensemble":  # the CLIP paper's 80 ImageNet templates, as open_clip ships them
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [[t(c) for t in OPENAI_IMAGENET_TEMPLATES] for c in classes]
    raise ValueError(f"unknown prompt strategy {strategy!r}")


# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------

SMOKE = {"tsne_large": 150, "batch_size": 64}


def build_parser() -> harness.Parser:
    parser = harness.make_parser("task4", __doc__, EXPERIMENTS)
    # Every numeric flag's type states its valid range (harness.Bounded): argparse refuses
    # anything outside it in one line; check_args below refuses bad combinations.
    g = parser.add_argument_group("task 4")
    g.add_argument("--model", default="ViT-B-32",
                   help="open_clip model name, one of open_clip.list_models()")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag (e.g. openai, laion2b_s34b_b79k), a checkpoint file, or none: "
                        "the full model with random weights and the activation the openai tag needs, nothing "
                        "downloaded; --smoke ignores it and uses a small random CLIP")
    g.add_argument("--batch-size", type=harness.positive_int, default=256,
                   help="images / prompts per encoder forward pass")
    g.add_argument("--prompt", default="photo", choices=STRATEGIES,
                   help="prompt strategy whose class embeddings gap and the 2-D views use")
    g.add_argument("--embed", default="tsne", choices=["tsne", "umap", "both"],
                   help="2-D method for the joint views; UMAP costs ~20 s of numba start-up")
    g.add_argument("--tsne-small", type=harness.Bounded(int, lo=5), default=100,
                   help="test images in the small joint 2-D view, plus their class prompts")
    g.add_argument("--tsne-large", type=harness.Bounded(int, lo=5), default=2000,
                   help="test images in the large joint 2-D view")
    g.add_argument("--pairs", type=harness.positive_int, default=20000,
                   help="random pairs per cosine-similarity histogram")
    g = parser.add_argument_group("gap_shift: shifting image and text embeddings along the modality gap")
    g.add_argument("--shift-min", type=harness.Bounded(float), default=-1.0,
                   help="smallest shift lambda along the unit gap direction")
    g.add_argument("--shift-max", type=harness.Bounded(float), default=2.0,
                   help="largest shift lambda; lambda = gap closes the centroids before renormalising")
    g.add_argument("--shift-steps", type=harness.Bounded(int, lo=2), default=31,
                   help="number of lambdas from --shift-min to --shift-max")
    return parser


def check_args(args) -> None:
    """Flags that only make sense together, checked right after parsing (one line, exit 2).
    STL-10 has 8,000 test images (smoke: 300)."""
    n_test = 300 if args.smoke else 8000
    if {"gap", "procrustes"} & set(args.experiments):  # the joint 2-D views
        for flag in ("tsne_small", "tsne_large"):
            harness.require(getattr(args, flag) <= n_test,
                           f"--{flag.replace('_', '-')} {getattr(args, flag)} exceeds the {n_test} STL-10 test images")
    if "gap_shift" in args.experiments:
        harness.require(args.shift_min < args.shift_max,
                       f"--shift-min {args.shift_min:g} must be below --shift-max {args.shift_max:g}")


# ----------------------------------------------------------------------------
# Models and data: open_clip CLIP (pretrained; a small random CLIP for --smoke), STL-10
# ----------------------------------------------------------------------------

# Small CLIP of the same family (ViT image tower, causal text transformer, QuickGELU as in
# OpenAI's weights) for --smoke: ~3.4M parameters, 64x64 input, 16 patches of 16x16.
SMOKE_CLIP = dict(embed_dim=64, quick_gelu=True,
                  vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


def clip_quick_gelu(model_name: str, pretrained: str) -> bool:
    """Whether the weights `pretrained` of `model_name` need QuickGELU, x * sigmoid(1.702 x),
    the activation OpenAI trained CLIP with (Radford et al. 2021; openai/CLIP clip/model.py),
    rather than nn.GELU. open_clip 3.x builds the activation of the model config (nn.GELU
    for `ViT-B-32`) and only warns when the tag was trained with QuickGELU ("QuickGELU
    mismatch ..."), so OpenAI's weights would run through a different network. The tag's
    own flag (open_clip.get_pretrained_cfg) decides; a model config that asks for QuickGELU
    itself (the `*-quickgelu` names, roberta-ViT-B-32) keeps it. `none` (random weights)
    takes the `openai` tag's activation, so a dry run builds the network the default
    weights need. A checkpoint file has no tag: the model config decides (use the
    `<model>-quickgelu` name for a checkpoint trained with QuickGELU)."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model_name, "openai" if pretrained == "none" else pretrained)
    model_cfg = open_clip.factory.get_model_config(model_name) or {}
    return bool(tag_cfg.get("quick_gelu", False)) or bool(model_cfg.get("quick_gelu", False))


def activation_name(model) -> str:
    """Which activation the built model's MLPs use: "QuickGELU", "GELU" or both."""
    from open_clip.transformer import QuickGELU

    kinds = {"QuickGELU" if isinstance(m, QuickGELU) else "GELU" for m in model.modules()
             if isinstance(m, (QuickGELU, torch.nn.GELU))}
    return "+".join(sorted(kinds)) or "none"


def load_clip(model_name: str, pretrained: str, smoke: bool, device: torch.device):
    """(model in eval mode on device, tokenizer, preprocessing config dict). Full runs
    fetch weights through open_clip (Hugging Face hub cache under $HF_HOME, or
    ~/.cache/clip for URL downloads), with the activation the weights were trained with
    (`clip_quick_gelu`); `none` builds the same network with random weights, offline.
    The tokenizer is OpenAI's BPE, which ships inside the open_clip package, so --smoke
    uses the real one offline."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    if smoke:
        model = open_clip.CLIP(**SMOKE_CLIP)
        open_clip.set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=SMOKE_CLIP["vision_cfg"]["image_size"])))
        tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the real CLIP BPE tokenizer, bundled
    else:
        random_init = pretrained == "none"
        logging.disable(logging.CRITICAL)  # open_clip logs an ERROR line before raising; we print our own line
        try:
            # pretrained_text=False: `none` must not fetch a Hugging Face text tower either.
            model = open_clip.create_model(model_name, pretrained=None if random_init else pretrained,
                                           force_quick_gelu=clip_quick_gelu(model_name, pretrained),
                                           pretrained_text=not random_init)
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as e:  # RuntimeError (no network / unknown file), OSError (disk), ...
            reason = " ".join(str(e).split())[:160] or type(e).__name__
            hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise harness.UserError(
                f"could not get open_clip weights {model_name} pretrained={pretrained} ({reason}); open_clip caches "
                f"them under HF_HOME={hf_home} (or ~/.cache/clip): fetch them there on a machine with internet, "
                f"pass --pretrained /path/to/checkpoint, or run with --smoke") from None
        finally:
            logging.disable(logging.NOTSET)
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    return model.to(device).eval(), tokenizer, pp


def load_stl10(data_root: str, smoke: bool, seed: int):
    """(x_train, y_train, x_test, y_test, classes): the 5,000 labelled training and 8,000
    test images, uint8 [N, 3, 96, 96]. torchvision's STL10 checks the MD5 of all five
    files of the archive (3 GB with the 100,000 unlabelled images) every time a split is
    opened; the train split downloads and checks them, the test split then reuses that
    check instead of reading the 3 GB again."""
    x_train, y_train, classes = common.load_split("stl10", data_root, train=True, smoke=smoke, seed=seed)
    verified = contextlib.nullcontext()
    if not smoke:
        import torchvision

        verified = mock.patch.object(torchvision.datasets.STL10, "_check_integrity", return_value=True)
    with verified:
        x_test, y_test, _ = common.load_split("stl10", data_root, train=False, smoke=smoke, seed=seed)
    return x_train, y_train, x_test, y_test, classes


# ----------------------------------------------------------------------------
# Encoding (batched, inference mode, bf16 autocast on CUDA) and the embedding cache
# ----------------------------------------------------------------------------


def preprocess(x: torch.Tensor, pp: dict) -> torch.Tensor:
    """uint8 [B, 3, H, W] on device -> the model's input: resized to pp["size"] with its
    interpolation (bicubic for CLIP) and normalised with its mean/std, on the device for
    the full and the smoke model alike (no PIL round trip). STL-10 images are square, so
    CLIP's resize-shortest-side + centre-crop is exactly this resize."""
    assert x.shape[-1] == x.shape[-2], "square images expected (STL-10 is 96x96)"
    mode = "bicubic" if pp.get("interpolation", "bicubic") == "bicubic" else "bilinear"
    return common.resize_normalise(x, pp["size"], pp["mean"], pp["std"], mode=mode)


@torch.inference_mode()
def encode_images(model, images: torch.Tensor, pp: dict, device: torch.device, batch_size: int,
                  desc: str = "images", progress: bool = True) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> raw (unnormalised) image embeddings float32 [N, D] on CPU."""
    out = []
    for i in harness.progress(range(0, len(images), batch_size), desc=desc, disable=None if progress else True):
        x = preprocess(images[i:i + batch_size].to(device, non_blocking=True), pp)
        with common.autocast(device):
            out.append(model.encode_image(x).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def encode_texts(model, tokenizer, prompts: list[str], device: torch.device, batch_size: int) -> torch.Tensor:
    """list of M sentences -> raw text embeddings float32 [M, D] on CPU."""
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i:i + batch_size]).to(device)  # [B, 77] BPE ids
        with common.autocast(device):
            out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)


def model_key(args, device: torch.device) -> dict:
    """What determines the embeddings: the weights (the smoke model's and `none`'s random
    init depend on the seed), the activation they run through (QuickGELU or GELU) and the
    precision they are computed in (bf16 autocast moves them by ~1e-2)."""
    if args.smoke:
        return {"model": "smoke-clip", "config": SMOKE_CLIP, "seed": args.seed,
                "precision": common.compute_dtype(device)}
    key = {"model": args.model, "pretrained": args.pretrained, "precision": common.compute_dtype(device),
           "quick_gelu": clip_quick_gelu(args.model, args.pretrained)}
    return {**key, "seed": args.seed} if args.pretrained == "none" else key


def image_embeddings(model, images, pp, device, args, split: str, cached: harness.Cache) -> torch.Tensor:
    """Raw image embeddings [N, D] of one STL-10 split, computed once per model and data."""
    settings = {**model_key(args, device), "split": split, "n": len(images), "smoke_data": args.smoke,
                "data_seed": args.seed if args.smoke else None, "preprocess": pp}
    return cached(f"clip-images-{split}", settings, code=(encode_images, preprocess), compute=lambda: encode_images(
        model, images, pp, device, args.batch_size, desc=f"encode {split} images"))


def text_embeddings(model, tokenizer, classes, device, args, strategy: str, cached: harness.Cache) -> torch.Tensor:
    """Raw text embeddings [K classes, T prompts per class, D] of one prompt strategy."""
    prompts = build_prompts(strategy, classes)
    settings = {**model_key(args, device), "strategy": strategy, "prompts": prompts}

    def encode() -> torch.Tensor:
        flat = [p for per_class in prompts for p in per_class]
        return encode_texts(model, tokenizer, flat, device, args.batch_size).view(len(classes), len(prompts[0]), -1)
    return cached(f"clip-text-{strategy}", settings, encode, code=(encode_texts,))


@dataclass(frozen=True)
class Embeddings:
    """What every experiment reads: raw (unnormalised) CLIP embeddings float32 of both
    labelled STL-10 splits and of every prompt strategy, with the labels."""
    img_train: torch.Tensor                 # [5000, D]
    y_train: torch.Tensor                   # [5000] class indices
    img_test: torch.Tensor                  # [8000, D]
    y_test: torch.Tensor                    # [8000]
    text: dict[str, torch.Tensor]           # strategy -> [K classes, T prompts per class, D]
    classes: list[str]                      # K = 10 STL-10 class names


# ----------------------------------------------------------------------------
# The algorithms (small, pure functions; tests check each against known answers)
# ----------------------------------------------------------------------------


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def class_embeddings(text_raw: torch.Tensor) -> torch.Tensor:
    """[K, T, D] raw prompt embeddings -> [K, D] unit class embeddings: normalise every
    prompt, average over the T templates, renormalise (CLIP paper, Sec. 3.1.4 and its
    prompt-engineering notebook), so no template dominates through its norm."""
    return l2n(l2n(text_raw).mean(dim=1))


def zero_shot_scores(images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [N, K] of (normalised) images with unit class embeddings."""
    return l2n(images) @ cls.T


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> np.ndarray:
    correct = np.bincount(labels[pred == labels].numpy(), minlength=n_classes)
    total = np.bincount(labels.numpy(), minlength=n_classes)
    return correct / np.maximum(total, 1)


def modality_gap(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Gap vector of Liang et al. 2022: centroid(images) - centroid(texts), [D]. Pass
    normalised embeddings for the paper's gap, raw ones for the unnormalised variant."""
    return images.float().mean(0) - texts.float().mean(0)


def orthogonal_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R = argmin_{R^T R = I} ||x R - y||_F (Schonemann 1966), via scipy's SVD solution."""
    r, _ = orthogonal_procrustes(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return r


def fit_procrustes(img_train: torch.Tensor, y_train: torch.Tensor, cls: torch.Tensor) -> np.ndarray:
    """R [D, D] mapping each normalised TRAIN image embedding onto the text embedding of
    its class. Takes only training data: the test split can not leak into R."""
    return orthogonal_map(l2n(img_train).numpy(), cls[y_train].numpy())


def shift_along_gap(images: torch.Tensor, texts: torch.Tensor, direction: torch.Tensor, lam: float):
    """Liang et al.'s embedding shift (their shift_features notebook): images move by
    -lam/2 and texts by +lam/2 along the unit gap direction, then both are renormalised.
    lam = ||gap|| closes the centroid distance before renormalisation; lam < 0 widens it."""
    u = direction / direction.norm()
    return l2n(images - 0.5 * lam * u), l2n(texts + 0.5 * lam * u)


# ----------------------------------------------------------------------------
# 2-D views: coordinates computed here, drawn by reports/task4.py
# ----------------------------------------------------------------------------


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def methods(args) -> list[str]:
    return ["tsne", "umap"] if args.embed == "both" else [args.embed]


def joint_coordinates(images: torch.Tensor, labels: torch.Tensor, cls: torch.Tensor, args) -> dict:
    """The assignment's small sample (--tsne-small) and a larger one (--tsne-large) of
    `images`, each embedded by every --embed method in ONE fit together with the K class
    prompts `cls`, so distances between modalities compare. Plot data: y_<size> (labels),
    <method>_<size> ([n + K, 2], the prompts last)."""
    out = {}
    for size, seed in (("small", args.seed), ("large", args.seed + 1)):
        idx = sample_indices(len(labels), getattr(args, f"tsne_{size}"), seed)
        out[f"y_{size}"] = labels[idx].numpy()
        for m in methods(args):
            out[f"{m}_{size}"] = common.embed_2d(torch.cat([images[idx], cls]).numpy(), m, args.seed)
    return out


def pca_2d(points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> ([N, 2] coordinates on the first two principal axes, [2] fraction of the
    variance along each). A linear map: distances in the plane keep the embedding's units."""
    x = points.double().numpy()
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T, (s**2 / (s**2).sum())[:2]


# ----------------------------------------------------------------------------
# Experiment 1: zero-shot accuracy per prompt strategy
# ----------------------------------------------------------------------------


def zeroshot(emb: Embeddings, args) -> tuple[dict, dict]:
    K, y = len(emb.classes), emb.y_test
    top1, top5, per_class, preds = {}, {}, {}, {}
    for s in STRATEGIES:
        scores = zero_shot_scores(emb.img_test, class_embeddings(emb.text[s]))
        top1[s], top5[s] = topk_accuracy(scores, y, 1), topk_accuracy(scores, y, 5)
        preds[s] = scores.argmax(1)
        per_class[s] = per_class_accuracy(preds[s], y, K)
        print(f"  {s:<12} ({emb.text[s].shape[1]:>2} prompt(s)/class)  top-1 {top1[s]:.4f}  top-5 {top5[s]:.4f}")
    best = max(STRATEGIES, key=lambda s: top1[s])
    return {"top1": top1, "top5": top5, "per_class_top1": {s: per_class[s].tolist() for s in STRATEGIES},
            "best_strategy": best, "best_top1": top1[best], "n_test": len(y)}, \
        {"classes": emb.classes, "confusion": common.confusion_matrix(y.numpy(), preds[best].numpy(), K)}


# ----------------------------------------------------------------------------
# Experiment 2: the modality gap
# ----------------------------------------------------------------------------


def random_pair_cosines(x: torch.Tensor, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Cosines of up to n_pairs random pairs (i != j) of rows of unit-norm x."""
    i, j = rng.integers(0, len(x), (2, n_pairs))
    keep = i != j
    return (x[i[keep]] * x[j[keep]]).sum(1).numpy()


def separation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Scale-free separation of two point sets a [N, D] and b [M, D]: the distance between
    their centroids over the RMS distance of a point to its own set's centroid (the mean
    of the two sets' mean squared spreads, so 8,000 images do not drown 10 prompts).
    Scaling both sets alike leaves it unchanged, so raw and normalised embeddings compare:
    > 1 means the modalities sit further apart than each one is wide."""
    a, b = a.float(), b.float()
    spread = (0.5 * ((a - a.mean(0)).square().sum(1).mean() + (b - b.mean(0)).square().sum(1).mean())).sqrt()
    return float(modality_gap(a, b).norm() / spread)


def gap(emb: Embeddings, args) -> tuple[dict, dict]:
    img, y = l2n(emb.img_test), emb.y_test
    cls = class_embeddings(emb.text[args.prompt])                     # [K, D] unit
    text_raw = emb.text[args.prompt].mean(1)                          # [K, D] unnormalised class means
    g, g_raw = float(modality_gap(img, cls).norm()), float(modality_gap(emb.img_test, text_raw).norm())
    sep, sep_raw = separation(img, cls), separation(emb.img_test, text_raw)
    rng = np.random.default_rng(args.seed)

    sims = img @ cls.T                                                # [N, K]
    cos = {"matched": sims[torch.arange(len(y)), y].numpy(),
           "unmatched": sims[F.one_hot(y, len(emb.classes)) == 0].numpy(),
           "image_image": random_pair_cosines(img, args.pairs, rng),
           # every template of every class: [K*80, D]
           "text_text": random_pair_cosines(l2n(emb.text["ensemble"].flatten(0, 1)), args.pairs, rng)}

    # 2-D views: the joint ones of the normalised embeddings; for gap_raw_vs_normalised the
    # small sample once more, raw (PCA and each --embed method) and normalised (PCA; its
    # t-SNE/UMAP panels are the small joint views: the same points, the same fit).
    views = joint_coordinates(img, y, cls, args)
    small = sample_indices(len(y), args.tsne_small, args.seed)
    raw = torch.cat([emb.img_test[small], text_raw])
    views["pca_raw"], views["pca_raw_var"] = pca_2d(raw)
    views["pca_normalised"], views["pca_normalised_var"] = pca_2d(torch.cat([img[small], cls]))
    for m in methods(args):
        views[f"raw_{m}"] = common.embed_2d(raw.numpy(), m, args.seed)

    image_norm = float(emb.img_test.norm(dim=1).mean())
    text_norm = float(emb.text[args.prompt].norm(dim=-1).mean())
    gap_raw_relative = g_raw / (0.5 * (image_norm + text_norm))       # in units of a typical raw norm
    print(f"  gap (normalised) {g:.4f}   gap (raw) {g_raw:.4f} = {gap_raw_relative:.3f} of the mean "
          f"raw norm   separation (gap / spread) normalised {sep:.3f}, raw {sep_raw:.3f}")
    print(f"  matched cos {cos['matched'].mean():.3f}   image-image {cos['image_image'].mean():.3f}   "
          f"text-text {cos['text_text'].mean():.3f}")
    return {"prompt": args.prompt, "gap_normalised": g, "gap_raw": g_raw, "gap_raw_relative": gap_raw_relative,
            "separation_normalised": sep, "separation_raw": sep_raw,
            "image_norm_raw_mean": image_norm, "text_norm_raw_mean": text_norm,
            **{f"cos_{k}_mean": float(v.mean()) for k, v in cos.items()},
            "n_small": min(args.tsne_small, len(y)), "n_large": min(args.tsne_large, len(y))}, \
        {"classes": emb.classes, **views, **{f"cos_{k}": v for k, v in cos.items()}}


# ----------------------------------------------------------------------------
# Experiment 3: orthogonal Procrustes, fitted on train, scored on test
# ----------------------------------------------------------------------------


def procrustes(emb: Embeddings, args) -> tuple[dict, dict]:
    """Peer repositories fit R on the very test images they then score, which turns the
    test labels into training targets. Here R sees only the train split's images and
    labels (fit_procrustes takes nothing else); test images are only rotated and scored."""
    img_test, y_test = l2n(emb.img_test), emb.y_test
    out, rotations = {}, {}
    for s in STRATEGIES:
        cls = class_embeddings(emb.text[s])
        R = rotations[s] = fit_procrustes(emb.img_train, emb.y_train, cls)  # [D, D], train only
        aligned = img_test @ torch.from_numpy(R).float()              # rows stay unit norm
        out[s] = {"top1_before": topk_accuracy(img_test @ cls.T, y_test),
                  "top1_after": topk_accuracy(aligned @ cls.T, y_test),
                  "gap_before": float(modality_gap(img_test, cls).norm()),
                  "gap_after": float(modality_gap(aligned, cls).norm()),
                  "orthogonality_error": float(np.linalg.norm(R.T @ R - np.eye(len(R))))}
        print(f"  {s:<12} top-1 {out[s]['top1_before']:.4f} -> {out[s]['top1_after']:.4f}   "
              f"gap {out[s]['gap_before']:.3f} -> {out[s]['gap_after']:.3f}   "
              f"||R^T R - I|| {out[s]['orthogonality_error']:.1e}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    np.savez(Path(args.out) / "procrustes_rotations.npz", **rotations)

    # Context: a linear probe uses the same train labels with an unconstrained map.
    probe = common.linear_probe(l2n(emb.img_train).numpy(), emb.y_train.numpy(), img_test.numpy(),
                                y_test.numpy(), seed=args.seed)
    print(f"  linear probe on the same train split: top-1 {probe['test_acc']:.4f}")

    aligned = img_test @ torch.from_numpy(rotations[args.prompt]).float()
    return {**out, "linear_probe_top1": probe["test_acc"], "n_train": len(emb.y_train),
            "max_orthogonality_error": max(out[s]["orthogonality_error"] for s in STRATEGIES)}, \
        {"classes": emb.classes, **joint_coordinates(aligned, y_test, class_embeddings(emb.text[args.prompt]), args)}


# ----------------------------------------------------------------------------
# Experiment 4: shifting along the gap (Liang et al. 2022, Table 1) and centring
# ----------------------------------------------------------------------------


def gap_shift(emb: Embeddings, args) -> tuple[dict, dict]:
    """The gap direction comes from the TRAIN images and the class prompts; lambda is
    picked on train too, so the 'selected' accuracy is an honest test number (the
    best-on-test one is the oracle the paper reports)."""
    lambdas = np.linspace(args.shift_min, args.shift_max, args.shift_steps)
    img_tr, img_te = l2n(emb.img_train), l2n(emb.img_test)
    out, curves = {}, {}
    for s in STRATEGIES:
        cls = class_embeddings(emb.text[s])
        direction = modality_gap(img_tr, cls)                         # [D], train images only
        acc_te, acc_tr, signed_gap = [], [], []
        for lam in lambdas:
            i_te, c = shift_along_gap(img_te, cls, direction, float(lam))
            i_tr, _ = shift_along_gap(img_tr, cls, direction, float(lam))
            acc_te.append(topk_accuracy(i_te @ c.T, emb.y_test))
            acc_tr.append(topk_accuracy(i_tr @ c.T, emb.y_train))
            d = modality_gap(i_te, c)                                 # resulting gap on test
            signed_gap.append(float(d.norm() * torch.sign(d @ direction)))  # < 0 once it crosses over
        sel, best = int(np.argmax(acc_tr)), int(np.argmax(acc_te))
        # Baseline: subtract each modality's own centroid (images: train centroid), renormalise.
        centred = topk_accuracy(l2n(img_te - img_tr.mean(0)) @ l2n(cls - cls.mean(0)).T, emb.y_test)
        out[s] = {"top1_unshifted": topk_accuracy(img_te @ cls.T, emb.y_test),
                  "gap_unshifted": float(direction.norm()),
                  "lambda_selected_on_train": float(lambdas[sel]), "top1_selected": acc_te[sel],
                  "lambda_best_on_test": float(lambdas[best]), "top1_best_on_test": acc_te[best],
                  "top1_centred": centred}
        curves.update({f"top1_{s}": acc_te, f"signed_gap_{s}": signed_gap})
        print(f"  {s:<12} top-1 {out[s]['top1_unshifted']:.4f}  shifted (lambda {lambdas[sel]:+.2f} from train) "
              f"{acc_te[sel]:.4f}  oracle {acc_te[best]:.4f}  centred {centred:.4f}")
    return {**out, "lambdas": lambdas.tolist()}, curves


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def check_model(args) -> None:
    """--model must be an open_clip model and --pretrained one of its tags, none or a file."""
    import open_clip

    if args.model not in open_clip.list_models():
        near = [m for m in open_clip.list_models() if m.lower().startswith(args.model.lower()[:4])][:8]
        raise harness.UserError(f"unknown --model {args.model!r}; open_clip knows e.g. "
                                f"{', '.join(near or open_clip.list_models()[:8])} (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(args.model)
    if not args.smoke and args.pretrained not in tags + ["none"] and not os.path.isfile(args.pretrained):
        raise harness.UserError(f"--pretrained {args.pretrained!r} is neither an open_clip tag for {args.model} "
                                f"({', '.join(tags[:6]) or 'no tags'}), none (random weights), nor a checkpoint file")


def main(argv=None) -> dict:
    parser = build_parser()
    args = harness.parse_args(parser, argv, smoke=SMOKE, check=check_args)
    with harness.user_errors(parser.prog, batch_flag="--batch-size"):
        if args.replot or len(args.seeds) > 1:  # figures only (no model, no data), or one run per seed
            return harness.redirect(report, args, argv, main)
        check_model(args)
        device = common.pick_device(args.device, args.precision)
        common.seed_everything(args.seed)
        model, tokenizer, pp = load_clip(args.model, args.pretrained, args.smoke, device)
        x_train, y_train, x_test, y_test, classes = load_stl10(args.data_root, args.smoke, args.seed)
        weights = "smoke CLIP (random init)" if args.smoke else \
            f"{args.model} / {'random weights' if args.pretrained == 'none' else args.pretrained}"
        print(f"model: {weights}, activation {activation_name(model)}, input {pp['size']}; "
              f"STL-10: {len(y_train)} train, {len(y_test)} test images", flush=True)

        cached = harness.Cache(args.out, args.fresh)
        emb = Embeddings(img_train=image_embeddings(model, x_train, pp, device, args, "train", cached), y_train=y_train,
                         img_test=image_embeddings(model, x_test, pp, device, args, "test", cached), y_test=y_test,
                         text={s: text_embeddings(model, tokenizer, classes, device, args, s, cached)
                               for s in STRATEGIES}, classes=list(classes))
        return harness.run(report, args, device, {
            "zeroshot": lambda: zeroshot(emb, args),
            "gap": lambda: gap(emb, args),
            "procrustes": lambda: procrustes(emb, args),
            "gap_shift": lambda: gap_shift(emb, args),
        })


if __name__ == "__main__":
    main()
