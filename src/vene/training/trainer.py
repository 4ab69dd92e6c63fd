"""Training an :class:`~vene.IntervenableModel` with existing engines (HF ``Trainer``, accelerate, DDP).

:class:`TrainingModule` is a small ``nn.Module`` around an ``IntervenableModel`` whose
``forward`` returns ``{"loss": ..., "logits": ...}``, the contract of ``transformers.Trainer``
(and of most training loops): ``Trainer(model=pv.TrainingModule(pv_model), ...)`` trains the
interventions with no Trainer subclass. :func:`collate_interventions` builds its batches. Torch
DDP and ``accelerate`` need no wrapper: ``DistributedDataParallel(pv_model)`` and
``accelerator.prepare(pv_model, ...)`` work on the ``IntervenableModel`` itself
(``examples/das_distributed.py``; docs/scale-out.md).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError


class TrainingModule(nn.Module):
    """``forward(base, sources=None, unit_locations=None, subspaces=None, labels=None, ...)`` ->
    ``{"loss": loss, "logits": logits}`` for an intervened run of ``intervenable``.

    ``loss_fn(intervened_outputs, labels) -> scalar tensor``; without it ``labels`` are handed to
    the wrapped model, which computes its own loss (a causal LM's next-token loss). Only the
    parameters that require grad train: the interventions' (and the model's after
    :meth:`~vene.IntervenableModel.enable_model_gradients`). ``train(mode)`` switches the
    interventions; the wrapped model keeps the eval mode wrapping gave it (dropout off, as in
    pyvene's loops) unless its gradients are enabled, when it follows ``mode`` too.
    ``gradient_checkpointing_enable`` is forwarded to the wrapped model (the Trainer calls it
    for ``gradient_checkpointing=True``).
    """

    def __init__(self, intervenable: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> None:
        super().__init__()
        if not hasattr(intervenable, "interventions") or not hasattr(intervenable, "plan_call"):
            raise ConfigError(
                f"TrainingModule wraps an IntervenableModel, got {type(intervenable).__name__}."
            )
        self.intervenable = intervenable
        self.loss_fn = loss_fn

    def forward(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: Any = None,
        subspaces: Any = None,
        labels: Any = None,
        source_representations: Any = None,
        intervention_additional_kwargs: Any = None,
    ) -> dict[str, Any]:
        kw = dict(unit_locations=unit_locations, subspaces=subspaces, source_representations=source_representations,
                  intervention_additional_kwargs=intervention_additional_kwargs)
        if self.loss_fn is None:
            if labels is None:
                raise ConfigError("TrainingModule without a loss_fn needs labels (the wrapped model computes the loss).")
            _, out = self.intervenable(base, sources, labels=labels, **kw)
            loss = getattr(out, "loss", None)
            if loss is None:
                raise ConfigError(
                    f"The wrapped model ({type(self.intervenable.model).__name__}) returned no loss for "
                    "labels=...; pass TrainingModule(pv_model, loss_fn=lambda outputs, labels: ...)."
                )
        else:
            _, out = self.intervenable(base, sources, **kw)
            loss = self.loss_fn(out, labels)
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, torch.Tensor):
            logits = out
        return {"loss": loss, "logits": logits}

    def train(self, mode: bool = True) -> TrainingModule:
        self.training = mode
        self.intervenable.training = mode
        interventions = cast(nn.Module, self.intervenable.interventions)  # an IntervenableModel's ModuleDict
        interventions.train(mode)
        if getattr(self.intervenable, "model_has_grad", False):
            cast(nn.Module, self.intervenable.model).train(mode)
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        model = self.intervenable.model
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ConfigError(f"{type(model).__name__} has no gradient_checkpointing_enable().")
        enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)


def _stack(values: Sequence[Any], what: str) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        return {k: _stack([v[k] for v in values], f"{what}[{k!r}]") for k in first}
    if isinstance(first, torch.Tensor):
        try:
            return torch.stack(list(values))
        except RuntimeError as e:
            raise ConfigError(
                f"collate_interventions: the examples' {what} tensors differ in shape "
                f"({sorted({tuple(v.shape) for v in values})}); pad them to one length first."
            ) from e
    if isinstance(first, (int, float, bool)):
        return torch.tensor(list(values))
    return list(values)


def collate_interventions(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch examples for :class:`TrainingModule` (a ``data_collator`` for the Trainer).

    Each example is a dict with ``base`` (a dict of 1-d tensors), optionally ``sources`` (a list
    of such dicts, one per source), ``labels`` (tensor or number), ``unit_locations``
    ``{"sources->base": (src_units, base_units)}`` (per source: a list of unit ids; a flat list
    for a single source), ``subspaces`` (one list per intervention), and any other keys (stacked
    when tensors or numbers, else listed). Returns the batch in pyvene's layout:
    ``unit_locations`` ``{"sources->base": ([source][example][units], [source][example][units])}``,
    ``subspaces`` ``[intervention][example]``.
    """
    if not features:
        raise ConfigError("collate_interventions: no examples.")
    out: dict[str, Any] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if key == "sources":
            n = len(values[0])
            out[key] = [_stack([v[i] for v in values], f"sources[{i}]") for i in range(n)]
        elif key == "unit_locations":
            out[key] = {name: _collate_locations([v[name] for v in values], name) for name in values[0]}
        elif key == "subspaces":
            n = len(values[0])
            out[key] = [[v[i] for v in values] for i in range(n)]
        else:
            out[key] = _stack(values, key)
    return out


def _collate_locations(per_example: list[Any], name: str) -> Any:
    def per_source(side: Any) -> list:
        if side is None:
            return [None]
        if isinstance(side, int):
            return [[side]]
        side = list(side)
        return [list(u) if isinstance(u, (list, tuple)) else u for u in side] \
            if side and isinstance(side[0], (list, tuple)) else [side]

    if isinstance(per_example[0], tuple) and len(per_example[0]) == 2:
        srcs = [per_source(e[0]) for e in per_example]
        bases = [per_source(e[1]) for e in per_example]
        n = len(srcs[0])
        return ([[s[i] for s in srcs] for i in range(n)], [[b[i] for b in bases] for i in range(n)])
    sides = [per_source(e) for e in per_example]
    return [[s[i] for s in sides] for i in range(len(sides[0]))]
