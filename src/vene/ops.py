"""Ops: what one intervention does at one hooked (module, io) each time it fires.

Three op classes, built per call from the plan (:func:`vene.engine.ops_for`):

* :class:`Getter` reads the selected units of a source's rows and keeps them as the key's source;
* :class:`Setter` reads the selected units of the target rows, runs the intervention on them with
  its source and writes the result back;
* :class:`Collect` runs a collect intervention on the selection and keeps what it returns.

*When* an op acts and *which* units it touches is a strategy on the op, ``op.step``:
:class:`EveryFiring` (the call's locations at every firing) or anything with the same
``select(fire, view)`` method -- generation's per-step gates (:mod:`vene.generation`) and sweep
cells (:mod:`vene.analysis.sweep`) are such strategies. Recurrent time steps (unit ``"t"``, one
firing per step of a per-step tensor) are the :class:`StepGetter` / :class:`StepSetter` /
:class:`StepCollect` variants, driven by a :class:`TimeIndex`.

:func:`site_hook` runs the ops placed on one (module, io) in key order on a :class:`Live`
tensor, which owns copy-on-write: a write never lands in a tensor another module reads.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError, LocationError, ShapeMismatchError
from .gather import gather, keep_masked, scatter, scatter_masked
from .interventions import InterventionOutput
from .locations import Loc
from .placement import intervention_device, warn_moved
from .plan import CallPlan, KeySpec
from .views import feature_ndim, flatten_features, make_view, merge_units, unmerge_units


class StopForward(Exception):
    """Raised inside a source pass once every getter it serves has fired."""


class Live:
    """The tensor of one hook firing. ``writable()`` returns a tensor safe to write into: the
    hooked tensor itself when nothing else reads it, otherwise (copy-on-write) a clone, which
    the hook hands on in its place. Copies are made when autograd records, at input sites (the
    caller still holds the input, and other modules read it: OLMo-2's post-norm residual,
    Cohere's parallel block), when an output aliases the module's input, and for tensors of the
    user's inputs (``protected`` storages)."""

    __slots__ = ("x", "y", "io", "args", "protected")

    def __init__(self, x: torch.Tensor, io: str, args: tuple, protected: set[int]) -> None:
        self.x = self.y = x
        self.io, self.args, self.protected = io, args, protected

    def writable(self) -> torch.Tensor:
        if self.y is self.x and self._shared():
            self.y = self.x.clone()
        return self.y

    def _shared(self) -> bool:
        x = self.x
        if self.io == "input" or torch.is_grad_enabled():
            return True
        ptr = x.untyped_storage().data_ptr()
        if self.protected and ptr in self.protected:
            return True
        return self.io == "output" and any(
            isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr for a in self.args
        )

    @property
    def replaced(self) -> torch.Tensor | None:
        return None if self.y is self.x else self.y


class EveryFiring:
    """Step strategy: act at every firing, on the op's locations."""

    __slots__ = ("loc",)

    def __init__(self, loc: Loc | None) -> None:
        self.loc = loc

    def select(self, fire: int, view: torch.Tensor) -> tuple[Loc | None, torch.Tensor | None] | None:
        """None: skip this firing; else ``(loc, mask)``: the units to act on and which of them
        are really written (``mask`` bool ``(batch, units)`` / ``(batch, 1, positions)``, or
        None for all)."""
        return self.loc, None


class Op:
    """One intervention's part in one call, at one (module, io)."""

    def __init__(self, spec: KeySpec, loc: Loc | None, rows: slice | None, subspaces: Any = None,
                 step: Any = None) -> None:
        self.spec = spec
        self.loc = loc
        self.rows = rows  # the batch rows this op reads or writes (None: all)
        self.subspaces = subspaces
        self.step = step if step is not None else EveryFiring(loc)
        self.fired = 0

    @property
    def io(self) -> str:
        return self.spec.site.io

    @property
    def reads_source(self) -> bool:
        return False

    def view(self, y: torch.Tensor) -> torch.Tensor:
        v = make_view(y, self.spec.site.view, self.spec.site.n_heads)
        return v if self.rows is None else v[self.rows]

    def gather(self, v: torch.Tensor, loc: Loc | None, side: str) -> torch.Tensor:
        return gather(v, loc, self.spec.key, side, self.spec.axis_names())

    def act(self, live: Live, fire: int, call: CallPlan) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Getter(Op):
    """Keep the selected source units: ``call.acts[key]`` ``(B, U, d)`` (``(B, H, P, d)``)."""

    @property
    def io(self) -> str:
        return self.spec.getter_io

    @property
    def reads_source(self) -> bool:
        return True

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        sel = self.gather(self.view(live.y), self.loc, "source")
        if self.loc is None or self.loc.span is not None:
            sel = sel.clone()  # a view of the live tensor: keep a copy
        n_lead = 3 if self.loc is not None and self.loc.two_level else 2
        call.acts[self.spec.key] = flatten_features(sel, self.spec.site.view, n_lead)


def call_intervention(spec: KeySpec, base: torch.Tensor, source: Any, subspaces: Any, call: CallPlan,
                      args: tuple, module_input: Any = None) -> Any:
    """Run ``spec``'s intervention on a selection (merging units into one vector first when it
    does not keep the last dimension)."""
    iv = spec.intervention
    if isinstance(source, torch.Tensor) and source.device != base.device:
        source = source.to(base.device)  # e.g. a source_representations tensor given on cpu
    if spec.is_lambda:
        return iv(base, source, subspaces)
    here = None
    there = intervention_device(iv)
    if there is not None and there != base.device:  # weights on another device (vene.placement)
        warn_moved(iv, spec.key, there, base.device)
        here, base = base.device, base.to(there)
        if isinstance(source, torch.Tensor):
            source = source.to(there)
        if isinstance(module_input, torch.Tensor):
            module_input = module_input.to(there)
    shape = None
    if spec.flatten and base.dim() >= 3:
        base, shape = merge_units(base)
        if source is not None and shape is not None and source.dim() == len(shape):
            source, _ = merge_units(source)
    kwargs = {}
    if spec.pass_kwargs:
        if call.extra_kwargs:
            kwargs.update(call.extra_kwargs)
        kwargs["args"] = args
        if module_input is not None:
            kwargs["module_input"] = module_input
    out = iv(base, source, subspaces, **kwargs) if kwargs else iv(base, source, subspaces)
    if isinstance(out, InterventionOutput):
        call.full_outputs[spec.key] = out
        out = out.output
    if shape is not None and isinstance(out, torch.Tensor) and not spec.is_collect:
        out = unmerge_units(out, shape)
    if here is not None and isinstance(out, torch.Tensor):
        out = out.to(here)  # back to the site's device
    return out


def _source_of(spec: KeySpec, call: CallPlan) -> Any:
    source = call.acts.get(spec.key)
    return call.reps.get(spec.key) if source is None else source


class Setter(Op):
    """Run the intervention on the selected units and write the result back."""

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        spec = self.spec
        got = self.step.select(fire, self.view(live.y))
        if got is None:
            return
        loc, mask = got
        v = self.view(live.writable())
        raw = self.gather(v, loc, "base")
        if torch.is_grad_enabled() and raw.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
            raw = raw.clone()  # a view of v (a span, or all of it) that the write below overwrites: autograd may save it
        sel = flatten_features(raw, spec.site.view, 3 if loc is not None and loc.two_level else 2)
        source = _source_of(spec, call)
        if isinstance(source, torch.Tensor) and not spec.is_lambda and source.dim() == sel.dim() and source.shape != sel.shape:
            if source.shape[0] != sel.shape[0] or (source.shape[1] != sel.shape[1] and source.shape[1] != 1):
                raise ShapeMismatchError(
                    f"{spec.key}: the source selection has shape {tuple(source.shape)} but the base "
                    f"selection has shape {tuple(sel.shape)}; select the same number of units on both sides."
                )
        mi = self._module_input(live.args, sel, loc) if spec.uses_module_input else None
        new = call_intervention(spec, sel, source, self.subspaces, call, live.args, mi)
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
            scatter(v, loc, new)
        else:
            assert loc is not None, "a step's row mask always comes with unit locations"
            scatter_masked(v, loc, new, mask)

    def _module_input(self, args: tuple, sel: torch.Tensor, loc: Loc | None) -> torch.Tensor:
        """The hooked module's input at this firing's units (interventions with ``uses_module_input``)."""
        spec = self.spec
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
        if self.rows is not None:
            x = x[self.rows]
        return self.gather(x, loc, "base")


class Collect(Op):
    """Run a collect intervention on the selection; keep its result (nothing is written)."""

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        got = self.step.select(fire, self.view(live.y))
        if got is None:
            return
        loc, mask = got
        raw = self.gather(self.view(live.y), loc, "base")
        sel = flatten_features(raw, self.spec.site.view, 3 if loc is not None and loc.two_level else 2)
        new = call_intervention(self.spec, sel, _source_of(self.spec, call), self.subspaces, call, live.args)
        if isinstance(new, torch.Tensor) and new.untyped_storage().data_ptr() == live.y.untyped_storage().data_ptr():
            new = new.clone()  # a view of the live tensor: later writes must not change it
        call.collected.setdefault(self.spec.key, []).append(new if mask is None else keep_masked(new, mask))


# ---------------------------------------------------------------------------------------------
# recurrent time steps (unit "t")


class TimeIndex:
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


class StepGetter(Getter):
    """Unit ``"t"`` getter: ``call.acts[key]`` becomes ``(batch, units, *features)``, filled as the
    steps fire (a list of per-step tensors when no locations were given)."""

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        key, v = self.spec.key, self.view(live.y)
        if self.loc is None:
            call.acts.setdefault(key, []).append(v.clone())
            return
        if not hasattr(self, "index"):
            self.index = TimeIndex(self.loc, key, "source")
        got = self.index.pairs(fire, v.device)
        if got is None:
            return
        b, u = got
        buf = call.acts.get(key)
        if buf is None:
            buf = v.new_zeros((self.index.batch, self.index.units) + tuple(v.shape[1:]))
            call.acts[key] = buf
        buf[b, u] = v[b]


class _StepBase(Op):
    """Shared part of unit-``"t"`` setters and collects: this step's rows and source."""

    index: TimeIndex | None = None

    def step_rows(self, fire: int, device: torch.device) -> tuple[bool, Any]:
        """``(acts, rows)``: whether this step is intervened, and ``(mask, unit)`` per example."""
        if self.loc is None:
            return True, None
        if self.index is None:
            self.index = TimeIndex(self.loc, self.spec.key, "base")
        rows = self.index.rows(fire, device)
        return rows is not None, rows

    def step_source(self, call: CallPlan, fire: int, unit: torch.Tensor | None, step_ndim: int) -> Any:
        source = _source_of(self.spec, call)
        if isinstance(source, list):
            if fire >= len(source):
                raise LocationError(
                    f"{self.spec.key}: the base reached time step {fire} but the source has only "
                    f"{len(source)} steps; give explicit time steps."
                )
            return source[fire]
        if unit is not None and isinstance(source, torch.Tensor) and source.dim() == step_ndim + 1 and source.shape[0] == unit.shape[0]:
            return source[torch.arange(unit.shape[0], device=unit.device), unit.to(source.device)]
        return source


class StepSetter(_StepBase):
    """Unit ``"t"`` setter: intervene on the examples whose base steps include this firing (all
    of them without locations); the other rows keep their exact values."""

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        acts, rows = self.step_rows(fire, live.y.device)
        if not acts:
            return
        v = self.view(live.writable())
        mask, unit = rows if rows is not None else (None, None)
        x = v.clone() if torch.is_grad_enabled() else v  # v.copy_ below must not change what autograd saved
        new = call_intervention(self.spec, x, self.step_source(call, fire, unit, v.dim()), self.subspaces, call, live.args)
        if not isinstance(new, torch.Tensor) or new.shape != v.shape:
            raise ShapeMismatchError(
                f"{self.spec.key}: the intervention returned "
                f"{tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__} "
                f"for a time step of shape {tuple(v.shape)}."
            )
        if new.dtype != v.dtype:
            new = new.to(v.dtype)
        if mask is not None:
            new = torch.where(mask.view(-1, *([1] * (v.dim() - 1))), new, v)
        v.copy_(new)


class StepCollect(_StepBase):
    """Unit ``"t"`` collect: one ``(batch, units, *features)`` tensor of each example's steps
    (one entry per step without locations)."""

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        acts, rows = self.step_rows(fire, live.y.device)
        if not acts:
            return
        v = self.view(live.y)
        unit = rows[1] if rows is not None else None
        new = call_intervention(self.spec, v, self.step_source(call, fire, unit, v.dim()), self.subspaces, call, live.args)
        if rows is None:
            call.collected.setdefault(self.spec.key, []).append(new)
            return
        index = self.index
        assert index is not None  # step_rows built it
        got = index.pairs(fire, v.device)
        if got is None:  # no (example, unit) pair at this step
            return
        b, u = got
        bufs = call.collected.setdefault(self.spec.key, [])
        if not bufs:
            bufs.append(new.new_zeros((index.batch, index.units) + tuple(new.shape[1:])))
        bufs[0][b, u] = new[b]


# ---------------------------------------------------------------------------------------------


def site_hook(ops: list[Op], call: CallPlan, protected: set[int], stop: list[int] | None) -> Callable:
    """One hook function serving every op placed on one (module, io), in order. ``stop``: a
    one-element countdown of the sites with getters; the pass stops when it reaches 0."""
    counts_for_stop = stop is not None and any(op.reads_source for op in ops)
    io = ops[0].io
    done = False

    def fn(mod: nn.Module, x: torch.Tensor, fire: int, args: tuple) -> torch.Tensor | None:
        nonlocal done
        live = Live(x, io, args, protected)
        for op in ops:
            op.fired += 1
            op.act(live, fire, call)
        if counts_for_stop and not done:
            assert stop is not None  # counts_for_stop implies a countdown
            done = True
            stop[0] -= 1
            if stop[0] <= 0:
                raise StopForward()
        return live.replaced

    return fn
