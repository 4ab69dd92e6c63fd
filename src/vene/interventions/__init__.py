"""Interventions and their registry (name -> class; never import paths read from files)."""
from __future__ import annotations

from typing import Any

from ..errors import UnknownInterventionTypeError, did_you_mean
from .base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    SharedWeightsTrainableIntervention,
    SourcelessIntervention,
    TrainableIntervention,
)
from .basic import (
    AdditionIntervention,
    CollectIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .layers import AutoencoderLayer, LowRankRotateLayer, RotateLayer
from .trainable import (
    AutoencoderIntervention,
    BoundlessRotatedSpaceIntervention,
    JumpReLUAutoencoderIntervention,
    LoRAIntervention,
    LowRankRotatedSpaceIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)

_REGISTRY: dict[str, type] = {}


def register_intervention(cls: type | None = None, *, name: str | None = None) -> Any:
    """Register an intervention class under ``name`` (default: its class name).

    Usable as ``@register_intervention`` or ``@register_intervention(name="my_type")``. Registered
    types can be named in configs and reloaded from saved artifacts.
    """

    def deco(c: type) -> type:
        if not (isinstance(c, type) and issubclass(c, Intervention)):
            raise TypeError(f"{c!r} is not a subclass of vene.Intervention.")
        key = name or c.__name__
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not c and existing.__qualname__ != c.__qualname__:
            raise ValueError(f"An intervention named {key!r} is already registered ({existing!r}).")
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def get_intervention_class(name: str) -> type:
    """Look up a registered intervention class by name (pyvene class-path strings accepted)."""
    short = name
    if name.startswith("<class '") and name.endswith("'>"):
        short = name[len("<class '"):-2]
    short = short.rsplit(".", 1)[-1]
    if short in _REGISTRY:
        return _REGISTRY[short]
    known = sorted(_REGISTRY)
    raise UnknownInterventionTypeError(
        f"Unknown intervention type {name!r}.{did_you_mean(short, known)} Registered: "
        f"{', '.join(known)}. If it is your own class, decorate it with "
        "@vene.register_intervention and import it before loading."
    )


def registered_interventions() -> dict[str, type]:
    return dict(_REGISTRY)


for _cls in (
    VanillaIntervention, AdditionIntervention, SubtractionIntervention, ZeroIntervention,
    CollectIntervention, SkipIntervention, NoiseIntervention, ConstantSourceIntervention,
    SourcelessIntervention,
    RotatedSpaceIntervention, LowRankRotatedSpaceIntervention, BoundlessRotatedSpaceIntervention,
    SigmoidMaskRotatedSpaceIntervention, SigmoidMaskIntervention, PCARotatedSpaceIntervention,
    AutoencoderIntervention, JumpReLUAutoencoderIntervention, LoRAIntervention,
):
    register_intervention(_cls)

__all__ = [
    "AdditionIntervention", "BasisAgnosticIntervention", "CollectIntervention",
    "ConstantSourceIntervention", "DistributedRepresentationIntervention", "Intervention",
    "InterventionOutput", "LambdaIntervention", "LocalistRepresentationIntervention",
    "NoiseIntervention", "SharedWeightsTrainableIntervention", "SkipIntervention",
    "SourcelessIntervention", "SubtractionIntervention", "TrainableIntervention",
    "VanillaIntervention", "ZeroIntervention", "get_intervention_class", "register_intervention",
    "registered_interventions",
    "AutoencoderIntervention", "AutoencoderLayer", "BoundlessRotatedSpaceIntervention",
    "JumpReLUAutoencoderIntervention", "LoRAIntervention", "LowRankRotateLayer",
    "LowRankRotatedSpaceIntervention", "PCARotatedSpaceIntervention", "RotateLayer",
    "RotatedSpaceIntervention", "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
]
