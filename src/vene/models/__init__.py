"""Built-in small models (MLP, GRU) and the embedded real model loader."""
from . import constants
from .gru import (
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
)
from .mlp import MLPConfig, MLPForClassification, MLPModel, create_mlp_classifier

__all__ = [
    "GRUConfig", "GRUForClassification", "GRULMHeadModel", "GRUModel", "MLPConfig",
    "MLPForClassification", "MLPModel", "constants", "create_gru", "create_gru_classifier",
    "create_gru_lm", "create_mlp_classifier",
]
