"""pyvene's module path ``pyvene.models.gpt_neox.modelings_intervenable_gpt_neox`` (re-exports only)."""
from ..factories import create_gpt_neox

__all__ = ["create_gpt_neox"]
