"""mkdocs hook: render the jupytext percent-format tutorials (``docs/tutorials/*.py``) as pages.

Each ``NN_name.py`` becomes ``tutorials/NN_name.md``: markdown cells become text, code cells
become Python code blocks, and a note at the top says how to run the file. Nothing is executed
here (``tests/test_tutorials.py`` runs the tutorials); the ``.py`` files are also published as
they are, for download. The pages are appended to the "Tutorials" section of the nav in file
order, after ``tutorials/index.md``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jupytext
from mkdocs.structure.files import File, Files

_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.py$")


def _tutorials(docs_dir: Path) -> list[Path]:
    return sorted(p for p in (docs_dir / "tutorials").glob("*.py") if _NAME.match(p.name))


def _to_markdown(path: Path) -> str:
    nb = jupytext.read(path, fmt="py:percent")
    out: list[str] = []
    for i, cell in enumerate(nb.cells):
        src = cell.source.strip("\n")
        if not src:
            continue
        if cell.cell_type == "markdown":
            out.append(src)
            if i == 0:
                out.append(
                    f'!!! note "Run it"\n    This page is the notebook [`{path.name}`]({path.name}) '
                    "(jupytext percent format: open it as a notebook with jupytext, or run it with "
                    f"`python docs/tutorials/{path.name}`). CI executes it on every change."
                )
        else:
            out.append(f"```python\n{src}\n```")
    return "\n\n".join(out) + "\n"


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"])
    for path in _tutorials(docs_dir):
        uri = f"tutorials/{path.stem}.md"
        files.append(File.generated(config, uri, content=_to_markdown(path)))
    return files


def on_config(config: Any) -> Any:
    docs_dir = Path(config["docs_dir"])
    pages = [f"tutorials/{p.stem}.md" for p in _tutorials(docs_dir)]
    for section in config["nav"] or []:
        if isinstance(section, dict) and "Tutorials" in section:
            section["Tutorials"] = [e for e in section["Tutorials"] if e not in pages] + pages
    return config
