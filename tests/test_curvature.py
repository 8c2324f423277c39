"""Curvature, coverage and preconditioning (paper §4.6, Fig. 4): exact values on constructed
cases, finite differences on small random models, and the model's own steps."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from _tasks import random_batch

from leo_tutorial import LEO, LEOConfig, UserError, curvature
from leo_tutorial.baselines import MAML, BaselineConfig, MetaSGD
from leo_tutorial.config import TrainConfig
from leo_tutorial.data import SyntheticConfig, make_synthetic_bank, subspace_basis
from leo_tutorial.training import train


def random_leo(k_inner=2, n=5, d=12, z=4, seed=0, **changes):
    """A float64 LEO with random weights and random per-dimension alpha."""
    torch.manual_seed(seed)
    model = LEO(
        LEOConfig(num_latents=z, inner_unroll_length=k_inner, **changes), d, n, torch.float64
    )
    with torch.no_grad():
        model.inner_lr.uniform_(0.2, 2.0)
    return model


def random_meta_sgd(n=5, d=12, seed=0):
    torch.manual_seed(seed)
    model = MetaSGD(BaselineConfig(inner_unroll_length=3), d, n, torch.float64)
    with torch.no_grad():
        model.w_init.normal_()
        model.inner_lr.uniform_(0.1, 1.0)
    return model


def orthonormal_batch(n, k, d):
    """One task whose N K support embeddings are the first N K standard basis vectors of R^D."""
    x = torch.eye(d, dtype=torch.float64)[: n * k].reshape(1, n, k, d)
    y = torch.arange(n).view(1, n, 1).expand(1, n, k).clone()
    batch = random_batch(b=1, n=n, k=k, v=2, d=d)
    batch.support_x, batch.support_y = x, y
    return batch


def finite_difference_hessian(f, p, h=1e-4):
    """Central second differences of the scalar function f at p [P] (no autograd)."""
    size = p.numel()
    eye = torch.eye(size, dtype=p.dtype) * h
    hessian = torch.empty(size, size, dtype=p.dtype)
    for i in range(size):
        for j in range(size):
            hessian[i, j] = (
                f(p + eye[i] + eye[j])
                - f(p + eye[i] - eye[j])
                - f(p - eye[i] + eye[j])
                + f(p - eye[i] - eye[j])
            ) / (4 * h * h)
    return hessian


# ------------------------------------------------------------------------------- Hessians
def model_support_loss(model, space_name, x, y):
    """The model's own summed support loss (eval mode) as a function of one task's flattened
    class codes or class weights: the reference the spaces are checked against."""
    n, k = x.shape[1], x.shape[2]

    def loss(p):
        tiled = p.view(1, n, 1, -1).expand(-1, -1, k, -1)
        model.eval()
        try:
            if space_name == "latent":
                per_example, _ = model.forward_decoder(tiled, x, y)
            else:
                per_example = model.loss_fn(model.predict(x, tiled), y)
        finally:
            model.train()
        return per_example.sum()

    return loss


@pytest.mark.parametrize("space_name", ["latent", "weights"])
def test_full_hessian_matches_finite_differences_of_the_models_own_support_loss(space_name):
    model = random_leo(z=2, d=6, n=3)
    batch = random_batch(b=2, n=3, k=2, d=6)
    make = curvature.latent_space if space_name == "latent" else curvature.weight_space
    space = make(model, batch)
    hessians = curvature.full_hessian(space)
    assert hessians.shape == (2, 6 if space_name == "latent" else 18, hessians.shape[2])
    for i in range(2):
        loss = model_support_loss(
            model, space_name, batch.support_x[i : i + 1], batch.support_y[i : i + 1]
        )
        with torch.no_grad():
            numeric = finite_difference_hessian(loss, space.point[i].flatten())
        assert torch.allclose(hessians[i], numeric, atol=1e-6)
        assert torch.allclose(hessians[i], hessians[i].T)


@pytest.mark.parametrize("space_name", ["latent", "weights"])
def test_space_logits_loss_and_gradient_are_the_models_own_anywhere(space_name):
    # the spaces rewrite the model's scoring as a linear classifier on features (x, or
    # W_mu^T x for z): check it against the model at the point and at a random other point
    model = random_leo()
    batch = random_batch(b=2, k=3)
    make = curvature.latent_space if space_name == "latent" else curvature.weight_space
    space = make(model, batch)
    other = space.point + torch.randn_like(space.point)
    for point in (space.point, other):
        for i in range(2):
            loss = model_support_loss(
                model, space_name, batch.support_x[i : i + 1], batch.support_y[i : i + 1]
            )
            with torch.no_grad():
                assert space.support_loss(point)[i] == pytest.approx(
                    loss(point[i].flatten()).item(), rel=1e-12
                )
    grad, h = space.gradient(other).flatten(1), 1e-6
    for j in (0, 7, 19):
        e = torch.zeros_like(other).flatten(1)
        e[:, j] = h
        e = e.view_as(other)
        with torch.no_grad():
            numeric = space.support_loss(other + e) - space.support_loss(other - e)
        assert torch.allclose(grad[:, j], numeric / (2 * h), atol=1e-7)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("which", ["leo-latent", "leo-weights", "gen+ft", "meta-sgd"])
def test_factored_spectrum_equals_the_eigenvalues_of_the_full_hessian(which, k):
    batch = random_batch(b=3, k=k)
    if which == "meta-sgd":
        space = curvature.weight_space(random_meta_sgd(), batch)
    elif which == "gen+ft":
        space = curvature.weight_space(random_leo(k_inner=0), batch)
    else:
        model = random_leo()
        space = (curvature.latent_space if which == "leo-latent" else curvature.weight_space)(
            model, batch
        )
    fast = curvature.hessian_eigenvalues(space)
    full = curvature.hessian_eigenvalues(space, "full")
    assert fast.shape == full.shape == (3, space.rank_bound)
    assert fast.dtype == torch.float64 and not fast.requires_grad
    assert torch.allclose(fast, full, atol=1e-12, rtol=1e-9)
    # everything beyond the rank bound is zero
    all_values = torch.linalg.eigvalsh(curvature.full_hessian(space)).abs().sort().values
    assert all_values[:, : -space.rank_bound].max() < 1e-12
    assert (fast > 1e-6).all()


def test_hessian_written_by_hand_for_two_classes_and_orthonormal_embeddings():
    # w_0 = a e_0 + c e_1, w_1 = 0; support x_0 = e_0 (class 0), x_1 = e_1 (class 1).
    # H = sum_i S_i (x) x_i x_i^T with S_i = q_i (1 - q_i) [[1, -1], [-1, 1]], q_i = sigma(l_i).
    a, c, d = 1.3, -0.4, 4
    model = MetaSGD(BaselineConfig(), embedding_dim=d, n_way=2, dtype=torch.float64)
    with torch.no_grad():
        model.w_init.zero_()
        model.w_init[0, 0], model.w_init[0, 1] = a, c
    space = curvature.weight_space(model, orthonormal_batch(n=2, k=1, d=d))
    by_hand = torch.zeros(2, d, 2, d, dtype=torch.float64)
    for i, logit in enumerate((a, c)):
        q = 1 / (1 + math.exp(-logit))
        s = q * (1 - q) * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
        by_hand[:, i, :, i] += s
    assert torch.allclose(curvature.full_hessian(space)[0], by_hand.reshape(2 * d, 2 * d))
    expected = sorted(2 * q * (1 - q) for q in (1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-c))))
    values = curvature.hessian_eigenvalues(space)[0]
    assert torch.allclose(values, torch.tensor(expected[::-1], dtype=torch.float64))


def test_curvature_in_z_is_the_curvature_in_theta_times_the_squared_decoder_scale():
    # g_e = 0 gives z = 0 and w = 0 (uniform softmax); with N K orthonormal embeddings the
    # Hessian in w is S (x) P_x with S = (I - 11^T / N) / N: eigenvalues 1/N. A decoder
    # W_mu = c [I_Z; 0] covering those embeddings gives eigenvalues c^2 / N in z.
    n, k, z, d, scale = 3, 2, 6, 8, 2.5
    model = LEO(LEOConfig(num_latents=z), d, n, torch.float64)
    with torch.no_grad():
        model.g_e.weight.zero_()
        model.g_d.weight.zero_()
        model.g_d.weight[:z] = scale * torch.eye(z, dtype=torch.float64)
    batch = orthonormal_batch(n, k, d)
    theta = curvature.hessian_eigenvalues(curvature.weight_space(model, batch))
    latent = curvature.hessian_eigenvalues(curvature.latent_space(model, batch))
    assert theta.shape == latent.shape == (1, n * k * (n - 1))
    assert torch.allclose(theta, torch.full_like(theta, 1 / n))
    assert torch.allclose(latent, torch.full_like(latent, scale**2 / n))
    assert torch.allclose(
        curvature.decoder_singular_values(model), torch.full((z,), scale, dtype=torch.float64)
    )
    gain = curvature.decoder_gain(model, batch)
    assert torch.allclose(gain, torch.full_like(gain, scale**2))


def test_curvature_in_z_is_bounded_by_the_curvature_in_theta_times_the_largest_gain():
    # H_z = A^T H_w A with A = I_N (x) W_mu, so the k-th eigenvalue in z is at most
    # sigma_max(W_mu)^2 times the k-th in theta; the gain of every embedding lies in
    # [sigma_min^2, sigma_max^2].
    model = random_leo(z=6, d=12)
    with torch.no_grad():
        model.g_d.weight[:12] *= torch.linspace(0.5, 4.0, 12, dtype=torch.float64)[:, None]
    batch = random_batch(b=4, k=1)
    sigma = curvature.decoder_singular_values(model)
    latent = curvature.hessian_eigenvalues(curvature.latent_space(model, batch))
    theta = curvature.hessian_eigenvalues(curvature.weight_space(model, batch))
    assert (latent <= sigma[0] ** 2 * theta[:, : latent.shape[1]] * (1 + 1e-12)).all()
    gain = curvature.decoder_gain(model, batch)
    assert gain.shape == (4, 5, 1)
    assert ((gain >= sigma[-1] ** 2 - 1e-12) & (gain <= sigma[0] ** 2 + 1e-12)).all()
    x = batch.support_x[2, 3, 0]
    w_mu = model.g_d.weight.detach()[:12]
    assert gain[2, 3, 0] == pytest.approx((w_mu.T @ x).norm().item() ** 2 / x.norm().item() ** 2)


def test_meta_sgd_at_zero_init_with_orthonormal_embeddings_has_a_flat_spectrum_of_one_over_n():
    n, k, d = 4, 2, 10
    model = MetaSGD(BaselineConfig(), embedding_dim=d, n_way=n, dtype=torch.float64)
    values = curvature.hessian_eigenvalues(
        curvature.weight_space(model, orthonormal_batch(n, k, d))
    )
    assert torch.allclose(values, torch.full((1, n * k * (n - 1)), 1 / n, dtype=torch.float64))


# ------------------------------------------------------------------------------ step sizes
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("reference", [False, True])  # the fused fast path and plain model.py
def test_one_latent_step_is_a_theta_step_preconditioned_by_w_mu_alpha_w_mu_t_over_k(k, reference):
    model = random_leo(reference=reference)
    batch = random_batch(b=3, k=k)
    path = curvature.theta_trajectory(model, batch)
    assert path.shape == (3, 3, 5, 12)
    predicted = curvature.predicted_latent_step(model, batch)
    assert torch.allclose(path[:, 1] - path[:, 0], predicted, atol=1e-12)
    if k > 1:  # the 1/K of the shot tiling matters
        assert not torch.allclose(path[:, 1] - path[:, 0], k * predicted, atol=1e-3)
    # and the step norms are those of the same trajectory
    norms = curvature.theta_step_norms(model, batch)
    assert torch.allclose(norms[:, 0], predicted.flatten(1).norm(dim=1))


def test_preconditioner_has_rank_z_and_the_eigenvalues_c2_alpha_over_k():
    n, z, d, k, scale = 5, 4, 12, 5, 3.0
    model = random_leo(z=z, d=d, n=n)
    q, _ = torch.linalg.qr(torch.randn(d, z, dtype=torch.float64))
    alpha = torch.tensor([2.0, -0.5, 1.0, 0.25], dtype=torch.float64)
    with torch.no_grad():
        model.g_d.weight[:d] = scale * q
        model.inner_lr.copy_(alpha)
    p = curvature.latent_preconditioner(model, k)
    assert torch.linalg.matrix_rank(p) == z
    expected = (scale**2 * alpha / k)[[0, 2, 1, 3]]  # by |.|, largest first
    assert torch.allclose(curvature.preconditioner_eigenvalues(model, k), expected)


@pytest.mark.parametrize("which", ["leo-latent", "leo-weights", "meta-sgd"])
def test_spaces_after_some_inner_steps_sit_on_the_models_own_trajectory(which):
    batch = random_batch(b=2, k=2)
    model = random_meta_sgd() if which == "meta-sgd" else random_leo(k_inner=3)
    make = curvature.latent_space if which == "leo-latent" else curvature.weight_space
    start, after = make(model, batch), make(model, batch, step=2)
    if which == "leo-latent":  # z_2 = z_0 - alpha * (grad at z_0 + grad at z_1), per copy / K
        grads = [start.gradient(), make(model, batch, step=1).gradient()]
        alpha = model.inner_lr.detach()
        expected = start.point - alpha * (grads[0] + grads[1]) / 2
        assert torch.allclose(after.point, expected, atol=1e-12)
    else:
        path = curvature.theta_trajectory(model, batch)
        assert torch.allclose(start.point, path[:, 0])
        assert torch.allclose(after.point, path[:, 2])
    # curvature changes along the way (the softmax sharpens as the support loss falls)
    assert (after.support_loss() < start.support_loss()).all()
    with pytest.raises(UserError, match="step must be in 0..3"):
        make(model, batch, step=4)


def test_meta_sgd_preconditioner_eigenvalues_are_its_rates_and_mamls_its_fixed_rate():
    model = random_meta_sgd()
    values = curvature.preconditioner_eigenvalues(model, 1)
    assert torch.equal(values.sort().values, model.inner_lr.detach().flatten().sort().values)
    maml = MAML(BaselineConfig(inner_lr_init=0.3), embedding_dim=12, n_way=5)
    assert torch.allclose(
        curvature.preconditioner_eigenvalues(maml, 1), torch.full((60,), 0.3, dtype=torch.float64)
    )


def test_meta_sgd_first_step_from_zero_has_the_norm_alpha_sqrt_nk_n_minus_1_over_n():
    # At W = 0 the gradient of class n is sum_i (1/N - [y_i = n]) x_i; with orthonormal x_i
    # its squared norm over all classes is N K (N - 1) / N.
    n, k, d, a = 5, 2, 16, 0.7
    model = MetaSGD(BaselineConfig(inner_lr_init=a), embedding_dim=d, n_way=n, dtype=torch.float64)
    norms = curvature.theta_step_norms(model, orthonormal_batch(n, k, d))
    assert norms.shape == (1, 5)
    assert norms[0, 0].item() == pytest.approx(a * math.sqrt(n * k * (n - 1) / n), rel=1e-12)
    assert (norms[0, 1:] < norms[0, :-1]).all()  # steps shrink as the support loss falls


# ------------------------------------------------------------------------------- subspaces
def test_principal_angles_agree_with_scipy_and_with_constructed_angles():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 6, generator=g, dtype=torch.float64)
    b = torch.randn(20, 3, generator=g, dtype=torch.float64)
    ours = curvature.principal_angles(a, b).numpy()
    assert np.allclose(ours, np.sort(scipy.linalg.subspace_angles(a.numpy(), b.numpy())))
    e = torch.eye(5, dtype=torch.float64)
    for theta in (1e-9, 0.3, 1.2, math.pi / 2):
        line = math.cos(theta) * e[:, :1] + math.sin(theta) * e[:, 1:2]
        angle = curvature.principal_angles(line, e[:, [0, 2]])
        assert angle.item() == pytest.approx(theta, rel=1e-7, abs=1e-15)
    # a rank-deficient matrix spans only its rank; a subspace meets itself at angle 0
    deficient = torch.cat([e[:, :2], e[:, :1] + e[:, 1:2]], dim=1)
    assert curvature.principal_angles(deficient, e[:, :3]).shape == (2,)
    assert curvature.principal_angles(a, a).abs().max() < 1e-7


def test_subspace_alignment_of_projectors_diagonals_and_the_best_diagonal_bound():
    basis = subspace_basis(SyntheticConfig(dim=40, subspace_dim=4))
    u = torch.from_numpy(basis)
    assert curvature.subspace_alignment(u @ u.T, basis) == pytest.approx(1.0)
    complement = torch.eye(40, dtype=torch.float64) - u @ u.T
    assert curvature.subspace_alignment(complement, basis) == pytest.approx(0.0, abs=1e-12)
    best = curvature.best_diagonal_alignment(basis)
    leverage = (u**2).sum(dim=1)
    assert best == pytest.approx(leverage.max().item())
    assert curvature.subspace_alignment(torch.diag(torch.eye(40)[leverage.argmax()]), basis) == (
        pytest.approx(best)
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        diag = torch.diag(torch.randn(40, generator=g, dtype=torch.float64))
        assert curvature.subspace_alignment(diag, basis) <= best + 1e-12
    assert 4 / 40 <= best < 1


@pytest.mark.slow
def test_subspace_tracker_records_the_decoder_after_every_validation_and_meta_training_aligns_it(
    tmp_path,
):
    config = SyntheticConfig(
        n_train_classes=16,
        n_val_classes=5,
        n_test_classes=5,
        images_per_class=30,
        dim=32,
        subspace_dim=4,
        class_scale=1.5,
        noise=0.5,
    )
    basis = subspace_basis(config)
    tracker = curvature.SubspaceTracker(basis)
    train(
        LEOConfig(num_latents=8, outer_lr=3e-3, dropout_rate=0.0),
        TrainConfig(steps=300, val_every=100, val_tasks=20, test_tasks=20, batch_size=8),
        make_synthetic_bank(config),
        tmp_path / "run2",
        progress=False,
        test=False,
        callback=tracker,
        log=lambda _: None,
    )
    assert tracker.steps == [0, 100, 200, 300]
    assert all(a.shape == (4,) for a in tracker.angles)
    assert all(0 <= v <= 1 for v in tracker.val_accuracy)
    # a random 8-d decoder output holds about 4/32 of its energy in the class subspace
    assert tracker.alignment[0] < 0.3
    assert tracker.alignment[-1] > max(0.5, 2 * tracker.alignment[0])  # measured 0.14 -> 0.84
    assert np.mean(tracker.angles[-1]) < np.mean(tracker.angles[0])


# ------------------------------------------------------------------- statistics over tasks
def test_curvature_statistics_over_tasks_and_their_npz_round_trip(tmp_path):
    config = SyntheticConfig(
        n_train_classes=8,
        n_val_classes=5,
        n_test_classes=6,
        images_per_class=10,
        dim=12,
        subspace_dim=4,
    )
    split = make_synthetic_bank(config).split("test")
    leo, meta_sgd, gen_ft = random_leo(), random_meta_sgd(), random_leo(k_inner=0)
    stats = {
        name: curvature.curvature_statistics(m, split, k_shot=2, tasks=7, batch_size=3)
        for name, m in (("LEO", leo), ("Meta-SGD", meta_sgd), ("gen+ft", gen_ft))
    }
    assert stats["LEO"]["hessian_latent"].shape == (7, 16)
    assert stats["LEO"]["hessian_weights"].shape == (7, 40)
    assert stats["LEO"]["theta_steps"].shape == (7, 2)
    assert stats["LEO"]["decoder_singular_values"].shape == (4,)
    assert stats["LEO"]["preconditioner"].shape == (4,)
    assert stats["LEO"]["decoder_gain"].shape == (7, 10)
    assert set(stats["gen+ft"]) == {"hessian_weights", "decoder_singular_values", "decoder_gain"}
    assert stats["Meta-SGD"]["theta_steps"].shape == (7, 3)
    assert stats["Meta-SGD"]["preconditioner"].shape == (60,)
    # the same seed gives the same tasks: one batch of the statistics, recomputed by hand
    again = curvature.curvature_statistics(meta_sgd, split, k_shot=2, tasks=7, batch_size=3)
    assert np.array_equal(again["hessian_weights"], stats["Meta-SGD"]["hessian_weights"])
    path = curvature.save_statistics(tmp_path / "fig4.npz", stats)
    loaded = curvature.load_statistics(path)
    assert loaded.keys() == stats.keys()
    for name in stats:
        assert loaded[name].keys() == stats[name].keys()
        for key in stats[name]:
            assert np.array_equal(loaded[name][key], stats[name][key])


def test_analysis_runs_in_eval_mode_and_leaves_the_models_mode_alone():
    model = random_leo(dropout_rate=0.5).train()
    batch = random_batch(b=2, k=2)
    first = curvature.hessian_eigenvalues(curvature.latent_space(model, batch))
    second = curvature.hessian_eigenvalues(curvature.latent_space(model, batch))
    assert torch.equal(first, second)  # no dropout, no sampling
    assert torch.equal(
        curvature.theta_step_norms(model, batch), curvature.theta_step_norms(model, batch)
    )
    assert model.training


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs_get_one_clear_error(tmp_path):
    batch = random_batch(b=1)
    meta_sgd = random_meta_sgd()
    with pytest.raises(UserError, match="needs a LEO model"):
        curvature.latent_space(meta_sgd, batch)
    with pytest.raises(UserError, match="inner_unroll_length"):
        curvature.theta_step_norms(random_leo(k_inner=0), batch)
    with pytest.raises(UserError, match="step must be in 0..0"):
        curvature.weight_space(random_leo(k_inner=0), batch, step=1)
    with pytest.raises(UserError, match="unknown method"):
        curvature.hessian_eigenvalues(curvature.weight_space(meta_sgd, batch), "lanczos")
    with pytest.raises(UserError, match="16-d embeddings"):
        curvature.weight_space(random_leo(d=16), batch)
    with pytest.raises(UserError, match="without '/'"):
        curvature.save_statistics(tmp_path / "x.npz", {"a/b": {"k": np.zeros(2)}})
    with pytest.raises(UserError, match="no curvature statistics"):
        curvature.load_statistics(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="not a curvature-statistics"):
        curvature.load_statistics(tmp_path / "junk.npz")
    np.savez(tmp_path / "objects.npz", **{"LEO/x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(UserError, match="not a curvature-statistics"):
        curvature.load_statistics(tmp_path / "objects.npz")
    with pytest.raises(UserError, match="same number of rows"):
        curvature.principal_angles(torch.ones(3, 1), torch.ones(4, 1))
    assert not list(tmp_path.glob(".*.tmp"))


def test_figure4_draws_the_three_panels_with_whiskers_at_the_5th_and_95th_percentiles():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.random.default_rng(0)
    stats = {
        "LEO": {
            "hessian_latent": g.lognormal(0, 1, (30, 4)),
            "hessian_weights": g.lognormal(-3, 1, (30, 4)),
            "decoder_singular_values": g.lognormal(2, 0.5, 8),
            "theta_steps": g.lognormal(1, 0.3, (30, 5)),
        },
        "gen+ft": {"hessian_weights": g.lognormal(-3, 1, (30, 4))},
        "Meta-SGD": {
            "hessian_weights": g.lognormal(-2, 1, (30, 4)),
            "theta_steps": np.ones((30, 5)),
        },
    }
    panels = curvature.figure4_boxes(stats)
    assert [[label for label, _ in boxes] for _, boxes in panels] == [
        ["LEO (z)", "gen+ft (θ)", "Meta-SGD (θ)"],
        ["LEO"],
        ["LEO", "Meta-SGD"],
    ]
    axes = curvature.plot_figure4(stats)
    for ax, (_, boxes) in zip(axes, panels, strict=True):
        assert ax.get_yscale() == "log"
        caps = sorted({round(y, 9) for line in ax.lines for y in line.get_ydata()})
        for _, values in boxes:
            for q in (5, 95):
                assert round(float(np.percentile(values, q)), 9) in caps
    plt.close("all")
    with pytest.raises(UserError, match="no statistics"):
        curvature.plot_figure4({})
