"""pyvene's module path ``pyvene.models.basic_utils`` (re-exports only)."""
from ..locations import GET_LOC
from ..utils import (
    closeness_to_permutation_loss,
    count_parameters,
    create_directory,
    embed_to_distrib,
    format_token,
    get_batch_size,
    get_list_depth,
    get_type_from_string,
    harmonic_sigmoid_boundary,
    lsm,
    random_permutation_matrix,
    set_seed,
    sigmoid_boundary,
    sm,
    top_vals,
)

__all__ = [
    "GET_LOC", "closeness_to_permutation_loss", "count_parameters", "create_directory", "embed_to_distrib",
    "format_token", "get_batch_size", "get_list_depth", "get_type_from_string", "harmonic_sigmoid_boundary",
    "lsm", "random_permutation_matrix", "set_seed", "sigmoid_boundary", "sm", "top_vals",
]
