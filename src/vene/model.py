"""``IntervenableModel``: wrap a model, run intervened forward passes.

Owns construction (one :class:`~vene.plan.KeySpec` per configured intervention: resolved site,
intervention module, group, key order) and the choice of executor per call: validate the call
into a :class:`~vene.plan.CallPlan` (:meth:`IntervenableModel.plan_call`), then run it fused
(:mod:`vene.batching` lays out the rows) or as separate passes (:mod:`vene.engine`).
``generate`` lives in :mod:`vene.generation`, on the same public plan / engine interface.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import batching, engine, generation, resume, reuse
from .batching import FUSE_BUDGET  # noqa: F401  (re-exported: the documented budget)
from .components import get_module, resolve_site
from .config import IntervenableConfig, RepresentationConfig
from .errors import ConfigError
from .interventions import (
    CollectIntervention,
    LambdaIntervention,
    NoiseIntervention,
)
from .locations import check_site, check_sorted_keys
from .model_helpers import ParameterHelpersMixin
from .placement import place, real_tensor, site_device, site_dtype
from .plan import CallPlan, KeySpec, LocationCache, build_plan
from .serialization import SerializationMixin
from .training.guards import check_gradient_checkpointing
from .types import Inputs, Sources, Subspaces, UnitLocations

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


def _accepts_kwargs(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


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

    Placement (docs/scale-out.md): each intervention is put on the device its site's module runs
    on (accelerate's ``execution_device`` for ``device_map`` / offloaded models) and in that
    module's floating dtype, except orthogonal rotations (DAS), which stay in float32 (values are
    cast at the site); ``intervention_dtype=torch.float32`` (or any floating dtype) puts every
    intervention in that dtype instead.

    ``reuse_sources`` (default True): a source whose inputs and model state are the same as in an
    earlier call (of any ``IntervenableModel`` on this model) reads the activations recorded then
    instead of running again; see :mod:`vene.reuse` for exactly when. False always runs sources.

    ``reuse_base`` (default True): a call whose interventions start at layer ``L`` and token ``p``
    runs layers ``L..`` on positions ``p..`` from a recorded un-intervened pass of the same base
    (a base seen before, or a training step patching late tokens); logits agree with the full
    pass to floating-point rounding. See :mod:`vene.resume` for exactly when. False always runs
    the base pass in full.
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
        intervention_dtype: torch.dtype | None = None,
        reuse_sources: bool = True,
        reuse_base: bool = True,
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
        if intervention_dtype is not None and not (
                isinstance(intervention_dtype, torch.dtype) and intervention_dtype.is_floating_point):
            raise ConfigError(
                f"intervention_dtype must be None (each intervention takes its site's dtype) or a "
                f"floating torch.dtype such as torch.float32, got {intervention_dtype!r}."
            )
        self.intervention_dtype = intervention_dtype
        placed: set[int] = set()
        if not isinstance(reuse_sources, bool):
            raise ConfigError(f"reuse_sources must be True or False, got {reuse_sources!r}.")
        self.reuse_sources = reuse_sources
        if not isinstance(reuse_base, bool):
            raise ConfigError(f"reuse_base must be True or False, got {reuse_base!r}.")
        self.reuse_base = reuse_base
        self.model_has_grad = False
        self.representations: dict[str, RepresentationConfig] = {}
        self.interventions = nn.ModuleDict()
        self._specs: dict[str, KeySpec] = {}
        self.full_intervention_outputs: dict[str, Any] = {}
        self._links: dict[Any, nn.Module] = {}

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
            bind_site = getattr(intervention, "bind_site", None)
            if callable(bind_site):  # e.g. LoRA infers its input size
                bind_site(get_module(model, site.module_path), site)
            if isinstance(intervention, NoiseIntervention) and intervention.noise_level is None:
                if emb_std is None:
                    emb_std = self._embedding_std()
                if emb_std is not None:
                    intervention.set_embedding_std(emb_std)
            if rep.intervention_link_key is not None:
                linked = self._links.setdefault(rep.intervention_link_key, intervention)
                intervention = linked
            if id(intervention) not in placed:  # a linked intervention lives at its first site
                placed.add(id(intervention))
                self._place(intervention, site.module_path, key)
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
                uses_module_input=bool(getattr(intervention, "uses_module_input", False)),
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
        self._loc_cache = LocationCache()
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

    def _place(self, intervention: nn.Module, path: str, key: str) -> None:
        """Put ``intervention`` on its site's execution device and dtype (vene.placement)."""
        device = site_device(self.model, path)
        if device is not None and device.type == "meta":
            warnings.warn(f"{key}: the model's weights at {path} are on the meta device (not "
                          "loaded), so the intervention stays where it is; wrap the model after "
                          "loading or dispatching it.", stacklevel=3)
            device = None
        if self.intervention_dtype is not None:
            place(intervention, device, self.intervention_dtype)
        else:  # the site's dtype; orthogonal rotations stay in float32 (vene.placement)
            place(intervention, device, site_dtype(self.model, path), keep_parametrized=True)

    def _embedding_std(self) -> float | None:
        get = getattr(self.model, "get_input_embeddings", None)
        emb = None
        if callable(get):
            try:
                emb = get()
            except (NotImplementedError, AttributeError):
                emb = None
        weight = real_tensor(emb, "weight") if emb is not None else None
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
    @property
    def key_specs(self) -> list[KeySpec]:
        """The interventions as configured, in key order."""
        return [self._specs[k] for k in self.sorted_keys]

    def plan_call(
        self,
        base: Inputs,
        sources: Sources = None,
        unit_locations: UnitLocations = None,
        source_representations: Any = None,
        subspaces: Subspaces = None,
        intervention_additional_kwargs: Any = None,
    ) -> CallPlan:
        """Validate one call's arguments into a :class:`~vene.plan.CallPlan` (nothing runs)."""
        return build_plan(self.key_specs, self.n_groups, self.mode, self._loc_cache, base, sources,
                          unit_locations, source_representations, subspaces, intervention_additional_kwargs,
                          links=[self.representations[k].intervention_link_key for k in self.sorted_keys])

    def forward(
        self,
        base: Inputs,
        sources: Sources = None,
        unit_locations: UnitLocations = None,
        source_representations: Any = None,
        subspaces: Subspaces = None,
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
        plan = self.plan_call(base, sources, unit_locations, source_representations, subspaces, intervention_additional_kwargs)
        extra = self._model_kwargs(labels, use_cache)
        self.full_intervention_outputs = plan.full_outputs
        coupled = labels is not None or bool(use_cache) or self._stateful or any(m.training for m in self._batchnorms)
        reused = None
        if self.reuse_sources and not self.model_has_grad and not self._stateful:
            reused = reuse.plan_reuse(self.model, plan)
        resumed = self._plan_resume(plan, base, extra, reused)
        # sources recorded before (or seen before: recorded now for the next calls) run apart;
        # so do the sources of a training step ("auto"): a fused pass would carry their rows
        # through the autograd graph from the first trained site on, a no_grad source pass does not
        fuse = resumed is None and (reused is None or not reused.any_seen) \
            and (bool(plan.groups_read()) or output_original_output) \
            and not (self.batch_sources == "auto" and self._trains_now()) \
            and batching.can_fuse(plan, base, self.batch_sources, output_original_output, self.model_config, coupled)
        if fuse:
            if self._uses_cache_flag and "use_cache" not in extra:
                extra["use_cache"] = False
            rows = batching.layout(plan, base, output_original_output)
            original, intervened = engine.run_fused(self.model, plan, base, rows, extra)
            if reused is not None:
                reused.note_fused(plan)
        else:
            original, intervened = engine.run_separate(self.model, plan, base, extra, output_original_output,
                                                       self.model_has_grad, not self._stateful, reused, resumed)
        return self._outputs(plan, original, intervened, return_dict)

    def _plan_resume(self, plan: CallPlan, base: Any, extra: dict, reused: Any) -> Any:
        """The call's base resumption (:mod:`vene.resume`), or None when the base runs in full."""
        if not self.reuse_base or self.model_has_grad or self._stateful or plan.serial or not isinstance(base, Mapping):
            return None
        store = reuse.store_for(self.model)

        def fingerprint() -> tuple | None:
            if reused is not None:
                return reused.fingerprint
            fp = store.fingerprint()
            return None if any(fp[0]) else fp  # a module in training mode: the base may differ every call

        return resume.plan_resume(self.model, plan, base, extra, self._trains_now(), fingerprint, store.fingerprint)

    def _model_kwargs(self, labels: Any, use_cache: bool | None) -> dict[str, Any]:
        """The keyword arguments a call hands the model beside the base inputs."""
        extra: dict[str, Any] = {}
        if labels is not None:
            extra["labels"] = labels
        if use_cache is not None and self._uses_cache_flag:
            extra["use_cache"] = use_cache
        return extra

    def _outputs(self, plan: CallPlan, original: Any, intervened: Any, return_dict: bool | None) -> Any:
        """A call's return value in pyvene's shapes (see :meth:`forward`)."""
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

    def _trains_now(self) -> bool:
        """Grad is on and something records a graph (an intervention's or the model's weights)."""
        if not torch.is_grad_enabled():
            return False
        if self.model_has_grad:
            return True
        return any(p.requires_grad for iv in self.interventions.values() for p in iv.parameters())

    def generate(self, base: Any, *args: Any, **kwargs: Any) -> Any:
        """Generate with the interventions applied; pyvene's arguments and returns plus step and
        position control (``timesteps=``, ``positions=``). See :func:`vene.generation.generate`."""
        return generation.generate(self, base, *args, **kwargs)

    # -- nn.Module semantics ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> "IntervenableModel":
        """Set train/eval mode on the interventions and the wrapped model (nn.Module semantics)."""
        return super().train(mode)
