"""Regenerate the trained LEO runs shipped as package data, from scratch, and print their numbers.

    .venv/bin/python scripts/train_shipped_runs.py                         # every shipped run
    .venv/bin/python scripts/train_shipped_runs.py --run glyphs_leo_1shot  # one of them

Each run is a ``leo-tutorial train`` command (``--device cpu --threads 1``, seed 0):

    glyphs_leo_1shot            --data glyphs --way 5 --shot 1 (the official default
                                hyper-parameters, the default schedule)
    glyphs_untrained_leo_1shot  --data glyphs-untrained --way 5 --shot 1 --steps 3000
                                --val-every 250 (preset weak-features; the teaching setting
                                where meta-training matters, see leo_tutorial.feature_quality)

and lands in ``leo_tutorial/assets/<run>/`` as a run directory without its resume state:
``run.json``, ``best.pt`` (the model selected on meta-val), ``metrics.json`` (the curves) and
``test.json`` (meta-test accuracy with its 95% CI). ``rundir.load_run`` reads it; notebooks 06
and 08 use it. Run this again whenever the glyph data or a stage-1 backbone changes.

The teaching run also gets ``seeds.json``: the same command with ``--seed`` 0, 1 and 2 (other
meta-train batches, initialisation and meta-val tasks), each selected model tested on the seed-0
meta-test tasks, so the spread between training runs can be read apart from the test tasks; and
``selection.json``: at every validation of the seed-0 run, the per-task accuracies of the model
on the run's own meta-val tasks (those it was selected on) and on as many fresh meta-val tasks
(seed ``[1, VAL]``), so notebook 06 can show the winner's curse of model selection without
shipping a checkpoint per step. Its ``compare`` rows (``compare_glyphs-untrained_1shot.json``,
nearest centroid, the logistic probe and ProtoNet fitted by ``leo_tutorial.compare`` on the same
schedule, next to the shipped LEO model: the model ``compare`` would fit, on the same test tasks)
are written after it; ``--compare-only`` rewrites them from the shipped run without retraining.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from leo_tutorial import TrainConfig, preset
from leo_tutorial.compare import asset_path, format_table, run_comparison, save_rows
from leo_tutorial.io import atomic_write_json
from leo_tutorial.rundir import load_run
from leo_tutorial.sources import ASSETS, glyphs_spec, glyphs_untrained_spec, load_bank
from leo_tutorial.training import evaluate_split, train

# name -> (data spec, LEO preset, schedule, seeds for seeds.json, the data's name for its
# compare rows or None)
SHIPPED: dict[
    str, tuple[Callable[[], dict[str, Any]], str, TrainConfig, tuple[int, ...], str | None]
] = {
    "glyphs_leo_1shot": (glyphs_spec, "default", TrainConfig(n_way=5, k_shot=1), (), None),
    "glyphs_untrained_leo_1shot": (
        glyphs_untrained_spec,
        "weak-features",
        TrainConfig(n_way=5, k_shot=1, steps=3000, val_every=250),
        (0, 1, 2),
        "glyphs-untrained",
    ),
}
COMPARED = ("nearest-centroid", "logreg", "protonet", "LEO")  # the feature-quality study's methods
KEPT = ("run.json", "best.pt", "metrics.json", "test.json")


class SelectionRecorder:
    """A ``train`` callback: at every validation, the per-task meta-val accuracies of the model
    on the run's validation tasks (seed ``[seed, VAL]``, what selection sees) and on fresh ones
    (seed ``[seed + 1, VAL]``), ``val_tasks`` each, rounded to 6 decimals."""

    def __init__(self, bank: Any, schedule: TrainConfig) -> None:
        self.bank, self.schedule = bank, schedule
        self.records: list[dict[str, Any]] = []

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        per_task = {
            name: [
                round(float(a), 6)
                for a in evaluate_split(metrics["model"], self.bank, schedule, "val").per_task
            ]
            for name, schedule in (
                ("selection", self.schedule),
                ("fresh", self.schedule.replace(seed=self.schedule.seed + 1)),
            )
        }
        self.records.append({"step": step, **per_task})


def load(name: str) -> Any:
    return load_bank(SHIPPED[name][0](), log=lambda m: print(m, file=sys.stderr), progress=False)


def ship_comparison(name: str, bank: Any) -> None:
    """The compare rows of a shipped run: the baselines of :data:`COMPARED` fitted on its
    schedule, and its LEO model (read back from the assets), all on its test tasks."""
    _, preset_name, schedule, _, data = SHIPPED[name]
    model, _ = load_run(ASSETS / name)
    test = json.loads((ASSETS / name / "test.json").read_text())
    history = json.loads((ASSETS / name / "metrics.json").read_text())
    best_val = next(h["accuracy"] for h in history["val"] if h["step"] == test["best_step"])
    rows = run_comparison(
        bank,
        schedule,
        preset(preset_name),
        COMPARED,
        data=data,
        device="cpu",
        log=lambda message: print(message, file=sys.stderr),
        fitted={"LEO": (model, {"val_accuracy": best_val, "best_step": test["best_step"]}, 0.0)},
    )
    print(format_table(rows))
    print(f"  written to {save_rows(asset_path(data, schedule.k_shot), rows)}")


def regenerate(name: str) -> None:
    spec_of, preset_name, schedule, seeds, data = SHIPPED[name]
    start = time.perf_counter()
    spec = spec_of()
    bank = load(name)
    selection = SelectionRecorder(bank, schedule) if seeds else None
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            preset(preset_name),
            schedule,
            bank,
            Path(tmp) / "run",
            data_spec=spec,
            device="cpu",
            progress=False,
            callback=selection,
            log=lambda message: print(message, file=sys.stderr),
        )
        target = ASSETS / name
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for kept in KEPT:
            shutil.copy2(result.run_dir / kept, staging / kept)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    val = result.history["val"]
    sizes = ", ".join(f"{kept} {(target / kept).stat().st_size / 1024:.0f} KB" for kept in KEPT)
    print(
        f"{name}: meta-val accuracy {100 * val[0]['accuracy']:.2f}% at step 0, best "
        f"{100 * result.best_val_accuracy:.2f}% at step {result.best_step}; {result.test}"
    )
    print(f"  written to {target} ({sizes}); {time.perf_counter() - start:.0f} s")
    if seeds:
        spread = []
        for seed in seeds:
            run = result
            if seed != schedule.seed:  # the shipped run is one of them; train the others
                with tempfile.TemporaryDirectory() as tmp:
                    run = train(
                        preset(preset_name),
                        schedule.replace(seed=seed),
                        bank,
                        Path(tmp) / "run",
                        data_spec=spec,
                        device="cpu",
                        progress=False,
                        test=False,
                        log=lambda message: print(message, file=sys.stderr),
                    )
            test = evaluate_split(run.model, bank, schedule, "test")  # the seed-0 test tasks
            spread.append(
                {
                    "seed": seed,
                    "val_step0": run.history["val"][0]["accuracy"],
                    "best_val": run.best_val_accuracy,
                    "best_step": run.best_step,
                    "test": test.to_dict(),
                }
            )
            print(
                f"  seed {seed}: meta-val {100 * spread[-1]['val_step0']:.2f}% at step 0, best "
                f"{100 * run.best_val_accuracy:.2f}% at step {run.best_step}; {test}"
            )
        atomic_write_json(target / "seeds.json", spread)
        atomic_write_json(target / "selection.json", selection.records)
    if data is not None:
        ship_comparison(name, bank)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", choices=tuple(SHIPPED), action="append", help="which shipped run (default: all)"
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="only rewrite the compare rows of the shipped runs that have them, from their files",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.run or SHIPPED:
        if not args.compare_only:
            regenerate(name)
        elif SHIPPED[name][4] is not None:
            ship_comparison(name, load(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
