"""Slide metadata for the notebooks: one deterministic rule from each notebook's structure.

`jupyter nbconvert --to slides` reads ``cell.metadata.slideshow.slide_type``. We never set it by
hand: `scripts/execute_notebooks.py` calls `add_slide_metadata` on every run, and
`scripts/build_slides.py` applies it again before building a deck, so a deck always follows
the rule below, whatever the committed metadata says.

The rule, cell by cell (first match wins):

1. the silent setup cell (the first code cell calling ``setup_notebook(``): ``skip``;
2. a markdown cell holding a level-1 or level-2 heading (``#`` / ``##``) on any line:
   ``slide`` — a new section starts a new horizontal slide, also where the section heading
   follows the previous section's closing "What to notice" paragraph in the same cell;
3. a markdown cell holding a level-3 heading (``###``): ``subslide`` (a vertical slide);
4. a markdown cell opening with "What to notice" or "What to see" (bold or not): ``fragment``
   — the observation appears on a key press, after the code and its output were discussed;
5. every other cell: ``-`` (continues the current slide).

Running it twice gives the same notebook (idempotent); it changes nothing but that one key.

For the decks, `split_at_headings` first cuts markdown cells before every heading that is not
on their first line, so each section opens its own slide and a closing "What to notice"
paragraph stays on the slide it belongs to (a fragment). The committed notebooks keep their
cells; their metadata follows the rule above.
"""

from __future__ import annotations

import copy
import re

import nbformat

SLIDE_TYPES = ("slide", "subslide", "fragment", "skip", "notes", "-")

_HEADING = re.compile(r"^(#{1,6})\s+\S", re.MULTILINE)
_OBSERVATION = re.compile(r"^\s*(\*\*)?What to (notice|see)\b", re.IGNORECASE)


def _heading_levels(source: str) -> set[int]:
    """Levels of the markdown headings in ``source`` (fenced code blocks ignored)."""
    levels, in_fence = set(), False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match:
            levels.add(len(match.group(1)))
    return levels


def split_at_headings(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose markdown cells are cut before every heading line but the first
    (level 1-3, outside fenced code); the pieces keep the cell's metadata, ids get ``-1``,
    ``-2``, ... appended."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if cell.cell_type != "markdown":
            cells.append(cell)
            continue
        pieces, in_fence = [[]], False
        for line in cell.source.splitlines(keepends=True):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            match = None if in_fence else _HEADING.match(line)
            if match and len(match.group(1)) <= 3 and any(x.strip() for x in pieces[-1]):
                pieces.append([])
            pieces[-1].append(line)
        for k, piece in enumerate(pieces):
            part = copy.deepcopy(cell)
            part.source = "".join(piece).strip("\n")
            if k and "id" in part:
                part.id = f"{cell.id[:60]}-{k}"
            cells.append(part)
    out.cells = cells
    return out


def is_setup_cell(cell: nbformat.NotebookNode) -> bool:
    """True for a code cell that calls ``setup_notebook(`` (the silent setup cell)."""
    return cell.cell_type == "code" and "setup_notebook(" in cell.source


def slide_types(nb: nbformat.NotebookNode) -> list[str]:
    """The slide type the rule gives each cell of ``nb``, in order."""
    types = []
    setup_seen = False
    for cell in nb.cells:
        if not setup_seen and is_setup_cell(cell):
            setup_seen = True
            types.append("skip")
            continue
        levels = _heading_levels(cell.source) if cell.cell_type == "markdown" else set()
        if levels & {1, 2}:
            types.append("slide")
        elif 3 in levels:
            types.append("subslide")
        elif cell.cell_type == "markdown" and _OBSERVATION.match(cell.source):
            types.append("fragment")
        else:
            types.append("-")
    return types


def add_slide_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Set ``metadata.slideshow.slide_type`` on every cell by the rule; returns ``nb``."""
    for cell, slide_type in zip(nb.cells, slide_types(nb), strict=True):
        cell.metadata["slideshow"] = {"slide_type": slide_type}
    return nb
