"""The Hugging Face Hub: push a saved directory as one commit, resolve a repo id or a local path.

* :func:`push_folder`: ``HfApi.create_repo(exist_ok=True)`` then **one** ``upload_folder`` commit of
  the artifact files. Errors from the Hub propagate unchanged.
* :func:`resolve_artifact`: an existing local directory is used as is; an explicit local path
  (``./x``, ``../x``, ``/x``, ``~/x``, ``C:\\x``, or more than one ``/``) that does not exist is an
  error, never a download; anything else is a repo id fetched with ``snapshot_download`` (only the
  artifact files), which honours ``HF_HUB_OFFLINE`` and the local cache.
* :func:`render_model_card`: the README written next to every saved artifact.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
from typing import Any

from .errors import ArtifactNotFoundError, SerializationError, UnsafeArtifactError

logger = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_explicit_local_path(path: str) -> bool:
    """True when ``path`` can only mean a local path (never a Hub repo id)."""
    return (
        path in (".", "..", "~")
        or path.startswith(("./", "../", "/", "~", ".\\", "..\\", "\\"))
        or bool(_DRIVE.match(path))
        or path.count("/") > 1
        or "\\" in path
        or os.path.isabs(path)
    )


def check_contained(directory: str) -> None:
    """Refuse a local artifact folder whose files are symlinks to somewhere outside it.

    Loading reads the artifact's files only; a link out of the folder (``intkey_x.bin ->
    /home/me/.ssh/...``) would make a downloaded folder read, or a crafted one substitute, files
    chosen by whoever made it. Links between files inside the folder are fine, and so are a Hub cache
    snapshot's links into its own ``blobs/``."""
    root = os.path.realpath(directory)
    allowed = [root]
    snapshots = os.path.dirname(root)
    if os.path.basename(snapshots) == "snapshots":  # a Hub cache snapshot links into its blobs/
        allowed.append(os.path.join(os.path.dirname(snapshots), "blobs"))
    for name in sorted(os.listdir(directory)):
        if not any(fnmatch.fnmatchcase(name, p) for p in _artifact_patterns(True)):
            continue
        path = os.path.join(directory, name)
        if not os.path.islink(path):
            continue
        target = os.path.realpath(path)
        if not any(os.path.commonpath([a, target]) == a for a in allowed):
            raise UnsafeArtifactError(
                f"{path!r} is a symlink to {target!r}, outside the artifact folder {root!r}; refusing to "
                "follow it. Copy the file into the folder if you trust it."
            )


def _artifact_patterns(include_model: bool) -> list[str]:
    from .serialization import ARTIFACT_FILES, PYVENE_CONFIG_NAME, PYVENE_MODEL_NAME

    patterns = [*ARTIFACT_FILES, PYVENE_CONFIG_NAME, "intkey_*.bin"]
    return patterns + [PYVENE_MODEL_NAME] if include_model else patterns


def resolve_artifact(
    path_or_repo_id: Any,
    *,
    revision: str | None = None,
    token: Any = None,
    cache_dir: Any = None,
    local_files_only: bool = False,
    local_dir: Any = None,
    force_hub: bool = False,
    include_model: bool = True,
) -> str:
    """A local directory holding the artifact named by ``path_or_repo_id``."""
    raw = os.fspath(path_or_repo_id)
    if not isinstance(raw, str) or not raw:
        raise ArtifactNotFoundError(f"Expected a directory or a Hub repo id, got {path_or_repo_id!r}.")
    expanded = os.path.expanduser(raw)
    if not force_hub:
        if os.path.isdir(expanded):
            check_contained(expanded)
            return expanded
        if os.path.exists(expanded):
            raise SerializationError(f"{raw!r} is a file; give the directory that holds the saved interventions.")
        if is_explicit_local_path(raw):
            raise ArtifactNotFoundError(
                f"The local directory {raw!r} does not exist (resolved to {os.path.abspath(expanded)!r}). "
                "It is not treated as a Hub repo id because it is written as a path."
            )
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError, validate_repo_id

    try:
        validate_repo_id(raw)
    except HFValidationError as e:
        raise ArtifactNotFoundError(
            f"{raw!r} is neither an existing local directory nor a valid Hub repo id ('user/name'): {e}"
        ) from None
    logger.info("Fetching %s (revision %s) from the Hugging Face Hub", raw, revision or "main")
    try:
        return snapshot_download(
            repo_id=raw,
            repo_type="model",
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_dir=local_dir,
            local_files_only=local_files_only,
            allow_patterns=_artifact_patterns(include_model),
            library_name="vene",
        )
    except LocalEntryNotFoundError as e:
        raise ArtifactNotFoundError(
            f"{raw!r} is not a local directory, and the Hub repo {raw!r} is not in the local cache while "
            f"downloads are off (offline mode or local_files_only=True): {e}"
        ) from e


def push_folder(
    folder: str,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload vene interventions",
    token: Any = None,
    create_pr: bool = False,
) -> Any:
    """Push the artifact files of ``folder`` to ``repo_id`` in one commit; returns its ``CommitInfo``."""
    from huggingface_hub import HfApi

    from .serialization import ARTIFACT_FILES

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=list(ARTIFACT_FILES),
        create_pr=create_pr,
    )


def _yaml_front_matter(data: dict[str, Any]) -> str:
    try:
        from huggingface_hub import ModelCardData

        return ModelCardData(**data).to_yaml()
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        import json

        lines = []
        for k, v in data.items():
            if isinstance(v, list):
                lines.append(f"{k}:")
                lines.extend(f"- {json.dumps(x)}" for x in v)
            else:
                lines.append(f"{k}: {json.dumps(v)}")
        return "\n".join(lines)


def render_model_card(config: dict[str, Any]) -> str:
    """A model card (README.md) for a saved artifact, from its ``intervention_config.json``."""
    base = config.get("base_model") or {}
    types_ = sorted({e["type"] for e in config.get("interventions", [])})
    data: dict[str, Any] = {"library_name": "vene", "tags": ["vene", "interventions", *types_]}
    name = base.get("name_or_path")
    if name and not os.path.isabs(name) and not name.startswith((".", "~")):
        data["base_model"] = name
    rows = []
    for e in config.get("interventions", []):
        site, res = e.get("site") or {}, e.get("resolved") or {}
        shared = f" (linked to `{e['shares_with']}`)" if e.get("shares_with") else ""
        rows.append(f"| `{e['key']}` | {e['type']}{shared} | {site.get('component')} | {site.get('layer')} | "
                    f"{site.get('unit')} | `{res.get('module_path') or '<model>'}.{res.get('io')}` |")
    model_desc = name or base.get("class_name") or "a PyTorch model"
    body = [
        f"# Interventions on {model_desc}",
        "",
        f"Saved with vene {config.get('library_version')} (format version {config.get('format_version')}); "
        f"mode `{config.get('mode')}`, base model class `{base.get('class_name')}`"
        + (f" (`{base.get('model_type')}`)" if base.get("model_type") else "") + ".",
        "",
        "| key | type | component | layer | unit | module |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## Usage",
        "",
        "```python",
        "import vene as pv",
        "",
        "model = ...  # the base model these interventions were trained on",
        'intervenable = pv.IntervenableModel.from_pretrained(model, "<this repo id or directory>")',
        "```",
        "",
        "Files: `intervention_config.json` (description), `interventions.safetensors` (tensors).",
        "",
    ]
    return "---\n" + _yaml_front_matter(data).strip() + "\n---\n\n" + "\n".join(body)
