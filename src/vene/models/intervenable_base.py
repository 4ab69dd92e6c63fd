"""pyvene's module path ``pyvene.models.intervenable_base`` (re-exports only)."""
from ..model import IntervenableModel, IntervenableModelOutput
from ..ndif import IntervenableNdifModel, build_intervenable_model

__all__ = ["IntervenableModel", "IntervenableModelOutput", "IntervenableNdifModel", "build_intervenable_model"]
