"""pyvene's module path ``pyvene.models.intervenable_modelcard`` (re-exports only): the mutable
registries users extend to add an architecture."""
from ..components import type_to_dimension_mapping, type_to_module_mapping

__all__ = ["type_to_dimension_mapping", "type_to_module_mapping"]
