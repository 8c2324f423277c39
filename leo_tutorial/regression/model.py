"""Regression LEO (LEO_SPEC §5, paper §2.3.4 and §4.1): one task code z generates all of theta."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses
from ..data.sinusoid import RegressionBatch
from ..errors import UserError
from ..model import floored_std
from .learner import clip_per_task, glorot_offsets, mlp, mlp_forward, mse, theta_size


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

    def training_metrics(self) -> dict[str, float]:
        """What the training loop logs for this step: means over the batch's tasks."""
        terms = {
            "query_mse": self.query_loss,
            "kl": self.kl,
            "encoder_penalty": self.encoder_penalty,
            "support_mse_before": self.support_losses[0],
            "support_mse_after": self.support_losses[-1],
        }
        return {name: t.detach().double().mean().item() for name, t in terms.items()}


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

    # ------------------------------------------------------------------ inner loop (§2.3.2)
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
