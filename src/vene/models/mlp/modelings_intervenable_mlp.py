"""pyvene's module path ``pyvene.models.mlp.modelings_intervenable_mlp`` (re-exports only)."""
from .modelings_mlp import create_mlp_classifier

__all__ = ["create_mlp_classifier"]
