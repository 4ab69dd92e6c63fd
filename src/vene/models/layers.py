"""pyvene's module path ``pyvene.models.layers`` (re-exports only)."""
from ..interventions import AutoencoderLayer, LowRankRotateLayer, RotateLayer

__all__ = ["AutoencoderLayer", "LowRankRotateLayer", "RotateLayer"]
