"""scripts/setup.sh: where torch comes from (the default, or PyTorch's CPU wheel index through
TORCH_INDEX_URL), run against a stand-in virtual environment that records every pip call."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls.log"
"""


def run_setup(tmp_path: Path, **env: str) -> list[str]:
    """Run a copy of setup.sh in ``tmp_path`` whose .venv/bin/python only logs its arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"} | env
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    return (python.parent / "calls.log").read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_default_installs_torch_from_the_usual_index(tmp_path):
    calls = run_setup(tmp_path)
    torch = [c for c in calls if "torch>=" in c]
    assert torch == ["-m pip install --quiet torch>=2.2,<2.14"]
    assert calls[-1] == "-m pip install --quiet -e .[dev]"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_torch_index_url_selects_the_cpu_wheel_index_for_torch_only(tmp_path):
    url = "https://download.pytorch.org/whl/cpu"
    calls = run_setup(tmp_path, TORCH_INDEX_URL=url)
    torch = [c for c in calls if "torch>=" in c]
    assert torch == [f"-m pip install --quiet --index-url {url} torch>=2.2,<2.14"]
    assert calls[-1] == "-m pip install --quiet -e .[dev]"  # the package: the usual index
