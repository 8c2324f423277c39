"""Packaging stays consistent: pyproject.toml <-> environment.yml <-> README <-> .ci/run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: use tomli if present, else skip this module
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent

# conda-forge name -> PyPI name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}
# conda-only entries that are tooling, not dependencies of the package
CONDA_ONLY = {"python", "pip"}

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(req: str) -> tuple[str, list[tuple[str, str]]]:
    """``"torch>=2.2"`` -> ``("torch", [(">=", "2.2")])`` (name PEP 503-normalized)."""
    m = _REQ.match(req)
    assert m, f"cannot parse requirement {req!r}"
    name, _extras, spec, _marker = m.groups()
    specs = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        sm = re.fullmatch(r"(===|==|!=|~=|>=|<=|>|<)\s*(\S+)", part)
        assert sm, f"cannot parse version specifier {part!r} in {req!r}"
        specs.append((sm.group(1), sm.group(2)))
    return _normalize(name), specs


def load_pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_requirements() -> list[str]:
    project = load_pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return reqs


def parse_environment_yml(text: str) -> tuple[list[str], list[str]]:
    """Tiny parser for our environment.yml: returns (conda dependencies, pip dependencies).

    Handles only what that file uses: top-level keys, ``- item`` lists, one nested
    ``- pip:`` list, comments and blank lines.
    """
    conda: list[str] = []
    pip: list[str] = []
    section = None
    in_pip = False
    pip_indent = -1
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            section = stripped.split(":", 1)[0]
            in_pip = False
            continue
        if section != "dependencies" or not stripped.startswith("- "):
            continue
        item = stripped[2:].strip()
        if in_pip and indent <= pip_indent:
            in_pip = False
        if item == "pip:":
            in_pip, pip_indent = True, indent
        elif in_pip:
            pip.append(item)
        else:
            conda.append(item)
    return conda, pip


def environment_requirements() -> dict[str, list[tuple[str, str]]]:
    conda, _pip = parse_environment_yml((ROOT / "environment.yml").read_text())
    out = {}
    for item in conda:
        # conda also allows "name=1.2" / "name 1.2"; we only use PEP 440-style ">=" bounds
        name, specs = parse_requirement(item.replace(" ", ""))
        out[CONDA_TO_PYPI.get(name, name)] = specs
    return out


def test_environment_yml_parser():
    conda, pip = parse_environment_yml(
        "name: x\nchannels:\n  - conda-forge\ndependencies:\n  # c\n  - a>=1  # why\n"
        "  - pip\n  - pip:\n      - -e .\n  - b>=2\n"
    )
    assert conda == ["a>=1", "pip", "b>=2"]
    assert pip == ["-e ."]


def test_pyproject_has_lower_bounds_only():
    for req in pyproject_requirements():
        name, specs = parse_requirement(req)
        assert specs, f"{req!r}: give a lower bound (>=)"
        for op, _version in specs:
            assert op == ">=", f"{req!r}: lower bounds only, no upper or exact pins"


def test_environment_yml_matches_pyproject():
    env = environment_requirements()
    py = dict(parse_requirement(r) for r in pyproject_requirements())
    env_deps = {name: specs for name, specs in env.items() if name not in CONDA_ONLY}
    assert set(py) == set(env_deps), (
        f"only in pyproject: {sorted(set(py) - set(env_deps))}; "
        f"only in environment.yml: {sorted(set(env_deps) - set(py))}"
    )
    for name, specs in py.items():
        assert env_deps[name] == specs, (
            f"{name}: pyproject {specs} != environment.yml {env_deps[name]}"
        )


def test_environment_yml_python_and_self_install():
    env = environment_requirements()
    requires_python = load_pyproject()["project"]["requires-python"]
    assert env["python"] == parse_requirement("python" + requires_python)[1]
    _conda, pip = parse_environment_yml((ROOT / "environment.yml").read_text())
    assert "-e ." in pip, "environment.yml must pip-install the package itself (- -e .)"


def test_console_script_target_exists():
    scripts = load_pyproject()["project"]["scripts"]
    for command, target in scripts.items():
        module, _, func = target.partition(":")
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"console script {command!r} points at missing {path}"
        tree = ast.parse(path.read_text(), filename=str(path))
        defs = (ast.FunctionDef, ast.AsyncFunctionDef)
        names = {n.name for n in tree.body if isinstance(n, defs)}
        names |= {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        assert func in names, f"console script {command!r}: {module} defines no {func!r}"


def _fenced_block_after(text: str, marker: str) -> list[str]:
    """Lines of the first fenced code block after the first line containing ``marker``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if marker in line), None)
    if start is None:
        pytest.fail(f"README has no {marker!r} section")
    block: list[str] | None = None
    for line in lines[start + 1 :]:
        if line.strip().startswith("```"):
            if block is None:
                block = []
                continue
            return [b for b in block if b.strip()]
        if block is not None:
            block.append(line.strip())
    pytest.fail(f"README: no fenced code block after {marker!r}")


def _ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_ci_runs_readme_test_command():
    commands = _fenced_block_after((ROOT / "README.md").read_text(), "Run the tests")
    assert len(commands) == 1, f"README test block should hold one command, got {commands}"
    assert commands[0] in _ci_lines(), f".ci/run must run the README test command {commands[0]!r}"


def test_ci_uses_readme_setup():
    commands = _fenced_block_after((ROOT / "README.md").read_text(), "run the main job")
    assert len(commands) == 1, f"README main-job block should hold one command, got {commands}"
    setup = commands[0].split("&&")[0].strip()
    assert setup in _ci_lines(), f".ci/run must set up the way the README does ({setup!r})"


def test_setup_installs_torch_with_pyproject_lower_bound():
    deps = dict(parse_requirement(r) for r in load_pyproject()["project"]["dependencies"])
    text = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r'"(torch[^"]*)"', text)
    assert m, "scripts/setup.sh should install torch explicitly (CPU wheel) before the package"
    _name, specs = parse_requirement(m.group(1))
    lower = [s for s in specs if s[0] == ">="]
    assert lower == deps["torch"], f"setup.sh torch bound {lower} != pyproject {deps['torch']}"
