"""Exercise notebooks generated from the source notebooks (``scripts/make_exercises.py``).

A source notebook marks the body the learner should write, inside the ``def`` of a function
that a check tests right after (same cell or the next code cell)::

    def latent_step(model, z, x, y):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

    latent_step = checks.check_latent_step(latent_step)

The exercise version replaces every region by ``raise NotImplementedError(checks.hint("name"))``
at the marker's indentation, ``name`` being the enclosing function: the stub raises the first of
the exercise's tiered hints, which live in :mod:`leo_tutorial.checks` (one place), and asks for
none of the solution. Everything else is kept (other code, markdown, cell ids and metadata);
outputs are cleared, relative links are rewritten for the ``exercises/`` folder, and a header
cell says which functions to write, how to get hints and where the solutions are.
"""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path

import nbformat

from .errors import UserError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISES_DIR = "exercises"
HEADER_ID = "exercise-header"

_BEGIN = re.compile(r"^(?P<indent>\s*)### BEGIN SOLUTION\s*$")
_DEF = re.compile(r"^(?P<indent>\s*)def (?P<name>\w+)\(")
_END = re.compile(r"^\s*### END SOLUTION\s*$")
_MARKER = re.compile(r"(BEGIN|END)\s+SOLUTION", re.IGNORECASE)
_CHECK_CALL = re.compile(r"checks\.check_\w+\((\w+)\)")
_RELATIVE_LINK = re.compile(r"\]\((?!https?:|mailto:|#|/)([^)\s]+)\)")


def strip_solutions(source: str, where: str = "cell") -> tuple[str, list[str]]:
    """Replace every solution region of one code cell's ``source`` by a stub.

    Returns (new source, the function each region belongs to). Raises UserError naming
    ``where`` and the line for a malformed marker, an unclosed or nested region, an empty one,
    or one outside a ``def``.
    """
    out: list[str] = []
    start = None  # line number of the open region's BEGIN
    body = 0  # lines inside the open region
    names: list[str] = []
    functions: list[tuple[int, str]] = []  # (indentation, name) of the defs above this line
    for number, line in enumerate(source.split("\n"), 1):
        begin, end, define = _BEGIN.match(line), _END.match(line), _DEF.match(line)
        if not (begin or end) and _MARKER.search(line) and line.lstrip().startswith("#"):
            raise UserError(
                f"{where}, line {number}: malformed marker {line.strip()!r}; write "
                f"'{BEGIN}' or '{END}' alone on the line (hints live in leo_tutorial.checks)"
            )
        if start is None and line.strip() and not (begin or end):  # a line ends deeper defs
            indent = len(line) - len(line.lstrip())
            functions = [f for f in functions if f[0] < indent]
            if define:
                functions.append((indent, define.group("name")))
        if begin:
            if start is not None:
                raise UserError(
                    f"{where}, line {number}: '{BEGIN}' inside the region opened "
                    f"on line {start}; close it with '{END}' first"
                )
            indent = len(begin.group("indent"))
            enclosing = [name for level, name in functions if level < indent]
            if not enclosing:
                raise UserError(
                    f"{where}, line {number}: a solution region must be the body of the "
                    "function its check tests (inside a def)"
                )
            start, body = number, 0
            names.append(enclosing[-1])
            out.append(
                f"{begin.group('indent')}raise NotImplementedError(checks.hint({names[-1]!r}))"
            )
        elif end:
            if start is None:
                raise UserError(f"{where}, line {number}: '{END}' without a '{BEGIN}' before it")
            if body == 0:
                raise UserError(
                    f"{where}, line {start}: empty solution region; put the "
                    f"solution code between '{BEGIN}' and '{END}'"
                )
            start = None
        elif start is None:
            out.append(line)
        elif line.strip():
            body += 1
    if start is not None:
        raise UserError(f"{where}, line {start}: '{BEGIN}' is never closed; add '{END}'")
    return "\n".join(out), names


def has_solutions(nb: nbformat.NotebookNode) -> bool:
    """True when a code cell of ``nb`` holds a solution marker."""
    return any(cell.cell_type == "code" and BEGIN in cell.source for cell in nb.cells)


def exercise_names(nb: nbformat.NotebookNode) -> list[str]:
    """The functions the learner writes: the arguments of the ``checks.check_*(...)`` calls."""
    return [
        name
        for cell in nb.cells
        if cell.cell_type == "code"
        for name in _CHECK_CALL.findall(cell.source)
    ]


def _link_from_subfolder(markdown: str) -> str:
    """Relative links as seen from ``notebooks/exercises/`` instead of ``notebooks/``."""
    return _RELATIVE_LINK.sub(r"](../\1)", markdown)


def _header(source_name: str, names: list[str]) -> nbformat.NotebookNode:
    functions = ", ".join(f"`{name}`" for name in names)
    one = len(names) == 1
    text = (
        f"**Exercise version** of [{source_name}](../{source_name}.ipynb), generated by "
        "`scripts/make_exercises.py` (edit the source notebook, not this file). "
        f"Write the function{'' if one else 's'} that raise{'s' if one else ''} "
        f"`NotImplementedError`: {functions}. The `checks.check_...` call after "
        f"{'it' if one else 'each one'} runs your code on small cases against the library and "
        "prints ✓ or a hint for the mistake it found; until then the notebook goes on with the "
        "library's reference, so every cell still runs. Stuck? "
        f"`checks.hint({names[0]!r})` gives the idea, `checks.hint({names[0]!r}, 2)` more, the "
        "last hint the code. After a failed check, re-run the cell that defines your function, "
        "then the check. The "
        f"solutions are in the source notebook, `notebooks/{source_name}.ipynb`."
    )
    lines = textwrap.wrap(text, 98, break_on_hyphens=False, break_long_words=False)
    return nbformat.v4.new_markdown_cell("\n".join(f"> {line}" for line in lines), id=HEADER_ID)


def make_exercise(nb: nbformat.NotebookNode, source_name: str) -> nbformat.NotebookNode:
    """The exercise version of source notebook ``nb`` (named ``source_name``, no suffix):
    unexecuted, with a header cell first. Raises UserError for malformed markers or a solution
    region with no check call after it."""
    exercise = copy.deepcopy(nb)
    code_cells = [i for i, cell in enumerate(exercise.cells) if cell.cell_type == "code"]
    for index, cell in enumerate(exercise.cells):
        where = f"{source_name}, cell {index}"
        if cell.cell_type == "markdown":
            if BEGIN in cell.source:
                raise UserError(f"{where}: solution markers belong in code cells")
            cell.source = _link_from_subfolder(cell.source)
            continue
        if cell.cell_type != "code":
            continue
        source, functions = strip_solutions(cell.source, where)
        if functions:
            after = cell.source.rsplit(END, 1)[1]
            following = [exercise.cells[i].source for i in code_cells if i > index][:1]
            checked = set(_CHECK_CALL.findall(after)) | {
                name for text in following for name in _CHECK_CALL.findall(text)
            }
            for name in functions:
                if name not in checked:
                    raise UserError(
                        f"{where}: the solution region of {name} needs a "
                        f"checks.check_...({name}) call after it, in the same or the next "
                        "code cell"
                    )
        cell.source = source
        cell.outputs = []
        cell.execution_count = None
    names = exercise_names(nb)
    if not names:
        raise UserError(f"{source_name}: no solution regions with checks; nothing to generate")
    exercise.cells.insert(0, _header(source_name, names))
    return exercise


def exercise_path(source: Path) -> Path:
    """notebooks/NN_name.ipynb -> notebooks/exercises/NN_name.ipynb."""
    return source.parent / EXERCISES_DIR / source.name


def source_notebooks(notebooks_dir: Path) -> list[Path]:
    """The numbered notebooks of ``notebooks_dir`` that contain solution regions."""
    return [
        path
        for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
        if has_solutions(nbformat.read(path, as_version=4))
    ]


def cell_sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell type, source) of every cell: what 'up to date' compares (not outputs, metadata)."""
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def is_up_to_date(source: Path) -> bool:
    """True when the committed exercise notebook of ``source`` has the cells it generates."""
    target = exercise_path(source)
    if not target.exists():
        return False
    expected = make_exercise(nbformat.read(source, as_version=4), source.stem)
    return cell_sources(nbformat.read(target, as_version=4)) == cell_sources(expected)
