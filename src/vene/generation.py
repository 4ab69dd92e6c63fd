"""Interventions during generation: :meth:`IntervenableModel.generate`.

Sources (if any) are run once, up front, with a plain forward pass; the setters then stay
installed for the whole ``model.generate(**base, **generate_kwargs)`` call and decide at every
model forward pass (a *step*) whether, and where, to act.

**Steps.** Step 0 is the prompt pass (it reads the whole prompt and produces the first new
token). Step ``s >= 1`` is the pass that reads the ``s``-th generated token (and produces the
next one). An intervention at step ``s`` can therefore only change generated tokens ``s + 1``
onwards; the first ``s`` new tokens are those of the plain run.

``timesteps`` chooses the steps (vene extension; it overrides ``intervene_on_prompt``):
``"prompt"`` (step 0), ``"generated"`` (every step >= 1), ``"all"``, an int, a set / list / range
of ints, a callable ``f(step) -> bool``, or a dict ``{key: any of these}`` for per-intervention
choices. ``None`` (default) keeps pyvene's rule: interventions with base locations act on every
generated step (``intervene_on_prompt=False``) or on the prompt only (``True``); interventions
without locations act on every step, on the whole tensor. As in pyvene,
``intervene_on_prompt=False`` without ``unit_locations`` means ``{"base": 0}``: position 0 of each
decoding step's input, which with a KV cache is the newest token. With explicit ``timesteps``
there is no such rewrite: no ``unit_locations`` means the whole tensor at the chosen steps (and
interventions missing from a ``timesteps`` dict act at every step).

**Positions.** ``positions="step"`` (default, pyvene): base locations index the current step's
input tensor; with a KV cache a decoding step sees one token, so only ``0`` / ``-1`` address it.
Negative locations count from the end of the step's input: ``-1`` is always *the newest token*
(the last prompt token at step 0). ``positions="absolute"``: a location ``p >= 0`` is the ``p``-th
token of each example's own sequence (prompt tokens ``0..len-1`` not counting left padding, then
the generated tokens); it is intervened at whatever step computes it (with a KV cache exactly
once; without one, at every step that recomputes it, so results do not depend on the cache),
and ``timesteps`` defaults to ``"all"``. Source locations index the source (``-1``: its last
token; in absolute mode counted from each source example's first real token).

Batches of prompts of different lengths must be left-padded with an ``attention_mask``
(transformers then derives the position ids); absolute positions account for the padding, so a
batch generates the same tokens as each prompt alone.

**Collected activations.** As in pyvene, a flat list: for each collect intervention (in key
order), one entry per step at which it acted, in step order. An entry is the selection of that
step, ``(batch, units, d)`` (``(batch, heads, positions, d)`` for ``"h.pos"``, the whole tensor
without locations); in absolute mode only the units computed at that step are kept (a list of
per-example tensors when examples keep different numbers). ``return_dict=True`` returns a
:class:`GenerateOutput` whose ``collected_keys`` / ``collected_steps`` say which intervention and
step each entry comes from.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import engine, reuse
from .errors import ConfigError, LocationError, SourceError
from .types import Inputs, Sources, Subspaces, UnitLocations
from .hooks import HookSession
from .locations import Loc, build_loc, expand_shorthand, int_rows, per_intervention
from .plan import batch_size

STEP_ALIASES = ("prompt", "generated")


@dataclass
class GenerateOutput:
    """``return_dict=True`` result of :meth:`IntervenableModel.generate`."""

    original_outputs: Any = None
    intervened_outputs: Any = None
    collected_activations: Any = None
    collected_keys: list = field(default_factory=list)
    collected_steps: list = field(default_factory=list)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, str):
            return getattr(self, i)
        return (self.original_outputs, self.intervened_outputs, self.collected_activations)[i]


# ---------------------------------------------------------------------------------------------
# step selection


def step_predicate(spec: Any, key: str) -> Callable[[int], bool]:
    """Turn a ``timesteps`` value into ``f(step) -> bool``."""
    if isinstance(spec, str):
        if spec == "prompt":
            return lambda s: s == 0
        if spec in ("generated", "decode"):
            return lambda s: s >= 1
        if spec == "all":
            return lambda s: True
        raise LocationError(f"{key}: unknown timesteps {spec!r}; use one of {STEP_ALIASES}, an int, a set of ints or a callable.")
    if isinstance(spec, bool):
        raise LocationError(f"{key}: timesteps={spec!r} is ambiguous; use 'all', 'prompt', 'generated' or step numbers.")
    if isinstance(spec, int):
        if spec < 0:
            raise LocationError(f"{key}: timesteps {spec} is negative; steps count from 0 (the prompt pass).")
        return lambda s: s == spec
    if isinstance(spec, (set, frozenset, list, tuple, range)):
        steps = frozenset(spec)
        bad = [s for s in steps if not isinstance(s, int) or isinstance(s, bool) or s < 0]
        if bad:
            raise LocationError(f"{key}: timesteps must be non-negative ints, got {bad[0]!r}.")
        return lambda s: s in steps
    if callable(spec):
        return lambda s: bool(spec(s))
    raise LocationError(f"{key}: cannot read timesteps {spec!r}; use 'prompt', 'generated', 'all', an int, a set of ints or a callable.")


class _StepCounter:
    """Counts the wrapped model's forward passes during one ``generate`` call."""

    def __init__(self) -> None:
        self.step = -1

    def __call__(self, module: Any, args: Any, kwargs: Any) -> None:
        self.step += 1


# ---------------------------------------------------------------------------------------------
# locations


def _clip(entry: Any) -> Any:
    """Replace negative ints by 0 (placeholders for the call plan; real ones live in the gates)."""
    if isinstance(entry, (list, tuple)):
        return [_clip(e) for e in entry]
    if isinstance(entry, int) and not isinstance(entry, bool) and entry < 0:
        return 0
    return entry


def _length_and_pads(inputs: Mapping, what: str, check: bool) -> tuple[int, torch.Tensor]:
    """Sequence length of ``inputs`` and each example's number of left-padding tokens (``check``:
    refuse masks that are not left padding)."""
    seq = None
    for name in ("input_ids", "inputs_embeds"):
        t = inputs.get(name)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            seq = t.shape[1]
            batch = t.shape[0]
            break
    if seq is None:
        raise SourceError(f"The {what} needs input_ids or inputs_embeds to generate from, got {list(inputs)}.")
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor):
        return seq, torch.zeros(batch, dtype=torch.long)
    m = mask.detach().to("cpu").long()
    pads = (m.cumsum(1) == 0).sum(1)
    if check and bool((m.sum(1) != seq - pads).any()):
        raise LocationError(
            f"The {what}'s attention_mask is not left-padded; absolute positions need left padding "
            "(tokenizer.padding_side = 'left'), which decoder-only generation needs anyway."
        )
    return seq, pads


def _pos_level(unit: str, head_layout: bool) -> int | None:
    """Which location level holds sequence positions: 1 (one-level), 2 (``"x.pos"``) or None."""
    if "." in unit:
        return 2 if unit.split(".")[1] == "pos" else None
    if unit == "pos" and not head_layout:
        return 1
    return None


def _resolve_source(entry: Any, level: int | None, n: int, pads: torch.Tensor, absolute: bool, key: str) -> Any:
    """Source locations with negatives (and, in absolute mode, left padding) resolved."""
    if entry is None or level is None:
        return _clip(entry)
    rows_in = entry[1] if level == 2 else entry
    rows = int_rows(rows_in, len(pads), key, "source", "pos locations")
    out = []
    for b, row in enumerate(rows):
        new = [p + n if p < 0 else (p + int(pads[b]) if absolute else p) for p in row]
        if min(new) < 0 or max(new) >= n:
            raise LocationError(f"{key}: source location {row} is out of range for a source of {n} tokens (example {b}).")
        out.append(new)
    return [entry[0], out] if level == 2 else out


class _Gate:
    """Step strategy of one setter during generation: at each model pass, skip or act at these
    units (the ``select`` protocol of :class:`vene.ops.EveryFiring`)."""

    def __init__(self, key: str, pred: Callable[[int], bool], counter: _StepCounter, loc: Loc | None,
                 level: int | None, absolute: bool, pads: torch.Tensor, prompt_len: int, record: list | None) -> None:
        self.key, self.pred, self.counter, self.loc = key, pred, counter, loc
        self.level, self.absolute, self.pads, self.prompt_len = level, absolute, pads, prompt_len
        self.record = record
        self.hits = 0
        pos = None
        if loc is not None and level is not None:
            pos = loc.idx if level == 1 else loc.idx2
        self.pos = pos  # (batch, units) positions, may be negative
        self.dynamic = pos is not None and (absolute or bool((pos < 0).any()))
        self._cache: dict = {}

    def select(self, fire: int, view: torch.Tensor) -> Any:
        step = self.counter.step
        if not self.pred(step):
            return None
        got = (self.loc, None) if not self.dynamic else self._step_loc(step, view)
        if got is None:
            return None
        if not self.dynamic and self.loc is not None and self.level is not None:
            n = view.shape[self.level]
            top = self.loc.max1 if self.level == 1 else self.loc.max2
            if top >= n:
                raise LocationError(
                    f"{self.key}: base position {top} does not exist at generation step {step}, whose input "
                    f"has {n} position(s). With a KV cache each decoding step sees only the newest token: "
                    "use -1 (or 0) for it, timesteps='prompt' for prompt positions, or positions='absolute'."
                )
        self.hits += 1
        if self.record is not None:
            self.record.append(step)
        return got

    def _step_loc(self, step: int, view: torch.Tensor) -> Any:
        gate_loc, level, pos = self.loc, self.level, self.pos
        assert gate_loc is not None and level is not None and pos is not None  # a dynamic gate has all three
        n = view.shape[level]
        ckey = (n, step if self.absolute else None, view.device)
        if ckey in self._cache:
            return self._cache[ckey]
        if self.absolute:
            start = self.prompt_len + step - n  # first sequence column this step computes
            col = torch.where(pos < 0, pos + n, pos + self.pads.unsqueeze(1) - start)
            valid = (col >= 0) & (col < n)
        else:
            col = torch.where(pos < 0, pos + n, pos)
            if bool((col < 0).any()) or bool((col >= n).any()):
                raise LocationError(
                    f"{self.key}: base positions {pos.tolist()} do not exist at generation step {step}, "
                    f"whose input has {n} position(s); use -1 for the newest token or positions='absolute'."
                )
            valid = None
        if valid is not None and not bool(valid.any()):
            out = None
        else:
            col = col.clamp(0, n - 1).to(view.device)
            if level == 1:
                loc = Loc(col, None, n - 1, 0)
            else:
                loc = Loc(gate_loc.idx.to(view.device), col, gate_loc.max1, n - 1)
            mask = None
            if valid is not None and not bool(valid.all()):
                mask = valid.to(view.device)
                mask = mask if level == 1 else mask.unsqueeze(1)
            out = (loc, mask)
        if len(self._cache) < 64:
            self._cache[ckey] = out
        return out


# ---------------------------------------------------------------------------------------------


def generate(
    intervenable: Any,
    base: Inputs,
    sources: Sources = None,
    unit_locations: UnitLocations = None,
    source_representations: Any = None,
    intervene_on_prompt: bool = False,
    subspaces: Subspaces = None,
    output_original_output: bool = False,
    intervention_additional_kwargs: dict | None = None,
    *,
    timesteps: Any = None,
    positions: str = "step",
    return_dict: bool = False,
    **generate_kwargs: Any,
) -> Any:
    """Generate from ``base`` with the interventions applied (see the module docstring).

    Returns ``(original_or_None, generated)``, or ``((original_or_None, collected), generated)``
    with collect interventions (pyvene's structures); ``generated`` is what ``model.generate``
    returns (token ids ``(batch, prompt + new)`` by default). ``return_dict=True`` gives a
    :class:`GenerateOutput`.
    """
    pvm = intervenable
    model = pvm.model
    if not callable(getattr(model, "generate", None)):
        raise ConfigError(f"{type(model).__name__} has no generate() method; call the IntervenableModel instead.")
    if positions not in ("step", "absolute"):
        raise LocationError(f"positions must be 'step' or 'absolute', got {positions!r}.")
    if not isinstance(base, Mapping):
        raise SourceError(f"base must be a dict of model inputs (e.g. a tokenizer output), got {type(base).__name__}.")
    absolute = positions == "absolute"
    if absolute and pvm.mode != "parallel":
        raise LocationError("positions='absolute' is available in parallel mode only.")
    if unit_locations is None and not intervene_on_prompt and timesteps is None and not absolute:
        unit_locations = {"base": 0}  # pyvene: each decoding step's position 0
    keys = pvm.sorted_keys
    specs = pvm.key_specs
    prompt_len, pads = _length_and_pads(base, "base", absolute)

    # Base locations are kept aside (they may be negative / absolute); the plan sees placeholders.
    base_raw: list = [None] * len(keys)
    planned = unit_locations
    if (pvm.mode == "parallel" and isinstance(unit_locations, dict) and set(unit_locations) <= {"sources->base", "base"}
            and len(unit_locations) == 1):
        batch = batch_size(base, "base")
        under_base = "base" in unit_locations
        src, bse = expand_shorthand(next(iter(unit_locations.values())), len(keys), batch, under_base)
        src_l = per_intervention(src, keys, "The source side of unit_locations")
        base_raw = per_intervention(bse, keys, "The base side of unit_locations")
        srcs = sources if isinstance(sources, (list, tuple)) else [sources] if sources is not None else [None]
        if len(srcs) == 1 and pvm.n_groups > 1:
            srcs = list(srcs) * pvm.n_groups
        fixed = []
        for i, s in enumerate(specs):
            entry = src_l[i] if src is not None else base_raw[i]
            group_src = srcs[s.group] if s.group < len(srcs) else None
            level = _pos_level(s.unit, s.site.head_layout)
            if isinstance(group_src, Mapping) and entry is not None:
                n_src, src_pads = _length_and_pads(group_src, f"source {s.group}", absolute)
                entry = _resolve_source(entry, level, n_src, src_pads, absolute, s.key)
            fixed.append(_clip(entry))
        planned = {"sources->base": (fixed if any(e is not None for e in fixed) else None,
                                     [_clip(e) for e in base_raw] if bse is not None else None)}
    elif absolute or _has_negative(unit_locations):
        raise LocationError("Negative or absolute positions in generate() need parallel-mode unit_locations "
                            "with 'sources->base' or 'base'.")
    plan = pvm.plan_call(base, sources, planned, source_representations, subspaces, intervention_additional_kwargs)
    batch = plan.batch

    counter = _StepCounter()
    records: dict[str, list] = {}
    gates: dict[str, _Gate] = {}
    per_key = timesteps if isinstance(timesteps, dict) else None
    if per_key is not None:
        unknown = [k for k in per_key if k not in keys]
        if unknown:
            raise LocationError(f"timesteps has unknown key {unknown[0]!r}; keys are {keys}.")
    for i, s in enumerate(specs):
        if pvm.mode == "parallel" and planned is not unit_locations:
            loc = build_loc(base_raw[i], s.unit, batch, s.key, "base", negative=True)
        else:
            loc = plan.keys[i].base_loc
        chosen = per_key.get(s.key) if per_key is not None else timesteps
        if chosen is None:
            if absolute:
                chosen = "all"
            elif loc is None:
                chosen = "all"
            else:
                chosen = "prompt" if intervene_on_prompt else "generated"
        level = _pos_level(s.unit, s.site.head_layout)
        if loc is not None and (level != 1 and bool((loc.idx < 0).any())):
            raise LocationError(
                f"{s.key}: negative locations are allowed for positions only (unit {s.unit!r}); "
                "-1 means the newest token."
            )
        record = records.setdefault(s.key, []) if s.is_collect else None
        gates[s.key] = _Gate(s.key, step_predicate(chosen, s.key), counter, loc, level, absolute, pads, prompt_len, record)

    pvm.full_intervention_outputs = plan.full_outputs
    # the execution step: vene's hooks, or another backend's (vene.backends.nnsight_model)
    run = getattr(pvm, "_run_generation", None)
    if run is None:
        original, generated, ops = run_hooked(pvm, plan, gates, counter, base, generate_kwargs, output_original_output)
    else:
        original, generated, ops = run(plan, gates, counter, base, generate_kwargs, output_original_output)
    for op in ops:
        if gates[op.spec.key].hits == 0:
            warnings.warn(
                f"{op.spec.key}: no generation step matched its timesteps and locations, so it never "
                "acted; check timesteps / unit_locations against the number of generated tokens.",
                stacklevel=3,
            )

    collected, ckeys, csteps = None, [], []
    if pvm.return_collect_activations:
        collected = []
        for k in keys:
            acts = plan.collected.get(k, [])
            collected.extend(acts)
            ckeys.extend([k] * len(acts))
            csteps.extend(records.get(k, [])[: len(acts)])
    if return_dict:
        return GenerateOutput(original, generated, collected, ckeys, csteps)
    if pvm.return_collect_activations:
        return (original, collected), generated
    return original, generated


def run_hooked(pvm: Any, plan: Any, gates: dict, counter: _StepCounter, base: Mapping, generate_kwargs: dict,
               want_original: bool) -> tuple[Any, Any, list]:
    """Run a planned ``generate`` call with vene's hooks: the original generation (if wanted),
    the source passes, then ``model.generate`` with the base ops gated by ``gates``; returns
    ``(original or None, generated, base ops)``."""
    model = pvm.model
    original = model.generate(**base, **generate_kwargs) if want_original else None
    protected = engine.protected_storages(base, *plan.sources)
    reused = None  # a source seen by an earlier call (forward or generate) is not run again
    if pvm.reuse_sources and not pvm.model_has_grad and not pvm._stateful:
        reused = reuse.plan_reuse(model, plan)
    engine.run_sources(model, plan, protected, pvm.model_has_grad, not any(s.unit == "t" for s in pvm.key_specs),
                       reused)
    ops = engine.ops_for(plan, {}, {plan.n_groups: None}, steps=gates)
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        with HookSession(model) as session:
            engine.install(session, model, ops, plan, protected)
            generated = model.generate(**base, **generate_kwargs)
    finally:
        handle.remove()
    engine.check_fired(ops, "generation")
    return original, generated, ops


def _has_negative(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_negative(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_negative(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value < 0
