"""Training and evaluation loops for trainable interventions (pyvene's ``train_alignment``).

Both functions take an :class:`~vene.IntervenableModel` and a data loader of dict batches. A batch
holds (pyvene's field names):

* ``input_ids``: the base inputs, passed to the model as ``{input_key: ...}`` (``input_key``
  defaults to ``"input_ids"``; use ``"inputs_embeds"`` for models fed with vectors, such as the
  built-in MLP); ``attention_mask`` is passed along when present;
* ``source_input_ids``: the source inputs; ``(batch, n_sources, ...)`` (one more dimension than
  ``input_ids``) gives one source per intervention group, ``source_input_ids[:, g]``; otherwise a
  single source shared by every group (``source_attention_mask`` likewise);
* ``labels``: handed to ``compute_loss`` / ``compute_metrics``;
* optional ``subspaces`` and location fields ``"source_{i}->base.0.{unit}"`` (source side) and
  ``"source_{i}->base.1.{unit}"`` (base side) for intervention ``i``, ``(batch, units)`` tensors or
  lists; without them the interventions act on whole tensors.

A batch may instead carry the call itself: ``base`` (dict), ``sources`` (list of dicts or None),
and optionally ``unit_locations`` and ``subspaces``: this covers multi-source designs where some
groups are skipped per batch (a None source).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

__all__ = ["train_alignment", "eval_alignment", "batch_unit_locations", "annealed_interventions"]


def annealed_interventions(intervenable: Any) -> list[nn.Module]:
    """The distinct interventions that have a temperature (``set_temperature``)."""
    seen: dict[int, nn.Module] = {}
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
            vals = []
            for u in subunits:
                v = batch.get(f"source_{i}->base.{side}.{u}")
                if v is None:
                    vals = None
                    break
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
        "subspaces": batch.get("subspaces"),
    }


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


def _linear_warmup(optimizer: torch.optim.Optimizer, warm_up: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warm_up:
            return (step + 1) / max(1, warm_up)
        return max(0.0, (total - step) / max(1, total - warm_up))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_float(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def train_alignment(
    intervenable: Any,
    train_dataloader: Iterable,
    compute_loss: Callable[[torch.Tensor, Any], torch.Tensor],
    compute_metrics: Callable[[torch.Tensor, Any], Mapping] | None = None,
    inputs_collator: Callable[[Any], Mapping] | None = None,
    *,
    lr: float = 1e-3,
    epochs: int = 10,
    gradient_accumulation_steps: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    warm_up_steps: int | None = None,
    temperature_schedule: Any = "auto",
    max_grad_norm: float | None = None,
    input_key: str = "input_ids",
    progress: bool = True,
) -> dict:
    """Train the interventions (and the model, after ``enable_model_gradients()``).

    Per batch: ``inputs_collator(batch)`` (if given), an intervened forward pass, ``loss =
    compute_loss(logits, batch["labels"])``, backward; every ``gradient_accumulation_steps``
    batches an optimiser step (default: Adam over ``get_trainable_parameters()`` at ``lr``, with a
    linear schedule warming up over ``warm_up_steps``, default 10% of the steps) and, for
    interventions with a temperature (boundless, sigmoid masks), the next value of
    ``temperature_schedule``: ``(start, end)`` annealed linearly over all steps, ``"auto"`` (pyvene's
    50 -> 0.1 when such interventions exist) or None (leave temperatures alone).

    Returns the history: ``{"loss": [per step], "metrics": [per batch, if compute_metrics]}``.
    """
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
        warm = int(0.1 * total) if warm_up_steps is None else int(warm_up_steps)
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
                loss = compute_loss(logits, labels)
                (loss / gradient_accumulation_steps).backward()
                if compute_metrics is not None:
                    with torch.no_grad():
                        history["metrics"].append(dict(compute_metrics(logits.detach(), labels)))
                if (i + 1) % gradient_accumulation_steps == 0:
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params_to_clip, max_grad_norm)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    if temps is not None:
                        t = temps[min(step, len(temps) - 1)]
                        for iv in annealed:
                            iv.set_temperature(t)
                    history["loss"].append(_to_float(loss))
                bar.update(1)
                post = {"loss": f"{_to_float(loss):.4f}"}
                if history["metrics"]:
                    post.update({k: f"{_to_float(v):.3f}" for k, v in history["metrics"][-1].items()})
                bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
    return history


def eval_alignment(
    intervenable: Any,
    eval_dataloader: Iterable | None = None,
    compute_metrics: Callable[[torch.Tensor, Any], Mapping] | None = None,
    inputs_collator: Callable[[Any], Mapping] | None = None,
    *,
    train_dataloader: Iterable | None = None,
    input_key: str = "input_ids",
    progress: bool = True,
) -> dict:
    """Evaluate without gradients: the batch-size-weighted average of ``compute_metrics(logits,
    labels)`` over the loader (``train_dataloader=`` is accepted, as in pyvene's README).

    Interventions are put in eval mode for the loop and restored afterwards.
    """
    loader = eval_dataloader if eval_dataloader is not None else train_dataloader
    if loader is None or compute_metrics is None:
        raise ConfigError("eval_alignment needs eval_dataloader=... and compute_metrics=....")
    modes = [(m, m.training) for m in intervenable.interventions.modules()]
    intervenable.interventions.eval()
    totals: dict[str, float] = {}
    count = 0
    try:
        with torch.no_grad():
            for batch in tqdm(loader, disable=not progress, desc="eval_alignment"):
                if inputs_collator is not None:
                    batch = inputs_collator(batch)
                logits = _run(intervenable, batch, input_key)
                n = logits.shape[0]
                for k, v in compute_metrics(logits, batch.get("labels")).items():
                    totals[k] = totals.get(k, 0.0) + _to_float(v) * n
                count += n
    finally:
        for m, mode in modes:
            m.training = mode
    return {k: v / max(count, 1) for k, v in totals.items()}
