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


# ------------------------------------------------------------------------------------- decks
# A deck is the notebook cut into slides that fit a 1280 x 720 screen. The sizes below estimate
# the rendered height of every cell in the deck's CSS (DECK_CSS in build_slides.py: markdown
# 22 px text, 15 px code, capped outputs); tests/test_slides.py measures the real decks in
# headless Chromium and fails when a slide is taller than the screen.
DECK_WIDTH, DECK_HEIGHT = 1280, 720
BUDGET = 500  # px of content per slide, estimated (540 let real slides reach 734 px)
MAX_CODE_LINES = 10  # longer code cells show only their output in a deck
HIDE_INPUT = "deck-hide-input"  # tag read by nbconvert's TagRemovePreprocessor
TEXT_LINE, TEXT_CHARS = 30, 100  # markdown: px per line, characters per line
CODE_LINE, CODE_CHARS = 21, 120  # code and text output
OUTPUT_MAX, IMAGE_MAX, IMAGE_WIDTH = 360, 470, 1180  # CSS caps on outputs and figures (px)
_NBVAL = re.compile(r"^\s*# NBVAL_\w+\s*$")


def _paragraphs(source: str) -> list[str]:
    """Blank-line separated blocks of markdown, keeping fenced code, display maths, tables and
    blockquotes whole."""
    blocks, current, fence, maths = [], [], False, False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if line.strip().startswith("$$") and line.strip() != "$$" and line.strip().endswith("$$"):
            pass  # a one-line display formula
        elif line.strip().startswith("$$") or (maths and line.strip().endswith("$$")):
            maths = not maths
        if not line.strip() and not fence and not maths:
            if current:
                blocks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def markdown_height(source: str) -> int:
    """Estimated height in px of a markdown cell in a deck."""
    height = 0
    for block in _paragraphs(source):
        lines = block.splitlines()
        if lines[0].startswith("#"):
            height += 70
        elif block.lstrip().startswith("$$"):
            height += 45 + 28 * block.count("\\\\")
        elif lines[0].startswith("|"):
            height += sum(34 * max(1, -(-len(line) // (2 * TEXT_CHARS))) for line in lines[1:])
        elif lines[0].startswith("```"):
            height += CODE_LINE * (len(lines) - 2) + 30
        else:
            text = " ".join(line.strip() for line in lines)
            height += TEXT_LINE * max(1, -(-len(text) // TEXT_CHARS)) + 8 * len(lines) // 3
        height += 18  # paragraph spacing
    return height


def _png_size(data: str) -> tuple[int, int]:
    import base64
    import struct

    head = base64.b64decode(data[:64])
    return struct.unpack(">II", head[16:24])


def code_height(cell: nbformat.NotebookNode) -> int:
    """Estimated height in px of a code cell in a deck (input unless hidden, then outputs)."""
    height = 0
    if HIDE_INPUT not in cell.metadata.get("tags", []):
        lines = cell.source.splitlines()
        height += 24 + CODE_LINE * sum(max(1, -(-len(line) // CODE_CHARS)) for line in lines)
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if "image/png" in data:
            width, high = _png_size(data["image/png"])
            height += min(IMAGE_MAX, high * min(1.0, IMAGE_WIDTH / width)) + 16
        else:
            text = output.get("text", "") or data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            rows = sum(max(1, -(-len(line) // CODE_CHARS)) for line in text.splitlines())
            height += min(OUTPUT_MAX, CODE_LINE * rows) + 16
    return height


def deck_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as a deck: cells cut at headings (and long markdown at paragraphs), the
    slide rule applied, ``# NBVAL_*`` markers dropped from the shown code, code cells longer
    than MAX_CODE_LINES shown by their output only, and a new vertical slide wherever the
    estimated content would exceed one 1280 x 720 screen."""
    out = add_slide_metadata(split_at_headings(nb))
    cells = []
    for cell in out.cells:
        if cell.cell_type == "markdown" and markdown_height(cell.source) > BUDGET // 2:
            pieces = _paragraphs(cell.source)
            groups, height = [[]], 0
            for piece in pieces:
                h = markdown_height(piece)
                if groups[-1] and height + h > BUDGET // 2:
                    groups.append([])
                    height = 0
                groups[-1].append(piece)
                height += h
            for k, group in enumerate(groups):
                part = copy.deepcopy(cell)
                part.source = "\n\n".join(group)
                if k:
                    part.metadata["slideshow"] = {"slide_type": "-"}
                    part.id = f"{cell.id[:60]}-p{k}"
                cells.append(part)
            continue
        if cell.cell_type == "code":
            cell = copy.deepcopy(cell)
            cell.source = "\n".join(
                line for line in cell.source.splitlines() if not _NBVAL.match(line)
            )
            if len(cell.source.splitlines()) > MAX_CODE_LINES or code_height(cell) > BUDGET:
                cell.metadata["tags"] = [*cell.metadata.get("tags", []), HIDE_INPUT]
            if code_height(cell) > BUDGET and len(cell.outputs) > 1:  # one output per piece
                for k, output in enumerate(cell.outputs):
                    part = copy.deepcopy(cell)
                    part.outputs = [output]
                    if k:
                        part.id = f"{cell.id[:60]}-o{k}"
                        part.metadata["tags"] = sorted({*part.metadata.get("tags", []), HIDE_INPUT})
                        part.metadata["slideshow"] = {"slide_type": "-"}
                    cells.append(part)
                continue
        cells.append(cell)
    out.cells = cells
    height = 0
    for cell in out.cells:
        kind = cell.metadata["slideshow"]["slide_type"]
        if kind == "skip":
            continue
        h = markdown_height(cell.source) if cell.cell_type == "markdown" else code_height(cell)
        if kind in ("slide", "subslide"):
            height = h
        elif height + h > BUDGET:
            cell.metadata["slideshow"] = {"slide_type": "subslide"}
            height = h
        else:
            height += h
    return out
