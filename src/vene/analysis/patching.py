"""Activation patching: patch clean activations into a corrupted run over a grid.

For each component, each layer and each position (and each head, for ``head_*`` components) the
clean run's activation is written into the corrupted run and ``metric`` is read off the
last-position logits. The clean run is computed once; every cell resumes from the cached
corrupted state at its layer (see :mod:`vene.analysis.sweep`).

>>> res = activation_patching(model, clean_ids, corrupted_ids, logit_diff(paris, rome))
>>> res.scores["block_output"]          # (layers, positions)
>>> res.normalized()["block_output"]    # 0 = corrupted, 1 = clean
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .causal_trace import n_layers_of, token_labels
from .cells import Patch, PatchFn
from .results import PatchingResult, SweepInterrupted, provenance
from .sweep import SweepRunner

Metric = Callable[[torch.Tensor], Any]


def _named(fn: Metric, name: str) -> Metric:
    fn.metric_name = name  # type: ignore[attr-defined]
    return fn


def logit_diff(correct: int, wrong: int) -> Metric:
    """Metric: ``logit[correct] - logit[wrong]`` of the last position (per example)."""
    return _named(lambda logits: logits[..., correct] - logits[..., wrong], f"logit[{correct}] - logit[{wrong}]")


def probability(token: int) -> Metric:
    """Metric: the probability of ``token`` at the last position (per example)."""
    return _named(lambda logits: logits.softmax(-1)[..., token], f"p[{token}]")


def logprob(token: int) -> Metric:
    """Metric: the log-probability of ``token`` at the last position (per example)."""
    return _named(lambda logits: logits.log_softmax(-1)[..., token], f"log p[{token}]")


def _as_inputs(x: Any, tokenizer: Any, what: str) -> dict:
    if isinstance(x, str):
        if tokenizer is None:
            raise ConfigError(f"A text {what} input needs tokenizer=.")
        x = tokenizer(x, return_tensors="pt")
    if isinstance(x, Mapping):
        out = {k: v for k, v in x.items() if k in ("input_ids", "attention_mask") and v is not None}
        if "input_ids" not in out:
            raise ConfigError(f"The {what} input has no input_ids.")
    else:
        out = {"input_ids": torch.as_tensor(x)}
    ids = torch.as_tensor(out["input_ids"]).long()
    out["input_ids"] = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if out["input_ids"].dim() != 2:
        raise ConfigError(f"The {what} input_ids must be (seq,) or (batch, seq), got {tuple(ids.shape)}.")
    if "attention_mask" in out:
        m = torch.as_tensor(out["attention_mask"])
        out["attention_mask"] = m.unsqueeze(0) if m.dim() == 1 else m
    return out


def _reduce(value: Any) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    return t.float().mean()


def activation_patching(
    model: nn.Module,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    components: Sequence[str] = ("block_output",),
    positions: Sequence[int] | str | None = None,
    heads: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    memory_budget: int | None = None,
    strategy: str = "auto",
    patch: str | PatchFn = "clean",
    metric_name: str | None = None,
) -> PatchingResult:
    """Patch clean activations into the corrupted run, one (layer, position[, head]) at a time.

    Args:
        clean, corrupted: text (with ``tokenizer``), token ids ``(seq,)`` / ``(batch, seq)``, or
            tokenizer output; the same number of tokens. With a batch, row ``i`` of ``clean``
            patches row ``i`` of ``corrupted`` (or one clean row patches every corrupted row).
        metric: ``metric(logits)`` with the last-position logits ``(batch, vocab)`` of one cell
            returns a scalar or one value per example (averaged). See :func:`logit_diff`,
            :func:`probability`, :func:`logprob`.
        components: component names (``head_*`` components add a heads axis) or module-path
            templates with the layer, such as ``"model.layers[{}].mlp.output"``.
        positions: positions to patch one at a time (default: all), or ``"all"`` to patch every
            position at once (one column).
        heads: heads swept for head components (default: all).
        layers: layers swept (default: all).
        strategy: "auto" (layer stepping and prefix reuse where the replay checks pass), "step"
            (layer stepping only) or "forward" (batched full forward passes).
        memory_budget: bytes of activations per batched chunk (default 512 MiB).
        patch: what is written into the corrupted run: ``"clean"`` (the clean activation),
            ``"mean"`` (its mean over the clean batch: mean ablation), ``"resample"`` (another
            clean example's activation: resample ablation), ``"zero"``, or a function
            ``fn(recorded, S)`` of the clean activations ``(B_clean, seq, *f)`` returning 1 or
            ``S`` rows (see :mod:`vene.analysis.cells`).
        metric_name: what the metric is, for summaries and figures (default: the ``metric_name``
            attribute of the metric, which :func:`logit_diff` & co. set).

    The progress bar counts patches (grid cells). Ctrl-C raises
    :class:`~vene.analysis.results.SweepInterrupted` whose ``result`` has the finished cells
    (NaN elsewhere).
    """
    import time

    t_start = time.perf_counter()
    if not callable(metric):
        raise ConfigError("metric must be a callable of the last-position logits (batch, vocab); see vene.analysis.logit_diff.")
    clean_in = _as_inputs(clean, tokenizer, "clean")
    corr_in = _as_inputs(corrupted, tokenizer, "corrupted")
    seq = corr_in["input_ids"].shape[1]
    n_layers = n_layers_of(model)
    grid_layers = list(range(n_layers)) if layers is None else [int(l) % n_layers for l in layers]
    if isinstance(positions, str):
        if positions != "all":
            raise ConfigError(f"positions must be a list of ints, None or 'all', not {positions!r}.")
        pos_list: list[Any] = ["all"]
    else:
        raw = list(range(seq)) if positions is None else [int(p) for p in positions]
        if any(not -seq <= p < seq for p in raw):
            raise ConfigError(f"positions {raw} are out of range for {seq} tokens.")
        pos_list = [p % seq for p in raw]
    components = list(components)
    if not components:
        raise ConfigError("components is empty.")
    sites = [(c, l) for c in components for l in grid_layers]
    runner = SweepRunner(model, clean_in, corr_in, sites, patch=patch, memory_budget=memory_budget,
                         strategy=strategy, progress=False, desc="activation patching")
    head_lists: dict[str, list[int]] = {}
    cells: list[list[Patch]] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for ci, comp in enumerate(components):
        site0 = runner.sites[ci * len(grid_layers)]
        hs = None
        if site0.head_layout:
            n_heads = site0.n_heads
            assert n_heads is not None  # head-layout sites know their number of heads
            hs = list(range(n_heads)) if heads is None else [int(h) for h in heads]
            if any(not 0 <= h < n_heads for h in hs):
                raise ConfigError(f"heads {hs} are out of range for {comp!r} ({n_heads} heads).")
            head_lists[comp] = hs
        for li in range(len(grid_layers)):
            s = ci * len(grid_layers) + li
            for p in pos_list:
                toks = range(seq) if p == "all" else [p]
                if hs is None:
                    cells.append([Patch(s, t) for t in toks])
                else:
                    cells.extend([Patch(s, t, h) for t in toks] for h in hs)
        shapes[comp] = (len(grid_layers), len(pos_list)) + ((len(hs),) if hs is not None else ())
    runner.record()
    t_record = time.perf_counter()

    def cell_values(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([_reduce(metric(lg)) for lg in logits])

    values = torch.full((len(cells),), float("nan"))
    per_chunk = max(1, runner.max_rows() // runner.S)
    interrupted = False
    from tqdm.auto import tqdm

    try:  # chunk by chunk, so that Ctrl-C keeps the finished cells (and the bar counts patches)
        with tqdm(total=len(cells), desc="activation patching", unit=" patches", smoothing=0,
                  disable=not progress, leave=False) as bar:
            for a in range(0, len(cells), per_chunk):
                values[a: a + per_chunk] = runner.run(cells[a: a + per_chunk], cell_values).float()
                bar.update(len(cells[a: a + per_chunk]))
    except KeyboardInterrupt:
        interrupted = True
    scores, at = {}, 0
    for comp in components:
        n = 1
        for d in shapes[comp]:
            n *= d
        scores[comp] = values[at: at + n].view(shapes[comp])
        at += n
    clean_logits = runner.clean_logits
    if clean_logits.shape[0] != runner.S:
        clean_logits = clean_logits.expand(runner.S, -1)
    ids_c, ids_k = clean_in["input_ids"][0].tolist(), corr_in["input_ids"][0].tolist()
    timings = {"record_s": round(t_record - t_start, 3), "sweep_s": round(time.perf_counter() - t_record, 3)}
    decode = (lambda ids: tokenizer.decode(ids)) if tokenizer is not None else (lambda ids: None)
    result = PatchingResult(
        scores=scores, layers=grid_layers, positions=pos_list, heads=head_lists,
        clean_metric=float(_reduce(metric(clean_logits))), corrupted_metric=float(_reduce(metric(runner.base_logits))),
        tokens=token_labels(tokenizer, ids_c) if tokenizer is not None else None,
        corrupted_tokens=token_labels(tokenizer, ids_k) if tokenizer is not None else None,
        extra={"strategy": runner.mode, "fallback_reason": runner.fallback_reason},
        metric_name=metric_name or getattr(metric, "metric_name", None),
        clean_prompt=clean if isinstance(clean, str) else decode(ids_c),
        corrupted_prompt=corrupted if isinstance(corrupted, str) else decode(ids_k),
        model_name=getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__,
        provenance=provenance(strategy=runner.mode, fallback_reason=runner.fallback_reason, timings=timings),
    )
    if interrupted:
        raise SweepInterrupted(result) from None
    return result
