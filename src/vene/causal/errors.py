"""Exceptions raised by :class:`vene.causal.CausalModel`."""

from __future__ import annotations

from ..errors import VeneError

__all__ = ["CausalModelError", "SamplingError"]


class CausalModelError(VeneError, ValueError):
    """A causal model (or an argument given to one of its methods) is malformed."""


class SamplingError(VeneError, RuntimeError):
    """A sampler could not find a setting satisfying its constraints."""
