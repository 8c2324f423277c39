"""What meta-learning adds on top of stage-1 features, against the quality of those features.

The paper meta-learns LEO on frozen features pre-trained by classification on the meta-train
classes (§4.2.2). How much meta-learning can add depends on how much those features leave to
learn: features that already cluster the new classes make a nearest-centroid rule hard to beat,
features that do not leave room for a learned adaptation. This module measures that trade-off
on the glyphs, with stage-1 backbones of graded quality (:data:`LEVELS`,
:class:`~leo_tutorial.features.BackboneRecipe`: untrained, pre-trained for fewer epochs or on
fewer classes, pre-pool or final layer).

For one feature bank and one task shape, :func:`measure` fits every method of
:data:`METHODS` exactly as ``leo-tutorial compare`` does (:func:`leo_tutorial.compare.fit`:
same meta-train batches, model selection on S^val) and tests all of them on the *same*
S^test tasks, together with LEO at step 0 (its initialisation: the model meta-training starts
from, with its inner loop). Margins are paired: the mean and 95% CI of per-task differences.

The quality axis is measured, and never on the test split: :func:`feature_quality`, nearest
centroid's 5-way 1-shot accuracy on S^val tasks.

``benchmarks/bench_feature_quality.py`` runs the whole study and writes
``leo_tutorial/assets/feature_quality.json``; :func:`load_study` reads it and
:func:`plot_study` draws it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baselines import BaselineConfig
from .compare import build_method, fit, untrained_leo
from .config import LEOConfig, TrainConfig
from .data import FeatureBank
from .errors import UserError
from .features import BackboneRecipe
from .io import atomic_write_json, read_json
from .runtime import resolve_device
from .training import evaluate_split, mean_ci95

STUDY_FORMAT = 1
ASSET = Path(__file__).resolve().parent / "assets" / "feature_quality.json"
METHODS: tuple[str, ...] = ("nearest-centroid", "logreg", "protonet", "LEO")
STEP0 = "LEO step 0"  # LEO untrained: the initialisation meta-training starts from

# Stage-1 backbones of graded quality, roughly weakest first: (lever, recipe). Pre-pool features
# (32 x 3 x 3 = 288-d) unless the lever is the layer ("final": 32-d). "fewer classes" keeps the
# full run's 528 Adam steps (6 epochs of all 1 117 meta-train classes) on 5 / 10 / 30 classes.
# Nearest centroid, 5-way 1-shot on meta-val (500 tasks), measured while choosing them:
# untrained final 48.3 %, untrained pre-pool 56.6 %, 2 classes 58.9 %, 1 epoch 62.9 %,
# 5 classes 76.1 %, 2 epochs 80.1 %, 10 classes 81.4 %, 30 classes 89.6 %, 6 epochs 93.7 %
# (pre-pool) and 94.9 % (final: the shipped glyph backbone's recipe).
LEVELS: tuple[tuple[str, BackboneRecipe], ...] = (
    ("untrained", BackboneRecipe(epochs=0, layer="final")),
    ("untrained", BackboneRecipe(epochs=0, layer="prepool")),
    ("fewer epochs", BackboneRecipe(epochs=1, layer="prepool")),
    ("fewer classes", BackboneRecipe(epochs=528, classes=5, layer="prepool")),
    ("fewer epochs", BackboneRecipe(epochs=2, layer="prepool")),
    ("fewer classes", BackboneRecipe(epochs=528, classes=10, layer="prepool")),
    ("fewer classes", BackboneRecipe(epochs=176, classes=30, layer="prepool")),
    ("full", BackboneRecipe(epochs=6, layer="prepool")),
    ("full", BackboneRecipe(epochs=6, layer="final")),
)


def feature_quality(bank: FeatureBank, train_config: TrainConfig | None = None) -> float:
    """Nearest centroid's 5-way 1-shot accuracy on S^val: how well the frozen features already
    separate new classes, a fraction in [0, 1]. The tasks are those model selection uses
    (:func:`~leo_tutorial.training.evaluate_split` of ``train_config`` at 5-way 1-shot), so at
    1-shot this is nearest centroid's ``val_accuracy`` in :func:`measure`."""
    tc = (train_config or TrainConfig()).replace(n_way=5, k_shot=1)
    model = build_method(
        "nearest-centroid", LEOConfig(), BaselineConfig(), bank.dim, 5, torch.float32
    )
    return evaluate_split(model, bank, tc, "val", device="cpu").accuracy


def measure(
    bank: FeatureBank,
    train_config: TrainConfig,
    leo_configs: LEOConfig | Mapping[str, LEOConfig],
    *,
    baseline_config: BaselineConfig | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every method of :data:`METHODS` and :data:`STEP0` on the same ``test_tasks`` S^test tasks.

    ``leo_configs``: one LEO config, or named candidates (e.g. presets), each meta-trained; the
    one with the best S^val accuracy is LEO (``methods["LEO"]["preset"]``, with every
    candidate's S^val accuracy in ``candidates``); they must share the architecture (LEO at
    step 0 is built from the first). Returns plain data: ``methods`` (per method
    ``accuracy``, ``ci95`` on S^test, ``val_accuracy`` of the selected model, ``best_step``,
    ``seconds``, and what ``fit`` chose, e.g. ``probe_c``),
    ``margins`` (per method other than LEO: ``[mean, ci95]`` of LEO's per-task accuracy minus
    its own, paired), and ``val_gain``: LEO's S^val accuracy at the selected step minus at step 0.
    """
    tc = train_config
    device = resolve_device(device)
    if isinstance(leo_configs, LEOConfig):
        leo_configs = {"given": leo_configs}
    if not leo_configs:
        raise UserError("measure needs at least one LEO config")
    first = next(iter(leo_configs.values()))
    baseline_config = baseline_config or BaselineConfig(
        inner_unroll_length=first.inner_unroll_length
    )

    methods: dict[str, dict[str, Any]] = {}
    per_task: dict[str, np.ndarray] = {}
    for name in (*METHODS, STEP0):
        start = time.perf_counter()
        if name == STEP0:  # the same initialisation fit() starts LEO from, not trained
            model = untrained_leo(first, bank, tc, device)
            info = {"val_accuracy": evaluate_split(model, bank, tc, "val", device=device).accuracy}
            info["best_step"] = 0
        elif name == "LEO":  # every candidate meta-trained; the best on S^val is kept
            fitted = {
                key: fit(name, bank, tc, config, baseline_config, device)
                for key, config in leo_configs.items()
            }
            chosen = max(fitted, key=lambda key: fitted[key][1]["val_accuracy"])
            model, info = fitted[chosen]
            info = {
                **info,
                "preset": chosen,
                "candidates": {k: f[1]["val_accuracy"] for k, f in fitted.items()},
            }
        else:
            model, info = fit(name, bank, tc, first, baseline_config, device)
        test = evaluate_split(model, bank, tc, "test", device=device)
        per_task[name] = test.per_task
        methods[name] = {
            "accuracy": test.accuracy,
            "ci95": test.ci95,
            **info,
            "seconds": round(time.perf_counter() - start, 1),
        }
        log(
            f"  {name:<17} test {100 * test.accuracy:6.2f} +- {100 * test.ci95:.2f} %  "
            f"(val {100 * info['val_accuracy']:.2f} %, step {info['best_step']}, "
            f"{methods[name]['seconds']:.0f} s)"
        )
    margins = {
        name: list(mean_ci95(per_task["LEO"] - per_task[name])) for name in methods if name != "LEO"
    }
    return {
        "methods": methods,
        "margins": margins,
        "val_gain": methods["LEO"]["val_accuracy"] - methods[STEP0]["val_accuracy"],
        "tasks": test.tasks,
        "queries_per_class": test.queries_per_class,
    }


# ------------------------------------------------------------------------------ the shipped study
def save_study(path: str | Path, study: dict[str, Any]) -> Path:
    """Write a study (see ``benchmarks/bench_feature_quality.py``) as JSON, atomically."""
    return atomic_write_json(path, study)


def load_study(path: str | Path = ASSET) -> dict[str, Any]:
    """The study written by :func:`save_study` (default: the one shipped with the package)."""
    path = Path(path)
    study = read_json(
        path,
        missing=f"{path} not found; run benchmarks/bench_feature_quality.py to measure it",
        invalid=f"{path} is not valid JSON ({{error}}); run the study again",
    )
    if not isinstance(study, dict) or study.get("format") != STUDY_FORMAT or "levels" not in study:
        raise UserError(
            f"{path} is not a feature-quality study of format {STUDY_FORMAT}; run "
            "benchmarks/bench_feature_quality.py again"
        )
    return study


def study_table(study: dict[str, Any], shot: int) -> list[dict[str, Any]]:
    """One row per level at ``shot``: ``level``, ``quality`` (%), every method's test accuracy
    (%), LEO's margins (points, with CI) and ``val_gain`` (points), sorted by quality."""
    rows = []
    for level in study["levels"]:
        result = level["shots"].get(str(shot))
        if result is None:
            continue
        row: dict[str, Any] = {"level": level["name"], "quality": 100 * level["quality"]}
        for name, m in result["methods"].items():
            row[name] = 100 * m["accuracy"]
        for name, (mean, ci) in result["margins"].items():
            row[f"LEO - {name}"] = (100 * mean, 100 * ci)
        row["val_gain"] = 100 * result["val_gain"]
        row["preset"] = result["methods"]["LEO"].get("preset", "")
        rows.append(row)
    return sorted(rows, key=lambda r: r["quality"])


def format_study(study: dict[str, Any], shot: int) -> str:
    """:func:`study_table` as text: accuracies and LEO's paired margins per level."""
    rows = study_table(study, shot)
    names = [*METHODS, STEP0]
    lines = [
        f"5-way {shot}-shot, meta-test accuracy (%) over identical tasks; quality = nearest "
        "centroid 5-way 1-shot on meta-val (%)",
        f"{'level':<24}{'quality':>8}"
        + "".join(f"{n:>18}" for n in names)
        + f"{'LEO - NC':>16}{'LEO - step 0':>16}{'val gain':>10}  LEO preset",
    ]
    for r in rows:
        nc, s0 = r["LEO - nearest-centroid"], r[f"LEO - {STEP0}"]
        lines.append(
            f"{r['level']:<24}{r['quality']:>8.1f}"
            + "".join(f"{r[n]:>18.2f}" for n in names)
            + f"{nc[0]:>+9.2f} +-{nc[1]:4.2f}{s0[0]:>+9.2f} +-{s0[1]:4.2f}{r['val_gain']:>+10.2f}"
            + f"  {r['preset']}"
        )
    return "\n".join(lines)


def plot_study(study: dict[str, Any], shots: Sequence[int] = (1, 5), fig: Any = None) -> Any:
    """What meta-learning adds, against feature quality: one column per shot; top, meta-test
    accuracy of every method; bottom, LEO's paired margins over nearest centroid, over the
    logistic probe and over itself at step 0 (95% CIs). Returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    from .viz import PALETTE

    if fig is None:
        fig = Figure(figsize=(5.2 * len(shots), 7.0))
    axes = fig.subplots(2, len(shots), sharex=True, squeeze=False)
    colours = dict(zip((*METHODS, STEP0), PALETTE, strict=False))
    margin_of = {
        "LEO - nearest centroid": ("nearest-centroid", PALETTE[0]),
        "LEO - logistic probe": ("logreg", PALETTE[1]),
        "LEO trained - LEO step 0": (STEP0, PALETTE[4]),
    }
    for col, shot in enumerate(shots):
        levels = sorted(
            (lv for lv in study["levels"] if str(shot) in lv["shots"]), key=lambda lv: lv["quality"]
        )
        if not levels:
            raise UserError(f"the study has no {shot}-shot results")
        x = np.array([100 * lv["quality"] for lv in levels])
        top, bottom = axes[0, col], axes[1, col]
        for name in (*METHODS, STEP0):
            acc = np.array(
                [100 * lv["shots"][str(shot)]["methods"][name]["accuracy"] for lv in levels]
            )
            ci = np.array([100 * lv["shots"][str(shot)]["methods"][name]["ci95"] for lv in levels])
            style = "--" if name == STEP0 else "-"
            top.errorbar(
                x, acc, ci, fmt="o" + style, ms=4, capsize=2, color=colours[name], label=name
            )
        top.set_title(f"5-way {shot}-shot")
        top.set_ylabel("meta-test accuracy (%)")
        for label, (name, colour) in margin_of.items():
            mean = np.array([100 * lv["shots"][str(shot)]["margins"][name][0] for lv in levels])
            ci = np.array([100 * lv["shots"][str(shot)]["margins"][name][1] for lv in levels])
            bottom.errorbar(x, mean, ci, fmt="o-", ms=4, capsize=2, color=colour, label=label)
        bottom.axhline(0.0, color="black", lw=0.8)
        bottom.set_ylabel("what meta-learning adds (points)")
        bottom.set_xlabel("feature quality: nearest centroid, 5-way 1-shot meta-val (%)")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    axes[1, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
