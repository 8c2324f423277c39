"""LEO, its ablations and the baselines side by side on identical meta-test tasks (paper Table 2).

Every method gets the same budget and the same protocol as ``leo-tutorial train``
(:mod:`leo_tutorial.training`): the meta-learned ones are trained for ``steps`` meta-steps on
the same meta-train batches (seed ``[seed, 0, step]``) with Adam, the official clipping and the
NaN guard (:func:`leo_tutorial.training.meta_step`), validated at step 0, every ``val_every``
steps and at the end on the same S^val tasks, and the best model on S^val is kept. The
logistic-regression probe chooses its C on the same S^val tasks; nearest centroid needs nothing.
Then each is tested by :func:`leo_tutorial.training.evaluate` on the same S^test tasks
(``[seed, 2]``), with the same 95% CI.

Methods (:data:`METHODS`, table order): the baselines of :mod:`leo_tutorial.baselines`, then
LEO's ablations through :class:`leo_tutorial.LEOConfig` switches (LEO_SPEC §4.4):

    generator-only       inner_unroll_length = 0, finetuning_unroll_length = 0
    generator+finetune   inner_unroll_length = 0 (fine-tuning in parameter space only)
    random-prior         z ~ N(0, I) instead of the encoder (zeros at evaluation)
    deterministic        means instead of samples while meta-training
    no-finetune          finetuning_unroll_length = 0
    LEO                  the full model

A row is a dict: ``method``, ``accuracy`` (a fraction), ``ci95``, ``train_seconds`` (fitting and
model selection), ``test_seconds``, ``val_accuracy``, ``best_step``, the setting (``data``,
``way``, ``shot``, ``steps``, ``tasks``, ``queries_per_class``) and, when LEO is among the
methods, ``leo_margin`` +- ``leo_margin_ci95``: LEO's accuracy minus this method's, with the 95%
CI of the per-task differences (paired: both were tested on the same tasks).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .baselines import BASELINES, INNER_LRS, PROBE_CS, BaselineConfig
from .config import LEOConfig, TrainConfig
from .data import EpisodeSampler, FeatureBank
from .errors import UserError
from .io import atomic_write, atomic_write_json
from .model import LEO
from .training import (
    INIT,
    TEST,
    TORCH,
    TRAIN,
    VAL,
    evaluate,
    make_optimizer,
    mean_ci95,
    meta_step,
    resolve_device,
    step_seed,
    torch_dtype,
)

LEO_ABLATIONS: dict[str, dict[str, Any]] = {
    "generator-only": dict(inner_unroll_length=0, finetuning_unroll_length=0),
    "generator+finetune": dict(inner_unroll_length=0),
    "random-prior": dict(random_prior=True),
    "deterministic": dict(deterministic=True),
    "no-finetune": dict(finetuning_unroll_length=0),
    "LEO": {},
}
METHODS: tuple[str, ...] = (*BASELINES, *LEO_ABLATIONS)
ROW_KEYS = ("method", "accuracy", "ci95", "train_seconds")  # always present in a row


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """``"maml,LEO"`` (any case, any order) -> canonical names in table order; None = all."""
    if text is None:
        return list(METHODS)
    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    names = [s for s in names if s]
    canonical = {m.lower(): m for m in METHODS}
    unknown = [s for s in names if s.lower() not in canonical]
    if unknown or not names:
        raise UserError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from: {', '.join(METHODS)}"
        )
    chosen = {canonical[s.lower()] for s in names}
    return [m for m in METHODS if m in chosen]


def build_method(
    name: str,
    leo_config: LEOConfig,
    baseline_config: BaselineConfig,
    embedding_dim: int,
    n_way: int,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """An untrained model for method ``name``, in training mode."""
    if name in LEO_ABLATIONS:
        return LEO(leo_config.replace(**LEO_ABLATIONS[name]), embedding_dim, n_way, dtype).train()
    return BASELINES[name](baseline_config, embedding_dim, n_way, dtype).train()


def is_meta_learned(model: torch.nn.Module) -> bool:
    return isinstance(model, LEO) or getattr(model, "meta_learned", False)


def fit(
    name: str,
    bank: FeatureBank,
    tc: TrainConfig,
    leo_config: LEOConfig,
    baseline_config: BaselineConfig,
    device: torch.device,
    progress: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train method ``name`` and select it on S^val, exactly as :func:`training.train` does
    (same seeds, batches, optimiser, clipping, validation schedule; the best state is kept in
    memory instead of ``best.pt``). MAML's / Meta-SGD's alpha (among ``INNER_LRS``) and the
    probe's C (among ``PROBE_CS``) are chosen on the same S^val tasks first, with the untrained
    model. Returns (model, {val_accuracy, best_step, and the chosen alpha or C})."""
    dtype = torch_dtype(tc.dtype)
    val_split = bank.split("val")

    def validate(m: torch.nn.Module) -> float:
        return evaluate(
            m,
            val_split,
            n_way=tc.n_way,
            k_shot=tc.k_shot,
            n_query=tc.eval_n_query,
            tasks=tc.val_tasks,
            batch_size=tc.eval_batch_size,
            seed=[tc.seed, VAL],
            split_name="val",
            device=device,
        ).accuracy

    selected: dict[str, Any] = {}
    if name in ("maml", "meta-sgd"):  # alpha (MAML's fixed rate, Meta-SGD's initial rates)
        scores = {
            a: validate(
                build_method(
                    name,
                    leo_config,
                    baseline_config.replace(inner_lr_init=a),
                    bank.dim,
                    tc.n_way,
                    dtype,
                ).to(device)
            )
            for a in INNER_LRS
        }
        selected["inner_lr_init"] = max(scores, key=scores.get)
        baseline_config = baseline_config.replace(**selected)
    torch.manual_seed(step_seed(tc.seed, INIT, 0))
    model = build_method(name, leo_config, baseline_config, bank.dim, tc.n_way, dtype).to(device)

    if name == "logreg":  # choose C on S^val (no meta-training)
        scores = {
            c: validate(
                build_method(
                    name, leo_config, baseline_config.replace(probe_c=c), bank.dim, tc.n_way, dtype
                )
            )
            for c in PROBE_CS
        }
        best_c = max(scores, key=scores.get)
        model.config = baseline_config.replace(probe_c=best_c)
        return model, {"val_accuracy": scores[best_c], "best_step": 0, "probe_c": best_c}
    if not is_meta_learned(model):
        return model, {"val_accuracy": validate(model), "best_step": 0}

    sampler = EpisodeSampler(bank.split("train"), tc.n_way, tc.k_shot, tc.n_query)
    optimizer = make_optimizer(model)
    best_val, best_step, best_state = -1.0, -1, None
    for step in tqdm(range(tc.steps + 1), disable=not progress, desc=name, leave=False):
        if step % tc.val_every == 0 or step == tc.steps:
            accuracy = validate(model)
            if accuracy > best_val:
                best_val, best_step = accuracy, step
                best_state = copy.deepcopy(model.state_dict())
        if step == tc.steps:
            break
        batch = sampler.sample(tc.batch_size, [tc.seed, TRAIN, step]).to(device, dtype)
        torch.manual_seed(step_seed(tc.seed, TORCH, step))
        meta_step(model, optimizer, batch)
    model.load_state_dict(best_state)
    return model, {"val_accuracy": best_val, "best_step": best_step, **selected}


def run_comparison(
    bank: FeatureBank,
    train_config: TrainConfig,
    leo_config: LEOConfig,
    methods: Sequence[str] | None = None,
    baseline_config: BaselineConfig | None = None,
    *,
    data: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Fit every method in ``methods`` (default: all) on ``bank`` with the same budget and test
    all of them on the same ``train_config.test_tasks`` meta-test tasks. One row per method."""
    methods = parse_methods(methods)
    baseline_config = baseline_config or BaselineConfig(
        inner_unroll_length=leo_config.inner_unroll_length
    )
    device = resolve_device(device)
    tc = train_config
    for split in ("train", "val", "test"):  # impossible episode shapes fail before training
        EpisodeSampler(
            bank.split(split),
            tc.n_way,
            tc.k_shot,
            tc.n_query if split == "train" else tc.eval_n_query,
        )
    rows, per_task = [], {}
    for name in methods:
        log(
            f"{name}: fitting ({tc.steps} steps)"
            if name not in ("nearest-centroid", "logreg")
            else f"{name}: fitting"
        )
        start = time.perf_counter()
        model, info = fit(name, bank, tc, leo_config, baseline_config, device, progress)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate(
            model,
            bank.split("test"),
            n_way=tc.n_way,
            k_shot=tc.k_shot,
            n_query=tc.eval_n_query,
            tasks=tc.test_tasks,
            batch_size=tc.eval_batch_size,
            seed=[tc.seed, TEST],
            device=device,
            progress=progress,
        )
        row = {
            "method": name,
            "accuracy": result.accuracy,
            "ci95": result.ci95,
            "train_seconds": round(train_seconds, 2),
            "test_seconds": round(time.perf_counter() - start, 2),
            **info,
            "data": data or bank.name,
            "way": tc.n_way,
            "shot": tc.k_shot,
            "steps": tc.steps if is_meta_learned(model) else 0,
            "tasks": result.tasks,
            "queries_per_class": result.queries_per_class,
        }
        log(
            f"{name}: {100 * row['accuracy']:.2f}% +- {100 * row['ci95']:.2f}% "
            f"(val {100 * info['val_accuracy']:.2f}%, {train_seconds:.0f} s)"
        )
        rows.append(row)
        per_task[name] = result.per_task
    if "LEO" in per_task:  # paired: every method was tested on the same tasks
        for row in rows:
            margin, ci = mean_ci95(per_task["LEO"] - per_task[row["method"]])
            row["leo_margin"] = margin
            row["leo_margin_ci95"] = 0.0 if row["method"] == "LEO" else ci
    return rows


# ------------------------------------------------------------------------------ output
def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A table like the paper's Table 2: method, accuracy +- 95% CI (%), training seconds."""
    if not rows:
        return "(no methods)"
    first = rows[0]
    lines = [
        f"{first['way']}-way {first['shot']}-shot on {first['data']}: meta-test accuracy "
        f"over {first['tasks']} tasks ({first['queries_per_class']} queries per class), "
        "95% CI",
        f"{'method':<20} {'accuracy (%)':>16} {'train s':>9}"
        + (f" {'LEO margin (points)':>20}" if "leo_margin" in first else ""),
    ]
    for r in rows:
        line = (
            f"{r['method']:<20} {100 * r['accuracy']:>8.2f} +- {100 * r['ci95']:<4.2f} "
            f"{r['train_seconds']:>9.1f}"
        )
        if "leo_margin" in r and r["method"] != "LEO":
            line += f" {100 * r['leo_margin']:>+11.2f} +- {100 * r['leo_margin_ci95']:<4.2f}"
        lines.append(line)
    return "\n".join(lines)


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2)


def save_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write the rows as JSON, atomically."""
    return atomic_write_json(path, list(rows))


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows saved by :func:`save_rows` (or printed by ``leo-tutorial compare --json``)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{path} not found; write it with `leo-tutorial compare --out DIR`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); run the comparison again") from None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in rows
    ):
        raise UserError(f"{path} is not a list of comparison rows with keys {', '.join(ROW_KEYS)}")
    return rows


def asset_path(data: str, shot: int) -> Path:
    """The measured comparison shipped with the package (benchmarks/bench_compare.py)."""
    return Path(__file__).resolve().parent / "assets" / f"compare_{data}_{shot}shot.json"


def plot_rows(rows: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """Horizontal bars of accuracy (%) with 95% CIs: baselines, LEO's ablations and full LEO in
    three colours of :data:`leo_tutorial.viz.PALETTE`. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .viz import PALETTE

    if not rows:
        raise UserError("no comparison rows to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.6))
    groups = {"baseline": PALETTE[1], "LEO ablation": PALETTE[0], "LEO (full)": PALETTE[2]}

    def group(method: str) -> str:
        return (
            "LEO (full)"
            if method == "LEO"
            else "LEO ablation"
            if method in LEO_ABLATIONS
            else "baseline"
        )

    y = list(range(len(rows)))[::-1]  # first row on top
    accuracy = [100 * r["accuracy"] for r in rows]
    ax.barh(
        y,
        accuracy,
        xerr=[100 * r["ci95"] for r in rows],
        color=[groups[group(r["method"])] for r in rows],
        capsize=3,
    )
    ax.set_yticks(y, [r["method"] for r in rows])
    low = min(a - 100 * r["ci95"] for a, r in zip(accuracy, rows, strict=True))
    ax.set_xlim(max(0.0, 5 * (low // 5) - 5), 100)
    ax.set_xlabel("meta-test accuracy (%), 95% CI")
    r = rows[0]
    ax.set_title(f"{r['way']}-way {r['shot']}-shot, {r['data']}: {r['tasks']} test tasks", pad=20)
    present = {group(r["method"]) for r in rows}
    ax.legend(
        handles=[Patch(color=c, label=g) for g, c in groups.items() if g in present],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        fontsize=8,
        frameon=False,
    )  # between the title and the bars: never over a bar
    return ax


def save_chart(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """:func:`plot_rows` saved as a PNG, atomically (no pyplot: any backend works)."""
    from matplotlib.figure import Figure

    from .viz import figure_png

    fig = Figure(figsize=(6.4, 0.35 * len(rows) + 1.6))
    plot_rows(rows, ax=fig.subplots())
    fig.tight_layout()
    png = figure_png(fig, dpi=100)
    return atomic_write(path, lambda f: f.write(png))
