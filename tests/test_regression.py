"""Regression LEO: theta layout, shapes, seeded sampling, inner-loop gradients, training,
checkpoints (LEO_SPEC §5)."""

import math

import pytest
import torch
from torch import nn

from leo_tutorial.data.sinusoid import sample_tasks
from leo_tutorial.errors import UserError
from leo_tutorial.regression import (
    RegressionConfig,
    RegressionLEO,
    closer_to_line,
    glorot_offsets,
    load_regression,
    mlp_forward,
    predict_on_grid,
    sample_functions,
    save_regression,
    support_loss_per_step,
    theta_layout,
    theta_size,
    train_regression,
    unflatten_theta,
)

SMALL = RegressionConfig(inner_unroll_length=2)


def make_model(config=SMALL, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return RegressionLEO(config, dtype=dtype)


def test_theta_is_the_1761_parameters_of_a_1_40_40_1_mlp():
    assert theta_size(40) == 1761
    assert [shape for _, shape in theta_layout(40)] == [
        (40, 1),
        (40,),
        (40, 40),
        (40,),
        (1, 40),
        (1,),
    ]
    model = make_model()
    assert model.n_theta == 1761
    assert model.g_d[-1].out_features == 2 * 1761  # a mean and a std parameter each
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    theta = torch.randn(1761)
    nn.utils.vector_to_parameters(theta, net.parameters())  # torch's own flat order
    x = torch.linspace(-5, 5, 11).reshape(1, -1, 1)
    torch.testing.assert_close(mlp_forward(x, theta[None]), net(x[0])[None])
    parts = unflatten_theta(theta[None])
    torch.testing.assert_close(parts["w2"][0], net[2].weight)
    with pytest.raises(UserError, match="1761"):
        unflatten_theta(torch.zeros(1, 100))


def test_decoder_generates_theta_for_every_task():
    model = make_model()
    z = torch.randn(3, 16)
    theta = model.decode(z)
    assert theta.shape == (3, 1761)
    assert model.predict(torch.zeros(3, 7, 1), theta).shape == (3, 7, 1)
    offsets = glorot_offsets(40)
    assert offsets.shape == (1761,)
    assert offsets[0].item() == pytest.approx(math.sqrt(2 / 41))
    assert offsets[100].item() == pytest.approx(math.sqrt(2 / 80))


def test_forward_shapes():
    model = make_model()
    batch = sample_tasks(4, seed=0)
    out = model(batch)
    assert out.loss.shape == ()
    for name in ("query_loss", "kl", "encoder_penalty"):
        assert getattr(out, name).shape == (4,)
    assert out.codes.shape == (4, 32) and out.z.shape == out.z_prime.shape == (4, 16)
    assert out.theta.shape == (4, 1761) and out.query_pred.shape == (4, 10, 1)
    assert len(out.support_losses) == SMALL.inner_unroll_length + 1
    assert torch.isfinite(out.loss)


def test_encoder_code_does_not_depend_on_point_order():
    model = make_model()
    batch = sample_tasks(2, seed=0)
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(
        model.encode(batch.support_x, batch.support_y),
        model.encode(batch.support_x[:, order], batch.support_y[:, order]),
    )


def test_sampling_is_reproducible_under_a_seed_and_varies_with_it():
    model = make_model()
    state = torch.random.get_rng_state()
    a = sample_functions(
        model, [-2.0, 0.0, 1.0, 3.0, 4.0], [1.0, 0.5, -1.0, 2.0, 0.0], n_samples=6, seed=5
    )
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = sample_functions(
        model, [-2.0, 0.0, 1.0, 3.0, 4.0], [1.0, 0.5, -1.0, 2.0, 0.0], n_samples=6, seed=5
    )
    c = sample_functions(
        model, [-2.0, 0.0, 1.0, 3.0, 4.0], [1.0, 0.5, -1.0, 2.0, 0.0], n_samples=6, seed=6
    )
    assert a.before.shape == a.after.shape == (6, 200) and a.grid.shape == (200,)
    assert a.support_losses.shape == (SMALL.inner_unroll_length + 1, 6)
    assert torch.equal(a.after, b.after) and torch.equal(a.before, b.before)
    assert not torch.allclose(a.after, c.after)
    assert not torch.allclose(a.after[0], a.after[1])  # the draws differ from each other
    grid = torch.linspace(-1, 1, 5)
    assert predict_on_grid(model, sample_tasks(3, seed=0), grid).shape == (3, 5)


def test_deterministic_mode_uses_the_means():
    model = make_model(SMALL.replace(deterministic=True))
    batch = sample_tasks(3, seed=0)
    torch.manual_seed(0)
    first = model(batch).query_pred
    torch.manual_seed(1)
    torch.testing.assert_close(model(batch).query_pred, first)


def test_inner_gradient_matches_finite_differences():
    model = make_model(
        RegressionConfig(inner_unroll_length=1, deterministic=True), dtype=torch.float64
    )
    batch = sample_tasks(2, seed=3, dtype=torch.float64)
    x, y = batch.support_x, batch.support_y
    z = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)

    def support_loss(z):
        return ((model.predict(x, model.decode(z)) - y) ** 2).mean(dim=(1, 2))

    (grad,) = torch.autograd.grad(support_loss(z).sum(), z)
    eps = 1e-6
    for i in range(16):
        step = torch.zeros_like(z)
        step[:, i] = eps
        numeric = (support_loss(z + step) - support_loss(z - step)) / (2 * eps)
        torch.testing.assert_close(grad[:, i], numeric, rtol=1e-5, atol=1e-7)
    # the library's step uses this gradient (clipped to inner_grad_norm): z' = z - alpha grad
    with torch.no_grad():
        z_prime = model.leo_inner_loop(x, y, z).z_trajectory[1]
    norms = grad.norm(dim=1, keepdim=True)
    clipped = grad * torch.clamp(model.config.inner_grad_norm / norms, max=1.0)
    torch.testing.assert_close(z_prime, z.detach() - model.inner_lr.detach() * clipped)


def test_inner_step_is_differentiable_with_sampling():
    """gradcheck (float64) of z -> z' through a sampled inner step, noise fixed by a seed:
    the second-order terms the meta-gradient needs are right."""
    model = make_model(
        RegressionConfig(inner_unroll_length=1, inner_grad_norm=0.0), dtype=torch.float64
    )
    batch = sample_tasks(2, seed=4, dtype=torch.float64)

    def step(z):
        torch.manual_seed(0)
        return model.leo_inner_loop(batch.support_x, batch.support_y, z).z_trajectory[1]

    z = 0.5 * torch.randn(2, 16, dtype=torch.float64)
    assert torch.autograd.gradcheck(step, (z.requires_grad_(),), eps=1e-6, atol=1e-5)


def test_adaptation_lowers_the_support_loss_of_the_shipped_model():
    model, metrics = load_regression()
    batch = sample_tasks(200, seed=123)
    losses = support_loss_per_step(model, batch, seed=0)
    assert losses.shape == (model.config.inner_unroll_length + 1,)
    assert losses[-1] < 0.2 * losses[0]
    assert metrics["query_mse"] < 0.5 * metrics["untrained_query_mse"]
    assert metrics["query_mse_median"] < 0.1 * metrics["untrained_query_mse_median"]


def test_short_training_lowers_query_mse():
    """80 meta-steps of 8 tasks: the median query MSE over 300 held-out tasks falls well below
    the untrained model's (about 3 vs 7; the median, because a few steep lines dominate the
    mean of a barely trained model)."""
    config = RegressionConfig(inner_unroll_length=2)
    untrained = train_regression(config, steps=0, progress=False).model
    result = train_regression(config, steps=80, batch_size=8, progress=False, log_every=40)
    assert len(result.history) == 2
    batch = sample_tasks(300, seed=99)
    with torch.no_grad():
        torch.manual_seed(0)
        before = untrained(batch).query_loss.median().item()
        torch.manual_seed(0)
        after = result.model(batch).query_loss.median().item()
    assert after < 0.5 * before, (before, after)


def test_training_is_reproducible_under_its_seed():
    runs = [
        train_regression(SMALL, steps=3, batch_size=4, seed=s, progress=False).model
        for s in (5, 5, 6)
    ]
    a, b, c = (dict(m.named_parameters()) for m in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["g_d.0.weight"], c["g_d.0.weight"])


def test_closer_to_line():
    grid = torch.linspace(-5, 5, 101)
    lines = torch.stack([2 * grid - 1, -0.5 * grid + 3])
    sines = torch.stack([3 * torch.sin(grid - 1), 0.5 * torch.sin(grid)])
    assert closer_to_line(torch.cat([lines, sines]), grid).tolist() == [True, True, False, False]


def test_checkpoint_round_trip_and_damaged_files(tmp_path):
    model = make_model()
    path = save_regression(model, tmp_path / "reg.pt", metrics={"query_mse": 1.5})
    raw = torch.load(path, weights_only=True)  # plain tensors and types only
    assert raw["format"] == 1
    loaded, metrics = load_regression(path)
    assert metrics == {"query_mse": 1.5}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    a = sample_functions(model, [0.0, 1.0], [1.0, 2.0], n_samples=3, seed=1)
    b = sample_functions(loaded, [0.0, 1.0], [1.0, 2.0], n_samples=3, seed=1)
    assert torch.equal(a.after, b.after)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="not a readable regression checkpoint"):
        load_regression(damaged)
    with pytest.raises(UserError, match="not found"):
        load_regression(tmp_path / "missing.pt")


def test_user_errors():
    model = make_model()
    with pytest.raises(UserError, match=r"\[B, K, 1\]"):
        model.check_inputs(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(UserError, match="x values"):
        sample_functions(model, [0.0, 1.0], [1.0])
    with pytest.raises(UserError, match="inner_unroll_length"):
        RegressionConfig(inner_unroll_length=-1)
