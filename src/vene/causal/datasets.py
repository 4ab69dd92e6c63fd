"""Tensor encodings of settings and the factual / counterfactual dataset generators."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional

import torch

from ._state import CausalModelState
from .errors import CausalModelError, SamplingError
from .sampling import DEFAULT_MAX_TRIES
from .values import values_equal

__all__ = ["DatasetsMixin"]


def _to_flat_tensor(value: Any, var: Any) -> torch.Tensor:
    """Convert a variable's value into a flat float32 CPU tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    try:
        return torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(value, (list, tuple)):
            parts = [_to_flat_tensor(item, var) for item in value]
            if not parts:
                return torch.zeros(0)
            return torch.cat(parts)
        raise TypeError(
            f"cannot convert the value of variable {var!r} ({type(value).__name__}: "
            f"{value!r}) to a float tensor; give the model an input_function / "
            f"output_function that encodes it"
        ) from exc


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _accepts_target_kwargs(fn: Callable) -> bool:
    """True when ``fn`` can be called as ``fn(output_var=..., output_var_value=...)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {"output_var", "output_var_value"} <= names


class DatasetsMixin(CausalModelState):
    """Dataset methods of :class:`~vene.causal.CausalModel` (not usable on its own)."""

    def input_to_tensor(self, setting: Mapping) -> torch.Tensor:
        """Concatenate the input variables' values (in :attr:`inputs` order) into a flat float tensor.

        Values may be numbers, booleans, (nested) lists, numpy arrays or tensors.
        """
        parts = []
        for var in self.inputs:
            if var not in setting:
                raise KeyError(f"the setting has no value for input variable {var!r}")
            parts.append(_to_flat_tensor(setting[var], var))
        return torch.cat(parts) if parts else torch.zeros(0)

    def output_to_tensor(self, setting: Mapping) -> torch.Tensor:
        """Concatenate the output variables' values (in :attr:`outputs` order) into a flat float tensor.

        An input setting is completed by running the model first.
        """
        full = self._complete(setting)
        parts = [_to_flat_tensor(full[var], var) for var in self.outputs]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _encoders(self, input_function, output_function):
        in_fn = input_function or self.input_function or self.input_to_tensor
        out_fn = output_function or self.output_function or self.output_to_tensor
        return (lambda s: _as_tensor(in_fn(s))), (lambda s: _as_tensor(out_fn(s)))

    def generate_factual_dataset(
        self,
        size: int,
        sampler: Optional[Callable[[], Mapping]] = None,
        filter: Optional[Callable[[Mapping], bool]] = None,
        device="cpu",
        input_function: Optional[Callable] = None,
        output_function: Optional[Callable] = None,
        return_tensors: bool = True,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> List[Dict[str, Any]]:
        """Generate ``size`` examples ``{"input_ids": ..., "labels": ...}``.

        Args:
            size: number of examples.
            sampler: zero-argument callable returning an input setting
                (default :meth:`sample_input`).
            filter: predicate over the sampled input; rejected samples are
                redrawn (at most ``max_tries`` rejections in a row).
            device: device of the returned tensors.
            input_function / output_function: encoders overriding the model's
                (see the constructor) for this call.
            return_tensors: when False, ``input_ids`` is the input setting and
                ``labels`` the full setting of the run.
        """
        size = int(size)
        if size < 0:
            raise CausalModelError("size must be non-negative")
        sampler = sampler or self.sample_input
        encode_in, encode_out = self._encoders(input_function, output_function)
        examples: List[Dict[str, Any]] = []
        rejected = 0
        while len(examples) < size:
            base = sampler()
            if filter is not None and not filter(base):
                rejected += 1
                if rejected > max_tries:
                    raise SamplingError(f"the filter rejected {max_tries} samples in a row")
                continue
            rejected = 0
            setting = self.run_forward(base)
            if return_tensors:
                examples.append(
                    {
                        "input_ids": encode_in(base).to(device),
                        "labels": encode_out(setting).to(device),
                    }
                )
            else:
                examples.append({"input_ids": base, "labels": setting})
        return examples

    def _sample_source(self, sampler: Callable, var: Any, value: Any, max_tries: int) -> Mapping:
        if _accepts_target_kwargs(sampler):
            return sampler(output_var=var, output_var_value=value)
        for _ in range(max(1, int(max_tries))):
            source = sampler()
            if values_equal(self.run_forward(source)[var], value):
                return source
        raise SamplingError(
            f"the sampler produced no source with {var!r} = {value!r} in {max_tries} draws; "
            f"give a sampler accepting output_var= / output_var_value="
        )

    def generate_counterfactual_dataset(
        self,
        size: int,
        intervention_id,
        batch_size: int,
        sampler: Optional[Callable] = None,
        intervention_sampler: Optional[Callable[[], Mapping]] = None,
        filter: Optional[Callable[[Mapping], bool]] = None,
        device="cpu",
        input_function: Optional[Callable] = None,
        output_function: Optional[Callable] = None,
        return_tensors: bool = True,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> List[Dict[str, Any]]:
        """Generate ``size`` interchange-intervention examples.

        For each batch of ``batch_size`` consecutive examples one intervention
        is drawn from ``intervention_sampler`` (so a batch shares its
        intervention id, as a DAS training loop expects); the last batch is
        truncated so that exactly ``size`` examples are returned.  For each
        example a base input is drawn from ``sampler()`` and, for each
        intervened variable in :attr:`variables` order, a source:

        * if the intervention maps the variable to a dict, that dict *is* the
          source setting;
        * otherwise it maps it to a value, and a source in which the variable
          takes that value is drawn with
          ``sampler(output_var=var, output_var_value=value)`` when the sampler
          accepts those keywords (:meth:`sample_input` and
          :meth:`sample_input_tree_balanced` do), else by rejection from
          ``sampler()``.

        Args:
            size: number of examples.
            intervention_id: callable mapping the intervention dict to an int
                id (an int is used as a constant id).
            batch_size: examples per intervention draw.
            sampler: input sampler (default :meth:`sample_input`).
            intervention_sampler: zero-argument callable returning a non-empty
                intervention (default :meth:`sample_intervention`: a random
                non-empty subset of intermediate variables with random values).
            filter: predicate over the intervention; rejected ones are redrawn.
            device, input_function, output_function: as in
                :meth:`generate_factual_dataset`.
            return_tensors: when False the example holds settings instead of
                tensors (``source_input_ids`` is then a list of source dicts
                padded with ``{}``, ``intervention_id`` a one-element list).

        Returns:
            A list of dicts with keys ``"input_ids"`` (base input tensor),
            ``"source_input_ids"`` (sources stacked in variable order and
            zero-padded up to the number of intermediate variables: shape
            ``(max(n_intermediate, n_sources), input_dim)``), ``"labels"``
            (output after the interchange), ``"base_labels"`` (output of the
            base run) and ``"intervention_id"`` (shape ``(1,)``).
        """
        size = int(size)
        batch_size = int(batch_size)
        if size < 0:
            raise CausalModelError("size must be non-negative")
        if batch_size < 1:
            raise CausalModelError("batch_size must be at least 1")
        sampler = sampler or self.sample_input
        intervention_sampler = intervention_sampler or self.sample_intervention
        if callable(intervention_id):
            get_id = intervention_id
        else:
            constant_id = intervention_id
            get_id = lambda _intervention: constant_id  # noqa: E731
        encode_in, encode_out = self._encoders(input_function, output_function)
        n_slots = sum(1 for v in self.variables if v not in self.inputs and v not in self.outputs)

        examples: List[Dict[str, Any]] = []
        rejected = 0
        while len(examples) < size:
            intervention = intervention_sampler()
            if not isinstance(intervention, Mapping) or not intervention:
                raise CausalModelError(
                    f"intervention_sampler must return a non-empty dict, got {intervention!r}"
                )
            self._check_keys(intervention, "the sampled intervention")
            if filter is not None and not filter(intervention):
                rejected += 1
                if rejected > max_tries:
                    raise SamplingError(f"the filter rejected {max_tries} interventions in a row")
                continue
            rejected = 0
            id_value = get_id(intervention)
            for _ in range(min(batch_size, size - len(examples))):
                base = sampler()
                source_settings: Dict[Any, Mapping] = {}
                for var in self.variables:
                    if var not in intervention:
                        continue
                    spec = intervention[var]
                    if isinstance(spec, Mapping):
                        source_settings[var] = dict(spec)
                    else:
                        source_settings[var] = self._sample_source(sampler, var, spec, max_tries)
                sources = list(source_settings.values())
                counterfactual = self.run_interchange(base, source_settings)
                factual = self.run_forward(base)
                if return_tensors:
                    base_tensor = encode_in(base)
                    source_tensors = [encode_in(source) for source in sources]
                    source_tensors += [torch.zeros_like(base_tensor)] * (n_slots - len(sources))
                    examples.append(
                        {
                            "input_ids": base_tensor.to(device),
                            "source_input_ids": torch.stack(source_tensors).to(device),
                            "labels": encode_out(counterfactual).to(device),
                            "base_labels": encode_out(factual).to(device),
                            "intervention_id": torch.tensor([id_value]).to(device),
                        }
                    )
                else:
                    examples.append(
                        {
                            "input_ids": base,
                            "source_input_ids": sources + [{} for _ in range(n_slots - len(sources))],
                            "labels": counterfactual,
                            "base_labels": factual,
                            "intervention_id": [id_value],
                        }
                    )
        return examples
