"""pyvene's module path ``pyvene.models.llama.modelings_intervenable_llama`` (re-exports only)."""
from ..factories import create_llama

__all__ = ["create_llama"]
