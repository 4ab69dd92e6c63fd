"""``IntervenableNdifModel``: vene's configurations run through an nnsight model.

Construction is the hook backend's (:class:`vene.IntervenableModel` on the module nnsight wraps:
the same components, keys, intervention objects, groups and links), and so is validating a call
into a :class:`~vene.plan.CallPlan` and compiling it into ops. Only execution differs: each model
call becomes an nnsight trace (:mod:`vene.backends.nnsight_exec`) whose workers apply those ops
to the values the Envoys of the hooked modules hand over. With ``remote=True`` the whole call
(source passes and base pass) is one nnsight session sent to NDIF by nnsight's own remote
backend; vene's code travels with the request (nnsight's ``register``), the model stays on the
server.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import warnings
from typing import Any, cast

import torch
from torch import nn

from .. import engine
from ..errors import ConfigError
from ..model import IntervenableModel
from ..training.guards import check_gradient_checkpointing
from .nnsight_exec import Job, Pass, SiteServer, StepServer, StopCount

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'vene[nnsight]'"


def require_nnsight() -> Any:
    """Import nnsight, or raise :class:`vene.ConfigError` saying how to install it."""
    try:
        return importlib.import_module("nnsight")
    except ImportError as err:
        raise ConfigError(
            f"Running vene through nnsight (an nnsight model, or remote=True for NDIF) needs the "
            f"nnsight package: {INSTALL_HINT} (nnsight>=0.8,<0.9). It could not be imported: {err}."
        ) from None


def is_nnsight_model(model: Any) -> bool:
    """Whether ``model`` is an nnsight model (``NNsight``, ``LanguageModel``, ...), without importing nnsight."""
    return any(c.__module__.split(".")[0] == "nnsight" for c in type(model).__mro__)


def _check_remote(remote: Any) -> None:
    if remote is True or remote is False or remote == "local":
        return
    if isinstance(remote, str) and remote.startswith(("http://", "https://")):
        return
    raise ConfigError(
        f"remote must be False (run locally), True (run on NDIF), 'local' (nnsight's local "
        f"simulation of a remote run) or an NDIF host URL, got {remote!r}."
    )


class IntervenableNdifModel(IntervenableModel):
    """A vene configuration on an nnsight model (pyvene's ``IntervenableNdifModel``).

    ``IntervenableNdifModel(config, nnsight_model, remote=False)``; usually built by
    :func:`vene.build_intervenable_model`. Calls (``forward``, ``generate``) take the same
    arguments and return the same structures as :class:`vene.IntervenableModel`; components
    resolve on the module nnsight wraps (``nnsight_model._module``).

    ``remote=True`` runs each call on NDIF (an API key and a model deployed there are needed;
    see ``docs/nnsight.md``); ``"local"`` uses nnsight's local simulation of a remote run; a URL
    names another NDIF host. Sources always run as separate passes (``batch_sources=True``, one
    fused batch, is refused). Not available: ``attention_weight`` components (vene's probe
    attention), gradients through a remote call.
    """

    def __init__(self, config: Any, model: Any, remote: Any = False, **kwargs: Any) -> None:
        require_nnsight()
        if not is_nnsight_model(model):
            raise ConfigError(
                f"IntervenableNdifModel wraps an nnsight model (nnsight.LanguageModel / NNsight), got "
                f"{type(model).__name__}; use vene.IntervenableModel(config, model) for a PyTorch module."
            )
        _check_remote(remote)
        if remote and not callable(getattr(type(model), "to_model_key", None)):
            raise ConfigError(
                f"remote={remote!r} needs an nnsight model that NDIF can name (nnsight.LanguageModel("
                f"'<repo id>')), got {type(model).__name__}, which wraps a local module only; use remote=False."
            )
        if kwargs.get("batch_sources", "auto") is True:
            raise ConfigError(
                "batch_sources=True (sources and base in one fused batch) is not available through "
                "nnsight: sources run as separate passes. Leave batch_sources unset, or use "
                "vene.IntervenableModel(config, nnsight_model._module) for the fused hook backend (local only)."
            )
        kwargs["batch_sources"] = False
        freeze = kwargs.pop("freeze_model", True)
        super().__init__(config, model._module, freeze_model=False, **kwargs)
        for spec in self._specs.values():
            if spec.site.io == "attn_probs":
                raise ConfigError(
                    f"{spec.key}: attention_weight components use vene's probe attention, which does not "
                    "run through nnsight. Hook a module the probabilities pass through instead (e.g. "
                    "'transformer.h[0].attn.attn_dropout.input' with eager attention), or use "
                    "vene.IntervenableModel(config, nnsight_model._module) (local only)."
                )
        self.nnsight_model = model
        self.remote = remote
        if freeze:  # last, as in IntervenableModel: a failing construction leaves the model as it was
            self.disable_model_gradients()

    def __repr__(self) -> str:
        text = super().__repr__()
        return text.replace("IntervenableModel(", f"IntervenableNdifModel(remote={self.remote!r}, ", 1)

    __str__ = __repr__

    # -- passes --------------------------------------------------------------------------------
    @staticmethod
    def _servers(ops: list, protected: set, early_stop: bool) -> list[SiteServer]:
        """One server per hooked (module, io), ops in key order (as :func:`vene.engine.install`)."""
        by_site: dict[tuple[str, str], list] = {}
        for op in ops:
            by_site.setdefault((op.spec.site.module_path, op.io), []).append(op)
        stop = None
        if early_stop:
            stop = StopCount(sum(any(op.reads_source for op in site_ops) for site_ops in by_site.values()))
        return [SiteServer(path, io, site_ops, protected, stop) for (path, io), site_ops in by_site.items()]

    def _source_passes(self, plan: Any, protected: set, early_stop: bool) -> list[tuple[Pass, list]]:
        """The source passes of :func:`vene.engine.run_sources`, as ``(pass, ops)``."""
        out = []
        if plan.serial:
            for g in sorted(set(plan.groups_read()) | plan.groups_written()):
                src = plan.sources[g]
                if src is None:
                    continue
                ops = engine.ops_for(plan, {g: None}, {g: None})
                if any(op.reads_source for op in ops):
                    out.append((Pass(dict(src), self._servers(ops, protected, early_stop), False), ops))
            return out
        by_source: dict[int, list[int]] = {}
        for g in plan.groups_read():
            by_source.setdefault(id(plan.sources[g]), []).append(g)
        grad = self.model_has_grad and torch.is_grad_enabled()
        for gs in by_source.values():
            ops = engine.ops_for(plan, {g: None for g in gs}, {})
            out.append((Pass(dict(plan.sources[gs[0]]), self._servers(ops, protected, early_stop), False, grad), ops))
        return out

    def _run(self, passes: list[Pass], plan: Any, checks: list[tuple[list, str]]) -> list:
        """Run the passes (locally, or as one remote session), copy back what the call produced,
        check that every op's module ran; return each pass's output."""
        call = plan
        if self.remote:
            call = dataclasses.replace(plan, keys=[], sources=[])  # what the ops read: no model inputs twice
            shipped: dict[int, Any] = {}
            for p in passes:
                for server in p.servers:
                    for op in server.ops:
                        iv = op.spec.intervention
                        if id(iv) not in shipped:  # linked keys keep sharing one object
                            shipped[id(iv)] = _shippable(iv)
                        # the module stays on the server
                        op.spec = dataclasses.replace(op.spec, module=None, intervention=shipped[id(iv)])
        job = Job(passes, call)
        if self.remote:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.interventions.parameters()):
                warnings.warn(
                    "remote=True: outputs come back from NDIF without autograd history, so no gradient "
                    "reaches the interventions; train locally (remote=False) and run remote calls under "
                    "torch.no_grad().",
                    stacklevel=3,
                )
            result = _run_remote(self.nnsight_model, job, self.remote)
            ops = [op for p in passes for server in p.servers for op in server.ops]
            for op, (fired, hits, record) in zip(ops, result["states"]):
                # the ops ran on the server: bring back what the checks and the results read
                op.fired = fired
                if hits is not None:
                    op.step.hits = hits
                if record is not None and op.step.record is not None:
                    op.step.record[:] = record
            for mine, got in ((plan.collected, result["collected"]), (plan.full_outputs, result["full_outputs"])):
                got = dict(got)  # (nnsight's local simulation hands back these very dicts)
                mine.clear()
                mine.update(got)
        else:
            result = job.run(self.nnsight_model)
        for ops, what in checks:
            engine.check_fired(ops, what)
        return result["outputs"]

    # -- the call ------------------------------------------------------------------------------
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
        """As :meth:`vene.IntervenableModel.forward`, run through nnsight (see the class docstring)."""
        check_gradient_checkpointing(self)
        plan = self.plan_call(base, sources, unit_locations, source_representations, subspaces, intervention_additional_kwargs)
        inputs = {**base, **self._model_kwargs(labels, use_cache)}
        self.full_intervention_outputs = plan.full_outputs
        protected = engine.protected_storages(base, *plan.sources)
        passes: list[Pass] = []
        checks: list[tuple[list, str]] = []
        if output_original_output:
            passes.append(Pass(inputs, [], True))
        for p, ops in self._source_passes(plan, protected, not self._stateful):
            passes.append(p)
            checks.append(([op for op in ops if op.reads_source], "source pass"))
        ops = engine.ops_for(plan, {}, {plan.n_groups: None})
        passes.append(Pass(inputs, self._servers(ops, protected, False), True))
        checks.append((ops, "forward pass"))
        outputs = self._run(passes, plan, checks)
        original = outputs[0] if output_original_output else None
        return self._outputs(plan, original, outputs[-1], return_dict)

    def _run_generation(self, plan: Any, gates: dict, counter: Any, base: Any, generate_kwargs: dict,
                        want_original: bool) -> tuple[Any, Any, list]:
        """The execution step of :func:`vene.generation.generate` through nnsight:
        ``(original or None, generated, base ops)``."""
        protected = engine.protected_storages(base, *plan.sources)
        passes: list[Pass] = []
        checks: list[tuple[list, str]] = []
        if want_original:
            passes.append(Pass(dict(base), [], True, fn="generate", fn_kwargs=generate_kwargs))
        for p, ops in self._source_passes(plan, protected, not self._stateful):
            passes.append(p)
            checks.append(([op for op in ops if op.reads_source], "source pass"))
        ops = engine.ops_for(plan, {}, {plan.n_groups: None}, steps=gates)
        servers = [StepServer(counter)] + self._servers(ops, protected, False)
        passes.append(Pass(dict(base), servers, True, fn="generate", fn_kwargs=generate_kwargs))
        checks.append((ops, "generation"))
        outputs = self._run(passes, plan, checks)
        return (outputs[0] if want_original else None), outputs[-1], ops


def _run_remote(model: Any, job: Job, remote: Any) -> dict:
    """Run ``job`` as one nnsight session with ``remote`` (True, "local" or a host URL): nnsight
    serializes the session (vene's code by value, the model by reference) and its remote backend
    sends it; the saved result comes back into this frame."""
    nnsight = require_nnsight()
    import cloudpickle

    import vene

    registered = _is_registered(vene)
    if not registered:
        nnsight.register(vene)  # ship vene's code with the request: NDIF does not have vene installed
    try:
        with model.session(remote=remote):
            result = job.run(model)
            nnsight.save(result)
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(vene)
    return result  # bound by nnsight: the session pushes its saved values into this frame


def _shippable(intervention: torch.nn.Module) -> torch.nn.Module:
    """``intervention`` as it can be pickled into a request: a parametrized submodule (the
    orthogonal rotations of DAS) cannot be pickled, so a copy carries the current value of each
    parametrized tensor as a plain one (the same forward; training happens locally)."""
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in intervention.modules()):
        return intervention
    with torch.no_grad():
        copy = _deepcopy(intervention)
        for m in list(copy.modules()):
            if parametrize.is_parametrized(m):
                for name in list(cast(nn.ModuleDict, m.parametrizations).keys()):
                    parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return copy


def _deepcopy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def _is_registered(module: Any) -> bool:
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    return module.__name__ in _PICKLE_BY_VALUE_MODULES
