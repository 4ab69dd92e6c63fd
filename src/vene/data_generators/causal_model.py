"""Alias of :mod:`vene.causal_model` at pyvene's import path."""
from ..causal_model import CausalModel, CausalModelError, SamplingError

__all__ = ["CausalModel", "CausalModelError", "SamplingError"]
