"""Full size, offline, through the DEFAULT loading code: Task 2 (ViT-B/16, 1,000 labels,
224 px) and Task 4 (open_clip ViT-B-32, `pretrained="openai"`, 224 px), every experiment
on a handful of images, on CPU. `python -m pytest -m fullsize` (deselected by default).

How the default loading code runs offline: random weights of the right shapes are saved
under the real file names in a temporary Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1):
  models--google--vit-base-patch16-224/snapshots/<rev>/{config.json, model.safetensors,
      preprocessor_config.json} + refs/main, read by `from_pretrained` as for a user;
  models--timm--vit_base_patch32_clip_224.openai/snapshots/<rev>/open_clip_model.safetensors,
      where open_clip's `pretrained="openai"` tag for ViT-B-32 looks (its pretrained.py:
      hf_hub "timm/vit_base_patch32_clip_224.openai/", the default file
      open_clip_pytorch_model.bin, whose safetensors twin it tries first).
The tasks then run as subprocesses, exactly as `python TaskN.py` with that environment.
Data: generated images in CIFAR-10's (32x32) and STL-10's (96x96) torchvision layouts;
the only thing patched is torchvision's MD5 check of those files (stand-ins have the
real layout and shapes, not the real bytes).

The helpers that lay out the fakes are also used by test_task2.py and test_task4.py
(small versions, default suite)."""
from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import OFFLINE_ENV, REPO, assert_png_ok, load_metrics

REV = "0123456789abcdef0123456789abcdef01234567"  # a commit hash as the hub cache stores it
VIT_REPO = "google/vit-base-patch16-224"
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"

# google/vit-base-patch16-224's preprocessor_config.json as the hub serves it (the legacy
# ViTFeatureExtractor format: size as one int, no do_rescale/rescale_factor).
VIT_PREPROCESSOR = {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}

# The sizes of ViT-B/16 (Dosovitskiy et al. 2021, Table 1: 12 layers, width 768, MLP 3072,
# 12 heads; 16x16 patches at 224 px), written here independently of Task2.vit_b16_config.
VIT_B16_SIZES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     patch_size=16, image_size=224, num_channels=3)


# ----------------------------------------------------------------------------
# Fakes: a Hugging Face cache, CIFAR-10 and STL-10 in torchvision's layout
# ----------------------------------------------------------------------------


def hf_snapshot(hub: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a hub cache (HF_HUB_CACHE = HF_HOME/hub):
    models--org--name/refs/main holds the commit, snapshots/<commit>/ the files."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    return snap


def hub_vit_config(sizes: dict, labels: list[str] | None, architecture: str) -> dict:
    """config.json in the hub's form for a ViT checkpoint (labels None: no id2label, as in
    the ImageNet-21k feature extractor google/vit-base-patch16-224-in21k)."""
    cfg = {"architectures": [architecture], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "model_type": "vit",
           "qkv_bias": True, "transformers_version": "4.13.0.dev0", **sizes}
    if labels is not None:
        cfg["id2label"] = {str(i): n for i, n in enumerate(labels)}
        cfg["label2id"] = {n: i for i, n in enumerate(labels)}
    return cfg


def write_vit_checkpoint(hub: Path, repo_id: str, sizes: dict, labels: list[str] | None, head: bool = True,
                         seed: int = 0) -> Path:
    """Random weights of a ViT classifier (head=True) or of a bare ViTModel (head=False:
    backbone + pooler, no classifier) under the hub's file names, with its config.json and
    preprocessor_config.json. save_pretrained writes the hub's weight names."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    snap = hf_snapshot(hub, repo_id)
    cfg = hub_vit_config(sizes, labels, "ViTForImageClassification" if head else "ViTModel")
    torch.manual_seed(seed)
    model = (ViTForImageClassification if head else ViTModel)(ViTConfig(**{k: v for k, v in cfg.items()
                                                                           if k != "architectures"}))
    model.save_pretrained(snap)
    (snap / "config.json").write_text(json.dumps(cfg, indent=2))
    (snap / "preprocessor_config.json").write_text(json.dumps(VIT_PREPROCESSOR, indent=2))
    return snap


def write_open_clip_checkpoint(hub: Path, model_name: str = "ViT-B-32", tag: str = "openai") -> Path:
    """Random weights of `model_name` where open_clip looks for the tag's weights."""
    import open_clip
    import safetensors.torch
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    hf_hub = open_clip.get_pretrained_cfg(model_name, tag)["hf_hub"]
    repo_id, filename = os.path.split(hf_hub)
    assert (repo_id, filename) == (CLIP_REPO, ""), hf_hub  # what open_clip 3.3 fetches for ViT-B-32/openai
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = hf_snapshot(hub, repo_id) / HF_SAFE_WEIGHTS_NAME
    safetensors.torch.save_file(state, str(path))
    return path


def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """CIFAR-10's python layout (cifar-10-batches-py: data_batch_1..5, test_batch,
    batches.meta; rows of 3,072 bytes, R then G then B planes) with generated 32x32 images."""
    import common

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    x, y = common.make_shapes(n_train + n_test, 10, 32, seed=seed)
    rows, labels = x.reshape(len(x), 3072).numpy(), y.tolist()
    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, 1):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rows[idx], "labels": [labels[j] for j in idx]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": rows[n_train:], "labels": labels[n_train:]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": common.CIFAR10_CLASSES}, f)


def write_fake_stl10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """STL-10's binary layout (stl10_binary: *_X.bin uint8 images stored column-major,
    *_y.bin labels 1..10, class_names.txt) with generated 96x96 images; unlabeled_X.bin is
    present but empty."""
    import common

    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = common.make_shapes(n, 10, 96, seed=s)
        (d / f"{split}_X.bin").write_bytes(x.numpy().transpose(0, 1, 3, 2).tobytes())
        (d / f"{split}_y.bin").write_bytes((y.numpy() + 1).astype(np.uint8).tobytes())
    (d / "unlabeled_X.bin").write_bytes(b"")
    (d / "class_names.txt").write_text("\n".join(common.STL10_CLASSES) + "\n")


# Runs a task script as `python TaskN.py ...` would, after one change: torchvision accepts the
# generated dataset files without their MD5 (they have the real layout, not the real bytes).
RUNNER = """
import os, runpy, sys
import torchvision.datasets.cifar as cifar, torchvision.datasets.stl10 as stl10
cifar.check_integrity = stl10.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_task(script: str, args: list[str], hf_home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME")}
    env.update(OFFLINE_ENV, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # let library warnings (open_clip's QuickGELU mismatch) reach stderr
    return subprocess.run([sys.executable, "-c", RUNNER, script, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_all_finite(metrics: dict, where: str = "") -> int:
    """Every leaf a finite number, a string or a bool; NaN/inf would be null in metrics.json.
    Returns the count of numbers checked."""
    n = 0
    for k, v in metrics.items():
        key = f"{where}/{k}"
        assert k != "error", f"{key}: {v}"
        if isinstance(v, dict):
            n += assert_all_finite(v, key)
        elif isinstance(v, list):
            flat = np.asarray(v, dtype=object).ravel() if v and not isinstance(v[0], (list, str)) else None
            if flat is None:
                n += assert_all_finite({str(i): x for i, x in enumerate(v)}, key)
            else:
                assert all(x is not None and (isinstance(x, str) or math.isfinite(x)) for x in flat), f"{key}: {v}"
                n += len(flat)
        else:
            assert v is not None, f"{key} is null (NaN or inf before JSON)"
            if isinstance(v, (int, float)):
                assert math.isfinite(v), f"{key} = {v}"
                n += 1
    return n


# ----------------------------------------------------------------------------
# The full-size runs
# ----------------------------------------------------------------------------

pytestmark = pytest.mark.fullsize


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> dict:
    """The hub cache with both checkpoints, and the two datasets."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    base = tmp_path_factory.mktemp("fullsize")
    hf_home, data = base / "hf", base / "data"
    write_vit_checkpoint(hf_home / "hub", VIT_REPO, VIT_B16_SIZES, list(_IMAGENET_CATEGORIES))
    write_open_clip_checkpoint(hf_home / "hub")
    write_fake_cifar10(data, n_train=50, n_test=20)
    # 60 STL-10 training images: 6 per class, so the linear probe's stratified validation
    # split (20%) holds every class
    write_fake_stl10(data, n_train=60, n_test=20)
    return {"hf_home": hf_home, "data": data, "base": base}


TASK2_FIGURES = ["classify_top5", "attention_heads", "attention_map_china", "attention_map_flower", "heads_entropy",
                 "heads_distance", "heads_similarity", "masking_accuracy", "masking_agreement", "masking_examples",
                 "probe_layers", "probe_cosine"]


def test_task2_full_size_through_from_pretrained(fakes):
    out = fakes["base"] / "task2"
    t0 = time.perf_counter()
    r = run_task("Task2.py", ["--device", "cpu", "--data-root", str(fakes["data"]), "--out", str(out),
                              "--train-images", "20", "--test-images", "10", "--heads-images", "2",
                              "--mask-fractions", "0,0.5", "--mask-seeds", "1", "--batch-size", "8"],
                 fakes["hf_home"])
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\nTask 2 at full size: {seconds:.1f} s\n{r.stdout[-1500:]}")
    assert "model: google/vit-base-patch16-224, 12 layers x 12 heads, 224x224 input, 14x14 patches" in r.stdout
    for name in TASK2_FIGURES:
        assert_png_ok(out / f"{name}.png")
    doc = load_metrics(out)
    m = doc["experiments"]
    assert doc["env"]["data"] == "real" and list(m) == ["classify", "attention", "heads", "masking", "probe"]
    assert assert_all_finite(m) > 100
    assert set(m["classify"]["images"]) == {"china", "flower"}  # the default images: the two clean photos
    assert m["attention"]["uniform_entropy_bits"] == pytest.approx(math.log2(196))
    assert np.asarray(m["heads"]["distance_px"]).shape == (12, 12)
    assert m["masking"]["patches"] == 196 and m["masking"]["masked_patches"] == [0, 98]
    assert len(m["probe"]["cls_layer_acc"]) == 12


def test_task2_random_init_builds_the_checkpoint_architecture(fakes, tmp_path):
    """--weights none: no hub access at all (no HF_HOME cache), the same 86.6 M-parameter
    network the checkpoint holds."""
    import Task2
    from transformers import ViTForImageClassification

    from_hub = ViTForImageClassification.from_pretrained(hf_snapshot(fakes["hf_home"] / "hub", VIT_REPO))
    built = ViTForImageClassification(Task2.vit_b16_config())
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in from_hub.state_dict().items()}
    assert sum(p.numel() for p in built.parameters()) == 86_567_656  # ViT-B/16 with a 1,000-way head
    out = tmp_path / "t2-none"
    Task2.main(["--weights", "none", "--device", "cpu", "--experiments", "classify,attention", "--out", str(out)])
    m = load_metrics(out)["experiments"]
    assert assert_all_finite(m) > 10
    for name in ("classify_top5", "attention_map_china", "attention_heads"):
        assert_png_ok(out / f"{name}.png")


TASK4_FIGURES = ["zeroshot_accuracy", "zeroshot_per_class", "zeroshot_confusion", "gap_cosine_hist", "gap_joint_tsne",
                 "gap_raw_vs_normalised", "procrustes_accuracy", "procrustes_joint_tsne", "gap_shift_accuracy"]


def test_task4_full_size_through_the_openai_tag(fakes):
    out = fakes["base"] / "task4"
    t0 = time.perf_counter()
    r = run_task("Task4.py", ["--device", "cpu", "--data-root", str(fakes["data"]), "--out", str(out),
                              "--tsne-small", "10", "--tsne-large", "20", "--pairs", "500"], fakes["hf_home"])
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\nTask 4 at full size: {seconds:.1f} s\n{r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}")
    # OpenAI's weights were trained with QuickGELU: the model must be built with it, and
    # open_clip must have had nothing to warn about.
    assert "model: ViT-B-32 / openai, activation QuickGELU, input (224, 224)" in r.stdout
    assert "QuickGELU mismatch" not in r.stderr
    for name in TASK4_FIGURES:
        assert_png_ok(out / f"{name}.png")
    doc = load_metrics(out)
    m = doc["experiments"]
    assert doc["env"]["data"] == "real" and list(m) == ["zeroshot", "gap", "procrustes", "gap_shift"]
    assert assert_all_finite(m) > 100
    assert m["zeroshot"]["n_test"] == 20 and m["procrustes"]["n_train"] == 60
    assert m["gap"]["image_norm_raw_mean"] > 0 and m["gap"]["separation_raw"] > 0
    cache = sorted(p.name.rsplit("-", 1)[0] for p in (out / "cache").glob("*.pt"))
    assert cache == sorted(["clip-images-train", "clip-images-test"] + [f"clip-text-{s}" for s in
                                                                        ("label", "photo", "descriptive",
                                                                         "clip_stl10", "ensemble")])


def test_task4_pretrained_none_builds_quick_gelu_offline():
    import Task4

    model, _, pp = Task4.load_clip("ViT-B-32", "none", smoke=False, device=torch.device("cpu"))
    assert Task4.activation_name(model) == "QuickGELU"
    assert pp["size"] == (224, 224) and sum(p.numel() for p in model.parameters()) == 151_277_313
