"""The :class:`CausalModel` core: construction, validation, timesteps, running, interventions.

Sampling, live paths, datasets and drawing are methods of the same class,
defined in :mod:`.sampling`, :mod:`.paths`, :mod:`.datasets` and
:mod:`.drawing` and mixed in here.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from ..errors import did_you_mean
from .datasets import DatasetsMixin
from .drawing import DrawingMixin
from .errors import CausalModelError
from .paths import PathsMixin
from .sampling import SamplingMixin

__all__ = ["CausalModel"]


def _sorted_names(names: Iterable[Any]) -> List[Any]:
    names = list(names)
    try:
        return sorted(names)
    except TypeError:
        return sorted(names, key=repr)


class CausalModel(SamplingMixin, DatasetsMixin, PathsMixin, DrawingMixin):
    """A finite, deterministic structural causal model over named variables.

    Args:
        variables: names of the variables (any order; the list is not modified).
        values: ``values[var]`` is the list of values ``var`` can take.  It is
            used for sampling, for :meth:`find_live_paths` and to tabulate
            equivalence classes.
        parents: ``parents[var]`` is the list of ``var``'s parents; the order is
            the order in which their values are passed to ``functions[var]``.
        functions: ``functions[var]`` computes ``var`` from its parents' values
            (positionally).  Root variables (inputs) take no argument and
            return a default value, used when a run leaves the input unset.
        timesteps: optional ``{var: int}``; every parent must be strictly
            earlier than its child.  When omitted, inputs are at step 0, every
            other variable one step after its latest parent, and every output
            is moved to the final step (:attr:`end_time`).
        equiv_classes: optional ``{var: {value: [parent_setting, ...]}}``
            listing, for each value of ``var``, the parent settings producing
            it.  Tables not given are computed for every non-input variable
            whose parents have at most :data:`EQUIV_CLASS_LIMIT` joint settings
            (and whose function succeeds on all of them).  They drive
            :meth:`sample_input_tree_balanced`.
        pos: optional ``{var: (x, y)}`` layout for :meth:`print_structure`;
            missing entries get ``(index within its timestep, timestep)``.
        input_function / output_function: optional callables turning a
            setting into the ``input_ids`` / ``labels`` tensors of the
            generated datasets.  Defaults: :meth:`input_to_tensor` /
            :meth:`output_to_tensor`.  (pyvene has no such constructor
            arguments; the ``input_function=`` / ``output_function=`` keyword of
            the ``generate_*_dataset`` methods still overrides these.)

    Attributes:
        variables: variable names sorted by timestep, then by name.  This order
            is a topological order.
        inputs / outputs: variables with no parents / no children, sorted by
            name.  Inputs are concatenated in this order by
            :meth:`input_to_tensor`, outputs by :meth:`output_to_tensor`.
        children, parents, values, functions, timesteps, end_time, pos,
        equiv_classes: as described above (the model's own copies).

    Raises:
        CausalModelError: (a ``ValueError``) naming the offending variable when
            an entry is missing, a parent is unknown, the graph has a cycle, a
            function's arity does not match its parents, or a timestep is not
            later than a parent's.
    """

    def __init__(
        self,
        variables: Sequence[Any],
        values: Mapping[Any, Iterable[Any]],
        parents: Mapping[Any, Iterable[Any]],
        functions: Mapping[Any, Callable],
        timesteps: Optional[Mapping[Any, int]] = None,
        equiv_classes: Optional[Mapping[Any, Mapping[Any, list]]] = None,
        pos: Optional[Mapping[Any, Sequence[float]]] = None,
        input_function: Optional[Callable[[Mapping], torch.Tensor]] = None,
        output_function: Optional[Callable[[Mapping], torch.Tensor]] = None,
    ) -> None:
        variables = list(variables)
        seen = set()
        for var in variables:
            if var in seen:
                raise CausalModelError(f"variable {var!r} is listed more than once")
            seen.add(var)
        for name, table in (("values", values), ("parents", parents), ("functions", functions)):
            if not isinstance(table, Mapping):
                raise CausalModelError(f"`{name}` must be a dict keyed by variable name")
        if input_function is not None and not callable(input_function):
            raise CausalModelError("input_function must be callable")
        if output_function is not None and not callable(output_function):
            raise CausalModelError("output_function must be callable")

        own_values: Dict[Any, list] = {}
        own_parents: Dict[Any, list] = {}
        own_functions: Dict[Any, Callable] = {}
        for var in variables:
            own_values[var] = self._copy_values(var, values)
            own_parents[var] = self._copy_parents(var, parents)
            if var not in functions:
                raise CausalModelError(
                    f"variable {var!r} has no entry in `functions`"
                    + did_you_mean(str(var), [str(k) for k in functions])
                )
            own_functions[var] = functions[var]

        self._auto_timesteps = timesteps is None
        self._user_pos: Dict[Any, tuple] = {}
        if pos is not None:
            for var, xy in pos.items():
                self._user_pos[var] = tuple(xy)
        self._user_equiv: Dict[Any, dict] = {}
        if equiv_classes is not None:
            for var, table in equiv_classes.items():
                self._user_equiv[var] = {value: list(settings) for value, settings in table.items()}
        self.input_function = input_function
        self.output_function = output_function

        self._build(
            variables,
            own_values,
            own_parents,
            own_functions,
            None if timesteps is None else dict(timesteps),
        )

    # ------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------

    @staticmethod
    def _copy_values(var: Any, values: Mapping) -> list:
        if var not in values:
            raise CausalModelError(
                f"variable {var!r} has no entry in `values`"
                + did_you_mean(str(var), [str(k) for k in values])
            )
        vals = values[var]
        if vals is None or isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise CausalModelError(
                f"values[{var!r}] must be a list of possible values, got {type(vals).__name__}"
            )
        return list(vals)

    @staticmethod
    def _copy_parents(var: Any, parents: Mapping) -> list:
        if var not in parents:
            raise CausalModelError(
                f"variable {var!r} has no entry in `parents` (use an empty list for an input)"
            )
        pars = parents[var]
        if pars is None:
            return []
        if isinstance(pars, (str, bytes)) or not isinstance(pars, Iterable):
            raise CausalModelError(
                f"parents[{var!r}] must be a list of variable names, got {pars!r}"
            )
        pars = list(pars)
        if len(set(map(repr, pars))) != len(pars):
            raise CausalModelError(f"parents[{var!r}] lists a parent more than once: {pars!r}")
        return pars

    @staticmethod
    def _check_arity(var: Any, function: Callable, parent_list: list) -> None:
        if not callable(function):
            raise CausalModelError(f"functions[{var!r}] is not callable")
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # builtins without a signature: trust them
            return
        try:
            signature.bind(*([None] * len(parent_list)))
        except TypeError:
            raise CausalModelError(
                f"functions[{var!r}] cannot be called with the values of its "
                f"{len(parent_list)} parent(s) {parent_list!r} (signature {signature})"
            ) from None

    @staticmethod
    def _topological_order(variables: list, parents: Dict, children: Dict) -> list:
        indegree = {var: len(parents[var]) for var in variables}
        ready = [var for var in variables if indegree[var] == 0]
        order = []
        while ready:
            var = ready.pop(0)
            order.append(var)
            for child in children[var]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        if len(order) != len(variables):
            stuck = [var for var in variables if indegree[var] > 0]
            raise CausalModelError(
                f"the causal graph has a cycle through the variables {stuck!r}"
            )
        return order

    def _build(
        self,
        variables: list,
        values: Dict[Any, list],
        parents: Dict[Any, list],
        functions: Dict[Any, Callable],
        timesteps: Optional[Dict[Any, int]],
    ) -> None:
        """Validate and (re)compute every derived attribute, then smoke-test."""
        known = set(variables)
        for var in variables:
            for parent in parents[var]:
                if parent not in known:
                    raise CausalModelError(
                        f"parent {parent!r} of variable {var!r} is not a variable of the model"
                        + did_you_mean(str(parent), [str(v) for v in variables])
                    )

        by_name = _sorted_names(variables)
        children: Dict[Any, list] = {var: [] for var in by_name}
        for var in by_name:
            for parent in parents[var]:
                children[parent].append(var)
        order = self._topological_order(by_name, parents, children)
        for var in by_name:
            self._check_arity(var, functions[var], parents[var])

        inputs = [var for var in by_name if not parents[var]]
        outputs = [var for var in by_name if not children[var]]

        if timesteps is None:
            steps: Dict[Any, int] = {}
            for var in order:
                steps[var] = 1 + max((steps[p] for p in parents[var]), default=-1)
            end_time = max(steps.values(), default=0)
            for var in outputs:
                steps[var] = end_time
        else:
            steps = {}
            for var in by_name:
                if var not in timesteps:
                    raise CausalModelError(f"variable {var!r} has no entry in `timesteps`")
                steps[var] = timesteps[var]
            for var in by_name:
                for parent in parents[var]:
                    if not steps[parent] < steps[var]:
                        raise CausalModelError(
                            f"parent {parent!r} (timestep {steps[parent]}) of variable "
                            f"{var!r} (timestep {steps[var]}) must be at an earlier timestep"
                        )
            end_time = max(steps.values(), default=0)

        ordered = sorted(by_name, key=lambda v: steps[v])  # stable: name order within a step
        children = {var: [c for c in ordered if var in parents[c]] for var in ordered}

        position: Dict[Any, tuple] = {}
        width: Dict[int, int] = defaultdict(int)
        for var in ordered:
            if var in self._user_pos:
                position[var] = self._user_pos[var]
            else:
                position[var] = (width[steps[var]], steps[var])
                width[steps[var]] += 1
        for var, xy in self._user_pos.items():  # keep extra user entries too
            position.setdefault(var, xy)

        self.variables = ordered
        self.values = {var: values[var] for var in ordered}
        self.parents = {var: parents[var] for var in ordered}
        self.functions = {var: functions[var] for var in ordered}
        self.children = children
        self.inputs = inputs
        self.outputs = outputs
        self.timesteps = {var: steps[var] for var in ordered}
        self.end_time = end_time
        self.pos = position
        self._order = [var for var in ordered]  # timesteps are validated: topological

        self.run_forward()  # smoke test: every function runs on the defaults
        self.generate_equiv_classes()


    # ------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------

    def generate_timesteps(self) -> tuple[Dict[Any, int], int]:
        """Return ``(timesteps, end_time)`` computed from the graph alone.

        Inputs are at step 0 and every other variable one step after its
        latest parent; ``end_time`` is the largest step.  (Unlike the
        constructor, outputs are not moved to ``end_time`` here.)
        """
        steps: Dict[Any, int] = {}
        for var in self._order:
            steps[var] = 1 + max((steps[p] for p in self.parents[var]), default=-1)
        return steps, max(steps.values(), default=0)


    def marginalize(self, target):
        """Not implemented (pyvene's version is an empty stub)."""
        raise NotImplementedError("CausalModel.marginalize is not implemented")

    def add_variable(self, variable, values, parents, function, timestep=None, *legacy, children=None):
        """Add a new variable computed from existing ones.

        Args:
            variable: the new name.
            values: list of its possible values.
            parents: list of existing variables it is computed from.
            function: callable taking the parents' values positionally.
            timestep: its timestep.  When the model's timesteps were generated
                automatically and ``timestep`` is None, all timesteps are
                regenerated (so outputs stay at the final step); otherwise it
                defaults to one step after the latest parent.
            children: must be empty / None: making the new variable a parent of
                existing variables would change their functions' arity.

        pyvene's positional order ``add_variable(variable, values, parents,
        children, function[, timestep])`` is also accepted.

        ``inputs``, ``outputs``, ``children``, ``timesteps``, ``end_time``,
        ``pos`` and ``equiv_classes`` are all updated.  On any error the model
        is left unchanged.
        """
        if not callable(function) and callable(timestep) and len(legacy) <= 1:
            # pyvene order: (variable, values, parents, children, function, timestep)
            children, function, timestep = function, timestep, (legacy[0] if legacy else None)
        elif legacy:
            raise TypeError("add_variable() got too many positional arguments")
        if children:
            raise CausalModelError(
                f"cannot add {variable!r} as a parent of existing variables {list(children)!r}; "
                f"build a new CausalModel instead"
            )
        if variable in self.values:
            raise CausalModelError(f"variable {variable!r} already exists")

        new_values = dict(self.values)
        new_values[variable] = self._copy_values(variable, {variable: values})
        new_parents = dict(self.parents)
        new_parents[variable] = self._copy_parents(variable, {variable: parents})
        new_functions = dict(self.functions)
        new_functions[variable] = function
        for parent in new_parents[variable]:
            if parent not in self.values:
                raise CausalModelError(
                    f"parent {parent!r} of new variable {variable!r} is not a variable of the model"
                )

        if self._auto_timesteps and timestep is None:
            new_timesteps = None
        else:
            new_timesteps = dict(self.timesteps)
            if timestep is None:
                timestep = 1 + max((self.timesteps[p] for p in new_parents[variable]), default=-1)
            new_timesteps[variable] = timestep

        snapshot = dict(self.__dict__)
        try:
            self._build(
                list(self.variables) + [variable],
                new_values,
                new_parents,
                new_functions,
                new_timesteps,
            )
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise
        self._auto_timesteps = new_timesteps is None

    # ------------------------------------------------------------------
    # running the model
    # ------------------------------------------------------------------

    def _check_keys(self, setting: Mapping, what: str) -> None:
        if not isinstance(setting, Mapping):
            raise CausalModelError(f"{what} must be a dict of variable -> value, got {type(setting).__name__}")
        for var in setting:
            if var not in self.values:
                raise CausalModelError(
                    f"{what} mentions unknown variable {var!r}"
                    + did_you_mean(str(var), [str(v) for v in self.variables])
                )

    def run_forward(self, intervention: Optional[Mapping] = None) -> Dict[Any, Any]:
        """Run the model and return the full setting ``{var: value}``.

        ``intervention`` fixes variables to the given values (inputs as well as
        intermediate variables); every other variable is computed from its
        parents, inputs that are not given take their function's default.
        The result is ordered like :attr:`variables`.  ``intervention`` is not
        modified.
        """
        if intervention is None:
            intervention = {}
        else:
            self._check_keys(intervention, "intervention")
        setting: Dict[Any, Any] = {}
        for var in self._order:
            if var in intervention:
                setting[var] = intervention[var]
            else:
                setting[var] = self.functions[var](*[setting[p] for p in self.parents[var]])
        return setting

    def run_interchange(self, input: Mapping, source_interventions: Mapping) -> Dict[Any, Any]:
        """Interchange intervention: run ``input`` with variables taken from sources.

        Args:
            input: the base; only its input variables are used (a full setting
                may be passed: its non-input values are recomputed, so they do
                not block the intervention's effect).
            source_interventions: ``{var: source}`` where ``source`` is a setting
                (inputs, or a full/partial setting with fixed values).  ``var``
                takes the value it has in ``run_forward(source)``.

        Returns:
            The full setting of the base run with those values fixed.
        """
        self._check_keys(input, "the base input")
        self._check_keys(source_interventions, "source_interventions")
        fixed = {var: value for var, value in input.items() if var in self.inputs}
        for var, source in source_interventions.items():
            if not isinstance(source, Mapping):
                raise CausalModelError(
                    f"the source for {var!r} must be a setting dict, got {type(source).__name__}"
                )
            fixed[var] = self.run_forward(source)[var]
        return self.run_forward(fixed)

    def _complete(self, setting: Mapping) -> Mapping:
        """A full setting from a full or partial one (missing variables computed)."""
        if all(var in setting for var in self.variables):
            return setting
        return self.run_forward({var: val for var, val in setting.items() if var in self.values})

    # ------------------------------------------------------------------
    # display
    # ------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"CausalModel(variables={self.variables!r}, inputs={self.inputs!r}, "
            f"outputs={self.outputs!r})"
        )
