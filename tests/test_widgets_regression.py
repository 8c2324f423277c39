"""The regression explorer driven without a browser: set slider values, read the result."""

import matplotlib
import pytest
import torch

from leo_tutorial.errors import UserError
from leo_tutorial.regression import RegressionConfig, RegressionLEO, sample_functions
from leo_tutorial.widgets import RegressionExplorer

matplotlib.use("Agg")

XS, YS = [-4.0, -2.0, 0.0, 2.0, 4.0], [1.0, -1.0, 0.5, 2.0, -0.5]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RegressionLEO(RegressionConfig(inner_unroll_length=2))


def test_explorer_shows_the_samples_of_its_points(model):
    explorer = RegressionExplorer(model, XS, YS, n_samples=4, seed=3)
    samples = explorer.result["samples"]
    assert samples.after.shape == (4, 200)
    expected = sample_functions(model, XS, YS, n_samples=4, seed=3)
    torch.testing.assert_close(samples.after, expected.after)
    assert explorer.result["x"] == XS and explorer.result["y"] == YS
    assert 0.0 <= explorer.result["line_fraction"] <= 1.0
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "closer to a line" in explorer.summary.value


@pytest.mark.slow
def test_moving_a_slider_updates_the_samples(model):
    explorer = RegressionExplorer(model, XS, YS, n_samples=4, seed=3)
    before = explorer.result["samples"].after.clone()
    explorer.ys[2].value = 5.0
    assert explorer.result["y"][2] == 5.0
    after = explorer.result["samples"].after
    assert not torch.allclose(before, after)
    torch.testing.assert_close(
        after, sample_functions(model, XS, [1.0, -1.0, 5.0, 2.0, -0.5], n_samples=4, seed=3).after
    )
    explorer.xs[0].value = -4.5
    assert explorer.result["x"][0] == -4.5


def test_mismatched_points_are_a_clear_error(model):
    with pytest.raises(UserError, match="as many x as y"):
        RegressionExplorer(model, [0.0, 1.0], [1.0])
