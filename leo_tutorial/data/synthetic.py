"""Synthetic embeddings at the official shapes, with a known best-possible accuracy.

Generative model (one fixed random subspace, fresh classes per split):

    U        [D, r] orthonormal, fixed by the seed
    a_c      ~ N(0, tau^2 I_r)              one per class
    mu_c     = U a_c                         class mean, in a rank-r subspace of R^D
    x        = mu_c + sigma * eps,  eps ~ N(0, I_D)

The default sizes match miniImageNet (64/16/20 classes, 600 images per class, D = 640). The
defaults tau = 0.8, sigma = 1, r = 16 give a Bayes-optimal 5-way accuracy of about 69 % (1-shot)
and 87 % (5-shot), a little above LEO's miniImageNet results (61.8 / 77.6 %), see
:func:`bayes_accuracy`. Only the subspace carries class information: nearest centroid on the
L2-normalised features reaches only about 31 % / 44 %, because the noise in the other D - r
directions swamps the distances; a meta-learner can discover the subspace from the meta-train
classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .bank import FeatureBank, FeatureSplit

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and difficulty of the synthetic feature bank.

    n_train_classes / n_val_classes / n_test_classes: classes of S^tr / S^val / S^test.
    images_per_class: images of every class. dim: embedding dimension D.
    subspace_dim: rank r of the subspace holding the class means.
    class_scale: tau, the prior std of a class mean's coordinates in the subspace.
    noise: sigma, the std of the isotropic per-image noise in all D dimensions.
    seed: fixes U and every class and image.
    """

    n_train_classes: int = 64
    n_val_classes: int = 16
    n_test_classes: int = 20
    images_per_class: int = 600
    dim: int = 640
    subspace_dim: int = 16
    class_scale: float = 0.8
    noise: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "n_train_classes",
            "n_val_classes",
            "n_test_classes",
            "images_per_class",
            "dim",
            "subspace_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"SyntheticConfig.{name} must be an int >= 1, got {value!r}")
        if self.subspace_dim > self.dim:
            raise UserError(
                f"SyntheticConfig.subspace_dim ({self.subspace_dim}) exceeds dim ({self.dim}); "
                "use subspace_dim <= dim"
            )
        for name in ("class_scale", "noise"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise UserError(f"SyntheticConfig.{name} must be a positive number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"SyntheticConfig.seed must be an int >= 0, got {self.seed!r}")

    def n_classes(self, split: str) -> int:
        return getattr(self, f"n_{split}_classes")


def subspace_basis(config: SyntheticConfig) -> np.ndarray:
    """The orthonormal basis U ``[D, r]`` of the class-mean subspace (fixed by the seed)."""
    rng = np.random.default_rng([config.seed, 99])
    q, _ = np.linalg.qr(rng.standard_normal((config.dim, config.subspace_dim)))
    return q


def make_synthetic_split(
    config: SyntheticConfig, split: str, basis: np.ndarray | None = None
) -> FeatureSplit:
    """One split: ``n_classes * images_per_class`` rows, class-major, float32 ``[n, D]``."""
    if split not in _SPLIT_CODES:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(_SPLIT_CODES)}")
    u = subspace_basis(config) if basis is None else basis
    n_classes, per_class = config.n_classes(split), config.images_per_class
    rng = np.random.default_rng([config.seed, _SPLIT_CODES[split]])
    codes = config.class_scale * rng.standard_normal((n_classes, config.subspace_dim))  # a_c
    means = (codes @ u.T).astype(np.float32)  # mu_c = U a_c, [C, D]
    x = rng.standard_normal((n_classes, per_class, config.dim), dtype=np.float32)
    x *= np.float32(config.noise)
    x += means[:, None, :]
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    names = [f"{split}{c:03d}" for c in range(n_classes)]
    return FeatureSplit(x.reshape(n_classes * per_class, config.dim), labels, names)


def make_synthetic_bank(config: SyntheticConfig = SyntheticConfig()) -> FeatureBank:
    """The train / val / test splits of the generator as a FeatureBank named ``"synthetic"``."""
    u = subspace_basis(config)
    splits = {s: make_synthetic_split(config, s, u) for s in _SPLIT_CODES}
    return FeatureBank(splits, name="synthetic")


def bayes_accuracy(
    config: SyntheticConfig,
    n_way: int,
    k_shot: int,
    n_query: int = 15,
    n_tasks: int = 2000,
    seed: int = 0,
    bias: bool = True,
) -> tuple[float, float]:
    """Monte-Carlo estimate of the Bayes-optimal N-way K-shot accuracy of the generator.

    Fresh tasks are drawn from the generative model (new class means from the prior). Only the
    projection ``y = U^T x`` depends on the class, so each query is classified with the exact
    Bayes rule in the subspace: given the support mean ``ybar_c`` of K shots, the posterior of
    ``a_c`` is ``N(s ybar_c, v I)`` with ``s = tau^2 / (tau^2 + sigma^2/K)``, ``v = s sigma^2/K``;
    the predictive of a query is ``N(s ybar_c, (v + sigma^2) I)``, the same variance for every
    class, so the rule is ``argmin_c ||y - s ybar_c||``. Queries are classified one at a time
    (inductive, like LEO).

    This is the optimum on the raw features; LEO sees L2-normalised features, so it is an upper
    bound for any classifier there. The bank's fixed test classes are one draw from the prior, so
    accuracy on them fluctuates around this value.

    ``bias=False`` drops the rule's class-dependent bias ``-||s ybar_c||^2 / 2`` and scores
    ``<y, s ybar_c>`` alone: the Bayes weights in a *bias-free* linear classifier, which is the
    form of LEO's classifier (logits = <x, w_n>, no bias). It is a reference for how much of the
    gap to Bayes is due to that form, not an upper bound for LEO.

    Returns ``(accuracy, ci95)`` as fractions, ``ci95 = 1.96 * std(per-task accuracy) / sqrt(n)``.
    """
    for name, value in (
        ("n_way", n_way),
        ("k_shot", k_shot),
        ("n_query", n_query),
        ("n_tasks", n_tasks),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an int >= 1, got {value!r}")
    tau, sigma, r = config.class_scale, config.noise, config.subspace_dim
    rng = np.random.default_rng([seed, 7])
    s = tau**2 / (tau**2 + sigma**2 / k_shot)
    correct = np.empty(n_tasks)
    chunk = max(1, 2_000_000 // (n_way * n_way * n_query * r))
    for start in range(0, n_tasks, chunk):
        b = min(chunk, n_tasks - start)
        codes = tau * rng.standard_normal((b, n_way, 1, r))
        support_mean = codes[:, :, 0] + sigma / np.sqrt(k_shot) * rng.standard_normal(
            (b, n_way, r)
        )  # [b, N, r]
        query = codes + sigma * rng.standard_normal((b, n_way, n_query, r))  # [b, N, V, r]
        centres = s * support_mean
        scores = np.einsum("bnvr,bcr->bnvc", query, centres)  # <y, s ybar_c>
        if bias:  # -||y - s ybar_c||^2 / 2 up to a class-independent term
            scores -= 0.5 * (centres**2).sum(-1)[:, None, None, :]
        pred = scores.argmax(-1)  # [b, N, V]
        truth = np.arange(n_way)[None, :, None]
        correct[start : start + b] = (pred == truth).mean(axis=(1, 2))
    return float(correct.mean()), float(1.96 * correct.std() / np.sqrt(n_tasks))
