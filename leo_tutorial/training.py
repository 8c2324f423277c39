"""Meta-training, model selection on S^val and evaluation with 95% CIs (LEO_SPEC §2.8, §3).

A run directory holds::

    run.json         what was run: model + training config, data source, embedding dim
    checkpoint.pt    latest state (model, Adam, step, best so far): ``--resume`` continues here
    best.pt          the model with the best meta-validation accuracy so far
    metrics.json     history: training loss/accuracy, validation accuracy, skipped steps
    test.json        final meta-test accuracy with its 95% confidence interval

Every file is written atomically; checkpoints hold tensors and plain types only, so
``torch.load(path, weights_only=True)`` reads them without executing code.

Randomness is derived from (seed, purpose, step) at every step: the training batch of step t
uses ``[seed, 0, t]``, dropout and sampling use a torch seed derived from the same numbers, and
validation / test tasks use fixed seeds. A resumed run therefore ends exactly where an
uninterrupted one ends, and every model is evaluated on the same tasks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import fast
from .config import LEOConfig, TrainConfig, config_from_dict, config_to_dict
from .data import EpisodeSampler, FeatureBank, FeatureSplit
from .errors import UserError
from .io import atomic_torch_save, atomic_write_json
from .model import LEO

RUN_FORMAT = 1
TRAIN, VAL, TEST, TORCH, INIT = 0, 1, 2, 3, 4  # seed purposes


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA GPU is available; "
            "use --device cpu or --device auto"
        )
    return device


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def step_seed(seed: int, purpose: int, step: int) -> int:
    """A 63-bit torch seed for one (run seed, purpose, step)."""
    return int(np.random.SeedSequence([seed, purpose, step]).generate_state(2, np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------ evaluation
@dataclass
class EvalResult:
    """Accuracy over many tasks: ``accuracy`` (fraction) +- ``ci95`` = 1.96 sigma / sqrt(n)."""

    accuracy: float
    ci95: float
    loss: float
    tasks: int
    way: int
    shot: int
    queries_per_class: int
    split: str
    per_task: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_task")
        return d

    def __str__(self) -> str:
        return (
            f"{self.split} accuracy {100 * self.accuracy:.2f}% +- {100 * self.ci95:.2f}% "
            f"(95% CI, {self.tasks} {self.way}-way {self.shot}-shot tasks, "
            f"{self.queries_per_class} queries per class)"
        )


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval, 1.96 * std / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluate(
    model: LEO,
    split: FeatureSplit,
    *,
    n_way: int,
    k_shot: int,
    n_query: int | None = None,
    tasks: int = 2000,
    batch_size: int = 50,
    seed: int | list[int] = 0,
    split_name: str = "test",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Mean query accuracy of the deterministic model (means, no dropout) over ``tasks`` tasks.

    ``n_query=None`` uses every remaining image of each class as a query (official: 600 - K).
    The same ``seed`` always gives the same tasks.
    """
    device = device or next(model.parameters()).device
    sampler = EpisodeSampler(split, n_way, k_shot, n_query)
    was_training = model.training
    model.eval()
    accuracies, losses = [], []
    batches = sampler.iter_batches(tasks, batch_size, seed)
    if fast.evaluates(model):  # the same tasks and numbers without [B, N, V, D] query tensors
        accuracy, loss = fast.evaluate_tasks(model, sampler, tasks, batch_size, seed, device)
        accuracies, losses, batches = [accuracy], [loss], []
    with torch.no_grad():
        for batch in tqdm(
            batches,
            total=math.ceil(tasks / batch_size),
            disable=not progress,
            desc=f"evaluate {split_name}",
            leave=False,
        ):
            out = model(batch.to(device, model.dtype))
            accuracies.append(out.query_accuracy.double().cpu().numpy())
            losses.append(out.query_loss.double().cpu().numpy())
    model.train(was_training)
    per_task = np.concatenate(accuracies)
    accuracy, ci95 = mean_ci95(per_task)
    return EvalResult(
        accuracy,
        ci95,
        float(np.concatenate(losses).mean()),
        len(per_task),
        n_way,
        k_shot,
        sampler.n_query,
        split_name,
        per_task,
    )


# ---------------------------------------------------------------------------- outer step
def clip_gradients(grads: list[torch.Tensor], value: float, norm: float) -> list[torch.Tensor]:
    """Official clipping: each element to [-value, value], then each *tensor* to norm <= norm
    (tf.clip_by_value then tf.clip_by_norm; not a global norm). A threshold <= 0 is off."""
    # torch._foreach_* ops do the same per tensor, in a few calls for the whole list.
    if value > 0:
        grads = torch._foreach_clamp_min(torch._foreach_clamp_max(grads, value), -value)
    if norm > 0:
        factors = torch.clamp(norm / (torch.stack(torch._foreach_norm(grads)) + 1e-30), max=1.0)
        grads = torch._foreach_mul(grads, list(factors.unbind()))
    return grads


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite: g * 0 is 0 where g is finite and NaN
    where it is inf or NaN (one cheap reduction per tensor, one sync; no overflow possible)."""
    return bool(torch.stack([(t * 0).sum() for t in tensors]).eq(0).all())


def make_optimizer(model: LEO) -> torch.optim.Optimizer:
    """Adam on every meta-parameter at ``outer_lr`` (TF defaults; fused: one kernel per step)."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=model.config.outer_lr, fused=fused)


def apply_meta_gradient(model: LEO, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """Gradients of ``loss`` for every meta-parameter, NaN guard, official clipping, Adam step.

    A non-finite loss or gradient skips the update and returns False (the official code's guard
    instead applied a fixed decay, by a bug).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    if not all_finite([loss, *grads]):
        return False
    c = model.config
    for p, g in zip(
        params, clip_gradients(grads, c.gradient_threshold, c.gradient_norm_threshold), strict=True
    ):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True


def meta_step(model: LEO, optimizer: torch.optim.Optimizer, batch) -> tuple[Any, bool]:  # noqa: ANN001
    """One outer update on a task batch. Returns (model output, whether it was applied)."""
    out = model(batch)
    return out, apply_meta_gradient(model, optimizer, out.loss)


# ------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    run_dir: Path
    model: LEO  # the best model on meta-validation
    best_step: int
    best_val_accuracy: float
    test: EvalResult | None
    history: dict[str, list[dict[str, Any]]]
    seconds: float


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{path} not found: is {path.parent} a run directory written by "
            "`leo-tutorial train --out`?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the {what} is damaged") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} not found: the run has no checkpoint yet") from None
    except Exception as e:  # noqa: BLE001 (any unpickling problem is a damaged file)
        raise UserError(
            f"{path} is not a readable leo-tutorial checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); delete it or train again"
        ) from None


def run_record(
    leo_config: LEOConfig, train_config: TrainConfig, data_spec: dict[str, Any], embedding_dim: int
) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "leo_config": config_to_dict(leo_config),
        "train_config": config_to_dict(train_config),
        "data": data_spec,
        "embedding_dim": embedding_dim,
    }


def build_model(record: dict[str, Any], device: torch.device | str = "cpu") -> LEO:
    """An untrained LEO shaped as in ``run.json``."""
    leo_config = config_from_dict(LEOConfig, record["leo_config"])
    train_config = config_from_dict(TrainConfig, record["train_config"])
    return LEO(
        leo_config,
        embedding_dim=record["embedding_dim"],
        n_way=train_config.n_way,
        dtype=torch_dtype(train_config.dtype),
    ).to(device)


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", which: str = "best"
) -> tuple[LEO, dict[str, Any]]:
    """The ``best`` (or ``checkpoint``: latest) model of a run, and its run.json record."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / "run.json", "run record")
    model = build_model(record, resolve_device(device))
    state = load_checkpoint(run_dir / f"{which}.pt")
    model.load_state_dict(state["model"])
    return model, record


def _check_resume(saved: dict[str, Any], record: dict[str, Any]) -> None:
    """A resumed run must be the same run; only the number of steps may grow."""
    # compare today's form of the saved model settings (older keys upgraded, e.g. inner_gradient)
    upgraded = config_to_dict(config_from_dict(LEOConfig, saved["leo_config"]))
    saved = {**saved, "leo_config": upgraded}
    differences = []
    for section in ("leo_config", "train_config", "data"):
        for key in sorted(set(saved[section]) | set(record[section])):
            if key != "steps" and saved[section].get(key) != record[section].get(key):
                differences.append(
                    f"{key}: run has {saved[section].get(key)!r}, now {record[section].get(key)!r}"
                )
    if differences:
        raise UserError(
            "--resume needs the same settings as the interrupted run ("
            + "; ".join(differences[:3])
            + "); repeat the original command with "
            "--resume, or start a new run with another --out"
        )


def train(
    leo_config: LEOConfig,
    train_config: TrainConfig,
    bank: FeatureBank,
    out_dir: str | Path,
    *,
    data_spec: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    progress: bool = True,
    test: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Meta-train LEO on ``bank``'s train split, select on val, test the best model.

    Validation runs at step 0 and every ``val_every`` steps and at the end (deterministic model,
    ``val_tasks`` tasks, every remaining image as a query unless ``eval_n_query``); the best
    model is kept in ``best.pt``. ``callback(step, metrics)`` (metrics: ``val_accuracy``,
    ``history``, the ``model`` being trained) is called after every validation
    (for live plots); an exception it raises (e.g. KeyboardInterrupt) still leaves a checkpoint
    from which ``resume=True`` continues exactly.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(device)
    tc = train_config
    record = run_record(leo_config, tc, data_spec or {"source": bank.name}, bank.dim)
    train_sampler = EpisodeSampler(bank.split("train"), tc.n_way, tc.k_shot, tc.n_query)
    val_split = bank.split("val")
    EpisodeSampler(val_split, tc.n_way, tc.k_shot, tc.eval_n_query)  # validate shapes early
    torch.manual_seed(step_seed(tc.seed, INIT, 0))
    model = build_model(record, device).train()
    optimizer = make_optimizer(model)
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "skipped": []}
    start, best_val, best_step = 0, -1.0, -1

    if resume and (out_dir / "checkpoint.pt").exists():
        _check_resume(read_json(out_dir / "run.json", "run record"), record)
        state = load_checkpoint(out_dir / "checkpoint.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_val, best_step = state["step"], state["best_val"], state["best_step"]
        history = read_json(out_dir / "metrics.json", "metrics history")
        for key in history:  # drop anything logged after the checkpoint
            history[key] = [
                h
                for h in history[key]
                if h["step"] < start or (key == "val" and h["step"] == start)
            ]
        log(
            f"resuming {out_dir} at step {start} (best val {100 * best_val:.2f}% "
            f"at step {best_step})"
        )
    elif (out_dir / "checkpoint.pt").exists():
        raise UserError(
            f"{out_dir} already holds a run; add --resume to continue it, or "
            "choose a new --out directory"
        )
    atomic_write_json(out_dir / "run.json", record)

    def save_checkpoint(step: int) -> None:
        atomic_torch_save(
            out_dir / "checkpoint.pt",
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_val": best_val,
                "best_step": best_step,
            },
        )
        atomic_write_json(out_dir / "metrics.json", history)

    def validate(step: int) -> None:
        nonlocal best_val, best_step
        result = evaluate(
            model,
            val_split,
            n_way=tc.n_way,
            k_shot=tc.k_shot,
            n_query=tc.eval_n_query,
            tasks=tc.val_tasks,
            batch_size=tc.eval_batch_size,
            seed=[tc.seed, VAL],
            split_name="val",
        )
        history["val"].append(
            {"step": step, "accuracy": result.accuracy, "ci95": result.ci95, "loss": result.loss}
        )
        if result.accuracy > best_val:
            best_val, best_step = result.accuracy, step
            atomic_torch_save(
                out_dir / "best.pt",
                {"step": step, "val_accuracy": best_val, "model": model.state_dict()},
            )
        save_checkpoint(step)
        if callback is not None:
            callback(step, {"val_accuracy": result.accuracy, "history": history, "model": model})

    dtype = torch_dtype(tc.dtype)
    window: list[tuple[float, ...]] = []  # per step: query loss, accuracy, KL, encoder penalty
    bar = tqdm(
        range(start, tc.steps),
        initial=start,
        total=tc.steps,
        disable=not progress,
        desc="meta-train",
        unit="step",
    )
    done = start  # completed meta-steps: what a checkpoint written now would resume from
    try:
        for step in bar:
            if step % tc.val_every == 0 and all(h["step"] != step for h in history["val"]):
                validate(step)
                bar.set_postfix(
                    val=f"{100 * history['val'][-1]['accuracy']:.1f}%",
                    best=f"{100 * best_val:.1f}%",
                )
            batch = train_sampler.sample(tc.batch_size, [tc.seed, TRAIN, step]).to(device, dtype)
            torch.manual_seed(step_seed(tc.seed, TORCH, step))
            out, applied = meta_step(model, optimizer, batch)
            done = step + 1
            if not applied:
                history["skipped"].append({"step": step, "loss": out.loss.item()})
                log(f"step {step}: non-finite meta-loss or gradient; update skipped")
            window.append(
                tuple(
                    t.detach().mean().item()
                    for t in (out.query_loss, out.query_accuracy, out.kl, out.encoder_penalty)
                )
            )
            if len(window) == min(50, tc.val_every) or done == tc.steps:
                loss, acc, kl, penalty = np.mean(window, axis=0).tolist()
                history["train"].append(
                    {
                        "step": step,
                        "loss": loss,
                        "accuracy": acc,
                        "kl": kl,
                        "encoder_penalty": penalty,
                    }
                )
                window.clear()
        if all(h["step"] != tc.steps for h in history["val"]):
            validate(tc.steps)
    except BaseException:
        save_checkpoint(done)  # resume continues from the last completed step
        raise
    finally:
        bar.close()
    best = load_checkpoint(out_dir / "best.pt")
    model.load_state_dict(best["model"])
    test_result = None
    if test:
        test_result = evaluate(
            model,
            bank.split("test"),
            n_way=tc.n_way,
            k_shot=tc.k_shot,
            n_query=tc.eval_n_query,
            tasks=tc.test_tasks,
            batch_size=tc.eval_batch_size,
            seed=[tc.seed, TEST],
            split_name="test",
            progress=progress,
        )
        atomic_write_json(out_dir / "test.json", {**test_result.to_dict(), "best_step": best_step})
    return TrainResult(
        out_dir, model, best_step, best_val, test_result, history, time.perf_counter() - t_start
    )
