"""Task 2 (ViT-B/16 interpretability and robustness): known-answer tests of attention
rollout, the CLS attention map, mean attention distance, masking and token dropping and
the probes; one in-process --smoke run checking every figure and metric; bad input.

Offline and on CPU: the model is the tiny randomly initialised smoke ViT (32x32 input,
8x8 patches, a 4x4 grid, 3 layers x 4 heads)."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import Task2
from reports import task2 as report
from conftest import (assert_bad_input, assert_bad_input_in_process, assert_figures_readable, assert_in_range,
                      assert_png_ok, assert_replot_redraws, check_two_seed_smoke, load_metrics)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = Task2.ViTForImageClassification(Task2.smoke_vit_config()).eval()
    model.set_attn_implementation("sdpa")
    return model


def random_attention(rng, shape) -> torch.Tensor:
    """Row-stochastic [..., T, T] matrices (Dirichlet rows)."""
    *lead, t, _ = shape
    return torch.tensor(rng.dirichlet(np.ones(t), size=(*lead, t)), dtype=torch.float64)


# ----------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------


def reference_rollout(attns: list[np.ndarray], fusion: str) -> np.ndarray:
    """Abnar & Zuidema 2020 written out image by image, layer by layer."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    b, _, t, _ = attns[0].shape
    out = np.zeros((b, t, t))
    for i in range(b):
        r = np.eye(t)
        for a in attns:
            a_res = 0.5 * fuse(a[i], axis=0) + 0.5 * np.eye(t)
            a_res = a_res / a_res.sum(axis=1, keepdims=True)
            r = a_res @ r
        out[i] = r
    return out


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_reference(fusion):
    rng = np.random.default_rng(1)
    attns = [random_attention(rng, (2, 3, 6, 6)) for _ in range(4)]
    got = Task2.attention_rollout(attns, fusion).numpy()
    want = reference_rollout([a.numpy() for a in attns], fusion)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)  # still row-stochastic


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    for fusion in ("mean", "max", "min"):
        np.testing.assert_allclose(Task2.attention_rollout([eye] * 6, fusion), torch.eye(5).expand(2, 5, 5),
                                   atol=1e-6)


def test_rollout_discard_ratio_by_hand():
    # One layer, T = 2, discard 25% = the single smallest weight (0.1):
    # [[.9, 0], [.3, .7]] -> 0.5 A + 0.5 I = [[.95, 0], [.15, .85]] -> rows renormalised.
    a = torch.tensor([[[[0.9, 0.1], [0.3, 0.7]]]])
    np.testing.assert_allclose(Task2.attention_rollout([a], "mean", 0.25)[0], [[1.0, 0.0], [0.15, 0.85]], atol=1e-6)
    # The CLS->CLS weight is never discarded, even when it is the smallest.
    a = torch.tensor([[[[0.05, 0.95], [0.5, 0.5]]]])
    np.testing.assert_allclose(Task2.attention_rollout([a], "mean", 0.25)[0], [[0.525, 0.475], [0.25, 0.75]],
                               atol=1e-6)


# ----------------------------------------------------------------------------
# CLS attention map: token order -> grid cell
# ----------------------------------------------------------------------------


def test_cls_attention_peak_lights_up_its_cell():
    grid = (3, 4)  # not square, so a transposed reshape would fail
    for r, c in [(0, 0), (2, 1), (1, 3)]:
        attn = torch.full((1, 2, 13, 13), 0.0)
        attn[:, :, 0, 1 + r * 4 + c] = 1.0
        m = Task2.cls_attention_map(attn, grid)
        want = torch.zeros(1, 2, *grid)
        want[:, :, r, c] = 1.0
        assert torch.equal(m, want)
        up = report.upsample_map(m[0, 0], (24, 32))  # 8x8 pixels per cell
        y, x = divmod(int(up.argmax()), 32)
        assert 8 * r <= y < 8 * r + 8 and 8 * c <= x < 8 * c + 8


def test_patch_token_order_is_row_major(vit):
    """The model's own patch embedding: a change in patch (r, c) of the image changes
    token r*cols + c only, the cell cls_attention_map puts it in."""
    zeros = torch.zeros(1, 3, 32, 32)
    base = vit.vit.embeddings.patch_embeddings(zeros)
    for r, c in [(0, 3), (2, 1), (3, 0)]:
        x = zeros.clone()
        x[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 1.0
        changed = (vit.vit.embeddings.patch_embeddings(x) - base).abs().sum(-1)[0] > 1e-6
        assert changed.nonzero().flatten().tolist() == [r * 4 + c]


# ----------------------------------------------------------------------------
# Heads: entropy, mean attention distance, similarity
# ----------------------------------------------------------------------------


def test_entropy_bits_known_values():
    assert Task2.entropy_bits(torch.full((17,), 1 / 17)).item() == pytest.approx(math.log2(17))
    assert Task2.entropy_bits(torch.eye(5)[2]).item() == pytest.approx(0.0)


def patch_attention(targets: dict[int, dict[int, float]], n: int, cls_weight: float = 0.0) -> torch.Tensor:
    """[1, 1, 1+n, 1+n] attention: query patch q attends to patch k with targets[q][k]
    (plus cls_weight on the CLS token, which the distance must ignore)."""
    a = torch.zeros(1, 1, n + 1, n + 1)
    a[..., :, 0] = cls_weight
    for q, row in targets.items():
        for k, w in row.items():
            a[0, 0, 1 + q, 1 + k] = w
    return a


def test_mean_attention_distance_known_answers():
    n, ps = 16, 8  # 4x4 grid of 8-pixel patches
    self_only = patch_attention({q: {q: 1.0} for q in range(n)}, n)
    assert Task2.mean_attention_distance(self_only, (4, 4), ps).item() == pytest.approx(0.0)
    # Every patch attends to a horizontal neighbour: exactly one patch (8 pixels) away,
    # whatever weight also goes to CLS.
    neighbour = {q: {q + 1 if q % 4 < 3 else q - 1: 1.0} for q in range(n)}
    for cls_weight in (0.0, 0.7):
        a = patch_attention(neighbour, n, cls_weight)
        assert Task2.mean_attention_distance(a, (4, 4), ps).item() == pytest.approx(8.0)
    # Uniform attention on a 2x2 grid of 16-pixel patches: from each patch the distances
    # are 0, 16, 16 and 16*sqrt(2), so the mean is 16 * (2 + sqrt(2)) / 4.
    uniform = patch_attention({q: {k: 0.25 for k in range(4)} for q in range(4)}, 4)
    assert Task2.mean_attention_distance(uniform, (2, 2), 16).item() == pytest.approx(16 * (2 + math.sqrt(2)) / 4)


def test_head_similarity_identical_and_disjoint_heads():
    a = torch.zeros(3, 2, 4, 4)
    a[:, 0, :, 0] = 1.0  # head 0 looks at token 0, head 1 at token 1: disjoint supports
    a[:, 1, :, 1] = 1.0
    np.testing.assert_allclose(Task2.head_similarity(a), torch.eye(2), atol=1e-6)
    same = torch.cat([a[:, :1], a[:, :1]], 1)
    np.testing.assert_allclose(Task2.head_similarity(same), torch.ones(2, 2), atol=1e-6)


# ----------------------------------------------------------------------------
# Masking and token dropping
# ----------------------------------------------------------------------------


def test_exactly_round_f_times_n_patches_are_masked():
    want = {0.0: 0, 0.1: 20, 0.2: 39, 0.3: 59, 0.4: 78, 0.5: 98, 0.6: 118, 0.7: 137, 0.8: 157, 0.9: 176}  # by hand
    rollout = torch.rand(3, 196)
    for strategy in report.STRATEGIES:
        order = Task2.mask_orders(strategy, 3, (14, 14), rollout, seed=0)
        assert sorted(order[0].tolist()) == list(range(196))  # every row is a permutation
        for f, k in want.items():
            assert Task2.n_masked(f, 196) == k
            assert Task2.mask_from_order(order, Task2.n_masked(f, 196)).sum(1).tolist() == [k] * 3


def cells(mask: torch.Tensor, cols: int) -> set[tuple[int, int]]:
    return {divmod(int(i), cols) for i in mask.nonzero().flatten()}


def test_centre_and_border_masks_hit_the_intended_cells():
    def masked(strategy, grid, k):
        return cells(Task2.mask_from_order(Task2.mask_orders(strategy, 1, grid), k)[0], grid[1])

    assert masked("centre", (4, 4), 4) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert masked("centre", (14, 14), 4) == {(r, c) for r in (6, 7) for c in (6, 7)}
    assert masked("centre", (14, 14), 16) == {(r, c) for r in range(5, 9) for c in range(5, 9)}
    inner = {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert masked("border", (4, 4), 12) == {(r, c) for r in range(4) for c in range(4)} - inner
    ring = {(r, c) for r in range(14) for c in range(14) if r in (0, 13) or c in (0, 13)}
    assert masked("border", (14, 14), 52) == ring
    assert masked("border", (14, 14), 4) == {(0, 0), (0, 13), (13, 0), (13, 13)}  # corners first


def test_attention_ranked_and_random_masks():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8], [0.5, 0.2, 0.7, 0.0]])
    most = Task2.mask_from_order(Task2.mask_orders("most-attended", 2, (2, 2), scores), 2)
    least = Task2.mask_from_order(Task2.mask_orders("least-attended", 2, (2, 2), scores), 2)
    assert most.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert least.tolist() == [[True, False, True, False], [False, True, False, True]]
    order = Task2.mask_orders("random", 50, (4, 4), seed=3)
    assert torch.equal(order, Task2.mask_orders("random", 50, (4, 4), seed=3))        # seeded
    assert not torch.equal(order, Task2.mask_orders("random", 50, (4, 4), seed=4))
    assert len({tuple(r) for r in order[:, :4].tolist()}) > 40                           # differs per image
    m4, m8 = Task2.mask_from_order(order, 4), Task2.mask_from_order(order, 8)
    assert bool((m4 <= m8).all())                                                       # nested across fractions


def test_pixel_mask_sets_exactly_the_masked_patches():
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 1 * 4 + 2] = True  # image 0: patch (1, 2) = rows 8:16, cols 16:24
    mask[1, [0, 15]] = True    # image 1: the two corners
    fill = torch.tensor([0.1, -0.2, 0.3])
    out = Task2.pixel_mask(pixels, mask, (4, 4), fill)
    want = pixels.clone()
    want[0, :, 8:16, 16:24] = fill[:, None, None]
    want[1, :, 0:8, 0:8] = fill[:, None, None]
    want[1, :, 24:32, 24:32] = fill[:, None, None]
    assert torch.equal(out, want)


def test_token_dropping_keeps_the_right_position_embeddings(vit):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 6, 15]] = True
    mask[1, [1, 2, 3, 9]] = True
    keep = Task2.kept_tokens(mask)
    assert keep.tolist() == [[i for i in range(16) if i not in (0, 5, 6, 15)],
                             [i for i in range(16) if i not in (1, 2, 3, 9)]]
    with torch.no_grad():
        full = vit.vit.embeddings(pixels)                  # transformers' own embedding: [2, 17, D]
        dropped = Task2.embed_tokens(vit, pixels, keep)    # [2, 13, D]
        assert dropped.shape == (2, 13, 64)
        torch.testing.assert_close(dropped[:, 0], full[:, 0])
        for b in range(2):
            torch.testing.assert_close(dropped[b, 1:], full[b, 1 + keep[b]])
        # Each token carries its position, so the order of the kept tokens does not matter.
        shuffled = keep[:, torch.randperm(keep.shape[1])]
        a = Task2.vit_forward(vit, pixels, keep=keep)["last"][:, 0]
        b = Task2.vit_forward(vit, pixels, keep=shuffled)["last"][:, 0]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vit_forward_matches_transformers(vit):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = Task2.vit_forward(vit, pixels)
        ref = vit(pixels, output_hidden_states=True)
        torch.testing.assert_close(ours["logits"], ref.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours["hidden"][-1], ref.hidden_states[-1], atol=1e-5, rtol=1e-5)
        with Task2.eager_attention(vit):
            ours = Task2.vit_forward(vit, pixels, attentions=True)
            ref = vit(pixels, output_attentions=True)
        assert vit.config._attn_implementation == "sdpa"  # restored
        assert len(ours["attentions"]) == 3 and ours["attentions"][0].shape == (3, 4, 17, 17)
        for a, b in zip(ours["attentions"], ref.attentions):
            torch.testing.assert_close(a, b)


def test_preprocess_matches_the_image_processor():
    from transformers import ViTImageProcessor

    photo = Task2.sample_photos()[0][1]  # china.jpg, uint8 [3, 427, 640]
    for size in (224, 32):
        proc = ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        want = proc(images=photo.permute(1, 2, 0).numpy(), return_tensors="pt").pixel_values
        got = Task2.preprocess(photo[None], Task2.processor_settings(proc), torch.device("cpu"))
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 0.02  # on the [-1, 1] scale


# ----------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------


def test_probe_on_separable_and_on_noise_features():
    rng = np.random.default_rng(0)
    y = torch.tensor(np.arange(400) % 4)
    noise = rng.normal(size=(400, 8))
    separable = rng.normal(size=(400, 8)) * 0.1
    separable[np.arange(400), y.numpy()] += 3.0  # class c: a bump on axis c
    feats = torch.tensor(np.stack([noise, separable], 1), dtype=torch.float32)  # [N, 2 layers, 8]
    recipe = dataclasses.replace(Task2.Recipe(), probe_max_iter=200)
    acc = Task2.probe_per_layer(feats[:300], y[:300], feats[300:], y[300:], seed=0, recipe=recipe)
    assert acc[1] == 1.0
    assert acc[0] < 0.5  # chance is 0.25


# ----------------------------------------------------------------------------
# Model loading, weights digest, batching
# ----------------------------------------------------------------------------


def test_random_init_config_is_vit_b16_with_imagenet_labels():
    """--weights none builds google/vit-base-patch16-224's architecture: the sizes of
    ViT-B/16 (Dosovitskiy et al. 2021, Table 1) and ImageNet-1k's 1,000 labels in class order."""
    from test_fullsize_task2_4 import VIT_B16_SIZES

    cfg = Task2.vit_b16_config()
    assert {k: getattr(cfg, k) for k in VIT_B16_SIZES} == VIT_B16_SIZES
    assert cfg.num_labels == 1000 and cfg.hidden_act == "gelu" and cfg.layer_norm_eps == 1e-12
    assert cfg.id2label[0] == "tench" and cfg.id2label[1] == "goldfish" and cfg.id2label[999] == "toilet tissue"
    proc = Task2.processor_settings(Task2.vit_b16_processor())
    assert proc["size"] == (224, 224) and proc["mode"] == "bilinear"
    assert proc["mean"].tolist() == [0.5] * 3 and proc["std"].tolist() == [0.5] * 3


class DeviceOnlyTensor(torch.Tensor):
    """A parameter on a device that supports float32 only (like Apple's MPS): any
    operation on it raises, except detaching it and copying it to the CPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        to_cpu = name == "cpu" or (name == "to" and "cpu" in [str(a) for a in args[1:]] + [str(kwargs.get("device"))]
                                   and torch.float64 not in list(args[1:]) + [kwargs.get("dtype")])
        if name in ("detach", "__get__") or to_cpu:
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
            return out if name in ("detach", "__get__") else out.as_subclass(torch.Tensor)
        raise TypeError(f"{name} on the device: Cannot convert a MPS Tensor to float64 dtype as the MPS framework "
                        f"doesn't support float64")


def test_weights_fingerprint_runs_on_the_cpu_in_float64():
    """The digest is computed on the CPU (MPS has no float64: `.double()` there raises) and
    equals sum and sum of squares of all parameters computed independently in numpy float64."""
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=13).astype(np.float32) * 1e3]

    class OnDevice:
        def parameters(self):
            return [torch.from_numpy(a).as_subclass(DeviceOnlyTensor) for a in arrays]

    with pytest.raises(TypeError):
        OnDevice().parameters()[0].double()  # the fake device refuses what MPS refuses
    s = sum(a.astype(np.float64).sum() for a in arrays)
    s2 = sum(np.square(a.astype(np.float64)).sum() for a in arrays)
    assert Task2.weights_fingerprint(OnDevice()) == f"{s:.8e}/{s2:.8e}"


def test_images_go_through_in_batches(tmp_path, monkeypatch):
    """--images N pictures: classify and attention use batches of --batch-size, not one
    batch of N (ViT-B/16 keeps 22 MB of attention weights per image)."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().filenames[1]
    sizes = []
    forward = Task2.vit_forward

    def counting(model, pixels, *a, **k):
        sizes.append(len(pixels))
        return forward(model, pixels, *a, **k)

    monkeypatch.setattr(Task2, "vit_forward", counting)
    Task2.main(["--smoke", "--images", *[photo] * 5, "--batch-size", "2", "--experiments", "classify,attention",
                "--out", str(tmp_path / "out")])
    assert sizes == [2, 2, 1, 2, 2, 1]  # classify, then attention
    assert len(load_metrics(tmp_path / "out")["experiments"]["classify"]["images"]) == 5


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache that this process's loaders read (offline)."""
    import huggingface_hub

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
                image_size=224, num_channels=3)


def test_checkpoint_without_classification_head_is_refused(hub_cache, tmp_path, capsys):
    """google/vit-base-patch16-224-in21k is a feature extractor (ViTModel, no classifier):
    from_pretrained would give it a random 2-label head in silence. Refused in one line."""
    from sklearn.datasets import load_sample_images

    from test_fullsize_task2_4 import write_vit_checkpoint

    photo = load_sample_images().filenames[0]
    write_vit_checkpoint(hub_cache, "google/vit-base-patch16-224-in21k", TINY_VIT, labels=None, head=False)
    line = assert_bad_input_in_process(Task2.main, ["--model", "google/vit-base-patch16-224-in21k", "--images", photo,
                                                    "--experiments", "classify"], capsys,
                                       expect="no image-classification head", out=tmp_path / "out")
    assert "classifier.weight" in line and "2-label" in line
    # Its backbone still serves the experiments that do not read the head.
    Task2.main(["--model", "google/vit-base-patch16-224-in21k", "--images", photo, "--experiments", "attention",
                "--device", "cpu", "--out", str(tmp_path / "backbone")])
    assert "note: google/vit-base-patch16-224-in21k has no classification head" in capsys.readouterr().out
    assert list(load_metrics(tmp_path / "backbone")["experiments"]) == ["attention"]
    # Control: the same cache with a classifier checkpoint loads and runs.
    write_vit_checkpoint(hub_cache, "someone/tiny-vit-classifier", TINY_VIT, labels=["cat", "dog", "ship"])
    Task2.main(["--model", "someone/tiny-vit-classifier", "--images", photo, "--experiments", "classify",
                "--device", "cpu", "--out", str(tmp_path / "ok")])
    (result,) = load_metrics(tmp_path / "ok")["experiments"]["classify"]["images"].values()
    assert result["top1"] in ("cat", "dog", "ship") and len(result["top5"]) == 3  # three labels: a top-3


# ----------------------------------------------------------------------------
# Smoke run: every figure and metric
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("task2-smoke")
    Task2.main(["--smoke", "--out", str(out)])
    return out


def test_smoke_writes_every_figure(smoke_out):
    names = ["classify_top5", "attention_heads", "attention_map_china", "attention_map_flower", "heads_entropy",
             "heads_distance", "heads_similarity", "masking_accuracy", "masking_agreement", "masking_examples",
             "probe_layers", "probe_cosine"]
    for name in names:
        assert_png_ok(smoke_out / f"{name}.png")
    # The default images are the two clean photos; no upsampled 32x32 CIFAR images among them.
    assert sorted(p.name for p in smoke_out.glob("attention_map_*.png")) == ["attention_map_china.png",
                                                                             "attention_map_flower.png"]
    assert (smoke_out / "summary.md").exists()


def test_replot_redraws_every_figure_without_computing(smoke_out, tmp_path, monkeypatch):
    """--replot needs no model, no data and no feature or rollout cache."""
    figures = [p.stem for p in smoke_out.glob("*.png")]
    assert len(figures) == 12
    assert_replot_redraws(Task2, smoke_out, tmp_path, monkeypatch, figures, ["load_vit", "load_cifar"])


def test_replot_without_a_run_is_one_line(tmp_path, capsys):
    """--replot where nothing was run, or where cache/plot/ is gone: one line, exit 2, files kept."""
    assert_bad_input_in_process(Task2.main, ["--smoke", "--replot", "--out", str(tmp_path / "empty")], capsys,
                                expect="run the experiments first")
    assert not (tmp_path / "empty").exists()
    out = tmp_path / "no-plot-data"
    out.mkdir()
    (out / "metrics.json").write_text('{"experiments": {"probe": {"cls_test_acc": 0.5}}}')
    assert_bad_input_in_process(Task2.main, ["--smoke", "--replot"], capsys, expect="probe.npz is missing", out=out)


def test_smoke_figures_are_readable(smoke_out):
    assert_figures_readable(smoke_out)


def test_smoke_metrics(smoke_out):
    doc = load_metrics(smoke_out)
    assert doc["env"]["data"] == "smoke"
    # the probe recipe (constants, not flags) is recorded; --smoke fits with fewer iterations
    assert doc["recipe"] == {"probe_max_iter": 100, "probe_Cs": [0.01, 0.1, 1.0, 10.0], "probe_val_fraction": 0.2}
    assert Task2.SMOKE_RECIPE == dataclasses.replace(Task2.Recipe(), probe_max_iter=100)
    assert "probe_max_iter" not in doc["config"]
    m = doc["experiments"]
    assert set(m) == set(Task2.EXPERIMENTS)
    for name in Task2.EXPERIMENTS:
        assert_in_range(m, f"{name}/seconds", 0, 600)
    # classify
    assert_in_range(m, "classify/mean_top1_prob", 0, 1)
    assert_in_range(m, "classify/mean_top5_prob_mass", m["classify"]["mean_top1_prob"], 1)
    assert set(m["classify"]["images"]) == {"china", "flower"}
    for v in m["classify"]["images"].values():
        assert v["top1"] in Task2.SMOKE_LABELS and len(v["top5"]) == 5
    # attention: 16 patches -> at most 4 bits
    assert m["attention"]["uniform_entropy_bits"] == pytest.approx(4.0)
    assert_in_range(m, "attention/mean_last_layer_entropy_bits", 0, 4)
    assert_in_range(m, "attention/mean_rollout_entropy_bits", 0, 4)
    assert_in_range(m, "attention/mean_spearman_last_vs_rollout", -1, 1)
    # heads: 2 photos + 8 CIFAR; distances within the 32x32 input
    assert m["heads"]["images"] == 10
    max_dist = 8 * math.sqrt(18)
    for key in ("uniform_distance_px", "first_layer_distance_min_px", "first_layer_distance_max_px",
                "last_layer_distance_mean_px"):
        assert_in_range(m, f"heads/{key}", 0, max_dist)
    for key in ("first_layer_entropy_mean_bits", "last_layer_entropy_mean_bits"):
        assert_in_range(m, f"heads/{key}", 0, math.log2(17))
    assert_in_range(m, "heads/last_layer_mean_offdiag_similarity", 0, 1)
    assert np.asarray(m["heads"]["distance_px"]).shape == (3, 4)
    assert np.asarray(m["heads"]["last_layer_head_similarity"]).shape == (4, 4)
    # masking
    mk = m["masking"]
    assert mk["fractions"] == [0.0, 0.25, 0.5, 0.75] and mk["masked_patches"] == [0, 4, 8, 12]
    assert_in_range(m, "masking/unmasked_acc", 0, 1)
    for how in ("pixel", "token"):
        for s in report.STRATEGIES:
            assert_in_range(m, f"masking/{how}/{s}/mean_acc_over_fractions", 0, 1)
            assert_in_range(m, f"masking/{how}/{s}/mean_agree_over_fractions", 0, 1)
            assert len(mk[how][s]["acc"]) == 4
            assert mk[how][s]["agree"][0] == 1.0 and mk[how][s]["acc"][0] == mk["unmasked_acc"]
        assert len(mk[how]["random"]["acc_std"]) == 4
    # probe: the smoke classes differ in colour, which even random ViT features keep
    for key in ("cls_test_acc", "mean_test_acc", "cls_val_acc", "mean_val_acc"):
        assert_in_range(m, f"probe/{key}", 0, 1)
    assert m["probe"]["cls_test_acc"] >= 0.3  # chance is 0.1
    assert m["probe"]["cls_test_acc"] == mk["unmasked_acc"]  # one probe, shared with masking
    assert len(m["probe"]["cls_layer_acc"]) == 3 and len(m["probe"]["mean_layer_acc"]) == 3
    assert_in_range(m, "probe/cosine_final_mean", -1, 1)


# ----------------------------------------------------------------------------
# Bad input: exit 2, one line, earlier outputs kept
# ----------------------------------------------------------------------------


def test_unreadable_image_path(tmp_path, capsys):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is text, not a JPEG")
    assert_bad_input("Task2.py", ["--smoke", "--images", str(not_an_image)], tmp_path / "out", expect="notes.jpg")
    assert_bad_input_in_process(Task2.main, ["--smoke", "--images", str(tmp_path / "missing.png")], capsys,
                                expect="missing.png", out=tmp_path / "out")


def test_unknown_model_offline(tmp_path):
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().filenames[0]
    line = assert_bad_input("Task2.py", ["--model", "nobody/not-a-vit-model", "--images", photo, "--experiments",
                                         "classify"], tmp_path / "out", expect="nobody/not-a-vit-model")
    assert "--smoke" in line and "HF_HOME" in line


def test_a_corrupt_feature_cache_is_said_in_one_line_and_recomputed(tmp_path, smoke_out, capsys):
    """A cache is recomputable: each file that cannot be read costs one line and the
    computation, never the run; the numbers are those of a clean run."""
    out = tmp_path / "out"
    shutil.copytree(smoke_out, out)
    victims = sorted((out / "cache").glob("features-*.pt"))
    assert len(victims) == 2                                          # train and test
    for p in victims:
        p.write_bytes(b"not a torch file")
    capsys.readouterr()
    Task2.main(["--smoke", "--experiments", "probe", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "unreadable" in ln]
    assert len(err) == 2 and all("computing it again" in ln for ln in err)
    assert all(sum(v.name in ln for ln in err) == 1 for v in victims)  # one line each, naming it
    for p in victims:                                                 # rewritten, whole
        assert set(torch.load(p, weights_only=True)["value"]) == {"cls", "mean", "cls_final", "mean_final"}
    after, before = load_metrics(out)["experiments"]["probe"], load_metrics(smoke_out)["experiments"]["probe"]
    assert after == before | {"seconds": after["seconds"]}


def test_bad_flag_values(tmp_path, capsys):
    assert_bad_input_in_process(Task2.main, ["--smoke", "--mask-fractions", "0,1.5"], capsys, expect="fractions",
                                out=tmp_path / "out")
    assert_bad_input_in_process(Task2.main, ["--smoke", "--discard-ratio", "1"], capsys, expect="discard",
                                out=tmp_path / "out")


def test_smoke_answers_every_assignment_question(smoke_out):
    """summary.md, metrics.json and index.html answer each question of the handout (tests/test_findings.py)."""
    from test_findings import assert_findings

    assert_findings(smoke_out, report)


def test_smoke_with_two_seeds(smoke_out, tmp_path):
    """Issue 21: --seeds 0,1 writes each seed's run, the merged metrics and every figure (conftest)."""
    check_two_seed_smoke(Task2, smoke_out, tmp_path)
