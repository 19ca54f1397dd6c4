"""Task 1: shortcut ablation, feature hooks, head training, transfer freezing,
confused pairs, preprocessing, the recipe, the --smoke run and bad input. Offline, CPU."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

import architecture
import harness
import Task1
from architecture import CifarBlock
from conftest import (assert_bad_input, assert_bad_input_in_process, assert_figures_readable, assert_in_range,
                      assert_png_ok, assert_replot_redraws, check_two_seed_smoke, load_metrics)
from reports import task1 as report

# ----------------------------------------------------------------------------
# Shortcut ablation
# ----------------------------------------------------------------------------


def randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are 0/1)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


def conv_bn(x, conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """conv then eval-mode BatchNorm, written out with the functional ops."""
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]


def hand_branch(block, x):
    """F(x), the residual branch before the final ReLU, for a BasicBlock (3x3, 3x3) or a
    Bottleneck (1x1, 3x3, 1x1), written out by hand."""
    h = torch.relu(conv_bn(x, block.conv1, block.bn1))
    if isinstance(block, Bottleneck):
        h = torch.relu(conv_bn(h, block.conv2, block.bn2))
        return conv_bn(h, block.conv3, block.bn3)
    return conv_bn(h, block.conv2, block.bn2)


def two_blocks(kind: str) -> nn.Sequential:
    """Two torchvision blocks in a row, the first with a strided downsample shortcut."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "bottleneck":  # 32 -> 64 channels (planes 16 x expansion 4)
        down = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
        blocks = nn.Sequential(Bottleneck(32, 16, stride=2, downsample=down), Bottleneck(64, 16))
    else:
        down = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
        blocks = nn.Sequential(BasicBlock(32, 64, stride=2, downsample=down), BasicBlock(64, 64))
    randomise_bn(blocks, gen)
    return blocks.eval()


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_cut_block_returns_relu_of_residual_branch_and_undo_restores(kind):
    blocks = two_blocks(kind)
    x = torch.randn(3, 32, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fx = hand_branch(blocks[0], x)
        shortcut = conv_bn(x, blocks[0].downsample[0], blocks[0].downsample[1])
        h_orig = blocks[0](x)
        out_orig = blocks[1](h_orig)
        # the intact block is relu(F(x) + downsample(x)): this checks the hand-written F
        assert torch.allclose(h_orig, torch.relu(fx + shortcut), atol=1e-5)
        architecture.cut_shortcuts(blocks, ["0"])
        h_cut = blocks[0](x)
        out_untouched = blocks[1](h_orig)  # block 1 was not cut: same input, same output
    assert torch.allclose(h_cut, torch.relu(fx), atol=1e-5), "cut block is not relu(F(x))"
    assert not torch.allclose(h_cut, h_orig, atol=1e-3), "cutting the shortcut changed nothing"
    assert torch.equal(out_untouched, out_orig)
    assert "forward" not in blocks[1].__dict__
    architecture.restore_shortcuts(blocks, ["0"])
    assert "forward" not in blocks[0].__dict__
    with torch.no_grad():
        assert torch.equal(blocks[0](x), h_orig)
        assert torch.equal(blocks(x), out_orig)


def test_shortcuts_cut_context_restores_on_error_and_changes_whole_model():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    blocks = architecture.residual_blocks(model)
    assert blocks == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    with torch.no_grad():
        before = model(x)
        with pytest.raises(RuntimeError):
            with architecture.shortcuts_cut(model, blocks):
                cut = model(x)
                raise RuntimeError("boom")
        after = model(x)
    assert not torch.allclose(cut, before)
    assert torch.equal(after, before)
    assert not any("forward" in model.get_submodule(b).__dict__ for b in blocks)


def test_resolve_blocks_auto_and_errors():
    assert Task1.resolve_blocks("resnet152", "auto") == ["layer1.1", "layer2.4", "layer3.18", "layer4.1"]
    assert Task1.resolve_blocks("resnet18", "layer3.1,layer1.0") == ["layer1.0", "layer3.1"]
    with pytest.raises(harness.UserError, match="layer3.0-35"):
        Task1.resolve_blocks("resnet152", "layer3.36")


# ----------------------------------------------------------------------------
# Feature hooks
# ----------------------------------------------------------------------------


def test_stage_features_shapes_names_and_values():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    feats = Task1.stage_features(model, images, 32, 2, torch.device("cpu"))
    assert list(feats) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stem": (5, 64), "layer1": (5, 64), "layer2": (5, 128), "layer3": (5, 256), "layer4": (5, 512)}
    # second computation: the stem and the network's own pooled output, without hooks
    with torch.no_grad():
        x = Task1.preprocess(images, 32)
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        pooled = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(stem))))), 1)
    assert torch.allclose(feats["stem"], stem.mean((2, 3)), atol=1e-5)
    assert torch.allclose(feats["layer4"], pooled, atol=1e-5)
    assert torch.allclose(Task1.backbone_features(model, x), pooled)
    assert all(not m._forward_hooks for m in model.modules()), "hooks were left behind"


# ----------------------------------------------------------------------------
# Data preprocessing
# ----------------------------------------------------------------------------


def test_preprocess_resizes_and_normalises_with_imagenet_statistics():
    img = torch.empty(2, 3, 32, 32, dtype=torch.uint8)
    img[:, 0], img[:, 1], img[:, 2] = 255, 0, 128
    x = Task1.preprocess(img, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    expect = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for c in range(3):
        assert torch.allclose(x[:, c], torch.full((2, 64, 64), expect[c]), atol=1e-4)


def test_random_crop_flip_is_a_crop_of_the_reflect_padded_image():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = Task1.random_crop_flip(x, torch.Generator().manual_seed(3))
    pad = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    for b in range(4):
        found = any(np.allclose(out[b].numpy(), (c[..., ::-1] if flip else c))
                    for oy in range(9) for ox in range(9) for flip in (False, True)
                    for c in [pad[b, :, oy:oy + 8, ox:ox + 8]])
        assert found, f"image {b} is no crop/flip of its padded original"


# ----------------------------------------------------------------------------
# Head training on cached features, confusion, confused pairs
# ----------------------------------------------------------------------------


def test_head_on_cached_features_learns_a_separable_set():
    """Five Gaussian blobs in 64-D: centres drawn from N(0, I), so about sqrt(2 * 64) = 11
    apart, unit noise: the classes overlap by far less than 1%, a linear head must reach ~1."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 64, generator=g)
    y = torch.arange(600) % 5
    x = centres[y] + torch.randn(600, 64, generator=g) + 3.0  # offset: the head must cope with a mean
    gen = torch.Generator().manual_seed(0)
    head, hist = Task1.train_head(lambda: Task1.cached_batches(x[:400], y[:400], 32, gen), 64, 5, x[400:500],
                                  y[400:500], epochs=6, lr=1e-2, weight_decay=1e-4, seed=0, desc="blobs")
    assert len(hist["val_acc"]) == 6 and hist["train_loss"][-1] < hist["train_loss"][0]
    _, acc, pred = Task1.evaluate_head(head, x[500:], y[500:])
    assert acc >= 0.97
    # confusion matrix agrees with scikit-learn's
    from sklearn.metrics import confusion_matrix

    assert np.array_equal(Task1.common.confusion_matrix(y[500:].numpy(), pred.numpy(), 5),
                          confusion_matrix(y[500:].numpy(), pred.numpy(), labels=range(5)))


def test_backbone_batches_give_the_cached_features_without_augmentation():
    """The uncached path (features recomputed per minibatch) must see exactly the
    features the cache holds, in the same shuffled order; augmentation changes them."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    cpu = torch.device("cpu")
    cached = Task1.extract_features(model, images, 32, 4, cpu)
    via_backbone = list(Task1.backbone_batches(model, images, labels, 4, 32, cpu, torch.Generator().manual_seed(5),
                                               augment=False))
    via_cache = list(Task1.cached_batches(cached, labels, 4, torch.Generator().manual_seed(5)))
    assert [len(y) for _, y in via_backbone] == [4, 4, 2]
    for (fb, yb), (fc, yc) in zip(via_backbone, via_cache):
        assert torch.equal(yb, yc) and torch.allclose(fb, fc, atol=1e-4)
    augmented = torch.cat([f for f, _ in Task1.backbone_batches(
        model, images, labels, 10, 32, cpu, torch.Generator().manual_seed(5), augment=True)])
    assert augmented.shape == (10, 512) and not torch.allclose(augmented, cached[torch.randperm(
        10, generator=torch.Generator().manual_seed(5))], atol=1e-3)


def test_cached_batches_cover_every_sample_once_per_epoch():
    x, y = torch.arange(70.0)[:, None], torch.arange(70)
    seen = torch.cat([b for _, b in Task1.cached_batches(x, y, 32, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(70))


def test_most_confused_pairs_and_class_separation():
    cm = np.array([[50, 3, 9],
                   [4, 40, 1],
                   [2, 0, 45]])
    # symmetric confusions: (0,1) = 7, (0,2) = 11, (1,2) = 1
    assert Task1.most_confused_pairs(cm, 2) == [(0, 2, 11), (0, 1, 7)]
    # class 0 at (+-1, 0), class 1 at (10 +- 1, 0): centroids 10 apart, RMS spread 1 each -> 10
    feats = np.array([[-1, 0], [1, 0], [9, 0], [11, 0], [10, 3], [10, -3]], float)
    labels = np.array([0, 0, 1, 1, 2, 2])
    sep = Task1.class_separation(feats, labels, [(0, 1), (1, 2)])
    assert sep[0] == pytest.approx(10.0)
    # class 2: centroid (10, 0), spread 3; vs class 1 spread 1: distance 0 -> 0
    assert sep[1] == pytest.approx(0.0)


# ----------------------------------------------------------------------------
# Transfer arms
# ----------------------------------------------------------------------------


def test_transfer_arms_freeze_exactly_what_they_claim():
    """ResNet-18 with a 100-way head, trainable parameters counted by hand:
    fc 512*100 + 100 = 51,300; layer4 = block 0 (3x3 256->512, 3x3 512->512, 1x1
    downsample 256->512, three BNs of 2*512) + block 1 (two 3x3 512->512, two BNs)
    = 3,673,088 + 4,720,640 = 8,393,728; the whole network: 11,689,512 (the
    published 1000-class count) - 513,000 + 51,300 = 11,227,812."""
    torch.manual_seed(0)
    expected = {"head": 51_300, "layer4": 8_393_728 + 51_300, "full": 11_227_812}
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for strategy, n in expected.items():
        model = torchvision.models.resnet18(num_classes=100)
        assert Task1.freeze_for_transfer(model, strategy) == n
        Task1.transfer_train_mode(model, strategy)
        assert model.layer3[0].bn1.training == (strategy == "full")
        assert model.layer4[0].bn1.training == (strategy != "head")
        F.cross_entropy(model(x), y).backward()
        with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)
        assert with_grad == n, f"{strategy}: {with_grad} parameters got gradients, expected {n}"


def tiny_transfer_setup(n: int = 8):
    """A random ResNet-18 backbone, 32 px uint8 images of 5 classes and the args/recipe transfer_model reads."""
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.arange(n) % 5
    data = Task1.Data(x, y, x, y, list("abcde"), torch.arange(n), torch.arange(n))
    args = Task1.build_parser().parse_args(["--arch", "resnet18", "--img-size", "32", "--eval-batch-size", "4"])
    return torchvision.models.resnet18().eval(), data, args, dataclasses.replace(Task1.SMOKE_RECIPE, bn_calib_size=n)


def test_head_arms_train_the_baselines_head_and_the_others_a_linear_fc():
    """Issue 20: pretrained_head (and scratch_head) train make_head, BatchNorm1d without affine + Linear, as the
    baseline does, not a bare Linear; its BatchNorm learns statistics in train mode although the backbone is
    frozen in eval mode. layer4 and full arms keep torchvision's Linear fc."""
    backbone, data, args, r = tiny_transfer_setup()
    cpu = torch.device("cpu")
    for init in ("pretrained", "scratch"):
        for strategy in ("head", "layer4", "full"):
            model = Task1.transfer_model(init, strategy, backbone, data, args, r, cpu)
            if strategy != "head":
                assert type(model.fc) is nn.Linear and model.fc.out_features == 5
                continue
            assert [type(m) for m in model.fc] == [type(m) for m in Task1.make_head(512, 5)]
            bn, fc = model.fc
            assert bn.num_features == 512 and not bn.affine and (fc.in_features, fc.out_features) == (512, 5)
            assert Task1.freeze_for_transfer(model, "head") == 512 * 5 + 5
            Task1.transfer_train_mode(model, "head")
            assert bn.training and not model.layer4[0].bn1.training
    assert type(backbone.fc) is nn.Linear  # the backbone itself is untouched


def test_scratch_transfer_arms_train_every_layer_at_the_from_scratch_lr():
    """Pretrained arms: fc at transfer_lr, trained backbone layers at backbone_lr_mult x that (fine-tuning
    practice); scratch arms: every trained layer at the recipe's transfer_scratch_lr (issue 20: before, random
    weights got the pretrained recipe, backbone at 1e-4)."""
    backbone, data, args, _ = tiny_transfer_setup()
    r = dataclasses.replace(Task1.SMOKE_RECIPE, bn_calib_size=8, transfer_scratch_lr=5e-3)
    assert Task1.RECIPE.transfer_scratch_lr == 1e-3 and Task1.RECIPE.transfer_lr * Task1.RECIPE.backbone_lr_mult == 1e-4
    expected = {("pretrained", "head"): [1e-3], ("pretrained", "layer4"): [1e-3, 1e-4],
                ("pretrained", "full"): [1e-3, 1e-4], ("scratch", "head"): [5e-3], ("scratch", "layer4"): [5e-3, 5e-3],
                ("scratch", "full"): [5e-3, 5e-3]}
    for (init, strategy), lrs in expected.items():
        model = Task1.transfer_model(init, strategy, backbone, data, args, r, torch.device("cpu"))
        n = Task1.freeze_for_transfer(model, strategy)
        opt = Task1.transfer_optimizer(model, init, r)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(lrs), (init, strategy)
        assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n  # every trained weight, once


def test_imagenet_weights_are_v1_at_every_depth_unless_v2_is_asked_for(monkeypatch):
    """Issue 20: --weights imagenet loads IMAGENET1K_V1 for every ResNet (one recipe at every depth; before,
    ResNet-152 got V2 and ResNet-18 V1); imagenet-v2 changes only the ResNets torchvision has a V2 of."""
    has_v2 = {"resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
              "wide_resnet101_2"}  # torchvision's model docs
    for arch in Task1.RESNETS:
        assert Task1.weights_name(arch, "imagenet") == "IMAGENET1K_V1"
        assert Task1.weights_name(arch, "imagenet-v2") == ("IMAGENET1K_V2" if arch in has_v2 else "IMAGENET1K_V1")
        assert Task1.weights_name(arch, "none") == "none"
    asked = []
    monkeypatch.setattr(torchvision.models, "get_model", lambda arch, weights: asked.append((arch, str(weights))))
    for arch, weights in (("resnet152", "imagenet"), ("resnet152", "imagenet-v2"), ("resnet18", "imagenet-v2")):
        Task1.build_resnet(arch, weights)
    assert [w.split(".")[-1] for _, w in asked] == ["IMAGENET1K_V1", "IMAGENET1K_V2", "IMAGENET1K_V1"]
    # the feature cache keys tell the two apart (an old V2 cache must not answer for V1)
    defaults = vars(Task1.build_parser().parse_args([]))

    def key(weights):
        args = argparse.Namespace(**{**defaults, "weights": weights})
        return Task1.feature_settings(args, Task1.RECIPE, "resnet152", "train", 10, torch.device("cpu"))

    assert key("imagenet")["weights"] == "IMAGENET1K_V1" and key("imagenet-v2")["weights"] == "IMAGENET1K_V2"


def test_preprocessing_suits_v1_and_v2_weights_alike():
    """V1 and V2 evaluate at resize 256 vs 232 then crop 224: a photo's resize-then-crop, which preprocess does
    not do (CIFAR's whole 32 px image goes to --img-size); both normalise with the ImageNet mean and std
    preprocess uses, so nothing in preprocessing depends on the version."""
    for name in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        t = torchvision.models.ResNet152_Weights[name].transforms()
        assert tuple(t.mean) == Task1.IMAGENET_MEAN and tuple(t.std) == Task1.IMAGENET_STD
        assert t.crop_size == [224] and t.resize_size == ([256] if name.endswith("V1") else [232])


def test_gradient_norms_count_the_same_parameters_with_and_without_shortcuts():
    """Known answer, computed here independently: the same seed, forward and backward by hand, the norm of every
    block's gradient over its parameters outside the downsample shortcut (which the plain network never uses,
    so it has no gradient there); with shortcuts layer2.0's downsample does have a gradient, left out
    (issue 20: it was counted, 17% of ResNet-152's layer4.0)."""
    x, y = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])
    for cut in (False, True):
        norms, loss = Task1.gradient_norms("resnet18", x, y, 3, 32, torch.device("cpu"), seed=0, cut=cut)
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=3).train()
        if cut:
            architecture.cut_shortcuts(model, architecture.residual_blocks(model))
        ref_loss = F.cross_entropy(model(Task1.preprocess(x, 32)), y)
        ref_loss.backward()
        block = model.layer2[0]
        own = [p.grad for n, p in block.named_parameters() if not n.startswith("downsample")]
        down = [p.grad for p in block.downsample.parameters()]
        assert loss == pytest.approx(ref_loss.item())
        assert norms["layer2.0"] == pytest.approx(torch.sqrt(sum(g.pow(2).sum() for g in own)).item(), rel=1e-5)
        assert all(g is None for g in down) if cut else all(g is not None and g.abs().sum() > 0 for g in down)
        stem = torch.sqrt(sum(p.grad.pow(2).sum() for p in (*model.conv1.parameters(), *model.bn1.parameters())))
        assert norms["stem"] == pytest.approx(stem.item(), rel=1e-5)


# ----------------------------------------------------------------------------
# Random backbones: BatchNorm recalibration, float32 feature cache
# ----------------------------------------------------------------------------


def test_recalibrate_batchnorm_matches_swa_update_bn_and_restores_state():
    """Known answer for the first BatchNorm (after conv1, which no BatchNorm precedes): its
    running mean and variance become the average over the batches of each batch's channel
    mean and unbiased variance (a cumulative average: momentum None). The other layers:
    torch.optim.swa_utils.update_bn on the same batches."""
    images, _ = Task1.common.make_shapes(40, 10, 32, seed=3)
    torch.manual_seed(0)
    ours = torchvision.models.resnet18().eval()
    ref = copy.deepcopy(ours)
    momentum = ours.bn1.momentum
    n = Task1.recalibrate_batchnorm(ours, images, 32, 16, torch.device("cpu"))
    assert n == 40 and not ours.training and ours.bn1.momentum == momentum
    with torch.no_grad():
        torch.optim.swa_utils.update_bn([Task1.preprocess(images[i:i + 16], 32) for i in range(0, 40, 16)], ref)
    for (name, a), b in zip(ours.named_buffers(), ref.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name
    assert not torch.allclose(ours.bn1.running_var, torch.ones(64))  # no longer the initial statistics
    with torch.no_grad():
        outs = [ref.conv1(Task1.preprocess(images[i:i + 16], 32)) for i in range(0, 40, 16)]  # 16, 16, 8 images
    torch.testing.assert_close(ours.bn1.running_mean, torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bn1.running_var, torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0),
                               rtol=1e-4, atol=1e-5)


def test_random_deep_backbone_features_are_calibrated_and_finite_in_the_cache(tmp_path):
    """--weights none with a random ResNet-152 (at 32 px, to stay fast): with
    torchvision's initial BatchNorm statistics its pooled features reached 2.3e5, which
    the float16 cache stored as inf and the head turned into NaN. Now the statistics
    are measured on training images and the cache keeps float32."""
    out = tmp_path / "out"
    Task1.main(["--smoke", "--arch", "resnet152", "--experiments", "baseline", "--train-size", "40",
                "--test-size", "16", "--eval-batch-size", "16", "--out", str(out)],
               recipe=dataclasses.replace(Task1.SMOKE_RECIPE, val_size=8, bn_calib_size=32))
    m = load_metrics(out)["experiments"]
    assert "error" not in m["baseline"], m["baseline"]
    assert_in_range(m, "baseline/test_loss", 0, 100)
    assert_in_range(m, "baseline/final_train_loss", 0, 100)
    caches = list((out / "cache").glob("features-*.pt"))
    assert len(caches) == 2
    for path in caches:
        feats = torch.load(path, weights_only=True)["value"]
        assert feats.dtype == torch.float32 and feats.shape[1] == 2048
        assert torch.isfinite(feats).all() and feats.abs().max() < 1e3, feats.abs().max()


def test_feature_cache_keeps_values_beyond_float16_range(tmp_path):
    """Features above float16's 65,504 come back from the cache exactly, not as inf."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():
        model.layer4[-1].bn2.weight.mul_(1e6)  # pooled features ~1e5-1e6
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    cpu = torch.device("cpu")
    direct = Task1.extract_features(model, images, 32, 3, cpu)
    assert direct.abs().max() > 65504
    args = Task1.build_parser().parse_args(["--smoke", "--out", str(tmp_path), "--img-size", "32",
                                             "--eval-batch-size", "3"])
    idx, labels = torch.arange(6), torch.zeros(6, dtype=torch.long)
    data = Task1.Data(images, labels, images, labels, ["a"], idx, idx)
    cache = harness.Cache(tmp_path)
    *fresh, seconds = Task1.pooled_features(model, "resnet18", data, args, Task1.SMOKE_RECIPE, cpu, cache)
    *cached, again = Task1.pooled_features(model, "resnet18", data, args, Task1.SMOKE_RECIPE, cpu, cache)
    assert seconds is not None and again is None  # the second call read the files
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 2  # train and test
    for f in (*fresh, *cached):
        assert torch.isfinite(f).all() and torch.equal(f, direct)


# ----------------------------------------------------------------------------
# Precision, out-of-memory message, progress lines
# ----------------------------------------------------------------------------


@pytest.fixture
def amp_spy(monkeypatch):
    """For runs under --precision fp16, the T4's code path (torch's CPU autocast and a real
    GradScaler("cpu")): counts autocast(device, train=True) calls
    and the losses scaled: only train=True turns on float16, and its steps need the
    GradScaler, so every training loop must ask for both."""
    calls = {"train": 0, "scaled": 0}
    real_autocast, real_scaler = Task1.common.autocast, Task1.common.grad_scaler

    def autocast(device, train=False):
        calls["train"] += bool(train)
        return real_autocast(device, train)

    def grad_scaler(device):
        scaler = real_scaler(device)
        assert scaler.is_enabled()
        scale = scaler.scale

        def counted(loss):
            calls["scaled"] += 1
            return scale(loss)
        scaler.scale = counted
        return scaler

    monkeypatch.setattr(Task1.common, "autocast", autocast)
    monkeypatch.setattr(Task1.common, "grad_scaler", grad_scaler)
    return calls


def test_transfer_trains_with_training_autocast_and_the_grad_scaler(tmp_path, amp_spy):
    Task1.main(["--smoke", "--precision", "fp16", "--experiments", "transfer", "--transfer-train-size", "24",
                "--transfer-epochs", "1",
                "--transfer-batch-size", "8", "--out", str(tmp_path)],
               recipe=dataclasses.replace(Task1.SMOKE_RECIPE, transfer_val_size=8, transfer_test_size=8))
    assert amp_spy == {"train": 12, "scaled": 12}  # six arms x 2 steps of 8 (16 training images)


def test_scratch_training_uses_training_autocast_and_the_grad_scaler(tmp_path, amp_spy):
    Task1.main(["--smoke", "--precision", "fp16", "--experiments", "scratch_shortcuts", "--scratch-train-size", "32",
                "--scratch-epochs", "1", "--out", str(tmp_path)],
               recipe=dataclasses.replace(Task1.SMOKE_RECIPE, scratch_test_size=8, scratch_batch_size=16))
    assert amp_spy == {"train": 8, "scaled": 8}  # four networks (ResNet and plain at depths 8 and 14) x 2 steps of 16


def test_out_of_memory_names_the_batch_flag_of_the_step_that_ran_out(tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Task1, "extract_features", oom)
    line = assert_bad_input_in_process(Task1.main, ["--smoke", "--experiments", "baseline"], capsys,
                                       "--eval-batch-size", out=tmp_path / "a")
    assert "out of GPU memory" in line
    monkeypatch.undo()
    monkeypatch.setattr(Task1, "evaluate_model", oom)  # only transfer evaluates whole models
    out = tmp_path / "b"
    assert_bad_input_in_process(Task1.main, ["--smoke", "--experiments", "baseline,transfer", "--out", str(out)],
                                capsys, "--transfer-batch-size")
    assert "baseline" in load_metrics(out)["experiments"]  # the finished experiment is kept


def test_long_loops_print_plain_progress_lines_in_a_log(capsys, monkeypatch):
    """Off a terminal (pytest captures stderr) a loop prints plain lines instead of an
    invisible tqdm bar; here every iteration, with the interval set to 0."""
    monkeypatch.setattr(harness.console, "PROGRESS_EVERY_S", 0.0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    Task1.extract_features(model, torch.zeros(6, 3, 32, 32, dtype=torch.uint8), 32, 2, torch.device("cpu"),
                           desc="resnet18 train")
    out = capsys.readouterr().out
    assert "resnet18 train" in out and "3/3" in out


# ----------------------------------------------------------------------------
# Figures: log axis for losses that differ by orders of magnitude
# ----------------------------------------------------------------------------


def test_transfer_loss_axis_turns_logarithmic_when_arms_differ_by_orders_of_magnitude(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(Task1.common, "save_figure", lambda fig, path: figs.append(fig))
    calm = {"pretrained_head": {"train_loss": [2.0, 1.5], "val_acc": [0.3, 0.4]},
            "scratch_head": {"train_loss": [4.6, 4.0], "val_acc": [0.1, 0.1]}}
    wild = {**calm, "scratch_full": {"train_loss": [1e8, 3e5], "val_acc": [0.01, 0.01]}}
    report.plot_transfer_curves(calm, "calm", tmp_path / "a.png")
    report.plot_transfer_curves(wild, "wild", tmp_path / "b.png")
    assert figs[0].axes[0].get_yscale() == "linear" and figs[1].axes[0].get_yscale() == "log"
    assert figs[1].axes[1].get_yscale() == "linear"  # accuracy stays linear
    assert report.spans_orders_of_magnitude([1.0, 99.0]) is False
    assert report.spans_orders_of_magnitude([1.0, 100.0, float("nan"), None, 0.0]) is True


# ----------------------------------------------------------------------------
# scratch_shortcuts: the CIFAR ResNet and its plain twin
# ----------------------------------------------------------------------------


def cifar_resnet_params(n: int, w: int = 16, k: int = 10) -> int:
    """Parameters of He et al.'s CIFAR ResNet (6n + 2 layers), counted by hand: first
    conv 3 -> w and its BN; per stage (w, 2w, 4w channels) n blocks of two 3x3 convs and
    two BNs, the first conv of stages 2 and 3 coming from half the channels; the fc."""
    total = 3 * 9 * w + 2 * w
    c_in = w
    for c in (w, 2 * w, 4 * w):
        total += (c_in * c * 9 + c * c * 9 + 4 * c) + (n - 1) * (2 * c * c * 9 + 4 * c)
        c_in = c
    return total + 4 * w * k + k


@pytest.mark.parametrize("depth, published", [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnet_has_he_et_al_parameter_counts_and_depth(depth, published):
    """Table 6 of He et al. 2016: ResNet-20 0.27 M, ResNet-56 0.85 M, ResNet-110 1.7 M."""
    for shortcuts in (True, False):
        model = architecture.CifarResNet(depth, shortcuts=shortcuts)
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params == cifar_resnet_params((depth - 2) // 6)
        assert abs(n_params - published) / published < 0.02
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth
    assert architecture.CifarResNet(depth)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_plain_and_residual_nets_start_from_the_same_weights():
    """One seed gives both networks the same parameters (option A shortcuts have none),
    so scratch_shortcuts compares shortcuts and nothing else."""
    nets = []
    for shortcuts in (True, False):
        Task1.common.seed_everything(0)
        nets.append(architecture.CifarResNet(20, shortcuts=shortcuts).state_dict())
    assert nets[0].keys() == nets[1].keys() and all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_option_a_shortcut_is_subsampled_zero_padded_identity():
    """With the residual branch silenced (last BN scale and shift 0), a block returns
    relu(shortcut(x)): x itself, or for the stride-2 block x[:, :, ::2, ::2] with zero
    channels appended; the plain block returns relu(0) = 0."""
    x = torch.randn(2, 16, 8, 8)
    for stride, c_out in ((1, 16), (2, 32)):
        block, plain = CifarBlock(16, c_out, stride, True), CifarBlock(16, c_out, stride, False)
        for b in (block, plain):
            nn.init.zeros_(b.bn2.weight)
            b.eval()
        with torch.no_grad():
            out, out_plain = block(x), plain(x)
        expect = torch.relu(x[:, :, ::stride, ::stride])
        assert torch.equal(out[:, :16], expect) and torch.equal(out[:, 16:], torch.zeros_like(out[:, 16:]))
        assert out.shape == (2, c_out, 8 // stride, 8 // stride) and torch.equal(out_plain, torch.zeros_like(out))


def test_scratch_images_pad_greyscale_to_cifar_shape():
    x = torch.full((2, 1, 28, 28), 7, dtype=torch.uint8)
    out = Task1.scratch_images(x)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, :, 2:30, 2:30], torch.full((2, 3, 28, 28), 7, dtype=torch.uint8))
    assert out.sum() == 2 * 3 * 28 * 28 * 7  # a 2 px zero border
    cifar = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(Task1.scratch_images(cifar), cifar)


def test_scratch_shortcuts_gives_every_network_the_same_minibatches_and_each_pair_the_same_weights(
        tmp_path, monkeypatch):
    """He et al.'s Fig. 6 comparison: ResNet and plain at every depth of scratch_depths see the same augmented
    minibatches (one generator seeded by --seed alone), and at each depth both start from the same weights."""
    batches, start = {}, {}
    real_train, real_pre = Task1.train_from_scratch, Task1.preprocess

    def train(model, data, mean, std, args, r, device, desc):
        start[desc], batches[desc] = copy.deepcopy(model.state_dict()), []
        return real_train(model, data, mean, std, args, r, device, desc)

    def pre(x, size, augment=False, *rest, **kw):
        out = real_pre(x, size, augment, *rest, **kw)
        if augment:  # a training minibatch (the test images are not augmented)
            batches[list(batches)[-1]].append(out.clone())
        return out

    monkeypatch.setattr(Task1, "train_from_scratch", train)
    monkeypatch.setattr(Task1, "preprocess", pre)
    Task1.main(["--smoke", "--experiments", "scratch_shortcuts", "--scratch-train-size", "48", "--scratch-epochs", "2",
                "--out", str(tmp_path)], recipe=dataclasses.replace(Task1.SMOKE_RECIPE, scratch_test_size=8,
                                                                   scratch_batch_size=16, scratch_depths=(8, 14)))
    assert list(batches) == ["ResNet-8", "plain-8", "ResNet-14", "plain-14"]
    first = batches["ResNet-8"]
    assert len(first) == 6 and not torch.equal(first[0], first[3])  # 2 epochs x 3 steps; epochs reshuffle
    for desc, seen in batches.items():
        assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, first)), desc
    for depth in (8, 14):
        a, b = start[f"ResNet-{depth}"], start[f"plain-{depth}"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scratch_metrics_read_the_loss_at_10_25_50_100_percent_of_the_budget():
    """100 steps of loss 0, 1, ..., 99 (two epochs of 50): windows of 10 steps have means 4.5, 14.5, ...,
    94.5; the loss at a fraction of the budget is the first window ending at or after that step."""
    h = {"step_loss": [float(i) for i in range(100)], "step_acc": [i / 100 for i in range(100)], "test_acc": [0.3, 0.5],
         "diverged_at_step": None, "seconds": 1.0, "steps_per_epoch": 50, "total_steps": 100}
    m = Task1.scratch_metrics(h, 7, target_acc=0.8)
    assert [m[f"train_loss_at_{p}pct"] for p in (10, 25, 50, 100)] == [4.5, 24.5, 44.5, 94.5]
    assert m["final_train_loss"] == 74.5 and m["test_acc"] == 0.5 and m["params"] == 7
    assert m["steps_to_target_acc"] == 90  # the window of steps 81-90 has mean accuracy 0.845 (71-80: 0.745)


def test_windowed_curve_and_steps_to_target():
    ends, means = Task1.windowed([1, 2, 3, 4, 5, 6, 7], 3)
    assert ends == [3, 6, 7] and means == [2.0, 5.0, 7.0]
    assert Task1.steps_to_reach(ends, [0.2, 0.85, 0.9], 0.8) == 6
    assert Task1.steps_to_reach(ends, [0.2, 0.5, 0.7], 0.8) is None


def test_knn_accuracy_and_trustworthiness_on_constructed_points():
    """Three tight, far-apart clusters: every point's 5 nearest others share its class
    (accuracy 1); one point moved into another cluster is outvoted (accuracy 14/15). An
    embedding equal to the data keeps every neighbourhood (trustworthiness 1); a random
    shuffle of the points does not."""
    g = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100]], float)
    y = np.repeat(np.arange(3), 5)
    x = centres[y] + g.normal(0, 1, (15, 2))
    assert Task1.knn_accuracy(x, y) == 1.0
    moved = x.copy()
    moved[0] = centres[1]
    assert Task1.knn_accuracy(moved, y) == pytest.approx(14 / 15)
    assert Task1.trustworthiness(x, x) == pytest.approx(1.0)
    assert Task1.trustworthiness(x, x[g.permutation(15)]) < 0.9


# ----------------------------------------------------------------------------
# The recipe: the constants that were flags keep their values
# ----------------------------------------------------------------------------


def test_recipe_keeps_the_defaults_and_smoke_sizes_the_flags_had():
    """Every recipe field had a flag with this default (and this --smoke value) before
    issue 23 (depth_archs and scratch_depths too: issue 20 added ResNet/plain-20 beside 56); a recipe change must be deliberate, and it is recorded in metrics.json."""
    assert dataclasses.asdict(Task1.RECIPE) == {
        "val_size": 5000, "lr": 1e-3, "weight_decay": 1e-4, "bn_calib_size": 2000, "grad_batch": 32,
        "probe_train_size": 5000, "n_pairs": 5, "throughput_batches": 10, "transfer_val_size": 1000,
        "transfer_test_size": 0, "transfer_lr": 1e-3, "backbone_lr_mult": 0.1, "transfer_scratch_lr": 1e-3,
        "transfer_weight_decay": 1e-4,
        "depth_archs": ("resnet18", "resnet152"), "scratch_depths": (20, 56), "scratch_width": 16, "scratch_test_size": 0, "scratch_batch_size": 128, "scratch_lr": 0.1,
        "scratch_warmup": 0.05, "scratch_momentum": 0.9, "scratch_weight_decay": 1e-4, "scratch_augment": True,
        "scratch_target_acc": 0.8}
    changed = {k: v for k, v in dataclasses.asdict(Task1.SMOKE_RECIPE).items() if getattr(Task1.RECIPE, k) != v}
    assert changed == {"val_size": 60, "bn_calib_size": 128, "grad_batch": 16, "probe_train_size": 150,
                       "throughput_batches": 1, "transfer_val_size": 20, "transfer_test_size": 64,
                       "scratch_test_size": 128, "scratch_batch_size": 32, "depth_archs": ("resnet18", "resnet34"),
                       "scratch_depths": (8, 14)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        Task1.RECIPE.lr = 0.1
    with pytest.raises(ValueError, match="6n"):                     # He et al.'s CIFAR ResNets have 6n+2 layers
        dataclasses.replace(Task1.RECIPE, scratch_depths=(20, 21))
    for bad in ((20,), (56, 20), (20, 20), (2, 8)):                # two or more increasing depths, each 6n+2 >= 8
        with pytest.raises(ValueError, match="scratch_depths"):
            dataclasses.replace(Task1.RECIPE, scratch_depths=bad)
    with pytest.raises(ValueError, match="unknown ResNet resnet19"):
        dataclasses.replace(Task1.RECIPE, depth_archs=("resnet19", "resnet152"))


# ----------------------------------------------------------------------------
# The --smoke run: every figure and metric
# ----------------------------------------------------------------------------

FIGURES = ["baseline_curves", "baseline_confusion", "residual_curves", "residual_gradnorms", "features_tsne",
           "features_separability", "features_confused_pairs", "transfer_curves", "transfer_compute",
           "depth_comparison", "scratch_shortcuts_curves"]
STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("task1_smoke")
    Task1.main(["--smoke", "--out", str(out)])
    return out


def test_smoke_figures_are_readable(smoke_run):
    """No overlapping text, no empty panel (transfer's validation accuracy once lay on the
    bottom spine at 0, so its panel looked empty)."""
    assert_figures_readable(smoke_run)


def test_smoke_run_writes_every_figure_and_metric(smoke_run):
    for name in FIGURES:
        assert_png_ok(smoke_run / f"{name}.png")
    doc = load_metrics(smoke_run)
    assert doc["env"]["data"] == "smoke" and doc["config"]["arch"] == "resnet18"
    m = doc["experiments"]
    assert list(m) == ["baseline", "residual", "features", "transfer", "depth", "scratch_shortcuts"]
    for k in ("test_acc", "final_train_acc", "final_val_acc"):
        assert_in_range(m, f"baseline/{k}", 0, 1)
    for k in ("test_loss", "final_train_loss", "final_val_loss", "extract_seconds", "head_seconds", "seconds"):
        assert_in_range(m, f"baseline/{k}", 0, 1e4)
    assert_in_range(m, "baseline/extract_images_per_s", 1, 1e7)
    assert_in_range(m, "baseline/feature_dim", 512, 512)
    assert len(m["baseline"]["history"]["val_acc"]) == doc["config"]["epochs"]
    assert np.asarray(m["baseline"]["confusion"]).sum() == 150
    # the generated classes differ by colour: random ResNet-18 features already separate them (0.33
    # measured with BatchNorm statistics recalibrated on the training images; chance is 0.1)
    assert_in_range(m, "baseline/test_acc", 0.25, 1)
    for cfg in ("selected", "layer1", "layer2", "layer3", "layer4", "all"):
        for k in ("test_acc_retrained", "test_acc_no_retrain", "final_val_acc"):
            assert_in_range(m, f"residual/{cfg}/{k}", 0, 1)
        assert_in_range(m, f"residual/{cfg}/blocks_cut", 1, 8)
    assert_in_range(m, "residual/all/blocks_cut", 8, 8)
    for label in ("with_shortcuts", "without_shortcuts"):
        for s in STAGES:
            assert_in_range(m, f"residual/gradnorm/{label}/{s}", 1e-12, 1e6)
        assert_in_range(m, f"residual/gradnorm_stem_over_layer4/{label}", 0, 1e9)
        assert_in_range(m, f"residual/init_loss/{label}", 0, 100)
    for s in STAGES:
        assert_in_range(m, f"features/probe_acc/{s}", 0, 1)
        assert_in_range(m, f"features/silhouette/{s}", -1, 1)
        assert_in_range(m, f"features/mean_pair_separation/{s}", 0, 1e3)
    pairs = m["features"]["confused_pairs"]
    assert len(pairs) == 5 and all("_vs_" in p for p in pairs)
    for p in pairs:
        assert_in_range(pairs, f"{p}/confusions", 0, 150)
        for s in STAGES:
            assert_in_range(pairs, f"{p}/separation/{s}", 0, 1e3)
    for init in ("pretrained", "scratch"):
        for strategy in ("head", "layer4", "full"):
            arm = f"transfer/{init}_{strategy}"
            for k in ("test_acc", "final_val_acc"):
                assert_in_range(m, f"{arm}/{k}", 0, 1)
            assert_in_range(m, f"{arm}/train_seconds", 0, 1e4)
            assert_in_range(m, f"{arm}/final_train_loss", 0, 100)
    assert m["transfer"]["pretrained_head"]["trainable_params"] == 51_300
    # issue 20: the weights each architecture loaded (smoke: random) and which comparison transfer made
    assert m["baseline"]["weights_loaded"] == m["transfer"]["pretrained_weights"] == "none"
    assert [m["depth"][a]["weights_loaded"] for a in ("resnet18", "resnet34")] == ["none", "none"]
    assert m["transfer"]["recipe"] == {"epochs": 2, "pretrained_fc_lr": 1e-3, "pretrained_backbone_lr": 1e-4,
                                       "scratch_lr": 1e-3}
    assert m["transfer"]["scratch_full"]["trainable_params"] == 11_227_812
    for arch, dim in (("resnet18", 512), ("resnet34", 512)):
        for k in ("head_acc", "probe_acc"):
            assert_in_range(m, f"depth/{arch}/{k}", 0, 1)
        assert_in_range(m, f"depth/{arch}/images_per_s", 1, 1e7)
        assert_in_range(m, f"depth/{arch}/feature_dim", dim, dim)
    assert_in_range(m, "depth/resnet34/backbone_params_millions", 21, 22)  # 21.28 M without fc
    for s in STAGES:
        assert_in_range(m, f"features/knn_acc/{s}", 0, 1)
        assert_in_range(m, f"features/embedding/tsne/trustworthiness/{s}", 0, 1)
        assert_in_range(m, f"features/embedding/tsne/knn_acc_2d/{s}", 0, 1)
    assert_in_range(m, "features/embedding/tsne/seconds", 0, 1e4)
    assert list(m["features"]["embedding"]) == ["tsne"]  # smoke keeps t-SNE only
    sc = m["scratch_shortcuts"]
    assert sc["depths"] == [8, 14] and sc["dataset"] == "cifar10" and sc["train_images"] == 256
    assert sc["steps"] == 2 * 8  # 2 epochs of 256 / 32 minibatches
    assert list(sc["nets"]) == ["resnet8", "plain8", "resnet14", "plain14"]
    for name, net in sc["nets"].items():
        # widths 16/32/64, one (depth 8: 75,290 parameters) or two (depth 14) blocks per stage
        depth = int(name.removeprefix("resnet").removeprefix("plain"))
        assert net["params"] == cifar_resnet_params((depth - 2) // 6) == {8: 75_290, 14: 172_506}[depth]
        for k in ("train_loss_at_10pct", "train_loss_at_25pct", "train_loss_at_50pct", "train_loss_at_100pct",
                  "final_train_loss"):
            assert_in_range(sc, f"nets/{name}/{k}", 0, 10)
        for k in ("final_train_acc", "test_acc"):
            assert_in_range(sc, f"nets/{name}/{k}", 0, 1)
        assert net["diverged_at_step"] is None
        assert len(net["history"]["test_acc"]) == 2 and net["history"]["step"][-1] == 16
    for arm in ("plain", "resnet"):  # deepest minus shallowest
        n = sc["nets"]
        assert sc[f"{arm}_deeper_minus_shallower_final_train_loss"] == pytest.approx(
            n[f"{arm}14"]["final_train_loss"] - n[f"{arm}8"]["final_train_loss"])
        assert sc[f"{arm}_deeper_minus_shallower_test_acc"] == pytest.approx(
            n[f"{arm}14"]["test_acc"] - n[f"{arm}8"]["test_acc"])
    assert_in_range(sc, "plain_minus_residual_final_train_loss", -10, 10)
    assert (smoke_run / "summary.md").exists()
    assert doc["recipe"] == harness.jsonable(dataclasses.asdict(Task1.SMOKE_RECIPE))  # recorded beside the flags


def test_replot_redraws_every_figure_without_computing(smoke_run, tmp_path, monkeypatch):
    """--replot needs no data, no model and no feature/head/embedding cache."""
    assert_replot_redraws(Task1, smoke_run, tmp_path, monkeypatch, FIGURES, ["load_dataset", "prepare_backbone"])


@pytest.mark.filterwarnings("ignore:n_jobs value")  # umap: a fixed random_state means one thread
def test_tsne_and_umap_side_by_side_reuse_cached_features(smoke_run, tmp_path):
    """--embed both (the full run's default) on the smoke run's caches (features and
    head reused, so this costs mostly UMAP's numba compilation)."""
    shutil.copytree(smoke_run / "cache", tmp_path / "cache")
    Task1.main(["--smoke", "--out", str(tmp_path), "--experiments", "features", "--embed", "both",
                "--n-vis", "60"], recipe=dataclasses.replace(Task1.SMOKE_RECIPE, probe_train_size=100))
    for name in ("features_tsne", "features_umap", "features_tsne_vs_umap"):
        assert_png_ok(tmp_path / f"{name}.png")
    m = load_metrics(tmp_path)["experiments"]
    assert_in_range(m, "features/probe_acc/layer4", 0, 1)
    for method in ("tsne", "umap"):
        for s in STAGES:
            assert_in_range(m, f"features/embedding/{method}/trustworthiness/{s}", 0, 1)
            assert_in_range(m, f"features/embedding/{method}/knn_acc_2d/{s}", 0, 1)


# ----------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, earlier outputs kept
# ----------------------------------------------------------------------------


def test_unknown_arch(tmp_path):
    assert_bad_input("Task1.py", ["--smoke", "--arch", "resnet99"], tmp_path / "out", expect="unknown ResNet")


def test_missing_cifar_offline(tmp_path, empty_data_root):
    args = ["--weights", "none", "--arch", "resnet18", "--experiments", "baseline", "--data-root", str(empty_data_root)]
    assert_bad_input("Task1.py", args, tmp_path / "out", expect="could not get CIFAR10")


def test_a_corrupt_feature_cache_is_said_in_one_line_and_recomputed(smoke_run, tmp_path, capsys):
    """A cache is recomputable: each unreadable file costs one line and the computation,
    never the run; the numbers are those of the clean run."""
    out = tmp_path / "out"
    shutil.copytree(smoke_run, out)
    victims = sorted((out / "cache").glob("features-*.pt"))
    for p in victims:
        p.write_bytes(b"not a torch file")
    capsys.readouterr()
    Task1.main(["--smoke", "--out", str(out), "--experiments", "baseline"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "unreadable" in ln]
    assert len(err) == 2 and all("computing it again" in ln for ln in err)  # --arch's train and test features
    rewritten = [p for p in victims if any(p.name in ln for ln in err)]
    assert len(rewritten) == 2 and all(torch.load(p, weights_only=True)["value"].ndim == 2 for p in rewritten)
    run, clean = load_metrics(out)["experiments"]["baseline"], load_metrics(smoke_run)["experiments"]["baseline"]
    timings = ("seconds", "extract_seconds", "extract_images_per_s", "head_seconds")
    assert {k: v for k, v in run.items() if k not in timings} == {k: v for k, v in clean.items() if k not in timings}


def test_weights_unavailable_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    argv = ["--smoke", "--weights", "imagenet", "--experiments", "baseline", "--out", str(tmp_path / "o")]
    assert_bad_input_in_process(Task1.main, argv, capsys, "TORCH_HOME")
    assert not (tmp_path / "o").exists()


def test_bad_ablate_blocks_and_val_size(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert_bad_input_in_process(Task1.main, ["--smoke", "--ablate-blocks", "layer9.0", *out], capsys, "unknown block")
    assert_bad_input_in_process(Task1.main, ["--smoke", "--train-size", "60", *out], capsys, "val_size 60")
    assert not any(tmp_path.iterdir())


def test_bad_scratch_and_calibration_flags(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert_bad_input_in_process(Task1.main, ["--smoke", "--experiments", "scratch_shortcuts",
                                             "--scratch-train-size", "1", *out], capsys, "--scratch-train-size")
    assert not any(tmp_path.iterdir())


def test_features_on_a_test_set_where_every_image_is_its_own_class(tmp_path):
    """Silhouette is undefined when every point is its own cluster (scikit-learn raises):
    the experiment records null there instead of dying with a traceback."""
    Task1.main(["--smoke", "--experiments", "features", "--test-size", "8", "--n-vis", "8", "--out", str(tmp_path)],
               recipe=dataclasses.replace(Task1.SMOKE_RECIPE, probe_train_size=60))
    m = load_metrics(tmp_path)["experiments"]["features"]
    assert all(m["silhouette"][s] is None for s in STAGES)
    assert all(0 <= m["probe_acc"][s] <= 1 for s in STAGES)


def test_smoke_answers_every_assignment_question(smoke_run):
    """summary.md, metrics.json and index.html answer each question of the handout (tests/test_findings.py)."""
    from test_findings import assert_findings

    assert_findings(smoke_run, report)


def test_smoke_with_two_seeds(smoke_run, tmp_path):
    """Issue 21: --seeds 0,1 writes each seed's run, the merged metrics and every figure (conftest)."""
    check_two_seed_smoke(Task1, smoke_run, tmp_path)
