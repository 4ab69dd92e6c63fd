"""Checks of a saved vene artifact before anything is built from it: the config's fields and
types (nothing in it is silently ignored), and sizes against the site on the model (before any
allocation). The tensor checks (NaN/Inf, shapes) live in :mod:`vene.state_io`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import RepresentationConfig, to_representation
from .errors import CorruptArtifactError, SerializationError, did_you_mean
from .state_io import decode_value

CONFIG_NAME = "intervention_config.json"
WEIGHTS_NAME = "interventions.safetensors"
_SITE_FIELDS = [f for f in RepresentationConfig._fields if f not in ("intervention_type", "intervention")]


_TOP_FIELDS = {
    "format_version": int, "library": str, "library_version": (str, type(None)), "base_model": dict,
    "mode": str, "sorted_keys": (list, type(None)), "options": dict, "interventions": list,
    "base_model_params": list, "files": dict,
}
_ENTRY_FIELDS = {
    "key": str, "type": str, "group": int, "resolved": dict, "init": dict, "tensors": list,
    "is_source_constant": (bool, type(None)), "shares_with": (str, type(None)), "site": dict,
}
_OPTION_FIELDS = ("use_fast", "batch_sources", "as_adaptor")


def _check_fields(obj: dict, fields: dict, where: str, path: str) -> None:
    for name, value in obj.items():
        if name not in fields:
            raise SerializationError(
                f"{path!r}: unknown field {name!r} in {where}.{did_you_mean(name, fields)} Known fields: "
                f"{', '.join(sorted(fields))}. A newer vene may have written it (upgrade vene), or the "
                "file was edited by hand."
            )
        want = fields[name]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise SerializationError(f"{path!r}: field {name!r} of {where} must be {names}, got {value!r:.80}.")


def check_schema(config: dict[str, Any], path: str = CONFIG_NAME) -> None:
    """Refuse unknown or mistyped fields in a vene config (nothing in it is silently ignored)."""
    _check_fields(config, _TOP_FIELDS, "the config", path)
    if config.get("mode", "parallel") not in ("parallel", "serial"):
        raise SerializationError(f"{path!r}: mode must be 'parallel' or 'serial', got {config['mode']!r}.")
    unknown = [k for k in config.get("options") or {} if k not in _OPTION_FIELDS]
    if unknown:
        raise SerializationError(f"{path!r}: unknown option {unknown[0]!r}; known options: {', '.join(_OPTION_FIELDS)}.")
    for i, e in enumerate(config.get("interventions") or []):
        if not isinstance(e, dict):
            raise SerializationError(f"{path!r}: intervention {i} is not an object.")
        _check_fields(e, _ENTRY_FIELDS, f"intervention {i}", path)
        bad = [f for f in e.get("site") or {} if f not in _SITE_FIELDS]
        if bad:
            raise SerializationError(
                f"{path!r}: intervention {i} has unknown site field {bad[0]!r}.{did_you_mean(bad[0], _SITE_FIELDS)}"
            )
        if not all(isinstance(t, str) for t in e.get("tensors") or []):
            raise SerializationError(f"{path!r}: the tensor names of intervention {i} must be strings.")
    files = config.get("files") or {}
    for name, info in files.items():
        if name != WEIGHTS_NAME or not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise SerializationError(f"{path!r}: 'files' must map {WEIGHTS_NAME!r} to {{'sha256': <hex>, 'bytes': <int>}}.")



def precheck_size(entry: dict[str, Any], model: nn.Module, kw: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Check the saved sizes against the site on ``model`` before the constructor allocates."""
    from .components import resolve_site
    from .errors import VeneError
    from .locations import MAX_UNITS, unit_axis_size

    key = entry["key"]
    fields = {f: decode_value(v, tensors, key) for f, v in (entry.get("site") or {}).items()}
    try:
        rep = to_representation(fields, 0)
        site = resolve_site(model, rep.component, rep.layer, rep.moe_key)
    except VeneError as err:
        raise SerializationError(f"{key}: the saved site does not exist on this model: {err}") from None
    saved = (entry.get("resolved") or {}).get("dim")
    if isinstance(saved, int) and site.dim is not None and saved != site.dim:
        raise SerializationError(
            f"{key} was saved for a site {saved} features wide; on this model {site.describe()} is "
            f"{site.dim} wide (shape mismatch: another model size?)."
        )
    embed = kw.get("embed_dim")
    if site.dim is None or embed is None:
        return
    if not isinstance(embed, int) or isinstance(embed, bool) or embed < 1:
        raise CorruptArtifactError(f"{key}: the saved embed_dim {embed!r:.40} is not a positive int.")
    size, axis = unit_axis_size(rep.unit, site, model)
    units, rest = divmod(embed, site.dim)
    if rest or units > (size or MAX_UNITS):
        raise CorruptArtifactError(
            f"{key}: the saved embed_dim {embed} does not fit {site.describe()}: it must be a multiple of the "
            f"unit size {site.dim}, at most {site.dim} x {size or MAX_UNITS} {axis if size else 'units'}."
        )


def check_source_width(iv: nn.Module, key: str, site_dim: int | None, src: Any = None) -> None:
    """A constant source (``src``, default: the one ``iv`` holds) must have the feature size of the
    site (or of the whole intervention)."""
    src = getattr(iv, "source_representation", None) if src is None else src
    if not isinstance(src, torch.Tensor) or site_dim is None:
        return
    embed_dim = getattr(iv, "embed_dim", None)
    widths = {site_dim} | ({int(embed_dim)} if embed_dim is not None else set())
    if src.dim() == 0 or src.shape[-1] not in widths:
        raise CorruptArtifactError(
            f"{key}: the saved constant source has shape {tuple(src.shape)}, but the site's features are "
            f"{site_dim} wide; it was saved for another model, or is damaged."
        )
