"""What the :class:`~vene.causal.CausalModel` mixins may use of the model (for type checkers).

The mixins (sampling, datasets, paths, drawing) are only ever used as bases of
``CausalModel``, which sets these attributes in ``_build`` and defines these
methods. Declaring them here lets each mixin be checked on its own; at run time
the class holds nothing (bare annotations create no attributes, and the method
declarations exist for type checkers only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

__all__ = ["CausalModelState"]


class CausalModelState:
    variables: List[Any]
    values: Dict[Any, list]
    parents: Dict[Any, list]
    children: Dict[Any, list]
    functions: Dict[Any, Callable[..., Any]]
    inputs: List[Any]
    outputs: List[Any]
    timesteps: Dict[Any, int]
    end_time: int
    pos: Dict[Any, tuple]
    _user_equiv: Dict[Any, dict]
    input_function: Optional[Callable[[Mapping], Any]]
    output_function: Optional[Callable[[Mapping], Any]]

    if TYPE_CHECKING:
        def _check_keys(self, setting: Mapping, what: str) -> None: ...

        def _complete(self, setting: Mapping) -> Mapping: ...

        def run_forward(self, intervention: Optional[Mapping] = None) -> Dict[Any, Any]: ...

        def run_interchange(self, input: Mapping, source_interventions: Mapping) -> Dict[Any, Any]: ...

        def sample_input(self, mandatory: Any = None, output_var: Any = None, output_var_value: Any = None,
                         max_tries: int = ...) -> Dict[Any, Any]: ...

        def sample_intervention(self, mandatory: Any = None, max_tries: int = ...) -> Dict[Any, Any]: ...
