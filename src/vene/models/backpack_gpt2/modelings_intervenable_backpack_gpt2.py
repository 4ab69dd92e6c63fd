"""pyvene's module path ``pyvene.models.backpack_gpt2.modelings_intervenable_backpack_gpt2`` (re-exports only)."""
from ..more_factories import create_backpack_gpt2

__all__ = ["create_backpack_gpt2"]
