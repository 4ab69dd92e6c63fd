"""Live paths of a :class:`~vene.causal.CausalModel` and the setting filters built on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional

from ._state import CausalModelState
from .errors import CausalModelError
from .values import values_equal

__all__ = ["PathsMixin"]


class PathsMixin(CausalModelState):
    """Live-path methods of :class:`~vene.causal.CausalModel` (not usable on its own)."""

    def find_live_paths(self, intervention: Optional[Mapping] = None) -> Dict[int, List[list]]:
        """Directed paths along which changes propagate, grouped by length.

        Runs the model under ``intervention`` (usually an input setting).  An
        edge ``parent -> child`` is *live* when ``child`` is not fixed by the
        intervention and some other value of ``parent`` (from its ``values``)
        changes ``child``'s function output while ``child``'s other parents keep
        their actual values.  A path is live when all its edges are.

        Returns:
            ``{n: [path, ...]}`` where each path is a list of ``n`` variable
            names, for ``n = 2, 3, ...`` up to and including the first length
            with no live path (whose list is empty), as pyvene does.  Paths may
            start and end anywhere; select e.g. input-to-output ones with
            ``path[0] in model.inputs and path[-1] in model.outputs``.
        """
        intervention = dict(intervention or {})
        actual = self.run_forward(intervention)
        cache: Dict[tuple, bool] = {}

        def live(parent, child) -> bool:
            key = (repr(parent), repr(child))
            if key not in cache:
                cache[key] = self._edge_is_live(parent, child, actual, intervention)
            return cache[key]

        paths: Dict[int, List[list]] = {}
        frontier = [[var] for var in self.variables]
        length = 2
        while True:
            extended = [
                path + [child]
                for path in frontier
                for child in self.children[path[-1]]
                if live(path[-1], child)
            ]
            paths[length] = extended
            if not extended:
                break
            frontier = extended
            length += 1
        return paths

    def _edge_is_live(self, parent, child, actual: Mapping, intervention: Mapping) -> bool:
        if child in intervention:
            return False
        parent_list = self.parents[child]
        for alternative in self.values[parent]:
            if values_equal(alternative, actual[parent]):
                continue
            args = [alternative if p == parent else actual[p] for p in parent_list]
            if not values_equal(self.functions[child](*args), actual[child]):
                return True
        return False

    def _input_part(self, setting: Mapping) -> Dict[Any, Any]:
        return {var: setting[var] for var in self.inputs if var in setting}

    def get_path_maxlen_filter(self, lengths: Iterable[int]) -> Callable[[Mapping], bool]:
        """Predicate: the longest live path from the setting's inputs has a length in ``lengths``.

        Lengths count variables (an edge is length 2); 0 when there is no live
        path.  The predicate takes a full setting or an input setting.
        """
        allowed = set(lengths)

        def check(setting: Mapping) -> bool:
            paths = self.find_live_paths(self._input_part(setting))
            longest = max((n for n, found in paths.items() if found), default=0)
            return longest in allowed

        return check

    def get_partial_filter(self, partial_setting: Mapping) -> Callable[[Mapping], bool]:
        """Predicate: the setting agrees with ``partial_setting`` on its variables.

        The predicate accepts a full setting or an input setting (missing
        variables are computed by running the model).
        """
        self._check_keys(partial_setting, "partial_setting")
        expected = dict(partial_setting)

        def compare(setting: Mapping) -> bool:
            full = self._complete(setting)
            return all(values_equal(full[var], value) for var, value in expected.items())

        return compare

    def get_specific_path_filter(self, start, end) -> Callable[[Mapping], bool]:
        """Predicate: some live path (from the setting's inputs) goes from ``start`` to ``end``."""
        for var in (start, end):
            if var not in self.values:
                raise CausalModelError(f"unknown variable {var!r}")

        def check(setting: Mapping) -> bool:
            paths = self.find_live_paths(self._input_part(setting))
            return any(
                path[0] == start and path[-1] == end for found in paths.values() for path in found
            )

        return check
