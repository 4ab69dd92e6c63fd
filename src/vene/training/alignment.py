"""Training and evaluation loops for trainable interventions (pyvene's ``train_alignment``).

Both functions take an :class:`~vene.IntervenableModel` and a data loader of dict batches, and
accept pyvene's calling conventions exactly, so the loss, metrics and collator functions of
pyvene's tutorials run unchanged.

**Batches** (pyvene's field names), after ``inputs_collator(batch)`` if one is given:

* ``input_ids``: the base inputs, passed to the model as ``{input_key: ...}`` (``input_key``
  defaults to ``"input_ids"``; use ``"inputs_embeds"`` for models fed with vectors, such as the
  built-in MLP); ``attention_mask`` is passed along when present (pyvene ignored it);
* ``source_input_ids``: the source inputs; a single source shared by every intervention group,
  as in pyvene, or (vene) ``(batch, n_groups, ...)`` (one more dimension than ``input_ids``) for
  one source per group, ``source_input_ids[:, g]`` (``source_attention_mask`` likewise);
* ``labels``: handed to ``compute_loss`` / ``compute_metrics`` (never to the model);
* optional ``subspaces`` (passed as the call's ``subspaces``; a ``(batch, k)`` tensor is shared by
  every intervention) and location fields ``"source_{i}->base.0.{unit}"`` (source side) and
  ``"source_{i}->base.1.{unit}"`` (base side) for intervention ``i``, ``(batch, units)`` tensors or
  lists; without them the interventions act on whole tensors.

A batch may instead carry the call itself (vene): ``base`` (dict), ``sources`` (list of dicts or
None), and optionally ``unit_locations`` and ``subspaces``; this covers multi-source designs where
some groups are skipped per batch (a None source).

**Metrics**: as in pyvene, ``compute_metrics`` is called as ``compute_metrics([logits], [labels])``
(one-element lists holding the batch's tensors) and may return a number or a dict of numbers.
``eval_alignment`` returns the batch-size-weighted average over the loader: a float for number
metrics (pyvene's return value), a dict with the average of each key for dict metrics. With
``metrics_args="tensors"`` (vene's shorter form) ``compute_metrics(logits, labels)`` receives the
tensors themselves.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError

__all__ = [
    "train_alignment", "eval_alignment", "batch_unit_locations", "annealed_interventions", "weighted_average",
]


class Annealed(Protocol):
    """An intervention with a temperature (boundless, sigmoid masks)."""

    def set_temperature(self, temp: Any) -> None: ...


def annealed_interventions(intervenable: Any) -> list[Annealed]:
    """The distinct interventions that have a temperature (``set_temperature``)."""
    seen: dict[int, Any] = {}
    for iv in intervenable.interventions.values():
        if callable(getattr(iv, "set_temperature", None)):
            seen.setdefault(id(iv), iv)
    return list(seen.values())


def batch_unit_locations(intervenable: Any, batch: Mapping) -> dict | None:
    """pyvene's ``_batch_process_unit_location``: location fields of a batch -> ``unit_locations``.

    Returns None when the batch has no location fields (interventions then act on whole tensors).
    """
    keys = intervenable.sorted_keys
    src: list = []
    base: list = []
    found = False
    for i, key in enumerate(keys):
        subunits = intervenable.representations[key].unit.split(".")
        sides = []
        for side in (0, 1):
            vals: list[Any] | None = []
            for u in subunits:
                v = batch.get(f"source_{i}->base.{side}.{u}")
                if v is None:
                    vals = None
                    break
                assert vals is not None  # (mypy: reset to None only right before the break)
                vals.append(v.tolist() if isinstance(v, torch.Tensor) else v)
            sides.append(None if vals is None else (vals[0] if len(vals) == 1 else vals))
        if sides[0] is not None or sides[1] is not None:
            found = True
        src.append(sides[0] if sides[0] is not None else sides[1])
        base.append(sides[1] if sides[1] is not None else sides[0])
    if not found:
        return None
    return {"sources->base": (src, base)}


def _call_args(intervenable: Any, batch: Mapping, input_key: str) -> dict:
    if "base" in batch:
        return {
            "base": batch["base"],
            "sources": batch.get("sources"),
            "unit_locations": batch.get("unit_locations"),
            "subspaces": batch.get("subspaces"),
        }
    if "input_ids" not in batch:
        raise ConfigError(
            f"A training batch needs 'input_ids' (and 'source_input_ids'), or 'base'/'sources'; got keys {sorted(batch)}."
        )
    x = batch["input_ids"]
    base = {input_key: x}
    if batch.get("attention_mask") is not None:
        base["attention_mask"] = batch["attention_mask"]
    sources = None
    src = batch.get("source_input_ids")
    if src is not None:
        src_mask = batch.get("source_attention_mask")
        if isinstance(src, torch.Tensor) and isinstance(x, torch.Tensor) and src.dim() == x.dim() + 1:
            groups = intervenable.n_groups
            if src.shape[1] < groups:
                raise ConfigError(
                    f"source_input_ids has {src.shape[1]} sources per example but the model has {groups} intervention groups."
                )
            sources = []
            for g in range(groups):
                s = {input_key: src[:, g]}
                if src_mask is not None:
                    s["attention_mask"] = src_mask[:, g] if src_mask.dim() == src.dim() else src_mask
                sources.append(s)
        else:
            s = {input_key: src}
            if src_mask is not None:
                s["attention_mask"] = src_mask
            sources = [s]
    return {
        "base": base,
        "sources": sources,
        "unit_locations": batch_unit_locations(intervenable, batch),
        "subspaces": _batch_subspaces(intervenable, batch.get("subspaces")),
    }


def _batch_subspaces(intervenable: Any, subspaces: Any) -> Any:
    """A ``(batch, k)`` tensor (no collator turned it into lists) is shared by every intervention;
    a ``(n_interventions, batch, k)`` tensor gives one entry per intervention."""
    if not isinstance(subspaces, torch.Tensor):
        return subspaces
    rows = subspaces.tolist()
    if subspaces.dim() == 2:
        return [rows] * len(intervenable.sorted_keys)
    if subspaces.dim() == 1:
        return [[[v] for v in rows]] * len(intervenable.sorted_keys)
    return rows


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    last = getattr(out, "last_hidden_state", None)
    if last is not None:
        return last
    raise ConfigError(f"Cannot find logits in the model output of type {type(out).__name__}.")


def _run(intervenable: Any, batch: Mapping, input_key: str) -> torch.Tensor:
    call = _call_args(intervenable, batch, input_key)
    out = intervenable(**call, return_dict=True)
    return _logits(out.intervened_outputs)


def _linear_warmup(optimizer: torch.optim.Optimizer, warm_up: float, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``get_linear_schedule_with_warmup`` (what pyvene uses): the factor rises
    linearly from 0 over ``warm_up`` steps, then falls linearly to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warm_up:
            return step / max(1.0, warm_up)
        return max(0.0, (total - step) / max(1.0, total - warm_up))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_float(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _is_number(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _metric_value(result: Any) -> float | dict[str, float]:
    """A ``compute_metrics`` result as a float or a dict of floats (pyvene allows either)."""
    if _is_number(result):
        return _to_float(result)
    if isinstance(result, Mapping):
        bad = [k for k, v in result.items() if not _is_number(v)]
        if bad:
            raise ConfigError(
                f"compute_metrics returned a dict whose value for {bad[0]!r} is "
                f"{type(result[bad[0]]).__name__}; each value must be a number (or a one-element tensor)."
            )
        return {k: _to_float(v) for k, v in result.items()}
    raise ConfigError(
        f"compute_metrics must return a number or a dict of numbers, got {type(result).__name__}."
    )


def weighted_average(values: list, weights: list) -> float | dict[str, float]:
    """Average of per-batch metrics weighted by batch size (pyvene's ``weighted_average``);
    dict metrics are averaged key by key."""
    if len(values) != len(weights):
        raise ConfigError(f"weighted_average got {len(values)} values but {len(weights)} weights.")
    total = float(sum(weights))
    if not values or total == 0:
        return {}
    vals = [_metric_value(v) for v in values]
    if all(isinstance(v, float) for v in vals):
        return sum(v * w for v, w in zip(vals, weights)) / total
    if not all(isinstance(v, dict) for v in vals):
        raise ConfigError("compute_metrics returned a number for some batches and a dict for others.")
    dicts = [v for v in vals if isinstance(v, dict)]  # all of them (checked above)
    keys = list(dicts[0])
    for v in dicts[1:]:
        if list(v) != keys:
            raise ConfigError(f"compute_metrics returned keys {list(v)} for one batch and {keys} for another.")
    return {k: sum(v[k] * w for v, w in zip(dicts, weights)) / total for k in keys}


_METRIC_FORMS = ("lists", "tensors")


def _metrics(compute_metrics: Callable, logits: torch.Tensor, labels: Any, form: str) -> Any:
    if form == "lists":
        return compute_metrics([logits], [labels])
    return compute_metrics(logits, labels)


def _check_form(metrics_args: str) -> None:
    if metrics_args not in _METRIC_FORMS:
        raise ConfigError(
            f"metrics_args must be 'lists' (pyvene: compute_metrics([logits], [labels])) or 'tensors' "
            f"(compute_metrics(logits, labels)), got {metrics_args!r}."
        )


def train_alignment(
    intervenable: Any,
    train_dataloader: Iterable,
    compute_loss: Callable[[torch.Tensor, Any], torch.Tensor],
    compute_metrics: Callable[..., Any] | None = None,
    inputs_collator: Callable[[Any], Mapping] | None = None,
    *,
    lr: float = 1e-3,
    epochs: int = 10,
    gradient_accumulation_steps: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    warm_up_steps: float | None = None,
    temperature_schedule: Any = "auto",
    max_grad_norm: float | None = None,
    input_key: str = "input_ids",
    metrics_args: str = "lists",
    progress: bool = True,
) -> dict:
    """Train the interventions (and the model, after ``enable_model_gradients()``).

    Per batch: ``inputs_collator(batch)`` (if given), an intervened forward pass, ``loss =
    compute_loss(logits, batch["labels"])``, backward, and (if given) ``compute_metrics([logits],
    [labels])`` for the progress bar and the history. Every ``gradient_accumulation_steps``
    batches an optimiser step: by default Adam over ``get_trainable_parameters()`` at ``lr`` with
    transformers' linear schedule, warming up over ``warm_up_steps`` optimiser steps (default 10%
    of them, as in pyvene; pyvene ignored the argument), then, for interventions with a temperature
    (boundless, sigmoid masks), the next value of ``temperature_schedule``: ``(start, end)``
    annealed linearly over the optimiser steps, ``"auto"`` (pyvene's 50 -> 0.1 when such
    interventions exist) or None (leave temperatures alone).

    As in pyvene, the wrapped model runs in eval mode during the loop (dropout off; its mode is
    restored afterwards) and the interventions in train mode.

    Returns the history (pyvene returned None): ``{"loss": [per optimiser step], "metrics": [per
    batch, each a float or a dict, if compute_metrics]}``.
    """
    _check_form(metrics_args)
    if gradient_accumulation_steps < 1:
        raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}.")
    if optimizer is None:
        params = intervenable.get_trainable_parameters()
        if not params:
            raise ConfigError(
                "Nothing to train: the interventions have no trainable parameters and the model is "
                "frozen (call enable_model_gradients() to train the model, or use a trainable intervention type)."
            )
        optimizer = torch.optim.Adam(params, lr=lr)
    try:
        per_epoch = math.ceil(len(train_dataloader) / gradient_accumulation_steps)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = per_epoch * epochs if per_epoch is not None else None
    if scheduler is None and total:
        warm = 0.1 * total if warm_up_steps is None else float(warm_up_steps)
        scheduler = _linear_warmup(optimizer, warm, total)

    annealed = annealed_interventions(intervenable)
    temps = None
    if temperature_schedule == "auto":
        temperature_schedule = (50.0, 0.1) if annealed else None
    if temperature_schedule is not None and annealed:
        if total is None:
            raise ConfigError("A temperature schedule needs a data loader with a length.")
        start, end = temperature_schedule
        temps = torch.linspace(float(start), float(end), max(total, 1))
        for iv in annealed:
            iv.set_temperature(temps[0])

    modes = [(m, m.training) for m in intervenable.model.modules()]
    intervenable.model.eval()
    intervenable.interventions.train()
    history: dict[str, list] = {"loss": [], "metrics": []}
    step = 0
    params_to_clip = [p for g in optimizer.param_groups for p in g["params"]]
    optimizer.zero_grad()
    bar = tqdm(total=(len(train_dataloader) * epochs if per_epoch is not None else None),  # type: ignore[arg-type]
               disable=not progress, desc="train_alignment")
    try:
        for _epoch in range(epochs):
            for i, batch in enumerate(train_dataloader):
                if inputs_collator is not None:
                    batch = inputs_collator(batch)
                logits = _run(intervenable, batch, input_key)
                labels = batch.get("labels")
                if compute_metrics is not None:
                    with torch.no_grad():
                        history["metrics"].append(_metric_value(_metrics(compute_metrics, logits.detach(), labels, metrics_args)))
                loss = compute_loss(logits, labels)
                (loss / gradient_accumulation_steps).backward()
                if (i + 1) % gradient_accumulation_steps == 0:
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params_to_clip, max_grad_norm)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    if temps is not None:
                        t = temps[min(step - 1, len(temps) - 1)]
                        for iv in annealed:
                            iv.set_temperature(t)
                    history["loss"].append(_to_float(loss))
                bar.update(1)
                post = {"loss": f"{_to_float(loss):.4f}"}
                if history["metrics"]:
                    last = history["metrics"][-1]
                    post.update({k: f"{v:.3f}" for k, v in last.items()} if isinstance(last, dict) else {"acc": f"{last:.3f}"})
                bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
        for m, mode in modes:
            m.training = mode
    return history


def eval_alignment(
    intervenable: Any,
    eval_dataloader: Iterable | None = None,
    compute_metrics: Callable[..., Any] | None = None,
    inputs_collator: Callable[[Any], Mapping] | None = None,
    *,
    train_dataloader: Iterable | None = None,
    input_key: str = "input_ids",
    metrics_args: str = "lists",
    progress: bool = True,
) -> float | dict[str, float]:
    """Evaluate without gradients: the batch-size-weighted average of ``compute_metrics([logits],
    [labels])`` over the loader, a float (number metrics, pyvene's return value) or a dict (dict
    metrics, averaged key by key). ``train_dataloader=`` is accepted, as in pyvene's README.

    Interventions are put in eval mode for the loop and restored afterwards; the model's mode is
    left as it is (eval since wrapping, unless changed).
    """
    _check_form(metrics_args)
    loader = eval_dataloader if eval_dataloader is not None else train_dataloader
    if loader is None or compute_metrics is None:
        raise ConfigError("eval_alignment needs eval_dataloader=... and compute_metrics=....")
    modes = [(m, m.training) for m in intervenable.interventions.modules()]
    intervenable.interventions.eval()
    values: list = []
    sizes: list[int] = []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, disable=not progress, desc="eval_alignment"):
                if inputs_collator is not None:
                    batch = inputs_collator(batch)
                logits = _run(intervenable, batch, input_key)
                values.append(_metric_value(_metrics(compute_metrics, logits, batch.get("labels"), metrics_args)))
                sizes.append(logits.shape[0])
    finally:
        for m, mode in modes:
            m.training = mode
    return weighted_average(values, sizes)
