"""Execute notebooks top to bottom in a fresh kernel and save them with their outputs.

    .venv/bin/python scripts/execute_notebooks.py                 # every notebooks/NN_*.ipynb
    .venv/bin/python scripts/execute_notebooks.py notebooks/02_encoder_relation_net.ipynb

Committed notebooks must come from this script: one fresh run (execution counts 1..n), no
widget state in the metadata, no timing metadata, slide metadata from the rule in
`scripts/slides.py`. Prints each notebook's run time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from slides import add_slide_metadata  # scripts/slides.py, next to this file

ROOT = Path(__file__).resolve().parent.parent


def clean(nb: nbformat.NotebookNode) -> None:
    """Drop widget state, widget views and per-cell execution timestamps.

    A widget view only points (by a random ``model_id``) into the widget state, which is not
    saved, so it could not be shown anyway; dropping it keeps re-executions byte-identical and
    leaves the widget's plain-text form as the saved output."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("application/vnd.jupyter.widget-view+json", None)
                output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    seconds = time.perf_counter() - start
    clean(nb)
    add_slide_metadata(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return seconds


def main(argv: list[str]) -> int:
    # The kernel must be this environment's Python.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    os.environ.setdefault("TQDM_DISABLE", "1")
    # MPLBACKEND=Agg (usual in test shells) would replace the kernel's inline backend: every
    # figure would silently vanish from the saved outputs.
    os.environ.pop("MPLBACKEND", None)
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name:40s} {execute(path):6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
