"""``IntervenableModel``: wrap a model, run intervened forward passes."""
from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import engine
from .components import get_module, resolve_site
from .config import IntervenableConfig, RepresentationConfig
from .engine import CallPlan, KeySpec, Op
from .errors import ConfigError, SourceError
from .hooks import HookSession
from .interventions import (
    CollectIntervention,
    Intervention,
    LambdaIntervention,
    NoiseIntervention,
)
from .locations import (
    check_site,
    check_sorted_keys,
    check_sources_given,
    check_unit_counts,
    normalise_subspaces,
    normalise_unit_locations,
    units_width,
)
from .model_helpers import ParameterHelpersMixin
from .serialization import SerializationMixin
from .training.guards import check_gradient_checkpointing

logger = logging.getLogger(__name__)


@dataclass
class IntervenableModelOutput:
    """``return_dict=True`` result of :meth:`IntervenableModel.forward`."""

    original_outputs: Any = None
    intervened_outputs: Any = None
    collected_activations: Any = None

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, str):
            return getattr(self, i)
        return (self.original_outputs, self.intervened_outputs, self.collected_activations)[i]


def _key_for(rep: RepresentationConfig) -> str:
    unit = rep.unit.replace(".", "_")
    if "." in rep.component:
        # pyvene's form: only the dots become underscores ("model.layers[1].mlp.output" ->
        # "comp_model_layers[1]_mlp_output_..."); code indexes pv_model.interventions[key]
        return f"comp_{rep.component.replace('.', '_')}_unit_{unit}_nunit_{rep.max_number_of_units}"
    return f"layer_{rep.layer}_comp_{rep.component}_unit_{unit}_nunit_{rep.max_number_of_units}"


def _batch_size(inputs: Mapping, what: str) -> int:
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise SourceError(f"The {what} has no tensor with a batch dimension: {list(inputs)}.")


def _accepts_kwargs(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _select_rows(obj: Any, rows: slice, total: int) -> Any:
    """Take batch rows ``rows`` out of a model output (tensors, tuples, dicts, ModelOutputs)."""
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() > 0 and obj.shape[0] == total else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_select_rows(v, rows, total) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_select_rows(v, rows, total) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: _select_rows(v, rows, total) for k, v in obj.items()}
        try:
            return type(obj)(**items)
        except TypeError:
            return type(obj)(items)
    return obj


#: Largest fused batch (rows x tokens x hidden width) for ``batch_sources="auto"`` on CPU. Measured
#: on 2 cores: a fused pass wins below it (SmolLM2 b=1: 0.58x of two hand-hooked passes), separate
#: passes with early stopping win above it (SmolLM2 b=4: 0.72x vs 0.77x fused).
FUSE_BUDGET = 45_000
#: The same on CUDA, where batching stays latency-bound for much larger batches (not yet measured).
FUSE_BUDGET_CUDA = 4_000_000


class IntervenableModel(SerializationMixin, ParameterHelpersMixin, nn.Module):
    """A model plus a set of interventions.

    ``IntervenableModel(config, model)``: ``config`` is an :class:`IntervenableConfig`, or anything
    it accepts (a dict, a list of dicts...). ``model`` is any ``nn.Module``; components such as
    ``"block_output"`` resolve for known architectures, module paths such as
    ``"model.layers[3].mlp.output"`` work everywhere.

    Wrapping freezes the model, as pyvene does: it is put in eval mode (dropout off, so identical
    calls give identical outputs) and its parameters get ``requires_grad=False``, so training code
    such as ``Adam(pv_model.get_trainable_parameters())`` + ``loss.backward()`` computes gradients
    for the interventions only. :meth:`enable_model_gradients` trains the model too (IIT);
    ``freeze_model=False`` leaves the model exactly as it is (mode and ``requires_grad``). No hooks
    are left on the model between calls.

    ``batch_sources``: ``"auto"`` (default) runs sources and base in one batched forward pass when
    their inputs have the same shapes and the fused batch is small enough for batching to pay
    (below :data:`FUSE_BUDGET` rows x tokens x width on CPU, where bigger batches are compute-bound
    and separate, early-stopped source passes are faster); ``True`` always fuses when shapes allow;
    ``False`` never fuses (use it for models whose examples interact within a batch).
    """

    def __init__(
        self,
        config: Any,
        model: nn.Module,
        use_fast: bool = False,
        as_adaptor: bool = False,
        intervenables_sort_fn: Any = None,
        batch_sources: bool | str = "auto",
        freeze_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ConfigError(f"Unexpected keyword arguments: {', '.join(kwargs)}.")
        if not isinstance(config, IntervenableConfig):
            config = IntervenableConfig(config)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.config = config
        self.mode = config.mode
        self.model = model
        self.model_config = getattr(model, "config", None)
        self.model_type = type(model)
        self.use_fast = use_fast
        self.as_adaptor = as_adaptor
        if batch_sources not in (True, False, "auto"):
            raise ConfigError(f"batch_sources must be True, False or 'auto', got {batch_sources!r}.")
        self.batch_sources = batch_sources
        self.model_has_grad = False
        self.representations: dict[str, RepresentationConfig] = {}
        self.interventions = nn.ModuleDict()
        self._specs: dict[str, KeySpec] = {}
        self.full_intervention_outputs: dict[str, Any] = {}
        self._links: dict[Any, nn.Module] = {}
        self._intervention_reverse_link: dict[str, str] = {}

        counts: dict[str, int] = {}
        keys = []
        group_keys = [rep.group_key for rep in config.representations]
        if any(g is not None for g in group_keys) and any(g is None for g in group_keys):
            missing = [i for i, g in enumerate(group_keys) if g is None]
            raise ConfigError(
                f"group_key is set on some representations but not on {missing}; set it on all or none."
            )
        ordered_groups = sorted(set(group_keys), key=lambda g: (str(type(g)), g)) if group_keys[0] is not None else None
        emb_std = None
        for i, rep in enumerate(config.representations):
            prefix = _key_for(rep)
            n = counts.get(prefix, 0)
            counts[prefix] = n + 1
            key = f"{prefix}#{n}"
            site = resolve_site(model, rep.component, rep.layer, rep.moe_key)
            check_site(rep, site, model, key)
            intervention = self._build_intervention(config, i, rep, site)
            if callable(getattr(intervention, "bind_site", None)):  # e.g. LoRA infers its input size
                intervention.bind_site(get_module(model, site.module_path), site)
            if isinstance(intervention, NoiseIntervention) and intervention.noise_level is None:
                if emb_std is None:
                    emb_std = self._embedding_std()
                if emb_std is not None:
                    intervention.set_embedding_std(emb_std)
            if rep.intervention_link_key is not None:
                linked = self._links.setdefault(rep.intervention_link_key, intervention)
                intervention = linked
                self._intervention_reverse_link[key] = f"link#{rep.intervention_link_key}"
            self.interventions[key] = intervention
            self.representations[key] = rep
            is_lambda = isinstance(intervention, LambdaIntervention)
            keep = getattr(intervention, "keep_last_dim", True)
            self._specs[key] = KeySpec(
                key=key,
                index=i,
                site=site,
                intervention=intervention,
                group=ordered_groups.index(rep.group_key) if ordered_groups is not None else i,
                unit=rep.unit,
                is_lambda=is_lambda,
                is_collect=isinstance(intervention, CollectIntervention),
                flatten=not keep and not is_lambda,
                pass_kwargs=(not is_lambda) and _accepts_kwargs(intervention.forward),
                getter_io="input" if getattr(intervention, "source_from_input", False) else site.io,
                module=get_module(model, site.module_path),
            )
            keys.append(key)
        if config.sorted_keys:
            unknown = [k for k in config.sorted_keys if k not in self._specs]
            if unknown or len(config.sorted_keys) != len(keys):
                raise ConfigError(f"config.sorted_keys {config.sorted_keys} do not match the sites {keys}.")
            keys = list(config.sorted_keys)
        elif intervenables_sort_fn is not None:
            keys = check_sorted_keys(intervenables_sort_fn, model, self.representations, keys)
        self.sorted_keys: list[str] = keys
        self.n_groups = len(ordered_groups) if ordered_groups is not None else len(keys)
        self._intervention_group = {g: [k for k in keys if self._specs[k].group == g] for g in range(self.n_groups)}
        self.return_collect_activations = any(s.is_collect for s in self._specs.values())
        self._batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._stateful = any(rep.unit == "t" for rep in config.representations)
        self._uses_cache_flag = self.model_config is not None and hasattr(self.model_config, "use_cache")
        if freeze_model:  # last: a failing construction leaves the model as it was
            self.disable_model_gradients()

    # -- construction helpers ----------------------------------------------------------------
    def _build_intervention(self, config: IntervenableConfig, i: int, rep: RepresentationConfig, site: Any) -> nn.Module:
        impl = config.site_intervention(i)
        if isinstance(impl, nn.Module):
            return impl
        if inspect.isclass(impl):
            if not issubclass(impl, nn.Module):
                raise ConfigError(f"Representation {i}: {impl!r} is not an intervention class.")
            kwargs = dict(rep._asdict())
            kwargs.pop("intervention_type", None)
            kwargs.pop("intervention", None)
            if kwargs.get("source_representation") is None:
                kwargs.pop("source_representation", None)
            embed = site.dim * rep.max_number_of_units if site.dim is not None else None
            return impl(**kwargs, embed_dim=embed, use_fast=self.use_fast)
        if callable(impl):
            return LambdaIntervention(impl)
        raise ConfigError(f"Representation {i}: cannot build an intervention from {impl!r}.")

    def _embedding_std(self) -> float | None:
        get = getattr(self.model, "get_input_embeddings", None)
        emb = None
        if callable(get):
            try:
                emb = get()
            except (NotImplementedError, AttributeError):
                emb = None
        weight = getattr(emb, "weight", None)
        if weight is None:
            return None
        with torch.no_grad():
            return float(weight.float().std())

    def __repr__(self) -> str:
        lines = [f"IntervenableModel(mode={self.mode!r}, model={type(self.model).__name__}, interventions=["]
        for k in self.sorted_keys:
            s = self._specs[k]
            lines.append(f"  {k}: {type(s.intervention).__name__} at {s.site.describe()} (group {s.group})")
        lines.append("])")
        return "\n".join(lines)

    __str__ = __repr__

    # -- the call ------------------------------------------------------------------------------
    def _plan(
        self,
        base: Any,
        sources: Any,
        unit_locations: Any,
        source_representations: Any,
        subspaces: Any,
        intervention_additional_kwargs: Any,
    ) -> CallPlan:
        if not isinstance(base, Mapping):
            raise SourceError(
                f"base must be a dict of model inputs (e.g. a tokenizer output), got {type(base).__name__}."
            )
        batch = _batch_size(base, "base")
        keys = self.sorted_keys
        specs = [self._specs[k] for k in keys]
        G = self.n_groups

        # sources: one per group (a single source is shared by every group)
        if sources is None:
            srcs: list = [None] * G
        else:
            srcs = list(sources) if isinstance(sources, (list, tuple)) else [sources]
            if len(srcs) == 1 and G > 1:
                srcs = srcs * G
            if len(srcs) != G:
                raise SourceError(
                    f"Got {len(srcs)} sources but the configuration has {G} groups of interventions; "
                    f"pass one source per group (None to skip a group), or a single shared source."
                )
        for g, s in enumerate(srcs):
            if s is None:
                continue
            if not isinstance(s, Mapping):
                raise SourceError(f"Source {g} must be a dict of model inputs or None, got {type(s).__name__}.")
            sb = _batch_size(s, f"source {g}")
            if sb != batch:
                raise SourceError(f"Source {g} has batch size {sb} but the base has {batch}; they must match.")

        # source representations
        reps: dict[str, Any] = {}
        if source_representations is not None:
            if isinstance(source_representations, dict):
                unknown = [k for k in source_representations if k not in self._specs]
                if unknown:
                    raise SourceError(
                        f"source_representations has unknown key {unknown[0]!r}; keys are {keys}."
                    )
                reps = {k: v for k, v in source_representations.items() if v is not None}
            elif isinstance(source_representations, (list, tuple)):
                if len(source_representations) != len(keys):
                    raise SourceError(
                        f"source_representations has {len(source_representations)} entries for "
                        f"{len(keys)} interventions; give one per intervention (None to skip) or a dict by key."
                    )
                reps = {k: v for k, v in zip(keys, source_representations) if v is not None}
            elif isinstance(source_representations, torch.Tensor):
                reps = {k: source_representations for k in keys}
            else:
                raise SourceError(
                    "source_representations must be a tensor, a list (one per intervention) or a dict by key."
                )

        # Locations depend only on their value and the batch size: a repeated call (a sweep, a
        # training loop) reuses the index tensors built last time, already on the device.
        cache_key = None
        if unit_locations is not None:
            try:
                text = repr(unit_locations)
            except RecursionError:  # far too deep to be valid: normalising says so
                text = "tensor"
            # only plain Python values: a tensor's repr may be summarised, so it is no key
            if len(text) <= 4096 and "tensor" not in text and "array" not in text and "..." not in text:
                cache_key = (batch, text)
        cached = self.__dict__.get("_loc_cache")
        if cache_key is not None and cached is not None and cached[0] == cache_key:
            normalised = cached[1]
        else:
            normalised = normalise_unit_locations(
                unit_locations,
                mode=self.mode,
                keys=keys,
                groups=[s.group for s in specs],
                n_groups=G,
                units=[s.unit for s in specs],
                batch=batch,
                links=[self.representations[k].intervention_link_key for k in keys],
            )
            if cache_key is not None:
                self.__dict__["_loc_cache"] = (cache_key, normalised)
        src_locs, base_locs, src_given, base_given, target = (list(part) for part in normalised)
        subs = normalise_subspaces(subspaces, keys, batch)
        check_sources_given(keys, [not s.constant for s in specs], reps, sources is not None)
        widths = [units_width(s.intervention, s.site, s.unit) for s in specs]
        check_unit_counts(keys, widths, base_locs, "base")
        check_unit_counts(keys, widths, src_locs, "source")

        active = []
        needs_getter = []
        for i, s in enumerate(specs):
            has_rep = s.key in reps
            has_src = srcs[s.group] is not None and not has_rep
            # the source side defaults to the base side when only base locations were given
            if has_src and not src_given[i] and base_given[i]:
                src_locs[i] = base_locs[i]
            # constant-source interventions ignore sources; functions receive one when given
            getter = has_src and (not s.constant or s.is_lambda)
            active.append(getter or has_rep or s.constant)
            needs_getter.append(getter)
        return CallPlan(
            batch=batch,
            specs=specs,
            active=active,
            needs_getter=needs_getter,
            src_locs=src_locs,
            base_locs=base_locs,
            target=target,
            subspaces=subs,
            sources=srcs,
            reps=reps,
            extra_kwargs=intervention_additional_kwargs,
            n_groups=G,
            serial=self.mode == "serial",
        )

    def _can_fuse(self, plan: CallPlan, base: Mapping, labels: Any, use_cache: Any, want_original: bool) -> bool:
        if not self.batch_sources or labels is not None or use_cache or self._stateful:
            return False
        if self.batch_sources == "auto" and not self._fusion_pays(plan, base, want_original):
            return False
        if any(m.training for m in self._batchnorms):
            return False
        for s in plan.sources:
            if s is None:
                continue
            if set(s.keys()) != set(base.keys()):
                return False
            for k, v in base.items():
                w = s[k]
                if isinstance(v, torch.Tensor):
                    if not isinstance(w, torch.Tensor) or v.shape != w.shape or v.dtype != w.dtype or v.device != w.device:
                        return False
                elif isinstance(w, torch.Tensor) or v != w:
                    return False
        return True

    def _fusion_pays(self, plan: CallPlan, base: Mapping, want_original: bool) -> bool:
        """Whether one fused pass beats separate passes (measured: benchmarks/interchange.py)."""
        blocks = 1 + int(want_original) + len({id(s) for s in plan.sources if s is not None})
        tokens = 1
        device = None
        for v in base.values():
            if isinstance(v, torch.Tensor) and v.dim() >= 2:
                tokens, device = v.shape[1], v.device
                break
        cfg = self.model_config
        width = next((getattr(cfg, a) for a in ("hidden_size", "n_embd", "d_model", "h_dim")
                      if isinstance(getattr(cfg, a, None), int)), 1024)
        budget = FUSE_BUDGET_CUDA if device is not None and device.type == "cuda" else FUSE_BUDGET
        return plan.batch * blocks * tokens * width <= budget

    def forward(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: Any = None,
        source_representations: Any = None,
        subspaces: Any = None,
        labels: Any = None,
        output_original_output: bool = False,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        intervention_additional_kwargs: dict | None = None,
    ) -> Any:
        """Run the base with the interventions applied.

        Returns ``(original_outputs, intervened_outputs)`` (``original_outputs`` is None unless
        ``output_original_output=True``); with any :class:`CollectIntervention`,
        ``((original_outputs, collected_activations), intervened_outputs)``, where
        ``collected_activations`` is a flat list (one tensor per collect site and firing, in key
        order); with ``return_dict=True``, an :class:`IntervenableModelOutput`.
        """
        check_gradient_checkpointing(self)
        plan = self._plan(base, sources, unit_locations, source_representations, subspaces, intervention_additional_kwargs)
        extra: dict[str, Any] = {}
        if labels is not None:
            extra["labels"] = labels
        if use_cache is not None and self._uses_cache_flag:
            extra["use_cache"] = use_cache
        groups_used = sorted({s.group for s, g in zip(plan.specs, plan.needs_getter) if g})
        fuse = bool(groups_used) or output_original_output
        fuse = fuse and self._can_fuse(plan, base, labels, use_cache, output_original_output)
        self.full_intervention_outputs = plan.full_outputs
        if fuse:
            original, intervened = self._run_fused(plan, base, groups_used, extra, output_original_output)
        else:
            original, intervened = self._run_separate(plan, base, groups_used, extra, output_original_output)
        collected = None
        if self.return_collect_activations:
            collected = []
            for k in self.sorted_keys:
                collected.extend(plan.collected.get(k, []))
        if return_dict:
            return IntervenableModelOutput(original, intervened, collected)
        if self.return_collect_activations:
            return (original, collected), intervened
        return original, intervened

    # -- execution strategies ------------------------------------------------------------------
    def _ops(self, plan: CallPlan, getter_rows: dict[int, slice | None], target_rows: dict[int, slice | None]) -> list[Op]:
        """Ops in key order: getters of the groups in ``getter_rows`` (reading those rows) and
        setters whose target group is in ``target_rows`` (writing those rows)."""
        ops: list[Op] = []
        for i, s in enumerate(plan.specs):
            if not plan.active[i]:
                continue
            if plan.needs_getter[i] and s.group in getter_rows:
                ops.append(Op(s, False, plan.src_locs[i], getter_rows[s.group]))
            t = plan.target[i]
            if t in target_rows:
                ops.append(Op(s, True, plan.base_locs[i], target_rows[t], plan.subspaces[i]))
        return ops

    def _run_fused(self, plan: CallPlan, base: Mapping, groups_used: list[int], extra: dict, want_original: bool) -> tuple[Any, Any]:
        B = plan.batch
        blocks: list[Mapping] = []
        offset = 0
        orig_rows = None
        if want_original:
            blocks.append(base)
            orig_rows = slice(0, B)
            offset = B
        base_rows = slice(offset, offset + B)
        blocks.append(base)
        offset += B
        row_of_source: dict[int, slice] = {}
        getter_rows: dict[int, slice] = {}
        # serial mode: every group's source needs its own rows (it is written into)
        needed = sorted(set(groups_used) | ({t for t in plan.target if t < plan.n_groups} if plan.serial else set()))
        for g in needed:
            src = plan.sources[g]
            if src is None:
                raise SourceError(f"Serial mode writes into source {g}, but source {g} is None.")
            if not plan.serial and id(src) in row_of_source:
                getter_rows[g] = row_of_source[id(src)]
                continue
            rows = slice(offset, offset + B)
            blocks.append(src)
            offset += B
            row_of_source[id(src)] = rows
            getter_rows[g] = rows
        total = offset
        target_rows: dict[int, slice] = {plan.n_groups: base_rows}
        if plan.serial:
            for g in needed:
                target_rows[g] = getter_rows[g]
        inputs = {}
        for k, v in base.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                inputs[k] = torch.cat([b[k] for b in blocks], 0)
            else:
                inputs[k] = v
        if self._uses_cache_flag and "use_cache" not in extra:
            extra = dict(extra, use_cache=False)
        ops = self._ops(plan, getter_rows, target_rows)
        with HookSession(self.model) as session:
            engine.install(session, self.model, ops, plan, set())
            out = self.model(**inputs, **extra)
        engine.check_fired(ops, "forward pass")
        intervened = _select_rows(out, base_rows, total)
        original = _select_rows(out, orig_rows, total) if want_original else None
        return original, intervened

    def _protected(self, *inputs: Mapping | None) -> set[int]:
        out = set()
        for inp in inputs:
            if inp is None:
                continue
            for v in inp.values():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    out.add(v.untyped_storage().data_ptr())
        return out

    def _run_separate(self, plan: CallPlan, base: Mapping, groups_used: list[int], extra: dict, want_original: bool) -> tuple[Any, Any]:
        original = None
        if want_original:
            original = self.model(**base, **extra)
        protected = self._protected(base, *plan.sources)
        self._run_sources(plan, groups_used, protected)
        ops = self._ops(plan, {}, {plan.n_groups: None})
        with HookSession(self.model) as session:
            engine.install(session, self.model, ops, plan, protected)
            out = self.model(**base, **extra)
        engine.check_fired(ops, "forward pass")
        return original, out

    def _run_sources(self, plan: CallPlan, groups_used: list[int], protected: set[int]) -> None:
        """Run the source passes (getters; in serial mode also the hops into later sources)."""
        early = not self._stateful
        if plan.serial:
            chain = sorted(set(groups_used) | {t for t in plan.target if t < plan.n_groups})
            for g in chain:
                src = plan.sources[g]
                if src is None:
                    continue
                ops = self._ops(plan, {g: None}, {g: None})
                if not any(not op.setter for op in ops):
                    continue
                grad = torch.enable_grad() if torch.is_grad_enabled() else torch.no_grad()
                with grad:
                    engine.run_source_pass(self.model, src, ops, plan, protected, early)
        else:
            no_grad = not self.model_has_grad
            by_source: dict[int, list[int]] = {}
            for g in groups_used:
                by_source.setdefault(id(plan.sources[g]), []).append(g)
            for gs in by_source.values():
                ops = self._ops(plan, {g: None for g in gs}, {})
                ctx = torch.no_grad() if no_grad else torch.enable_grad() if torch.is_grad_enabled() else torch.no_grad()
                with ctx:
                    engine.run_source_pass(self.model, plan.sources[gs[0]], ops, plan, protected, early)

    def generate(self, base: Any, *args: Any, **kwargs: Any) -> Any:
        """Generate with the interventions applied; pyvene's arguments and returns plus step and
        position control (``timesteps=``, ``positions=``). See :func:`vene.generation.generate`."""
        from .generation import generate
        return generate(self, base, *args, **kwargs)

    # -- nn.Module semantics ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> "IntervenableModel":
        """Set train/eval mode on the interventions and the wrapped model (nn.Module semantics)."""
        return super().train(mode)
