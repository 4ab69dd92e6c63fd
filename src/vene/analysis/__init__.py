"""Analyses built on vene's engine: causal tracing, activation patching, plots.

Functions take a model (TransformerLens ``patching`` style) and return result objects; plots are
matplotlib ``Figure`` s.
"""
from __future__ import annotations

from .causal_trace import CausalTraceResult, causal_trace, find_subject_positions, guess_subject
from .sweep import Patch, SweepRunner

__all__ = ["CausalTraceResult", "Patch", "SweepRunner", "causal_trace", "find_subject_positions", "guess_subject"]
