"""Reading directories written by pyvene: ``config.json`` + ``intkey_<key>.bin`` (+ ``pytorch_model.bin``).

pyvene stores each site as a positional array of RepresentationConfig fields and each type as a
class-path string (``"<class 'pyvene.models.interventions.RotatedSpaceIntervention'>"``). Here a
type resolves by its class name through vene's registry; nothing named in the file is imported.
Tensor files are read with ``torch.load(weights_only=True)``, so a pickle that would run code is
refused. As in pyvene, a trainable intervention gets its whole state dict back, a constant-source
one its ``source_representation``; ``intervention_dimensions`` and
``intervention_constant_sources`` restore ``interchange_dim`` and ``is_source_constant``. A class
whose parameter names differ from pyvene's may define ``convert_pyvene_state_dict(state) -> state``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .artifact_checks import check_source_width
from .config import IntervenableConfig, RepresentationConfig, to_representation
from .errors import ConfigError, SerializationError
from .interventions import TrainableIntervention, get_intervention_class
from .state_io import check_tensor_dict, device_of, restore_state, safe_torch_load

CONFIG_NAME = "config.json"
MODEL_NAME = "pytorch_model.bin"


def _representations(config: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, raw in enumerate(config["representations"]):
        if isinstance(raw, (list, tuple)):
            if len(raw) > len(RepresentationConfig._fields):
                raise SerializationError(f"pyvene representation {i} has {len(raw)} fields; expected at most 14.")
            raw = dict(zip(RepresentationConfig._fields, raw))
        elif not isinstance(raw, dict):
            raise SerializationError(f"pyvene representation {i} is neither a list nor an object.")
        unknown = [k for k in raw if k not in RepresentationConfig._fields]
        if unknown:
            warnings.warn(f"pyvene representation {i}: unknown fields {unknown} dropped.", UserWarning, stacklevel=4)
        out.append({k: v for k, v in raw.items() if k in RepresentationConfig._fields})
    return out


def build(directory: str, config: dict[str, Any], model: nn.Module, kwargs: dict) -> tuple[Any, list[Callable]]:
    """An IntervenableModel from a pyvene directory, plus the state loads still to apply."""
    from .model import IntervenableModel

    reps = _representations(config)
    types_ = config["intervention_types"]
    types_ = [types_] * len(reps) if isinstance(types_, str) else list(types_)
    if len(types_) != len(reps):
        raise SerializationError(f"pyvene config has {len(types_)} intervention_types for {len(reps)} representations.")
    classes = [get_intervention_class(str(t)) for t in types_]  # registry only: never imported
    sites = []
    for i, (rep, cls) in enumerate(zip(reps, classes)):
        rep = dict(rep, intervention_type=cls, intervention=None, source_representation=None)
        try:
            sites.append(to_representation(rep, i))
        except ConfigError as err:
            raise SerializationError(f"pyvene representation {i} is invalid: {err}") from None
    try:
        im = IntervenableModel(IntervenableConfig(sites, mode=config.get("mode", "parallel"),
                                                  sorted_keys=config.get("sorted_keys")), model, **kwargs)
    except ConfigError as err:
        raise SerializationError(f"The pyvene interventions do not fit this model: {err}") from err
    return im, state_loads(directory, config, im)


def state_loads(directory: str, config: dict[str, Any], im: Any) -> list[Callable[[], None]]:
    """Validate the saved state of every key of ``im`` now; return the functions that apply it."""
    keys = sorted(im._specs, key=lambda k: im._specs[k].index)
    dims = list(config.get("intervention_dimensions") or [None] * len(keys))
    consts = list(config.get("intervention_constant_sources") or [None] * len(keys))
    loads: list[Callable[[], None]] = []
    done: set[int] = set()
    for i, key in enumerate(keys):
        iv = im.interventions[key]
        if id(iv) in done:  # linked: pyvene wrote one copy per key; the first one wins
            continue
        done.add(id(iv))
        dev = device_of(iv, im.get_device())
        path = os.path.join(directory, f"intkey_{key}.bin")
        if not os.path.isfile(path):
            if im.representations[key].hidden_source_representation:
                raise SerializationError(f"{key} had a constant source, but {os.path.basename(path)} is missing from {directory!r}.")
            if isinstance(iv, TrainableIntervention):
                # pyvene writes one for every trainable intervention: without it the weights would
                # be a fresh random initialisation
                raise SerializationError(
                    f"{key} is a trainable {type(iv).__name__}, but its weights file {os.path.basename(path)} "
                    f"is missing from {directory!r}; loading would silently use freshly initialised "
                    "(random) weights. Copy the file back, or build the intervention anew if that is what you want."
                )
        state = check_tensor_dict(safe_torch_load(path), path) if os.path.isfile(path) else {}
        convert = getattr(iv, "convert_pyvene_state_dict", None)
        if callable(convert):
            state = dict(convert(state))
        src = state.pop("source_representation", None)
        if src is not None:
            check_source_width(iv, key, im._specs[key].site.dim, src)
        if not isinstance(iv, TrainableIntervention):
            state = {}
        elif state:
            restore_state(iv, state, key, dev, apply=False, cast=True)
        dim = dims[i] if i < len(dims) else None
        const = consts[i] if i < len(consts) else None

        def load(iv=iv, state=state, src=src, dim=dim, const=const, key=key, dev=dev) -> None:
            if dim is not None and hasattr(iv, "set_interchange_dim"):
                iv.set_interchange_dim(dim)
            if src is not None:
                iv.set_source_representation(src.to(dev).clone())
            if state:
                restore_state(iv, state, key, dev, apply=True, cast=True)
            if const is not None:
                iv.is_source_constant = bool(const)
        loads.append(load)
    return loads


def model_state(directory: str) -> dict[str, torch.Tensor]:
    """The base-model weights pyvene saved with ``include_model=True`` (empty when none)."""
    path = os.path.join(directory, MODEL_NAME)
    if not os.path.isfile(path):
        return {}
    return check_tensor_dict(safe_torch_load(path), path)
