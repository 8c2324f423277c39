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

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .assets import ASSETS
from .baselines import BASELINES, BaselineConfig
from .config import LEOConfig, Range, TrainConfig, leo_search_space
from .data import EpisodeSampler, FeatureBank
from .errors import UserError
from .io import atomic_write, atomic_write_json, read_json
from .model import LEO
from .runtime import SeedPurpose, resolve_device, step_seed, torch_dtype
from .training import (
    BestModel,
    EvalResult,
    check_task_shape,
    evaluate_split,
    make_optimizer,
    mean_ci95,
    meta_train,
)

LEO_ABLATIONS: dict[str, dict[str, Any]] = {
    "generator-only": dict(inner_unroll_length=0, finetuning_unroll_length=0),
    "generator+finetune": dict(inner_unroll_length=0),
    "random-prior": dict(random_prior=True),
    "deterministic": dict(deterministic=True),
    "no-finetune": dict(finetuning_unroll_length=0),
    "LEO": {},
}


@dataclass(frozen=True)
class Method:
    """One contender of the comparison and what fitting it takes.

    ``build(leo_config, baseline_config, embedding_dim, n_way, dtype)`` makes the untrained
    model; ``meta_learned``: whether it is meta-trained (:func:`training.meta_train`);
    ``selected_on_val``: config fields chosen on S^val with the untrained model before that,
    each with its candidates (MAML's alpha, the probe's C); ``group`` colours the chart.
    ``search_space(leo_config)``: the hyper-parameters ``compare --tune-trials`` searches on
    S^val, with their ranges; ``apply(leo_config, baseline_config, params)`` puts searched
    values into the config they belong to.
    """

    name: str
    group: str  # "baseline", "LEO ablation" or "LEO (full)"
    build: Callable[[LEOConfig, BaselineConfig, int, int, torch.dtype], nn.Module]
    meta_learned: bool
    search_space: Callable[[LEOConfig], dict[str, Range]]
    apply: Callable[[LEOConfig, BaselineConfig, dict[str, float]], tuple[LEOConfig, BaselineConfig]]
    selected_on_val: dict[str, tuple[float, ...]] = field(default_factory=dict)


def _baseline(name: str, cls: type) -> Method:
    def build(lc: LEOConfig, bc: BaselineConfig, d: int, n: int, dtype: torch.dtype) -> nn.Module:
        return cls(bc, d, n, dtype)

    return Method(
        name,
        "baseline",
        build,
        cls.meta_learned,
        search_space=lambda lc: dict(cls.search_space),
        apply=lambda lc, bc, params: (lc, bc.replace(**params)),
        selected_on_val=dict(cls.selected_on_val),
    )


def _leo(name: str, switches: dict[str, Any]) -> Method:
    def build(lc: LEOConfig, bc: BaselineConfig, d: int, n: int, dtype: torch.dtype) -> nn.Module:
        return LEO(lc.replace(**switches), d, n, dtype)

    return Method(
        name,
        "LEO ablation" if switches else "LEO (full)",
        build,
        True,
        search_space=lambda lc: leo_search_space(lc.replace(**switches)),
        apply=lambda lc, bc, params: (lc.replace(**params), bc),
    )


# Table order: the baselines of :mod:`leo_tutorial.baselines`, then LEO's ablations, then LEO.
METHODS: dict[str, Method] = {
    **{name: _baseline(name, cls) for name, cls in BASELINES.items()},
    **{name: _leo(name, switches) for name, switches in LEO_ABLATIONS.items()},
}
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
) -> nn.Module:
    """An untrained model for method ``name``, in training mode."""
    return METHODS[name].build(leo_config, baseline_config, embedding_dim, n_way, dtype).train()


def fit(
    name: str,
    bank: FeatureBank,
    tc: TrainConfig,
    leo_config: LEOConfig,
    baseline_config: BaselineConfig,
    device: torch.device,
    progress: bool = False,
    *,
    params: dict[str, float] | None = None,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fit method ``name`` and select it on S^val, exactly as :func:`training.train` does
    (the same loop, seeds, batches, optimiser, clipping and validation schedule; the best state
    is kept in memory instead of ``best.pt``). What the method selects on S^val
    (``Method.selected_on_val``) is chosen first, on the same S^val tasks, with the untrained
    model. ``params`` (searched values, e.g. a trial of :mod:`leo_tutorial.tune`) go into the
    configs first (``Method.apply``), and a field they set is not selected again.
    ``on_validation(step, info)`` is :func:`training.meta_train`'s hook (it may raise, e.g. to
    prune a trial). Returns (model, {val_accuracy, best_step, and each selected value})."""
    method = METHODS[name]
    dtype = torch_dtype(tc.dtype)
    params = params or {}
    leo_config, baseline_config = method.apply(leo_config, baseline_config, params)

    def validate(model: nn.Module) -> Any:
        return evaluate_split(model, bank, tc, "val", device=device)

    def build(config: BaselineConfig) -> nn.Module:
        return build_method(name, leo_config, config, bank.dim, tc.n_way, dtype).to(device)

    selected: dict[str, Any] = {}
    untrained_val = None  # S^val accuracy of the untrained model with the selected values
    for key, candidates in method.selected_on_val.items():
        if key in params:
            continue
        scores = {
            c: validate(build(baseline_config.replace(**{key: c}))).accuracy for c in candidates
        }
        selected[key] = max(scores, key=scores.get)
        baseline_config = baseline_config.replace(**{key: selected[key]})
        untrained_val = scores[selected[key]]
    torch.manual_seed(step_seed(tc.seed, SeedPurpose.INIT, 0))
    model = build(baseline_config)
    if not method.meta_learned:
        if untrained_val is None:
            untrained_val = validate(model).accuracy
        return model, {"val_accuracy": untrained_val, "best_step": 0, **selected}

    sampler = EpisodeSampler(bank.split("train"), tc.n_way, tc.k_shot, tc.n_query)
    best = BestModel()
    meta_train(
        model,
        make_optimizer(model),
        lambda step: sampler.sample(tc.batch_size, [tc.seed, SeedPurpose.TRAIN, step]).to(
            device, dtype
        ),
        steps=tc.steps,
        seed=tc.seed,
        validate=lambda: validate(model),
        val_every=tc.val_every,
        best=best,
        on_validation=on_validation,
        progress=progress,
        desc=name,
        leave=False,
    )
    best.restore(model)
    return model, {"val_accuracy": best.val_accuracy, "best_step": best.step, **selected}


def untrained_leo(
    leo_config: LEOConfig, bank: FeatureBank, tc: TrainConfig, device: torch.device | str = "cpu"
) -> nn.Module:
    """LEO at step 0 of a run of schedule ``tc``: the initialisation meta-training starts from
    (seed ``[seed, INIT, 0]``, as in :func:`fit` and :func:`training.train`), never trained."""
    torch.manual_seed(step_seed(tc.seed, SeedPurpose.INIT, 0))
    baseline_config = BaselineConfig(inner_unroll_length=leo_config.inner_unroll_length)
    return build_method(
        "LEO", leo_config, baseline_config, bank.dim, tc.n_way, torch_dtype(tc.dtype)
    ).to(device)


def reference_rows(
    test: EvalResult,
    leo_config: LEOConfig,
    bank: FeatureBank,
    tc: TrainConfig,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """What meta-training added, on a run's own S^test tasks: LEO untrained (step 0, the same
    initialisation) and nearest centroid, each with ``accuracy``, ``ci95`` and the trained
    model's paired ``leo_margin`` +- ``leo_margin_ci95`` (``test``: the trained model's result
    on those tasks, with its per-task accuracies)."""
    dtype = torch_dtype(tc.dtype)
    models = {
        "LEO untrained (step 0)": untrained_leo(leo_config, bank, tc, device),
        "nearest centroid": build_method(
            "nearest-centroid", leo_config, BaselineConfig(), bank.dim, tc.n_way, dtype
        ).to(device),
    }
    rows = []
    for name, model in models.items():
        result = evaluate_split(model, bank, tc, "test", device=device)
        margin, ci = mean_ci95(test.per_task - result.per_task)
        rows.append(
            {
                "method": name,
                "accuracy": result.accuracy,
                "ci95": result.ci95,
                "leo_margin": margin,
                "leo_margin_ci95": ci,
            }
        )
    return rows


def format_reference_rows(test: EvalResult, best_step: int, rows: Sequence[dict]) -> str:
    """The last lines of ``leo-tutorial train``: the trained model, then :func:`reference_rows`."""
    lines = [
        f"on the same {test.tasks} meta-test tasks (95% CI; trained minus other, paired):",
        f"  {'LEO trained (step ' + str(best_step) + ')':<24} "
        f"{100 * test.accuracy:6.2f}% +- {100 * test.ci95:.2f}%",
    ]
    for r in rows:
        lines.append(
            f"  {r['method']:<24} {100 * r['accuracy']:6.2f}% +- {100 * r['ci95']:.2f}%   "
            f"trained ahead by {100 * r['leo_margin']:+.2f} +- {100 * r['leo_margin_ci95']:.2f} "
            "points"
        )
    return "\n".join(lines)


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
    tuned: dict[str, dict[str, Any]] | None = None,
    fitted: dict[str, tuple[nn.Module, dict[str, Any], float]] | None = None,
) -> list[dict[str, Any]]:
    """Fit every method in ``methods`` (default: all) on ``bank`` with the same budget and test
    all of them on the same ``train_config.test_tasks`` meta-test tasks. One row per method.

    ``fitted`` maps a method to ``(model, info, seconds)`` fitted already exactly as :func:`fit`
    would (e.g. LEO from a ``training.train`` run of the same configs and schedule, which is the
    same model: tests/test_compare.py); it is only tested.

    ``tuned`` maps a method to the outcome of its search on S^val (``{"params": ...,
    "trials": T}``, from :func:`leo_tutorial.tune.tune_methods`): it is fitted with those
    values, and its row records ``tuned_trials`` and ``tuned_params``. Methods not in it are
    fitted untuned (``tuned_trials`` 0): the preset for LEO, the defaults for the baselines.

    Example::

        bank = leo_tutorial.sources.load_bank(leo_tutorial.sources.synthetic_spec())
        tc = TrainConfig(steps=300)
        rows = run_comparison(bank, tc, preset("synthetic"), ["protonet", "LEO"])
        print(format_table(rows))
    """
    methods = parse_methods(methods)
    baseline_config = baseline_config or BaselineConfig(
        inner_unroll_length=leo_config.inner_unroll_length
    )
    device = resolve_device(device)
    tc = train_config
    check_task_shape(bank, tc, ("train", "val", "test"))  # before any training
    rows, per_task, tuned = [], {}, tuned or {}
    for name in methods:
        method = METHODS[name]
        log(f"{name}: fitting ({tc.steps} steps)" if method.meta_learned else f"{name}: fitting")
        search = tuned.get(name, {"params": None, "trials": 0})
        start = time.perf_counter()
        if name in (fitted or {}):
            model, info, train_seconds = fitted[name]
        else:
            model, info = fit(
                name,
                bank,
                tc,
                leo_config,
                baseline_config,
                device,
                progress,
                params=search["params"],
            )
            train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate_split(model, bank, tc, "test", device=device, progress=progress)
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
            "steps": tc.steps if method.meta_learned else 0,
            "tasks": result.tasks,
            "queries_per_class": result.queries_per_class,
            "tuned_trials": search["trials"],
            **({"tuned_params": search["params"]} if search["params"] is not None else {}),
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
    lines.append(tuning_note(rows))
    return "\n".join(lines)


def tuning_note(rows: Sequence[dict[str, Any]]) -> str:
    """The table's last line: whether the hyper-parameters were searched, and with what budget."""
    trials = sorted({r.get("tuned_trials", 0) for r in rows if r.get("tuned_trials", 0)})
    if not trials:
        return (
            "hyper-parameters untuned: LEO and its ablations use the preset, the baselines "
            "their defaults (compare --tune-trials T searches each meta-learned method on S^val)"
        )
    budget = " / ".join(map(str, trials))
    return (
        f"hyper-parameters tuned: {budget} trials on S^val for every meta-learned method "
        "(see tuned_params in the JSON rows); meta-test was used once, for this table"
    )


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2)


def save_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write the rows as JSON, atomically."""
    return atomic_write_json(path, list(rows))


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows saved by :func:`save_rows` (or printed by ``leo-tutorial compare --json``)."""
    path = Path(path)
    rows = read_json(
        path,
        missing=f"{path} not found; write it with `leo-tutorial compare --out DIR`",
        invalid=f"{path} is not valid JSON ({{error}}); run the comparison again",
    )
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in rows
    ):
        raise UserError(f"{path} is not a list of comparison rows with keys {', '.join(ROW_KEYS)}")
    return rows


def asset_path(data: str, shot: int) -> Path:
    """The measured comparison shipped with the package (benchmarks/bench_compare.py)."""
    return ASSETS / f"compare_{data}_{shot}shot.json"


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
        return METHODS[method].group if method in METHODS else "baseline"

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
