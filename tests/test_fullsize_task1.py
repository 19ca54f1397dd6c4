"""Task 1 at full size, offline: ResNet-152 (and ResNet-18 for `depth`) at 224 px through
the default loading code, every experiment on a handful of images in CIFAR's shape.

Random weights of the right shapes are saved under torchvision's real checkpoint
names (`$TORCH_HOME/hub/checkpoints/resnet152-f82ba261.pth`, as the weights enum's url
names them), so `torchvision.models.get_model(arch, weights=...)` runs exactly as for a
user who has downloaded them: torchvision passes check_hash=True, but torch.hub
verifies the hash only while downloading, never a file already in the cache. Their
BatchNorm running statistics are measured by forwarding images in train mode
(torch.optim.swa_utils.update_bn, a second implementation of Task1's recalibration),
as a trained network's match its activations.

Run with `python -m pytest -m fullsize tests/test_fullsize_task1.py` (deselected by
default; .ci/run runs it). About two minutes on 2 idle CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

import common
import Task1
from conftest import assert_png_ok

pytestmark = pytest.mark.fullsize

CALIB_IMAGES = 16  # images whose train-mode statistics become the checkpoints' BatchNorm statistics


def checkpoint_path(arch: str, torch_home: Path) -> Path:
    """Where torch.hub looks for the weights Task1 asks for (--weights imagenet: IMAGENET1K_V1)."""
    w = torchvision.models.get_model_weights(arch)[Task1.weights_name(arch, "imagenet")]
    return torch_home / "hub" / "checkpoints" / Path(w.url).name


def write_random_checkpoint(arch: str, torch_home: Path, img_size: int = 224, seed: int = 0) -> Path:
    """Random `arch` weights with calibrated BatchNorm statistics, saved where
    get_model(weights=...) reads them. Returns the file's path."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    x, _ = common.make_shapes(CALIB_IMAGES, 10, 32, seed=seed)
    batches = [Task1.preprocess(x[i:i + 8], img_size) for i in range(0, len(x), 8)]
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model)
    path = checkpoint_path(arch, torch_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch-home")
    for arch in ("resnet152", "resnet18"):  # --arch and the other of the recipe's depth_archs
        write_random_checkpoint(arch, home)
    return home


# Every experiment at the real sizes (architecture, 224 px, the default depth and width of
# the CIFAR ResNet) on a handful of images; explicit flags beat the smoke values, and the
# recipe's held-out sizes and batches shrink to match. Budget at ~4-6 ResNet-152 images/s:
# residual re-extracts train + test for 6 cut sets.
FULLSIZE_ARGS = [
    "--smoke", "--arch", "resnet152", "--img-size", "224",
    "--train-size", "14", "--test-size", "12", "--eval-batch-size", "8", "--epochs", "2", "--batch-size", "4",
    "--n-vis", "12", "--embed", "both",
    "--transfer-train-size", "6", "--transfer-epochs", "1", "--transfer-batch-size", "4",
    "--scratch-train-size", "16", "--scratch-epochs", "1",
]
FULLSIZE_RECIPE = dataclasses.replace(Task1.SMOKE_RECIPE, val_size=4, bn_calib_size=8, grad_batch=2,
                                      probe_train_size=10, n_pairs=2, throughput_batches=1, transfer_val_size=2,
                                      transfer_test_size=4, scratch_width=16, scratch_test_size=8,
                                      scratch_batch_size=8, depth_archs=("resnet18", "resnet152"),
                                      scratch_depths=(20, 56))
FIGURES = ["baseline_curves", "baseline_confusion", "residual_curves", "residual_gradnorms", "features_tsne",
           "features_umap", "features_tsne_vs_umap", "features_separability", "features_confused_pairs",
           "transfer_curves", "transfer_compute", "depth_comparison", "scratch_shortcuts_curves"]
# Metrics that are null by design on so short a run (a target never reached, no divergence).
MAY_BE_NULL = {"steps_to_target_acc", "plain_over_residual_steps_to_target", "diverged_at_step"}


def numeric_leaves(node, path=""):
    """(path, value) of every number or null in nested dicts/lists (strings skipped)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from numeric_leaves(v, f"{path}/{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from numeric_leaves(v, f"{path}[{i}]")
    elif node is None or (isinstance(node, (int, float)) and not isinstance(node, bool)):
        yield path, node


def assert_all_finite(experiments: dict) -> int:
    """Every metric a finite number (metrics.json writes NaN/inf as null), except the
    keys in MAY_BE_NULL; no experiment recorded an error. Returns the count checked."""
    n = 0
    for name, m in experiments.items():
        assert "error" not in m, f"{name}: {m['error']}"
        for path, v in numeric_leaves(m, name):
            if v is None:
                assert path.split("/")[-1].split("[")[0] in MAY_BE_NULL, f"{path} is null (NaN or inf)"
            else:
                assert math.isfinite(v), f"{path} = {v}"
            n += 1
    return n


def test_every_experiment_at_full_size_through_the_default_loading_code(torch_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    out = tmp_path / "out"
    Task1.main([*FULLSIZE_ARGS, "--weights", "imagenet", "--out", str(out)], recipe=FULLSIZE_RECIPE)
    log = capsys.readouterr().out
    assert "Downloading" not in log, "torch.hub tried to download instead of reading the cached checkpoint"
    for name in FIGURES:
        assert_png_ok(out / f"{name}.png")
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["experiments"]
    assert list(m) == Task1.EXPERIMENTS
    assert doc["config"]["arch"] == "resnet152" and doc["config"]["weights"] == "imagenet"
    assert assert_all_finite(m) > 300
    assert m["baseline"]["feature_dim"] == 2048
    assert m["baseline"]["weights_loaded"] == m["depth"]["resnet152"]["weights_loaded"] == "IMAGENET1K_V1"
    assert m["residual"]["all"]["blocks_cut"] == 50 and m["residual"]["selected_blocks"] == \
        "layer1.1,layer2.4,layer3.18,layer4.1"
    # ResNet-152 has 60,192,808 parameters, of which the 1000-way fc holds 2048 * 1000 + 1000
    assert m["depth"]["resnet152"]["backbone_params_millions"] == pytest.approx(58.143808)
    assert m["depth"]["resnet18"]["feature_dim"] == 512
    assert m["transfer"]["scratch_full"]["trainable_params"] == 60_192_808 - 2_049_000 + 2048 * 100 + 100
    # calibrated BatchNorm: the scratch arms start near chance's loss ln(100) = 4.6, not at ~1e8
    for arm in ("scratch_head", "scratch_layer4", "scratch_full"):
        assert m["transfer"][arm]["final_train_loss"] < 50, (arm, m["transfer"][arm]["final_train_loss"])
    nets = m["scratch_shortcuts"]["nets"]  # He et al. 2016, Table 6: ResNet-20 0.27 M, ResNet-56 0.85 M
    assert nets["resnet56"]["params"] == nets["plain56"]["params"] == 853_018
    assert nets["resnet20"]["params"] == nets["plain20"]["params"] == 269_722
    assert set(m["features"]["embedding"]) == {"tsne", "umap"}


def test_random_init_resnet152_is_well_scaled_after_recalibration(tmp_path):
    """--weights none at full size: ResNet-152's BatchNorm statistics are measured on
    training images, so its pooled features are O(1)-O(10) (with torchvision's initial
    0/1 statistics they reached 2.4e8 at 224 px, far past float16's 65,504)."""
    args = Task1.build_parser().parse_args(["--img-size", "224", "--eval-batch-size", "8"])
    x, _ = common.make_shapes(12, 10, 32, seed=1)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = Task1.prepare_backbone("resnet152", "none", x[:8], args, cpu)
    assert not model.training
    feats = Task1.extract_features(model, x[8:], 224, 4, cpu)
    assert torch.isfinite(feats).all() and feats.abs().max() < 1e3, feats.abs().max()
