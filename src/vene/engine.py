"""Execution: run one planned call (:class:`~vene.plan.CallPlan`).

:func:`ops_for` compiles the plan into ops (:mod:`vene.ops`) for the rows a pass holds;
:func:`install` places them, one hook per hooked (module, io), in key order, in a
:class:`~vene.hooks.HookSession` (which removes exactly our hooks, also on exceptions).
Two executors run a forward call:

* :func:`run_fused` -- base and sources in **one** batched pass (rows laid out by
  :mod:`vene.batching`): getters read source rows, setters write base rows;
* :func:`run_separate` -- each source on its own pass (:func:`run_sources`, stopped as soon as
  its last getter has fired), then the base pass with the setters.

``generate`` (:mod:`vene.generation`) runs :func:`run_sources` and then installs base ops with
its own step strategies; sweeps (:mod:`vene.analysis.sweep`) install ops whose sources are
recorded values.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .batching import RowLayout, select_rows
from .components import get_module
from .errors import HookNotFiredError, LocationError
from .hooks import HookSession
from .ops import Collect, Getter, Op, Setter, StepCollect, StepGetter, StepSetter, StopForward, site_hook
from .plan import CallPlan


def ops_for(plan: CallPlan, getter_rows: Mapping[int, slice | None], target_rows: Mapping[int, slice | None],
            steps: Mapping[str, Any] | None = None) -> list[Op]:
    """Ops in key order: getters of the groups in ``getter_rows`` (reading those rows) and
    setters / collects whose target group is in ``target_rows`` (writing those rows).
    ``steps``: a step strategy per key for the setters (default: every firing)."""
    ops: list[Op] = []
    for k in plan.keys:
        if not k.active:
            continue
        s = k.spec
        timed = s.unit == "t"
        if k.needs_getter and s.group in getter_rows:
            ops.append((StepGetter if timed else Getter)(s, k.src_loc, getter_rows[s.group]))
        if k.target in target_rows:
            cls: type[Op]
            if timed:
                cls = StepCollect if s.is_collect else StepSetter
            else:
                cls = Collect if s.is_collect else Setter
            step = steps.get(s.key) if steps is not None else None
            ops.append(cls(s, k.base_loc, target_rows[k.target], k.subspaces, step))
    return ops


def install(session: HookSession, model: nn.Module, ops: list[Op], plan: CallPlan, protected: set[int],
            stop: list[int] | None = None) -> None:
    """Group ``ops`` by (module, io) in key order and register one hook for each. ``stop``: a
    one-element list, set to the number of sites with getters (the pass stops after them)."""
    by_site: dict[tuple[str, str], list[Op]] = {}
    for op in ops:
        by_site.setdefault((op.spec.site.module_path, op.io), []).append(op)
    if stop is not None:
        stop[0] = sum(any(op.reads_source for op in site_ops) for site_ops in by_site.values())
    for (path, io), site_ops in by_site.items():
        spec = site_ops[0].spec
        module = spec.module if spec.module is not None else get_module(model, path)
        session.add(module, io, site_hook(site_ops, plan, protected, stop))


def check_fired(ops: list[Op], what: str) -> None:
    """Every op's module ran (and, for time steps, ran long enough)."""
    for op in ops:
        if op.fired == 0:
            raise HookNotFiredError(
                f"{op.spec.key}: the module {op.spec.site.describe()} never ran during the {what}; "
                "is this component used by the model for these inputs?"
            )
        if op.spec.unit == "t" and op.loc is not None and op.fired <= op.loc.max1:
            side = "source" if op.reads_source else "base"
            raise LocationError(
                f"{op.spec.key}: {side} time step {op.loc.max1} was requested but the module "
                f"{op.spec.site.describe()} ran only {op.fired} steps (0..{op.fired - 1}) in the {what}."
            )


def protected_storages(*inputs: Mapping | None) -> set[int]:
    """Storages of the floating-point tensors of the user's inputs (never written in place)."""
    out = set()
    for inp in inputs:
        if inp is None:
            continue
        for v in inp.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out.add(v.untyped_storage().data_ptr())
    return out


def run_source_pass(model: nn.Module, inputs: Mapping, ops: list[Op], plan: CallPlan, protected: set[int],
                    early_stop: bool, reuse: Any = None) -> None:
    """One source pass; with ``reuse`` (a :class:`vene.reuse.CallReuse`) its getters are served
    from recorded activations when the source was recorded, else the pass records for later."""
    if reuse is not None and reuse.serve(inputs, ops, plan):
        check_fired(ops, "source pass")
        return
    token = None
    if reuse is not None:
        keeps, wide, token = reuse.recorders(inputs, ops)
        ops = keeps + ops
        early_stop = early_stop and not wide
    stop = [0] if early_stop else None
    with HookSession(model) as session:
        install(session, model, ops, plan, protected, stop)
        try:
            model(**inputs)
        except StopForward:
            pass
    check_fired([op for op in ops if op.reads_source], "source pass")
    if token is not None:
        reuse.commit(token)


def run_sources(model: nn.Module, plan: CallPlan, protected: set[int], model_has_grad: bool, early_stop: bool,
                reuse: Any = None) -> None:
    """Run the source passes (getters; in serial mode also the hops into later sources).
    Parallel-mode source passes record no autograd graph unless the model itself trains;
    ``reuse``: see :func:`run_source_pass` (parallel mode only)."""
    if plan.serial:
        for g in sorted(set(plan.groups_read()) | plan.groups_written()):
            src = plan.sources[g]
            if src is None:
                continue
            ops = ops_for(plan, {g: None}, {g: None})
            if any(op.reads_source for op in ops):
                run_source_pass(model, src, ops, plan, protected, early_stop)
        return
    by_source: dict[int, list[int]] = {}
    for g in plan.groups_read():
        by_source.setdefault(id(plan.sources[g]), []).append(g)
    for gs in by_source.values():
        ops = ops_for(plan, {g: None for g in gs}, {})
        with torch.set_grad_enabled(model_has_grad and torch.is_grad_enabled()):
            src = plan.sources[gs[0]]
            assert src is not None  # a group that is read has a source (checked when planning)
            run_source_pass(model, src, ops, plan, protected, early_stop, reuse)


def run_fused(model: nn.Module, plan: CallPlan, base: Mapping, rows: RowLayout, extra: dict) -> tuple[Any, Any]:
    """One batched pass over ``rows``; returns ``(original or None, intervened)`` outputs."""
    ops = ops_for(plan, rows.getter_rows, rows.target_rows)
    with HookSession(model) as session:
        install(session, model, ops, plan, set())
        out = model(**rows.inputs(base), **extra)
    check_fired(ops, "forward pass")
    original = select_rows(out, rows.original_rows, rows.total) if rows.original_rows is not None else None
    return original, select_rows(out, rows.base_rows, rows.total)


def run_separate(model: nn.Module, plan: CallPlan, base: Mapping, extra: dict, want_original: bool,
                 model_has_grad: bool, early_stop: bool, reuse: Any = None, resume: Any = None) -> tuple[Any, Any]:
    """Source passes (or recorded activations, with ``reuse``), then the base pass (resumed from
    recorded base states with ``resume``, a :class:`vene.resume.Resume`); returns
    ``(original or None, intervened)`` outputs."""
    original = model(**base, **extra) if want_original else None
    protected = protected_storages(base, *plan.sources)
    run_sources(model, plan, protected, model_has_grad, early_stop, reuse)
    ops = ops_for(plan, {}, {plan.n_groups: None})
    out = None
    if resume is not None:
        out = resume.run(ops, lambda session, ops, prot: install(session, model, ops, plan, prot), protected)
    if out is None:
        with HookSession(model) as session:
            install(session, model, ops, plan, protected)
            out = model(**base, **extra)
    check_fired(ops, "forward pass")
    return original, out
