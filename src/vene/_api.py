"""The public API of vene, loaded by ``vene/__init__.py`` on first use of any name.

Add public names here (imports and ``__all__``); ``import vene as pv`` exposes every public name
of this module.
"""
from __future__ import annotations

from . import components, data_generators, models
from .calls import Call, CallFallbackWarning, CallsResult, run_calls
from .resume import ResumeFallbackWarning
from .causal_model import CausalModel, CausalModelError, SamplingError
from .components import list_components, type_to_dimension_mapping, type_to_module_mapping
from .config import IntervenableConfig, RepresentationConfig
from .errors import (
    ArtifactNotFoundError,
    ConfigError,
    CorruptArtifactError,
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
from .models.more_factories import (
    create_backpack_gpt2,
    create_blip,
    create_blip_itm,
    create_gpt_oss,
    create_llava,
    create_olmo,
)
from .ndif import IntervenableNdifModel, build_intervenable_model
from .models import (
    GRUConfig,
    MLPConfig,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
    create_mlp_classifier,
)
from .utils import (
    _do_intervention_by_swap,
    closeness_to_permutation_loss,
    count_parameters,
    create_directory,
    get_type_from_string,
    harmonic_sigmoid_boundary,
    random_permutation_matrix,
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

from .placement import placement_report
from .training.trainer import TrainingModule, collate_interventions

from . import __version__  # noqa: F401  (one source: vene/__init__.py)


__all__ = [
    "AutoencoderIntervention", "BoundlessRotatedSpaceIntervention", "JumpReLUAutoencoderIntervention",
    "LoRAIntervention", "LowRankRotateLayer", "LowRankRotatedSpaceIntervention",
    "PCARotatedSpaceIntervention", "RotateLayer", "RotatedSpaceIntervention",
    "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
    "AdditionIntervention", "BasisAgnosticIntervention", "CausalModel", "CausalModelError", "SamplingError",
    "CollectIntervention", "ConfigError",
    "ConstantSourceIntervention", "DistributedRepresentationIntervention", "GET_LOC", "GRUConfig",
    "HookNotFiredError", "IntervenableConfig", "IntervenableModel", "IntervenableModelOutput",
    "Intervention", "InterventionOutput", "LambdaIntervention", "LocalistRepresentationIntervention",
    "LocationError", "MLPConfig", "NoiseIntervention", "RepresentationConfig",
    "ShapeMismatchError", "SharedWeightsTrainableIntervention", "SkipIntervention",
    "SourceError", "SourcelessIntervention", "SubtractionIntervention", "TrainableIntervention",
    "UnknownComponentError", "UnknownInterventionTypeError", "VanillaIntervention", "VeneError",
    "ArtifactNotFoundError", "CorruptArtifactError", "SerializationError", "UnsafeArtifactError",
    "ZeroIntervention", "build_intervenable_model", "components", "count_parameters",
    "create_gpt2", "create_gpt2_lm", "create_gpt_neo", "create_gpt_neox", "create_gru", "create_gru_classifier",
    "create_llama", "create_gru_lm", "create_mlp_classifier",
    "embed_to_distrib", "format_token", "get_batch_size", "get_intervention_class",
    "get_list_depth", "lsm", "models", "register_intervention", "set_seed", "sigmoid_boundary",
    "sm", "top_vals", "type_to_dimension_mapping", "list_components", "type_to_module_mapping",
    "IntervenableNdifModel", "_do_intervention_by_swap", "closeness_to_permutation_loss", "create_backpack_gpt2",
    "create_blip", "create_blip_itm", "create_directory", "create_gpt_oss", "create_llava", "create_olmo",
    "get_type_from_string", "harmonic_sigmoid_boundary", "random_permutation_matrix", "data_generators",
    "TrainingModule", "collate_interventions", "placement_report",
    "Call", "CallFallbackWarning", "CallsResult", "run_calls", "ResumeFallbackWarning",
]
