"""Sweep cells on the core: what a patch writes, where, and the ops that write it.

A cell of a sweep grid is a set of :class:`Patch` es applied together. At a site, a patch is a
:class:`vene.ops.Setter` whose **source is a recorded value** passed through a *patch function*
``fn(recorded, S) -> table``: ``recorded`` is the site's value in the recorded (clean) rows,
``(Bc, seq, *f)`` in the site's view layout, and ``table`` has 1 or ``S`` rows (row ``i`` feeds
base row ``i``). Built in (:data:`PATCHES`), as TransformerLens users know them:

* ``"clean"`` -- restore the clean run's value (activation patching, causal tracing);
* ``"mean"`` -- the mean over the recorded rows (mean ablation);
* ``"resample"`` -- another recorded example's value (resample ablation: base row ``i`` takes
  recorded row ``(i + k) % Bc`` for a seeded ``k != 0``);
* ``"zero"`` -- zeros (zero ablation).

:class:`CellSites` owns one setter op per site (its step strategy says which rows/positions the
current batch patches) plus the recording op and the optional noise setter used by causal
tracing; every op is installed through :func:`vene.engine.install`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..components import Site
from ..engine import install
from ..errors import ConfigError
from ..gather import scatter
from ..hooks import HookSession
from ..interventions import LambdaIntervention
from ..locations import Loc
from ..ops import Getter, Live, Op, Setter
from ..plan import CallPlan, KeySpec
from ..views import make_view

PatchFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Patch:
    """Patch ``site`` (an index into the runner's sites) at ``token`` (and ``head`` for head
    components) in every base row of a cell."""

    site: int
    token: int
    head: int | None = None


def _clean(recorded: torch.Tensor, S: int) -> torch.Tensor:
    return recorded


def _mean(recorded: torch.Tensor, S: int) -> torch.Tensor:
    return recorded.mean(0, keepdim=True)


def _zero(recorded: torch.Tensor, S: int) -> torch.Tensor:
    return torch.zeros_like(recorded[:1])


def resample(seed: int = 0) -> PatchFn:
    """Resample ablation: base row ``i`` takes recorded row ``(i + k) % Bc``, ``k`` seeded, ``k != 0``."""
    def fn(recorded: torch.Tensor, S: int) -> torch.Tensor:
        n = recorded.shape[0]
        if n < 2:
            raise ConfigError("Resample ablation needs several recorded (clean) examples to draw from; pass a batch.")
        k = int(torch.randint(1, n, (1,), generator=torch.Generator().manual_seed(seed)))
        return recorded[((torch.arange(S) + k) % n).to(recorded.device)]

    return fn


PATCHES: dict[str, PatchFn] = {"clean": _clean, "mean": _mean, "resample": resample(), "zero": _zero}


def patch_function(patch: str | PatchFn) -> PatchFn:
    """A patch function from a name in :data:`PATCHES` or a callable ``fn(recorded, S)``."""
    if isinstance(patch, str):
        if patch not in PATCHES:
            raise ConfigError(f"Unknown patch {patch!r}; use one of {sorted(PATCHES)} or a function fn(recorded, S).")
        return PATCHES[patch]
    if not callable(patch):
        raise ConfigError(f"patch must be a name ({sorted(PATCHES)}) or a function fn(recorded, S), got {patch!r}.")
    return patch


class CellStep:
    """Step strategy of a site's setter: the selection the current batch patches (None: none)."""

    __slots__ = ("loc",)

    def __init__(self) -> None:
        self.loc: Loc | None = None

    def select(self, fire: int, view: torch.Tensor) -> tuple[Loc, None] | None:
        return None if self.loc is None else (self.loc, None)


class _Record(Getter):
    """Recording op: at the first firing keep the site's patch table (from the first ``Bc``
    rows) and where writing it changes the base rows."""

    def __init__(self, spec: KeySpec, owner: "CellSites", i: int) -> None:
        super().__init__(spec, None, None)
        self.owner, self.i = owner, i

    def act(self, live: Live, fire: int, call: CallPlan) -> None:
        o = self.owner
        if o.tables[self.i] is not None:
            return
        v = self.view(live.y)
        table = o.patch(v[: o.Bc].clone(), o.S)
        if not isinstance(table, torch.Tensor) or table.shape[0] not in (1, o.S) or table.shape[1:] != v.shape[1:]:
            raise ConfigError(
                f"The patch function returned {tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__} "
                f"for a recorded value of shape {tuple(v[: o.Bc].shape)}; it must return 1 or {o.S} rows of that shape."
            )
        o.tables[self.i] = table
        base = v[o.Bc:]
        ne = table.expand_as(base) != base if table.shape[0] != base.shape[0] else table != base
        lead = 3 if self.spec.site.head_layout else 2
        o.differs[self.i] = ne.reshape(*ne.shape[:lead], -1).any(-1).any(0).cpu()


def _spec(key: str, site: Site, module: nn.Module, fn: Callable) -> KeySpec:
    return KeySpec(key=key, index=0, site=site, intervention=LambdaIntervention(fn), group=0, unit="pos",
                   is_lambda=True, is_collect=False, flatten=False, pass_kwargs=False, uses_module_input=False,
                   getter_io=site.io, module=module)


def _put(base: torch.Tensor, source: torch.Tensor, subspaces: Any = None) -> torch.Tensor:
    return source.to(base.dtype)


def _add(base: torch.Tensor, source: torch.Tensor, subspaces: Any = None) -> torch.Tensor:
    return base + source.to(base.dtype)


class CellSites:
    """The ops of a sweep: one setter per site (source: the site's patch table), the recording
    ops, and the noise setter. ``Bc`` recorded rows, ``S`` base rows."""

    def __init__(self, model: nn.Module, sites: Sequence[Site], modules: Sequence[nn.Module], Bc: int, S: int,
                 patch: PatchFn, device: torch.device) -> None:
        self.model, self.sites, self.Bc, self.S, self.patch, self.device = model, list(sites), Bc, S, patch, device
        self.specs = [_spec(f"site {i}", s, m, _put) for i, (s, m) in enumerate(zip(sites, modules))]
        self.tables: list[torch.Tensor | None] = [None] * len(self.sites)
        self.differs: list[torch.Tensor | None] = [None] * len(self.sites)
        self.steps = [CellStep() for _ in self.sites]
        self.call = CallPlan(batch=0, keys=[], sources=[], reps={}, extra_kwargs=None, n_groups=0, serial=False)
        self.setters = [Setter(spec, None, None, step=step) for spec, step in zip(self.specs, self.steps)]

    # -- recording ---------------------------------------------------------------------------------
    def install_recording(self, session: HookSession) -> None:
        ops: list[Op] = [_Record(spec, self, i) for i, spec in enumerate(self.specs)]
        install(session, self.model, ops, self.call, set())

    def missing(self) -> list[int]:
        return [i for i, t in enumerate(self.tables) if t is None]

    # -- noise (causal tracing) --------------------------------------------------------------------
    def install_noise(self, session: HookSession, emb: nn.Module, positions: Sequence[int], values: torch.Tensor,
                      rows: torch.Tensor, samples: torch.Tensor) -> None:
        """Add noise sample ``samples[k]`` to batch row ``rows[k]`` at ``positions`` of ``emb``'s output."""
        path = next((n for n, m in self.model.named_modules() if m is emb), "")
        spec = _spec("noise", Site(path, "output"), emb, _add)
        pos = torch.as_tensor(list(positions), dtype=torch.long)
        loc = Loc(pos.unsqueeze(0).expand(len(rows), -1), None, int(pos.max()), 0, rows=rows)
        self.call.reps["noise"] = values.to(self.device)[samples]
        install(session, self.model, [Setter(spec, loc, None)], self.call, set())

    # -- patching ----------------------------------------------------------------------------------
    def install_setters(self, session: HookSession, which: Sequence[int]) -> None:
        install(session, self.model, [self.setters[i] for i in sorted(set(which))], self.call, set())

    def index(self, patches: list[tuple[int, Patch]], offset: int = 0) -> dict[int, tuple[Loc, torch.Tensor]]:
        """``(block, patch)`` pairs (block ``k``: batch rows ``k*S .. k*S+S-1``) grouped by site ->
        ``(loc, source)``: the units to write in a tensor whose positions start at ``offset``,
        and the values to write there."""
        S = self.S
        by_site: dict[int, list] = {}
        for k, p in patches:
            by_site.setdefault(p.site, []).append((k, p))
        out = {}
        samples = torch.arange(S, device=self.device)
        for i, items in by_site.items():
            table = self.tables[i]
            assert table is not None  # kept by the recording pass (the runner checks every site ran)
            rows = torch.cat([k * S + samples for k, _ in items])
            tok_list = [p.token for _, p in items]
            toks = torch.tensor(tok_list, device=self.device).repeat_interleave(S)
            crow = samples.repeat(len(items)) if table.shape[0] == S else torch.zeros_like(rows)
            if self.sites[i].head_layout:
                if any(p.head is None for _, p in items):
                    raise ConfigError("head components need a head index in every patch")
                head_list = [p.head for _, p in items]
                heads = torch.tensor(head_list, device=self.device).repeat_interleave(S)
                loc = Loc(heads.unsqueeze(1), (toks - offset).unsqueeze(1), max(head_list), max(tok_list) - offset, rows=rows)
                src = table[crow, heads, toks].unsqueeze(1).unsqueeze(1)
            else:
                loc = Loc((toks - offset).unsqueeze(1), None, max(tok_list) - offset, 0, rows=rows)
                src = table[crow, toks].unsqueeze(1)
            out[i] = (loc, src)
        return out

    def arm(self, index: dict[int, tuple[Loc, torch.Tensor]]) -> None:
        """Point each site's setter at its part of ``index`` (sites not in it write nothing)."""
        for i, step in enumerate(self.steps):
            got = index.get(i)
            step.loc = None if got is None else got[0]
            if got is not None:
                self.call.reps[self.specs[i].key] = got[1]

    def disarm(self) -> None:
        for step in self.steps:
            step.loc = None

    def write(self, i: int, state: torch.Tensor, loc: Loc, source: torch.Tensor) -> None:
        """Write site ``i``'s patch straight into ``state`` (a recorded residual stream)."""
        site = self.sites[i]
        scatter(make_view(state, site.view, site.n_heads), loc, source.to(state.dtype))
