"""The plan: typed records of what each intervention does, statically and in one call.

* :class:`KeySpec` -- one intervention as configured (built once, at construction): its key,
  resolved :class:`~vene.components.Site`, intervention module, group and unit.
* :class:`KeyCall` -- that intervention in one call: whether it acts, whether a source pass must
  read for it, its source and base locations, the group it writes into, its subspaces.
* :class:`CallPlan` -- everything one call needs (validated before anything runs) plus the
  values the call produces (``acts`` read by getters, ``collected``, full intervention outputs).

:func:`build_plan` turns a call's arguments into a :class:`CallPlan`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .components import Site
from .errors import SourceError
from .locations import (
    Loc,
    check_sources_given,
    check_unit_counts,
    normalise_subspaces,
    normalise_unit_locations,
    units_width,
)


@dataclass
class KeySpec:
    """One intervention as configured."""

    key: str
    index: int  # position in the configuration's representations
    site: Site
    intervention: nn.Module
    group: int
    unit: str
    is_lambda: bool
    is_collect: bool
    flatten: bool  # merge the selected units into one vector per example (keep_last_dim=False)
    pass_kwargs: bool  # the intervention's forward takes **kwargs
    uses_module_input: bool  # the intervention also wants the hooked module's input (LoRA)
    getter_io: str  # where the getter reads ("input" for source_from_input interventions)
    module: nn.Module | None = field(repr=False, default=None)  # set when the site resolves

    @property
    def constant(self) -> bool:
        return bool(getattr(self.intervention, "is_source_constant", False)) or self.is_lambda

    def axis_names(self) -> tuple[str, str]:
        """Names of the view's axes 1 and 2, for error messages."""
        if self.site.head_layout:
            return "the head axis", "the position axis"
        return ("the position axis" if self.unit == "pos" else f"the {self.unit!r} axis"), "axis 2"


@dataclass
class KeyCall:
    """One intervention in one call."""

    spec: KeySpec
    active: bool  # acts in this call
    needs_getter: bool  # a source pass reads its source value
    src_loc: Loc | None
    base_loc: Loc | None
    target: int  # group whose rows it writes (n_groups: the base)
    subspaces: Any


@dataclass
class CallPlan:
    """Everything one call needs, validated, and what it produces."""

    batch: int
    keys: list[KeyCall]
    sources: list[Mapping | None]  # one per group
    reps: dict[str, Any]  # source representations by key
    extra_kwargs: dict[str, Any] | None
    n_groups: int
    serial: bool
    collected: dict[str, list] = field(default_factory=dict)
    acts: dict[str, Any] = field(default_factory=dict)
    full_outputs: dict[str, Any] = field(default_factory=dict)

    def groups_read(self) -> list[int]:
        """Groups whose source must be run for a getter."""
        return sorted({k.spec.group for k in self.keys if k.needs_getter})

    def groups_written(self) -> set[int]:
        """Groups (other than the base) that serial hops write into."""
        return {k.target for k in self.keys if k.target < self.n_groups}


def batch_size(inputs: Mapping, what: str) -> int:
    """Batch size of a dict of model inputs (its first tensor with a batch axis)."""
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise SourceError(f"The {what} has no tensor with a batch dimension: {list(inputs)}.")


def _sources(sources: Any, n_groups: int, batch: int) -> list:
    """One source per group (a single source is shared by every group), validated."""
    if sources is None:
        return [None] * n_groups
    srcs = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if len(srcs) == 1 and n_groups > 1:
        srcs = srcs * n_groups
    if len(srcs) != n_groups:
        raise SourceError(
            f"Got {len(srcs)} sources but the configuration has {n_groups} groups of interventions; "
            f"pass one source per group (None to skip a group), or a single shared source."
        )
    for g, s in enumerate(srcs):
        if s is None:
            continue
        if not isinstance(s, Mapping):
            raise SourceError(f"Source {g} must be a dict of model inputs or None, got {type(s).__name__}.")
        sb = batch_size(s, f"source {g}")
        if sb != batch:
            raise SourceError(f"Source {g} has batch size {sb} but the base has {batch}; they must match.")
    return srcs


def _representations(value: Any, keys: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise SourceError(f"source_representations has unknown key {unknown[0]!r}; keys are {list(keys)}.")
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if len(value) != len(keys):
            raise SourceError(
                f"source_representations has {len(value)} entries for {len(keys)} interventions; "
                "give one per intervention (None to skip) or a dict by key."
            )
        return {k: v for k, v in zip(keys, value) if v is not None}
    if isinstance(value, torch.Tensor):
        return {k: value for k in keys}
    raise SourceError("source_representations must be a tensor, a list (one per intervention) or a dict by key.")


class LocationCache:
    """Locations depend only on their value and the batch size: a repeated call (a sweep, a
    training loop) reuses the index tensors built last time, already on the device."""

    def __init__(self) -> None:
        self.last: tuple | None = None
        #: the KeyCalls built from ``last``'s locations: ``(locations, pattern, calls)``
        self.calls: tuple | None = None

    def get(self, unit_locations: Any, batch: int, build: Any) -> tuple:
        key = None
        if unit_locations is not None:
            try:
                text = repr(unit_locations)
            except RecursionError:  # far too deep to be valid: normalising says so
                text = "tensor"
            # only plain Python values: a tensor's repr may be summarised, so it is no key
            if len(text) <= 4096 and "tensor" not in text and "array" not in text and "..." not in text:
                key = (batch, text)
        if key is not None and self.last is not None and self.last[0] == key:
            return self.last[1]
        value = build()
        if key is not None:
            self.last = (key, value)
        return value


def build_plan(
    specs: Sequence[KeySpec],
    n_groups: int,
    mode: str,
    cache: LocationCache,
    base: Any,
    sources: Any,
    unit_locations: Any,
    source_representations: Any,
    subspaces: Any,
    extra_kwargs: Any,
    links: Sequence[Any] | None = None,
) -> CallPlan:
    """Validate one call's arguments and build its :class:`CallPlan` (``specs`` in key order;
    ``links``: each key's intervention link key, linked keys may share one location entry)."""
    if not isinstance(base, Mapping):
        raise SourceError(f"base must be a dict of model inputs (e.g. a tokenizer output), got {type(base).__name__}.")
    batch = batch_size(base, "base")
    keys = [s.key for s in specs]
    srcs = _sources(sources, n_groups, batch)
    reps = _representations(source_representations, keys)
    normalised = cache.get(unit_locations, batch, lambda: normalise_unit_locations(
        unit_locations, mode=mode, keys=keys, groups=[s.group for s in specs], n_groups=n_groups,
        units=[s.unit for s in specs], batch=batch, links=links,
    ))
    # a repeated call (same locations, no subspaces or representations, the same groups given
    # sources) reuses the validated per-key records: only the sources are checked again
    pattern = (sources is not None, tuple(s is None for s in srcs)) if subspaces is None and not reps else None
    if pattern is not None and cache.calls is not None and cache.calls[0] is normalised and cache.calls[1] == pattern:
        return CallPlan(batch, cache.calls[2], srcs, reps, extra_kwargs, n_groups, mode == "serial")
    src_locs, base_locs, src_given, base_given, target = normalised
    subs = normalise_subspaces(subspaces, keys, batch)
    check_sources_given(keys, [not s.constant for s in specs], reps, sources is not None)
    widths = [units_width(s.intervention, s.site, s.unit) for s in specs]
    check_unit_counts(keys, widths, list(base_locs), "base")
    check_unit_counts(keys, widths, list(src_locs), "source")
    calls = []
    for i, s in enumerate(specs):
        has_rep = s.key in reps
        has_src = srcs[s.group] is not None and not has_rep
        src_loc = src_locs[i]
        # the source side defaults to the base side when only base locations were given
        if has_src and not src_given[i] and base_given[i]:
            src_loc = base_locs[i]
        # constant-source interventions ignore sources; functions receive one when given
        getter = has_src and (not s.constant or s.is_lambda)
        calls.append(KeyCall(s, getter or has_rep or s.constant, getter, src_loc, base_locs[i], target[i], subs[i]))
    if pattern is not None and cache.last is not None and cache.last[1] is normalised:
        cache.calls = (normalised, pattern, calls)
    return CallPlan(batch, calls, srcs, reps, extra_kwargs, n_groups, mode == "serial")
