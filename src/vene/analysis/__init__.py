"""Analyses built on vene's engine: causal tracing, activation patching, plots.

Functions take a model (TransformerLens ``patching`` style) and return result objects whose
``plot()`` gives a matplotlib ``Figure``. Sweeps record the clean run once, pack many
restorations into few batched passes, resume each restoration from the cached corrupted state at
its layer and compute the output head on the last position only (see :mod:`vene.analysis.sweep`).
"""
from __future__ import annotations

from .causal_trace import (
    DEFAULT_COMPONENTS,
    CausalTraceResult,
    causal_trace,
    find_subject_positions,
    guess_subject,
)
from .patching import PatchingResult, activation_patching, logit_diff, logprob, probability
from .plotting import draw_heatmap, heatmap, plot_causal_trace, plot_patching
from .cells import PATCHES, Patch
from .sweep import SweepFallbackWarning, SweepRunner

__all__ = [
    "DEFAULT_COMPONENTS", "CausalTraceResult", "PATCHES", "Patch", "PatchingResult", "SweepFallbackWarning", "SweepRunner",
    "activation_patching", "causal_trace", "draw_heatmap", "find_subject_positions", "guess_subject",
    "heatmap", "logit_diff", "logprob", "plot_causal_trace", "plot_patching", "probability",
]
