"""Intervention configuration: ``RepresentationConfig`` and ``IntervenableConfig``.

Both accept every spelling pyvene accepts (a dict, a list of dicts, a positional list, a
``RepresentationConfig``), and normalise it once, at construction.
"""
from __future__ import annotations

import inspect
import json
import types
from typing import Any, Iterable, NamedTuple

import torch

from .errors import ConfigError, did_you_mean


class RepresentationConfig(NamedTuple):
    """One intervention site. Field order matches pyvene (it is used positionally)."""

    layer: int = 0
    component: str = "block_output"
    unit: str = "pos"
    max_number_of_units: int = 1
    low_rank_dimension: int | None = None
    intervention_type: Any = None
    intervention: Any = None
    subspace_partition: Any = None
    group_key: Any = None
    intervention_link_key: Any = None
    moe_key: Any = None
    source_representation: Any = None
    hidden_source_representation: Any = None
    latent_dim: int | None = None


_FIELDS = RepresentationConfig._fields


def to_representation(item: Any, index: int = 0) -> RepresentationConfig:
    """Cast a dict / list / tuple / RepresentationConfig into a RepresentationConfig."""
    if isinstance(item, RepresentationConfig):
        rep = item
    elif isinstance(item, dict):
        unknown = [k for k in item if k not in _FIELDS]
        if unknown:
            bad = unknown[0]
            raise ConfigError(
                f"Representation {index}: unknown field {bad!r}.{did_you_mean(bad, _FIELDS)} "
                f"Valid fields: {', '.join(_FIELDS)}."
            )
        rep = RepresentationConfig(**item)
    elif isinstance(item, (list, tuple)):
        if len(item) > len(_FIELDS):
            raise ConfigError(
                f"Representation {index}: {len(item)} positional values given, at most "
                f"{len(_FIELDS)} allowed ({', '.join(_FIELDS)})."
            )
        rep = RepresentationConfig(*item)
    else:
        raise ConfigError(
            f"Representation {index}: expected a dict, a list or a RepresentationConfig, "
            f"got {type(item).__name__}."
        )
    if rep.intervention_type is not None and rep.intervention is not None:
        raise ConfigError(
            f"Representation {index}: give either 'intervention_type' (a class) or "
            f"'intervention' (an instance or a function), not both."
        )
    if rep.intervention is not None and inspect.isclass(rep.intervention):
        # pyvene's docs pass a class here; accept it as the type.
        rep = rep._replace(intervention_type=rep.intervention, intervention=None)
    if rep.intervention_type is not None and not inspect.isclass(rep.intervention_type):
        if callable(rep.intervention_type) or isinstance(rep.intervention_type, torch.nn.Module):
            rep = rep._replace(intervention=rep.intervention_type, intervention_type=None)
        else:
            raise ConfigError(
                f"Representation {index}: 'intervention_type' must be an intervention class, "
                f"got {rep.intervention_type!r}."
            )
    if not isinstance(rep.component, str) or not rep.component:
        raise ConfigError(f"Representation {index}: 'component' must be a non-empty string.")
    if not isinstance(rep.unit, str) or not rep.unit:
        raise ConfigError(f"Representation {index}: 'unit' must be a string such as 'pos', 'h', 'h.pos' or 't'.")
    if not isinstance(rep.layer, int) or isinstance(rep.layer, bool):
        raise ConfigError(f"Representation {index}: 'layer' must be an int, got {rep.layer!r}.")
    if not isinstance(rep.max_number_of_units, int) or rep.max_number_of_units < 1:
        raise ConfigError(
            f"Representation {index}: 'max_number_of_units' must be a positive int, got "
            f"{rep.max_number_of_units!r}."
        )
    return rep


def _as_rep_list(representations: Any) -> list[RepresentationConfig]:
    if isinstance(representations, (RepresentationConfig, dict)):
        items: Iterable = [representations]
    elif isinstance(representations, (list, tuple)):
        # A positional RepresentationConfig given as a flat list is ambiguous with a list of
        # sites; a list whose first element is an int (the layer) is a positional site.
        if representations and not isinstance(representations[0], (dict, list, tuple, RepresentationConfig)):
            items = [representations]
        else:
            items = representations
    else:
        raise ConfigError(
            "representations must be a dict, a RepresentationConfig, or a list of them; got "
            f"{type(representations).__name__}."
        )
    reps = [to_representation(r, i) for i, r in enumerate(items)]
    if not reps:
        raise ConfigError("An IntervenableConfig needs at least one representation.")
    return reps


def _type_name(obj: Any) -> Any:
    if obj is None:
        return None
    if inspect.isclass(obj):
        return obj.__name__
    if isinstance(obj, types.FunctionType):
        return f"<function {obj.__name__}>"
    return type(obj).__name__


def _jsonable(value: Any, display: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        if display:
            return f"tensor(shape={list(value.shape)}, dtype={dtype})"
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": dtype}
    if inspect.isclass(value) or callable(value) or isinstance(value, torch.nn.Module):
        return _type_name(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, display) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, display) for k, v in value.items()}
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value.get("dtype", "float32")))
    return value


class IntervenableConfig:
    """A list of sites plus how to run them.

    ``IntervenableConfig(representations, intervention_types=VanillaIntervention, mode="parallel")``

    * ``representations``: one site or a list of sites; each a dict, a positional list or a
      :class:`RepresentationConfig`.
    * ``intervention_types``: one intervention class for every site, or a list with one class per
      site. A site's own ``intervention_type`` / ``intervention`` wins over it.
    * ``mode``: ``"parallel"`` (every source writes into the base) or ``"serial"``
      (``source_0 -> source_1 -> ... -> base``).
    """

    def __init__(
        self,
        representations: Any = None,
        intervention_types: Any = None,
        mode: str = "parallel",
        sorted_keys: list[str] | None = None,
        model_type: Any = None,
        intervention_dimensions: Any = None,
        intervention_constant_sources: Any = None,
        **kwargs: Any,
    ) -> None:
        if representations is None:
            representations = [RepresentationConfig()]
        self.representations: list[RepresentationConfig] = _as_rep_list(representations)
        if mode not in ("parallel", "serial"):
            raise ConfigError(f"mode must be 'parallel' or 'serial', got {mode!r}.")
        self.mode = mode
        self._default_types = self._check_types(intervention_types, len(self.representations))
        self.sorted_keys = sorted_keys
        self.model_type = model_type
        self.intervention_dimensions = intervention_dimensions
        self.intervention_constant_sources = intervention_constant_sources
        for k, v in kwargs.items():  # pyvene's PretrainedConfig accepted arbitrary extras
            setattr(self, k, v)

    @staticmethod
    def _check_types(intervention_types: Any, n: int) -> Any:
        if intervention_types is None:
            return None
        if isinstance(intervention_types, (list, tuple)):
            if len(intervention_types) != n:
                raise ConfigError(
                    f"intervention_types has {len(intervention_types)} entries but there are {n} "
                    "representations; give one class, or one per representation."
                )
            return list(intervention_types)
        return intervention_types

    # -- pyvene-compatible accessors ------------------------------------------------------
    @property
    def intervention_types(self) -> Any:
        """What pyvene gives back: the ``intervention_types`` passed (one class, or a list; the
        default is :class:`VanillaIntervention`), or, once any site names its own
        ``intervention_type`` / ``intervention``, one entry per site (the type of an instance)."""
        if any(rep.intervention is not None or rep.intervention_type is not None for rep in self.representations):
            return self.site_types()
        if self._default_types is None:
            from .interventions import VanillaIntervention

            return VanillaIntervention
        return self._default_types

    @intervention_types.setter
    def intervention_types(self, value: Any) -> None:
        self._default_types = self._check_types(value, len(self.representations))

    def site_types(self) -> list[Any]:
        """The intervention class of every site, in order (an instance's type for instances)."""
        from .interventions import VanillaIntervention

        out = []
        for i, rep in enumerate(self.representations):
            if rep.intervention is not None:
                out.append(type(rep.intervention))
            elif rep.intervention_type is not None:
                out.append(rep.intervention_type)
            elif isinstance(self._default_types, list):
                out.append(self._default_types[i])
            elif self._default_types is not None:
                out.append(self._default_types)
            else:
                out.append(VanillaIntervention)
        return out

    def site_intervention(self, i: int) -> Any:
        """The class, instance or function that implements site ``i``."""
        rep = self.representations[i]
        if rep.intervention is not None:
            return rep.intervention
        return self.site_types()[i]

    def add_intervention(self, representations: Any) -> None:
        """Append one site or a list of sites (each may carry its own type or instance)."""
        new = _as_rep_list(representations)
        offset = len(self.representations)
        new = [to_representation(r, offset + i) for i, r in enumerate(new)]
        if isinstance(self._default_types, list):
            from .interventions import VanillaIntervention

            self._default_types += [VanillaIntervention] * len(new)
        self.representations.extend(new)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self, display: bool = False) -> dict[str, Any]:
        """JSON-ready dict; tensors are stored by value (``display=True``: by shape only)."""
        reps = []
        types_ = self.site_types()
        for rep, t in zip(self.representations, types_):
            d = {k: _jsonable(v, display) for k, v in rep._asdict().items() if v is not None}
            d["intervention_type"] = _type_name(t if rep.intervention is None else rep.intervention)
            d.pop("intervention", None)
            reps.append(d)
        return {
            "representations": reps,
            "mode": self.mode,
            "sorted_keys": self.sorted_keys,
        }

    def to_json_string(self, display: bool = False) -> str:
        return json.dumps(self.to_dict(display), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IntervenableConfig":
        from .interventions import get_intervention_class

        reps = []
        for i, raw in enumerate(data["representations"]):
            if isinstance(raw, (list, tuple)):  # pyvene's positional arrays
                raw = dict(zip(_FIELDS, raw))
            raw = {k: _from_jsonable(v) for k, v in raw.items()}
            tname = raw.pop("intervention_type", None)
            raw.pop("intervention", None)
            if isinstance(tname, str):
                if tname.startswith("<function"):
                    raise ConfigError(
                        f"Representation {i} used a plain function ({tname}); functions cannot be "
                        "restored from JSON. Pass the function again as 'intervention'."
                    )
                raw["intervention_type"] = get_intervention_class(tname)
            reps.append(to_representation(raw, i))
        return cls(reps, mode=data.get("mode", "parallel"), sorted_keys=data.get("sorted_keys"))

    @classmethod
    def from_json_string(cls, text: str) -> "IntervenableConfig":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        return f"IntervenableConfig\n{self.to_json_string(display=True)}"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervenableConfig) and self.to_dict() == other.to_dict()
