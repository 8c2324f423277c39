"""The learner f_theta of regression LEO: a 1-40-40-1 ReLU MLP whose 1 761 parameters theta are
one flat vector per task, so B tasks run at once with batched matrix products."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError


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
