"""Defaults that hold up: LEO's CPU presets, chosen on some embeddings and checked on others.

A grid of embedding distributions (cells), each 5-way 1-shot and 5-shot, on one short CPU
schedule (:data:`SCHEDULE`):

    dev        base (synthetic, 128-d, rank 16), noisy (noise 1.4): the presets are chosen here
    held-out   rank-4, rank-48 (subspace ranks), classes-12 (12 meta-train classes), dim-32
               (32-d, rank 8), glyphs (the shipped glyph features, 32-d), glyphs-raw (the glyph
               images through an untrained ConvNet4, 288-d: what a user's own weak backbone
               gives): the presets are only reported here

Per cell: LEO with the chosen defaults, LEO tuned on that cell's S^val (``--trials`` trials,
median pruning; :func:`leo_tutorial.tune.tune_methods`, what ``compare --tune-trials`` runs),
LEO with the preset ``--preset auto`` picked before this benchmark ("old auto": ``synthetic``
for synthetic banks, the official defaults for glyphs), ProtoNet and nearest centroid, all
tested on the same 500 S^test tasks (paired 95% CIs of the differences).

How the defaults are chosen, without looking at the held-out cells or at any meta-test task:
tune LEO on each dev cell; candidates = each dev cell's best setting, their geometric mean,
and the ``synthetic`` preset, rounded to two significant digits; the candidate with the
highest mean S^val accuracy over the dev cells of that shot becomes ``cpu-<shot>shot``
(copy the printed dict into ``leo_tutorial.config.PRESETS``; tests/test_tune.py checks that the
shipped preset equals the shipped choice).

Targets (issue 15): with the defaults LEO is at least as accurate as ProtoNet in every cell
(not worse at 95%: difference + CI >= 0); tuning adds >= 2 points on average over the third of
the cells where the defaults are weakest (lowest margin over ProtoNet).

    python benchmarks/bench_robustness.py                  # the grid, about an hour (1 thread)
    python benchmarks/bench_robustness.py --quick          # a smoke run of every phase, ~2 min
    python benchmarks/bench_robustness.py --save-assets    # also write the shipped JSON files

``--save-assets`` writes ``leo_tutorial/assets/robustness.json`` (everything below) and
``leo_tutorial/assets/tune_glyphs-raw_1shot.json`` (the glyphs-raw 1-shot study, which the
README and the notebooks read with :func:`leo_tutorial.tune.load_summary`). Times depend on
the machine's load; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from leo_tutorial.assets import ASSETS  # noqa: E402
from leo_tutorial.baselines import BaselineConfig  # noqa: E402
from leo_tutorial.compare import fit  # noqa: E402
from leo_tutorial.config import (  # noqa: E402
    PRESETS,
    LEOConfig,
    TrainConfig,
    config_to_dict,
    preset,
)
from leo_tutorial.data import FeatureBank, SyntheticConfig, make_synthetic_bank  # noqa: E402
from leo_tutorial.data.synthetic import bayes_accuracy  # noqa: E402
from leo_tutorial.features import ConvNet4, embed_dataset  # noqa: E402
from leo_tutorial.io import atomic_write_json  # noqa: E402
from leo_tutorial.sources import glyphs_spec, image_dataset, load_bank  # noqa: E402
from leo_tutorial.training import evaluate_split, mean_ci95  # noqa: E402
from leo_tutorial.tune import asset_path, format_robustness, tune_methods  # noqa: E402

# One short CPU schedule for every run (small banks, so 15 queries per class at val/test).
SCHEDULE = dict(
    n_way=5,
    n_query=15,
    batch_size=8,
    steps=200,
    val_every=50,
    val_tasks=100,
    test_tasks=500,
    eval_n_query=15,
    eval_batch_size=25,
    seed=0,
)
QUICK = dict(SCHEDULE, steps=20, val_every=10, val_tasks=20, test_tasks=40, batch_size=4)

SMALL = dict(n_train_classes=32, n_val_classes=10, n_test_classes=10, images_per_class=60)


@dataclass(frozen=True)
class Cell:
    """One embedding distribution: a synthetic generator setting, or the glyph features."""

    name: str
    role: str  # "dev" (presets chosen here) or "held-out" (only reported)
    synthetic: SyntheticConfig | None  # None: glyphs
    old_auto: str  # the preset `--preset auto` picked before this benchmark
    untrained_backbone: bool = False  # glyphs: embedded by an untrained ConvNet4 (prepool)

    def bank(self) -> FeatureBank:
        if self.synthetic is not None:
            return make_synthetic_bank(self.synthetic)
        if not self.untrained_backbone:
            return load_bank(glyphs_spec(), log=log, progress=False)
        torch.manual_seed(0)
        backbone = ConvNet4(channels=32)  # untrained: random convolutions, fixed by the seed
        return embed_dataset(backbone, image_dataset(glyphs_spec(), log, False), layer="prepool")

    def describe(self) -> dict[str, Any]:
        if self.synthetic is not None:
            return {"synthetic": asdict(self.synthetic)}
        backbone = "untrained ConvNet4(32), prepool" if self.untrained_backbone else "shipped"
        return {"source": "glyphs", "backbone": backbone}

    def bayes(self, shot: int) -> float | None:
        """The generator's Bayes-optimal accuracy (synthetic cells)."""
        return bayes_accuracy(self.synthetic, 5, shot)[0] if self.synthetic else None


def synthetic(seed: int, **changes: Any) -> SyntheticConfig:
    return SyntheticConfig(**{**SMALL, "dim": 128, "subspace_dim": 16, "seed": seed, **changes})


CELLS = [
    Cell("base", "dev", synthetic(1), "synthetic"),
    Cell("noisy", "dev", synthetic(2, noise=1.4), "synthetic"),
    Cell("rank-4", "held-out", synthetic(3, subspace_dim=4), "synthetic"),
    Cell("rank-48", "held-out", synthetic(4, subspace_dim=48), "synthetic"),
    Cell("classes-12", "held-out", synthetic(5, n_train_classes=12), "synthetic"),
    Cell("dim-32", "held-out", synthetic(6, dim=32, subspace_dim=8), "synthetic"),
    Cell("glyphs", "held-out", None, "default"),
    Cell("glyphs-raw", "held-out", None, "default", untrained_backbone=True),
]
STUDY_CELL = ("glyphs-raw", 1)  # the study shipped for the README and notebooks
LONG_STEPS = 1000  # the long-schedule check: the chosen presets at 5x the steps
PARAMS = ("outer_lr", "l2_penalty_weight", "orthogonality_penalty_weight", "dropout_rate")
PARAMS += ("kl_weight", "encoder_penalty_weight")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def round2(params: dict[str, float]) -> dict[str, float]:
    """Two significant digits (what a preset ships)."""
    return {k: float(f"{v:.2g}") for k, v in params.items()}


def geometric_mean(settings: list[dict[str, float]]) -> dict[str, float]:
    """Per field: exp(mean(log)) for the log-searched fields, the mean for dropout."""
    out = {}
    for key in settings[0]:
        values = np.array([s[key] for s in settings])
        linear = key == "dropout_rate"
        out[key] = float(values.mean() if linear else np.exp(np.log(values).mean()))
    return out


class Runner:
    """Fits and tests on one cell's bank; every test uses the same S^test tasks (paired)."""

    def __init__(self, bank: FeatureBank, tc: TrainConfig):
        self.bank, self.tc = bank, tc
        self.device = torch.device("cpu")

    def val(self, method: str, config: LEOConfig) -> float:
        _, info = fit(method, self.bank, self.tc, config, BaselineConfig(), self.device)
        return info["val_accuracy"]

    def test(self, method: str, config: LEOConfig) -> tuple[float, np.ndarray]:
        """(S^val accuracy of the selected model, per-task S^test accuracies)."""
        model, info = fit(method, self.bank, self.tc, config, BaselineConfig(), self.device)
        result = evaluate_split(model, self.bank, self.tc, "test", device=self.device)
        return info["val_accuracy"], result.per_task


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and 95% CI of the per-task difference a - b, in points."""
    mean, ci = mean_ci95(a - b)
    return 100 * mean, 100 * ci


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny schedule, 3 trials, 3 cells")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--save-assets", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = QUICK if args.quick else SCHEDULE
    trials = 3 if args.quick else args.trials
    cells = [CELLS[0], CELLS[1], CELLS[-1]] if args.quick else CELLS
    shots = [int(s) for s in args.shots.split(",")]
    start, load_start = time.perf_counter(), os.getloadavg()
    banks = {cell.name: cell.bank() for cell in cells}
    runners = {
        (c.name, shot): Runner(banks[c.name], TrainConfig(k_shot=shot, **schedule))
        for c in cells
        for shot in shots
    }
    base = LEOConfig()  # unsearched fields: the official values (every preset shares them)

    def tune_cell(name: str, shot: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        runner = runners[(name, shot)]
        out = tune_methods(runner.bank, runner.tc, base, ["LEO"], trials, device="cpu", log=log)
        out = out["LEO"]
        out["seconds"] = time.perf_counter() - t0
        log(f"[{time.perf_counter() - start:.0f} s] tuned {name} {shot}-shot")
        return out

    tuned = {}
    # ---- phase 1: tune on the dev cells and choose the defaults by mean S^val over them
    chosen: dict[int, dict[str, float]] = {}
    candidates_report: dict[int, list[dict[str, Any]]] = {}
    dev = [c for c in cells if c.role == "dev"]
    for shot in shots:
        for cell in dev:
            tuned[(cell.name, shot)] = tune_cell(cell.name, shot)
        bests = [tuned[(c.name, shot)]["params"] for c in dev]
        candidates = {f"best of {c.name}": round2(b) for c, b in zip(dev, bests, strict=True)}
        candidates["geometric mean"] = round2(geometric_mean(bests))
        synthetic_preset = config_to_dict(preset("synthetic"))
        candidates["synthetic preset"] = {k: synthetic_preset[k] for k in PARAMS}
        report = []
        for label, params in candidates.items():
            vals = {c.name: runners[(c.name, shot)].val("LEO", base.replace(**params)) for c in dev}
            report.append({"candidate": label, "params": params, "val_accuracy": vals})
            log(
                f"{shot}-shot candidate {label}: S^val "
                + ", ".join(f"{k} {100 * v:.2f}%" for k, v in vals.items())
            )
        best = max(report, key=lambda r: np.mean(list(r["val_accuracy"].values())))
        chosen[shot] = best["params"]
        candidates_report[shot] = report
        log(f"cpu-{shot}shot = {best['candidate']}: {best['params']}")

    # ---- phase 2: every cell: defaults, tuned, old auto, ProtoNet, nearest centroid
    rows = []
    for cell in cells:
        for shot in shots:
            runner = runners[(cell.name, shot)]
            if (cell.name, shot) not in tuned:
                tuned[(cell.name, shot)] = tune_cell(cell.name, shot)
            search = tuned[(cell.name, shot)]
            configs = {
                "LEO defaults": ("LEO", base.replace(**chosen[shot])),
                "LEO tuned": ("LEO", base.replace(**search["params"])),
                "LEO old auto": ("LEO", preset(cell.old_auto)),
                "protonet": ("protonet", base),
                "nearest-centroid": ("nearest-centroid", base),
            }
            results = {}
            for label, (method, config) in configs.items():
                results[label] = runner.test(method, config)
            methods = {}
            for label, (val, per_task) in results.items():
                acc, ci = mean_ci95(per_task)
                methods[label] = {"accuracy": acc, "ci95": ci, "val_accuracy": val}
            d = results["LEO defaults"][1]
            margins = {
                f"defaults - {other}": paired(d, results[other][1])
                for other in ("protonet", "nearest-centroid", "LEO old auto")
            }
            margins["tuned - defaults"] = paired(results["LEO tuned"][1], d)
            row = {
                "cell": cell.name,
                "role": cell.role,
                "shot": shot,
                "data": cell.describe(),
                "methods": methods,
                "margins": {k: {"points": m, "ci95": c} for k, (m, c) in margins.items()},
                "bayes_accuracy": cell.bayes(shot),
                "tuned_params": search["params"],
                "tuned_val_accuracy": search["val_accuracy"],
                "tune_seconds": round(search["seconds"], 1),
                "trial_states": _states(search["summary"]),
            }
            rows.append(row)
            log(
                f"[{time.perf_counter() - start:.0f} s] {cell.name} {shot}-shot: "
                + ", ".join(f"{k} {100 * v['accuracy']:.2f}" for k, v in methods.items())
            )

    # ---- phase 3: the chosen presets on a 5x longer schedule, on two held-out cells
    long_rows = []
    for name, shot in (("glyphs-raw", 1), ("rank-48", 5)) if not args.quick else ():
        if (name, shot) not in runners:
            continue
        runner = runners[(name, shot)]
        long_tc = runner.tc.replace(steps=LONG_STEPS, val_every=LONG_STEPS // 5)
        long_runner = Runner(runner.bank, long_tc)
        cell = next(c for c in cells if c.name == name)
        results = {
            "LEO defaults": long_runner.test("LEO", base.replace(**chosen[shot])),
            "LEO old auto": long_runner.test("LEO", preset(cell.old_auto)),
            "protonet": long_runner.test("protonet", base),
        }
        d = results["LEO defaults"][1]
        long_rows.append(
            {
                "cell": name,
                "shot": shot,
                "steps": LONG_STEPS,
                "methods": {
                    k: dict(zip(("accuracy", "ci95"), mean_ci95(v[1]), strict=True))
                    for k, v in results.items()
                },
                "margins": {
                    f"defaults - {k}": dict(
                        zip(("points", "ci95"), paired(d, results[k][1]), strict=True)
                    )
                    for k in ("protonet", "LEO old auto")
                },
            }
        )
        log(f"[{time.perf_counter() - start:.0f} s] long check {name} {shot}-shot done")

    # ---- targets
    t1 = [
        {"cell": r["cell"], "shot": r["shot"], **r["margins"]["defaults - protonet"]} for r in rows
    ]
    holds = [m["points"] + m["ci95"] >= 0 for m in t1]
    weakest = sorted(rows, key=lambda r: r["margins"]["defaults - protonet"]["points"])
    weakest = weakest[: max(1, math.ceil(len(rows) / 3))]
    gains = [r["margins"]["tuned - defaults"]["points"] for r in weakest]
    targets = {
        "defaults_not_worse_than_protonet": {
            "rule": "difference + 95% CI >= 0 in every cell",
            "met": bool(all(holds)),
            "cells_met": int(sum(holds)),
            "cells": len(holds),
            "held_out_met": int(
                sum(h for h, r in zip(holds, rows, strict=True) if r["role"] != "dev")
            ),
            "held_out_cells": sum(r["role"] != "dev" for r in rows),
        },
        "tuning_gain_where_defaults_weakest": {
            "rule": "mean (tuned - defaults) >= 2 points over the third of the cells with the "
            "lowest defaults - protonet margin",
            "cells": [f"{r['cell']} {r['shot']}-shot" for r in weakest],
            "mean_gain_points": float(np.mean(gains)),
            "met": bool(np.mean(gains) >= 2),
        },
    }
    seconds = time.perf_counter() - start
    result = {
        "format": 1,
        "schedule": schedule,
        "trials": trials,
        "presets": {f"cpu-{shot}shot": chosen[shot] for shot in shots},
        "candidates": {str(shot): candidates_report[shot] for shot in shots},
        "rows": rows,
        "long_schedule": long_rows,
        "targets": targets,
        "seconds": round(seconds, 1),
        "load_average": {"start": load_start[0], "end": os.getloadavg()[0]},
        "threads": 1,
    }
    print(format_robustness(result))
    if args.save_assets and not args.quick:
        print(f"saved {atomic_write_json(ASSETS / 'robustness.json', result)}")
        if STUDY_CELL in tuned:
            path = asset_path(*STUDY_CELL)
            print(f"saved {atomic_write_json(path, tuned[STUDY_CELL]['summary'])}")
    for name, params in result["presets"].items():
        shipped = PRESETS.get(name)
        same = shipped == params
        print(f"{name} = {params}" + ("" if same else "   <- differs from config.PRESETS"))
    return 0


def _states(summary: dict[str, Any]) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in summary["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return states


if __name__ == "__main__":
    sys.exit(main())
