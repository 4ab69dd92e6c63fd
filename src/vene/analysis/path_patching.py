"""Path patching on attention heads, built on intervention configs.

:func:`path_patching_config` is the seed README's helper (with its ``stream`` typo fixed): the
sender head's ``head_attention_value_output`` (group 0) takes the *source* run's value, and the
MLP of the sender's layer and every attention and MLP output after it (group 1) are restored to
the *base* run's values. Called with ``sources=[source, base]`` the sender's change reaches the
logits only along the residual stream (its direct path). :func:`path_patching` records those
values once (the source's head outputs, the base run's attention and MLP outputs) and hands them
to each call as ``source_representations``: the same numbers, one forward pass per sender.

:func:`path_patching` runs that for every sender head and returns a ``(layer, head)`` grid of the
metric. With ``receivers`` (e.g. the queries of later heads) it measures the path sender ->
receivers instead, in two passes (Wang et al. 2022):

1. base run with the sender patched from the source and every attention and MLP output between
   the sender and the deepest receiver frozen to the base values; the receivers' inputs are
   collected;
2. base run with only the receivers set to the collected values (everything downstream free);
   the metric is read off its last-position logits.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import IntervenableConfig
from ..errors import ConfigError
from ..interventions import CollectIntervention, VanillaIntervention
from ..model import IntervenableModel
from ..components import resolve_site
from .cache import run_with_cache
from .causal_trace import n_layers_of
from .patching import _as_inputs, _reduce
from .grids import Grid

logger = logging.getLogger(__name__)

Metric = Callable[[torch.Tensor], Any]


def path_patching_config(layer: int, last_layer: int, component: str = "head_attention_value_output",
                         unit: str = "h.pos") -> IntervenableConfig:
    """The seed README's schema: sender ``component`` at ``layer`` (group 0); the MLP output of
    ``layer`` (unless the sender is an MLP component) and the attention and MLP outputs of layers
    ``layer+1 .. last_layer-1`` restored (group 1)."""
    sender = [{"layer": layer, "component": component, "unit": unit, "group_key": 0}]
    restoring = []
    if not component.startswith("mlp_"):
        restoring.append({"layer": layer, "component": "mlp_output", "group_key": 1})
    for i in range(layer + 1, last_layer):
        restoring += [{"layer": i, "component": "attention_output", "group_key": 1},
                      {"layer": i, "component": "mlp_output", "group_key": 1}]
    return IntervenableConfig(sender + restoring)


def _heads_locs(head: int, positions: list[int], batch: int) -> list:
    return [[[head]] * batch, [list(positions)] * batch]


def _pos_locs(positions: list[int], batch: int) -> list:
    return [list(positions)] * batch


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None:
        raise ConfigError("path_patching reads logits; use a model with a language-model head.")
    return logits


def path_patching(
    model: nn.Module,
    base: Any,
    source: Any,
    metric: Metric,
    senders: Sequence[tuple[int, int]] | None = None,
    receivers: Sequence[tuple[str, int, int | None]] | None = None,
    positions: Sequence[int] | None = None,
    receiver_positions: Sequence[int] | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> Grid:
    """Metric of the base run with each sender head's path patched from ``source``.

    Args:
        base, source: inputs with the same shape (text with ``tokenizer``, ids, tokenizer output).
        metric: ``metric(logits)`` on the last-position logits ``(batch, vocab)``; scalar or one
            value per example (averaged).
        senders: ``(layer, head)`` pairs (default: every head of every layer).
        receivers: None -- the direct path to the logits (README semantics); or
            ``(component, layer, head)`` triples such as ``("head_query_output", 9, 3)`` (head
            ``None`` for non-head components such as ``"mlp_input"``).
        positions: positions where the sender is patched (default: all).
        receiver_positions: positions where receivers are set (default: all).
    Returns a :class:`Grid` with axes ``("layer", "head")`` (senders not evaluated are NaN);
    ``meta`` has ``base_metric``, ``source_metric`` and ``receivers``.
    """
    from tqdm.auto import tqdm

    base_in = _as_inputs(base, tokenizer, "base")
    src_in = _as_inputs(source, tokenizer, "source")
    if base_in["input_ids"].shape != src_in["input_ids"].shape:
        raise ConfigError(f"base and source need the same shape, got {tuple(base_in['input_ids'].shape)} "
                          f"and {tuple(src_in['input_ids'].shape)}.")
    B, seq = base_in["input_ids"].shape
    n = n_layers_of(model)
    n_heads = resolve_site(model, "head_attention_value_output", 0).n_heads
    assert n_heads is not None  # a head component's site knows its number of heads
    pairs = [(l, h) for l in range(n) for h in range(n_heads)] if senders is None else [(int(l) % n, int(h)) for l, h in senders]
    for _l, h in pairs:
        if not 0 <= h < n_heads:
            raise ConfigError(f"sender head {h} is out of range ({n_heads} heads).")
    pos = list(range(seq)) if positions is None else [int(p) % seq for p in positions]
    rpos = list(range(seq)) if receiver_positions is None else [int(p) % seq for p in receiver_positions]
    recv = None if receivers is None else [(str(c), int(l) % n, None if h is None else int(h)) for c, l, h in receivers]
    if recv is not None:
        if not recv:
            raise ConfigError("receivers is empty; pass None for the direct path to the logits.")
        for c, l, rh in recv:
            site = resolve_site(model, c, l)
            if (rh is not None) != site.head_layout:
                raise ConfigError(f"receiver {c!r} {'needs' if site.head_layout else 'takes no'} head index.")
        for l, _h in pairs:
            if any(rl <= l for _, rl, _ in recv):
                raise ConfigError(f"sender at layer {l} is not below every receiver layer {[r[1] for r in recv]}.")
    grid = torch.full((n, n_heads), float("nan"))
    by_layer: dict[int, list[int]] = {}
    for l, h in pairs:
        by_layer.setdefault(l, []).append(h)
    # The values every call needs, recorded once: the source's head outputs at the sender
    # layers and the base run's attention and MLP outputs (the frozen sites).
    sender_layers = sorted(by_layer)
    src_heads = run_with_cache(model, src_in, ["head_attention_value_output"], layers=sender_layers)
    frozen = run_with_cache(model, base_in, ["attention_output", "mlp_output"])
    base_metric = float(_reduce(metric(_logits(frozen.output)[:, -1].float())))
    source_metric = float(_reduce(metric(_logits(src_heads.output)[:, -1].float())))
    bar = tqdm(total=len(pairs), disable=not progress, desc="path patching")
    for layer, heads in by_layer.items():
        last = n if recv is None else max(rl for _, rl, _ in recv)
        config = path_patching_config(layer, last)
        restoring = [(r.component, r.layer) for r in config.representations[1:]]
        if recv is not None:
            for c, rl, _ in recv:
                config.add_intervention({"layer": rl, "component": c, "unit": "h.pos" if resolve_site(model, c, rl).head_layout else "pos",
                                         "group_key": 2, "intervention_type": CollectIntervention})
        pv = IntervenableModel(config, model=model)
        frozen_reps = [frozen[c, l] for c, l in restoring]  # (B, seq, d): every position
        for h in heads:
            z = src_heads["head_attention_value_output", layer][:, h: h + 1, pos]  # (B, 1, P, head_dim)
            locs = [_heads_locs(h, pos, B)] + [_pos_locs(list(range(seq)), B)] * len(restoring)
            reps: list[torch.Tensor | None] = [z, *frozen_reps]
            if recv is not None:
                locs += [_heads_locs(rh, rpos, B) if rh is not None else _pos_locs(rpos, B) for _, _, rh in recv]
                reps += [None] * len(recv)
            with torch.no_grad():
                out = pv(base_in, unit_locations={"base": locs}, source_representations=reps)
            if recv is None:
                value = float(_reduce(metric(_logits(out[1])[:, -1].float())))
            else:
                value = _set_receivers(model, base_in, recv, rpos, out[0][1], metric, B)
            grid[layer, h] = value
            bar.update(1)
    bar.close()
    meta = {"base_metric": base_metric, "source_metric": source_metric, "positions": pos,
            "receivers": "logits (direct path)" if recv is None else [list(r) for r in recv],
            "title": "path patching" + (" -> logits" if recv is None else f" -> {len(recv)} receivers")}
    return Grid(grid, ("layer", "head"), {"layer": list(range(n)), "head": list(range(n_heads))}, "metric", meta)


def _set_receivers(model: nn.Module, base_in: dict, recv: list, rpos: list[int], collected: list, metric: Metric, B: int) -> float:
    config = IntervenableConfig([{"layer": rl, "component": c, "unit": "h.pos" if rh is not None else "pos",
                                  "intervention_type": VanillaIntervention} for c, rl, rh in recv])
    pv = IntervenableModel(config, model=model)
    locs = [_heads_locs(rh, rpos, B) if rh is not None else _pos_locs(rpos, B) for _, _, rh in recv]
    with torch.no_grad():
        _, out = pv(base_in, unit_locations={"base": locs}, source_representations=list(collected))
    return float(_reduce(metric(_logits(out)[:, -1].float())))
