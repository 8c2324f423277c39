"""Meta-training regression LEO on fresh sines-and-lines tasks (the shared outer loop,
:func:`leo_tutorial.training.meta_train`) and its evaluation on held-out tasks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.sinusoid import SinusoidConfig, sample_tasks
from ..errors import UserError
from ..runtime import SeedPurpose, step_seed
from ..training import make_optimizer, mean_ci95, meta_train
from .learner import mse
from .model import RegressionConfig, RegressionLEO


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
        torch.manual_seed(step_seed(seed, SeedPurpose.TORCH, 0))
        for start in range(0, tasks, batch_size):
            batch = sample_tasks(
                min(batch_size, tasks - start), [seed, SeedPurpose.VAL, start], data, model.dtype
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
    """Meta-train a :class:`RegressionLEO` on fresh sines-and-lines tasks with the shared
    outer loop (:func:`leo_tutorial.training.meta_train`: Adam on the meta-loss, the official
    clipping, the NaN guard); no validation (every batch is a fresh draw of tasks).

    Step t uses the task batch seeded ``[seed, TRAIN, t]`` and a torch seed derived from
    (seed, t): the same arguments give the same model. ``callback(step, record)`` sees every
    logged record (means over ``log_every`` steps of ``RegressionOutput.training_metrics``).
    """
    if steps < 0 or batch_size < 1 or log_every < 1:
        raise UserError(
            f"need steps >= 0, batch_size >= 1, log_every >= 1; got {steps}, "
            f"{batch_size}, {log_every}"
        )
    data, start = data or SinusoidConfig(), time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(step_seed(seed, SeedPurpose.INIT, 0))
        model = RegressionLEO(config, dtype=dtype)
        loop = meta_train(
            model,
            make_optimizer(model),
            lambda step: sample_tasks(batch_size, [seed, SeedPurpose.TRAIN, step], data, dtype),
            steps=steps,
            seed=seed,
            log_every=log_every,
            on_log=callback,
            progress=progress,
        )
    return RegressionTrainResult(model, loop.history["train"], time.perf_counter() - start)
