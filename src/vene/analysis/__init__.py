"""Analyses built on vene's engine: causal tracing, activation patching, plots.

Functions take a model (TransformerLens ``patching`` style) and return result objects whose
``plot()`` gives a matplotlib ``Figure``. Sweeps record the clean run once, pack many
restorations into few batched passes, resume each restoration from the cached corrupted state at
its layer and compute the output head on the last position only (see :mod:`vene.analysis.sweep`).
"""
from __future__ import annotations

from .causal_trace import (
    DEFAULT_COMPONENTS,
    TraceWarning,
    causal_trace,
    find_subject_positions,
    guess_subject,
)
from .patching import activation_patching, logit_diff, logprob, probability
from .results import CausalTraceResult, PatchingResult, SweepInterrupted
from .plotting import draw_heatmap, heatmap, plot_causal_trace, plot_patching
from .cells import PATCHES, Patch
from .sweep import SweepFallbackWarning, SweepRunner
from .attribution import attribution_patching, compare_with_patching, rank_correlation
from .cache import ActivationCache, DiskCache, cache_to_disk, load_cache, run_with_cache
from .lens import direct_logit_attribution, final_norm_and_head, logit_lens, unembed
from .path_patching import path_patching, path_patching_config
from .grids import Grid, GridSet, load_result

__all__ = [
    "DEFAULT_COMPONENTS", "CausalTraceResult", "PATCHES", "Patch", "PatchingResult", "SweepFallbackWarning",
    "SweepInterrupted", "SweepRunner", "TraceWarning",
    "activation_patching", "causal_trace", "draw_heatmap", "find_subject_positions", "guess_subject",
    "heatmap", "logit_diff",
    "ActivationCache", "DiskCache", "Grid", "GridSet", "attribution_patching", "cache_to_disk",
    "compare_with_patching", "direct_logit_attribution", "final_norm_and_head", "load_cache", "load_result",
    "logit_lens", "path_patching", "path_patching_config", "rank_correlation", "run_with_cache", "unembed", "logprob",
    "plot_causal_trace", "plot_patching", "probability",
]
