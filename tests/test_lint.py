"""src/ is ruff-clean and mypy-clean under the settings in pyproject.toml ([tool.ruff], [tool.mypy]).

Both tools run as subprocesses of this interpreter (``python -m ruff`` / ``python -m mypy``) from the
repository root, so they read the project's configuration; the test is skipped (with the reason)
where a tool is not installed (``pip install -e .[lint]``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e .[lint])")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_clean():
    res = _run("ruff", "check", "--no-cache", "src/")
    assert res.returncode == 0, f"ruff check src/ found problems:\n{res.stdout}{res.stderr}"


def test_mypy_clean():
    # mypy's incremental cache (.mypy_cache/, git-ignored) makes reruns take seconds
    res = _run("mypy", "src/vene")
    assert res.returncode == 0, f"mypy src/vene found problems:\n{res.stdout}{res.stderr}"
