"""The exercise generator (leo_tutorial.exercises, scripts/make_exercises.py) and the committed
exercise notebooks (notebooks/exercises/, run by nbval like every notebook)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

from leo_tutorial import checks
from leo_tutorial.errors import UserError
from leo_tutorial.exercises import (
    HEADER_ID,
    exercise_names,
    exercise_path,
    is_up_to_date,
    make_exercise,
    source_notebooks,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

SOLVED = """import torch

def latent_step(z, grad, inner_lr):  # the latent step
    ### BEGIN SOLUTION
    step = inner_lr * grad
    return z - step
    ### END SOLUTION

print("kept")"""


def synthetic_notebook(*cells: tuple[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(source, id=f"cell-{i}"))
    return nb


def test_strip_solutions_replaces_the_region_and_keeps_the_rest():
    source, functions = strip_solutions(SOLVED)
    assert functions == ["latent_step"]
    assert (
        source
        == """import torch

def latent_step(z, grad, inner_lr):  # the latent step
    raise NotImplementedError(checks.hint('latent_step'))

print("kept")"""
    )
    namespace: dict = {"checks": checks}
    exec(source, namespace)  # the stub is valid Python and raises the first hint
    with pytest.raises(NotImplementedError, match="hint 1/3 for latent_step: decode weights"):
        namespace["latent_step"](1.0, 1.0, 1.0)


def test_strip_solutions_names_the_enclosing_function_of_every_region():
    source, functions = strip_solutions(
        "a = 1\ndef f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
        "def g(x):\n    def inner(y):\n        return y\n    if x:\n"
        "        ### BEGIN SOLUTION\n        return 3\n        ### END SOLUTION\n"
    )
    assert functions == ["f", "g"]
    assert source == (
        "a = 1\ndef f(x):\n    raise NotImplementedError(checks.hint('f'))\ndef g(x):\n"
        "    def inner(y):\n        return y\n    if x:\n"
        "        raise NotImplementedError(checks.hint('g'))\n"
    )
    assert strip_solutions("x = 1  # no markers") == ("x = 1  # no markers", [])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f():\n    ### BEGIN SOLUTION\n    x = 1\n", "line 2: '### BEGIN SOLUTION' is never"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "line 1: a solution region must be"),
        ("def f():\n    ### BEGIN SOLUTION hint: x\n    x\n", "line 2: malformed marker"),
        ("x = 1\n### END SOLUTION\n", "line 2: '### END SOLUTION' without a '### BEGIN SOLUTION'"),
        (
            "def f():\n ### BEGIN SOLUTION\n ### BEGIN SOLUTION\n x\n ### END SOLUTION\n",
            "line 3:.*inside the region",
        ),
        ("def f():\n ### BEGIN SOLUTION\n\n ### END SOLUTION\n", "line 2: empty solution region"),
        ("## BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "line 1: malformed marker"),
        ("### BEGIN SOLUTIONS\nx = 1\n### END SOLUTION\n", "line 1: malformed marker"),
        ("def f():\n ### BEGIN SOLUTION\n x = 1\n #### END SOLUTION\n", "line 4: malformed"),
    ],
)
def test_malformed_markers_are_clear_errors(source, message):
    with pytest.raises(UserError, match=f"my cell, {message}"):
        strip_solutions(source, "my cell")


def test_make_exercise_on_a_synthetic_notebook():
    nb = synthetic_notebook(
        (
            "markdown",
            "# Title\n\nSee [the spec](../docs/LEO_SPEC.md), [02](02_x.ipynb), "
            "[web](https://example.org) and [below](#summary).",
        ),
        ("code", SOLVED),
        ("code", "# NBVAL_CHECK_OUTPUT\nlatent_step = checks.check_latent_step(latent_step)"),
    )
    nb.cells[1].metadata["slideshow"] = {"slide_type": "fragment"}
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[1].execution_count = 3
    exercise = make_exercise(nb, "04_toy")
    assert [cell.id for cell in exercise.cells] == [HEADER_ID, "cell-0", "cell-1", "cell-2"]
    header = exercise.cells[0].source
    assert "Exercise version" in header and "(../04_toy.ipynb)" in header
    assert "`latent_step`" in header and "notebooks/04_toy.ipynb" in header
    assert "`checks.hint('latent_step', 2)`" in header
    assert exercise.cells[1].source == (
        "# Title\n\nSee [the spec](../../docs/LEO_SPEC.md), [02](../02_x.ipynb), "
        "[web](https://example.org) and [below](#summary)."
    )
    code = exercise.cells[2]
    assert "NotImplementedError" in code.source and "z - step" not in code.source
    assert code.source.endswith('print("kept")')
    assert code.metadata["slideshow"] == {"slide_type": "fragment"}  # metadata preserved
    assert code.outputs == [] and code.execution_count is None
    assert exercise.cells[3].source == nb.cells[2].source
    assert nb.cells[1].source == SOLVED  # the source notebook is not modified
    assert exercise_names(exercise) == ["latent_step"]


def test_make_exercise_needs_a_check_after_each_region():
    nb = synthetic_notebook(("code", SOLVED), ("markdown", "text"), ("code", "print(1)"))
    with pytest.raises(UserError, match="04_toy, cell 0: the solution region of latent_step needs"):
        make_exercise(nb, "04_toy")
    nb.cells[2].source = "f = checks.check_latent_step(latent_step)"
    assert exercise_names(make_exercise(nb, "04_toy")) == ["latent_step"]  # next code cell
    with pytest.raises(UserError, match="no solution regions"):
        make_exercise(synthetic_notebook(("code", "x = 1")), "00_tour")
    with pytest.raises(UserError, match="cell 0: solution markers belong in code cells"):
        make_exercise(synthetic_notebook(("markdown", "### BEGIN SOLUTION")), "00_tour")


# ------------------------------------------------------------------ the repository's notebooks
SOURCES = source_notebooks(NOTEBOOKS)


def test_every_concept_notebook_has_exercises_with_known_checks():
    names = {path.stem: exercise_names(nbformat.read(path, as_version=4)) for path in SOURCES}
    assert {
        "01_problem_setup",
        "02_encoder_relation_net",
        "03_decoder",
        "04_inner_loop",
        "05_meta_objective",
    } <= set(names)  # at least one exercise per concept notebook
    for stem, functions in names.items():
        for name in functions:
            assert checks.EXERCISES[name].notebook == stem
    assert sorted(sum(names.values(), [])) == sorted(checks.EXERCISES)


@pytest.mark.parametrize("source", SOURCES, ids=[path.stem for path in SOURCES])
def test_exercise_notebooks_are_up_to_date(source):
    assert is_up_to_date(source), (
        f"{exercise_path(source).relative_to(ROOT)} is out of date: run scripts/make_exercises.py"
    )
    exercise = nbformat.read(exercise_path(source), as_version=4)
    stubs = [cell for cell in exercise.cells if "raise NotImplementedError(" in cell.source]
    assert len(stubs) >= 1
    outputs = "".join(
        output.get("text", "") for cell in exercise.cells for output in cell.get("outputs", [])
    )
    assert outputs.count("not implemented yet") == len(exercise_names(exercise))
    assert "✓" not in outputs and "✗" not in outputs  # committed from an untouched run
    assert [cell.execution_count for cell in exercise.cells if cell.cell_type == "code"] == list(
        range(1, 1 + sum(cell.cell_type == "code" for cell in exercise.cells))
    )


def test_no_stale_exercise_notebooks():
    expected = {exercise_path(source).name for source in SOURCES}
    assert {path.name for path in (NOTEBOOKS / "exercises").glob("*.ipynb")} == expected


def _load_script():
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # make_exercises imports execute_notebooks next to it
    spec = importlib.util.spec_from_file_location(
        "make_exercises", ROOT / "scripts" / "make_exercises.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_exercises_check_mode_on_the_repository(capsys):
    assert _load_script().main(["--check"]) == 0, capsys.readouterr().out


def test_make_exercises_check_mode_finds_outdated_and_stale_files(tmp_path, monkeypatch, capsys):
    script = _load_script()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "NOTEBOOKS", tmp_path / "notebooks")
    source = tmp_path / "notebooks" / "04_toy.ipynb"
    source.parent.mkdir()
    nb = synthetic_notebook(
        ("code", SOLVED), ("code", "latent_step = checks.check_latent_step(latent_step)")
    )
    nbformat.write(nb, source)
    assert script.main(["--check"]) == 1
    assert "out of date: notebooks/exercises/04_toy.ipynb" in capsys.readouterr().out
    exercise_path(source).parent.mkdir()
    nbformat.write(make_exercise(nb, "04_toy"), exercise_path(source))
    assert script.main(["--check"]) == 0
    nb.cells[1].source += "\nprint(latent_step)"
    nbformat.write(nb, source)
    assert script.main(["--check"]) == 1
    nbformat.write(make_exercise(nb, "04_toy"), exercise_path(source))
    nbformat.write(nb, tmp_path / "notebooks" / "exercises" / "03_gone.ipynb")
    assert script.main(["--check"]) == 1
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "out of date: notebooks/exercises/03_gone.ipynb",
        "fix: .venv/bin/python scripts/make_exercises.py",
    ]
    nb.cells[0].source = SOLVED.replace("### END SOLUTION", "")
    nbformat.write(nb, source)
    assert script.main(["--check"]) == 2
    assert "04_toy, cell 0, line 4: '### BEGIN SOLUTION' is never closed" in capsys.readouterr().err
