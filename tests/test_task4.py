"""Task 4 (CLIP on STL-10): known answers for prompts, the zero-shot classifier, template
ensembling, the modality gap, the gap shift and Procrustes; no test leakage into R;
the embedding cache; one --smoke run checked figure by figure and metric by metric;
bad inputs."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import harness
import Task4
from reports import task4 as report
from conftest import (assert_bad_input, assert_bad_input_in_process, assert_figures_readable, assert_in_range,
                      assert_png_ok, assert_replot_needs_plot_data, assert_replot_redraws, check_two_seed_smoke,
                      load_metrics)

# ----------------------------------------------------------------------------
# Prompt strategies
# ----------------------------------------------------------------------------


def test_prompt_strategies_give_the_expected_strings():
    classes = ["cat", "ship"]
    assert Task4.build_prompts("label", classes) == [["cat"], ["ship"]]
    assert Task4.build_prompts("photo", classes) == [["a photo of a cat."], ["a photo of a ship."]]
    # CLIP's STL-10 templates (openai/CLIP data/prompts.md)
    assert Task4.build_prompts("clip_stl10", classes) == [["a photo of a cat.", "a photo of the cat."],
                                                          ["a photo of a ship.", "a photo of the ship."]]
    ens = Task4.build_prompts("ensemble", classes)
    assert [len(p) for p in ens] == [80, 80] and len(set(ens[0])) == 80
    assert {"a bad photo of a cat.", "itap of a cat.", "a tattoo of the cat."} <= set(ens[0])
    assert all("ship" in p for p in ens[1])
    desc = Task4.build_prompts("descriptive", Task4.DESCRIPTIONS.keys())
    assert all(len(p) == 1 for p in desc) and len({p[0] for p in desc}) == 10
    assert all(c in p[0] and p[0].count(".") == 1 for c, p in zip(Task4.DESCRIPTIONS, desc))  # one sentence
    with pytest.raises(ValueError):
        Task4.build_prompts("nope", classes)


def test_descriptions_cover_stl10_classes():
    import common

    assert sorted(Task4.DESCRIPTIONS) == sorted(common.STL10_CLASSES)


# ----------------------------------------------------------------------------
# Zero-shot classifier and the template ensemble
# ----------------------------------------------------------------------------


def test_zero_shot_classifier_on_constructed_embeddings():
    cls = torch.eye(3)  # class k is the unit vector e_k
    images = torch.tensor([[2.0, 0.1, 0.0],   # class 0, right
                           [0.0, 1.0, 0.2],   # class 1, right
                           [0.1, 0.0, 3.0],   # class 2, right
                           [1.0, 0.9, 0.0]])  # labelled 1 but closer to e_0: wrong at top-1, right at top-2
    labels = torch.tensor([0, 1, 2, 1])
    scores = Task4.zero_shot_scores(images, cls)
    assert scores[3, 1].item() == pytest.approx(0.9 / math.sqrt(1.81))  # cosine, by hand
    assert scores.argmax(1).tolist() == [0, 1, 2, 0]
    assert Task4.topk_accuracy(scores, labels, 1) == pytest.approx(0.75)
    assert Task4.topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    assert Task4.topk_accuracy(scores, labels, 5) == pytest.approx(1.0)  # k capped at K
    np.testing.assert_allclose(Task4.per_class_accuracy(scores.argmax(1), labels, 3), [1.0, 0.5, 1.0])


def test_ensemble_averages_normalised_embeddings():
    # two templates for class 0 with very different norms: normalise-then-average gives the
    # bisector (1, 1)/sqrt(2); averaging raw vectors would be dominated by the long one.
    text_raw = torch.tensor([[[10.0, 0.0], [0.0, 1.0]],
                             [[0.0, -3.0], [0.0, -3.0]]])  # [K=2, T=2, D=2]
    cls = Task4.class_embeddings(text_raw)
    np.testing.assert_allclose(cls[0].numpy(), [1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(cls[1].numpy(), [0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(cls.norm(dim=1).numpy(), [1.0, 1.0], atol=1e-6)


# ----------------------------------------------------------------------------
# Modality gap and the gap shift
# ----------------------------------------------------------------------------


def _two_cones(theta: float, phi: float):
    """Unit images cos(theta) e1 +- sin(theta) e3 and unit texts cos(phi) e2 +- sin(phi) e4:
    centroids cos(theta) e1 and cos(phi) e2, so the gap is sqrt(cos^2 theta + cos^2 phi)."""
    e = torch.eye(6)
    img = torch.stack([math.cos(theta) * e[0] + s * math.sin(theta) * e[2] for s in (1, -1)] * 3)
    txt = torch.stack([math.cos(phi) * e[1] + s * math.sin(phi) * e[3] for s in (1, -1)])
    return img, txt


def test_modality_gap_on_constructed_embeddings():
    theta, phi = 0.7, 1.1
    img, txt = _two_cones(theta, phi)
    g = Task4.modality_gap(img, txt)
    assert g.norm().item() == pytest.approx(math.hypot(math.cos(theta), math.cos(phi)), abs=1e-6)
    np.testing.assert_allclose(g[:2].numpy(), [math.cos(theta), -math.cos(phi)], atol=1e-6)
    # unnormalised variant: scaling the images by 5 scales their centroid by 5
    assert Task4.modality_gap(5 * img, txt).norm().item() == pytest.approx(
        math.hypot(5 * math.cos(theta), math.cos(phi)), abs=1e-5)
    # ...while the normalised gap does not change
    assert Task4.modality_gap(Task4.l2n(5 * img), txt).norm().item() == pytest.approx(g.norm().item(), abs=1e-6)


def test_separation_on_constructed_embeddings():
    # images c e1 +- s e3 (spread s around their centroid c e1), texts -c e1 +- s e4:
    # centroid distance 2c, RMS spread s, so the separation is 2c / s, at any common scale.
    c, s = 0.6, 0.8
    e = torch.eye(4)
    img = torch.stack([c * e[0] + s * e[2], c * e[0] - s * e[2]] * 5)
    txt = torch.stack([-c * e[0] + s * e[3], -c * e[0] - s * e[3]])
    assert Task4.separation(img, txt) == pytest.approx(2 * c / s)
    assert Task4.separation(7 * img, 7 * txt) == pytest.approx(2 * c / s)
    # images 10x larger than texts (like raw embeddings of different norms): the spread is
    # the RMS of the two modalities' spreads, sqrt((100 s^2 + s^2) / 2)
    assert Task4.separation(10 * img, txt) == pytest.approx(11 * c / math.sqrt((100 * s**2 + s**2) / 2))


def test_shift_by_the_gap_closes_it_exactly_in_a_symmetric_case():
    # images c e1 +- s e3, texts -c e1 +- s e4: gap 2c along e1. Shifting by lambda = 2c
    # leaves +-e3 and +-e4 after renormalising, whose centroids are both 0.
    c, s = 0.6, 0.8
    e = torch.eye(4)
    img = torch.stack([c * e[0] + s * e[2], c * e[0] - s * e[2]])
    txt = torch.stack([-c * e[0] + s * e[3], -c * e[0] - s * e[3]])
    direction = Task4.modality_gap(img, txt)
    assert direction.norm().item() == pytest.approx(2 * c)
    i2, t2 = Task4.shift_along_gap(img, txt, direction, 2 * c)
    assert Task4.modality_gap(i2, t2).norm().item() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(i2.abs().numpy(), [[0, 0, 1, 0]] * 2, atol=1e-6)
    i0, t0 = Task4.shift_along_gap(img, txt, direction, 0.0)  # lambda = 0 is the identity on unit vectors
    torch.testing.assert_close(i0, img), torch.testing.assert_close(t0, txt)
    iw, tw = Task4.shift_along_gap(img, txt, direction, -0.5)  # negative lambda widens the gap
    assert Task4.modality_gap(iw, tw).norm().item() > 2 * c


# ----------------------------------------------------------------------------
# Procrustes
# ----------------------------------------------------------------------------


def _random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_known_rotation():
    rng = np.random.default_rng(0)
    R_true = _random_rotation(16, 1)
    x = rng.normal(size=(300, 16))
    y = x @ R_true + 1e-3 * rng.normal(size=x.shape)
    R = Task4.orthogonal_map(x, y)
    np.testing.assert_allclose(R, R_true, atol=1e-3)
    np.testing.assert_allclose(R.T @ R, np.eye(16), atol=1e-10)
    # and a map that is not a rotation: R is still orthogonal, the best one in Frobenius norm
    R2 = Task4.orthogonal_map(x, 3 * x @ R_true)
    np.testing.assert_allclose(R2, R_true, atol=1e-8)


def test_fit_procrustes_maps_train_images_onto_their_class_text():
    # images of class k = (text of class k) rotated by Q^T, at several norms: R must undo Q^T
    K = D = 8
    cls = torch.from_numpy(_random_rotation(D, 2)).float()                 # K orthonormal class embeddings
    Q = torch.from_numpy(_random_rotation(D, 3)).float()
    y = torch.arange(40) % K
    img = cls[y] @ Q.T * torch.linspace(0.5, 4, 40)[:, None]
    R = Task4.fit_procrustes(img, y, cls)
    np.testing.assert_allclose(R, Q.numpy(), atol=1e-5)


def _procrustes_setup(tmp_path, K=4, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(K, 2, D, generator=g)                                # [K, T, D] raw prompts
    cls = Task4.class_embeddings(text)
    Q = torch.from_numpy(_random_rotation(D, seed + 5)).float()
    y_tr, y_te = torch.arange(60) % K, torch.arange(40) % K
    img_tr = cls[y_tr] @ Q.T + 0.01 * torch.randn(60, D, generator=g)
    img_te = cls[y_te] @ Q.T + 0.01 * torch.randn(40, D, generator=g)
    emb = Task4.Embeddings(img_train=img_tr, y_train=y_tr, img_test=img_te, y_test=y_te,
                           text={s: text for s in Task4.STRATEGIES}, classes=[f"c{k}" for k in range(K)])
    args = SimpleNamespace(out=str(tmp_path), prompt="photo", embed="tsne", tsne_small=10, tsne_large=20,
                           seed=0, smoke=True)
    return emb, args


def test_procrustes_never_uses_test_labels_or_test_images_when_fitting(tmp_path):
    emb, args = _procrustes_setup(tmp_path / "a")
    m1, _ = Task4.procrustes(emb, args)
    R1 = dict(np.load(tmp_path / "a" / "procrustes_rotations.npz"))
    assert m1["photo"]["top1_after"] == pytest.approx(1.0)   # the constructed test set is aligned exactly

    # permute the test labels and replace the test images by noise: R must not change at all
    emb2 = dataclasses.replace(emb, y_test=emb.y_test[torch.randperm(40, generator=torch.Generator().manual_seed(1))],
                               img_test=torch.randn_like(emb.img_test))
    args.out = str(tmp_path / "b")
    m2, _ = Task4.procrustes(emb2, args)
    R2 = dict(np.load(tmp_path / "b" / "procrustes_rotations.npz"))
    assert R1.keys() == R2.keys() == set(Task4.STRATEGIES)
    for s in R1:
        np.testing.assert_array_equal(R1[s], R2[s])
    assert m2["photo"]["top1_after"] < 0.9                      # the scores did see the new test data
    assert m1["max_orthogonality_error"] < 1e-6


# ----------------------------------------------------------------------------
# Preprocessing and the embedding cache
# ----------------------------------------------------------------------------


def test_preprocess_resizes_and_normalises():
    pp = {"size": 64, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5), "interpolation": "bicubic"}
    x = torch.full((2, 3, 96, 96), 128, dtype=torch.uint8)
    out = Task4.preprocess(x, pp)
    assert out.shape == (2, 3, 64, 64)
    expect = [(128 / 255 - m) / s for m, s in zip(pp["mean"], pp["std"])]
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), expect, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3)).numpy(), [0, 0, 0], atol=1e-5)


def test_image_embeddings_are_cached_and_fresh_recomputes(tmp_path):
    torch.manual_seed(0)
    model, _, pp = Task4.load_clip("ViT-B-32", "openai", smoke=True, device=torch.device("cpu"))
    calls = []

    class Counting:  # the real model, counting its forward passes
        def encode_image(self, x):
            calls.append(len(x))
            return model.encode_image(x)

    images = torch.randint(0, 256, (5, 3, 96, 96), dtype=torch.uint8)
    args = SimpleNamespace(smoke=True, seed=0, batch_size=2)
    cpu = torch.device("cpu")
    emb = Task4.image_embeddings(Counting(), images, pp, cpu, args, "test", harness.Cache(tmp_path))
    assert emb.shape == (5, Task4.SMOKE_CLIP["embed_dim"]) and calls == [2, 2, 1]
    assert len(list((tmp_path / "cache").glob("clip-images-test-*.pt"))) == 1
    torch.testing.assert_close(Task4.image_embeddings(Counting(), images, pp, cpu, args, "test",
                                                      harness.Cache(tmp_path)), emb)
    assert calls == [2, 2, 1]                                   # second call: read from the cache
    Task4.image_embeddings(Counting(), images, pp, cpu, args, "test", harness.Cache(tmp_path, fresh=True))
    assert calls == [2, 2, 1] * 2                               # --fresh: encoded again
    Task4.image_embeddings(Counting(), images, pp, cpu, args, "train", harness.Cache(tmp_path))
    assert len(list((tmp_path / "cache").glob("clip-images-*.pt"))) == 2  # the split is part of the key


# ----------------------------------------------------------------------------
# QuickGELU for the weights that need it (open_clip only warns)
# ----------------------------------------------------------------------------


def _tiny_open_clip(monkeypatch):
    """Make open_clip.create_model build a tiny CLIP for every model name (keeping the real
    config's quick_gelu flag) and find no weights to load, so every (model, tag) pair goes
    through load_clip and open_clip's own tag handling in milliseconds."""
    import open_clip
    from open_clip import factory

    real_config = factory.get_model_config

    def tiny(name):
        cfg = real_config(name)
        if cfg is None:
            return None
        return dict(embed_dim=16, quick_gelu=cfg.get("quick_gelu", False),
                    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                    text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=1, layers=1))

    monkeypatch.setattr(factory, "get_model_config", tiny)
    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, **kw: "")
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kw: None)
    return real_config


def test_every_quick_gelu_tag_builds_quick_gelu_modules(monkeypatch):
    import warnings

    import open_clip
    from open_clip.transformer import QuickGELU

    real_config = _tiny_open_clip(monkeypatch)
    cpu = torch.device("cpu")
    wrong, mismatch_warnings, n_quick = [], [], 0
    for model_name, tag in open_clip.list_pretrained():
        tag_quick = open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False)
        config_quick = real_config(model_name).get("quick_gelu", False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, _, _ = Task4.load_clip(model_name, tag, smoke=False, device=cpu)
        kinds = {type(m) for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
        want = QuickGELU if tag_quick or config_quick else torch.nn.GELU
        n_quick += want is QuickGELU
        if kinds != {want}:
            wrong.append((model_name, tag, sorted(k.__name__ for k in kinds)))
        if any("QuickGELU mismatch" in str(w.message) for w in caught) and not (config_quick and not tag_quick):
            mismatch_warnings.append((model_name, tag))
    assert not wrong, f"{len(wrong)} pairs built with the wrong activation, e.g. {wrong[:5]}"
    assert not mismatch_warnings, mismatch_warnings[:5]
    assert n_quick >= 50  # open_clip 3.3: 27 tags need it on GELU configs, 27 on *-quickgelu configs
    # Known pairs, independently of the rule above: OpenAI's weights need QuickGELU, LAION-2B's do not.
    assert Task4.clip_quick_gelu("ViT-B-32", "openai") and Task4.clip_quick_gelu("RN50", "openai")
    assert not Task4.clip_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    assert Task4.clip_quick_gelu("ViT-B-32", "none")  # random weights: the network "openai" needs


def test_pretrained_none_downloads_nothing(monkeypatch):
    from open_clip import factory

    _tiny_open_clip(monkeypatch)

    def no_download(*a, **k):
        raise AssertionError("--pretrained none must not fetch weights")

    monkeypatch.setattr(factory, "download_pretrained", no_download)
    monkeypatch.setattr(factory, "download_pretrained_from_hf", no_download)
    model, _, pp = Task4.load_clip("ViT-B-32", "none", smoke=False, device=torch.device("cpu"))
    assert Task4.activation_name(model) == "QuickGELU" and pp["size"] == (32, 32)


def test_activation_is_part_of_the_embedding_cache_key(tmp_path, monkeypatch):
    args = SimpleNamespace(smoke=False, model="ViT-B-32", pretrained="openai", out=str(tmp_path), seed=0)
    cpu = torch.device("cpu")
    paths = {}
    for quick in (True, False):
        monkeypatch.setattr(Task4, "clip_quick_gelu", lambda m, p, q=quick: q)
        paths[quick] = harness.Cache(args.out).path("clip-images-test", {**Task4.model_key(args, cpu), "split": "test"})
    assert paths[True] != paths[False]


def test_precision_is_part_of_the_embedding_cache_key(monkeypatch):
    """Embeddings computed under bf16 autocast differ from fp32 ones: never the same file.
    fp16 computes inference in fp32 (as on a T4), so it shares fp32's embeddings."""
    args = SimpleNamespace(smoke=True, seed=0)
    keys = {}
    for precision in ("fp32", "bf16", "fp16"):
        monkeypatch.setattr(Task4.common, "PRECISION", precision)
        keys[precision] = Task4.model_key(args, torch.device("cpu"))
    assert keys["bf16"] != keys["fp32"] == keys["fp16"]


def test_stl10_is_checked_once_per_run(tmp_path, monkeypatch):
    """torchvision's STL10 checks the MD5 of all five files (3 GB: the 100,000 unlabelled
    images too) whenever a split is opened; a run opens two splits and checks once. A full
    (non-smoke) run on a generated STL-10 in torchvision's layout, the small CLIP standing in."""
    import torchvision.datasets.stl10 as stl10

    from test_fullsize_task2_4 import write_fake_stl10

    write_fake_stl10(tmp_path / "data", n_train=30, n_test=20)
    checked = []
    monkeypatch.setattr(stl10, "check_integrity", lambda fpath, md5=None: checked.append(Path(fpath).name) or True)
    small = Task4.load_clip
    monkeypatch.setattr(Task4, "load_clip", lambda name, tag, smoke, device: small(name, tag, True, device))
    Task4.main(["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--experiments", "zeroshot"])
    assert sorted(checked) == sorted(["train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"])
    m = load_metrics(tmp_path / "out")
    assert m["env"]["data"] == "real" and m["experiments"]["zeroshot"]["n_test"] == 20


# ----------------------------------------------------------------------------
# The --smoke run: every figure, every metric
# ----------------------------------------------------------------------------

FIGURES = ["zeroshot_accuracy.png", "zeroshot_per_class.png", "zeroshot_confusion.png", "gap_cosine_hist.png",
           "gap_joint_tsne.png", "gap_raw_vs_normalised.png", "procrustes_accuracy.png", "procrustes_joint_tsne.png",
           "gap_shift_accuracy.png"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("task4_smoke")
    assert list(Task4.main(["--smoke", "--out", str(out)])) == Task4.EXPERIMENTS  # main returns the recorded dict
    return out


def test_smoke_writes_every_figure(smoke_run):
    for name in FIGURES:
        assert_png_ok(smoke_run / name)
    R = np.load(smoke_run / "procrustes_rotations.npz")
    assert set(R.files) == set(Task4.STRATEGIES)
    caches = sorted(p.name.rsplit("-", 1)[0] for p in (smoke_run / "cache").glob("*.pt"))
    assert caches == sorted(["clip-images-train", "clip-images-test"] + [f"clip-text-{s}" for s in Task4.STRATEGIES])


def test_smoke_figures_are_readable(smoke_run):
    """No two texts overlap (the class prompts sit in one tight cluster, so they are told
    apart by colour and legend, not by name labels) and no panel is empty."""
    assert_figures_readable(smoke_run)


def test_smoke_writes_every_metric(smoke_run):
    doc = load_metrics(smoke_run)
    m = doc["experiments"]
    assert doc["task"] == "task4" and doc["env"]["data"] == "smoke"
    assert list(m) == Task4.EXPERIMENTS
    for s in Task4.STRATEGIES:
        for k in ("top1", "top5"):
            assert_in_range(m["zeroshot"], f"{k}/{s}", 0, 1)
        assert len(m["zeroshot"]["per_class_top1"][s]) == 10
        for k in ("top1_before", "top1_after"):
            assert_in_range(m["procrustes"], f"{s}/{k}", 0, 1)
        for k in ("gap_before", "gap_after"):
            assert_in_range(m["procrustes"], f"{s}/{k}", 0, 2)
        assert_in_range(m["procrustes"], f"{s}/orthogonality_error", 0, 1e-6)
        for k in ("top1_unshifted", "top1_selected", "top1_best_on_test", "top1_centred"):
            assert_in_range(m["gap_shift"], f"{s}/{k}", 0, 1)
        for k in ("lambda_selected_on_train", "lambda_best_on_test"):
            assert_in_range(m["gap_shift"], f"{s}/{k}", -1, 2)
        assert_in_range(m["gap_shift"], f"{s}/gap_unshifted", 0, 2)
        assert m["gap_shift"][s]["top1_best_on_test"] >= m["gap_shift"][s]["top1_selected"]
    assert m["zeroshot"]["best_strategy"] in Task4.STRATEGIES
    assert_in_range(m["zeroshot"], "best_top1", 0, 1)
    assert_in_range(m["zeroshot"], "n_test", 300, 300)
    for k in ("gap_normalised",):
        assert_in_range(m["gap"], k, 0, 2)
    for k in ("gap_raw", "image_norm_raw_mean", "text_norm_raw_mean", "separation_raw", "separation_normalised"):
        assert_in_range(m["gap"], k, 0, 1e4)
    assert_in_range(m["gap"], "gap_raw_relative", 0, 2)  # centroids of vectors of about that norm
    for k in ("cos_matched_mean", "cos_unmatched_mean", "cos_image_image_mean", "cos_text_text_mean"):
        assert_in_range(m["gap"], k, -1, 1)
    assert_in_range(m["gap"], "n_small", 100, 100)
    assert_in_range(m["procrustes"], "linear_probe_top1", 0, 1)
    assert_in_range(m["procrustes"], "n_train", 500, 500)
    assert_in_range(m["procrustes"], "max_orthogonality_error", 0, 1e-6)
    assert len(m["gap_shift"]["lambdas"]) == 31
    for name in Task4.EXPERIMENTS:
        assert_in_range(m[name], "seconds", 0, 600)
    # a smoke check that the train-only fit carries real signal: the generated classes
    # differ in colour, so mapping train images onto their class prompts beats chance on test
    assert max(m["procrustes"][s]["top1_after"] for s in Task4.STRATEGIES) > 0.2
    assert m["procrustes"]["linear_probe_top1"] > 0.5


# ----------------------------------------------------------------------------
# Bad input: exit 2, one line, earlier outputs kept
# ----------------------------------------------------------------------------


def test_unknown_model_is_rejected(tmp_path):
    assert_bad_input("Task4.py", ["--smoke", "--model", "ViT-Q-99"], tmp_path / "out", expect="unknown --model")


def test_weights_that_cannot_be_fetched_name_the_way_out(tmp_path, empty_data_root):
    line = assert_bad_input("Task4.py", ["--data-root", str(empty_data_root)], tmp_path / "out",
                            expect="could not get open_clip weights ViT-B-32")
    assert "HF_HOME" in line and "--smoke" in line


@pytest.mark.parametrize("flags, expect", [(["--shift-min", "1", "--shift-max", "0"], "--shift-min"),
                                            (["--shift-steps", "1"], "--shift-steps"),
                                            (["--tsne-small", "3"], "--tsne-small"),
                                            (["--prompt", "poem"], "invalid choice")])
def test_bad_knobs_exit_2_before_writing_anything(tmp_path, capsys, flags, expect):
    # in-process (the subprocess path is covered above): same main, no interpreter start-up
    assert_bad_input_in_process(Task4.main, ["--smoke", "--out", str(tmp_path / "out"), *flags], capsys, expect)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_cache_file_is_said_in_one_line_and_recomputed(tmp_path, smoke_run, capsys):
    """A cache is recomputable: a file that cannot be read costs one line and the
    computation, never the run; the numbers are those of a clean run."""
    out = tmp_path / "out"
    shutil.copytree(smoke_run, out)
    victim = next((out / "cache").glob("clip-images-test-*.pt"))
    victim.write_bytes(b"not a torch file")
    capsys.readouterr()
    Task4.main(["--smoke", "--out", str(out), "--experiments", "zeroshot"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "unreadable" in ln]
    assert len(err) == 1 and victim.name in err[0] and "computing it again" in err[0]
    assert torch.load(victim, weights_only=True)["value"].shape[0] == 300   # rewritten, whole
    assert load_metrics(out)["experiments"]["zeroshot"] == load_metrics(smoke_run)["experiments"]["zeroshot"] | \
        {"seconds": load_metrics(out)["experiments"]["zeroshot"]["seconds"]}


def test_replot_redraws_every_figure_without_computing(smoke_run, tmp_path, monkeypatch):
    """--replot needs no model, no data and no embedding cache."""
    assert_replot_redraws(Task4, smoke_run, tmp_path, monkeypatch, [Path(f).stem for f in FIGURES],
                          ["load_clip", "load_stl10"])


def test_replot_without_plot_data_exits_2(tmp_path, capsys, smoke_run):
    assert_replot_needs_plot_data(Task4, smoke_run, tmp_path, capsys, "gap")


def test_smoke_answers_every_assignment_question(smoke_run):
    """summary.md, metrics.json and index.html answer each question of the handout (tests/test_findings.py)."""
    from test_findings import assert_findings

    assert_findings(smoke_run, report)


def test_smoke_with_two_seeds(smoke_run, tmp_path):
    """Issue 21: --seeds 0,1 writes each seed's run, the merged metrics and every figure (conftest)."""
    check_two_seed_smoke(Task4, smoke_run, tmp_path)
