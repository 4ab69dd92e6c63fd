"""Type aliases of the public API's arguments (for annotations; nothing here exists at run time
beyond the aliases themselves).

``Inputs``
    Model inputs: a mapping of keyword arguments of the model's ``forward`` (``input_ids``,
    ``attention_mask``, ...), e.g. a dict or a tokenizer's ``BatchEncoding``.
``Sources``
    The source inputs of an interchange: one ``Inputs`` shared by every intervention group, or one
    per group (``None`` for a group that takes no source), or ``None``.
``UnitLocations``
    Where the interventions act (see :mod:`vene.locations`): a dict keyed ``"sources->base"`` /
    ``"base"`` (or ``"source_i->source_{i+1}"`` in serial mode) whose values are the nested
    ``[batch][units]`` lists or one of the shorthands (an int, a ``(source, base)`` pair, a flat
    list of ints); or such a shorthand directly; or ``None`` (every unit).
``Subspaces``
    Which features each example intervenes on: per intervention, ``[batch][k]`` feature (or
    partition) ids, or one list shared by every example; or ``None`` (all features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

__all__ = ["Inputs", "Sources", "Subspaces", "UnitLocations"]

Inputs = Mapping[str, Any]
Sources = Optional[Union[Inputs, Sequence[Optional[Inputs]]]]
UnitLocations = Optional[Union[int, Sequence[Any], Mapping[str, Any]]]
Subspaces = Optional[Union[int, Sequence[Any]]]
