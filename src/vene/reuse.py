"""Source reuse across calls: a source seen before is not run again.

pyvene-style code often hands the same source to many calls (a loop over layers with
``sources=[clean]``, a repeated evaluation). The source pass of such a call computes what an
earlier call already computed, so vene keeps what source passes read, per wrapped model, and a
later call whose source has **the same inputs** and runs on **the same model state** reads the
recorded activations instead of running the source again.

When two inputs are "the same": every tensor has the same shape, dtype and device and either is
the very tensor seen before, unchanged since (same object, same version counter -- an in-place
edit bumps it), or has equal contents (a re-tokenised prompt); other values compare equal.
The model state is a fingerprint taken at each call: every parameter's and buffer's version
counter and storage (an optimiser step, ``load_state_dict``, ``.to()`` change it), every module's
``training`` flag and the hooks installed on it. Sources are only reused where a source pass has
no intervention upstream of its getters (parallel mode; serial mode hops are never reused), no
autograd graph (the model is frozen), no randomness (no module in training mode) and no
recurrent state (unit ``"t"``).

What is kept: the whole tensor at each site a getter read (a copy, so later writes cannot change
it), so a later call may select other positions. The first time a source is seen again at a site
it was not recorded at, the pass that serves it runs to the end and also records the same site
at every layer of the model's layer stack (a loop over layers then runs the source twice in all).
Everything kept lives within a memory budget (:data:`DEFAULT_BUDGET` bytes per model, least
recently used sources dropped first); ``IntervenableModel(..., reuse_sources=False)`` switches
reuse off, :func:`clear` forgets what was kept.
"""
from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .components import detect_architecture, get_module
from .ops import Live, Op

logger = logging.getLogger(__name__)

#: Bytes of recorded source activations kept per wrapped model.
DEFAULT_BUDGET = 256 * 2**20
#: Sources kept per wrapped model (least recently used dropped first).
MAX_SOURCES = 16

SiteKey = tuple[str, str]  # (module path, io)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Input:
    """One source's inputs, kept to recognise them later."""

    __slots__ = ("items",)

    def __init__(self, inputs: Mapping) -> None:
        items: list[tuple[Any, str, Any, int | None, Any]] = []  # (key, kind, weakref, version, copy)
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                ref = weakref.ref(v)
                items.append((k, "t", ref, _version(v), v.detach().clone()))
            else:
                items.append((k, "v", None, None, v))
        self.items = items

    def matches(self, inputs: Mapping) -> bool:
        if len(inputs) != len(self.items):
            return False
        for k, kind, ref, version, kept in self.items:
            if k not in inputs:
                return False
            v = inputs[k]
            if kind == "v":
                if isinstance(v, torch.Tensor):
                    return False
                try:
                    if not bool(v == kept):
                        return False
                except Exception:  # noqa: BLE001 - values that do not compare are not the same
                    return False
                continue
            if not isinstance(v, torch.Tensor) or v.shape != kept.shape or v.dtype != kept.dtype or v.device != kept.device:
                return False
            if ref() is v and version is not None and _version(v) == version:
                continue
            if not torch.equal(v, kept):
                return False
        return True

    def nbytes(self) -> int:
        return sum(_nbytes(kept) for _, kind, _, _, kept in self.items if kind == "t")


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter: compare contents
        return None


class Entry:
    """What the source passes of one source recorded: site -> the tensor at each firing."""

    def __init__(self, inputs: Mapping, fingerprint: tuple) -> None:
        self.input = _Input(inputs)
        self.fingerprint = fingerprint
        self.sites: dict[SiteKey, list[torch.Tensor]] = {}
        self.nbytes = self.input.nbytes()

    def add(self, site: SiteKey, firings: list[torch.Tensor]) -> None:
        old = self.sites.get(site)
        if old is not None:
            self.nbytes -= sum(_nbytes(t) for t in old)
        self.sites[site] = firings
        self.nbytes += sum(_nbytes(t) for t in firings)


class SourceStore:
    """Recorded source activations of one wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        self.refresh_modules()
        self.entries: list[Entry] = []  # most recently used last
        self.budget = DEFAULT_BUDGET
        self.hits = 0
        self.misses = 0

    def fingerprint(self) -> tuple:
        """The model state a recorded activation depends on (see the module docstring). Element
        0 is the modules' ``training`` flags."""
        ms, dicts = self.modules, self.dicts
        try:
            versions: tuple[object, ...] = tuple([t._version for d in dicts for t in d.values() if t is not None])
        except RuntimeError:  # an inference-mode buffer has no version counter: never reuse
            versions = (object(),)
        return (
            tuple([m.training for m in ms]),
            versions,
            tuple([t.data_ptr() for d in dicts for t in d.values() if t is not None]),
            tuple([len(m._modules) for m in ms]),
            tuple([(i, tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for i, m in enumerate(ms)
                   if m._forward_hooks or m._forward_pre_hooks]),
            tuple(torch.nn.modules.module._global_forward_hooks),
            tuple(torch.nn.modules.module._global_forward_pre_hooks),
        )

    def refresh_modules(self) -> None:
        model = self.model_ref()
        if model is not None:
            self.modules = list(model.modules())
            self.dicts = [d for m in self.modules for d in (m._parameters, m._buffers)]

    def find(self, inputs: Mapping, fingerprint: tuple) -> Entry | None:
        for i in range(len(self.entries) - 1, -1, -1):
            e = self.entries[i]
            if e.fingerprint != fingerprint:
                continue
            if e.input.matches(inputs):
                self.entries.append(self.entries.pop(i))
                return e
        return None

    def new_entry(self, inputs: Mapping, fingerprint: tuple) -> Entry:
        # entries recorded on another model state can never be used again
        self.entries = [e for e in self.entries if e.fingerprint == fingerprint]
        e = Entry(inputs, fingerprint)
        self.entries.append(e)
        return e

    def trim(self, keep: Entry | None = None, needed: set[SiteKey] | frozenset[SiteKey] = frozenset()) -> None:
        """Stay within the budget: drop least recently used sources, then ``keep``'s extra sites."""
        while len(self.entries) > MAX_SOURCES:
            self.entries.pop(0)
        total = sum(e.nbytes for e in self.entries)
        i = 0
        while total > self.budget and i < len(self.entries):
            e = self.entries[i]
            if e is keep:
                i += 1
                continue
            total -= e.nbytes
            self.entries.pop(i)
        if total > self.budget and keep is not None:
            for site in [s for s in keep.sites if s not in needed]:
                total -= sum(_nbytes(t) for t in keep.sites[site])
                keep.add(site, [])
                del keep.sites[site]
                if total <= self.budget:
                    break
            if total > self.budget:
                logger.info("source reuse: one source's activations exceed the budget (%d bytes); not kept", self.budget)
                self.entries = [e for e in self.entries if e is not keep]

    def clear(self) -> None:
        self.entries.clear()


_STORES: weakref.WeakKeyDictionary[nn.Module, SourceStore] = weakref.WeakKeyDictionary()


def store_for(model: nn.Module) -> SourceStore:
    """The store of ``model`` (one per model, shared by every ``IntervenableModel`` wrapping it)."""
    s = _STORES.get(model)
    if s is None:
        s = _STORES[model] = SourceStore(model)
    return s


def clear(model: nn.Module | None = None) -> None:
    """Forget the recorded source activations of ``model`` (of every model when None)."""
    if model is None:
        _STORES.clear()
    elif model in _STORES:
        _STORES[model].clear()


def set_budget(model: nn.Module, nbytes: int) -> None:
    """Bytes of recorded source activations kept for ``model`` (0 keeps nothing)."""
    s = store_for(model)
    s.budget = int(nbytes)
    s.trim()


_INDEX = re.compile(r"^\.(\d+)(\..*)?$")


def _after_first(sites: list[SiteKey], site: SiteKey) -> list[SiteKey]:
    """``sites`` in the order a loop over layers reaches them from ``site``: the later layers
    first, then the earlier ones."""
    if site not in sites:
        return sites
    i = sites.index(site)
    return sites[i + 1:] + sites[:i]


def siblings(model: nn.Module, site: SiteKey) -> list[SiteKey]:
    """The same site at every layer of the model's default layer stack (``site`` itself when it
    is not inside the stack)."""
    arch = detect_architecture(model)
    if arch is None:
        return [site]
    stack = arch[1]
    path, io = site
    if not path.startswith(stack):
        return [site]
    m = _INDEX.match(path[len(stack):])
    if m is None:
        return [site]
    rest = m.group(2) or ""
    try:
        layers = model.get_submodule(stack)
    except AttributeError:
        return [site]
    if not isinstance(layers, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
        return [site]
    n = len(layers)
    out = []
    for j in range(n):
        p = f"{stack}.{j}{rest}"
        try:
            get_module(model, p)
        except Exception:  # noqa: BLE001 - a layer without this submodule has no sibling
            logger.debug("source reuse: layer %d has no %s", j, p)
            continue
        out.append((p, io))
    return out if site in out else [site]


# ---------------------------------------------------------------------------------------------
# one call


class _SiteRef:
    __slots__ = ("key", "module", "site", "unit")

    def __init__(self, path: str, io: str, module: nn.Module) -> None:
        from .components import Site

        self.site = Site(path, io)
        self.module = module
        self.key = f"reuse:{path}.{io}"
        self.unit = "pos"


class Keep(Op):
    """Records the whole tensor at a site of a source pass (a copy) for later calls."""

    def __init__(self, path: str, io: str, module: nn.Module, sink: list) -> None:
        self.spec = _SiteRef(path, io, module)  # type: ignore[assignment]
        self._io = io
        self.loc = None
        self.rows = None
        self.subspaces = None
        self.step = None
        self.fired = 0
        self.sink = sink

    @property
    def io(self) -> str:
        return self._io

    def act(self, live: Live, fire: int, call: Any) -> None:
        self.sink.append(live.y.detach().clone())


def _site_of(op: Op) -> SiteKey:
    return (op.spec.site.module_path, op.io)


class CallReuse:
    """The reuse decisions of one call: for each distinct source, whether its getters are served
    from recorded activations (``hit``), or its pass records for later calls (``record``: the
    requested sites only, or with ``wide`` also their siblings at every layer)."""

    def __init__(self, model: nn.Module, store: SourceStore, fingerprint: tuple, plan: Any) -> None:
        self.model, self.store, self.fingerprint = model, store, fingerprint
        self.state: dict[int, tuple[str, Entry | None]] = {}
        groups: dict[int, list[int]] = {}
        for g in plan.groups_read():
            groups.setdefault(id(plan.sources[g]), []).append(g)
        for sid, gs in groups.items():
            src = plan.sources[gs[0]]
            needed = {(k.spec.site.module_path, k.spec.getter_io) for k in plan.keys
                      if k.needs_getter and k.spec.group in gs}
            entry = store.find(src, fingerprint)
            if entry is None:
                self.state[sid] = ("new", None)
            elif needed <= entry.sites.keys():
                self.state[sid] = ("hit", entry)
            else:
                self.state[sid] = ("seen", entry)

    @property
    def all_hit(self) -> bool:
        return bool(self.state) and all(s == "hit" for s, _ in self.state.values())

    @property
    def any_seen(self) -> bool:
        return any(s != "new" for s, _ in self.state.values())

    def note_fused(self, plan: Any) -> None:
        """A fused call ran its sources in the base's batch: remember that they were seen."""
        for sid, (s, _) in self.state.items():
            if s == "new":
                src = next(plan.sources[g] for g in plan.groups_read() if id(plan.sources[g]) == sid)
                self.store.new_entry(src, self.fingerprint)
        self.store.trim()

    def serve(self, source: Mapping, ops: list[Op], call: Any) -> bool:
        """Run ``ops`` (getters) on the recorded activations of ``source``; False when not recorded."""
        s, entry = self.state.get(id(source), ("new", None))
        if s != "hit" or entry is None:
            return False
        for op in ops:
            for i, t in enumerate(entry.sites[_site_of(op)]):
                op.fired += 1
                op.act(Live(t, op.io, (), set()), i, call)
        self.store.hits += 1
        return True

    def recorders(self, source: Mapping, ops: list[Op]) -> tuple[list[Op], bool, Any]:
        """Ops that record the pass of ``source`` for later calls, whether the pass must run to
        the end (wide recording), and a token for :meth:`commit`."""
        s, entry = self.state.get(id(source), ("new", None))
        self.store.misses += 1
        needed = list(dict.fromkeys(_site_of(op) for op in ops))
        wide = s == "seen"
        sites = list(needed)
        if wide:
            extra = [x for site in needed for x in _after_first(siblings(self.model, site), site) if x not in needed]
            extra = list(dict.fromkeys(extra))
            room = self.store.budget - sum(e.nbytes for e in self.store.entries) - len(needed) * self._estimate(source)
            fit = max(0, int(room // max(self._estimate(source), 1)))
            if fit < len(extra):
                logger.info("source reuse: recording %d of %d sibling sites (memory budget)", fit, len(extra))
            sites.extend(extra[:fit])
        by_module = {op.spec.site.module_path: op.spec.module for op in ops}
        keeps: list[Op] = []
        sinks: dict[SiteKey, list] = {}
        for path, io in sites:
            module = by_module.get(path)
            if module is None:
                module = get_module(self.model, path)
            sink: list = []
            sinks[(path, io)] = sink
            keeps.append(Keep(path, io, module, sink))
        return keeps, wide, (source, entry, sinks, set(needed))

    def _estimate(self, source: Mapping) -> int:
        """Bytes of one site's tensor for ``source``: batch x tokens x model width x element size
        (sites inside MLPs may be wider; the budget is checked again after recording)."""
        tokens = 1
        for v in source.values():
            if isinstance(v, torch.Tensor) and v.dim() >= 1:
                tokens = v.shape[0] * (v.shape[1] if v.dim() >= 2 else 1)
                break
        cfg = getattr(self.model, "config", None)
        width = next((getattr(cfg, a) for a in ("hidden_size", "n_embd", "d_model") if isinstance(getattr(cfg, a, None), int)), 1024)
        el = next((p.element_size() for p in self.model.parameters()), 4)
        return tokens * width * el

    def commit(self, token: Any) -> None:
        source, entry, sinks, needed = token
        self.store.refresh_modules()
        fp = self.store.fingerprint()  # after the pass: a lazily built buffer is part of the state
        if entry is None:
            entry = self.store.new_entry(source, fp)
        entry.fingerprint = fp
        for site, firings in sinks.items():
            if firings:
                entry.add(site, firings)
        self.store.trim(entry, needed)


def plan_reuse(model: nn.Module, plan: Any) -> CallReuse | None:
    """The call's reuse decisions, or None when its sources cannot be reused (see the module
    docstring for when)."""
    if plan.serial or not plan.groups_read():
        return None
    for k in plan.keys:
        if k.needs_getter and (k.spec.unit == "t" or k.spec.getter_io not in ("input", "output")):
            return None
    store = store_for(model)
    if store.budget <= 0:
        return None
    fp = store.fingerprint()
    if any(fp[0]):  # a module in training mode (dropout): sources may differ every call
        return None
    return CallReuse(model, store, fp, plan)
