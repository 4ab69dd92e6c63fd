"""Finite structural causal models and the datasets built from them.

:class:`CausalModel` describes a *high-level* causal model: a directed acyclic
graph of named variables, each with a finite list of possible values and a
function computing it from its parents.  It is the object used in
distributed-alignment-search (DAS) style experiments: the model is run
forwards, interchange interventions are computed on it (the value a variable
takes on a *source* input is written into the run on a *base* input), and
datasets of ``(base, sources, counterfactual label)`` examples are generated to
train and evaluate interventions on a neural network.

The API follows ``pyvene.data_generators.causal_model.CausalModel`` (same
constructor arguments, method names, and dataset layout) with its known
problems fixed:

* the caller's ``variables`` list (and every other argument) is never mutated;
  the model keeps its own copies;
* ``pos`` has no shared mutable default;
* :meth:`CausalModel.run_forward` evaluates in a real topological order;
* :meth:`CausalModel.run_interchange` recomputes every non-intervened variable
  even when the base is given as a full setting;
* :meth:`CausalModel.add_variable` keeps ``inputs``, ``outputs``,
  ``children``, ``timesteps``, ``pos`` and ``equiv_classes`` consistent;
* :meth:`CausalModel.generate_counterfactual_dataset` works with its default
  sampler, and returns exactly ``size`` examples;
* samplers have bounded retries and raise a clear error instead of looping
  forever;
* drawing does not require ``networkx`` (``matplotlib`` is used when installed,
  a text rendering otherwise).
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from .errors import VeneError, did_you_mean

__all__ = ["CausalModel", "CausalModelError", "SamplingError"]


#: Default number of attempts a rejection sampler makes before giving up.
DEFAULT_MAX_TRIES = 10_000

#: Equivalence classes are only tabulated for variables whose parents have at
#: most this many joint settings (larger tables are skipped; samplers then fall
#: back to rejection sampling).
EQUIV_CLASS_LIMIT = 100_000


class CausalModelError(VeneError, ValueError):
    """A causal model (or an argument given to one of its methods) is malformed."""


class SamplingError(VeneError, RuntimeError):
    """A sampler could not find a setting satisfying its constraints."""


class _NoEquivClass(Exception):
    """Internal: a variable on the way to the inputs has no equivalence table."""


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _values_equal(a: Any, b: Any) -> bool:
    """Equality that also works for tensors / arrays / nested containers."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        except (TypeError, ValueError, RuntimeError):
            return False
        if ta.shape != tb.shape:
            return False
        return bool((ta.detach().cpu() == tb.detach().cpu()).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    try:
        result = a == b
    except Exception:  # noqa: BLE001 - exotic types whose == raises
        return False
    if isinstance(result, bool):
        return result
    shape_a, shape_b = getattr(a, "shape", None), getattr(b, "shape", None)
    if shape_a is not None and shape_b is not None and tuple(shape_a) != tuple(shape_b):
        return False
    if hasattr(result, "all"):
        try:
            return bool(result.all())
        except Exception:  # noqa: BLE001
            return False
    try:
        return bool(result)
    except Exception:  # noqa: BLE001
        return False


def _sorted_names(names: Iterable[Any]) -> List[Any]:
    names = list(names)
    try:
        return sorted(names)
    except TypeError:
        return sorted(names, key=repr)


def _to_flat_tensor(value: Any, var: Any) -> torch.Tensor:
    """Convert a variable's value into a flat float32 CPU tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    try:
        return torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(value, (list, tuple)):
            parts = [_to_flat_tensor(item, var) for item in value]
            if not parts:
                return torch.zeros(0)
            return torch.cat(parts)
        raise TypeError(
            f"cannot convert the value of variable {var!r} ({type(value).__name__}: "
            f"{value!r}) to a float tensor; give the model an input_function / "
            f"output_function that encodes it"
        ) from exc


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _accepts_target_kwargs(fn: Callable) -> bool:
    """True when ``fn`` can be called as ``fn(output_var=..., output_var_value=...)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {"output_var", "output_var_value"} <= names


def _lookup_class(table: Mapping, value: Any) -> Optional[list]:
    """``table[value]`` for an equivalence table, tolerating unhashable values."""
    try:
        if value in table:
            return table[value]
    except TypeError:
        pass
    for key, settings in table.items():
        if _values_equal(key, value):
            return settings
    return None


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class CausalModel:
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

    def generate_timesteps(self):
        """Return ``(timesteps, end_time)`` computed from the graph alone.

        Inputs are at step 0 and every other variable one step after its
        latest parent; ``end_time`` is the largest step.  (Unlike the
        constructor, outputs are not moved to ``end_time`` here.)
        """
        steps: Dict[Any, int] = {}
        for var in self._order:
            steps[var] = 1 + max((steps[p] for p in self.parents[var]), default=-1)
        return steps, max(steps.values(), default=0)

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
                if var in fixed and not _values_equal(fixed[var], value):
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
            if all(_values_equal(total[var], value) for var, value in checks) and (
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
            if table is not None and not _lookup_class(table, output_var_value):
                raise CausalModelError(
                    f"{output_var!r} never takes the value {output_var_value!r} "
                    f"(no parent setting produces it)"
                )
            return self._sample_for_value(output_var, output_var_value, max_tries)

        if table is not None:
            candidates = [v for v in self.values[output_var] if _lookup_class(table, v)]
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
                if _values_equal(self.run_forward(candidate)[var], value):
                    return candidate
        except _NoEquivClass:
            pass
        return self.sample_input(output_var=var, output_var_value=value, max_tries=tries)

    def _assign_from_classes(self, var: Any, value: Any, assignment: Dict[Any, Any]) -> bool:
        table = self.equiv_classes.get(var)
        if table is None:
            raise _NoEquivClass(var)
        options = _lookup_class(table, value)
        if not options:
            return False
        for parent, parent_value in random.choice(options).items():
            if parent in self.inputs:
                assignment[parent] = parent_value
            elif not self._assign_from_classes(parent, parent_value, assignment):
                return False
        return True

    # ------------------------------------------------------------------
    # live paths and filters
    # ------------------------------------------------------------------

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
            if _values_equal(alternative, actual[parent]):
                continue
            args = [alternative if p == parent else actual[p] for p in parent_list]
            if not _values_equal(self.functions[child](*args), actual[child]):
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
            return all(_values_equal(full[var], value) for var, value in expected.items())

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

    # ------------------------------------------------------------------
    # tensors and datasets
    # ------------------------------------------------------------------

    def input_to_tensor(self, setting: Mapping) -> torch.Tensor:
        """Concatenate the input variables' values (in :attr:`inputs` order) into a flat float tensor.

        Values may be numbers, booleans, (nested) lists, numpy arrays or tensors.
        """
        parts = []
        for var in self.inputs:
            if var not in setting:
                raise KeyError(f"the setting has no value for input variable {var!r}")
            parts.append(_to_flat_tensor(setting[var], var))
        return torch.cat(parts) if parts else torch.zeros(0)

    def output_to_tensor(self, setting: Mapping) -> torch.Tensor:
        """Concatenate the output variables' values (in :attr:`outputs` order) into a flat float tensor.

        An input setting is completed by running the model first.
        """
        full = self._complete(setting)
        parts = [_to_flat_tensor(full[var], var) for var in self.outputs]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _encoders(self, input_function, output_function):
        in_fn = input_function or self.input_function or self.input_to_tensor
        out_fn = output_function or self.output_function or self.output_to_tensor
        return (lambda s: _as_tensor(in_fn(s))), (lambda s: _as_tensor(out_fn(s)))

    def generate_factual_dataset(
        self,
        size: int,
        sampler: Optional[Callable[[], Mapping]] = None,
        filter: Optional[Callable[[Mapping], bool]] = None,
        device="cpu",
        input_function: Optional[Callable] = None,
        output_function: Optional[Callable] = None,
        return_tensors: bool = True,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> List[Dict[str, Any]]:
        """Generate ``size`` examples ``{"input_ids": ..., "labels": ...}``.

        Args:
            size: number of examples.
            sampler: zero-argument callable returning an input setting
                (default :meth:`sample_input`).
            filter: predicate over the sampled input; rejected samples are
                redrawn (at most ``max_tries`` rejections in a row).
            device: device of the returned tensors.
            input_function / output_function: encoders overriding the model's
                (see the constructor) for this call.
            return_tensors: when False, ``input_ids`` is the input setting and
                ``labels`` the full setting of the run.
        """
        size = int(size)
        if size < 0:
            raise CausalModelError("size must be non-negative")
        sampler = sampler or self.sample_input
        encode_in, encode_out = self._encoders(input_function, output_function)
        examples: List[Dict[str, Any]] = []
        rejected = 0
        while len(examples) < size:
            base = sampler()
            if filter is not None and not filter(base):
                rejected += 1
                if rejected > max_tries:
                    raise SamplingError(f"the filter rejected {max_tries} samples in a row")
                continue
            rejected = 0
            setting = self.run_forward(base)
            if return_tensors:
                examples.append(
                    {
                        "input_ids": encode_in(base).to(device),
                        "labels": encode_out(setting).to(device),
                    }
                )
            else:
                examples.append({"input_ids": base, "labels": setting})
        return examples

    def _sample_source(self, sampler: Callable, var: Any, value: Any, max_tries: int) -> Mapping:
        if _accepts_target_kwargs(sampler):
            return sampler(output_var=var, output_var_value=value)
        for _ in range(max(1, int(max_tries))):
            source = sampler()
            if _values_equal(self.run_forward(source)[var], value):
                return source
        raise SamplingError(
            f"the sampler produced no source with {var!r} = {value!r} in {max_tries} draws; "
            f"give a sampler accepting output_var= / output_var_value="
        )

    def generate_counterfactual_dataset(
        self,
        size: int,
        intervention_id,
        batch_size: int,
        sampler: Optional[Callable] = None,
        intervention_sampler: Optional[Callable[[], Mapping]] = None,
        filter: Optional[Callable[[Mapping], bool]] = None,
        device="cpu",
        input_function: Optional[Callable] = None,
        output_function: Optional[Callable] = None,
        return_tensors: bool = True,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> List[Dict[str, Any]]:
        """Generate ``size`` interchange-intervention examples.

        For each batch of ``batch_size`` consecutive examples one intervention
        is drawn from ``intervention_sampler`` (so a batch shares its
        intervention id, as a DAS training loop expects); the last batch is
        truncated so that exactly ``size`` examples are returned.  For each
        example a base input is drawn from ``sampler()`` and, for each
        intervened variable in :attr:`variables` order, a source:

        * if the intervention maps the variable to a dict, that dict *is* the
          source setting;
        * otherwise it maps it to a value, and a source in which the variable
          takes that value is drawn with
          ``sampler(output_var=var, output_var_value=value)`` when the sampler
          accepts those keywords (:meth:`sample_input` and
          :meth:`sample_input_tree_balanced` do), else by rejection from
          ``sampler()``.

        Args:
            size: number of examples.
            intervention_id: callable mapping the intervention dict to an int
                id (an int is used as a constant id).
            batch_size: examples per intervention draw.
            sampler: input sampler (default :meth:`sample_input`).
            intervention_sampler: zero-argument callable returning a non-empty
                intervention (default :meth:`sample_intervention`: a random
                non-empty subset of intermediate variables with random values).
            filter: predicate over the intervention; rejected ones are redrawn.
            device, input_function, output_function: as in
                :meth:`generate_factual_dataset`.
            return_tensors: when False the example holds settings instead of
                tensors (``source_input_ids`` is then a list of source dicts
                padded with ``{}``, ``intervention_id`` a one-element list).

        Returns:
            A list of dicts with keys ``"input_ids"`` (base input tensor),
            ``"source_input_ids"`` (sources stacked in variable order and
            zero-padded up to the number of intermediate variables: shape
            ``(max(n_intermediate, n_sources), input_dim)``), ``"labels"``
            (output after the interchange), ``"base_labels"`` (output of the
            base run) and ``"intervention_id"`` (shape ``(1,)``).
        """
        size = int(size)
        batch_size = int(batch_size)
        if size < 0:
            raise CausalModelError("size must be non-negative")
        if batch_size < 1:
            raise CausalModelError("batch_size must be at least 1")
        sampler = sampler or self.sample_input
        intervention_sampler = intervention_sampler or self.sample_intervention
        if callable(intervention_id):
            get_id = intervention_id
        else:
            constant_id = intervention_id
            get_id = lambda _intervention: constant_id  # noqa: E731
        encode_in, encode_out = self._encoders(input_function, output_function)
        n_slots = sum(1 for v in self.variables if v not in self.inputs and v not in self.outputs)

        examples: List[Dict[str, Any]] = []
        rejected = 0
        while len(examples) < size:
            intervention = intervention_sampler()
            if not isinstance(intervention, Mapping) or not intervention:
                raise CausalModelError(
                    f"intervention_sampler must return a non-empty dict, got {intervention!r}"
                )
            self._check_keys(intervention, "the sampled intervention")
            if filter is not None and not filter(intervention):
                rejected += 1
                if rejected > max_tries:
                    raise SamplingError(f"the filter rejected {max_tries} interventions in a row")
                continue
            rejected = 0
            id_value = get_id(intervention)
            for _ in range(min(batch_size, size - len(examples))):
                base = sampler()
                source_settings: Dict[Any, Mapping] = {}
                for var in self.variables:
                    if var not in intervention:
                        continue
                    spec = intervention[var]
                    if isinstance(spec, Mapping):
                        source_settings[var] = dict(spec)
                    else:
                        source_settings[var] = self._sample_source(sampler, var, spec, max_tries)
                sources = list(source_settings.values())
                counterfactual = self.run_interchange(base, source_settings)
                factual = self.run_forward(base)
                if return_tensors:
                    base_tensor = encode_in(base)
                    source_tensors = [encode_in(source) for source in sources]
                    source_tensors += [torch.zeros_like(base_tensor)] * (n_slots - len(sources))
                    examples.append(
                        {
                            "input_ids": base_tensor.to(device),
                            "source_input_ids": torch.stack(source_tensors).to(device),
                            "labels": encode_out(counterfactual).to(device),
                            "base_labels": encode_out(factual).to(device),
                            "intervention_id": torch.tensor([id_value]).to(device),
                        }
                    )
                else:
                    examples.append(
                        {
                            "input_ids": base,
                            "source_input_ids": sources + [{} for _ in range(n_slots - len(sources))],
                            "labels": counterfactual,
                            "base_labels": factual,
                            "intervention_id": [id_value],
                        }
                    )
        return examples

    # ------------------------------------------------------------------
    # display
    # ------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"CausalModel(variables={self.variables!r}, inputs={self.inputs!r}, "
            f"outputs={self.outputs!r})"
        )

    def _text_rendering(self, labels: Mapping[Any, str]) -> str:
        lines = [
            f"CausalModel: {len(self.variables)} variables, timesteps "
            f"{min(self.timesteps.values(), default=0)}..{self.end_time}"
        ]
        by_step: Dict[int, list] = defaultdict(list)
        for var in self.variables:
            by_step[self.timesteps[var]].append(var)
        for step in sorted(by_step):
            entries = []
            for var in by_step[step]:
                entry = labels[var]
                if self.parents[var]:
                    entry += " <- (" + ", ".join(str(p) for p in self.parents[var]) + ")"
                entries.append(entry)
            lines.append(f"  t={step}: " + "; ".join(entries))
        return "\n".join(lines)

    def _draw(self, labels: Mapping[Any, str], pos, ax, show, as_text, figsize):
        text = self._text_rendering(labels)
        plt = None
        if not as_text:
            try:
                from matplotlib.figure import Figure

                if show:
                    import matplotlib.pyplot as plt
            except ImportError:
                as_text = True
        if as_text:
            if show is None or show:
                print(text)
            return text

        layout = dict(self.pos)
        if pos:
            layout.update({var: tuple(xy) for var, xy in pos.items()})
        if ax is not None:
            figure = ax.figure
        elif plt is not None:
            figure = plt.figure(figsize=figsize)
            ax = figure.add_subplot()
        else:
            figure = Figure(figsize=figsize)
            ax = figure.add_subplot()
        for child in self.variables:
            for parent in self.parents[child]:
                ax.annotate(
                    "",
                    xy=layout[child],
                    xytext=layout[parent],
                    arrowprops=dict(arrowstyle="-|>", color="0.35", shrinkA=14, shrinkB=14),
                    zorder=1,
                )
        for var in self.variables:
            x, y = layout[var]
            ax.text(
                x,
                y,
                labels[var],
                ha="center",
                va="center",
                zorder=2,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="#9bd39b", edgecolor="0.25"),
            )
        xs = [layout[v][0] for v in self.variables] or [0]
        ys = [layout[v][1] for v in self.variables] or [0]
        ax.set_xlim(min(xs) - 0.75, max(xs) + 0.75)
        ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
        ax.set_axis_off()
        if show and plt is not None:
            plt.show()
        return figure

    def print_structure(self, pos=None, *, ax=None, show=None, as_text=False, figsize=(10, 10)):
        """Draw the causal graph.

        With matplotlib installed (and ``as_text`` False) the graph is drawn
        with nodes at :attr:`pos` (overridden by ``pos``) and a
        ``matplotlib.figure.Figure`` is returned (drawn on ``ax`` when given);
        ``show=True`` also calls ``plt.show()``.  Otherwise a text rendering
        (one line per timestep, ``child <- (parents)``) is returned and, unless
        ``show=False``, printed.
        """
        labels = {var: str(var) for var in self.variables}
        return self._draw(labels, pos, ax, show, as_text, figsize)

    def print_setting(self, total_setting: Mapping, display=None, *, ax=None, show=None, as_text=False, figsize=(10, 10)):
        """Draw the causal graph with each node labelled ``"var: value"``.

        ``display`` optionally maps variables to booleans: variables mapped to
        a false value (or absent from ``total_setting``) are labelled with their
        name only.  Drawing / return value as in :meth:`print_structure`.
        """
        labels = {}
        for var in self.variables:
            shown = var in total_setting and (display is None or display.get(var, True))
            labels[var] = f"{var}: {total_setting[var]}" if shown else str(var)
        return self._draw(labels, None, ax, show, as_text, figsize)
