"""Generate notebooks/exercises/ from the source notebooks' solution regions, and execute them.

    .venv/bin/python scripts/make_exercises.py            # regenerate and execute all of them
    .venv/bin/python scripts/make_exercises.py notebooks/04_inner_loop.ipynb
    .venv/bin/python scripts/make_exercises.py --check    # exit 1 if any is out of date

Every numbered notebook with a ``### BEGIN SOLUTION`` region gets an exercise version (see
``leo_tutorial.exercises``), executed untouched in a fresh kernel by
``scripts/execute_notebooks.py``, so its committed outputs show what a learner first sees.
Re-run it after editing a source notebook; ``--check`` compares cell sources only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from execute_notebooks import main as execute_notebooks  # scripts/, next to this file

from leo_tutorial.errors import UserError
from leo_tutorial.exercises import (
    EXERCISES_DIR,
    exercise_path,
    is_up_to_date,
    make_exercise,
    source_notebooks,
)
from leo_tutorial.io import atomic_write

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def stale_files(sources: list[Path]) -> list[Path]:
    """Exercise notebooks whose source notebook no longer has solution regions."""
    expected = {exercise_path(source).name for source in sources}
    return [
        path
        for path in sorted((NOTEBOOKS / EXERCISES_DIR).glob("*.ipynb"))
        if path.name not in expected
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="source notebooks (default: every one with solution regions)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only report exercise notebooks that are out of date (exit 1)",
    )
    args = parser.parse_args(argv)
    every = source_notebooks(NOTEBOOKS)
    sources = [path.resolve() for path in args.notebooks] or every
    try:
        if args.check:
            outdated = [exercise_path(path) for path in sources if not is_up_to_date(path)]
            outdated += stale_files(every) if not args.notebooks else []
            for path in outdated:
                print(f"out of date: {path.relative_to(ROOT)}")
            if outdated:
                print("fix: .venv/bin/python scripts/make_exercises.py")
            return 1 if outdated else 0
        targets = []
        for source in sources:
            exercise = make_exercise(nbformat.read(source, as_version=4), source.stem)
            target = exercise_path(source)
            target.parent.mkdir(exist_ok=True)
            atomic_write(target, lambda f, nb=exercise: nbformat.write(nb, f), mode="w")
            targets.append(str(target))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in stale_files(every) if not args.notebooks else []:
        print(f"removed {path.relative_to(ROOT)} (its source has no solution regions)")
        path.unlink()
    return execute_notebooks(targets)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
