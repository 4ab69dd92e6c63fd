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
  a text rendering otherwise; the text is returned, and printed only on
  request).

Layout of the package (one concern per module; :class:`CausalModel` is a
single class assembled from mixins):

* :mod:`.model` -- construction, validation, timesteps, ``run_forward`` /
  ``run_interchange``, ``add_variable``;
* :mod:`.sampling` -- input / intervention samplers, equivalence classes,
  tree-balanced sampling;
* :mod:`.datasets` -- tensor encodings, factual / counterfactual datasets;
* :mod:`.paths` -- ``find_live_paths`` and the path filters;
* :mod:`.drawing` -- ``print_structure`` / ``print_setting``;
* :mod:`.errors`, :mod:`.values` -- exceptions and value comparison.
"""

from .errors import CausalModelError, SamplingError
from .model import CausalModel
from .sampling import DEFAULT_MAX_TRIES, EQUIV_CLASS_LIMIT

__all__ = [
    "CausalModel",
    "CausalModelError",
    "SamplingError",
    "DEFAULT_MAX_TRIES",
    "EQUIV_CLASS_LIMIT",
]
