"""Task 5 (VAE): known-answer tests of the ELBO pieces, the smoke run, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch

import Task5
from architecture import VAE
from conftest import assert_bad_input, assert_in_range, assert_png_ok, load_metrics

# ----------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------


def test_vae_shapes_and_layers_match_the_assignment():
    m = VAE(latent_dim=20)
    x = torch.rand(5, 1, 28, 28)
    h = m.encoder[:2](x)
    assert h.shape == (5, 32, 14, 14)
    assert m.encoder[:4](x).shape == (5, 64, 7, 7)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (5, 20)
    x_hat, mu2, _ = m(x)
    assert x_hat.shape == x.shape and ((x_hat > 0) & (x_hat < 1)).all()
    convs = [l for l in m.modules() if isinstance(l, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 32, (4, 4), (2, 2), (1, 1)), (32, 64, (4, 4), (2, 2), (1, 1)),
        (64, 32, (4, 4), (2, 2), (1, 1)), (32, 1, (4, 4), (2, 2), (1, 1))]
    # parameters counted by hand: conv 544 + 32,832; fc 803,072; heads 2 x 5,140;
    # decoder fc 5,376 + 805,952; convT 32,800 + 513
    assert sum(p.numel() for p in m.parameters()) == 1_691_369


def test_reparameterisation_has_the_posterior_moments_and_passes_gradients():
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(0.25)]], requires_grad=True)
    z = VAE.reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2))
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.01)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 0.5]), atol=0.01)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


# ----------------------------------------------------------------------------
# ELBO terms
# ----------------------------------------------------------------------------


def test_kl_closed_form_matches_monte_carlo_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g)
    logvar = torch.randn(3, 4, generator=g) * 0.5
    kl = Task5.kl_divergence(mu, logvar)                                   # [3, 4]
    std = (0.5 * logvar).exp()
    q, p = torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0)
    z = q.sample((400_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)                            # Monte-Carlo estimate
    assert torch.allclose(kl, mc, atol=0.02), (kl, mc)
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, torch.distributions.Normal(
        torch.zeros_like(mu), torch.ones_like(mu))), atol=1e-6)
    assert torch.allclose(Task5.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))


def test_reconstruction_loss_sums_over_pixels_per_image():
    x = torch.zeros(2, 1, 28, 28)
    x_hat = torch.full_like(x, 0.5)
    assert torch.allclose(Task5.reconstruction_loss(x_hat, x, "mse"), torch.full((2,), 784 * 0.25))
    assert torch.allclose(Task5.reconstruction_loss(x_hat, x, "bce"), torch.full((2,), 784 * math.log(2)))


def test_active_units_on_a_constructed_case():
    g = torch.Generator().manual_seed(0)
    n = 5000
    mu = torch.stack([torch.randn(n, generator=g),            # var 1      active
                      torch.randn(n, generator=g) * 3,        # var 9      active
                      torch.randn(n, generator=g) * 0.2,      # var 0.04   active
                      torch.randn(n, generator=g) * 0.05,     # var 0.0025 inactive
                      torch.full((n,), 2.0),                  # constant   inactive
                      torch.zeros(n)], 1)                     #            inactive
    assert Task5.active_units(mu) == 3


def test_mutual_information_is_zero_when_collapsed_and_log_n_when_separated():
    torch.manual_seed(0)
    n, d = 400, 4  # the estimate's Monte-Carlo noise has std sqrt(d / 2n) = 0.07 nats
    same = Task5.mutual_information(torch.zeros(n, d), torch.zeros(n, d))
    assert abs(same) < 0.25
    far = Task5.mutual_information(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, d) * 10,
                                   torch.full((n, d), -6.0))
    assert far == pytest.approx(math.log(n), abs=0.25)


def test_iwae_on_a_linear_gaussian_model_with_known_likelihood():
    """p(z) = N(0, 1), p(x|z) = N(z, s2): log p(x) = log N(x; 0, 1 + s2) exactly."""
    s2, x = 0.5, torch.tensor([1.3, -0.4, 2.0])
    log_px = torch.distributions.Normal(0.0, math.sqrt(1 + s2)).log_prob(x)

    def log_w(m, v, k):  # q(z|x) = N(m, v), k samples per x: [k, 3]
        q = torch.distributions.Normal(m, math.sqrt(v))
        z = q.sample((k,))
        return (torch.distributions.Normal(z, math.sqrt(s2)).log_prob(x)
                + torch.distributions.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z))

    torch.manual_seed(0)
    # the exact posterior N(x / (1 + s2), s2 / (1 + s2)) makes every weight equal to p(x)
    exact = log_w(x / (1 + s2), s2 / (1 + s2), 7)
    assert torch.allclose(Task5.iwae_bound(exact), log_px, atol=1e-5)
    # a poor q: ELBO (closed form) < IWAE_k, rising towards log p(x) with k
    m, v = torch.zeros(3), 0.3
    elbo = (-0.5 * math.log(2 * math.pi * s2) - ((x - m) ** 2 + v) / (2 * s2)
            - 0.5 * (m ** 2 + v - 1 - math.log(v)))
    lw = log_w(m, v, 200_000)
    # k = 1 equals the ELBO in expectation: average many single-sample bounds
    k1 = Task5.iwae_bound(lw[None, :20_000]).mean(0)                       # 20,000 bounds with k = 1
    assert torch.allclose(k1, elbo, atol=0.05), (k1, elbo)
    bounds = [Task5.iwae_bound(lw[:k * 100].reshape(100, k, 3).transpose(0, 1)).mean(0) for k in (1, 10, 1000)]
    assert (bounds[0] < bounds[1]).all() and (bounds[1] < bounds[2]).all()
    assert (bounds[2] <= log_px + 0.02).all() and (log_px - bounds[2] < log_px - elbo).all()


def test_vae_log_weights_use_the_right_densities():
    """E_q[log w] + KL(closed form) must equal E_q[log N(x; x_hat, 0.5)] computed with
    torch.distributions; and IWAE >= ELBO on every draw."""
    torch.manual_seed(0)
    m = VAE(latent_dim=3).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        lw = Task5.log_weights(m, x, 1000, "mse")                              # [k, 2]
        mu, logvar = m.encode(x)
        kl = Task5.kl_divergence(mu, logvar).sum(1)
        z = torch.distributions.Normal(mu, (0.5 * logvar).exp()).sample((1000,))
        x_hat = m.decode(z.flatten(0, 1)).view(1000, 2, 1, 28, 28)
        log_px_z = torch.distributions.Normal(x_hat, math.sqrt(0.5)).log_prob(x).flatten(2).sum(-1).mean(0)
    assert torch.allclose(lw.mean(0) + kl, log_px_z, atol=0.5), (lw.mean(0) + kl, log_px_z)
    assert (Task5.iwae_bound(lw) >= lw.mean(0)).all()


def test_laplace_prior_has_unit_variance_and_heavier_tails():
    m = VAE(latent_dim=4).eval()
    z = {}
    orig = m.decode
    m.decode = lambda zz: zz  # capture z instead of decoding
    for prior in ["gaussian", "laplace"]:
        z[prior] = Task5.decode_prior(m, 200_000, torch.device("cpu"), prior, seed=1)
    m.decode = orig
    for prior in z:
        assert z[prior].var().item() == pytest.approx(1.0, abs=0.02)
    kurt = {p: ((v - v.mean()) ** 4).mean().item() / v.var().item() ** 2 for p, v in z.items()}
    assert kurt["gaussian"] == pytest.approx(3.0, abs=0.1) and kurt["laplace"] == pytest.approx(6.0, abs=0.4)


def test_nearest_train_rmse_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 1, 28, 28, generator=g), torch.rand(50, 1, 28, 28, generator=g)
    want = torch.cdist(a.flatten(1), b.flatten(1)).min(1).values / math.sqrt(784)
    assert torch.allclose(Task5.nearest_train_rmse(a, b, chunk=16), want, atol=1e-4)
    assert torch.allclose(Task5.nearest_train_rmse(b[:3], b), torch.zeros(3), atol=1e-3)


# ----------------------------------------------------------------------------
# The smoke run: every figure and metric
# ----------------------------------------------------------------------------

FIGURES = ["train_curves", "reconstruct_grid", "generate_samples", "collapse_kl_per_dim", "collapse_dynamics",
           "collapse_reconstructions", "mitigate_comparison", "mitigate_curves", "latent_tsne",
           "latent_2d_scatter", "latent_2d_manifold", "latent_interpolations", "likelihood_bound_vs_k"]


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("task5")
    Task5.main(["--smoke", "--out", str(out)])
    return out


def test_smoke_run_writes_every_figure(smoke_out):
    for name in FIGURES:
        assert_png_ok(smoke_out / f"{name}.png")
    summary = (smoke_out / "summary.md").read_text()
    assert "## likelihood" in summary and "![train_curves.png](train_curves.png)" in summary


def test_smoke_run_writes_every_metric_in_range(smoke_out):
    doc = load_metrics(smoke_out)
    assert doc["task"] == "task5" and doc["env"]["data"] == "smoke"
    ex = doc["experiments"]
    assert list(ex) == Task5.EXPERIMENTS
    for name in Task5.EXPERIMENTS:
        assert_in_range(ex[name], "seconds", 0, 600)
    for split in ["final_train", "final_val", "test"]:
        assert_in_range(ex["train"], f"{split}/recon", 0, 784)
        assert_in_range(ex["train"], f"{split}/kl", 0, 1e4)
    assert_in_range(ex["train"], "test/active_units", 0, 20)
    assert_in_range(ex["reconstruct"], "shown_rmse_per_pixel", 0, 1)
    for prior in ["gaussian", "laplace", "real_test_images"]:
        assert_in_range(ex["generate"], f"{prior}/classifier_confidence", 0.1, 1)
        assert_in_range(ex["generate"], f"{prior}/nearest_train_rmse", 0, 1)
        assert_in_range(ex["generate"], f"{prior}/classes_covered", 0, 10)
    for run in ["healthy", "collapsed"]:
        assert_in_range(ex["collapse"], f"{run}/active_units", 0, 20)
        assert_in_range(ex["collapse"], f"{run}/kl", 0, 1e4)
        assert_in_range(ex["collapse"], f"recon_rmse_to_mean_image/{run}", 0, 1)
    for arm in ["collapsed", "warmup", "free_bits", "aggressive"]:
        for key, lo, hi in [("recon", 0, 784), ("kl", 0, 1e4), ("active_units", 0, 20),
                            ("classifier_confidence", 0.1, 1), ("nearest_train_rmse", 0, 1)]:
            assert_in_range(ex["mitigate"], f"{arm}/{key}", lo, hi)
    assert_in_range(ex["latent"], "latent_probe_test_acc", 0, 1)
    assert_in_range(ex["latent"], "tsne_silhouette", -1, 1)
    lk = ex["likelihood"]
    assert lk["iwae"] >= lk["elbo"] and lk["iwae_minus_elbo"] >= 0
    assert lk["iwae_by_k"]["1"] <= lk["iwae_by_k"][str(lk["k"])]


def test_rerun_reuses_cached_weights(smoke_out, capsys):
    Task5.main(["--smoke", "--out", str(smoke_out), "--experiments", "train"])
    assert "loaded trained weights" in capsys.readouterr().out
    doc = load_metrics(smoke_out)
    assert set(doc["experiments"]) == set(Task5.EXPERIMENTS)  # the other experiments' entries are kept


def test_divergence_is_recorded_and_the_next_experiment_runs(tmp_path):
    Task5.main(["--smoke", "--out", str(tmp_path), "--lr", "1e9", "--experiments", "train,likelihood",
                "--epochs", "1"])
    ex = load_metrics(tmp_path)["experiments"]
    assert ex["train"]["error"].startswith("diverged")
    assert set(ex) == {"train", "likelihood"}


# ----------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing lost
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("args,expect", [
    (["--dataset", "cifar10"], "invalid choice"),
    (["--experiments", "train,nope"], "unknown experiment"),
    (["--epochs", "0"], "positive integer"),
    (["--val-size", "100000"], "val-size"),
])
def test_bad_flags_exit_2(tmp_path, args, expect):
    assert_bad_input("Task5.py", ["--smoke", *args], tmp_path / "out", expect)


def test_missing_dataset_offline_exits_2(tmp_path, empty_data_root):
    assert_bad_input("Task5.py", ["--data-root", str(empty_data_root)], tmp_path / "out", "could not get")


def test_corrupt_cache_exits_2(tmp_path):
    out = tmp_path / "out"
    Task5.main(["--smoke", "--out", str(out), "--experiments", "reconstruct", "--epochs", "1"])
    for f in (out / "cache").glob("vae-*.pt"):
        f.write_bytes(b"not a checkpoint")
    assert_bad_input("Task5.py", ["--smoke", "--experiments", "reconstruct", "--epochs", "1"], out, "--fresh")
