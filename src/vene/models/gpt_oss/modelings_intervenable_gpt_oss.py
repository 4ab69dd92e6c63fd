"""pyvene's module path ``pyvene.models.gpt_oss.modelings_intervenable_gpt_oss`` (re-exports only)."""
from ..more_factories import create_gpt_oss

__all__ = ["create_gpt_oss"]
