"""Sines-and-lines regression tasks: shapes, seeding, ranges, noise, the true function."""

import math

import pytest
import torch

from leo_tutorial.data.sinusoid import SinusoidConfig, sample_tasks, true_function
from leo_tutorial.errors import UserError


def test_shapes_and_dtypes():
    batch = sample_tasks(7, seed=0)
    assert batch.support_x.shape == batch.support_y.shape == (7, 5, 1)
    assert batch.query_x.shape == batch.query_y.shape == (7, 10, 1)
    assert batch.support_x.dtype == torch.float32
    assert batch.is_sine.shape == (7,) and batch.is_sine.dtype == torch.bool
    assert batch.params.shape == (7, 2)
    assert (batch.batch_size, batch.k_shot, batch.n_query) == (7, 5, 10)
    wide = sample_tasks(3, seed=0, config=SinusoidConfig(k_shot=2, n_query=4), dtype=torch.float64)
    assert wide.support_x.shape == (3, 2, 1) and wide.query_y.shape == (3, 4, 1)
    assert wide.query_y.dtype == torch.float64


def test_same_seed_same_tasks_other_seed_other_tasks():
    a, b, c = sample_tasks(4, seed=3), sample_tasks(4, seed=3), sample_tasks(4, seed=4)
    for name in ("support_x", "support_y", "query_x", "query_y", "is_sine", "params"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x)
    assert not torch.equal(
        sample_tasks(4, seed=[3, 0, 1]).support_y, sample_tasks(4, seed=[3, 0, 2]).support_y
    )


def test_ranges_and_equal_proportion():
    batch = sample_tasks(4000, seed=1)
    sine, line = batch.params[batch.is_sine], batch.params[~batch.is_sine]
    assert abs(batch.is_sine.double().mean().item() - 0.5) < 0.03
    assert 0.1 <= sine[:, 0].min() and sine[:, 0].max() <= 5.0
    assert 0.0 <= sine[:, 1].min() and sine[:, 1].max() <= math.pi
    assert -3.0 <= line.min() and line.max() <= 3.0
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    assert -5.0 <= x.min() and x.max() <= 5.0
    assert x.min() < -4.9 and x.max() > 4.9


def test_noise_has_the_paper_std():
    batch = sample_tasks(4000, seed=2)
    residual = batch.query_y - batch.true_function(batch.query_x)
    assert abs(residual.std().item() - 0.3) < 0.01
    assert abs(residual.mean().item()) < 0.01
    clean = sample_tasks(5, seed=2, config=SinusoidConfig(noise=0.0))
    torch.testing.assert_close(clean.support_y, clean.true_function(clean.support_x))


def test_true_function_values():
    is_sine = torch.tensor([True, False])
    params = torch.tensor([[2.0, math.pi / 2], [-1.5, 0.5]], dtype=torch.float64)
    x = torch.tensor([0.0, 1.0, math.pi / 2], dtype=torch.float64)
    y = true_function(x, is_sine, params)
    assert y.shape == (2, 3, 1)
    expected_sine = [2 * math.sin(-math.pi / 2), 2 * math.sin(1 - math.pi / 2), 0.0]
    expected_line = [0.5, -1.0, -1.5 * math.pi / 2 + 0.5]
    torch.testing.assert_close(y[0, :, 0], torch.tensor(expected_sine, dtype=torch.float64))
    torch.testing.assert_close(y[1, :, 0], torch.tensor(expected_line, dtype=torch.float64))


def test_to_converts_points_only():
    batch = sample_tasks(2, seed=0).to(dtype=torch.float64)
    assert batch.support_x.dtype == batch.query_y.dtype == torch.float64
    assert batch.is_sine.dtype == torch.bool


@pytest.mark.parametrize(
    "kwargs", [dict(k_shot=0), dict(sine_fraction=1.5), dict(noise=-1.0), dict(slope=(3.0, -3.0))]
)
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(UserError):
        SinusoidConfig(**kwargs)


def test_bad_batch_size_is_a_clear_error():
    with pytest.raises(UserError, match="batch_size"):
        sample_tasks(0, seed=0)
