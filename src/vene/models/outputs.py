"""Light-weight output and config containers for vene's built-in models.

The built-in models (:mod:`vene.models.mlp`, :mod:`vene.models.gru`) are plain
``torch.nn.Module`` subclasses and deliberately do not depend on
``transformers``.  They still behave like Hugging Face models from the
caller's point of view: they take keyword arguments, return an output object
that can be read by attribute, by key or by integer position, and carry a
``config`` object.  The two small classes here provide that behaviour.
"""

from __future__ import annotations

import collections
import copy
from typing import Any, Dict, Iterator, Tuple

import torch
from torch import nn

__all__ = ["ModelOutput", "BuiltinConfig", "BuiltinModule", "output_tuple"]


class ModelOutput(dict):
    """A ``dict`` of named model outputs with attribute and positional access.

    * Only fields whose value is not ``None`` are stored as dict entries, in
      the order they were given.  Reading an absent field that the class
      declares in ``_fields`` (or any absent field, by attribute) gives
      ``None``.
    * ``out["logits"]`` and ``out.logits`` read the same entry.
    * ``out[0]`` / ``out[1:]`` index the stored (non-``None``) values in order.
    * :meth:`to_tuple` returns the stored values as a tuple.

    Subclasses may declare ``_fields`` to fix the canonical order of fields,
    e.g. ``("loss", "logits", "hidden_states")``; values passed to the
    constructor are then stored in that order whatever order they came in.
    """

    _fields: Tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        given: Dict[str, Any] = dict(*args, **kwargs)
        ordered = [k for k in self._fields if k in given]
        ordered += [k for k in given if k not in self._fields]
        for key in ordered:
            value = given[key]
            if value is not None:
                super().__setitem__(key, value)

    # -- attribute access -------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            if name in type(self)._fields:
                return None
            raise AttributeError(
                f"{type(self).__name__!s} has no field {name!r}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    # -- item access --------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        if isinstance(key, (int, slice)) and not isinstance(key, bool):
            return self.to_tuple()[key]
        raise TypeError(
            f"{type(self).__name__} indices must be str, int or slice, "
            f"not {type(key).__name__}"
        )

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError("ModelOutput keys must be strings")
        if value is None:
            super().pop(key, None)
        else:
            super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self.get(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def to_tuple(self) -> Tuple[Any, ...]:
        """The stored (non-``None``) values, in order."""
        return tuple(self.values())

    def __iter__(self) -> Iterator[str]:
        return super().__iter__()

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self) -> "ModelOutput":
        return type(self)(dict(self))

    def __deepcopy__(self, memo: Dict[int, Any]) -> "ModelOutput":
        return type(self)(copy.deepcopy(dict(self), memo))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_short_repr(v)}" for k, v in self.items())
        return f"{type(self).__name__}({inner})"


_TUPLE_TYPES: Dict[tuple, type] = {}


def _tuple_getitem(self: tuple, key: Any) -> Any:
    if isinstance(key, str):
        return getattr(self, key)
    return tuple.__getitem__(self, key)


def _tuple_getattr(self: Any, name: str) -> Any:  # self: a tuple class made by output_tuple
    if name in type(self)._declared:
        return None  # a declared field that was None (not part of the tuple)
    raise AttributeError(f"{type(self).__name__} has no field {name!r}")


def output_tuple(out: "ModelOutput") -> tuple:
    """``out`` as a tuple of its non-None values, in order (what pyvene's built-in models return
    without ``return_dict``), that still reads fields by name: ``t[0]``, ``t.logits``, ``t["logits"]``."""
    names = tuple(out.keys())
    key = (type(out).__name__, names, type(out)._fields)
    cls = _TUPLE_TYPES.get(key)
    if cls is None:
        # mypy only understands namedtuple() with a literal name; this one is built per output class
        base = collections.namedtuple(f"{type(out).__name__}Tuple", names)  # type: ignore[misc]
        cls = type(base.__name__, (base,), {
            "__slots__": (), "__getitem__": _tuple_getitem, "__getattr__": _tuple_getattr,
            "_declared": frozenset(type(out)._fields),
        })
        _TUPLE_TYPES[key] = cls
    return cls(*out.values())


def _short_repr(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} shape={tuple(shape)}>"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short_repr(v) for v in value) + ")"
    return repr(value)


class BuiltinConfig:
    """Base class of the small configs of vene's built-in models.

    Subclasses set ``model_type`` and call ``super().__init__(**fields)``.
    Unknown keyword arguments are kept as extra attributes (like Hugging Face
    configs do), so configs round-trip through :meth:`to_dict` /
    :meth:`from_dict`.
    """

    model_type: str = "builtin"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self) -> Dict[str, Any]:
        out = {"model_type": self.model_type}
        out.update(copy.deepcopy(vars(self)))
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "BuiltinConfig":
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"{cls.__name__} cannot load a config of model_type "
                f"{model_type!r}"
            )
        return cls(**data)

    def copy(self) -> "BuiltinConfig":
        return type(self).from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class BuiltinModule(nn.Module):
    """Base of the built-in models: a ``config`` plus ``device``/``dtype``."""

    config: BuiltinConfig

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()
