"""Functions behind the paper's Fig. 2: functions sampled from the model before and after
adaptation, predictions on a grid, and whether a sampled function looks like a line or a sine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.sinusoid import RegressionBatch
from ..errors import UserError
from .model import RegressionLEO


@dataclass
class FunctionSamples:
    """Functions drawn from the model for one set of support points.

    grid [G]; before [S, G]: f_theta with z ~ q(z | D^tr) (no adaptation); after [S, G]: with
    z' after the inner loop; support_losses [T+1, S]: support MSE of each draw at each step.
    """

    grid: Tensor
    before: Tensor
    after: Tensor
    support_losses: Tensor


def _points(values: Tensor | Sequence[float], dtype: torch.dtype) -> Tensor:
    """K points given as [K], [K, 1] or [1, K, 1] -> [1, K, 1]."""
    t = torch.as_tensor(values, dtype=dtype)
    if t.numel() < 1 or t.dim() > 3 or (t.dim() > 1 and t.shape[-1] != 1):
        raise UserError(f"support points must be a list of K numbers, got shape {tuple(t.shape)}")
    return t.reshape(1, -1, 1)


def sample_functions(
    model: RegressionLEO,
    support_x: Tensor | Sequence[float],
    support_y: Tensor | Sequence[float],
    grid: Tensor | None = None,
    n_samples: int = 50,
    seed: int = 0,
) -> FunctionSamples:
    """Draw ``n_samples`` functions from the generative model for one task (paper Fig. 2).

    Each draw samples its own z ~ q(z | D^tr), adapts it with the inner loop (new theta samples
    each step) and evaluates f_theta on ``grid`` (default: 200 points on [-5, 5]) with theta
    decoded from z (``before``) and from z' (``after``). Reproducible under ``seed``; the global
    CPU random state is left untouched (the model is on the CPU).
    """
    if n_samples < 1:
        raise UserError(f"n_samples must be >= 1, got {n_samples}")
    x, y = _points(support_x, model.dtype), _points(support_y, model.dtype)
    if x.shape != y.shape:
        raise UserError(f"got {x.shape[1]} x values but {y.shape[1]} y values")
    grid = (
        torch.linspace(-5, 5, 200, dtype=model.dtype)
        if grid is None
        else torch.as_tensor(grid, dtype=model.dtype)
    )
    x, y = x.expand(n_samples, -1, -1), y.expand(n_samples, -1, -1)
    grid_b = grid.reshape(1, -1, 1).expand(n_samples, -1, -1)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        z, _, _ = model.forward_encoder(x, y)
        adaptation = model.leo_inner_loop(x, y, z)
        before = model.predict(grid_b, adaptation.theta_trajectory[0])[..., 0]
        after = model.predict(grid_b, adaptation.theta_trajectory[-1])[..., 0]
    return FunctionSamples(grid, before, after, torch.stack(adaptation.support_losses))


def predict_on_grid(
    model: RegressionLEO, batch: RegressionBatch, grid: Tensor, seed: int = 0
) -> Tensor:
    """One adapted function per task evaluated on ``grid`` [G]: -> [B, G] (seeded draw)."""
    grid_b = grid.to(model.dtype).reshape(1, -1, 1).expand(batch.batch_size, -1, -1)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        z, _, _ = model.forward_encoder(batch.support_x, batch.support_y)
        adaptation = model.leo_inner_loop(batch.support_x, batch.support_y, z)
        return model.predict(grid_b, adaptation.theta_trajectory[-1])[..., 0]


def support_loss_per_step(model: RegressionLEO, batch: RegressionBatch, seed: int = 0) -> Tensor:
    """Mean support MSE over the batch's tasks before and after each inner step: [T+1]."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        z, _, _ = model.forward_encoder(batch.support_x, batch.support_y)
        adaptation = model.leo_inner_loop(batch.support_x, batch.support_y, z)
    return torch.stack(adaptation.support_losses).mean(dim=1)


def closer_to_line(functions: Tensor, grid: Tensor) -> Tensor:
    """For each function [S, G] sampled on ``grid`` [G]: True where the best least-squares line
    a x + b fits it strictly better than the best sine A sin(x - phi) -> [S] bool.

    Both families are linear least squares: span{x, 1} and span{sin x, cos x}
    (A sin(x - phi) = A cos(phi) sin x - A sin(phi) cos x).
    """
    g = grid.to(torch.float64)
    f = functions.to(torch.float64).T  # [G, S]

    def residual(basis: Tensor) -> Tensor:
        coef = torch.linalg.lstsq(basis, f).solution
        return ((basis @ coef - f) ** 2).mean(dim=0)

    line = residual(torch.stack([g, torch.ones_like(g)], dim=1))
    sine = residual(torch.stack([torch.sin(g), torch.cos(g)], dim=1))
    return line < sine


def line_fraction(samples: FunctionSamples, adapted: bool = True) -> float:
    """Fraction of the sampled functions (after adaptation by default) closer to a line."""
    functions = samples.after if adapted else samples.before
    return float(closer_to_line(functions, samples.grid).double().mean())
