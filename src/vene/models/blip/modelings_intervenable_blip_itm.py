"""pyvene's module path ``pyvene.models.blip.modelings_intervenable_blip_itm`` (re-exports only)."""
from ..more_factories import create_blip_itm

__all__ = ["create_blip_itm"]
