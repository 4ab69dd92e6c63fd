"""mkdocs hook: render the jupytext percent-format tutorials (``docs/tutorials/*.py``) as pages.

Each ``NN_name.py`` becomes ``tutorials/NN_name.md``: markdown cells become text, code cells
become Python code blocks, and a note at the top says how to run the file. By default nothing is
executed (``tests/test_tutorials.py`` runs the tutorials in CI, so the build stays fast and
offline); with ``VENE_DOCS_EXECUTE=1`` each notebook is executed with nbclient first and its
text outputs are shown under the cells (a build for publishing). The ``.py`` files are also
published as they are, for download. The pages are appended to the "Tutorials" section of the
nav in file order, after ``tutorials/index.md``.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jupytext
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.tutorials")
_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.py$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tutorials(docs_dir: Path) -> list[Path]:
    return sorted(p for p in (docs_dir / "tutorials").glob("*.py") if _NAME.match(p.name))


def _execute(nb: Any, path: Path) -> None:
    from nbclient import NotebookClient

    env_path = os.environ.get("PYTHONPATH", "")
    src = str(path.parents[2] / "src")
    if src not in env_path.split(os.pathsep):
        os.environ["PYTHONPATH"] = src + (os.pathsep + env_path if env_path else "")
    os.environ.setdefault("MPLBACKEND", "Agg")
    log.info("executing %s", path.name)
    with tempfile.TemporaryDirectory() as cwd:  # files a tutorial writes stay out of docs/
        NotebookClient(nb, kernel_name="python3", timeout=900,
                       resources={"metadata": {"path": cwd}}).execute()


def _outputs(cell: Any) -> str:
    text: list[str] = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":  # not warnings
            text.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            plain = out.get("data", {}).get("text/plain")
            if plain:
                text.append(plain if plain.endswith("\n") else plain + "\n")
    body = _ANSI.sub("", "".join(text)).rstrip("\n")
    return f"```text\n{body}\n```" if body else ""


def _to_markdown(path: Path, execute: bool) -> str:
    nb = jupytext.read(path, fmt="py:percent")
    if execute:
        _execute(nb, path)
    out: list[str] = []
    for i, cell in enumerate(nb.cells):
        src = cell.source.strip("\n")
        if not src:
            continue
        if cell.cell_type == "markdown":
            out.append(src)
            if i == 0:
                ran = " The outputs shown were produced when these pages were built." if execute else ""
                out.append(
                    f'!!! note "Run it"\n    This page is the notebook [`{path.name}`]({path.name}) '
                    "(jupytext percent format: open it as a notebook with jupytext, or run it with "
                    f"`python docs/tutorials/{path.name}`). CI executes it on every change.{ran}"
                )
        else:
            out.append(f"```python\n{src}\n```")
            shown = _outputs(cell) if execute else ""
            if shown:
                out.append(shown)
    return "\n\n".join(out) + "\n"


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"])
    execute = os.environ.get("VENE_DOCS_EXECUTE", "") not in ("", "0")
    for path in _tutorials(docs_dir):
        uri = f"tutorials/{path.stem}.md"
        files.append(File.generated(config, uri, content=_to_markdown(path, execute)))
    return files


def on_config(config: Any) -> Any:
    docs_dir = Path(config["docs_dir"])
    pages = [f"tutorials/{p.stem}.md" for p in _tutorials(docs_dir)]
    for section in config["nav"] or []:
        if isinstance(section, dict) and "Tutorials" in section:
            section["Tutorials"] = [e for e in section["Tutorials"] if e not in pages] + pages
    return config
