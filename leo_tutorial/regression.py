"""LEO for 1-D few-shot regression: one task code generates a whole MLP (LEO_SPEC §5, paper §4.1).

The learner f_theta is a 1-40-40-1 ReLU MLP. All of its 1 761 parameters theta (weights *and*
biases) are generated from a single 16-d latent code z per task::

    support (x, y) [B,K,1]+[B,K,1] -> encoder g_e (per point) -> relation net g_r (all K^2 pairs)
        -> mean over pairs -> (mu, u) [B,2Z] -> z ~ N(mu, std(u))             (eq. 3, one code)
    z -> decoder g_d -> (mean, u) [B, 2*1761] -> theta ~ N(mean, std(u))        (eq. 4)
    z' = z - alpha * grad_z MSE^tr(f_theta(z)), T times (new theta sample each step) (eq. 5)
    loss = MSE^val(f_theta(z')) + beta KL + gamma ||z - sg(z')||^2 + lambda_1 L2   (eq. 6)

Sizes follow the appendix table quoted in LEO_SPEC §5: encoder 3-layer MLP 2 -> 16 -> 16 -> 16,
relation net 32 -> 32 -> 32 -> 2*16, decoder 16 -> 32 -> 32 -> 2*1761, ReLU between layers and
none after the last. Standard deviations use the classification model's parameterisation
``std = max(exp(u) - (1 - offset), 1e-10)`` (:func:`leo_tutorial.model.floored_std`): offset 0
for z; for theta a Glorot-like offset per layer of f_theta, sqrt(2 / (fan_in + fan_out)) (our
reading; the classification decoder uses sqrt(2 / (D + N)) for its one layer). The KL is the
library's one-sample estimate (:func:`leo_tutorial.losses.kl_estimate`), the penalties come from
:mod:`leo_tutorial.losses` and the outer step (Adam, official clipping, NaN guard) from
:mod:`leo_tutorial.training`.

No regression code was released; where the paper is silent we chose (LEO_SPEC §10), and say so:

- losses are means over points (MSE); T = 5 latent steps; no fine-tuning in parameter space; no
  orthogonality penalty; 10 query points per task; beta = 0.1, gamma = 1e-3.
- **Biases** in g_e, g_r, g_d (``bias=True``), unlike the classification model and the spec's
  unverified recollection. Without them theta(z = 0) = 0 and u(z) cannot be negative everywhere,
  so the generated MLPs start as pure noise; in our runs the bias-free model stayed near the
  untrained query MSE (about 16) for hundreds of steps. The decoder's last bias starts at a
  Glorot-initialised MLP (mean half) with a std of 0.1x Glorot (u half).
- **The inner gradient is clipped per task** to norm 20 (``inner_grad_norm``). With an MSE loss
  the support gradient grows with the residual, and the residual with exp(u(z)): without the
  clip, single tasks diverge to inf/NaN (in training, and after 2 000 steps still at
  evaluation). With the defaults, norms 5 / 20 / 50 gave a held-out query MSE of 1.89 / 1.21 /
  0.93 (mean over 500 tasks) and 0.31 / 0.29 / 0.33 (median).

Following the spec's (unverified) recollection of the paper, **z and theta are sampled at
training and at evaluation time alike**: ``model.eval()`` changes nothing, and predictions are
random draws from the model (seed them for reproducible figures).
``RegressionConfig(deterministic=True)`` uses the means instead (for checks).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import losses
from .data.sinusoid import RegressionBatch, SinusoidConfig, sample_tasks
from .errors import UserError
from .io import atomic_torch_save
from .model import floored_std
from .training import (
    INIT,
    TORCH,
    TRAIN,
    VAL,
    apply_meta_gradient,
    make_optimizer,
    mean_ci95,
    step_seed,
)

CHECKPOINT_FORMAT = 1
SHIPPED_CHECKPOINT = "regression_leo.pt"


# ------------------------------------------------------------------------- the learner f_theta
def theta_layout(hidden: int = 40) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the parameters of the 1-hidden-hidden-1 MLP, in the order they sit in
    the flat theta vector (``torch.nn.Linear`` layout: weight [out, in], then bias [out]).
    For hidden = 40: 40 + 40 + 1600 + 40 + 40 + 1 = 1 761 numbers."""
    return [
        ("w1", (hidden, 1)),
        ("b1", (hidden,)),
        ("w2", (hidden, hidden)),
        ("b2", (hidden,)),
        ("w3", (1, hidden)),
        ("b3", (1,)),
    ]


def theta_size(hidden: int = 40) -> int:
    """Number of parameters of f_theta: 1 761 for the paper's 40 hidden units."""
    return sum(math.prod(shape) for _, shape in theta_layout(hidden))


def unflatten_theta(theta: Tensor, hidden: int = 40) -> dict[str, Tensor]:
    """Flat theta [B, P] -> {name: [B, *shape]} (views, no copy)."""
    sizes = [math.prod(shape) for _, shape in theta_layout(hidden)]
    if theta.shape[-1] != sum(sizes):
        raise UserError(
            f"theta has {theta.shape[-1]} numbers, an MLP with {hidden} hidden units "
            f"needs {sum(sizes)}"
        )
    parts = theta.split(sizes, dim=-1)
    return {
        name: part.reshape(theta.shape[:-1] + shape)
        for (name, shape), part in zip(theta_layout(hidden), parts, strict=True)
    }


def mlp_forward(x: Tensor, theta: Tensor, hidden: int = 40) -> Tensor:
    """f_theta(x) for B tasks at once: x [B, M, 1], theta [B, P] -> [B, M, 1] (ReLU MLP)."""
    p = unflatten_theta(theta, hidden)
    h = torch.relu(torch.baddbmm(p["b1"][:, None, :], x, p["w1"].transpose(1, 2)))
    h = torch.relu(torch.baddbmm(p["b2"][:, None, :], h, p["w2"].transpose(1, 2)))
    return torch.baddbmm(p["b3"][:, None, :], h, p["w3"].transpose(1, 2))


def glorot_offsets(hidden: int = 40) -> Tensor:
    """Decoder std offset per theta entry [P]: sqrt(2 / (fan_in + fan_out)) of its layer."""
    fans = {"1": (1, hidden), "2": (hidden, hidden), "3": (hidden, 1)}
    parts = [
        torch.full((math.prod(shape),), math.sqrt(2.0 / sum(fans[name[1]])))
        for name, shape in theta_layout(hidden)
    ]
    return torch.cat(parts)


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per task: [B, M, 1] -> [B]."""
    return ((prediction - target) ** 2).flatten(1).mean(dim=1)


def clip_per_task(grad: Tensor, max_norm: float) -> Tensor:
    """grad [B, Z] with each task's row scaled down to norm <= ``max_norm`` (0 = off);
    differentiable, so the meta-gradient flows through it."""
    if max_norm <= 0:
        return grad
    norms = grad.norm(dim=-1, keepdim=True)
    return grad * torch.clamp(max_norm / (norms + 1e-12), max=1.0)


def mlp(sizes: Sequence[int], bias: bool = False) -> nn.Sequential:
    """MLP with ReLU between the layers and none after the last (Sonnet's default)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out, bias=bias))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class RegressionConfig:
    """Regression LEO hyper-parameters (architecture from LEO_SPEC §5; the rest our choice)."""

    num_latents: int = 16  # Z, size of the one task code z
    hidden: int = 40  # hidden units of f_theta (1-40-40-1 -> 1 761 parameters)
    encoder_hidden: int = 16
    relation_hidden: int = 32
    decoder_hidden: int = 32
    inner_unroll_length: int = 5  # T latent steps
    inner_lr_init: float = 0.1  # alpha, learned per latent dimension
    inner_grad_norm: float = 20.0  # each task's inner gradient is clipped to this norm (0 = off)
    kl_weight: float = 0.1  # beta
    encoder_penalty_weight: float = 1e-3  # gamma
    l2_penalty_weight: float = 1e-6  # lambda_1
    outer_lr: float = 1e-3  # Adam
    gradient_threshold: float = 0.1  # official per-element clipping (0 = off)
    gradient_norm_threshold: float = 0.1  # official per-tensor norm clipping (0 = off)
    bias: bool = True  # biases in g_e, g_r, g_d (see the module docstring)
    theta_std_init: float = 0.1  # with biases: initial std of theta, as a fraction of Glorot's
    deterministic: bool = False  # use means instead of samples (checks only, not the paper)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{f.name} = {value} is not a finite number")
        for name in (
            "num_latents",
            "hidden",
            "encoder_hidden",
            "relation_hidden",
            "decoder_hidden",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_unroll_length < 0:
            raise UserError(f"inner_unroll_length must be >= 0, got {self.inner_unroll_length}")
        if self.outer_lr <= 0:
            raise UserError(f"outer_lr must be > 0, got {self.outer_lr}")
        for name in ("kl_weight", "encoder_penalty_weight", "l2_penalty_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")

    def replace(self, **changes: Any) -> RegressionConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass
class RegressionAdaptation:
    """The latent inner loop of B tasks: z and theta at every step (T+1 each, [B,Z] / [B,P])
    and the support MSE per task [B] at every step."""

    z_trajectory: list[Tensor]
    theta_trajectory: list[Tensor]
    support_losses: list[Tensor]


@dataclass
class RegressionOutput:
    """One forward pass over B tasks. loss: scalar meta-loss; query_loss, kl, encoder_penalty
    [B]; l2 scalar (unweighted); codes [B,2Z]; z, z_prime [B,Z]; theta [B,P] (decoded from
    z_prime); query_pred [B,V,1]; support_losses: T+1 tensors [B]."""

    loss: Tensor
    query_loss: Tensor
    kl: Tensor
    encoder_penalty: Tensor
    l2: Tensor
    codes: Tensor
    z: Tensor
    z_prime: Tensor
    theta: Tensor
    query_pred: Tensor
    support_losses: list[Tensor] = field(default_factory=list)


class RegressionLEO(nn.Module):
    """LEO for 1-D regression: one task code z generates all 1 761 parameters of f_theta.

    Parameters: ``g_e`` encoder 2 -> 16 -> 16 -> Z on each (x, y) pair, ``g_r`` relation net
    2Z -> 32 -> 32 -> 2Z on every ordered pair of point codes, ``g_d`` decoder Z -> 32 -> 32 ->
    2P, ``inner_lr`` alpha [Z]. z and theta are sampled in train *and* eval mode (as the spec
    recalls the paper; see the module docstring), unless ``config.deterministic``.
    """

    def __init__(self, config: RegressionConfig | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = c = config or RegressionConfig()
        z = c.num_latents
        self.n_theta = theta_size(c.hidden)
        self.g_e = mlp([2, c.encoder_hidden, c.encoder_hidden, z], c.bias)
        self.g_r = mlp([2 * z, c.relation_hidden, c.relation_hidden, 2 * z], c.bias)
        self.g_d = mlp([z, c.decoder_hidden, c.decoder_hidden, 2 * self.n_theta], c.bias)
        self.inner_lr = nn.Parameter(torch.full((z,), c.inner_lr_init))
        self.register_buffer("theta_std_offset", glorot_offsets(c.hidden))
        self.to(dtype)
        for weight in self.weights():
            nn.init.xavier_uniform_(weight)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if c.bias:  # the decoder starts near a Glorot-initialised MLP with a small std
            last = self.g_d[-1].bias
            offset = self.theta_std_offset
            with torch.no_grad():
                last[: self.n_theta] = (2 * torch.rand_like(offset) - 1) * offset * math.sqrt(3)
                last[self.n_theta :] = torch.log(c.theta_std_init * offset + 1 - offset)

    def weights(self) -> list[Tensor]:
        """Every weight matrix of g_e, g_r, g_d (L2-regularised; alpha is not)."""
        return [
            m.weight
            for net in (self.g_e, self.g_r, self.g_d)
            for m in net
            if isinstance(m, nn.Linear)
        ]

    @property
    def dtype(self) -> torch.dtype:
        return self.inner_lr.dtype

    def check_inputs(self, x: Tensor, y: Tensor) -> None:
        """Clear errors for points that do not fit: x and y must both be [B, K, 1]."""
        if x.dim() != 3 or x.shape[-1] != 1 or x.shape != y.shape:
            raise UserError(
                f"expected x and y of shape [B, K, 1], got {tuple(x.shape)} and "
                f"{tuple(y.shape)}; reshape K points with x.reshape(1, -1, 1)"
            )
        if x.dtype != self.dtype or y.dtype != self.dtype:
            raise UserError(
                f"points are {x.dtype}/{y.dtype} but the model is {self.dtype}; "
                "convert with batch.to(dtype=model.dtype)"
            )

    # ------------------------------------------------------------------- sampling (LEO_SPEC §2.3)
    def sample(
        self, params: Tensor, stddev_offset: float | Tensor = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Split [B, 2C] into mean and std, draw a reparameterised sample: (value, mean, std),
        each [B, C]. value = mean when ``deterministic``."""
        mean, u = params.chunk(2, dim=-1)
        std, _ = floored_std(u, stddev_offset)
        if self.config.deterministic:
            return mean, mean, std
        return torch.addcmul(mean, std, torch.randn_like(std)), mean, std

    # ----------------------------------------------------------------------- encoding (eq. 3)
    def encode(self, x: Tensor, y: Tensor) -> Tensor:
        """Parameters of q(z | D^tr): (x, y) [B,K,1] each -> [B, 2Z] (first half mean, second
        half u). g_e on each point, g_r on all K^2 ordered pairs (self-pairs included), then the
        mean over every pair: one code per task."""
        h = self.g_e(torch.cat([x, y], dim=-1))  # [B, K, Z]
        k = h.shape[1]
        pairs = torch.cat(
            [h[:, :, None, :].expand(-1, -1, k, -1), h[:, None, :, :].expand(-1, k, -1, -1)], dim=-1
        )  # [B, K, K, 2Z]
        return self.g_r(pairs).mean(dim=(1, 2))

    def forward_encoder(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z ~ q(z | D^tr) with its one-sample KL to N(0, I) (mean over the Z elements, as
        :func:`leo_tutorial.losses.kl_estimate`): -> (z [B,Z], kl [B], codes [B,2Z])."""
        codes = self.encode(x, y)
        z, mean, std = self.sample(codes)
        return z, losses.kl_estimate(z, mean, std), codes

    # ----------------------------------------------------------------------- decoding (eq. 4)
    def decode(self, z: Tensor) -> Tensor:
        """theta ~ p(theta | z): [B, Z] -> [B, 1761], a fresh sample on every call."""
        theta, _, _ = self.sample(self.g_d(z), self.theta_std_offset)
        return theta

    def predict(self, x: Tensor, theta: Tensor) -> Tensor:
        """f_theta(x): [B, M, 1], [B, P] -> [B, M, 1]."""
        return mlp_forward(x, theta, self.config.hidden)

    # ------------------------------------------------------------------ inner loop (eq. 5)
    def leo_inner_loop(self, x: Tensor, y: Tensor, z: Tensor) -> RegressionAdaptation:
        """z' = z - alpha * clip(grad_z MSE(f_theta(z)(x), y)), ``inner_unroll_length`` times.

        Each task's gradient is clipped to norm ``inner_grad_norm`` (our addition, see the module
        docstring). Every step decodes a new theta sample. With gradients enabled the steps stay
        in the graph (second-order meta-gradient); under ``torch.no_grad()`` the loop still
        computes its inner gradients, on detached tensors.
        """
        meta = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (meta and z.requires_grad):
                z = z.detach().requires_grad_()
            thetas = [self.decode(z)]
            trajectory, support = [z], [mse(self.predict(x, thetas[0]), y)]
            for _ in range(self.config.inner_unroll_length):
                (grad,) = torch.autograd.grad(support[-1].sum(), z, create_graph=meta)
                grad = clip_per_task(grad, self.config.inner_grad_norm)
                z = z - self.inner_lr * grad
                if not meta:
                    z = z.detach().requires_grad_()
                thetas.append(self.decode(z))
                trajectory.append(z)
                support.append(mse(self.predict(x, thetas[-1]), y))
        if not meta:
            trajectory, thetas, support = (
                [t.detach() for t in ts] for ts in (trajectory, thetas, support)
            )
        return RegressionAdaptation(trajectory, thetas, support)

    # ------------------------------------------------------------------ meta-objective (eq. 6)
    def forward(self, batch: RegressionBatch) -> RegressionOutput:
        """Adapt to each task's support points and score its query points.

        loss = mean over tasks of [MSE^val + beta KL + gamma mean((z - sg(z'))^2)]
        + lambda_1 sum ||w||^2 / 2.
        """
        x, y = batch.support_x, batch.support_y
        self.check_inputs(x, y)
        self.check_inputs(batch.query_x, batch.query_y)
        z, kl, codes = self.forward_encoder(x, y)
        adaptation = self.leo_inner_loop(x, y, z)
        z_prime, theta = adaptation.z_trajectory[-1], adaptation.theta_trajectory[-1]
        query_pred = self.predict(batch.query_x, theta)
        query_loss = mse(query_pred, batch.query_y)
        penalty = losses.encoder_penalty(adaptation.z_trajectory[0], z_prime)
        l2 = losses.l2_penalty(self.weights())
        c = self.config
        loss = (
            query_loss + c.kl_weight * kl + c.encoder_penalty_weight * penalty
        ).mean() + c.l2_penalty_weight * l2
        return RegressionOutput(
            loss,
            query_loss,
            kl,
            penalty,
            l2,
            codes,
            z,
            z_prime,
            theta,
            query_pred,
            adaptation.support_losses,
        )


# ------------------------------------------------------------- functions for figures (Fig. 2)
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


# -------------------------------------------------------------------- training and evaluation
def evaluate_regression(
    model: RegressionLEO,
    tasks: int = 500,
    seed: int = 1,
    data: SinusoidConfig | None = None,
    batch_size: int = 100,
) -> dict[str, float]:
    """Mean query MSE over ``tasks`` held-out tasks (fixed by ``seed``) with its 95% CI and its
    median (the mean is dominated by a few hard tasks, e.g. steep lines), the support MSE before
    and after the inner loop, and the query MSE against the noise-free function (the noise alone
    gives 0.09 on noisy targets)."""
    data = data or SinusoidConfig()
    query, clean, before, after = [], [], [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(step_seed(seed, TORCH, 0))
        for start in range(0, tasks, batch_size):
            batch = sample_tasks(
                min(batch_size, tasks - start), [seed, VAL, start], data, model.dtype
            )
            out = model(batch)
            query.append(out.query_loss)
            clean.append(mse(out.query_pred, batch.true_function(batch.query_x)))
            before.append(out.support_losses[0])
            after.append(out.support_losses[-1])
    query_mse, ci95 = mean_ci95(torch.cat(query).double().numpy())
    return {
        "query_mse": query_mse,
        "query_mse_ci95": ci95,
        "query_mse_median": float(torch.cat(query).double().median()),
        "query_mse_noise_free": float(torch.cat(clean).double().mean()),
        "support_mse_before": float(torch.cat(before).double().mean()),
        "support_mse_after": float(torch.cat(after).double().mean()),
        "tasks": tasks,
    }


@dataclass
class RegressionTrainResult:
    model: RegressionLEO
    history: list[dict[str, float]]  # every ``log_every`` steps: step, query_mse, kl, ...
    seconds: float


def train_regression(
    config: RegressionConfig | None = None,
    steps: int = 1500,
    batch_size: int = 16,
    seed: int = 0,
    data: SinusoidConfig | None = None,
    log_every: int = 50,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> RegressionTrainResult:
    """Meta-train a :class:`RegressionLEO` on fresh sines-and-lines tasks (Adam on the
    meta-loss; the classification model's NaN guard and, when switched on, its clipping).

    Step t uses the task batch seeded ``[seed, 0, t]`` and a torch seed derived from
    (seed, t): the same arguments give the same model.
    """
    if steps < 0 or batch_size < 1 or log_every < 1:
        raise UserError(
            f"need steps >= 0, batch_size >= 1, log_every >= 1; got {steps}, "
            f"{batch_size}, {log_every}"
        )
    data, start = data or SinusoidConfig(), time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, INIT, 0))
        model = RegressionLEO(config, dtype=dtype)
        optimizer = make_optimizer(model)  # type: ignore[arg-type]
        history, window = [], []
        for step in tqdm(range(steps), disable=not progress, desc="meta-train", unit="step"):
            batch = sample_tasks(batch_size, [seed, TRAIN, step], data, dtype)
            torch.manual_seed(step_seed(seed, TORCH, step))
            out = model(batch)
            apply_meta_gradient(model, optimizer, out.loss)  # type: ignore[arg-type]
            window.append(
                [
                    t.detach().double().mean().item()
                    for t in (
                        out.query_loss,
                        out.kl,
                        out.encoder_penalty,
                        out.support_losses[0],
                        out.support_losses[-1],
                    )
                ]
            )
            if len(window) == log_every or step == steps - 1:
                values = np.mean(window, axis=0).tolist()
                record = dict(
                    zip(
                        [
                            "query_mse",
                            "kl",
                            "encoder_penalty",
                            "support_mse_before",
                            "support_mse_after",
                        ],
                        values,
                        strict=True,
                    )
                )
                history.append({"step": step, **record})
                window.clear()
                if callback is not None:
                    callback(step, history[-1])
    return RegressionTrainResult(model, history, time.perf_counter() - start)


# ----------------------------------------------------------------------------- checkpoints
def save_regression(
    model: RegressionLEO, path: str | Path, metrics: dict[str, Any] | None = None
) -> Path:
    """Write the model (config, weights, optional metrics) atomically, tensors and plain types
    only, so :func:`load_regression` reads it with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(model.config),
            "dtype": str(model.dtype).removeprefix("torch."),
            "model": state,
            "metrics": metrics or {},
        },
    )


def shipped_checkpoint() -> Path:
    """Path of the checkpoint shipped with the package (``scripts/train_regression.py``)."""
    return Path(str(resources.files("leo_tutorial") / "assets" / SHIPPED_CHECKPOINT))


def load_regression(path: str | Path | None = None) -> tuple[RegressionLEO, dict[str, Any]]:
    """(model, metrics) from a checkpoint written by :func:`save_regression`; the shipped one
    by default. Read with ``weights_only=True`` (no code runs); a damaged file is a UserError."""
    path = Path(path) if path is not None else shipped_checkpoint()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a regression checkpoint of format 1")
        with torch.random.fork_rng(devices=[]):  # initial weights are overwritten: keep the
            model = RegressionLEO(
                RegressionConfig(**saved["config"]),  # caller's random stream
                dtype=getattr(torch, saved["dtype"]),
            )
        model.load_state_dict(saved["model"])
    except FileNotFoundError:
        raise UserError(f"{path} not found; train one with scripts/train_regression.py") from None
    except Exception as e:  # noqa: BLE001 (any unpickling or shape problem: a damaged file)
        raise UserError(
            f"{path} is not a readable regression checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); "
            "regenerate it with scripts/train_regression.py"
        ) from None
    return model, saved.get("metrics", {})
