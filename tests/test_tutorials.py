"""Every tutorial under ``docs/tutorials/`` runs to the end, on its own, offline.

The tutorials are jupytext percent-format files, i.e. plain Python: each one is run as a script
in a fresh process (as a reader would run it), from an empty working directory, and must exit 0.
They check their own claims with ``assert``. Marked ``tutorials`` (and ``slow``, so a plain
``pytest`` skips them; ``scripts/test.sh`` runs ``-m ""``, which includes them). Run only these
with ``pytest -m tutorials tests/test_tutorials.py``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_exist_and_are_jupytext_percent_notebooks():
    assert len(TUTORIALS) >= 15, [p.name for p in TUTORIALS]
    for path in TUTORIALS:
        text = path.read_text(encoding="utf-8")
        assert re.match(r'^# ---\n# jupyter:\n', text), f"{path.name}: no jupytext header"
        assert "format_name: percent" in text, f"{path.name}: not in jupytext's percent format"
        assert re.search(r"^# %% \[markdown\]\n# # ", text, flags=re.MULTILINE), f"{path.name}: no title cell"


def test_every_tutorial_is_listed_on_the_index_page():
    index = (ROOT / "docs" / "tutorials" / "index.md").read_text(encoding="utf-8")
    missing = [p.name for p in TUTORIALS if f"]({p.stem}.md)" not in index]
    assert not missing, f"docs/tutorials/index.md does not link {missing}"


def test_tutorials_open_as_notebooks():
    jupytext = pytest.importorskip("jupytext", reason="the docs extra (vene[docs]) is not installed")
    for path in TUTORIALS:
        nb = jupytext.read(path)
        kinds = [c.cell_type for c in nb.cells]
        assert kinds[0] == "markdown" and "code" in kinds, f"{path.name}: cells {kinds[:5]}"


@pytest.mark.slow
@pytest.mark.tutorials
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=900, check=False)
    took = time.perf_counter() - start
    assert r.returncode == 0, f"{path.name} failed after {took:.1f} s:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    print(f"{path.name}: {took:.1f} s")
