"""Batched execution of restoration sweeps (causal tracing, activation patching).

Vocabulary:

* **base rows**: the run being patched (the corrupted run), ``S`` rows: noise samples for causal
  tracing, examples for activation patching.
* **clean rows**: the run whose activations are restored, ``1`` row (shared by every base row) or
  ``S`` rows (clean row ``i`` feeds base row ``i``).
* **site**: a component at a layer, resolved with :func:`sweep_site`; its clean activation is
  recorded once and never recomputed.
* **cell**: one entry of a sweep grid: a set of :class:`Patch` es applied together, in every base
  row. Its value is a metric of the ``S`` rows' last-position logits.

How a sweep runs:

1. **One recording pass**: clean and base rows share a single batched forward pass. It stores the
   clean activations at every site, the last-position logits of both runs and, for models laid
   out as ``*.layers[i]`` (or ``*.h[i]``), the base run's residual stream entering each layer with
   the arguments each layer was called with.
2. **The sweep**. In a cell whose first patch sits at layer ``L`` every layer below ``L`` computes
   exactly what it computed in the base run, so vene does not compute it again: cells are sorted
   by the layer where they start, and a *layer-stepping runner* (:mod:`vene.analysis.stepping`)
   walks the layers once per chunk, adding each cell's rows to the batch at its layer (from the
   recorded base state, with the restored clean state written in) and running each layer on every
   row present. A restoration at layer 20 of 30 costs 9 layer-steps of one row instead of a
   30-layer forward pass. Under causal attention a restoration at token ``t`` cannot change the
   positions before ``t`` either, so cells are also grouped by their first patched token and only
   positions ``t..`` are computed, attending to the recorded keys/values of the prefix. Only the
   last position goes through the final norm and the output head. Chunks are sized to a memory
   budget. Patches whose clean value equals the base value (nothing to restore) are dropped.
   Models that cannot be stepped (no layer list, or a replay check fails) run the same cells as
   plain batched forward passes, with the head on the last position only when the model accepts
   ``logits_to_keep``.

Both executors -- plain batched forward passes and layer stepping (record -> replay) -- run the
same ops of the core: each patch is a :class:`vene.ops.Setter` whose source is the site's
recorded value through a patch function (clean value, mean / resample / zero ablation; see
:mod:`vene.analysis.cells`), installed with :func:`vene.engine.install` in a
:class:`vene.hooks.HookSession` (removed also when something raises). Module-path components
are swept as templates with the layer (``"model.layers[{}].mlp.output"``, see :func:`sweep_site`).
"""
from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from ..components import Site, detect_architecture, get_module, resolve_site
from ..errors import ConfigError, SourceError
from ..hooks import HookSession
from ..placement import model_device
from .cells import CellSites, Patch, PatchFn, patch_function
from .stepping import LayerStepper


class SweepFallbackWarning(UserWarning):
    """A sweep runs in a slower mode than "step+prefix"; the message says why."""


#: Default memory budget (bytes) for the activations of one chunk of rows.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _logits_of(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if logits is None and isinstance(out, torch.Tensor):
        logits = out
    if logits is None or logits.dim() != 3:
        raise ConfigError(
            "Sweeps read next-token logits, but the model returned no (batch, seq, vocab) logits; "
            "use a model with a language-model head (e.g. LlamaForCausalLM, GPT2LMHeadModel)."
        )
    return logits


def _cat_inputs(a: Mapping, b: Mapping) -> dict:
    out: dict[Any, Any] = {}
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
            out[k] = torch.cat([va, vb.to(va.device)], 0)
        elif k == "attention_mask" and (isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor)):
            ref = va if isinstance(va, torch.Tensor) else cast(torch.Tensor, vb)  # one of them is (the elif)
            fill_a = va if isinstance(va, torch.Tensor) else torch.ones_like(a["input_ids"])
            fill_b = vb if isinstance(vb, torch.Tensor) else torch.ones_like(b["input_ids"])
            out[k] = torch.cat([fill_a.to(ref.device), fill_b.to(ref.device)], 0)
        else:
            out[k] = va if va is not None else vb
    return out


def sweep_site(model: nn.Module, component: str, layer: int) -> Site:
    """The site of ``component`` at ``layer``. A module path names one module, so a sweep over
    layers takes it as a template with the layer: ``"model.layers[{}].mlp.output"``."""
    if "{}" in component:
        return resolve_site(model, component.format(layer), layer)
    if "." in component:
        example = re.sub(r"\[\d+\]|\.\d+(?=\.)", lambda m: "[{}]" if m.group(0)[0] == "[" else ".{}", component, count=1)
        if example == component:
            example = "model.layers[{}].mlp.output"
        raise ConfigError(
            f"{component!r} is a module path: it names one module, not one per layer, so a sweep over "
            f"layers cannot place it. Give a template with the layer, e.g. {example!r}."
        )
    return resolve_site(model, component, layer)


class _Values:
    """One value per cell, each a scalar or a tensor of one shape (allocated at the first put)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.t: torch.Tensor | None = None

    def put(self, ks: Any, vals: torch.Tensor) -> None:
        if self.t is None:
            self.t = torch.empty((self.n,) + tuple(vals.shape[1:]))
        if isinstance(ks, torch.Tensor):
            idx = ks
        else:
            idx = torch.as_tensor(list(ks) if not isinstance(ks, int) else [ks], dtype=torch.long)
        self.t[idx] = vals.reshape((len(idx),) + tuple(self.t.shape[1:])).to(self.t.dtype)

    def get(self) -> torch.Tensor:
        return self.t if self.t is not None else torch.empty(self.n)


class SweepRunner:
    """Record a clean run and a base run once, then evaluate many cells in few batched passes.

    ``clean`` / ``base``: model inputs (``input_ids`` ``(B, seq)`` and optionally
    ``attention_mask``) with the same sequence length; ``clean`` has 1 or ``S`` rows, ``base``
    ``S``. ``sites``: ``(component, layer)`` pairs. ``noise``: optional ``(positions, values)``
    added to the input-embedding output of the base rows (``values`` ``(S, len(positions),
    d_model)``).
    """

    def __init__(
        self,
        model: nn.Module,
        clean: Mapping,
        base: Mapping,
        sites: Sequence[tuple[str, int]],
        *,
        noise: tuple[Sequence[int], torch.Tensor] | None = None,
        patch: str | PatchFn = "clean",
        memory_budget: int | None = None,
        strategy: str = "auto",
        progress: bool = True,
        desc: str = "sweep",
    ) -> None:
        if strategy not in ("auto", "step", "forward"):
            raise ConfigError(f"strategy must be 'auto', 'step' or 'forward', not {strategy!r}.")
        self.model = model
        if model.training:
            warnings.warn(
                "The model is in training mode, so dropout makes every restoration random; call model.eval() first.",
                stacklevel=3,
            )
        self.device = model_device(model)  # the input device (not meta for an offloaded model)
        self.clean = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}
        self.base = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in base.items()}
        for name, inp in (("clean", self.clean), ("base", self.base)):
            ids = inp.get("input_ids")
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                raise SourceError(f"The {name} input needs input_ids of shape (batch, seq), got {type(ids).__name__}.")
        self.Bc, self.S = self.clean["input_ids"].shape[0], self.base["input_ids"].shape[0]
        self.seq = self.base["input_ids"].shape[1]
        if self.clean["input_ids"].shape[1] != self.seq:
            raise SourceError(
                f"The clean and corrupted inputs must have the same number of tokens (got "
                f"{self.clean['input_ids'].shape[1]} and {self.seq}): patching maps position i to position i."
            )
        if self.Bc not in (1, self.S):
            raise SourceError(f"The clean input has {self.Bc} rows; it needs 1 or as many as the base ({self.S}).")
        self.site_refs = [(c, l) for c, l in sites]
        self.sites: list[Site] = [sweep_site(model, c, l) for c, l in self.site_refs]
        for (c, _), site in zip(self.site_refs, self.sites):
            if site.io == "attn_probs" or (site.head_layout and site.view is None):
                raise ConfigError(f"Component {c!r} cannot be swept; use block/mlp/attention outputs or head_* components.")
        self.modules = [get_module(model, s.module_path) for s in self.sites]
        self.cells = CellSites(model, self.sites, self.modules, self.Bc, self.S, patch_function(patch), self.device)
        self.noise = noise
        self.progress = progress
        self.desc = desc
        self.memory_budget = memory_budget or DEFAULT_MEMORY_BUDGET
        arch = detect_architecture(model)
        self.layers_path = arch[1] if arch is not None else None
        # the architecture's layer list (a ModuleList)
        self.layers = cast(nn.ModuleList, model.get_submodule(self.layers_path)) if self.layers_path else None
        self.site_layer = [self._layer_of(s) for s in self.sites]
        self.stepping = strategy != "forward" and self.layers is not None and all(l is not None for l in self.site_layer)
        if strategy == "step" and not self.stepping:
            raise ConfigError("strategy='step' needs a model with a layer list and sites inside its layers.")
        self.strategy = strategy
        #: Why the sweep runs slower than "step+prefix" (None when it does not, or when asked to).
        self.fallback_reason: str | None = None
        if strategy == "auto" and not self.stepping:
            self.fallback_reason = (
                "the model has no list of layers" if self.layers is None
                else "some sites are not inside the model's layers"
            )
        #: the layer stepper, made by record() (kept only when stepping)
        self.stepper: LayerStepper | None = None
        self.recorded = False

    # -- setup ---------------------------------------------------------------------------------
    def _layer_of(self, site: Site) -> int | None:
        if self.layers_path is None:
            return None
        prefix = self.layers_path + "."
        if not site.module_path.startswith(prefix):
            return None
        head = site.module_path[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def _resid_kind(self, i: int) -> str | None:
        """"out" / "in" when site ``i`` is a whole layer's output / input (the residual stream)."""
        site, layer = self.sites[i], self.site_layer[i]
        if layer is None or site.view is not None or site.module_path != f"{self.layers_path}.{layer}":
            return None
        return {"output": "out", "input": "in"}.get(site.io)

    def _cfg(self, *names: str, default: int) -> int:
        cfg = getattr(self.model, "config", None)
        for n in names:
            v = getattr(cfg, n, None)
            if isinstance(v, int):
                return v
        return default

    @property
    def mode(self) -> str:
        """How the sweep runs: "step+prefix", "step" or "forward" (see the module docstring). Before
        the recording pass: the planned mode ("step" or "forward"), which the pass may lower."""
        if not self.stepping:
            return "forward"
        return "step+prefix" if self.stepper is not None and self.stepper.trim else "step"

    def max_rows(self) -> int:
        d = self._cfg("hidden_size", "n_embd", "d_model", default=1024)
        inter = self._cfg("intermediate_size", "n_inner", default=4 * d)
        heads = self._cfg("num_attention_heads", "n_head", default=16)
        el = next((p.element_size() for p in self.model.parameters()), 4)
        per_row = el * self.seq * (10 * d + 3 * inter + 3 * heads * self.seq)
        return max(self.S, int(self.memory_budget // max(per_row, 1)))

    def _tail_cells(self) -> int:
        vocab = self._cfg("vocab_size", default=50000)
        el = next((p.element_size() for p in self.model.parameters()), 4)
        return max(1, int(self.memory_budget // (4 * vocab * el * self.S)))

    # -- the recording pass -------------------------------------------------------------------
    def record(self) -> None:
        """Run clean and base rows in one forward pass; keep what the sweep needs."""
        model, Bc = self.model, self.Bc
        inputs = _cat_inputs(self.clean, self.base)
        extra: dict[str, Any] = {}
        if _accepts(model.forward, "use_cache"):
            extra["use_cache"] = False
        self._keep_one = _accepts(model.forward, "logits_to_keep")
        if self._keep_one:
            extra["logits_to_keep"] = 1
        # (stepping implies a layer list, hence a layers_path)
        self.stepper = (LayerStepper(model, self.layers_path, Bc + self.S, self.seq)
                        if self.stepping and self.layers_path is not None else None)

        with torch.no_grad(), HookSession(model) as session:
            if self.noise is not None:
                samples = torch.arange(self.S, device=self.device)
                self.cells.install_noise(session, self._embedding(), *self.noise, Bc + samples, samples)
            self.cells.install_recording(session)
            if self.stepper is not None:
                self.stepper.install(session)
            out = model(**inputs, **extra)
        logits = _logits_of(out)[:, -1].float()
        self.clean_logits, self.base_logits = logits[:Bc], logits[Bc:]
        missing = [self.site_refs[i] for i in self.cells.missing()]
        if missing:
            raise ConfigError(f"These sites never ran during the forward pass: {missing}.")
        if self.stepping and self.stepper is not None:  # the stepper exists exactly when stepping
            self.stepping = self.stepper.check(logits)
            if not self.stepping and self.strategy == "step":
                raise ConfigError(
                    f"This model cannot be stepped layer by layer: {self.stepper.reason}. Use strategy='auto' or 'forward'."
                )
            if self.strategy == "step":
                self.stepper.trim = False
            elif self.stepper.reason is not None:
                self.fallback_reason = self.stepper.reason
        if not self.stepping:
            self.stepper = None
        if self.fallback_reason is not None:
            warnings.warn(
                f"{self.desc}: the fast path (layer stepping with prefix reuse) cannot be used for "
                f"{type(model).__name__}: {self.fallback_reason}; running in mode {self.mode!r} instead "
                f"(same results, slower). The mode is recorded in the result's extra['strategy'].",
                SweepFallbackWarning,
                stacklevel=4,
            )
        self.recorded = True

    def _embedding(self) -> nn.Module:
        get = getattr(self.model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if emb is None:
            raise ConfigError("Noise is added to the input embeddings, but the model has no get_input_embeddings().")
        return emb

    # -- the sweep -----------------------------------------------------------------------------
    def run(self, cells: Sequence[Sequence[Patch]], cell_values: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Evaluate ``cells``. ``cell_values(logits)`` maps last-position logits ``(n_cells, S,
        vocab)`` of complete cells to one value per cell ``(n_cells, *shape)`` (``shape`` is
        usually ``()``; :func:`vene.run_calls` keeps the logits). Returns ``(len(cells), *shape)``."""
        if not self.recorded:
            self.record()
        for cell in cells:
            for p in cell:
                if not 0 <= p.site < len(self.sites):
                    raise ConfigError(f"patch site {p.site} out of range")
                if not 0 <= p.token < self.seq:
                    raise ConfigError(f"patch token {p.token} out of range (sequence length {self.seq})")
        values = _Values(len(cells))
        if not cells:
            return values.get()
        # A patch whose clean value equals the base run's value (e.g. tokens before the first
        # corrupted one, under causal attention) changes nothing: drop it, and do not compute
        # cells left with no patch (they are the base run).
        cells = [[p for p in cell if self._changes(p)] for cell in cells]
        empty = [k for k, cell in enumerate(cells) if not cell]
        if empty:
            base_value = cell_values(self.base_logits.unsqueeze(0)).float().cpu()[0]
            values.put(empty, base_value.unsqueeze(0).expand((len(empty),) + tuple(base_value.shape)))
        todo = [k for k, cell in enumerate(cells) if cell]
        if not todo:
            return values.get()
        per_chunk = max(1, self.max_rows() // self.S)
        if self.stepping:
            plans = {k: self._entry(cells[k]) for k in todo}
            order = sorted(todo, key=lambda k: plans[k][0])
            chunks = [order[i: i + per_chunk] for i in range(0, len(order), per_chunk)]
            assert self.stepper is not None  # record() keeps it exactly when stepping
            n = len(self.stepper)
            total = sum(n - plans[c[0]][0] + 1 for c in chunks)
        else:
            chunks = [todo[i: i + per_chunk] for i in range(0, len(todo), per_chunk)]
            total = len(chunks)
        from tqdm.auto import tqdm

        with torch.no_grad(), tqdm(total=total, desc=self.desc, disable=not self.progress, leave=False) as bar:
            for chunk in chunks:
                if self.stepping:
                    vals = self._run_stepped([plans[k] for k in chunk], cell_values, bar)
                else:
                    vals = self._run_forward([cells[k] for k in chunk], cell_values)
                    bar.update(1)
                values.put(chunk, vals.float().cpu())
        return values.get()

    def _changes(self, p: Patch) -> bool:
        mask = self.cells.differs[p.site]
        assert mask is not None  # recorded for every site (record() raises on sites that never ran)
        if self.sites[p.site].head_layout:
            if p.head is None or not 0 <= p.head < mask.shape[0]:
                raise ConfigError(f"{self.site_refs[p.site][0]} is a head component: patches need a head index in range")
            return bool(mask[p.head, p.token])
        return bool(mask[p.token])

    def _entry(self, cell: Sequence[Patch]) -> tuple[int, list[Patch], list[Patch]]:
        """(layer where the cell's rows join, patches written into the joining state, patches
        applied by hooks). Joining at ``n_layers`` means: straight to the output head."""
        # only stepped sweeps get here: a layer list, and every site inside a layer
        assert self.layers is not None
        site_layer = cast("list[int]", self.site_layer)
        if not cell:
            return len(self.layers), [], []
        m = min(site_layer[p.site] for p in cell)
        first = [p for p in cell if site_layer[p.site] == m]
        kinds = {self._resid_kind(p.site) for p in first}
        if kinds == {"out"}:
            entry, at_entry = m + 1, first
        else:
            entry, at_entry = m, [p for p in first if self._resid_kind(p.site) == "in"]
        ids = {id(p) for p in at_entry}
        return entry, at_entry, [p for p in cell if id(p) not in ids]

    def _run_stepped(self, plans: list[tuple[int, list[Patch], list[Patch]]], cell_values: Callable, bar: Any) -> torch.Tensor:
        st, S, Bc = self.stepper, self.S, self.Bc
        assert st is not None  # record() keeps it exactly when stepping
        n = len(st)
        # groups of cells by the first position they patch (computed from there on)
        by_first: dict[int, list[int]] = {}
        for k, (_, at_entry, hooked) in enumerate(plans):
            f = min(p.token for p in at_entry + hooked) if st.trim else 0
            by_first.setdefault(f, []).append(k)
        groups: list[dict[str, Any]] = []
        for f, ks in sorted(by_first.items()):
            joins: dict[int, list[int]] = {}
            for a, k in enumerate(ks):
                joins.setdefault(plans[k][0], []).append(a)
            hook_idx = self.cells.index([(a, p) for a, k in enumerate(ks) for p in plans[k][2]], offset=f)
            groups.append({"f": f, "ks": ks, "joins": joins, "hooks": hook_idx, "h": None})
        with HookSession(self.model) as session:
            self.cells.install_setters(session, [i for g in groups for i in g["hooks"]])
            for j in range(min(p[0] for p in plans), n + 1):
                for g in groups:
                    adds = g["joins"].get(j)
                    if adds:
                        state = (st.layer_in[j] if j < n else st.layer_out[n - 1])[Bc:, g["f"]:]
                        new = state.repeat(len(adds), 1, 1)
                        entry_idx = self.cells.index([(b, p) for b, a in enumerate(adds) for p in plans[g["ks"][a]][1]], offset=g["f"])
                        for i, (loc, source) in entry_idx.items():
                            self.cells.write(i, new, loc, source)
                        g["h"] = new if g["h"] is None else torch.cat([g["h"], new], 0)
                    if j < n and g["h"] is not None:
                        self.cells.arm(g["hooks"])
                        try:
                            src = Bc + torch.arange(g["h"].shape[0], device=self.device) % S
                            g["h"] = st.replay(j, g["h"], src, g["f"])
                        finally:
                            self.cells.disarm()
                bar.update(1)
        step = self._tail_cells()
        vals = _Values(len(plans))
        for g in groups:
            ks = g["ks"]
            for a in range(0, len(ks), step):
                b = min(len(ks), a + step)
                logits = st.tail(g["h"][a * S: b * S, -1:])
                vals.put(ks[a:b], cell_values(logits.view(b - a, S, -1)).float().cpu())
        return vals.get()

    def _run_forward(self, cells: list[Sequence[Patch]], cell_values: Callable) -> torch.Tensor:
        S, nc = self.S, len(cells)
        src = torch.arange(nc * S, device=self.device) % S
        inputs = {
            k: (v.index_select(0, src) if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == S else v)
            for k, v in self.base.items()
        }
        extra: dict[str, Any] = {}
        if _accepts(self.model.forward, "use_cache"):
            extra["use_cache"] = False
        if self._keep_one:
            extra["logits_to_keep"] = 1
        idx = self.cells.index([(k, p) for k, cell in enumerate(cells) for p in cell])
        with HookSession(self.model) as session:
            if self.noise is not None:
                self.cells.install_noise(session, self._embedding(), *self.noise, torch.arange(nc * S, device=self.device), src)
            self.cells.install_setters(session, list(idx))
            self.cells.arm(idx)
            try:
                out = self.model(**inputs, **extra)
            finally:
                self.cells.disarm()
        logits = _logits_of(out)[:, -1].float()
        return cell_values(logits.view(nc, S, -1))
