"""Regenerate the trained LEO run(s) shipped as package data, from scratch, and print their numbers.

    .venv/bin/python scripts/train_shipped_runs.py           # every shipped run
    .venv/bin/python scripts/train_shipped_runs.py --shot 1  # one of them

Each run is ``leo-tutorial train --data glyphs --way 5 --shot K --device cpu --threads 1``
(the official default hyper-parameters, the default schedule, seed 0) and lands in
``leo_tutorial/assets/glyphs_leo_<K>shot/`` as a run directory without its resume state:
``run.json``, ``best.pt`` (the model selected on meta-val), ``metrics.json`` (the curves) and
``test.json`` (meta-test accuracy with its 95% CI). ``rundir.load_run`` reads it; notebooks 06
and 08 use it. Run this again whenever the glyph data or the shipped stage-1 backbone changes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from leo_tutorial import TrainConfig, preset
from leo_tutorial.sources import ASSETS, glyphs_spec, load_bank
from leo_tutorial.training import train

SHIPPED_SHOTS = (1,)
KEPT = ("run.json", "best.pt", "metrics.json", "test.json")


def shipped_run_dir(shot: int) -> Path:
    return ASSETS / f"glyphs_leo_{shot}shot"


def regenerate(shot: int, bank, spec: dict) -> None:  # noqa: ANN001
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            preset("default"),
            TrainConfig(n_way=5, k_shot=shot),
            bank,
            Path(tmp) / "run",
            data_spec=spec,
            device="cpu",
            progress=False,
            log=lambda message: print(message, file=sys.stderr),
        )
        target = shipped_run_dir(shot)
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in KEPT:
            shutil.copy2(result.run_dir / name, staging / name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    sizes = ", ".join(f"{name} {(target / name).stat().st_size / 1024:.0f} KB" for name in KEPT)
    print(
        f"5-way {shot}-shot: best meta-val accuracy {100 * result.best_val_accuracy:.2f}% at "
        f"step {result.best_step}; {result.test}"
    )
    print(f"  written to {target} ({sizes}); {time.perf_counter() - start:.0f} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shot",
        type=int,
        choices=SHIPPED_SHOTS,
        action="append",
        help="which shipped run (default: all)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = glyphs_spec()
    bank = load_bank(spec, log=lambda message: print(message, file=sys.stderr), progress=False)
    for shot in args.shot or SHIPPED_SHOTS:
        regenerate(shot, bank, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
