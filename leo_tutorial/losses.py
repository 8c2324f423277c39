"""The terms of LEO's meta-objective (LEO_SPEC §2.3, §2.5, §2.7).

Every function is a plain tensor function, so the notebooks can call each term on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_log_prob(x: Tensor, mean: Tensor | float, std: Tensor | float) -> Tensor:
    """Elementwise log N(x; mean, std^2)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - _LOG_SQRT_2PI


def kl_estimate(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """One-sample Monte-Carlo KL(q || p) with q = N(mean, std^2), p = N(0, I), per task.

    ``sample``, ``mean``, ``std``: [B, ...]. Returns [B]: the **mean over all elements** of
    log q(s) - log p(s) at the single sample s, exactly as the official code (LEO_SPEC §2.3);
    its expectation is the analytic KL divided by the number of elements.
    """
    log_ratio = normal_log_prob(sample, mean, std) - normal_log_prob(sample, 0.0, 1.0)
    return log_ratio.flatten(1).mean(dim=1)


def analytic_kl(mean: Tensor, std: Tensor) -> Tensor:
    """Closed-form KL(N(mean, std^2) || N(0, 1)) averaged over elements per task: [B, ...] -> [B].

    Not used in training (the official code uses :func:`kl_estimate`); here to compare.
    """
    kl = 0.5 * (mean**2 + std**2 - 1.0) - torch.log(std)
    return kl.flatten(1).mean(dim=1)


def encoder_penalty(z: Tensor, z_prime: Tensor) -> Tensor:
    """gamma's term ||stopgrad(z') - z||^2 as the official *mean* over [N, K, Z], per task -> [B].

    Gradients reach ``z`` (the encoder) only: the adapted codes are a fixed target.
    """
    return ((z - z_prime.detach()) ** 2).flatten(1).mean(dim=1)


def orthogonality_penalty(decoder_rows: Tensor) -> Tensor:
    """lambda_2's term mean((C - I)^2), C the cosine-similarity matrix of the decoder's rows.

    ``decoder_rows``: [Z, 2D], one row per latent dimension (Sonnet's weight layout; for a
    ``torch.nn.Linear(Z, 2D)`` pass ``weight.T``). Norms get the official +1e-32. Scalar.
    """
    norms = decoder_rows.norm(dim=1, keepdim=True) + 1e-32
    correlation = (decoder_rows @ decoder_rows.T) / (norms * norms.T)
    identity = torch.eye(
        decoder_rows.shape[0], dtype=decoder_rows.dtype, device=decoder_rows.device
    )
    return ((correlation - identity) ** 2).mean()


def l2_penalty(weights: Iterable[Tensor]) -> Tensor:
    """lambda_1's term sum ||w||^2 / 2 over weight matrices (never alpha or eta). Scalar."""
    return sum((w**2).sum() / 2 for w in weights)  # type: ignore[return-value]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy per example: logits [..., N], labels [...] int64 -> [...]."""
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return flat.view(labels.shape)


def cross_entropy_grad(logits: Tensor, labels: Tensor) -> Tensor:
    """d(sum of :func:`cross_entropy`)/d logits = softmax(logits) - onehot(labels): [..., N].

    Written with differentiable operations, so autograd can take its derivative again
    (second-order meta-gradients without double backward).
    """
    onehot = torch.zeros_like(logits).scatter_(-1, labels.unsqueeze(-1), 1.0)  # no sync
    return torch.softmax(logits, dim=-1) - onehot


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task: logits [B, ..., N] -> [B]."""
    correct = (logits.argmax(dim=-1) == labels).to(logits.dtype)
    return correct.flatten(1).mean(dim=1)
