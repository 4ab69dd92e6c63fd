"""The README's Python snippets run on their own, as written, and print what they say."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
#: What each snippet must print (a substring of its output per line it promises).
EXPECTED = [
    ["' Madrid' -> ' Rome'"],
    ["p_clean = 0.70", "torch.Size([30, 10])", "metric logit(Paris) - logit(Rome): clean 2.8", "torch.Size([6, 9])"],
    ["True"],
]


def test_every_snippet_has_expectations():
    assert len(SNIPPETS) == len(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("k", range(len(EXPECTED)))
def test_readme_snippet_runs_alone(k, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", SNIPPETS[k]], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    for want in EXPECTED[k]:
        assert want in r.stdout, f"snippet {k} did not print {want!r}:\n{r.stdout}"
