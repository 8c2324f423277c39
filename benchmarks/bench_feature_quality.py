"""What meta-learning adds against feature quality: the glyph study of issue 13, end to end.

For every stage-1 backbone of :data:`leo_tutorial.feature_quality.LEVELS` (untrained, fewer
epochs, fewer classes, full; pre-pool or final layer) this embeds the glyphs (backbones and
embeddings cached under the user cache directory), measures the feature quality (nearest
centroid, 5-way 1-shot on meta-val) and, at 5-way 1- and 5-shot, fits nearest centroid, the
logistic probe, ProtoNet and LEO (its preset, among :data:`CANDIDATES`, and its step chosen on
meta-val) and tests them, with LEO at step 0, on the same meta-test tasks
(:func:`leo_tutorial.feature_quality.measure`). Prints one table per shot with LEO's paired
margins.

    python benchmarks/bench_feature_quality.py --save-assets       # the whole study (~1 h)
    python benchmarks/bench_feature_quality.py --levels untrained-prepool --shots 1 --steps 300

``--save-assets`` writes ``leo_tutorial/assets/feature_quality.json`` after every level (a
subset of levels replaces those levels in the file, if the settings match) and
``--figure PATH`` saves :func:`leo_tutorial.feature_quality.plot_study` as a PNG. One thread,
CPU; timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from leo_tutorial.config import PRESETS, TrainConfig, preset  # noqa: E402
from leo_tutorial.data import GlyphConfig, render_glyphs  # noqa: E402
from leo_tutorial.feature_quality import (  # noqa: E402
    ASSET,
    LEVELS,
    STUDY_FORMAT,
    feature_quality,
    format_study,
    load_study,
    measure,
    plot_study,
    save_study,
)
from leo_tutorial.features import recipe_bank  # noqa: E402

CANDIDATES = ("weak-features", "synthetic")  # LEO's presets, chosen per level and shot on S^val
STEPS = {1: 3000, 5: 2000}  # meta-training steps of LEO and ProtoNet per shot


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    names = [recipe.name for _, recipe in LEVELS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default=",".join(names), help=f"subset of {', '.join(names)}")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument(
        "--steps", type=int, default=None, help="for every shot (default 3000/2000)"
    )
    parser.add_argument("--val-tasks", type=int, default=500)
    parser.add_argument("--test-tasks", type=int, default=1000)
    parser.add_argument(
        "--presets", default=",".join(CANDIDATES), help=f"LEO candidates among {', '.join(PRESETS)}"
    )
    parser.add_argument("--save-assets", action="store_true")
    parser.add_argument("--figure", default=None, help="also save the figure as this PNG")
    args = parser.parse_args()
    levels = [(lever, r) for lever, r in LEVELS if r.name in args.levels.split(",")]
    unknown = set(args.levels.split(",")) - set(names)
    if unknown:
        parser.error(f"unknown levels {sorted(unknown)}; choose from {', '.join(names)}")
    shots = [int(s) for s in args.shots.split(",")]
    presets = args.presets.split(",")
    if set(presets) - set(PRESETS):
        parser.error(f"unknown presets {sorted(set(presets) - set(PRESETS))}")
    torch.set_num_threads(1)
    glyphs = GlyphConfig()
    setting = {
        "glyphs": dataclasses.asdict(glyphs),
        "presets": {name: dataclasses.asdict(preset(name)) for name in presets},
        "steps": {str(k): args.steps or STEPS[k] for k in shots},
        "val_tasks": args.val_tasks,
        "test_tasks": args.test_tasks,
    }
    study = {"format": STUDY_FORMAT, "setting": setting, "levels": []}
    if args.save_assets and ASSET.is_file():
        old = load_study(ASSET)
        same = {k: v for k, v in old["setting"].items() if k != "steps"} == {
            k: v for k, v in setting.items() if k != "steps"
        }
        if same:  # keep the other levels (and shots) already measured with these settings
            study = old
            study["setting"]["steps"].update(setting["steps"])
    dataset = render_glyphs(glyphs, log=log, progress=False)
    for lever, recipe in levels:
        start = time.perf_counter()
        bank = recipe_bank(dataset, recipe, log=log, progress=False)
        embed_seconds = time.perf_counter() - start
        schedule = TrainConfig(val_tasks=args.val_tasks, test_tasks=args.test_tasks, val_every=250)
        quality = feature_quality(bank, schedule)
        log(f"{recipe.name} ({lever}, {bank.dim}-d): quality {100 * quality:.2f} %")
        entry = next((lv for lv in study["levels"] if lv["name"] == recipe.name), None)
        if entry is None:
            entry = {"name": recipe.name, "shots": {}}
            study["levels"].append(entry)
        entry.update(
            lever=lever,
            recipe=dataclasses.asdict(recipe),
            dim=bank.dim,
            quality=quality,
            stage1_seconds=round(embed_seconds, 1),
        )
        for shot in shots:
            tc = schedule.replace(k_shot=shot, steps=args.steps or STEPS[shot])
            log(f" 5-way {shot}-shot, {tc.steps} steps")
            candidates = {name: preset(name) for name in presets}
            entry["shots"][str(shot)] = measure(bank, tc, candidates, log=log)
        if args.save_assets:
            save_study(ASSET, study)
    for shot in shots:
        print(format_study(study, shot), "\n", flush=True)
    if args.figure:
        from leo_tutorial.viz import figure_png

        with open(args.figure, "wb") as f:
            f.write(figure_png(plot_study(study, shots), dpi=100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
