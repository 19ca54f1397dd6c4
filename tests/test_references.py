"""Known-answer tests against the reference implementations (issue 20).

No real weights reach this machine, so the evidence that Tasks 1, 2 and 4 compute what
they say is that each method equals a trusted implementation of the same algorithm on
the same (random) weights. Every reference below is written here from the paper or
from the reference code's definition (open_clip's own functions are called directly):

Task 2  attention rollout     jacobgil/vit-explain vit_rollout.py rollout(), as published
                              and row-normalised (its issue 16); Abnar & Zuidema's
                              compute_joint_attention (samiraabnar/attention_flow)
        preprocessing         transformers' ViTImageProcessor (torchvision backend) and
                              ViTImageProcessorPil, 32 px -> 224 px
        mean attention dist.  a direct per-query computation; probing-vits' notebook
                              (sayakpaul/probing-vits, mean-attention-distance-1k.ipynb)
Task 4  class embeddings      open_clip.build_zero_shot_classifier, 1, 2 and 80 templates
        preprocessing         open_clip.image_transform(224, is_train=False) on PIL images
        gap shift             Liang et al. 2022's move_features (Modality-Gap repository,
                              Table_1_Implications_CLIP_Zero_Shot/shifting/shift_features.ipynb)
Task 1  cut shortcuts         torchvision's own BasicBlock/Bottleneck forward with the
                              shortcut (identity or downsample) replaced by zeros
        CifarResNet           He et al. 2016's parameter counts (Table 6)

Offline, CPU, one thread: random weights throughout. Measured differences are printed
(`pytest -s`) so the README can quote them.
"""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import architecture
import harness
import Task2
import Task4

CPU = torch.device("cpu")


def smooth_image(size: int, seed: int) -> np.ndarray:
    """uint8 [size, size, 3]: per channel a sum of two low-frequency plane waves (at most 2
    cycles across the image), so upscaling has no edges to disagree about."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        v = 0.5 * np.ones_like(xx)
        for _ in range(2):
            fx, fy = rng.uniform(-2, 2, size=2)
            v += 0.2 * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        channels.append(v)
    return np.clip(np.stack(channels, -1) * 255, 0, 255).round().astype(np.uint8)


# ============================================================================
# Task 2: attention rollout
# ============================================================================


def vit_explain_rollout(attentions: list[torch.Tensor], discard_ratio: float, head_fusion: str,
                        keepdim: bool) -> torch.Tensor:
    """jacobgil/vit-explain's rollout() for ONE image (each layer [1, heads, T, T]), step by step:
    fuse the heads; zero the lowest `discard_ratio` of the T*T weights except flat index 0
    (CLS->CLS); a = (A + I) / 2; divide by the row sums; result = a @ result.

    keepdim=False is the code as published: `a / a.sum(dim=-1)` divides a [1, T, T] tensor by a
    [1, T] one, which broadcasts over the LAST axis, so entry (i, j) is divided by row j's sum
    (vit-explain issue 16). Where every row sums to 1 (mean fusion, nothing discarded) that is
    harmless; otherwise the rows are not normalised. keepdim=True divides row i by its own sum.
    Returns the [1, T, T] rollout (vit-explain then takes result[0, 0, 1:] as the mask)."""
    t = attentions[0].size(-1)
    result = torch.eye(t)
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        elif head_fusion == "max":
            fused = attention.max(dim=1)[0]
        else:
            fused = attention.min(dim=1)[0]
        flat = fused.view(fused.size(0), -1)        # a view: zeroing it zeroes `fused`
        _, lowest = flat.topk(int(flat.size(-1) * discard_ratio), -1, largest=False)
        lowest = lowest[lowest != 0]                # CLS->CLS is never dropped
        flat[0, lowest] = 0
        a = (fused + torch.eye(t)) / 2
        a = a / (a.sum(dim=-1, keepdim=True) if keepdim else a.sum(dim=-1))
        result = a @ result
    return result


def joint_attention(att_mat: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema 2020's compute_joint_attention (add_residual=True): att_mat [L, T, T]
    (heads averaged); A + I, rows renormalised; J_0 = A_0, J_i = A_i J_{i-1}. Returns [L, T, T]."""
    aug = att_mat + np.eye(att_mat.shape[1])[None]
    aug = aug / aug.sum(axis=-1)[..., None]
    joint = np.zeros(aug.shape)
    joint[0] = aug[0]
    for i in range(1, len(aug)):
        joint[i] = aug[i] @ joint[i - 1]
    return joint


def vit_attentions(config, image_size: int, n_images: int = 2) -> list[torch.Tensor]:
    """A random ViT's attention weights, L tensors [B, heads, T, T] float32, straight from
    transformers (eager attention, output_attentions=True) on smooth images."""
    torch.manual_seed(0)
    model = Task2.ViTForImageClassification(config).eval()
    model.set_attn_implementation("eager")
    pixels = torch.stack([torch.tensor(smooth_image(image_size, s)).permute(2, 0, 1) for s in range(n_images)])
    with torch.no_grad():
        out = model(pixels.float() / 127.5 - 1, output_attentions=True)
    return [a.float() for a in out.attentions]


@pytest.fixture(scope="module")
def attentions() -> dict[str, list[torch.Tensor]]:
    """The smoke ViT's (4x4 grid, T = 17, std-0.2 weights: peaked attention) and a ViT-B/16-shaped
    token grid (224 px, 16 px patches: 14x14, T = 197) at small width with transformers' default
    init (std 0.02: nearly uniform attention), 4 layers x 4 heads."""
    b16_grid = Task2.ViTConfig(image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=4,
                               num_attention_heads=4, intermediate_size=128)
    return {"smoke": vit_attentions(Task2.smoke_vit_config(), 32),
            "b16_grid": vit_attentions(b16_grid, 224)}


@pytest.mark.parametrize("which", ["smoke", "b16_grid"])
def test_rollout_mean_fusion_equals_vit_explain_and_abnar_zuidema(attentions, which):
    """Mean fusion, discard_ratio 0: Task 2's rollout equals vit-explain's rollout() AS PUBLISHED
    (its missing keepdim is harmless when rows sum to 1) and Abnar & Zuidema's joint attention
    of the last layer. Tolerance: 1e-6 absolute (float32 products of <= 4 stochastic matrices)."""
    attns = attentions[which]
    got = Task2.attention_rollout(attns, "mean", 0.0)
    worst = 0.0
    for i in range(len(got)):
        published = vit_explain_rollout([a[i:i + 1].clone() for a in attns], 0.0, "mean", keepdim=False)[0]
        joint = joint_attention(np.stack([a[i].double().mean(0).numpy() for a in attns]))[-1]
        torch.testing.assert_close(got[i], published, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[i].double().numpy(), joint, rtol=0, atol=1e-6)
        # vit-explain's mask: the CLS row over the patches, scaled to max 1
        mask = published[0, 1:] / published[0, 1:].max()
        torch.testing.assert_close(got[i, 0, 1:] / got[i, 0, 1:].max(), mask, rtol=0, atol=1e-6)
        worst = max(worst, (got[i] - published).abs().max().item(), float(np.abs(got[i].numpy() - joint).max()))
    print(f"\n[rollout mean/0 {which}] max |Task2 - vit-explain|, |Task2 - Abnar&Zuidema| = {worst:.2e}")


@pytest.mark.parametrize("which", ["smoke", "b16_grid"])
@pytest.mark.parametrize("fusion, discard", [("max", 0.9), ("min", 0.9), ("mean", 0.9), ("max", 0.0), ("min", 0.0)])
def test_rollout_equals_row_normalised_vit_explain(attentions, which, fusion, discard):
    """Any fusion, discard 0.9 (vit-explain's default) or 0: Task 2's rollout equals vit-explain's
    rollout() with the row sums taken with keepdim=True (the fix of its issue 16), to 1e-6.
    vit-explain as published divides column j by row j's sum here: its max/min (and discarded)
    maps differ, and this test measures by how much (printed for the README)."""
    attns = attentions[which]
    got = Task2.attention_rollout(attns, fusion, discard)
    worst, published_gap = 0.0, 0.0
    for i in range(len(got)):
        fixed = vit_explain_rollout([a[i:i + 1].clone() for a in attns], discard, fusion, keepdim=True)[0]
        torch.testing.assert_close(got[i], fixed, rtol=0, atol=1e-6)
        worst = max(worst, (got[i] - fixed).abs().max().item())
        published = vit_explain_rollout([a[i:i + 1].clone() for a in attns], discard, fusion, keepdim=False)[0]
        m_fixed, m_pub = fixed[0, 1:] / fixed[0, 1:].max(), published[0, 1:] / published[0, 1:].max()
        published_gap = max(published_gap, (m_fixed - m_pub).abs().max().item())
    assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)  # still row-stochastic
    assert published_gap > 1e-3  # the published division really gives another picture here
    print(f"\n[rollout {fusion}/{discard} {which}] max |Task2 - vit-explain(keepdim)| = {worst:.2e}; "
          f"max-normalised CLS maps, fixed vs published vit-explain: max diff {published_gap:.3f}")


# ============================================================================
# Task 2: preprocessing against transformers' ViTImageProcessor
# ============================================================================


def test_script_processor_is_the_default_vit_processor():
    """vit_b16_processor (google/vit-base-patch16-224's preprocessor_config.json) has the settings
    of transformers' default ViTImageProcessor: 224x224, bilinear, mean = std = 0.5."""
    from transformers import ViTImageProcessor

    ours, default = Task2.processor_settings(Task2.vit_b16_processor()), Task2.processor_settings(ViTImageProcessor())
    assert ours["size"] == default["size"] == (224, 224)
    assert ours["mode"] == default["mode"] == "bilinear"
    for k in ("mean", "std"):
        torch.testing.assert_close(ours[k], default[k], rtol=0, atol=0)
        torch.testing.assert_close(ours[k], torch.full((3,), 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["ViTImageProcessor", "ViTImageProcessorPil"])
def test_preprocess_upscaling_matches_the_vit_image_processor(backend):
    """32 px smooth images -> 224 px (CIFAR-10 into ViT-B/16): Task2.preprocess is at most 0.008
    from transformers' processor on the [-1, 1] scale, for its default (torchvision) backend and
    for the PIL backend (transformers 4.x's, a PIL.Image.BILINEAR resize of uint8 pixels:
    its rounding alone is up to 1/255 = 0.004 on this scale)."""
    import transformers
    from PIL import Image

    proc = getattr(transformers, backend)()  # the default ViT config: 224, bilinear, rescale, 0.5/0.5
    images = [smooth_image(32, seed) for seed in range(3)]
    want = proc(images=[Image.fromarray(im) for im in images], return_tensors="pt").pixel_values
    x = torch.stack([torch.tensor(im).permute(2, 0, 1) for im in images])  # uint8 [3, 3, 32, 32]
    got = Task2.preprocess(x, Task2.processor_settings(proc), CPU)
    assert got.shape == want.shape == (3, 3, 224, 224)
    diff = (got - want).abs()
    print(f"\n[preprocess 32->224 vs {backend}] max {diff.max():.4f}, mean {diff.mean():.5f} on [-1, 1]")
    assert diff.max().item() <= 0.008


# ============================================================================
# Task 2: mean attention distance
# ============================================================================


def direct_mean_attention_distance(attn: np.ndarray, grid: tuple[int, int], patch_size: int,
                                   renormalise: bool) -> np.ndarray:
    """Mean attention distance (Dosovitskiy et al. 2021, App. D.7), one query at a time: query
    patch q = token 1 + q sits at row q // cols, column q % cols; its distance is the attention-
    weighted mean over patch keys of patch_size * |(dr, dc)|; the head's value is the mean over
    the N patch queries. renormalise=True first divides each query's patch weights by their sum
    (Task 2's definition: CLS dropped, the rest made a distribution); False keeps them as sliced
    (probing-vits' compute_mean_attention_dist, whose weights sum to 1 - attention to CLS).
    attn [B, heads, T, T] -> [B, heads] in pixels."""
    rows, cols = grid
    n = rows * cols
    b, h = attn.shape[:2]
    out = np.zeros((b, h))
    for i in range(b):
        for j in range(h):
            total = 0.0
            for q in range(n):
                w = attn[i, j, 1 + q, 1:].astype(np.float64)
                if renormalise:
                    w = w / w.sum()
                qr, qc = divmod(q, cols)
                d = sum(w[k] * patch_size * math.hypot(qr - k // cols, qc - k % cols) for k in range(n))
                total += d
            out[i, j] = total / n
    return out


def probing_vits_mean_attention_distance(attn: np.ndarray, patch_size: int) -> np.ndarray:
    """probing-vits' notebook as written: slice off CLS rows and columns, weight its distance
    matrix (i // length, i % length grid, square grids only), sum over keys, mean over queries."""
    a = attn[..., 1:, 1:]
    n = a.shape[-1]
    length = int(np.sqrt(n))
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = patch_size * np.linalg.norm([i // length - j // length, i % length - j % length])
    return (a * d[None, None]).sum(-1).mean(-1)


def test_mean_attention_distance_is_the_renormalised_direct_computation(attentions):
    """On the smoke ViT's real (random-weight) attention: Task 2's value equals the direct per-query
    computation with each query's patch weights renormalised (rtol 1e-5). Against probing-vits
    (no renormalisation) it is larger by exactly the lost CLS mass: probing = mean_q (1 - a_q,CLS) d_q."""
    grid, ps = (4, 4), 8
    for layer, a in enumerate(attentions["smoke"]):
        got = Task2.mean_attention_distance(a, grid, ps).double().numpy()
        direct = direct_mean_attention_distance(a.numpy(), grid, ps, renormalise=True)
        np.testing.assert_allclose(got, direct, rtol=1e-5)
        probing = probing_vits_mean_attention_distance(a.double().numpy(), ps)
        np.testing.assert_allclose(probing, direct_mean_attention_distance(a.numpy(), grid, ps, False), rtol=1e-6)
        assert (got >= probing - 1e-9).all()
        ratio = got / probing
        cls_mass = a[:, :, 1:, 0].double().numpy()  # [B, heads, N] attention of each patch query to CLS
        print(f"\n[mean attention distance, smoke ViT layer {layer}] Task2 / probing-vits: "
              f"{ratio.min():.3f}-{ratio.max():.3f}x; patch->CLS attention {cls_mass.min():.3f}-{cls_mass.max():.3f}")


def test_mean_attention_distance_on_a_non_square_grid_and_the_b16_grid(attentions):
    """Row-major geometry on a 3x5 grid (rows and columns not interchangeable; Dirichlet attention
    rows, CLS included), and the 14x14 grid of 16 px patches of ViT-B/16 (random ViT, 197 tokens):
    Task 2 equals the direct computation to rtol 1e-5; the ratio to probing-vits is printed."""
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.dirichlet(np.full(16, 0.3), size=(2, 3, 16)), dtype=torch.float32)  # T = 1 + 15
    np.testing.assert_allclose(Task2.mean_attention_distance(a, (3, 5), 10).double().numpy(),
                               direct_mean_attention_distance(a.numpy(), (3, 5), 10, True), rtol=1e-5)
    ratios = []
    for a in attentions["b16_grid"]:
        a = a[:1, :2]  # one image, two heads: the direct loop is 196 x 196 per head
        got = Task2.mean_attention_distance(a, (14, 14), 16).double().numpy()
        np.testing.assert_allclose(got, direct_mean_attention_distance(a.numpy(), (14, 14), 16, True), rtol=1e-5)
        ratios.append(got / probing_vits_mean_attention_distance(a.double().numpy(), 16))
    print(f"\n[mean attention distance, 14x14 grid, std-0.02 init] Task2 / probing-vits: "
          f"{np.min(ratios):.4f}-{np.max(ratios):.4f}x")


# ============================================================================
# Task 4: class embeddings against open_clip.build_zero_shot_classifier
# ============================================================================

# openai/CLIP data/prompts.md, section STL10 (written here, not taken from Task4).
STL10_TEMPLATES = ["a photo of a {}.", "a photo of the {}."]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@pytest.fixture(scope="module")
def smoke_clip():
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**Task4.SMOKE_CLIP).eval(), open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def clip_b32():
    """ViT-B-32 with random weights through Task4.load_clip (QuickGELU, open_clip's
    preprocessing config of the model): (model, tokenizer, pp)."""
    torch.manual_seed(0)
    return Task4.load_clip("ViT-B-32", "none", smoke=False, device=CPU)


def script_class_embeddings(model, tokenizer, strategy: str, classes: list[str], smoke: bool, tmp_path):
    """Task 4's own path: build_prompts -> text_embeddings ([K, T, D], batches of 64) -> class_embeddings."""
    args = SimpleNamespace(smoke=smoke, seed=0, batch_size=64, model="ViT-B-32", pretrained="none")
    raw = Task4.text_embeddings(model, tokenizer, classes, CPU, args, strategy, harness.Cache(tmp_path))
    return Task4.class_embeddings(raw)


@pytest.mark.parametrize("strategy, n_templates", [("photo", 1), ("clip_stl10", 2), ("ensemble", 80)])
def test_class_embeddings_equal_open_clip_zero_shot_classifier(smoke_clip, tmp_path, strategy, n_templates):
    """The small random CLIP (Task 4's smoke model), all ten STL-10 classes: Task 4's class
    embeddings equal open_clip's build_zero_shot_classifier (normalise each prompt, average,
    renormalise; its [D, K] transposed) for 1, 2 and 80 templates, to 1e-6 absolute."""
    from open_clip import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    model, tokenizer = smoke_clip
    templates = {"photo": ["a photo of a {}."], "clip_stl10": STL10_TEMPLATES,
                 "ensemble": OPENAI_IMAGENET_TEMPLATES}[strategy]
    assert len(templates) == n_templates
    want = build_zero_shot_classifier(model, tokenizer, STL10_CLASSES, templates, device="cpu").T  # [K, D]
    got = script_class_embeddings(model, tokenizer, strategy, STL10_CLASSES, True, tmp_path)
    assert got.shape == want.shape == (10, Task4.SMOKE_CLIP["embed_dim"])
    diff = (got - want).abs().max().item()
    print(f"\n[class embeddings {strategy}, {n_templates} templates, smoke CLIP] max diff {diff:.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy, templates", [("photo", ["a photo of a {}."]), ("clip_stl10", STL10_TEMPLATES)])
def test_class_embeddings_equal_open_clip_on_vit_b32(clip_b32, tmp_path, strategy, templates):
    """The same on the real architecture (ViT-B-32, random weights), three classes, to 1e-6."""
    from open_clip import build_zero_shot_classifier

    model, tokenizer, _ = clip_b32
    classes = ["cat", "ship", "truck"]
    want = build_zero_shot_classifier(model, tokenizer, classes, templates, device="cpu").T
    got = script_class_embeddings(model, tokenizer, strategy, classes, False, tmp_path)
    diff = (got - want).abs().max().item()
    print(f"\n[class embeddings {strategy}, ViT-B-32] max diff {diff:.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ============================================================================
# Task 4: preprocessing against open_clip.image_transform
# ============================================================================


def test_preprocess_matches_open_clip_image_transform(clip_b32):
    """Smooth 96 px STL-10-sized images -> 224 px: Task4.preprocess with ViT-B-32's preprocessing
    config (bicubic, OpenAI mean/std) against open_clip.image_transform(224, is_train=False) on
    PIL images (resize shortest side, bicubic, centre crop, ToTensor, Normalize). PIL's bicubic
    kernel (a = -0.5) is not torch's (a = -0.75) and PIL rounds to uint8, so they are not equal:
    max |diff| <= 0.05 and mean <= 0.005 on the normalised scale."""
    import open_clip
    from PIL import Image

    _, _, pp = clip_b32
    transform = open_clip.image_transform(224, is_train=False)
    images = [smooth_image(96, seed) for seed in range(3)]
    want = torch.stack([transform(Image.fromarray(im)) for im in images])
    got = Task4.preprocess(torch.stack([torch.tensor(im).permute(2, 0, 1) for im in images]), pp)
    assert got.shape == want.shape == (3, 3, 224, 224)
    diff = (got - want).abs()
    print(f"\n[CLIP preprocess 96->224 vs open_clip.image_transform] max {diff.max():.4f}, mean {diff.mean():.5f}")
    assert diff.max().item() <= 0.05 and diff.mean().item() <= 0.005


# ============================================================================
# Task 4: the gap shift against Liang et al.'s move_features
# ============================================================================


def liang_move_features(image_features, text_features, delta, direction_vec=None):
    """Liang et al. 2022 (shift_features.ipynb, move_features, one delta): the direction is the
    unit gap mean(images) - mean(texts) unless given; texts move by +delta/2 and images by
    -delta/2 along it; each row is renormalised. Returns (images, texts)."""
    if direction_vec is None:
        gap = image_features.mean(axis=0) - text_features.mean(axis=0)
        direction_vec = gap / gap.norm()
    texts = text_features + 0.5 * delta * direction_vec
    texts = texts / texts.norm(dim=-1, keepdim=True)
    images = image_features - 0.5 * delta * direction_vec
    images = images / images.norm(dim=-1, keepdim=True)
    return images, texts


def test_shift_along_gap_equals_liang_move_features():
    """Unit image and text features in two cones (D = 64): for Liang's whole delta grid
    (-5 to 4.75 in steps of 0.25), Task4.shift_along_gap with the modality gap as direction
    equals move_features with its own direction, and with a direction from other data
    (their MSCOCO -> downstream case; Task 4 gets it unnormalised), to 1e-6. The resulting
    gap (their gap_distance) agrees too."""
    g = torch.Generator().manual_seed(0)
    offset = torch.randn(64, generator=g)
    img = Task4.l2n(torch.randn(50, 64, generator=g) + offset)
    txt = Task4.l2n(torch.randn(10, 64, generator=g) - offset)
    other = torch.randn(64, generator=g)
    worst = 0.0
    for delta in np.arange(-5, 5, 0.25):
        i_ref, t_ref = liang_move_features(img, txt, float(delta))
        i_got, t_got = Task4.shift_along_gap(img, txt, Task4.modality_gap(img, txt), float(delta))
        torch.testing.assert_close(i_got, i_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(t_got, t_ref, rtol=0, atol=1e-6)
        gap_distance = (t_ref.mean(0) - i_ref.mean(0)).norm().item()
        assert Task4.modality_gap(i_got, t_got).norm().item() == pytest.approx(gap_distance, abs=1e-6)
        i_ref2, t_ref2 = liang_move_features(img, txt, float(delta), other / other.norm())
        i_got2, t_got2 = Task4.shift_along_gap(img, txt, 3.0 * other, float(delta))
        torch.testing.assert_close(i_got2, i_ref2, rtol=0, atol=1e-6)
        torch.testing.assert_close(t_got2, t_ref2, rtol=0, atol=1e-6)
        worst = max(worst, *[(a - b).abs().max().item() for a, b in
                             ((i_got, i_ref), (t_got, t_ref), (i_got2, i_ref2), (t_got2, t_ref2))])
    print(f"\n[shift_along_gap vs Liang et al. move_features] max diff {worst:.2e}")


# ============================================================================
# Task 1: cutting a shortcut = torchvision's block with a zero shortcut
# ============================================================================


class ZeroShortcut(nn.Module):
    """Stands in for a torchvision block's `downsample`: returns zeros shaped like what the
    shortcut would have added (downsample(x), or x itself where the block has no downsample),
    so torchvision's own forward computes relu(F(x) + 0)."""

    def __init__(self, downsample: nn.Module | None):
        super().__init__()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(self.downsample(x) if self.downsample is not None else x)


def zero_shortcut_block(block: nn.Module) -> nn.Module:
    ref = copy.deepcopy(block)
    ref.downsample = ZeroShortcut(ref.downsample)
    return ref


@pytest.mark.parametrize("arch, n_downsample", [("resnet18", 3), ("resnet152", 4)])
def test_cut_block_equals_torchvision_forward_with_zero_shortcut(arch, n_downsample):
    """Random ResNet-18 (BasicBlock) and ResNet-152 (Bottleneck), eval mode, 2 images at 64 px:
    for EVERY block (downsample blocks included: layer2-4.0, and layer1.0 of ResNet-152),
    architecture.shortcuts_cut (what Task 1's residual experiment uses) gives exactly (bitwise)
    torchvision's forward of that block with its shortcut replaced by zeros, on the block's
    real input; the intact block is restored afterwards. Then all blocks cut at once give the
    logits of the network with every shortcut zeroed (exactly)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    names = architecture.residual_blocks(model)
    inputs = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: inputs.__setitem__(n, args[0]))
             for n in names]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        intact_logits = model(x)
        for h in hooks:
            h.remove()
        assert len(inputs) == len(names) == {"resnet18": 8, "resnet152": 50}[arch]
        assert sum(model.get_submodule(n).downsample is not None for n in names) == n_downsample
        for name in names:
            block, x_in = model.get_submodule(name), inputs[name]
            intact = block(x_in)
            want = zero_shortcut_block(block)(x_in)
            with architecture.shortcuts_cut(model, [name]):
                got = block(x_in)
            assert torch.equal(got, want), f"{name}: max diff {(got - want).abs().max():.3e}"
            assert not torch.equal(got, intact)           # the shortcut did contribute
            assert torch.equal(block(x_in), intact)       # restored
        zeroed = copy.deepcopy(model)
        for name in names:
            zeroed.get_submodule(name).downsample = ZeroShortcut(zeroed.get_submodule(name).downsample)
        with architecture.shortcuts_cut(model, names):
            cut_logits = model(x)
        assert torch.equal(cut_logits, zeroed(x))
        assert torch.equal(model(x), intact_logits)


@pytest.mark.parametrize("depth, published", [(20, 269_722), (56, 853_018)])
def test_cifar_resnet_parameter_counts(depth, published):
    """He et al. 2016's CIFAR ResNets (Table 6: 0.27 M and 0.85 M; exactly 269,722 and 853,018
    with option A shortcuts): the count written out layer by layer here (3x3 stem conv + BN;
    per block two 3x3 convs + two BNs; 64 -> 10 linear) is the published one, and CifarResNet
    with and without shortcuts has exactly it."""
    n, count, c_in = (depth - 2) // 6, 3 * 16 * 9 + 2 * 16, 16
    for c in (16, 32, 64):
        for _ in range(n):
            count += c_in * c * 9 + c * c * 9 + 2 * (2 * c)
            c_in = c
    count += 64 * 10 + 10
    assert count == published
    for shortcuts in (True, False):
        model = architecture.CifarResNet(depth, shortcuts=shortcuts)
        assert sum(p.numel() for p in model.parameters()) == published


# ============================================================================
# Task 1: which ImageNet weights each architecture loads
# ============================================================================


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_build_resnet_loads_one_recipe_at_every_depth(monkeypatch, arch):
    """torchvision's weights enums (no download: get_model is intercepted): by default every
    ResNet gets IMAGENET1K_V1, the original recipe (ResNet-18 69.758 % top-1, ResNet-152 78.312 %,
    resize 256 -> crop 224), so `depth` compares depths and not recipes; imagenet-v2 takes
    IMAGENET1K_V2 (ResNet-152 82.284 %, resize 232: label smoothing, mixup, cutmix, EMA...) where
    it exists (ResNet-50/101/152) and V1 else (ResNet-18/34 have no V2); none builds random weights."""
    import torchvision

    import Task1

    loaded = []
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights=None: loaded.append((name, weights)))
    enum = torchvision.models.get_model_weights(arch)
    v1, v2 = enum.IMAGENET1K_V1, getattr(enum, "IMAGENET1K_V2", None)
    assert (v2 is not None) == (arch in ("resnet50", "resnet101", "resnet152"))
    assert v1.transforms().resize_size == [256] and (v2 is None or v2.transforms().resize_size == [232])
    for weights, want in (("imagenet", v1), ("imagenet-v2", v2 or v1), ("none", None)):
        loaded.clear()
        Task1.build_resnet(arch, weights)
        assert loaded == [(arch, want)], f"{arch} --weights {weights}: loaded {loaded}"
    published = {"resnet18": 69.758, "resnet152": 78.312}
    if arch in published:
        assert v1.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(published[arch])
