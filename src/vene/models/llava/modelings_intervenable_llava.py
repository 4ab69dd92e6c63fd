"""pyvene's module path ``pyvene.models.llava.modelings_intervenable_llava`` (re-exports only)."""
from ..more_factories import create_llava

__all__ = ["create_llava"]
