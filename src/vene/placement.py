"""Device and dtype placement of interventions (sharded, offloaded and half-precision models).

At construction :class:`~vene.IntervenableModel` puts each intervention on the device its site's
module *runs on* and (by default) in that module's floating dtype:

* the execution device: accelerate's hook on the module or its nearest ancestor
  (``dispatch_model``, ``from_pretrained(device_map=...)``: a cpu- or disk-offloaded layer runs on
  its hook's ``execution_device`` while its weights live elsewhere or on ``meta``), else a hooked
  submodule's, else the device of the first real (non-``meta``) parameter or buffer of the module,
  then of its ancestors;
* the dtype: the floating dtype of the module's parameters (its ancestors' for a module without
  any), except for orthogonally parametrised rotations (DAS: rotated, low-rank, boundless,
  sigmoid-mask rotated spaces), which keep float32: in half precision the parametrisation drifts
  from orthogonal (max |RRᵀ - I| ~ 1e-2 in bf16) and the low-rank one (Householder) has no bf16
  kernel on CPU. ``intervention_dtype`` names one dtype for every tensor of every intervention
  instead. The built-in interventions cast their input to their weights' dtype and their result
  back, so values are cast at the site.

At call time :func:`intervention_device` tells the op whether an intervention's weights are on
another device than the activation it is handed (an input site of a layer on the next GPU, a
model moved after wrapping); the op then moves the values to the intervention and the result
back, and warns once (:func:`warn_moved`).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_META = torch.device("meta")


def _as_device(value: Any) -> torch.device | None:
    if value is None:
        return None
    try:
        return value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError):
        return None


def hook_device(module: nn.Module) -> torch.device | None:
    """The ``execution_device`` of accelerate's hook on ``module`` (None: no such hook)."""
    hook = module.__dict__.get("_hf_hook")
    if hook is None:
        return None
    for h in [hook, *getattr(hook, "hooks", ())]:  # a SequentialHook holds several
        dev = _as_device(getattr(h, "execution_device", None))
        if dev is not None:
            return dev
    return None


def _first_real(module: nn.Module, recurse: bool = True) -> torch.Tensor | None:
    for p in module.parameters(recurse=recurse):
        if p.device != _META:
            return p
    for b in module.buffers(recurse=recurse):
        if b.device != _META and b.is_floating_point():
            return b
    return None


def _chain(model: nn.Module, path: str) -> list[nn.Module]:
    """The modules from ``model`` down to the one at ``path`` (dotted, as ``named_modules``)."""
    from .components import get_module

    parts = path.split(".") if path else []
    return [model] + [get_module(model, ".".join(parts[: i + 1])) for i in range(len(parts))]


def site_device(model: nn.Module, path: str) -> torch.device | None:
    """The device the module at ``path`` computes on (see the module docstring); ``meta`` when
    the model is not loaded, None when nothing tells."""
    chain = _chain(model, path)
    for m in reversed(chain):
        dev = hook_device(m)
        if dev is not None:
            return dev
    for m in chain[-1].modules():
        dev = hook_device(m)
        if dev is not None:
            return dev
    for m in reversed(chain):  # the nearest module with parameters: where they are
        seen = False
        for p in m.parameters():
            if p.device != _META:
                return p.device
            seen = True
        if seen:
            return _META  # all on meta and no hook: not loaded
    for m in reversed(chain):
        t = _first_real(m)
        if t is not None:
            return t.device
    return None


def site_dtype(model: nn.Module, path: str) -> torch.dtype | None:
    """The floating dtype of the parameters of the module at ``path`` (or of its nearest
    ancestor that has floating parameters); None when there are none."""
    for m in reversed(_chain(model, path)):
        for p in m.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def place(intervention: nn.Module, device: torch.device | None, dtype: torch.dtype | None,
          keep_parametrized: bool = False) -> None:
    """Move ``intervention``'s tensors to ``device`` and its floating parameters and buffers to
    ``dtype`` (None: leave as is). Buffers named in the class's ``exact_buffers`` keep their dtype
    (e.g. the integer positions of the boundless mask, not representable in bf16). With
    ``keep_parametrized``, parametrised submodules (the orthogonal rotations of DAS) keep theirs."""
    if device is not None and device != _META:
        intervention.to(device)
    if dtype is None:
        return
    skip: set[int] = set()
    if keep_parametrized:
        from torch.nn.utils import parametrize

        for m in intervention.modules():
            if parametrize.is_parametrized(m):
                skip.update(id(sub) for sub in m.modules())
    for m in intervention.modules():
        if id(m) in skip:
            continue
        keep = set(getattr(type(m), "exact_buffers", ()))
        for p in m._parameters.values():
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype and name not in keep:
                m._buffers[name] = b.to(dtype)
    intervention.__dict__.pop("_vene_anchor", None)


def intervention_device(intervention: nn.Module) -> torch.device | None:
    """The device of ``intervention``'s first floating parameter (else buffer); None when it has
    none (it then computes wherever its input is). Cheap per call: the owning dict and name are
    found once and looked up each time, so ``.to()`` and ``load_state_dict(assign=True)`` are seen."""
    anchor = intervention.__dict__.get("_vene_anchor")
    if anchor is None:
        anchor = _find_anchor(intervention)
        intervention.__dict__["_vene_anchor"] = anchor
    if anchor is False:
        return None
    store, name = anchor
    t = store.get(name)
    if t is None:  # removed since: look again
        intervention.__dict__.pop("_vene_anchor", None)
        return intervention_device(intervention)
    return t.device


def _find_anchor(intervention: nn.Module) -> Any:
    for kind in ("_parameters", "_buffers"):
        for m in intervention.modules():
            store = getattr(m, kind)
            for name, t in store.items():
                if t is not None and t.is_floating_point():
                    return (store, name)
    return False


def warn_moved(intervention: nn.Module, key: str, there: torch.device, here: torch.device) -> None:
    """Warn once per intervention and device pair that values cross devices at its site."""
    seen = intervention.__dict__.setdefault("_vene_moved", set())
    pair = (str(there), str(here))
    if pair in seen:
        return
    seen.add(pair)
    msg = (
        f"{key}: the intervention's weights are on {there} but the activations at its site are on "
        f"{here}; vene moves the values to {there} and the result back on every call. To avoid the "
        f"copies, move the intervention: pv_model.interventions[{key!r}].to({str(here)!r})."
    )
    logger.info(msg)
    warnings.warn(msg, stacklevel=3)


def real_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>``, read from accelerate's offload store when it sits on ``meta`` (a disk-
    or cpu-offloaded weight); None when it cannot be read."""
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor) or t.device != _META:
        return t
    store = getattr(module.__dict__.get("_hf_hook"), "weights_map", None)
    try:
        return store[name] if store is not None else None
    except (KeyError, TypeError):
        return None


def model_device(model: nn.Module) -> torch.device:
    """Where a model takes its inputs: accelerate's main execution device for a dispatched model
    (``hf_device_map``), else its first real parameter's device, else cpu."""
    dev = hook_device(model)
    if dev is not None:
        return dev
    dmap = getattr(model, "hf_device_map", None)
    if isinstance(dmap, dict):
        for where in dmap.values():
            if where not in ("cpu", "disk"):
                return _as_device(where) or torch.device("cpu")
        return torch.device("cpu")
    t = _first_real(model)
    return t.device if t is not None else torch.device("cpu")


def placement_report(intervenable: Any) -> dict[str, tuple[str, str]]:
    """``{key: (device, dtype)}`` of each intervention's first floating tensor (``("-", "-")``
    when it has none): what :class:`~vene.IntervenableModel` placed where."""
    out = {}
    for key in intervenable.sorted_keys:
        iv = intervenable.interventions[key]
        anchor = _find_anchor(iv)
        if anchor is False:
            out[key] = ("-", "-")
        else:
            t = anchor[0][anchor[1]]
            out[key] = (str(t.device), str(t.dtype).replace("torch.", ""))
    return out
