"""Samplers of a :class:`~vene.causal.CausalModel`: inputs, interventions, tree-balanced inputs.

Also tabulates the equivalence classes (parent settings grouped by the value
they produce) that drive :meth:`CausalModel.sample_input_tree_balanced`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

from ._state import CausalModelState
from .errors import CausalModelError, SamplingError
from .values import lookup_class, values_equal

__all__ = ["DEFAULT_MAX_TRIES", "EQUIV_CLASS_LIMIT", "SamplingMixin"]


#: Default number of attempts a rejection sampler makes before giving up.
DEFAULT_MAX_TRIES = 10_000

#: Equivalence classes are only tabulated for variables whose parents have at
#: most this many joint settings (larger tables are skipped; samplers then fall
#: back to rejection sampling).
EQUIV_CLASS_LIMIT = 100_000


class _NoEquivClass(Exception):
    """Internal: a variable on the way to the inputs has no equivalence table."""


class SamplingMixin(CausalModelState):
    """Sampling methods of :class:`~vene.causal.CausalModel` (not usable on its own)."""

    # ------------------------------------------------------------------
    # equivalence classes
    # ------------------------------------------------------------------

    def generate_equiv_classes(self, limit: int = EQUIV_CLASS_LIMIT):
        """(Re)compute :attr:`equiv_classes` and return it.

        For every non-input variable without a user-given table, enumerates the
        joint settings of its parents (when there are at most ``limit`` of
        them) and groups them by the value the variable's function produces:
        ``equiv_classes[var][value]`` is the list of parent settings (dicts)
        giving ``value``.  Variables whose table is too large, whose function
        raises on some setting, or whose values are unhashable are left out.
        """
        classes: Dict[Any, dict] = {
            var: table for var, table in self._user_equiv.items() if var in self.values
        }
        for var in self.variables:
            if var in self.inputs or var in classes:
                continue
            table = self._tabulate(var, limit)
            if table is not None:
                classes[var] = table
        self.equiv_classes = classes
        return classes

    def _tabulate(self, var: Any, limit: int) -> Optional[dict]:
        parent_list = self.parents[var]
        parent_values = [self.values[p] for p in parent_list]
        if math.prod(len(vals) for vals in parent_values) > limit:
            return None
        function = self.functions[var]
        try:
            table: dict = {value: [] for value in self.values[var]}
            for combination in itertools.product(*parent_values):
                value = function(*combination)
                table.setdefault(value, []).append(dict(zip(parent_list, combination)))
        except Exception:  # noqa: BLE001 - unhashable values or a failing function
            return None
        return table

    # ------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------

    def sample_input(
        self,
        mandatory=None,
        output_var=None,
        output_var_value=None,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> Dict[Any, Any]:
        """Sample a setting of the input variables, uniformly, under constraints.

        Args:
            mandatory: ``None``; a dict ``{var: value}`` of values the sample
                must have (input variables are fixed directly, others are
                checked on the resulting run); or a predicate called with the
                full setting (pyvene's form).
            output_var / output_var_value: also require ``output_var`` to take
                ``output_var_value`` (the keywords the dataset generators use
                to ask for a source).
            max_tries: rejection-sampling budget.

        Returns:
            ``{input_var: value}`` for every input variable.

        Raises:
            SamplingError: no satisfying input was found in ``max_tries`` draws.
        """
        fixed: Dict[Any, Any] = {}
        checks: List[tuple] = []
        predicate = None
        constraints: List[tuple] = []
        if isinstance(mandatory, Mapping):
            self._check_keys(mandatory, "mandatory")
            constraints.extend(mandatory.items())
        elif callable(mandatory):
            predicate = mandatory
        elif mandatory is not None:
            raise CausalModelError("mandatory must be a dict of fixed values or a predicate")
        if output_var is not None:
            if output_var not in self.values:
                raise CausalModelError(f"unknown output_var {output_var!r}")
            if output_var_value is None:
                raise CausalModelError("output_var_value is required together with output_var")
            constraints.append((output_var, output_var_value))
        for var, value in constraints:
            if var in self.inputs:
                if var in fixed and not values_equal(fixed[var], value):
                    raise SamplingError(f"conflicting required values for input {var!r}")
                fixed[var] = value
            else:
                checks.append((var, value))
        for var in self.inputs:
            if var not in fixed and not self.values[var]:
                raise CausalModelError(f"input variable {var!r} has no values to sample from")

        def draw():
            return {
                var: fixed[var] if var in fixed else random.choice(self.values[var])
                for var in self.inputs
            }

        if not checks and predicate is None:
            return draw()
        for _ in range(max(1, int(max_tries))):
            candidate = draw()
            total = self.run_forward(candidate)
            if all(values_equal(total[var], value) for var, value in checks) and (
                predicate is None or predicate(total)
            ):
                return candidate
        raise SamplingError(
            f"no input satisfying the constraints was found in {max_tries} draws"
            + (f" (wanted {checks!r})" if checks else "")
        )

    def sample_intervention(self, mandatory=None, max_tries: int = DEFAULT_MAX_TRIES) -> Dict[Any, Any]:
        """Sample a random non-empty intervention ``{var: value}``.

        Each intermediate variable (neither an input nor an output) is included
        independently with probability 1/2, with a value drawn uniformly from
        its ``values``; empty draws are repeated.

        Args:
            mandatory: ``None``; a dict ``{var: value}`` always included; or a
                predicate over the intervention dict that must hold.
            max_tries: budget for the predicate / non-emptiness retries.

        Raises:
            CausalModelError: the model has no intermediate variable (and no
                mandatory entries), so no such intervention exists.
            SamplingError: the predicate was never satisfied.
        """
        forced: Dict[Any, Any] = {}
        predicate = None
        if isinstance(mandatory, Mapping):
            self._check_keys(mandatory, "mandatory")
            forced = dict(mandatory)
        elif callable(mandatory):
            predicate = mandatory
        elif mandatory is not None:
            raise CausalModelError("mandatory must be a dict of fixed values or a predicate")
        candidates = [
            var
            for var in self.variables
            if var not in self.inputs
            and var not in self.outputs
            and var not in forced
            and self.values[var]
        ]
        if not candidates and not forced:
            raise CausalModelError(
                "the model has no intermediate variable (neither input nor output) to intervene on"
            )
        for _ in range(max(1, int(max_tries))):
            intervention = {
                var: random.choice(self.values[var]) for var in candidates if random.random() < 0.5
            }
            intervention.update(forced)
            if not intervention:
                continue
            if predicate is not None and not predicate(intervention):
                continue
            return {var: intervention[var] for var in self.variables if var in intervention}
        raise SamplingError(f"no intervention satisfying the predicate was found in {max_tries} draws")

    def sample_input_tree_balanced(
        self,
        output_var=None,
        output_var_value=None,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> Dict[Any, Any]:
        """Sample an input so that ``output_var``'s value is balanced.

        A target value is drawn uniformly from the values of ``output_var`` that
        can occur (unless ``output_var_value`` is given).  An input producing it
        is then built top-down from :attr:`equiv_classes` (pick a parent setting
        producing the target uniformly, recurse into non-input parents, fill the
        remaining inputs uniformly), and checked by running the model.  When a
        variable on the way has no equivalence table, or the top-down draws keep
        conflicting (shared ancestors), inputs are rejection-sampled instead.

        Args:
            output_var: defaults to the model's only output.
            output_var_value: a specific value to produce (``None``: balanced).
            max_tries: attempt budget per target value.

        Raises:
            CausalModelError: ``output_var`` is missing and the model has
                several outputs, or ``output_var_value`` cannot be produced.
            SamplingError: no input producing the target was found.
        """
        if output_var is None:
            if len(self.outputs) != 1:
                raise CausalModelError(
                    f"the model has {len(self.outputs)} outputs {self.outputs!r}; pass output_var"
                )
            output_var = self.outputs[0]
        elif output_var not in self.values:
            raise CausalModelError(f"unknown output_var {output_var!r}")

        if output_var in self.inputs:
            value = output_var_value
            if value is None:
                value = random.choice(self.values[output_var])
            return self.sample_input(mandatory={output_var: value})

        table = self.equiv_classes.get(output_var)
        if output_var_value is not None:
            if table is not None and not lookup_class(table, output_var_value):
                raise CausalModelError(
                    f"{output_var!r} never takes the value {output_var_value!r} "
                    f"(no parent setting produces it)"
                )
            return self._sample_for_value(output_var, output_var_value, max_tries)

        if table is not None:
            candidates = [v for v in self.values[output_var] if lookup_class(table, v)]
            if not candidates:  # values list does not match what the function returns
                candidates = [v for v, settings in table.items() if settings]
        else:
            candidates = list(self.values[output_var])
        while candidates:
            index = random.randrange(len(candidates))
            try:
                return self._sample_for_value(output_var, candidates[index], max_tries)
            except SamplingError:
                candidates.pop(index)  # unreachable in practice: balance over the rest
        raise SamplingError(f"no input producing any value of {output_var!r} was found")

    def _sample_for_value(self, var: Any, value: Any, max_tries: int) -> Dict[Any, Any]:
        tries = max(1, int(max_tries))
        try:
            for _ in range(tries):
                assignment: Dict[Any, Any] = {}
                if not self._assign_from_classes(var, value, assignment):
                    continue
                candidate = {
                    inp: assignment[inp] if inp in assignment else random.choice(self.values[inp])
                    for inp in self.inputs
                }
                if values_equal(self.run_forward(candidate)[var], value):
                    return candidate
        except _NoEquivClass:
            pass
        return self.sample_input(output_var=var, output_var_value=value, max_tries=tries)

    def _assign_from_classes(self, var: Any, value: Any, assignment: Dict[Any, Any]) -> bool:
        table = self.equiv_classes.get(var)
        if table is None:
            raise _NoEquivClass(var)
        options = lookup_class(table, value)
        if not options:
            return False
        for parent, parent_value in random.choice(options).items():
            if parent in self.inputs:
                assignment[parent] = parent_value
            elif not self._assign_from_classes(parent, parent_value, assignment):
                return False
        return True
