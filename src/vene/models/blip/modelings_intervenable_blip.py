"""pyvene's module path ``pyvene.models.blip.modelings_intervenable_blip`` (re-exports only)."""
from ..more_factories import create_blip

__all__ = ["create_blip"]
