"""Built-in small models (MLP, GRU), the embedded real model loader, and pyvene's module paths.

pyvene's modules (``pyvene.models.interventions``, ``.intervenable_base``,
``.configuration_intervenable_model``, ``.basic_utils``, ``.intervention_utils``, ``.layers``,
``.intervenable_modelcard``, ``.constants``, ``.mlp.modelings_mlp``, ``.gru.modelings_gru``,
``.<arch>.modelings_intervenable_<arch>``) exist here under the same names as thin re-exports of
vene's own modules; they load on first access (``vene.models.interventions`` works without an
import statement, as in pyvene).
"""
import importlib as _importlib

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

_PYVENE_MODULES = {
    "basic_utils", "configuration_intervenable_model", "intervenable_base", "intervenable_modelcard",
    "intervention_utils", "interventions", "layers", "more_factories", "factories", "embedded",
    "gpt2", "llama", "gpt_neo", "gpt_neox", "olmo", "gpt_oss", "llava", "blip", "backpack_gpt2",
}


def __getattr__(name: str):
    if name in _PYVENE_MODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
