"""Compatibility module: :class:`CausalModel` now lives in the :mod:`vene.causal` package.

``vene.causal_model.CausalModel`` (and ``vene.data_generators.causal_model`` /
``vene.CausalModel``) keep working through this re-export.
"""

from .causal import (  # noqa: F401 - the constants are re-exported too
    DEFAULT_MAX_TRIES,
    EQUIV_CLASS_LIMIT,
    CausalModel,
    CausalModelError,
    SamplingError,
)

__all__ = ["CausalModel", "CausalModelError", "SamplingError"]
