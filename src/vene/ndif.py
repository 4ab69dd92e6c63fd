"""pyvene's ``build_intervenable_model`` and ``IntervenableNdifModel``.

``build_intervenable_model(config, model, remote=False)`` returns an
:class:`~vene.backends.nnsight_model.IntervenableNdifModel` for an nnsight model (``nnsight.
LanguageModel`` / ``NNsight``; the ``vene[nnsight]`` extra), which runs the configuration through
nnsight's tracing API -- locally, or on NDIF with ``remote=True`` -- and an
:class:`~vene.IntervenableModel` (vene's hooks) for any other PyTorch module. Importing this module
does not import nnsight.
"""
from __future__ import annotations

from typing import Any

from .backends.nnsight_model import (
    INSTALL_HINT,
    IntervenableNdifModel,
    is_nnsight_model,
)
from .errors import ConfigError
from .model import IntervenableModel

__all__ = ["IntervenableNdifModel", "build_intervenable_model"]


def _is_nnsight_model(model: Any) -> bool:  # kept for code that imported the old private name
    return is_nnsight_model(model)


def build_intervenable_model(config: Any, model: Any, remote: Any = False, **kwargs: Any) -> IntervenableModel:
    """pyvene's builder. An nnsight model gives an :class:`IntervenableNdifModel` (``remote``:
    False runs locally, True on NDIF, ``"local"`` nnsight's local simulation of a remote run, or
    an NDIF host URL); any other model an :class:`IntervenableModel`, for which ``remote`` must be
    False. Other keyword arguments go to the model class."""
    if is_nnsight_model(model):
        return IntervenableNdifModel(config, model, remote=remote, **kwargs)
    if remote:
        raise ConfigError(
            f"remote={remote!r} runs the model on NDIF through nnsight, so it needs an nnsight model, got "
            f"{type(model).__name__}: load it with nnsight.LanguageModel('<repo id>') ({INSTALL_HINT}); "
            "or leave remote=False to run this module locally with vene's hooks."
        )
    return IntervenableModel(config, model, **kwargs)
