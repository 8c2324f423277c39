"""Meta-training, model selection on S^val and evaluation with 95% CIs (LEO_SPEC §2.8, §3).

One loop, :func:`meta_train`, meta-trains anything that follows the :class:`MetaLearner`
protocol: LEO and its ablations, the meta-learned baselines (``compare``) and the regression
model. It samples a batch per step, takes one outer step (Adam, official clipping, NaN guard:
:func:`apply_meta_gradient`), validates on S^val at step 0, every ``val_every`` steps and at the
end, and keeps the best model (:class:`BestModel`: in memory, or ``best.pt`` on disk).
:func:`train` is LEO's full run on top of it: a run directory (:mod:`leo_tutorial.rundir`) with
checkpoints and exact resume, then one meta-test.

Randomness is derived from (seed, purpose, step) at every step (:mod:`leo_tutorial.runtime`):
the training batch of step t uses ``[seed, TRAIN, t]``, dropout and sampling use the torch seed
``step_seed(seed, TORCH, t)``, and validation / test tasks use fixed seeds. A resumed run
therefore ends exactly where an uninterrupted one ends, and every model is evaluated on the same
tasks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import fast
from .config import LEOConfig, TrainConfig
from .data import EpisodeSampler, FeatureBank, FeatureSplit
from .errors import UserError
from .io import atomic_torch_save, atomic_write_json
from .model import LEO
from .rundir import (
    BEST_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    RUN_FILE,
    TEST_FILE,
    RunLock,
    build_model,
    check_resume,
    load_checkpoint,
    read_json,
    run_record,
)
from .runtime import SeedPurpose, resolve_device, step_seed, torch_dtype


# ------------------------------------------------------------------------------ protocol
class OuterLoopSettings(Protocol):
    """The outer-loop fields of a model's config (``LEOConfig``, ``BaselineConfig``, ...)."""

    outer_lr: float  # Adam's learning rate (the paper's eta, eq. 2)
    gradient_threshold: float  # per-element clipping; <= 0: off
    gradient_norm_threshold: float  # per-tensor norm clipping; <= 0: off


class MetaOutput(Protocol):
    """What a meta-learner's forward returns: ``loss`` (the scalar meta-loss), ``query_loss``
    per task [B], and the numbers to log while training (``training_metrics``)."""

    loss: Tensor
    query_loss: Tensor

    def training_metrics(self) -> dict[str, float]: ...


class MetaLearner(Protocol):
    """What :func:`meta_train` needs of a model: an ``nn.Module`` whose forward takes a batch of
    tasks (a :class:`~leo_tutorial.data.TaskBatch` or a regression batch) and returns a
    :class:`MetaOutput`, with its outer-loop settings in ``config``. ``train()``/``eval()``
    switch the meta-training and evaluation semantics."""

    @property
    def config(self) -> OuterLoopSettings: ...

    def __call__(self, batch: Any) -> MetaOutput: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


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
    model: nn.Module,
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
    device = device or next(model.parameters(), torch.empty(0)).device
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


def check_task_shape(bank: FeatureBank, tc: TrainConfig, splits: tuple[str, ...]) -> None:
    """Fail before any training when the episodes of ``tc`` cannot be drawn from every split
    used (meta-train tasks with ``n_query`` queries, meta-val/test with ``eval_n_query``); an
    impossible way names the smallest split, whose limit is the one that counts."""
    classes = {name: bank.split(name).n_classes for name in splits}
    smallest = min(classes, key=classes.get)
    if tc.n_way > classes[smallest]:
        raise UserError(
            f"{tc.n_way}-way tasks are impossible: the {smallest} split has only "
            f"{classes[smallest]} classes ("
            + ", ".join(f"{k} {v}" for k, v in classes.items())
            + f"); use --way <= {classes[smallest]}"
        )
    for name in splits:
        n_query = tc.n_query if name == "train" else tc.eval_n_query
        EpisodeSampler(bank.split(name), tc.n_way, tc.k_shot, n_query)


# ---------------------------------------------------------------------------- outer step
def clip_gradients(grads: list[Tensor], value: float, norm: float) -> list[Tensor]:
    """Official clipping: each element to [-value, value], then each *tensor* to norm <= norm
    (tf.clip_by_value then tf.clip_by_norm; not a global norm). A threshold <= 0 is off."""
    # torch._foreach_* ops do the same per tensor, in a few calls for the whole list.
    if value > 0:
        grads = torch._foreach_clamp_min(torch._foreach_clamp_max(grads, value), -value)
    if norm > 0:
        factors = torch.clamp(norm / (torch.stack(torch._foreach_norm(grads)) + 1e-30), max=1.0)
        grads = torch._foreach_mul(grads, list(factors.unbind()))
    return grads


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of every tensor is finite: g * 0 is 0 where g is finite and NaN
    where it is inf or NaN (one cheap reduction per tensor, one sync; no overflow possible)."""
    return bool(torch.stack([(t * 0).sum() for t in tensors]).eq(0).all())


def make_optimizer(model: MetaLearner) -> torch.optim.Optimizer:
    """Adam on every meta-parameter at ``outer_lr`` (TF defaults; fused: one kernel per step)."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=model.config.outer_lr, fused=fused)


def apply_meta_gradient(model: MetaLearner, optimizer: torch.optim.Optimizer, loss: Tensor) -> bool:
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
    clipped = clip_gradients(grads, c.gradient_threshold, c.gradient_norm_threshold)
    for p, g in zip(params, clipped, strict=True):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True


def meta_step(
    model: MetaLearner, optimizer: torch.optim.Optimizer, batch: Any
) -> tuple[MetaOutput, bool]:
    """One outer update on a task batch. Returns (model output, whether it was applied)."""
    out = model(batch)
    return out, apply_meta_gradient(model, optimizer, out.loss)


# ------------------------------------------------------------------------------ the loop
@dataclass
class BestModel:
    """The model with the best meta-validation accuracy so far (model selection on S^val):
    its state in memory, or in ``path`` (a run's ``best.pt``) when a path is given."""

    path: Path | None = None
    val_accuracy: float = -1.0
    step: int = -1
    state: dict[str, Tensor] | None = field(default=None, repr=False)

    def offer(self, step: int, accuracy: float, model: MetaLearner) -> bool:
        """Keep ``model`` if ``accuracy`` beats the best so far (ties keep the earlier step)."""
        if accuracy <= self.val_accuracy:
            return False
        self.val_accuracy, self.step = accuracy, step
        if self.path is None:
            self.state = copy.deepcopy(model.state_dict())
        else:
            atomic_torch_save(
                self.path, {"step": step, "val_accuracy": accuracy, "model": model.state_dict()}
            )
        return True

    def restore(self, model: MetaLearner) -> None:
        """Load the best state into ``model``."""
        state = self.state if self.path is None else load_checkpoint(self.path)["model"]
        if state is None:
            raise UserError("no model was validated yet, so there is no best model to restore")
        model.load_state_dict(state)


def new_history() -> dict[str, list[dict[str, Any]]]:
    """``train``: training curves (means over ``log_every`` steps); ``val``: every validation;
    ``skipped``: updates the NaN guard skipped."""
    return {"train": [], "val": [], "skipped": []}


SKIP_MESSAGE = (
    "step {step}: the meta-loss or a gradient was not finite (inf/NaN), so this update was "
    "skipped and the parameters are unchanged (the official NaN guard). A few skips are "
    "harmless; if they repeat, lower --outer-lr."
)


@dataclass
class LoopResult:
    history: dict[str, list[dict[str, Any]]]
    best: BestModel | None
    steps_done: int


def meta_train(
    model: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Any],
    *,
    steps: int,
    seed: int,
    start: int = 0,
    validate: Callable[[], EvalResult] | None = None,
    val_every: int = 1,
    best: BestModel | None = None,
    history: dict[str, list[dict[str, Any]]] | None = None,
    log_every: int = 50,
    checkpoint: Callable[[int], None] | None = None,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    desc: str = "meta-train",
    leave: bool = True,
) -> LoopResult:
    """Meta-train ``model`` from step ``start`` to ``steps`` (the outer loop of Algorithm 1).

    ``batches(step)`` gives the task batch of a step (on the model's device and dtype).
    With ``validate`` (a function of no arguments scoring the current model on S^val), the
    model is validated at step 0, every ``val_every`` steps and at the end, unless ``history``
    already holds that step (a resumed run), and ``best`` keeps the best one. ``checkpoint(step)``
    runs after every validation and, if anything interrupts the loop (also Ctrl-C), with the
    last completed step before the exception propagates. ``on_validation(step, {"val_accuracy",
    "history", "model"})`` is for live plots; ``on_log(step, record)`` sees every logged record
    of ``history["train"]``; ``log`` gets one line per skipped update (None: quiet);
    ``desc``/``leave`` style the progress bar.
    """
    history = history if history is not None else new_history()
    validated = {h["step"] for h in history["val"]}
    window: list[dict[str, float]] = []

    def run_validation(step: int) -> None:
        result = validate()
        history["val"].append(
            {"step": step, "accuracy": result.accuracy, "ci95": result.ci95, "loss": result.loss}
        )
        validated.add(step)
        if best is not None:
            best.offer(step, result.accuracy, model)
        if checkpoint is not None:
            checkpoint(step)
        if on_validation is not None:
            info = {"val_accuracy": result.accuracy, "history": history, "model": model}
            on_validation(step, info)

    bar = tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        disable=not progress,
        desc=desc,
        unit="step",
        leave=leave,
    )
    done = start  # completed meta-steps: what a checkpoint written now would resume from
    try:
        for step in bar:
            # --- model selection on S^val (before the update of this step)
            if validate is not None and step % val_every == 0 and step not in validated:
                run_validation(step)
                bar.set_postfix(
                    val=f"{100 * history['val'][-1]['accuracy']:.1f}%",
                    best=f"{100 * best.val_accuracy:.1f}%" if best is not None else "",
                )
            # --- one outer step on a fresh batch of meta-train tasks, seeded by the step
            batch = batches(step)
            torch.manual_seed(step_seed(seed, SeedPurpose.TORCH, step))
            out, applied = meta_step(model, optimizer, batch)
            done = step + 1
            if not applied:
                history["skipped"].append({"step": step, "loss": out.loss.item()})
                if log is not None:
                    log(SKIP_MESSAGE.format(step=step))
            # --- training curves: means over log_every steps
            window.append(out.training_metrics())
            if len(window) == log_every or done == steps:
                record = {"step": step}
                for key in window[0]:
                    record[key] = float(np.mean([w[key] for w in window]))
                history["train"].append(record)
                window.clear()
                if on_log is not None:
                    on_log(step, record)
        if validate is not None and steps not in validated:
            run_validation(steps)
    except BaseException:
        if checkpoint is not None:
            checkpoint(done)  # resume continues from the last completed step
        raise
    finally:
        bar.close()
    return LoopResult(history, best, done)


# ------------------------------------------------------------------------------ training
def evaluate_split(
    model: nn.Module,
    bank: FeatureBank,
    tc: TrainConfig,
    split: str,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """:func:`evaluate` on the S^val (``"val"``) or S^test (``"test"``) tasks of a run's
    schedule: ``val_tasks`` / ``test_tasks`` tasks seeded ``[seed, VAL]`` / ``[seed, TEST]``."""
    purpose = SeedPurpose.VAL if split == "val" else SeedPurpose.TEST
    return evaluate(
        model,
        bank.split(split),
        n_way=tc.n_way,
        k_shot=tc.k_shot,
        n_query=tc.eval_n_query,
        tasks=tc.val_tasks if split == "val" else tc.test_tasks,
        batch_size=tc.eval_batch_size,
        seed=[tc.seed, purpose],
        split_name=split,
        device=device,
        progress=progress,
    )


def _start_or_resume(
    out_dir: Path,
    record: dict[str, Any],
    model: LEO,
    optimizer: torch.optim.Optimizer,
    best: BestModel,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """(history, first step) of a new run, or of the interrupted run in ``out_dir`` with its
    model, optimiser and best-so-far restored (``resume``); writes ``run.json``."""
    history, start = new_history(), 0
    if resume and (out_dir / CHECKPOINT_FILE).exists():
        check_resume(read_json(out_dir / RUN_FILE, "run record"), record)
        state = load_checkpoint(out_dir / CHECKPOINT_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best.step, best.val_accuracy = state["step"], state["best_step"], state["best_val"]
        history = read_json(out_dir / METRICS_FILE, "metrics history")
        for key in history:  # drop anything logged after the checkpoint
            history[key] = [
                h
                for h in history[key]
                if h["step"] < start or (key == "val" and h["step"] == start)
            ]
        log(
            f"resuming {out_dir} at step {start} (best val {100 * best.val_accuracy:.2f}% "
            f"at step {best.step})"
        )
    elif (out_dir / CHECKPOINT_FILE).exists():
        raise UserError(
            f"{out_dir} already holds a run; add --resume to continue it, or "
            "choose a new --out directory"
        )
    atomic_write_json(out_dir / RUN_FILE, record)
    return history, start


@dataclass
class TrainResult:
    run_dir: Path
    model: LEO  # the best model on meta-validation
    best_step: int
    best_val_accuracy: float
    test: EvalResult | None
    history: dict[str, list[dict[str, Any]]]
    seconds: float


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
    from which ``resume=True`` continues exactly. The run directory is locked while the run
    writes it (:class:`leo_tutorial.rundir.RunLock`).

    Example::

        bank = leo_tutorial.sources.load_bank(leo_tutorial.sources.synthetic_spec())
        result = train(preset("synthetic"), TrainConfig(steps=500), bank, "runs/demo")
        print(result.test)
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(device)
    tc = train_config
    record = run_record(leo_config, tc, data_spec or {"source": bank.name}, bank.dim)
    check_task_shape(bank, tc, ("train", "val", "test") if test else ("train", "val"))
    with RunLock(out_dir):
        torch.manual_seed(step_seed(tc.seed, SeedPurpose.INIT, 0))
        model = build_model(record, device).train()
        optimizer = make_optimizer(model)
        best = BestModel(out_dir / BEST_FILE)
        history, start = _start_or_resume(out_dir, record, model, optimizer, best, resume, log)

        def save_checkpoint(step: int) -> None:
            state = {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_val": best.val_accuracy,
                "best_step": best.step,
            }
            atomic_torch_save(out_dir / CHECKPOINT_FILE, state)
            atomic_write_json(out_dir / METRICS_FILE, history)

        sampler = EpisodeSampler(bank.split("train"), tc.n_way, tc.k_shot, tc.n_query)
        dtype = torch_dtype(tc.dtype)
        meta_train(
            model,
            optimizer,
            lambda step: sampler.sample(tc.batch_size, [tc.seed, SeedPurpose.TRAIN, step]).to(
                device, dtype
            ),
            steps=tc.steps,
            seed=tc.seed,
            start=start,
            validate=lambda: evaluate_split(model, bank, tc, "val"),
            val_every=tc.val_every,
            best=best,
            history=history,
            log_every=min(50, tc.val_every),
            checkpoint=save_checkpoint,
            on_validation=callback,
            log=log,
            progress=progress,
        )
        best.restore(model)
        test_result = None
        if test:
            test_result = evaluate_split(model, bank, tc, "test", progress=progress)
            atomic_write_json(
                out_dir / TEST_FILE, {**test_result.to_dict(), "best_step": best.step}
            )
    return TrainResult(
        out_dir,
        model,
        best.step,
        best.val_accuracy,
        test_result,
        history,
        time.perf_counter() - t_start,
    )
