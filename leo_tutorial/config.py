"""Hyper-parameters of LEO and of its meta-training, with the paper's presets.

`LEOConfig` holds what the official code calls the inner and outer configs (LEO_SPEC §4.1);
`TrainConfig` holds the episode shape and the schedule of one meta-training run. Presets are the
official defaults and the four tuned settings of the official README (LEO_SPEC §4.2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class LEOConfig:
    """Model and outer-loop hyper-parameters (defaults = official ``config.py``, LEO_SPEC §4.1).

    ``deterministic``, ``random_prior`` and ``first_order`` switch on the paper's ablations
    (LEO_SPEC §4.4); ``reference`` chooses the implementation, not the maths.
    """

    num_latents: int = 64  # Z, size of each latent code z_n
    inner_unroll_length: int = 5  # latent-space adaptation steps (0 = conditional generator only)
    finetuning_unroll_length: int = 5  # parameter-space fine-tuning steps (0 = no fine-tuning)
    inner_lr_init: float = 1.0  # initial alpha, learned per latent dimension
    finetuning_lr_init: float = 0.001  # initial alpha_ft (not the paper's eta), per embedding dim
    dropout_rate: float = 0.5  # on the embeddings, meta-training only
    kl_weight: float = 1e-3  # beta
    encoder_penalty_weight: float = 1e-9  # gamma
    l2_penalty_weight: float = 1e-8  # lambda_1
    orthogonality_penalty_weight: float = 1e-3  # lambda_2
    outer_lr: float = 1e-4  # Adam learning rate
    gradient_threshold: float = 0.1  # per-element clipping; <= 0 switches it off
    gradient_norm_threshold: float = 0.1  # per-tensor norm clipping; <= 0 switches it off
    deterministic: bool = False  # ablation: use means instead of samples while meta-training
    random_prior: bool = False  # ablation: z ~ N(0, I) instead of the data-conditioned encoder
    first_order: bool = False  # drop second-order terms of the inner loops (not the paper's LEO)
    reference: bool = False  # True: the plain model.py path, not the fused fast.py (same maths)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                need(math.isfinite(value), f"{f.name} = {value} is not a finite number")
        need(self.num_latents >= 1, f"num_latents must be >= 1, got {self.num_latents}")
        need(self.inner_unroll_length >= 0, "inner_unroll_length must be >= 0")
        need(self.finetuning_unroll_length >= 0, "finetuning_unroll_length must be >= 0")
        need(
            0.0 <= self.dropout_rate < 1.0,
            f"dropout_rate must be in [0, 1), got {self.dropout_rate}",
        )
        need(self.outer_lr > 0, f"outer_lr must be > 0, got {self.outer_lr}")
        for name in (
            "kl_weight",
            "encoder_penalty_weight",
            "l2_penalty_weight",
            "orthogonality_penalty_weight",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    def replace(self, **changes: Any) -> LEOConfig:
        """A copy with some fields changed (validated again; the old ``inner_gradient`` key is
        upgraded as in :func:`config_from_dict`)."""
        return dataclasses.replace(self, **_upgrade_leo_config(changes))


@dataclass(frozen=True)
class TrainConfig:
    """Episode shape and schedule of a meta-training run (official values where they exist)."""

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15  # query examples per class in meta-training tasks (official V = 15)
    eval_n_query: int | None = None  # per class at meta-val/test; None = every remaining image
    batch_size: int = 12  # tasks per meta-step (official metatrain_batch_size)
    steps: int = 2000  # meta-steps (official num_steps_limit = 100 000)
    val_every: int = 200  # official: every 1 000 steps, including step 0
    val_tasks: int = 500  # official: 2 000
    test_tasks: int = 2000  # official: 10 000
    eval_batch_size: int = 10  # tasks per evaluation batch (memory, not maths: 10 tasks of
    # 5 x 599 queries are 77 MB; larger batches are slower on a CPU, not faster)
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "n_way",
            "k_shot",
            "n_query",
            "batch_size",
            "val_every",
            "val_tasks",
            "test_tasks",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_way < 2:
            raise UserError(f"n_way must be >= 2 (a task needs two classes), got {self.n_way}")
        if self.steps < 0:
            raise UserError(f"steps must be >= 0, got {self.steps}")
        if self.eval_n_query is not None and self.eval_n_query < 1:
            raise UserError(f"eval_n_query must be >= 1 or None, got {self.eval_n_query}")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# The official README's tuned hyper-parameters (LEO_SPEC §4.2); everything else at the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "mini-1shot": dict(
        outer_lr=2.739071e-4,
        l2_penalty_weight=3.623413e-10,
        orthogonality_penalty_weight=0.188103,
        dropout_rate=0.307651,
        kl_weight=0.756143,
        encoder_penalty_weight=5.756821e-6,
    ),
    "mini-5shot": dict(
        outer_lr=4.102361e-4,
        l2_penalty_weight=8.540338e-9,
        orthogonality_penalty_weight=1.523998e-3,
        dropout_rate=0.300299,
        kl_weight=0.466387,
        encoder_penalty_weight=2.661608e-7,
    ),
    "tiered-1shot": dict(
        outer_lr=8.659053e-4,
        l2_penalty_weight=4.148858e-10,
        orthogonality_penalty_weight=5.451078e-3,
        dropout_rate=0.475126,
        kl_weight=2.034189e-3,
        encoder_penalty_weight=8.302962e-5,
    ),
    "tiered-5shot": dict(
        outer_lr=6.110314e-4,
        l2_penalty_weight=1.690399e-10,
        orthogonality_penalty_weight=2.481216e-2,
        dropout_rate=0.415158,
        kl_weight=1.622811,
        encoder_penalty_weight=2.672450e-5,
    ),
    # Ours, not the paper's: the official defaults with a larger outer learning rate, so that
    # the synthetic benchmark trains in minutes instead of hours (benchmarks/ has the sweep).
    "synthetic": dict(outer_lr=3e-3),
    # Ours, for glyphs embedded by weak stage-1 backbones (the feature-quality study and its
    # teaching setting), chosen on meta-val only: untrained pre-pool features, 5-way 1-shot,
    # 3000 steps, 500 meta-val tasks. outer_lr 3e-3 with dropout 0.1 reached 70.7 % against
    # 51.3 % (official defaults), 62.2 % (the synthetic preset: dropout 0.5), 66.4 % (dropout
    # 0.3), 66.6 % (dropout 0: best at step 1250, then over-fits) and 68.6 % (outer_lr 1e-3);
    # kl_weight 0 gave 71.0 %, within the noise, so the paper's beta stays
    # (benchmarks/bench_feature_quality.py keeps the log).
    "weak-features": dict(outer_lr=3e-3, dropout_rate=0.1),
    # Ours: what `--preset auto` picks off the official schedule. Chosen by
    # benchmarks/bench_robustness.py on the S^val of two synthetic dev cells (base, noisy; four
    # candidates each: the best of a 30-trial search per dev cell, their geometric mean, the
    # synthetic preset) and reported on 12 held-out cells (leo_tutorial/assets/robustness.json).
    "cpu-1shot": dict(
        outer_lr=7.2e-3,
        l2_penalty_weight=5.9e-9,
        orthogonality_penalty_weight=0.97,
        dropout_rate=0.43,
        kl_weight=6.4e-3,
        encoder_penalty_weight=3.5e-9,
    ),
    "cpu-5shot": dict(
        outer_lr=7.1e-3,
        l2_penalty_weight=1.8e-9,
        orthogonality_penalty_weight=0.043,
        dropout_rate=0.59,
        kl_weight=0.066,
        encoder_penalty_weight=4.6e-10,
    ),
}


@dataclass(frozen=True)
class Range:
    """The search range of one hyper-parameter: ``low`` .. ``high``, log-uniform when ``log``
    (a sampler draws log(value) uniformly), uniform otherwise."""

    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise UserError(f"a search range needs low < high, got {self.low} .. {self.high}")
        if self.log and self.low <= 0:
            raise UserError(f"a log-uniform range needs low > 0, got {self.low}")

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


# What the paper tuned by random search (LEO_SPEC §4.2), over ranges around the official values:
# each range holds the official default and all four tuned settings, with about a decade of room
# beyond them (outer_lr reaches higher: short CPU schedules want larger steps than 100 000-step
# runs). The dropout *rate* is a probability, searched uniformly from 0 (off) to 0.6.
LEO_SEARCH_SPACE: dict[str, Range] = {
    "outer_lr": Range(5e-5, 1e-2),
    "l2_penalty_weight": Range(1e-11, 1e-6),
    "orthogonality_penalty_weight": Range(1e-4, 1.0),
    "dropout_rate": Range(0.0, 0.6, log=False),
    "kl_weight": Range(1e-4, 3.0),
    "encoder_penalty_weight": Range(1e-10, 1e-3),
}
# Optionally also the initial inner and fine-tuning rates (official 1.0 and 0.001).
LEO_RATE_SPACE: dict[str, Range] = {
    "inner_lr_init": Range(0.1, 10.0),
    "finetuning_lr_init": Range(1e-4, 1e-2),
}


def leo_search_space(config: LEOConfig, rates: bool = False) -> dict[str, Range]:
    """The ranges worth searching for ``config``: :data:`LEO_SEARCH_SPACE` (and, with
    ``rates``, :data:`LEO_RATE_SPACE`) without the fields that cannot change the model:
    no latent steps -> no encoder penalty (z' = z) and no inner rate; no fine-tuning steps ->
    no fine-tuning rate; deterministic or random prior -> no KL (it is 0); random prior -> no
    encoder penalty (z_0 does not depend on the parameters)."""
    space = {**LEO_SEARCH_SPACE, **(LEO_RATE_SPACE if rates else {})}
    inert = set()
    if config.inner_unroll_length == 0:
        inert |= {"encoder_penalty_weight", "inner_lr_init"}
    if config.finetuning_unroll_length == 0:
        inert.add("finetuning_lr_init")
    if config.deterministic or config.random_prior:
        inert.add("kl_weight")
    if config.random_prior:
        inert.add("encoder_penalty_weight")
    return {name: r for name, r in space.items() if name not in inert}


def preset(name: str, **overrides: Any) -> LEOConfig:
    """The named preset (``default`` = official defaults) with ``overrides`` applied."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return LEOConfig(**{**PRESETS[name], **overrides})


def config_to_dict(config: LEOConfig | TrainConfig) -> dict[str, Any]:
    """Plain dict for JSON."""
    return dataclasses.asdict(config)


def _upgrade_leo_config(values: dict[str, Any]) -> dict[str, Any]:
    """Keys of LEOConfig written by older versions, mapped to today's fields.

    ``inner_gradient`` ("analytic": closed-form inner gradients, "autograd": double backward;
    the same maths) became ``reference``: "autograd" named the reference path.
    """
    if "inner_gradient" not in values:
        return values
    values = dict(values)
    old = values.pop("inner_gradient")
    if old not in ("analytic", "autograd"):
        raise UserError(f"inner_gradient must be 'analytic' or 'autograd', got {old!r}")
    values.setdefault("reference", old == "autograd")
    return values


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys are an error that names them.

    Older LEOConfig keys are upgraded first (``inner_gradient``, see ``_upgrade_leo_config``).
    """
    if cls is LEOConfig:
        values = _upgrade_leo_config(values)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown {cls.__name__} fields {unknown}; the run was written by a "
            "different version of leo-tutorial"
        )
    return cls(**values)
