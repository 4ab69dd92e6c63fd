"""pyvene's module path ``pyvene.models.gru.modelings_intervenable_gru`` (re-exports only)."""
from .modelings_gru import create_gru, create_gru_classifier, create_gru_lm

__all__ = ["create_gru", "create_gru_classifier", "create_gru_lm"]
