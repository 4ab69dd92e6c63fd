"""Many calls as one: hand vene a list of intervention calls and it runs them as one sweep.

pyvene-style code often loops over configurations -- one ``IntervenableModel`` per layer, the
same corrupted base and clean source every time -- and reads the last-position logits of each
call. Written as a list of :class:`Call` s, the same loop runs on the layer-stepped sweep engine
of :mod:`vene.analysis.sweep`: the clean and corrupted runs are recorded once, and each call
resumes from the recorded corrupted state at the first layer it patches, computing only the
positions from the first patched token on::

    calls = [pv.Call({"layer": l, "component": "block_output"}, corrupt, [clean], {"sources->base": 3})
             for l in range(n_layers)]
    logits = pv.run_calls(model, calls).logits      # (n_calls, batch, vocab)

A call runs on the sweep when it is a plain interchange: every intervention of its config is a
:class:`~vene.interventions.VanillaIntervention` (the default) on a named component, in parallel
mode, without subspaces, with ``"pos"`` units (``"h.pos"`` for ``head_*`` components), reading the
same positions from the source that it writes in the base, the same positions in every example,
and the model returns ``(batch, seq, vocab)`` logits. Calls sharing the same base and source
tensors share one sweep. Any other call runs as an ordinary forward call (sources still reused
across calls, see :mod:`vene.reuse`); a warning names the reason, and :attr:`CallsResult.modes`
records how each call ran.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


class CallFallbackWarning(UserWarning):
    """A call given to :func:`run_calls` runs as an ordinary forward call; the message says why."""


@dataclass
class Call:
    """One intervention call: ``IntervenableModel(config, model)(base, sources, unit_locations)``."""

    config: Any
    base: Mapping
    sources: Any = None
    unit_locations: Any = None


@dataclass
class CallsResult:
    """What :func:`run_calls` returns. ``logits[i]``: the last-position logits of call ``i``'s
    intervened output ``(batch, vocab)``; ``modes[i]``: how it ran ("sweep:step+prefix",
    "sweep:step", "sweep:forward" or "forward"); ``reasons[i]``: why a call did not run on the
    sweep (None when it did)."""

    logits: torch.Tensor
    modes: list[str] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return self.logits.shape[0]

    def __getitem__(self, i: Any) -> torch.Tensor:
        return self.logits[i]


def _single_source(call: Call) -> Mapping | None:
    srcs = call.sources
    if srcs is None:
        return None
    if isinstance(srcs, Mapping):
        return srcs
    srcs = list(srcs)
    if not srcs or any(s is not srcs[0] for s in srcs):
        return None
    return srcs[0]


def _same_positions(loc: Any) -> list[int] | None:
    if loc is None:
        return None
    idx = loc.idx
    if idx.dim() != 2 or not bool((idx == idx[:1]).all()):
        return None
    return idx[0].tolist()


def _cell(pvm: Any, call: Call, site_index: dict) -> tuple[list | None, str | None]:
    """The sweep patches of one call, or ``(None, reason)``."""
    from .analysis.cells import Patch
    from .interventions import VanillaIntervention

    if pvm.mode != "parallel":
        return None, f"mode {pvm.mode!r} (only parallel calls are swept)"
    src = _single_source(call)
    if src is None:
        return None, "it has no single shared source (one dict, or the same dict for every group)"
    for key in (set(call.base) | set(src)):
        if key not in ("input_ids", "attention_mask"):
            return None, f"its inputs have {key!r} (sweeps take input_ids and attention_mask)"
    plan = pvm.plan_call(call.base, call.sources, call.unit_locations)
    patches: list[Patch] = []
    for k in plan.keys:
        spec = k.spec
        rep = pvm.representations[spec.key]
        if type(spec.intervention) is not VanillaIntervention:
            return None, f"{spec.key} is a {type(spec.intervention).__name__} (only plain interchanges are swept)"
        if "." in rep.component or rep.moe_key is not None:
            return None, f"{spec.key} names a module path or an expert (only named components are swept)"
        if k.subspaces is not None or rep.subspace_partition is not None:
            return None, f"{spec.key} has subspaces"
        if not k.needs_getter:
            return None, f"{spec.key} reads no source"
        if k.target != plan.n_groups:
            return None, f"{spec.key} does not write into the base"
        head = spec.site.head_layout
        if spec.unit != ("h.pos" if head else "pos"):
            return None, f"{spec.key} has unit {spec.unit!r}"
        if k.base_loc is None or k.src_loc is None:
            return None, f"{spec.key} has no locations"
        sa, ba = _same_positions(k.src_loc), _same_positions(k.base_loc)
        if sa is None or ba is None or sa != ba:
            return None, f"{spec.key} reads other positions than it writes, or differs between examples"
        site = site_index.setdefault((rep.component, rep.layer), len(site_index))
        if head:
            sb, bb = k.src_loc.idx2, k.base_loc.idx2
            if not bool((sb == sb[:1]).all()) or not torch.equal(sb, bb):
                return None, f"{spec.key} reads other positions than it writes, or differs between examples"
            heads, toks = sa, sb[0].tolist()
            patches.extend(Patch(site, t, h) for h in heads for t in toks)
        else:
            patches.extend(Patch(site, t) for t in sa)
    return patches, None


def _ident(inputs: Mapping) -> tuple:
    return tuple(sorted((k, id(v)) for k, v in inputs.items()))


def run_calls(model: nn.Module, calls: Sequence[Call], *, memory_budget: int | None = None,
              strategy: str = "auto", warn: bool = True) -> CallsResult:
    """Run many intervention calls as one batched, layer-stepped sweep (see the module docstring).

    Args:
        model: the model (not an ``IntervenableModel``); it is left as it is (mode and
            ``requires_grad``); call ``model.eval()`` first.
        calls: :class:`Call` s. Each is validated as ``IntervenableModel(call.config, model)``
            would validate it.
        memory_budget, strategy: as for :func:`vene.analysis.activation_patching`.
        warn: warn (:class:`CallFallbackWarning`) for calls that run as ordinary forward calls.

    Returns a :class:`CallsResult`: the last-position logits ``(n_calls, batch, vocab)`` of each
    call's intervened output, and how each call ran. Runs under ``torch.no_grad()``.
    """
    from .analysis.sweep import SweepRunner
    from .model import IntervenableModel

    calls = list(calls)
    for i, c in enumerate(calls):
        if not isinstance(c, Call):
            raise ConfigError(f"calls[{i}] is a {type(c).__name__}; give vene.Call(config, base, sources, unit_locations).")
        if not isinstance(c.base, Mapping):
            raise ConfigError(f"calls[{i}].base must be a dict of model inputs, got {type(c.base).__name__}.")
    out: list[torch.Tensor | None] = [None] * len(calls)
    modes: list[str] = ["forward"] * len(calls)
    reasons: list[str | None] = [None] * len(calls)
    groups: dict[tuple, dict] = {}
    pvms = []
    for i, c in enumerate(calls):
        pvm = IntervenableModel(c.config, model, freeze_model=False)
        pvms.append(pvm)
        src = _single_source(c)
        key = (_ident(c.base), _ident(src) if src is not None else None)
        g = groups.setdefault(key, {"sites": {}, "cells": [], "calls": [], "base": c.base, "source": src})
        cell, why = _cell(pvm, c, g["sites"])
        if cell is None:
            reasons[i] = why
            continue
        g["cells"].append(cell)
        g["calls"].append(i)
    with torch.no_grad():
        for g in groups.values():
            if not g["calls"]:
                continue
            sites = sorted(g["sites"], key=g["sites"].get)
            try:  # a slower sweep mode warns (SweepFallbackWarning) and is recorded below
                runner = SweepRunner(model, g["source"], g["base"], sites, memory_budget=memory_budget,
                                     strategy=strategy, progress=False, desc="run_calls")
                runner.record()
                vals = runner.run(g["cells"], lambda logits: logits)
            except ConfigError as e:
                for i in g["calls"]:
                    reasons[i] = f"the sweep cannot run it: {e}"
                continue
            for j, i in enumerate(g["calls"]):
                out[i] = vals[j]
                modes[i] = f"sweep:{runner.mode}"
                if runner.fallback_reason is not None:
                    reasons[i] = f"sweep mode {runner.mode!r}: {runner.fallback_reason}"
        slow = [i for i in range(len(calls)) if out[i] is None]
        if slow and warn:
            first = slow[0]
            warnings.warn(
                f"run_calls: {len(slow)} of {len(calls)} calls run as ordinary forward calls (call {first}: "
                f"{reasons[first]}); see CallsResult.reasons.",
                CallFallbackWarning,
                stacklevel=2,
            )
        for i in slow:
            c = calls[i]
            _, res = pvms[i](c.base, c.sources, c.unit_locations)
            logits = getattr(res, "logits", res[0] if isinstance(res, (tuple, list)) else res)
            if not isinstance(logits, torch.Tensor):
                raise ConfigError(f"run_calls: call {i} returned no logits (got {type(res).__name__}).")
            out[i] = logits[:, -1].float().cpu()
    return CallsResult(torch.stack([o for o in out if o is not None]), modes, reasons)
