"""vene: interventions on the internal states of PyTorch models (pyvene-compatible).

``import vene as pv`` runs pyvene-style code.
"""
from __future__ import annotations

from . import components, data_generators, models
from .causal_model import CausalModel, CausalModelError, SamplingError
from .components import list_components, type_to_dimension_mapping, type_to_module_mapping
from .config import IntervenableConfig, RepresentationConfig
from .errors import (
    ArtifactNotFoundError,
    ConfigError,
    HookNotFiredError,
    LocationError,
    SerializationError,
    ShapeMismatchError,
    SourceError,
    UnknownComponentError,
    UnknownInterventionTypeError,
    UnsafeArtifactError,
    VeneError,
)
from .interventions import (
    AdditionIntervention,
    BasisAgnosticIntervention,
    CollectIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    NoiseIntervention,
    SharedWeightsTrainableIntervention,
    SkipIntervention,
    SourcelessIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
    get_intervention_class,
    register_intervention,
)
from .interventions import (
    AutoencoderIntervention,
    BoundlessRotatedSpaceIntervention,
    JumpReLUAutoencoderIntervention,
    LoRAIntervention,
    LowRankRotatedSpaceIntervention,
    LowRankRotateLayer,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    RotateLayer,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from .locations import GET_LOC
from .model import IntervenableModel, IntervenableModelOutput
from .models.factories import create_gpt2, create_gpt2_lm, create_gpt_neo, create_gpt_neox, create_llama
from .models import (
    GRUConfig,
    MLPConfig,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
    create_mlp_classifier,
)
from .utils import (
    count_parameters,
    embed_to_distrib,
    format_token,
    get_batch_size,
    get_list_depth,
    lsm,
    set_seed,
    sigmoid_boundary,
    sm,
    top_vals,
)

__version__ = "0.1.0"


def build_intervenable_model(config, model, **kwargs):
    """pyvene's generic builder; vene has one backend, so this is ``IntervenableModel``."""
    return IntervenableModel(config, model, **kwargs)


__all__ = [
    "AutoencoderIntervention", "BoundlessRotatedSpaceIntervention", "JumpReLUAutoencoderIntervention",
    "LoRAIntervention", "LowRankRotateLayer", "LowRankRotatedSpaceIntervention",
    "PCARotatedSpaceIntervention", "RotateLayer", "RotatedSpaceIntervention",
    "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
    "AdditionIntervention", "BasisAgnosticIntervention", "CausalModel", "CausalModelError", "SamplingError", "CollectIntervention", "ConfigError",
    "ConstantSourceIntervention", "DistributedRepresentationIntervention", "GET_LOC", "GRUConfig",
    "HookNotFiredError", "IntervenableConfig", "IntervenableModel", "IntervenableModelOutput",
    "Intervention", "InterventionOutput", "LambdaIntervention", "LocalistRepresentationIntervention",
    "LocationError", "MLPConfig", "NoiseIntervention", "RepresentationConfig",
    "ShapeMismatchError", "SharedWeightsTrainableIntervention", "SkipIntervention",
    "SourceError", "SourcelessIntervention", "SubtractionIntervention", "TrainableIntervention",
    "UnknownComponentError", "UnknownInterventionTypeError", "VanillaIntervention", "VeneError",
    "ArtifactNotFoundError", "SerializationError", "UnsafeArtifactError",
    "ZeroIntervention", "build_intervenable_model", "components", "count_parameters",
    "create_gpt2", "create_gpt2_lm", "create_gpt_neo", "create_gpt_neox", "create_gru", "create_gru_classifier", "create_llama", "create_gru_lm", "create_mlp_classifier",
    "embed_to_distrib", "format_token", "get_batch_size", "get_intervention_class",
    "get_list_depth", "lsm", "models", "register_intervention", "set_seed", "sigmoid_boundary",
    "sm", "top_vals", "type_to_dimension_mapping", "list_components", "type_to_module_mapping",
]
