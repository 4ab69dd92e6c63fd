"""pyvene's module path ``pyvene.models.interventions`` (re-exports only), so that
``from pyvene.models.interventions import *`` becomes ``from vene.models.interventions import *``."""
from ..interventions import (
    AdditionIntervention,
    AutoencoderIntervention,
    BasisAgnosticIntervention,
    BoundlessRotatedSpaceIntervention,
    CollectIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    JumpReLUAutoencoderIntervention,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    LoRAIntervention,
    LowRankRotatedSpaceIntervention,
    NoiseIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SharedWeightsTrainableIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    SkipIntervention,
    SourcelessIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from ..interventions import AutoencoderLayer, LowRankRotateLayer, RotateLayer
from ..utils import _do_intervention_by_swap, sigmoid_boundary

__all__ = [
    "AdditionIntervention", "AutoencoderIntervention", "AutoencoderLayer", "BasisAgnosticIntervention",
    "BoundlessRotatedSpaceIntervention", "CollectIntervention", "ConstantSourceIntervention",
    "DistributedRepresentationIntervention", "Intervention", "InterventionOutput",
    "JumpReLUAutoencoderIntervention", "LambdaIntervention", "LocalistRepresentationIntervention",
    "LoRAIntervention", "LowRankRotateLayer", "LowRankRotatedSpaceIntervention", "NoiseIntervention",
    "PCARotatedSpaceIntervention", "RotateLayer", "RotatedSpaceIntervention",
    "SharedWeightsTrainableIntervention", "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
    "SkipIntervention", "SourcelessIntervention", "SubtractionIntervention", "TrainableIntervention",
    "VanillaIntervention", "ZeroIntervention", "_do_intervention_by_swap", "sigmoid_boundary",
]
