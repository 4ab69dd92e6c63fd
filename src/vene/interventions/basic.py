"""Static interventions: vanilla (interchange), addition, subtraction, zero, collect, skip, noise."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    broadcast_source,
    feature_mask,
    mask_like,
)


def _limit(intervention: Intervention, base: torch.Tensor) -> int | None:
    """The ``interchange_dim`` bound, or None when it covers every feature."""
    k = intervention.interchange_dim
    if k is None:
        return None
    cached = intervention.__dict__.get("_limit_cache")
    if cached is not None and cached[0] is k and cached[1] == k._version:
        value = cached[2]
    else:
        value = int(k) if k.dim() == 0 else None
        intervention.__dict__["_limit_cache"] = (k, k._version, value)
    if value is None or value >= base.shape[-1]:
        return None
    return value


def _mask(intervention: Intervention, base: torch.Tensor, subspaces: Any) -> torch.Tensor | None:
    """Boolean mask broadcastable to ``base`` selecting the features to act on (None: all)."""
    if subspaces is not None:
        m = feature_mask(subspaces, base.shape[-1], base.shape[0], intervention.subspace_partition, base.device)
        return None if m is None else mask_like(m, base)
    k = _limit(intervention, base)
    if k is None:
        return None
    m = torch.zeros(base.shape[-1], dtype=torch.bool, device=base.device)
    m[:k] = True
    return m


def _source(intervention: Intervention, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    src = intervention.source_representation if intervention.source_representation is not None else source
    if src is None:
        raise ConfigError(
            f"{type(intervention).__name__} needs a source: pass sources=..., "
            "source_representations=..., or give the site a source_representation."
        )
    src = src.to(device=base.device, dtype=base.dtype) if (src.device != base.device or src.dtype != base.dtype) else src
    return broadcast_source(src, base)


class VanillaIntervention(LocalistRepresentationIntervention, Intervention):
    """Interchange: the selected features of the base take the source's values."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        Intervention.__init__(self, **kwargs)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        m = _mask(self, base, subspaces)
        return src.clone() if m is None else torch.where(m, src, base)


class AdditionIntervention(LocalistRepresentationIntervention, BasisAgnosticIntervention):
    """Adds the source to the selected features of the base."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        Intervention.__init__(self, **kwargs)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        m = _mask(self, base, subspaces)
        return base + src if m is None else base + src * m


class SubtractionIntervention(LocalistRepresentationIntervention, BasisAgnosticIntervention):
    """Subtracts the source from the selected features of the base."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        Intervention.__init__(self, **kwargs)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        m = _mask(self, base, subspaces)
        return base - src if m is None else base - src * m


class ZeroIntervention(LocalistRepresentationIntervention, ConstantSourceIntervention):
    """Sets the selected features to zero."""

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        ConstantSourceIntervention.__init__(self, **kwargs)

    def forward(self, base, source=None, subspaces=None):
        m = _mask(self, base, subspaces)
        return torch.zeros_like(base) if m is None else base.masked_fill(m, 0)


class CollectIntervention(ConstantSourceIntervention):
    """Returns the selected features; the forward pass is left untouched.

    The engine stores what it returns and hands it back as ``collected_activations``.
    """

    accepted_kwargs = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def forward(self, base, source=None, subspaces=None):
        if subspaces is not None:  # the features in the order asked (pyvene's), rows are examples
            from ..utils import _do_intervention_by_swap

            return _do_intervention_by_swap(base, None, "collect", subspaces=subspaces,
                                            subspace_partition=self.subspace_partition)
        k = _limit(self, base)
        return base if k is None else base[..., :k]


class SkipIntervention(VanillaIntervention, BasisAgnosticIntervention):
    """Replaces a module's output by the source run's *input* of the same module.

    Run it with ``sources=[base]`` to skip the module (its output becomes its input). The math is
    the interchange of :class:`VanillaIntervention`; only where the source is read differs.
    """

    accepted_kwargs = frozenset()

    source_from_input = True


class NoiseIntervention(LocalistRepresentationIntervention, ConstantSourceIntervention):
    """Adds Gaussian noise to the selected features (ROME's corruption).

    Arguments: ``noise_level`` (absolute std of the noise) or ``noise_scale`` (std as a multiple of
    the standard deviation of the model's input embedding matrix; default 3.0, as in ROME, used when
    ``noise_level`` is not given), ``seed`` (default 1): the same noise is drawn on every call, for
    any number of positions. ``noise_leve`` (pyvene's spelling) is accepted.
    """

    accepted_kwargs = frozenset({"noise_level", "noise_leve", "noise_scale", "seed", "embedding_std"})

    def __init__(self, **kwargs: Any) -> None:
        if "noise_leve" in kwargs and "noise_level" not in kwargs:
            kwargs["noise_level"] = kwargs.pop("noise_leve")
        ConstantSourceIntervention.__init__(self, **kwargs)
        self.noise_level = kwargs.get("noise_level")
        self.noise_scale = float(kwargs.get("noise_scale", 3.0))
        self.seed = int(kwargs.get("seed", 1))
        self.embedding_std: float | None = kwargs.get("embedding_std")
        self._noise_cache: dict[tuple, torch.Tensor] = {}

    def set_embedding_std(self, std: float) -> None:
        """Called by the engine with the std of the wrapped model's input embeddings."""
        if self.embedding_std is None:
            self.embedding_std = float(std)

    @property
    def level(self) -> float:
        if self.noise_level is not None:
            return float(self.noise_level)
        if self.embedding_std is None:
            raise ConfigError(
                "NoiseIntervention needs noise_level=..., or a model with input embeddings "
                "(for noise_scale x embedding std)."
            )
        return self.noise_scale * self.embedding_std

    def noise_like(self, base: torch.Tensor) -> torch.Tensor:
        key = (tuple(base.shape), base.dtype, str(base.device), self.level)
        noise = self._noise_cache.get(key)
        if noise is None:
            g = torch.Generator().manual_seed(self.seed)
            noise = (torch.randn(base.shape, generator=g, dtype=torch.float32) * self.level).to(base.device, base.dtype)
            self._noise_cache = {key: noise}
        return noise

    def forward(self, base, source=None, subspaces=None):
        noise = self.noise_like(base)
        m = _mask(self, base, subspaces)
        return base + noise if m is None else base + noise * m
