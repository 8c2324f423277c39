"""Hyper-parameter search on S^val with Optuna: ``leo-tutorial tune`` and ``compare --tune-trials``.

The paper found its settings by a random search over outer learning rate, L2, orthogonality,
dropout, beta and gamma at 100 000 steps on WRN features (LEO_SPEC §4.2); they do not carry over
to short runs on other embeddings. :func:`tune` repeats that search on any feature bank, at the
schedule the user can afford:

- every trial is one meta-training run (:func:`leo_tutorial.compare.fit`: the loop, batches,
  seeds and validation of ``leo-tutorial train``) with values drawn from the method's search
  space (:data:`leo_tutorial.config.LEO_SEARCH_SPACE`, ``Method.search_space``), scored by its
  best meta-validation accuracy (S^val; the paper's model selection). Meta-test is never seen;
- a trial whose best S^val accuracy so far is below the median of earlier trials at the same
  step is stopped (Optuna's median pruner, called from the validation hook);
- ``sampler="random"`` is the paper's random search, ``"tpe"`` (default) Optuna's
  tree-structured Parzen estimator. Trial n draws its values from the seed
  ``[seed, SeedPurpose.SEARCH, n]``: the same seed gives the same search, and workers that
  share a study draw different values (trial numbers are unique within a study);
- the study lives in a database: an SQLite file in the output folder by default (Ctrl-C, then
  the same command continues it), or any database URL Optuna accepts, so that workers on
  several machines share one study;
- at the end the best setting is trained again as a normal run (``<out>/trial_NNNN/``, the
  files of ``leo-tutorial train``) and tested once.

Files in ``out_dir``: ``study.db`` (unless another storage is given), ``best_params.json``
(``train --params`` reads it), ``study.json`` (every trial, the importances; what
:func:`load_summary` and the plots read) and ``importance.png``.

Example::

    bank = leo_tutorial.sources.load_bank(leo_tutorial.sources.synthetic_spec())
    result = tune(bank, TrainConfig(steps=300, val_every=100), preset("synthetic"),
                  "runs/tune", trials=20)
    print(result.best_params, result.run.test)
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .baselines import BaselineConfig
from .config import LEOConfig, Range, TrainConfig, config_from_dict, config_to_dict
from .data import FeatureBank
from .errors import UserError
from .io import atomic_write, atomic_write_json, read_json, strict_json
from .rundir import RunLock
from .runtime import SeedPurpose, resolve_device, step_seed
from .training import TrainResult, check_task_shape, train

FORMAT = 1
STUDY_FILE, BEST_PARAMS_FILE = "study.db", "best_params.json"
SUMMARY_FILE, IMPORTANCE_FILE = "study.json", "importance.png"
SAMPLERS = ("tpe", "random")
Log = Callable[[str], None]


optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress bar and messages instead
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ------------------------------------------------------------------------------ samplers
class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A fresh ``tpe`` or ``random`` sampler for every trial, seeded
    ``[seed, SeedPurpose.SEARCH, trial number]``. Optuna's samplers hold one random stream per
    process, so two workers with the same seed would propose the same values; trial numbers
    are unique within a study, so these do not, and one worker with a seed is reproducible."""

    def __init__(self, kind: str, seed: int):
        if kind not in SAMPLERS:
            raise UserError(f"unknown sampler {kind!r}; use --sampler {' or '.join(SAMPLERS)}")
        self.kind, self.seed = kind, seed
        self._inner = self._build(0)

    def _build(self, number: int) -> optuna.samplers.BaseSampler:
        seed = step_seed(self.seed, SeedPurpose.SEARCH, number) % 2**32
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: a trial still running in another worker counts as a poor one, so that
        # parallel workers do not all propose the same region
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._build(trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):  # noqa: ANN001, ANN201
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def suggest(trial: Any, space: dict[str, Range]) -> dict[str, float]:
    """One value per searched field, drawn by the trial's sampler from its :class:`Range`."""
    return {name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in space.items()}


# ------------------------------------------------------------------------------ storage
def default_storage(out_dir: str | Path) -> str:
    """The embedded default: an SQLite file ``study.db`` in the output folder."""
    return f"sqlite:///{(Path(out_dir) / STUDY_FILE).resolve()}"


def shown_storage(url: str) -> str:
    """A storage URL as printed and saved: any password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str) -> Any:
    """Optuna's database storage for ``url`` (``sqlite:///file``, ``postgresql://...``, any
    SQLAlchemy URL); trials of a worker that died are marked failed after a few minutes
    (heartbeat). A wrong URL or a missing database driver is a :class:`UserError`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise UserError(
            f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
            "postgresql://user@host/db"
        ) from None
    try:
        return _new_storage(url)
    except ImportError as e:  # e.g. postgresql:// without psycopg2
        raise UserError(
            f"--storage {shown_storage(url)}: its database driver is not installed ({e}); "
            "install it (e.g. pip install psycopg2-binary) or use an sqlite:/// URL"
        ) from None
    except Exception as e:  # noqa: BLE001 (unreachable server, unwritable file, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"--storage {shown_storage(url)} cannot be opened ({first}); check the URL and "
            "that the database is reachable and writable"
        ) from None


def _new_storage(url: str, attempts: int = 8) -> Any:
    """``RDBStorage(url)``, retried when another worker is creating the same database's tables at
    the same moment (two fresh workers on one new SQLite file race on Optuna's schema version
    row: one of them gets an IntegrityError or "database is locked"; the retry finds the
    tables made)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    def storage() -> Any:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 4-5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)

    for attempt in range(attempts - 1):
        try:
            return storage()
        except (IntegrityError, OperationalError):
            time.sleep(0.1 * (attempt + 1))
    return storage()  # the last attempt's error reaches the caller


def _space_record(space: dict[str, Range]) -> dict[str, list[Any]]:
    return {name: [r.low, r.high, r.log] for name, r in space.items()}


def open_study(
    storage: Any, study_name: str, record: dict[str, Any], sampler: Any, pruner: Any
) -> Any:
    """The study ``study_name`` in ``storage``: created with ``record`` (what is searched, on
    what data, with what schedule), or loaded when it exists and was made with the same
    record; a study made with other settings is a :class:`UserError` naming the differences."""
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    saved = study.user_attrs.get("record")
    if saved is None:
        if study.trials:
            raise UserError(
                f"study {study_name!r} holds trials that leo-tutorial did not make; choose "
                "another --study-name"
            )
        study.set_user_attr("record", strict_json(record))
        return study
    record = json.loads(json.dumps(strict_json(record)))  # as stored: tuples -> lists
    differences = [
        f"{key}: the study has {old!r}, now {new!r}"
        for key, (old, new) in _differences(saved, record).items()
    ]
    if differences:
        raise UserError(
            f"study {study_name!r} was made with other settings ("
            + "; ".join(differences[:2])
            + "); repeat its original flags to continue it, or choose another --study-name"
        )
    return study


def _differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train_config.steps": (saved, now), ...}``: the fields that differ, one level deep."""
    out = {}
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            out.update(_differences(a, b, f"{key}."))
        elif a != b:
            out[prefix + key] = (a, b)
    return out


def finished_trials(study: Any) -> list[Any]:
    """Complete and pruned trials (what ``--trials`` counts)."""
    return study.get_trials(deepcopy=False, states=FINISHED)


# ------------------------------------------------------------------------------ searching
def method_objective(
    name: str,
    bank: FeatureBank,
    tc: TrainConfig,
    leo_config: LEOConfig,
    baseline_config: BaselineConfig,
    space: dict[str, Range],
    device: torch.device,
) -> Callable[[Any], float]:
    """The objective of a trial: fit method ``name`` (:func:`compare.fit`) with the trial's
    values and return its best S^val accuracy. After every validation the best accuracy so far
    is reported to the trial, and the pruner may stop it there (not at the last step, when the
    run is done anyway)."""
    from .compare import fit

    def objective(trial: Any) -> float:
        params = suggest(trial, space)
        best = -math.inf

        def report(step: int, info: dict[str, Any]) -> None:
            nonlocal best
            best = max(best, info["val_accuracy"])
            trial.report(best, step)
            if step < tc.steps and trial.should_prune():
                raise optuna.TrialPruned(f"S^val {100 * best:.2f}% at step {step}")

        _, info = fit(
            name, bank, tc, leo_config, baseline_config, device, params=params, on_validation=report
        )
        return info["val_accuracy"]

    return objective


def make_pruner(tc: TrainConfig) -> Any:
    """Median pruning after five finished trials, from the first validation after step 0."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=tc.val_every)


def run_trials(
    study: Any,
    objective: Callable[[Any], float],
    trials: int,
    *,
    progress: bool = True,
    desc: str = "tune",
) -> None:
    """Run trials until the study holds ``trials`` finished (complete or pruned) ones; trials
    finished before (a resumed study, other workers) count. An exception in a trial (also
    Ctrl-C) marks it failed and propagates; the finished ones stay in the study. Workers that
    share a study can overshoot by up to one trial each."""
    from tqdm.auto import tqdm

    def count() -> int:
        return len(finished_trials(study))

    done = count()
    if done >= trials:
        return
    bar = tqdm(total=trials, initial=done, desc=desc, unit="trial", disable=not progress)

    def after_trial(study: Any, trial: Any) -> None:
        n = count()
        bar.update(min(n, trials) - bar.n)
        complete = [t for t in finished_trials(study) if t.state == TrialState.COMPLETE]
        if complete:
            bar.set_postfix(best=f"{100 * max(t.value for t in complete):.2f}%")
        if n >= trials:
            study.stop()

    try:
        with warnings.catch_warnings():  # Optuna 4.0 calls its heartbeat check "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, callbacks=[after_trial], gc_after_trial=False)
    finally:
        bar.close()


def _best_complete(study: Any) -> Any:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(
            "no trial of the study ran to the end (all were pruned or failed); raise --trials "
            "or --steps"
        )
    return max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial


def tune_methods(
    bank: FeatureBank,
    train_config: TrainConfig,
    leo_config: LEOConfig,
    methods: Sequence[str],
    trials: int,
    *,
    baseline_config: BaselineConfig | None = None,
    sampler: str = "tpe",
    device: str | torch.device = "auto",
    progress: bool = False,
    log: Log = print,
) -> dict[str, dict[str, Any]]:
    """The same search budget for every meta-learned method among ``methods`` (what
    ``compare --tune-trials`` does): ``trials`` trials each over its ``Method.search_space``,
    scored on S^val, in memory. Returns ``{method: {"params", "trials", "val_accuracy",
    "summary"}}`` (``summary``: :func:`summarize` of its study) for
    :func:`leo_tutorial.compare.run_comparison` (``tuned=``); methods without a search space
    (nearest centroid, the probe) are left out and stay as they are."""
    from .compare import METHODS, parse_methods

    device = resolve_device(device)
    tc = train_config
    baseline_config = baseline_config or BaselineConfig(
        inner_unroll_length=leo_config.inner_unroll_length
    )
    check_task_shape(bank, tc, ("train", "val"))
    tuned = {}
    for name in parse_methods(list(methods)):
        method = METHODS[name]
        space = method.search_space(leo_config)
        if not method.meta_learned or not space:
            continue
        log(f"{name}: searching {', '.join(space)} ({trials} trials on S^val)")
        study = optuna.create_study(
            direction="maximize",
            sampler=PerTrialSeedSampler(sampler, tc.seed),
            pruner=make_pruner(tc),
            study_name=f"{name}-{bank.name}-{tc.n_way}way-{tc.k_shot}shot",
        )
        study.set_user_attr(
            "record", study_record({"source": bank.name}, tc, leo_config, space, sampler, name)
        )
        objective = method_objective(name, bank, tc, leo_config, baseline_config, space, device)
        run_trials(study, objective, trials, progress=progress, desc=f"tune {name}")
        best = _best_complete(study)
        tuned[name] = {
            "params": dict(best.params),
            "trials": trials,
            "val_accuracy": best.value,
            "summary": summarize(study, seed=tc.seed),
        }
        log(f"{name}: best S^val {100 * best.value:.2f}% with {_format_params(best.params)}")
    return tuned


def _format_params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


# ------------------------------------------------------------------------------ summaries
def importances(study: Any, seed: int = 0) -> dict[str, float] | None:
    """fANOVA importance of each parameter for the S^val accuracy of the complete trials
    (fractions that sum to 1), or None when there are too few trials to say."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # e.g. every trial with the same value
        return None
    return {k: float(v) for k, v in values.items()}


def summarize(study: Any, seed: int = 0) -> dict[str, Any]:
    """Everything a reader of the study needs, as plain JSON: the record it was made with,
    every trial (number, state, S^val accuracy, values, last validated step), the best complete
    trial and the parameter importances. What ``study.json`` holds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "last_step": t.last_step,
            }
        )
    best = _best_complete(study)
    return strict_json(
        {
            "format": FORMAT,
            "study_name": study.study_name,
            **study.user_attrs.get("record", {}),
            "best_trial": best.number,
            "best_val_accuracy": best.value,
            "best_params": dict(best.params),
            "importances": importances(study, seed),
            "trials": rows,
        }
    )


def load_summary(path: str | Path) -> dict[str, Any]:
    """A study summary written by :func:`tune` (``study.json``) or shipped with the package
    (:func:`asset_path`)."""
    path = Path(path)
    summary = read_json(
        path,
        missing=f"{path} not found; write it with `leo-tutorial tune --out DIR`",
        invalid=f"{path} is not valid JSON ({{error}}); run the study again",
    )
    needed = {"trials", "best_params", "best_val_accuracy", "space"}
    if not isinstance(summary, dict) or not needed <= set(summary):
        raise UserError(f"{path} is not a study summary (keys {', '.join(sorted(needed))})")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A study summary (:func:`load_summary`) as text: what was searched on which data and
    schedule, how many trials completed or were pruned, the best S^val accuracy, and per
    parameter its range, the value it started from (the study's base config), the best value
    and its importance (most important first). Only numbers stored in the summary are shown."""
    tc = summary.get("train_config", {})
    states = Counter(t["state"] for t in summary["trials"])
    source = summary.get("data", {}).get("source", "?")
    lines = [
        f"study {summary.get('study_name', '?')}: {summary.get('method', 'LEO')} on {source}",
        f"{tc.get('n_way', '?')}-way {tc.get('k_shot', '?')}-shot, {tc.get('steps', '?')} steps "
        f"per trial, validated every {tc.get('val_every', '?')} steps on "
        f"{tc.get('val_tasks', '?')} S^val tasks",
        f"{len(summary['trials'])} trials ({summary.get('sampler', '?')} sampler): "
        + ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
        f"best: trial {summary.get('best_trial', '?')}, "
        f"S^val accuracy {100 * summary['best_val_accuracy']:.2f}%",
        f"{'parameter':<30}{'range':>22}{'start':>10}{'best':>10}{'importance':>12}",
    ]
    base = summary.get("base_config", {})
    weights = summary.get("importances") or {}
    for name in sorted(summary["space"], key=lambda n: -weights.get(n, 0.0)):
        low, high, log = summary["space"][name]
        span = f"{low:.3g}..{high:.3g}" + (" (log)" if log else "")
        start = f"{base[name]:.3g}" if name in base else "-"
        best = summary["best_params"].get(name)
        best_text = f"{best:.3g}" if best is not None else "-"
        weight = f"{100 * weights[name]:.1f}%" if name in weights else "-"
        lines.append(f"{name:<30}{span:>22}{start:>10}{best_text:>10}{weight:>12}")
    if test := summary.get("test"):  # tune's final run; none in a --search-only study
        lines.append(
            f"the best setting, trained again and tested once: {100 * test['accuracy']:.2f}% "
            f"+- {100 * test['ci95']:.2f}% on {test['tasks']} S^test tasks"
        )
    return "\n".join(lines)


def asset_path(data: str, shot: int) -> Path:
    """The study shipped with the package (benchmarks/bench_robustness.py writes it)."""
    from .assets import ASSETS

    return ASSETS / f"tune_{data}_{shot}shot.json"


def load_robustness(path: str | Path | None = None) -> dict[str, Any]:
    """The measured robustness grid (benchmarks/bench_robustness.py): the CPU presets, how
    they were chosen, and per cell LEO with them, LEO tuned, ProtoNet and nearest centroid."""
    from .assets import ASSETS

    path = Path(path) if path is not None else ASSETS / "robustness.json"
    result = read_json(
        path,
        missing=f"{path} not found; write it with python benchmarks/bench_robustness.py "
        "--save-assets",
        invalid=f"{path} is not valid JSON ({{error}}); run python "
        "benchmarks/bench_robustness.py --save-assets again",
    )
    if not isinstance(result, dict) or not {"rows", "presets", "targets"} <= set(result):
        raise UserError(f"{path} is not a robustness result (keys rows, presets, targets)")
    return result


def format_robustness(result: dict[str, Any]) -> str:
    """The robustness grid as a table: one line per cell with accuracies (%), the paired
    margins of the defaults, the longer-schedule check and whether the targets were met."""
    names = ("LEO defaults", "LEO tuned", "LEO old auto", "protonet", "nearest-centroid")
    lines = [
        f"5-way, {result['schedule']['steps']} steps, {result['trials']} trials; meta-test "
        f"accuracy (%) over {result['schedule']['test_tasks']} tasks, 95% CI",
        f"{'cell':<20}" + "".join(f"{n:>17}" for n in names),
    ]
    for r in result["rows"]:
        label = f"{r['cell']} {r['shot']}-shot" + (" *" if r["role"] == "dev" else "")
        scores = [r["methods"][n] for n in names]
        lines.append(
            f"{label:<20}"
            + "".join(f"{100 * m['accuracy']:>10.2f} +- {100 * m['ci95']:<3.1f}" for m in scores)
        )
    lines.append("(* dev cell: the defaults were chosen on its S^val; the others are held out)")
    lines.append("paired differences (points, 95% CI):")
    for r in result["rows"]:
        lines.append(
            f"  {r['cell']} {r['shot']}-shot: "
            + ", ".join(
                f"{k} {v['points']:+.2f} +- {v['ci95']:.2f}" for k, v in r["margins"].items()
            )
        )
    for r in result.get("long_schedule", []):
        lines.append(
            f"longer schedule, {r['cell']} {r['shot']}-shot, {r['steps']} steps: "
            + ", ".join(f"{k} {100 * v['accuracy']:.2f}" for k, v in r["methods"].items())
            + "; "
            + ", ".join(
                f"{k} {v['points']:+.2f} +- {v['ci95']:.2f}" for k, v in r["margins"].items()
            )
        )
    for name, t in result["targets"].items():
        detail = {k: v for k, v in t.items() if k not in ("met", "rule")}
        lines.append(f"target {name} ({t['rule']}): {'met' if t['met'] else 'NOT met'} {detail}")
    lines.append(
        f"whole benchmark {result['seconds']:.0f} s at {result.get('threads', 1)} thread "
        f"(load average {result['load_average']['start']:.1f} -> "
        f"{result['load_average']['end']:.1f} on a 2-core machine)"
    )
    return "\n".join(lines)


def plot_trials(summary: dict[str, Any], ax: Any) -> Any:
    """S^val accuracy (%) of every trial in order: complete trials as dots, pruned ones (their
    last report) as crosses, the running best as a line."""
    from .viz import PALETTE

    trials = [t for t in summary["trials"] if t["value"] is not None]
    for state, marker, color in (("complete", "o", PALETTE[0]), ("pruned", "x", PALETTE[1])):
        chosen = [t for t in trials if t["state"] == state]
        ax.scatter(
            [t["number"] for t in chosen],
            [100 * t["value"] for t in chosen],
            marker=marker,
            color=color,
            label=f"{state} ({len(chosen)})",
        )
    complete = sorted((t for t in trials if t["state"] == "complete"), key=lambda t: t["number"])
    if complete:
        best = np.maximum.accumulate([100 * t["value"] for t in complete])
        ax.step([t["number"] for t in complete], best, where="post", color=PALETTE[2])
    ax.set_xlabel("trial")
    ax.set_ylabel("best $S^{val}$ accuracy (%)")
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_importances(summary: dict[str, Any], ax: Any) -> Any:
    """Horizontal bars: the fANOVA importance of every searched parameter."""
    from .viz import PALETTE

    values = summary.get("importances")
    if not values:
        ax.text(0.5, 0.5, "too few complete trials\nfor importances", ha="center", va="center")
        ax.set_axis_off()
        return ax
    names = sorted(values, key=values.get)
    ax.barh(names, [values[n] for n in names], color=PALETTE[0])
    ax.set_xlabel("importance for $S^{val}$ accuracy (fANOVA)")
    return ax


def save_study_plot(path: str | Path, summary: dict[str, Any]) -> Path:
    """The trials and the parameter importances side by side, as a PNG (atomic write)."""
    from matplotlib.figure import Figure

    from .viz import figure_png

    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    plot_trials(summary, left)
    plot_importances(summary, right)
    complete = sum(t["state"] == "complete" for t in summary["trials"])
    fig.suptitle(
        f"{summary['study_name']}: {len(summary['trials'])} trials ({complete} complete), "
        f"best $S^{{val}}$ {100 * summary['best_val_accuracy']:.2f}%",
        fontsize=10,
    )
    fig.tight_layout()
    png = figure_png(fig, dpi=100)
    return atomic_write(path, lambda f: f.write(png))


# ------------------------------------------------------------------------------ params files
def read_params(path: str | Path) -> LEOConfig:
    """The LEO setting of a ``best_params.json`` (``train --params``): its ``leo_config``, or,
    in a hand-written file, ``best_params`` over the official defaults. Plain JSON: nothing in
    the file is executed; unknown fields are an error that names them."""
    path = Path(path)
    content = read_json(
        path,
        missing=f"--params {path} not found; `leo-tutorial tune --out DIR` writes DIR/"
        f"{BEST_PARAMS_FILE}",
        invalid=f"--params {path} is not valid JSON ({{error}})",
    )
    if isinstance(content, dict) and isinstance(content.get("leo_config"), dict):
        values = content["leo_config"]
    elif isinstance(content, dict) and isinstance(content.get("best_params"), dict):
        values = content["best_params"]
    else:
        raise UserError(
            f"--params {path} holds neither leo_config nor best_params; give the "
            f"{BEST_PARAMS_FILE} that `leo-tutorial tune` wrote"
        )
    try:
        return config_from_dict(LEOConfig, values)
    except UserError as e:  # unknown fields, values out of range
        raise UserError(f"--params {path}: {e}") from None
    except TypeError as e:  # a value of the wrong type (e.g. a string for a number)
        raise UserError(f"--params {path}: {e}") from None


def params_note(path: str | Path, data_spec: dict[str, Any], n_way: int, k_shot: int) -> str | None:
    """A note when a ``best_params.json`` was found on other data or another task shape than
    the run that reuses it (allowed, but then the setting is not tuned for this run)."""
    content = json.loads(Path(path).read_text())
    tc = content.get("train_config", {}) if isinstance(content, dict) else {}
    found = {
        "data": content.get("data") if isinstance(content, dict) else None,
        "way": tc.get("n_way"),
        "shot": tc.get("k_shot"),
    }
    now = {"data": data_spec, "way": n_way, "shot": k_shot}
    differ = [k for k in now if found[k] is not None and found[k] != now[k]]
    if not differ:
        return None
    return (
        f"note: --params {path} was tuned with other {' and '.join(differ)} "
        f"({', '.join(f'{k} {found[k]!r}' for k in differ if k != 'data') or 'another data spec'}"
        "); it is used as given"
    )


# ------------------------------------------------------------------------------ tune (LEO)
@dataclass
class TuneResult:
    """What :func:`tune` found: the best trial's values and S^val accuracy, the number of
    finished trials in the study, and the final run (trained again and tested once; None with
    ``final=False``)."""

    study_name: str
    storage: str  # as shown (no password)
    best_trial: int
    best_params: dict[str, float]
    best_val_accuracy: float
    trials: int
    leo_config: LEOConfig
    out_dir: Path
    run: TrainResult | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: best_params, best_val_accuracy (a fraction), trials,
        study_name, storage; then the final run's folder and test result."""
        test = self.run.test.to_dict() if self.run is not None and self.run.test else None
        return strict_json(
            {
                "best_params": self.best_params,
                "best_val_accuracy": self.best_val_accuracy,
                "trials": self.trials,
                "study_name": self.study_name,
                "storage": self.storage,
                "best_trial": self.best_trial,
                "run_dir": str(self.run.run_dir) if self.run is not None else None,
                "test": test,
            }
        )


def study_record(
    data_spec: dict[str, Any],
    train_config: TrainConfig,
    leo_config: LEOConfig,
    space: dict[str, Range],
    sampler: str,
    method: str = "LEO",
) -> dict[str, Any]:
    """What a study searches and how: a resumed study and every worker must agree on it."""
    return {
        "method": method,
        "data": data_spec,
        "train_config": config_to_dict(train_config),
        "base_config": config_to_dict(leo_config),
        "space": _space_record(space),
        "sampler": sampler,
    }


def prepare_study(
    out_dir: str | Path,
    data_spec: dict[str, Any],
    train_config: TrainConfig,
    leo_config: LEOConfig,
    space: dict[str, Range],
    *,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
) -> tuple[optuna.Study, str]:
    """Open (or create) the study of a :func:`tune` call before any data is loaded, so that a
    wrong URL or a study made with other settings fails at once. Returns (study, storage URL).
    The default name is ``leo-<source>-<N>way-<K>shot``."""
    if not space:
        raise UserError("nothing to search: every searched field was fixed by a flag")
    url = storage or default_storage(out_dir)
    if storage is None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    tc = train_config
    name = study_name or f"leo-{data_spec.get('source', 'data')}-{tc.n_way}way-{tc.k_shot}shot"
    record = study_record(data_spec, tc, leo_config, space, sampler)
    study = open_study(
        open_storage(url), name, record, PerTrialSeedSampler(sampler, tc.seed), make_pruner(tc)
    )
    return study, url


def tune(
    bank: FeatureBank,
    train_config: TrainConfig,
    leo_config: LEOConfig,
    out_dir: str | Path,
    *,
    trials: int = 30,
    space: dict[str, Range] | None = None,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    data_spec: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    final: bool = True,
    progress: bool = True,
    log: Log = print,
) -> TuneResult:
    """Search LEO's hyper-parameters on ``bank``'s S^val, then train the best setting and test
    it once (module docstring). ``leo_config`` holds every field that is not searched;
    ``space`` defaults to :func:`leo_tutorial.config.leo_search_space` of it. ``trials``
    counts the finished trials of the study, including those of earlier calls and of other
    workers (``storage``); ``final=False`` only searches (an extra worker). The output folder is
    locked while this runs (:class:`leo_tutorial.rundir.RunLock`)."""
    from .config import leo_search_space

    space = leo_search_space(leo_config) if space is None else space
    data_spec = data_spec or {"source": bank.name}
    check_task_shape(bank, train_config, ("train", "val", "test") if final else ("train", "val"))
    with RunLock(out_dir):
        study, url = prepare_study(
            out_dir,
            data_spec,
            train_config,
            leo_config,
            space,
            sampler=sampler,
            storage=storage,
            study_name=study_name,
        )
        return run_study(
            study,
            url,
            bank,
            train_config,
            leo_config,
            out_dir,
            trials=trials,
            data_spec=data_spec,
            device=device,
            final=final,
            progress=progress,
            log=log,
        )


def run_study(
    study: optuna.Study,
    url: str,
    bank: FeatureBank,
    train_config: TrainConfig,
    leo_config: LEOConfig,
    out_dir: str | Path,
    *,
    trials: int,
    data_spec: dict[str, Any],
    device: str | torch.device = "auto",
    final: bool = True,
    progress: bool = True,
    log: Log = print,
) -> TuneResult:
    """The body of :func:`tune` for a caller that already holds the lock on ``out_dir`` and
    opened the study (:func:`prepare_study`): the CLI does both before it loads any data."""
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    out_dir = Path(out_dir)
    device = resolve_device(device)
    tc = train_config
    space = {
        name: Range(low, high, log)
        for name, (low, high, log) in study.user_attrs["record"]["space"].items()
    }
    done = len(finished_trials(study))
    log(
        f"study {study.study_name!r} in {shown_storage(url)}: {done} of {trials} trials "
        f"finished; searching {', '.join(space)} on S^val ({tc.steps} steps per trial)"
    )
    objective = method_objective("LEO", bank, tc, leo_config, BaselineConfig(), space, device)
    run_trials(study, objective, trials, progress=progress)
    summary = summarize(study, seed=tc.seed)
    best = _best_complete(study)
    best_config = leo_config.replace(**best.params)
    result = TuneResult(
        study.study_name,
        shown_storage(url),
        best.number,
        dict(best.params),
        float(best.value),
        len(finished_trials(study)),
        best_config,
        out_dir,
        summary=summary,
    )
    log(
        f"best of {result.trials} trials: trial {best.number}, S^val {100 * best.value:.2f}% "
        f"with {_format_params(best.params)}"
    )
    if final:
        run_dir = out_dir / f"trial_{best.number:04d}"
        log(f"training the best setting again in {run_dir} and testing it once")
        result.run = train(
            best_config,
            tc,
            bank,
            run_dir,
            data_spec=data_spec,
            device=device,
            resume=True,  # an interrupted final run continues
            progress=progress,
            log=log,
        )
        summary["test"] = result.run.test.to_dict() if result.run.test else None
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    save_study_plot(out_dir / IMPORTANCE_FILE, summary)
    atomic_write_json(
        out_dir / BEST_PARAMS_FILE,
        {
            "format": FORMAT,
            **result.to_dict(),
            "leo_config": config_to_dict(best_config),
            "data": data_spec,
            "train_config": config_to_dict(tc),
        },
    )
    return result
