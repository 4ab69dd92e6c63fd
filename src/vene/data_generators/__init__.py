"""pyvene's module path for ``CausalModel`` (``pv.data_generators.causal_model.CausalModel``)."""
from . import causal_model

__all__ = ["causal_model"]
