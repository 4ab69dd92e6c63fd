"""Intervention base classes.

An intervention is a plain ``nn.Module`` with ``forward(base, source=None, subspaces=None)``: it
knows nothing about hooks, batching or models. ``base`` is the selected part of the
representation, ``(batch, units, features)`` for most units (``(batch, heads, seq, features)`` for
``"h"`` on head components); ``source`` has the same shape (or broadcasts to it) or is ``None``.

Marker classes mirror pyvene's: :class:`TrainableIntervention`, :class:`ConstantSourceIntervention`,
:class:`SourcelessIntervention`, :class:`BasisAgnosticIntervention`,
:class:`SharedWeightsTrainableIntervention`, :class:`LocalistRepresentationIntervention`,
:class:`DistributedRepresentationIntervention`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ShapeMismatchError, UnknownKeywordError, did_you_mean

# RepresentationConfig fields and engine-provided kwargs that every intervention built from a
# config receives; they are not the intervention's own arguments.
_SITE_KWARGS = {
    "layer", "component", "unit", "max_number_of_units", "intervention_type", "intervention",
    "group_key", "intervention_link_key", "moe_key", "hidden_source_representation", "use_fast",
}

BASE_KWARGS: frozenset[str] = frozenset(_SITE_KWARGS | {
    "low_rank_dimension", "latent_dim", "subspace_partition", "source_representation",
    "embed_dim", "keep_last_dim",
})
"""Keywords every built-in intervention accepts: every ``RepresentationConfig`` field (an
``IntervenableModel`` passes them all to the class it builds, as pyvene does) and the base
class's own options."""

PYVENE_COMPAT_KWARGS: dict[str, str] = {
    "use_fast": "accepted and unused: vene picks the fast path per call",
    "hidden_source_representation": "marks the intervention source-constant; the source is filled in by loading",
    "noise_leve": "NoiseIntervention only: pyvene's spelling of noise_level",
    "group_key": "a RepresentationConfig field passed to every intervention; not used by the intervention",
    "intervention_link_key": "a RepresentationConfig field; not used by the intervention",
    "moe_key": "a RepresentationConfig field; not used by the intervention",
}
"""pyvene-only keywords that vene accepts for compatibility, and what becomes of them."""


def accepted_kwargs(cls: type) -> frozenset[str] | None:
    """The keyword arguments the constructor of intervention class ``cls`` accepts, or ``None``
    when it does not check them.

    A class checks its keywords when it declares ``accepted_kwargs`` itself (every built-in
    does): its own names, those of the classes it derives from, and :data:`BASE_KWARGS`. A
    user subclass that does not declare ``accepted_kwargs`` is not checked, so it can read
    extra options from ``**kwargs`` as pyvene's custom interventions do.
    """
    if "accepted_kwargs" not in cls.__dict__:
        return None
    names: set[str] = set(BASE_KWARGS)
    for klass in cls.__mro__:
        names.update(klass.__dict__.get("accepted_kwargs", ()))
    return frozenset(names)


def check_kwargs(cls: type, kwargs: dict[str, Any]) -> None:
    """Raise :class:`~vene.errors.UnknownKeywordError` for a keyword ``cls`` does not accept."""
    allowed = accepted_kwargs(cls)
    if allowed is None:
        return
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        bad = unknown[0]
        own = sorted(allowed - BASE_KWARGS)
        raise UnknownKeywordError(
            f"{cls.__name__}() got an unexpected keyword argument {bad!r}.{did_you_mean(bad, allowed)} "
            f"It accepts {', '.join(own) + ', ' if own else ''}embed_dim, keep_last_dim, "
            "source_representation, subspace_partition, use_fast and every RepresentationConfig field."
        )


class Intervention(nn.Module):
    """Base class of every intervention.

    Keyword arguments understood here (all optional): ``embed_dim`` (feature size the
    intervention acts on), ``keep_last_dim`` (receive ``(batch, units, d)`` instead of the
    flattened ``(batch, units*d)``), ``subspace_partition``, ``source_representation`` (a constant
    source; makes the intervention source-constant), ``use_fast`` (accepted, unused: vene decides
    per call).

    Keyword checking: the built-in classes refuse a keyword they do not know, with a did-you-mean
    hint (:class:`~vene.errors.UnknownKeywordError`, also a ``TypeError``). Every
    ``RepresentationConfig`` field is accepted, because a config passes them all; see
    :data:`PYVENE_COMPAT_KWARGS` for the pyvene-only ones. Your own subclass is checked only if it
    declares ``accepted_kwargs = frozenset({...})`` itself; otherwise unknown keywords are
    recorded and ignored, as in pyvene, so it can take extra options.
    """

    #: keywords this class adds to those of its bases (declaring it turns checking on; see
    #: :func:`accepted_kwargs`)
    accepted_kwargs: frozenset[str] = frozenset()

    #: receive (batch, units, d) rather than a flattened (batch, units*d)
    keep_last_dim_default: bool = True
    #: the getter of this intervention reads the module *input* of the source run (Skip)
    source_from_input: bool = False
    #: its weights span ``embed_dim`` = ``max_number_of_units`` x the unit size, so a call must
    #: select exactly that many units (checked per call; see ``vene.locations.check_unit_counts``)
    units_sized: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "Intervention":
        check_kwargs(cls, kwargs)
        self = super(Intervention, cls).__new__(cls)  # explicit: code shipped by value to NDIF has no __class__ cell
        # The outermost constructor call exactly as made, subclass arguments included: saving
        # replays it (vene.serialization). ``init_kwargs`` only sees what reaches this base class.
        self.__dict__["_init_call"] = (args, dict(kwargs))
        return self

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.trainable = False
        self.is_source_constant = False
        self.keep_last_dim = bool(kwargs.get("keep_last_dim", self.keep_last_dim_default))
        self.use_fast = bool(kwargs.get("use_fast", False))
        self.subspace_partition = normalise_partition(kwargs.get("subspace_partition"))
        # every constructor argument that describes this intervention (for saving / printing)
        self.init_kwargs: dict[str, Any] = {
            k: v for k, v in kwargs.items()
            if k not in _SITE_KWARGS and k != "source_representation" and not isinstance(v, torch.Tensor)
        }
        embed_dim = kwargs.get("embed_dim")
        if embed_dim is not None:
            if isinstance(embed_dim, torch.Tensor) and embed_dim.dim() == 0 and not embed_dim.is_floating_point():
                embed_dim = int(embed_dim)
            if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
                raise ConfigError(f"{type(self).__name__}: embed_dim must be a positive int, got {embed_dim!r:.60}.")
            self.register_buffer("embed_dim", torch.tensor(int(embed_dim)), persistent=True)
            self.register_buffer("interchange_dim", torch.tensor(int(embed_dim)), persistent=True)
        else:
            self.embed_dim = None
            self.interchange_dim = None
        src = kwargs.get("source_representation")
        if src is not None:
            self.set_source_representation(src)
        elif kwargs.get("hidden_source_representation"):
            self.is_source_constant = True
            self.source_representation = None
        else:
            self.source_representation = None

    # -- pyvene API ---------------------------------------------------------------------------
    def set_source_representation(self, source_representation: torch.Tensor) -> None:
        if not isinstance(source_representation, torch.Tensor):
            source_representation = torch.as_tensor(source_representation)
        if "source_representation" in self._buffers:
            self._buffers["source_representation"] = source_representation
        else:
            if hasattr(self, "source_representation"):
                delattr(self, "source_representation")
            self.register_buffer("source_representation", source_representation)
        self.is_source_constant = True

    def set_interchange_dim(self, interchange_dim: Any) -> None:
        value = torch.as_tensor(interchange_dim)
        if "interchange_dim" in self._buffers:
            self._buffers["interchange_dim"] = value
        else:
            if hasattr(self, "interchange_dim"):
                delattr(self, "interchange_dim")
            self.register_buffer("interchange_dim", value)

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Any = None):
        raise NotImplementedError

    def extra_repr(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.init_kwargs.items() if k not in ("embed_dim",) and v is not None]
        if self.embed_dim is not None:
            parts.insert(0, f"embed_dim={int(self.embed_dim)}")
        return ", ".join(parts)


class LocalistRepresentationIntervention(nn.Module):
    """Marker: acts unit by unit; never flattened."""

    is_repr_distributed = False


class DistributedRepresentationIntervention(nn.Module):
    """Marker: acts on a distributed (rotated / learned) basis."""

    is_repr_distributed = True


class TrainableIntervention(Intervention):
    """An intervention with parameters learned by gradient descent."""

    accepted_kwargs = frozenset()

    keep_last_dim_default = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trainable = True
        # a constant source still makes it source-constant (pyvene reset this flag: a bug)
        self.is_source_constant = self.source_representation is not None

    def tie_weight(self, linked_intervention: "Intervention") -> None:  # pragma: no cover - pyvene API
        pass


class ConstantSourceIntervention(Intervention):
    """An intervention that needs no source run (it has a constant source, or none)."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = True


class SourcelessIntervention(Intervention):
    """An intervention computed from the base alone."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = True


class BasisAgnosticIntervention(Intervention):
    """Marker: works in any basis."""

    accepted_kwargs = frozenset()

    basis_agnostic = True


class SharedWeightsTrainableIntervention(TrainableIntervention):
    """Marker: trainable with weights shared across sites."""

    accepted_kwargs = frozenset()

    shared_weights = True


@dataclass
class InterventionOutput:
    """What an intervention may return instead of a tensor: the new value plus extras."""

    output: torch.Tensor
    latent: Any = None
    loss: Any = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class LambdaIntervention(Intervention):
    """Wraps a plain function ``f(base, source)`` or ``f(base, source, subspaces)``."""

    accepted_kwargs = frozenset({"fn"})

    def __init__(self, fn: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn = fn
        self.is_source_constant = True

    def forward(self, base, source=None, subspaces=None):
        if subspaces is not None:
            return self.fn(base, source, subspaces)
        return self.fn(base, source)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


# ---------------------------------------------------------------------------------------------
# subspace helpers shared by the built-in interventions


def normalise_partition(partition: Any) -> list[list[int]] | None:
    """pyvene partitions: ``[start, end)`` pairs (first element an int) or explicit index lists."""
    if partition is None:
        return None
    if not isinstance(partition, (list, tuple)):
        raise ConfigError(f"subspace_partition must be a list of [start, end) pairs or index lists, got {partition!r}.")
    out = []
    for part in partition:
        if isinstance(part, (list, tuple)) and len(part) == 2 and all(isinstance(p, int) for p in part) and part[0] < part[1]:
            out.append(list(range(part[0], part[1])))
        elif isinstance(part, (list, tuple)) and all(isinstance(p, int) for p in part):
            out.append(list(part))
        else:
            raise ConfigError(f"subspace_partition entry {part!r} is neither a [start, end) pair nor a list of indices.")
    return out


def feature_mask(
    subspaces: Any, d: int, batch: int, partition: list[list[int]] | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean ``(batch, d)`` mask of the features each example intervenes on, or None (all).

    ``subspaces`` is the per-example list ``[batch][k]`` of feature ids (or partition ids when the
    intervention has a ``subspace_partition``). A single list is shared by every example.
    """
    if subspaces is None:
        return None
    cache = getattr(subspaces, "_mask_cache", None)
    key = (d, batch, id(partition), str(device))
    if cache is not None and key in cache:
        return cache[key]
    rows = list(subspaces)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows] * batch
    if len(rows) == 1 and batch > 1:
        rows = rows * batch
    if len(rows) != batch:
        raise ShapeMismatchError(f"subspaces has {len(rows)} rows but the batch has {batch} examples.")
    mask = torch.zeros(batch, d, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row is None:
            continue
        idx = []
        for s in row:
            if not isinstance(s, int):
                raise ShapeMismatchError(f"subspace entries must be ints, got {s!r}.")
            if partition is not None:
                if not 0 <= s < len(partition):
                    raise ShapeMismatchError(
                        f"subspace {s} is not a partition id: this intervention has {len(partition)} partitions (0..{len(partition) - 1})."
                    )
                idx.extend(partition[s])
            else:
                idx.append(s)
        if idx and (max(idx) >= d or min(idx) < 0):
            bad = max(idx) if max(idx) >= d else min(idx)
            raise ShapeMismatchError(
                f"subspace index {bad} is out of range for {d} features (0..{d - 1}; indices count from 0, "
                "as locations do)."
            )
        mask[i, idx] = True
    mask = mask.to(device)
    if cache is not None:
        cache[key] = mask
    return mask


def broadcast_source(source: torch.Tensor, base: torch.Tensor, what: str = "source") -> torch.Tensor:
    """Right-aligned broadcast of ``source`` to ``base``'s shape (pyvene's rule), with a clear error."""
    if source.shape == base.shape:
        return source
    try:
        return source.reshape((1,) * (base.dim() - source.dim()) + tuple(source.shape)).expand_as(base) \
            if source.dim() <= base.dim() else source.reshape(base.shape)
    except RuntimeError:
        if source.shape[-1:] != base.shape[-1:]:
            hint = f"Its last dimension must be {base.shape[-1]} (it is {source.shape[-1] if source.dim() else 'a scalar'})."
        else:
            hint = (
                "The feature sizes agree, so the other dimensions differ: give one row per example "
                f"and as many units as are selected ({tuple(base.shape[:-1])}), or size 1 to broadcast."
            )
        raise ShapeMismatchError(
            f"The {what} has shape {tuple(source.shape)}, which does not broadcast to the selected "
            f"base representation of shape {tuple(base.shape)}. {hint}"
        ) from None


def mask_like(mask: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(batch, d)`` mask to broadcast against ``base`` ``(batch, ..., d)``."""
    return mask.view(mask.shape[0], *([1] * (base.dim() - 2)), mask.shape[1])
