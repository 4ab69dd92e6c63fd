"""pyvene's ``build_intervenable_model`` and ``IntervenableNdifModel`` names.

vene runs interventions on local PyTorch models only; it has no NDIF (nnsight remote execution)
backend. The names exist so that pyvene code imports, and using the NDIF path raises an error that
says so.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ConfigError
from .model import IntervenableModel

_NO_NDIF = (
    "vene has no NDIF (nnsight remote execution) backend: it intervenes on local PyTorch models. "
    "Load the model locally (e.g. transformers' AutoModelForCausalLM.from_pretrained) and wrap it "
    "with vene.IntervenableModel(config, model)."
)


def _is_nnsight_model(model: Any) -> bool:
    return any(c.__module__.split(".")[0] == "nnsight" for c in type(model).__mro__)


class IntervenableNdifModel(IntervenableModel):
    """pyvene's NDIF-backed wrapper; constructing it raises :class:`vene.ConfigError` (no NDIF backend)."""

    def __init__(self, config: Any, model: nn.Module, **kwargs: Any) -> None:
        raise ConfigError(_NO_NDIF)


def build_intervenable_model(config: Any, model: Any, **kwargs: Any) -> IntervenableModel:
    """pyvene's builder: an :class:`IntervenableModel` for a local model. An nnsight model (pyvene's
    NDIF path) raises :class:`vene.ConfigError`, as does a model that is not an ``nn.Module``."""
    if _is_nnsight_model(model):
        raise ConfigError(_NO_NDIF)
    return IntervenableModel(config, model, **kwargs)
