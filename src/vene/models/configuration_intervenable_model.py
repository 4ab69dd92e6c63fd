"""pyvene's module path ``pyvene.models.configuration_intervenable_model`` (re-exports only)."""
from ..config import IntervenableConfig, RepresentationConfig

__all__ = ["IntervenableConfig", "RepresentationConfig"]
