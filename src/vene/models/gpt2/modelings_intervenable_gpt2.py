"""pyvene's module path ``pyvene.models.gpt2.modelings_intervenable_gpt2`` (re-exports only)."""
from ..factories import create_gpt2, create_gpt2_lm

__all__ = ["create_gpt2", "create_gpt2_lm"]
