"""Attribution patching: a first-order estimate of activation patching from two forward passes
and one backward pass (Nanda 2023; TransformerLens 3.9).

For a site ``a`` with clean value ``a_clean`` and corrupted value ``a_corr``, patching the clean
value into the corrupted run changes the metric by about

    (a_clean - a_corr) . d metric / d a   (gradient taken in the corrupted run),

summed over the features of one position (and, for ``head_*`` components, of one head). Every
(layer, position[, head]) cell of every component comes out of the same two cached runs, so the
whole grid costs about three forward passes however many cells it has. It is exact for linear
effects and can be far off where the metric saturates; :func:`compare_with_patching` reports
how well its ranking agrees with exact :func:`vene.analysis.activation_patching`.

>>> attr = attribution_patching(model, clean, corrupted, logit_diff(io, s), components=["block_output"])
>>> attr["block_output"].values        # (layers, positions): estimated change of the metric
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .cache import run_with_cache
from .causal_trace import token_labels
from .patching import _as_inputs, _reduce
from .grids import Grid, GridSet

Metric = Callable[[torch.Tensor], Any]


def attribution_patching(
    model: nn.Module,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    components: Sequence[str] = ("block_output",),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    tokenizer: Any = None,
) -> GridSet:
    """Estimate, for every cell, the metric change of patching the clean activation into the
    corrupted run.

    Args as in :func:`vene.analysis.activation_patching`: ``metric(logits)`` takes the
    last-position logits ``(batch, vocab)`` and returns a scalar or one value per example
    (averaged). Returns a :class:`GridSet` with one grid per component: axes ``("layer",
    "position")``, or ``("layer", "position", "head")`` for head components, values = the
    estimated ``metric(patched) - metric(corrupted)``. ``meta`` holds the clean and corrupted
    metric values (add ``meta["corrupted_metric"]`` to compare with activation-patching scores).
    """
    if not callable(metric):
        raise ConfigError("metric must be a callable of the last-position logits (batch, vocab).")
    clean_in = _as_inputs(clean, tokenizer, "clean")
    corr_in = _as_inputs(corrupted, tokenizer, "corrupted")
    seq = corr_in["input_ids"].shape[1]
    if clean_in["input_ids"].shape[1] != seq:
        raise ConfigError(f"clean and corrupted inputs need the same number of tokens ({clean_in['input_ids'].shape[1]} vs {seq}).")
    pos = list(range(seq)) if positions is None else [int(p) % seq for p in positions]
    comps = list(components)
    if not comps:
        raise ConfigError("components is empty.")

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return _reduce_t(metric(logits[:, -1].float()))

    corr = run_with_cache(model, corr_in, comps, layers=layers, positions=pos, grad_of=objective)
    clean_c = run_with_cache(model, clean_in, comps, layers=layers, positions=pos)
    grids: dict[str, Grid] = {}
    for comp in comps:
        ls = corr.layers(comp)
        rows = []
        head_grid = None
        for l in ls:
            a_corr, a_clean, g = corr[comp, l], clean_c[comp, l], corr.grads[comp, l]
            delta = (a_clean.expand_as(a_corr) - a_corr).float() * g.float()
            if delta.dim() == 4:  # (batch, heads, P, head_dim or keys) -> (P, heads)
                rows.append(delta.sum(dim=(0, 3)).T)
                head_grid = True
            else:  # (batch, P, d)
                rows.append(delta.sum(dim=(0, 2)))
        values = torch.stack(rows)
        labels = {"layer": ls, "position": pos}
        axes: tuple[str, ...] = ("layer", "position")
        if head_grid:
            axes = axes + ("head",)
            labels["head"] = list(range(values.shape[-1]))
        grids[comp] = Grid(values, axes, labels, name="attribution", meta={"title": f"attribution: {comp}"})
    clean_metric = float(_reduce(metric(clean_c.output.logits[:, -1].float()))) if hasattr(clean_c.output, "logits") else None
    corr_metric = float(_reduce(metric(corr.output.logits[:, -1].float()))) if hasattr(corr.output, "logits") else None
    tokens = token_labels(tokenizer, clean_in["input_ids"][0].tolist()) if tokenizer is not None else None
    meta = {"clean_metric": clean_metric, "corrupted_metric": corr_metric, "tokens": tokens,
            "method": "attribution patching: (clean - corrupted) . grad(metric) at the corrupted run"}
    for out_grid in grids.values():
        out_grid.meta.update(clean_metric=clean_metric, corrupted_metric=corr_metric)
        if tokens is not None:
            out_grid.meta["position_tokens"] = [tokens[p] for p in pos]
    return GridSet(grids, meta)


def _reduce_t(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float32)
    return t.float().mean()


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally shaped arrays (ties get average ranks)."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.numel() != y.numel():
        raise ConfigError(f"rank_correlation needs equal sizes, got {x.numel()} and {y.numel()}.")
    if x.numel() < 2:
        raise ConfigError("rank_correlation needs at least two values.")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    for v in x.unique():  # average ranks of ties
        m = x == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def compare_with_patching(attribution: GridSet, patching: Any) -> dict[str, dict[str, float]]:
    """Agreement of attribution patching with exact activation patching
    (:class:`vene.analysis.PatchingResult`) per shared component: Spearman rank correlation,
    Pearson correlation and the largest absolute error of the estimated metric change."""
    out: dict[str, dict[str, float]] = {}
    for comp, grid in attribution.items():
        if comp not in patching.scores:
            continue
        exact = patching.scores[comp].float() - patching.corrupted_metric
        if tuple(exact.shape) != grid.shape:
            raise ConfigError(f"{comp}: attribution grid {grid.shape} and patching grid {tuple(exact.shape)} differ; "
                              "use the same layers, positions and heads.")
        est = grid.values
        e, x = est.flatten().double(), exact.flatten().double()
        ec, xc = e - e.mean(), x - x.mean()
        den = float((ec.square().sum() * xc.square().sum()).sqrt())
        out[comp] = {"spearman": rank_correlation(est, exact), "pearson": float((ec * xc).sum()) / den if den > 0 else float("nan"),
                     "max_abs_error": float((e - x).abs().max()), "cells": int(e.numel())}
    if not out:
        raise ConfigError(f"No component in common: attribution has {list(attribution)}, patching {list(patching.scores)}.")
    return out
