"""pyvene's module path ``pyvene.models.olmo.modelings_intervenable_olmo`` (re-exports only)."""
from ..more_factories import create_olmo

__all__ = ["create_olmo"]
