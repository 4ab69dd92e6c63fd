"""Execution: run one intervened call.

A call is described by a :class:`CallPlan` (built and validated by ``IntervenableModel`` before
anything runs). Execution installs one hook per hooked (module, io) pair that performs, in key
order, the *ops* placed there:

* a **getter** reads the selected units of a source's rows and keeps them;
* a **setter** reads the selected units of the target rows, runs the intervention, and writes the
  result back (in place when no gradient is being recorded, out of place otherwise).

When the sources and the base can share a batch, everything runs in **one** forward pass: the
rows of the batch are ``[original base?] [base] [source 0] [source 1] ...``; getters read source
rows and setters write base rows (or, in serial mode, the next source's rows). Otherwise each
source runs on its own, and that pass stops as soon as its last getter has fired.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .components import Site, feature_ndim, get_module, make_view
from .errors import ConfigError, HookNotFiredError, LocationError, ShapeMismatchError
from .hooks import HookSession
from .interventions import CollectIntervention, InterventionOutput, LambdaIntervention
from .locations import Loc


class _StopForward(Exception):
    """Raised inside a source pass once every getter it serves has fired."""


@dataclass
class KeySpec:
    """Static description of one intervention (built once, at construction)."""

    key: str
    index: int
    site: Site
    intervention: nn.Module
    group: int
    unit: str
    is_lambda: bool
    is_collect: bool
    flatten: bool
    pass_kwargs: bool
    getter_io: str  # where the getter reads ("input" for Skip)
    module: nn.Module = field(repr=False, default=None)

    @property
    def constant(self) -> bool:
        return bool(getattr(self.intervention, "is_source_constant", False)) or self.is_lambda


@dataclass
class Op:
    spec: KeySpec
    setter: bool
    loc: Loc | None
    rows: slice | None
    subspaces: Any = None
    fired: int = 0
    #: optional per-firing gate ``gate(fire, view) -> None (skip this firing) | (loc, mask)``:
    #: ``loc`` replaces ``self.loc`` for this firing; ``mask`` (bool, ``(batch, units)`` or
    #: ``(batch, 1, positions)`` for two-level units, or None) marks the selected units that are
    #: really written (the others were clamped into range and are left untouched).
    gate: Callable[[int, torch.Tensor], Any] | None = None
    tindex: Any = None  # cached _TimeIndex of a unit-"t" op


@dataclass
class CallPlan:
    """Everything one call needs, validated."""

    batch: int
    specs: list[KeySpec]
    active: list[bool]  # key applies in this call
    needs_getter: list[bool]
    src_locs: list[Loc | None]
    base_locs: list[Loc | None]
    target: list[int]  # group whose rows a key writes (n_groups = base)
    subspaces: list[Any]
    sources: list[dict | None]
    reps: dict[str, torch.Tensor]
    extra_kwargs: dict[str, Any] | None
    n_groups: int
    serial: bool
    collected: dict[str, list] = field(default_factory=dict)
    acts: dict[str, Any] = field(default_factory=dict)
    full_outputs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# gather / scatter on a site's view


def _view(spec: KeySpec, x: torch.Tensor, rows: slice | None) -> torch.Tensor:
    v = make_view(x, spec.site.view, spec.site.n_heads)
    return v if rows is None else v[rows]


def _gather(v: torch.Tensor, loc: Loc | None, spec: KeySpec, side: str) -> torch.Tensor:
    """Selected units of ``v``: ``(B, U, *f)`` (``(B, H, P, *f)`` for two-level units)."""
    if loc is None:
        return v
    idx, idx2, b = loc.on(v.device)
    if loc.max1 >= v.shape[1]:
        raise LocationError(
            f"{spec.key}: {side} location {loc.max1} is out of range: {_axis_name(spec, 1)} has "
            f"{v.shape[1]} entries (0..{v.shape[1] - 1})."
        )
    if idx2 is None:
        if loc.batch != v.shape[0]:
            raise LocationError(f"{spec.key}: {side} locations cover {loc.batch} examples but the batch has {v.shape[0]}.")
        if loc.span is not None:
            return v.narrow(1, loc.span[0], loc.span[1])  # a view: callers copy when they keep it
        if loc.shared:
            return v.index_select(1, idx)
        return v[b, idx]
    if loc.max2 >= v.shape[2]:
        raise LocationError(
            f"{spec.key}: {side} location {loc.max2} is out of range: {_axis_name(spec, 2)} has "
            f"{v.shape[2]} entries (0..{v.shape[2] - 1})."
        )
    return v[b.unsqueeze(2), idx.unsqueeze(2), idx2.unsqueeze(1)]


def _axis_name(spec: KeySpec, axis: int) -> str:
    if spec.site.head_layout:
        return "the head axis" if axis == 1 else "the position axis"
    return "the position axis" if spec.unit in ("pos",) else f"the {spec.unit!r} axis"


def _scatter(v: torch.Tensor, loc: Loc | None, new: torch.Tensor) -> None:
    if loc is None:
        if new.data_ptr() != v.data_ptr():
            v.copy_(new)
        return
    idx, idx2, b = loc.on(v.device)
    if idx2 is None:
        if loc.span is not None:
            dst = v.narrow(1, loc.span[0], loc.span[1])
            if new.data_ptr() != dst.data_ptr():
                dst.copy_(new)
        elif loc.shared:
            v.index_copy_(1, idx, new)
        else:
            v[b, idx] = new
    else:
        v[b.unsqueeze(2), idx.unsqueeze(2), idx2.unsqueeze(1)] = new


def _scatter_masked(v: torch.Tensor, loc: Loc, new: torch.Tensor, mask: torch.Tensor) -> None:
    """Write only the selected units where ``mask`` is True (gated generation steps)."""
    idx, idx2, b = loc.on(v.device)
    if idx2 is None:
        m = mask.expand(idx.shape)
        v[b.expand(idx.shape)[m], idx[m]] = new[m]
    else:
        grid = (idx.shape[0], idx.shape[1], idx2.shape[1])
        m = mask.expand(grid)
        bb, i1, i2 = b.unsqueeze(2).expand(grid), idx.unsqueeze(2).expand(grid), idx2.unsqueeze(1).expand(grid)
        v[bb[m], i1[m], i2[m]] = new[m]


def _collect_masked(new: torch.Tensor, mask: torch.Tensor) -> Any:
    """Keep the units of a collected selection where ``mask`` holds, per example, in unit order:
    ``(batch, kept, d)`` (``(batch, heads, kept, d)``) when every example keeps as many units,
    else a list with one tensor per example."""
    m = mask.reshape(mask.shape[0], -1)
    axis = 1 if mask.dim() == 2 else 2
    counts = m.sum(1)
    k = int(counts[0])
    if bool((counts == k).all()):
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]
        shape = [order.shape[0]] + [1] * (new.dim() - 1)
        shape[axis] = k
        full = list(new.shape)
        full[axis] = k
        return new.gather(axis, order.view(shape).expand(full))
    return [new[i].index_select(axis - 1, m[i].nonzero().squeeze(1)) for i in range(new.shape[0])]


class _TimeIndex:
    """Unit ``"t"``: which (example, unit) pairs each firing (time step) serves."""

    def __init__(self, loc: Loc, key: str, side: str) -> None:
        self.batch, self.units = loc.idx.shape
        self.by_step: dict[int, list[tuple[int, int]]] = {}
        for b, row in enumerate(loc.idx.tolist()):
            for u, t in enumerate(row):
                pairs = self.by_step.setdefault(t, [])
                if side == "base" and any(pb == b for pb, _ in pairs):
                    raise LocationError(
                        f"{key}: example {b} lists base time step {t} twice; each base step can take "
                        "one source step."
                    )
                pairs.append((b, u))
        self._cache: dict = {}

    def pairs(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(examples, units)`` index tensors of the pairs at step ``t`` (None: no pair)."""
        if t not in self.by_step:
            return None
        got = self._cache.get(("p", t, device))
        if got is None:
            b, u = zip(*self.by_step[t])
            got = (torch.tensor(b, device=device), torch.tensor(u, device=device))
            self._cache[("p", t, device)] = got
        return got

    def rows(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mask (batch,), unit (batch,))``: examples intervened at step ``t`` and the unit each uses."""
        if t not in self.by_step:
            return None
        got = self._cache.get(("r", t, device))
        if got is None:
            mask = torch.zeros(self.batch, dtype=torch.bool)
            unit = torch.zeros(self.batch, dtype=torch.long)
            for b, u in self.by_step[t]:
                mask[b] = True
                unit[b] = u
            got = (mask.to(device), unit.to(device))
            self._cache[("r", t, device)] = got
        return got


def _time_index(op: Op, side: str) -> _TimeIndex:
    if op.tindex is None:
        op.tindex = _TimeIndex(op.loc, op.spec.key, side)
    return op.tindex


def _time_get(op: Op, v: torch.Tensor, fire: int, plan: CallPlan) -> None:
    """Unit ``"t"`` getter: keep this step's rows for the (example, unit) pairs that want it.

    ``plan.acts[key]`` becomes ``(batch, units, *features)`` (a list of per-step tensors when
    no locations were given)."""
    key = op.spec.key
    if op.loc is None:
        plan.acts.setdefault(key, []).append(v.clone())
        return
    got = _time_index(op, "source").pairs(fire, v.device)
    if got is None:
        return
    b, u = got
    buf = plan.acts.get(key)
    if buf is None:
        ti = op.tindex
        buf = v.new_zeros((ti.batch, ti.units) + tuple(v.shape[1:]))
        plan.acts[key] = buf
    buf[b, u] = v[b]


def _time_source(source: Any, fire: int, unit: torch.Tensor | None, spec: KeySpec, step_ndim: int) -> Any:
    """The source of a unit-``"t"`` setter at step ``fire``."""
    if isinstance(source, list):
        if fire >= len(source):
            raise LocationError(
                f"{spec.key}: the base reached time step {fire} but the source has only "
                f"{len(source)} steps; give explicit time steps."
            )
        return source[fire]
    if unit is not None and isinstance(source, torch.Tensor) and source.dim() == step_ndim + 1 and source.shape[0] == unit.shape[0]:
        return source[torch.arange(unit.shape[0], device=unit.device), unit.to(source.device)]
    return source


def _flatten_feats(t: torch.Tensor, spec: KeySpec, n_lead: int) -> torch.Tensor:
    """Merge multi-dim features (NeoX q/k/v) into one feature axis."""
    if feature_ndim(spec.site.view) == 1:
        return t
    return t.reshape(*t.shape[:n_lead], -1)


def _module_input(spec: KeySpec, args: tuple, op: "Op", sel: torch.Tensor, loc: Loc | None) -> torch.Tensor:
    """The hooked module's input at the op's units (``loc``: this firing's units, see ``Op.gate``)
    (for interventions with ``uses_module_input``)."""
    if spec.site.io != "output":
        return sel
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None:
        raise ConfigError(
            f"{spec.key}: {type(spec.intervention).__name__} needs the input of "
            f"{spec.site.describe()}, but that module was called without a positional tensor "
            "input; hook a module that takes its input positionally (e.g. a Linear layer)."
        )
    if spec.site.view is not None or (loc is not None and loc.two_level):
        raise ConfigError(
            f"{spec.key}: {type(spec.intervention).__name__} reads the module input, which has no "
            "head split; use it on a whole-vector component (e.g. mlp_output) with 'pos' units."
        )
    if op.rows is not None:
        x = x[op.rows]
    return _gather(x, loc, spec, "base")


def _call_intervention(spec: KeySpec, base: torch.Tensor, source: Any, subspaces: Any, plan: CallPlan, args: tuple, module_input: Any = None) -> Any:
    iv = spec.intervention
    if spec.is_lambda:
        return iv(base, source, subspaces)
    shape = None
    if spec.flatten and base.dim() >= 3:
        shape = base.shape
        if base.dim() == 3:
            base = base.reshape(base.shape[0], -1)
            if source is not None and source.dim() == 3:
                source = source.reshape(source.shape[0], -1)
        elif base.dim() == 4:
            base = base.permute(0, 2, 1, 3).reshape(base.shape[0], base.shape[2], -1)
            if source is not None and source.dim() == 4:
                source = source.permute(0, 2, 1, 3).reshape(source.shape[0], source.shape[2], -1)
    kwargs = {}
    if spec.pass_kwargs:
        if plan.extra_kwargs:
            kwargs.update(plan.extra_kwargs)
        kwargs["args"] = args
        if module_input is not None:
            kwargs["module_input"] = module_input
    out = iv(base, source, subspaces, **kwargs) if kwargs else iv(base, source, subspaces)
    if isinstance(out, InterventionOutput):
        plan.full_outputs[spec.key] = out
        out = out.output
    if shape is not None and isinstance(out, torch.Tensor) and not spec.is_collect:
        if len(shape) == 3:
            out = out.reshape(shape)
        else:
            out = out.reshape(shape[0], shape[2], shape[1], shape[3]).permute(0, 2, 1, 3)
    return out


def _time_set(op: Op, v: torch.Tensor, fire: int, trows: Any, source: Any, plan: CallPlan, args: tuple) -> None:
    """Unit ``"t"`` setter on the per-step tensor ``v`` ``(batch, *features)``: intervene on the
    examples whose base steps include ``fire`` (all of them without locations); the other rows
    keep their exact values."""
    spec = op.spec
    mask, unit = trows if trows is not None else (None, None)
    src = _time_source(source, fire, unit, spec, v.dim())
    new = _call_intervention(spec, v, src, op.subspaces, plan, args)
    if spec.is_collect:
        if trows is None:
            plan.collected.setdefault(spec.key, []).append(new)
            return
        b, u = op.tindex.pairs(fire, v.device)
        bufs = plan.collected.setdefault(spec.key, [])
        if not bufs:
            bufs.append(new.new_zeros((op.tindex.batch, op.tindex.units) + tuple(new.shape[1:])))
        bufs[0][b, u] = new[b]
        return
    if not isinstance(new, torch.Tensor) or new.shape != v.shape:
        raise ShapeMismatchError(
            f"{spec.key}: the intervention returned {tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__} "
            f"for a time step of shape {tuple(v.shape)}."
        )
    if new.dtype != v.dtype:
        new = new.to(v.dtype)
    if mask is not None:
        new = torch.where(mask.view(-1, *([1] * (v.dim() - 1))), new, v)
    v.copy_(new)


def make_hook(ops: list[Op], plan: CallPlan, protected: set[int], stop_after: list[int] | None) -> Callable:
    """One hook function serving every op placed on one (module, io)."""

    counts_for_stop = stop_after is not None and any(not op.setter for op in ops)
    done = [False]

    def fn(mod: nn.Module, x: torch.Tensor, fire: int, args: tuple) -> torch.Tensor | None:
        y = x
        copied = False
        for op in ops:
            spec = op.spec
            op.fired += 1
            if not op.setter:
                v = _view(spec, y, op.rows)
                if spec.unit == "t":
                    _time_get(op, v, fire, plan)
                    continue
                sel = _gather(v, op.loc, spec, "source")
                if op.loc is None or op.loc.span is not None:
                    sel = sel.clone()  # a view of the live tensor: keep a copy
                plan.acts[spec.key] = _flatten_feats(sel, spec, 3 if op.loc is not None and op.loc.two_level else 2)
                continue
            loc, mask, trows = op.loc, None, None
            if spec.unit == "t" and loc is not None:
                trows = _time_index(op, "base").rows(fire, x.device)
                if trows is None:
                    continue
            elif op.gate is not None:
                got = op.gate(fire, _view(spec, y, op.rows))
                if got is None:
                    continue
                loc, mask = got
            if not copied and not spec.is_collect and (
                torch.is_grad_enabled() or (protected and x.untyped_storage().data_ptr() in protected)
            ):
                y = x.clone()
                copied = True
            v = _view(spec, y, op.rows)
            source = plan.acts.get(spec.key)
            if source is None:
                source = plan.reps.get(spec.key)
            if spec.unit == "t":
                _time_set(op, v, fire, trows, source, plan, args)
                continue
            n_lead = 3 if loc is not None and loc.two_level else 2
            raw = _gather(v, loc, spec, "base")
            sel = _flatten_feats(raw, spec, n_lead)
            if source is not None and isinstance(source, torch.Tensor) and source.dim() == sel.dim() and source.shape != sel.shape and not spec.is_lambda:
                if source.shape[0] != sel.shape[0] or (source.shape[1] != sel.shape[1] and source.shape[1] != 1):
                    raise ShapeMismatchError(
                        f"{spec.key}: the source selection has shape {tuple(source.shape)} but the base "
                        f"selection has shape {tuple(sel.shape)}; select the same number of units on both sides."
                    )
            mi = _module_input(spec, args, op, sel, loc) if getattr(spec.intervention, "uses_module_input", False) else None
            new = _call_intervention(spec, sel, source, op.subspaces, plan, args, mi)
            if spec.is_collect:
                if isinstance(new, torch.Tensor) and new.untyped_storage().data_ptr() == y.untyped_storage().data_ptr():
                    new = new.clone()  # a view of the live tensor: later writes must not change it
                plan.collected.setdefault(spec.key, []).append(new if mask is None else _collect_masked(new, mask))
                continue
            if not isinstance(new, torch.Tensor):
                raise ShapeMismatchError(f"{spec.key}: the intervention returned {type(new).__name__}, not a tensor.")
            if new.shape != sel.shape:
                raise ShapeMismatchError(
                    f"{spec.key}: the intervention returned shape {tuple(new.shape)} for a selection of "
                    f"shape {tuple(sel.shape)}."
                )
            if feature_ndim(spec.site.view) != 1:
                new = new.reshape(raw.shape)
            if new.dtype != v.dtype:
                new = new.to(v.dtype)
            if mask is None:
                _scatter(v, loc, new)
            else:
                _scatter_masked(v, loc, new, mask)
        if counts_for_stop and not done[0]:
            done[0] = True
            stop_after[0] -= 1
            if stop_after[0] <= 0:
                raise _StopForward()
        return y if copied else None

    return fn


def install(session: HookSession, model: nn.Module, ops: list[Op], plan: CallPlan, protected: set[int], stop_after: list[int] | None = None) -> None:
    """Group ``ops`` by (module, io) in key order and register one hook for each."""
    by_site: dict[tuple[str, str], list[Op]] = {}
    for op in ops:
        io = op.spec.getter_io if not op.setter else op.spec.site.io
        by_site.setdefault((op.spec.site.module_path, io), []).append(op)
    if stop_after is not None:
        stop_after[0] = sum(any(not op.setter for op in site_ops) for site_ops in by_site.values())
    for (path, io), site_ops in by_site.items():
        module = site_ops[0].spec.module if site_ops[0].spec.module is not None else get_module(model, path)
        session.add(module, io, make_hook(site_ops, plan, protected, stop_after))


def check_fired(ops: list[Op], what: str) -> None:
    for op in ops:
        if op.fired == 0:
            raise HookNotFiredError(
                f"{op.spec.key}: the module {op.spec.site.describe()} never ran during the {what}; "
                "is this component used by the model for these inputs?"
            )
        if op.spec.unit == "t" and op.loc is not None and op.fired <= op.loc.max1:
            side = "base" if op.setter else "source"
            raise LocationError(
                f"{op.spec.key}: {side} time step {op.loc.max1} was requested but the module "
                f"{op.spec.site.describe()} ran only {op.fired} steps (0..{op.fired - 1}) in the {what}."
            )


def run_source_pass(model: nn.Module, inputs: dict, ops: list[Op], plan: CallPlan, protected: set[int], early_stop: bool) -> None:
    stop = [0] if early_stop else None
    with HookSession(model) as session:
        install(session, model, ops, plan, protected, stop)
        try:
            model(**inputs)
        except _StopForward:
            pass
    check_fired([op for op in ops if not op.setter], "source pass")
