"""``mkdocs build --strict`` succeeds (any warning fails it: a broken link, a docstring
mkdocstrings cannot render, a tutorial that does not convert), and the site has the rendered
tutorials and the API reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (vene[docs]) is not installed")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("jupytext")
    site = tmp_path / "site"
    env = {**os.environ, "VENE_VENV": str(Path(sys.executable).parents[1]), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "docs.sh"), "--site-dir", str(site)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    tutorials = sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))
    assert tutorials
    for path in tutorials:
        page = site / "tutorials" / path.stem / "index.html"
        assert page.exists(), f"{path.name} was not rendered"
        assert (site / "tutorials" / path.name).exists(), f"{path.name} is not published for download"
    api = (site / "api" / "model" / "index.html").read_text(encoding="utf-8")
    assert "IntervenableModel" in api and "unit_locations" in api
    assert "UnknownKeywordError" in (site / "api" / "errors" / "index.html").read_text(encoding="utf-8")


def test_package_ships_py_typed():
    assert (ROOT / "src" / "vene" / "py.typed").exists()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[tool.setuptools.package-data]\nvene = ["py.typed"]' in pyproject


@pytest.mark.slow
@pytest.mark.tutorials
def test_executed_rendering_shows_printed_output(monkeypatch):
    """``VENE_DOCS_EXECUTE=1``: the hook runs a notebook with nbclient and puts what it printed
    (stdout only, not warnings) under the cell that printed it."""
    pytest.importorskip("nbclient", reason="the docs extra (vene[docs]) is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("tutorials_hook", ROOT / "docs" / "_hooks" / "tutorials.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    md = hook._to_markdown(ROOT / "docs" / "tutorials" / "07_recurrent_models.py", execute=True)
    printed = md.split('print("steps changed:"', 1)[1]
    assert printed.split("```text\n", 1)[1].startswith("steps changed: [3, 4, 5, 6, 7]\n")
    assert "TqdmWarning" not in md
    plain = hook._to_markdown(ROOT / "docs" / "tutorials" / "07_recurrent_models.py", execute=False)
    assert "```text" not in plain
