"""The paper's 1-D regression tasks: sines and lines (LEO_SPEC §5, paper §4.1).

Each task is, with equal probability, a sine or a line (the "simple regression task" of Finn et
al., 2018, used by LEO):

    sine:  y = A sin(x - phi),   A ~ U[0.1, 5],   phi ~ U[0, pi]
    line:  y = a x + b,          a ~ U[-3, 3],    b ~ U[-3, 3]
    x ~ U[-5, 5];  observed targets y + eps,  eps ~ N(0, 0.3^2)

A task shows K = 5 noisy support points (the paper's D^tr) and ``n_query`` noisy query points
(D^val). The paper does not say how many query points it used (LEO_SPEC §10); we use 10.
Batches are seeded explicitly: the same seed gives the same tasks. ``RegressionBatch`` also
keeps each task's kind and parameters, so the true (noise-free) function can be drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

Seed = int | Sequence[int]


@dataclass(frozen=True)
class SinusoidConfig:
    """The task distribution. Ranges are (low, high) of uniform distributions."""

    k_shot: int = 5  # support points per task (paper: K = 5)
    n_query: int = 10  # query points per task (our choice; not in the paper)
    sine_fraction: float = 0.5  # probability that a task is a sine (paper: equal proportion)
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    slope: tuple[float, float] = (-3.0, 3.0)
    intercept: tuple[float, float] = (-3.0, 3.0)
    x_range: tuple[float, float] = (-5.0, 5.0)
    noise: float = 0.3  # std of the Gaussian noise on every observed target

    def __post_init__(self) -> None:
        if self.k_shot < 1 or self.n_query < 1:
            raise UserError(f"need k_shot >= 1 and n_query >= 1, got {self.k_shot}, {self.n_query}")
        if not 0.0 <= self.sine_fraction <= 1.0:
            raise UserError(f"sine_fraction must be in [0, 1], got {self.sine_fraction}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise UserError(f"noise must be a finite number >= 0, got {self.noise}")
        for name in ("amplitude", "phase", "slope", "intercept", "x_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise UserError(
                    f"{name} must be a (low, high) pair with low <= high, got {(low, high)}"
                )


def true_function(x: torch.Tensor, is_sine: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Noise-free y of B tasks: x [B, M, 1] (or [M], shared), is_sine [B], params [B, 2] ->
    [B, M, 1]. params = (A, phi) for a sine, (slope, intercept) for a line."""
    if x.dim() == 1:
        x = x.reshape(1, -1, 1).expand(is_sine.shape[0], -1, -1)
    x = x.to(params.dtype)
    p0, p1 = params[:, 0, None, None], params[:, 1, None, None]
    return torch.where(is_sine[:, None, None], p0 * torch.sin(x - p1), p0 * x + p1)


@dataclass
class RegressionBatch:
    """B regression tasks.

    support_x, support_y: ``[B, K, 1]`` (the paper's D^tr); query_x, query_y: ``[B, V, 1]``
    (D^val); targets are noisy. is_sine: ``[B]`` bool; params: ``[B, 2]`` float64,
    (amplitude, phase) of a sine or (slope, intercept) of a line.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    is_sine: torch.Tensor
    params: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    @property
    def k_shot(self) -> int:
        return self.support_x.shape[1]

    @property
    def n_query(self) -> int:
        return self.query_x.shape[1]

    def true_function(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free targets at x ``[M]`` (shared) or ``[B, M, 1]`` -> ``[B, M, 1]``, in the
        dtype of ``support_x``."""
        return true_function(x, self.is_sine, self.params).to(self.support_x.dtype)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RegressionBatch:
        """Inputs and targets moved/converted (is_sine and params stay as they are)."""
        move = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in ("support_x", "support_y", "query_x", "query_y")
        }
        return RegressionBatch(**move, is_sine=self.is_sine, params=self.params)


def sample_tasks(
    batch_size: int,
    seed: Seed,
    config: SinusoidConfig = SinusoidConfig(),
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """``batch_size`` tasks drawn from the sines-and-lines distribution, fixed by ``seed``."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    c, b, n = config, batch_size, config.k_shot + config.n_query
    is_sine = rng.random(b) < c.sine_fraction
    params = np.where(
        is_sine[:, None],
        np.stack([rng.uniform(*c.amplitude, b), rng.uniform(*c.phase, b)], 1),
        np.stack([rng.uniform(*c.slope, b), rng.uniform(*c.intercept, b)], 1),
    )
    x = rng.uniform(*c.x_range, (b, n, 1))
    is_sine_t, params_t = torch.from_numpy(is_sine), torch.from_numpy(params)
    y = true_function(torch.from_numpy(x), is_sine_t, params_t).numpy()
    y = y + c.noise * rng.standard_normal((b, n, 1))
    xt, yt = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
    k = c.k_shot
    return RegressionBatch(xt[:, :k], yt[:, :k], xt[:, k:], yt[:, k:], is_sine_t, params_t)
