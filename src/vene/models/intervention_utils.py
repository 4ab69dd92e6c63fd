"""pyvene's module path ``pyvene.models.intervention_utils`` (re-exports only)."""
from ..utils import _do_intervention_by_swap

__all__ = ["_do_intervention_by_swap"]
