"""pyvene's module path ``pyvene.models.gpt_neo.modelings_intervenable_gpt_neo`` (re-exports only)."""
from ..factories import create_gpt_neo

__all__ = ["create_gpt_neo"]
