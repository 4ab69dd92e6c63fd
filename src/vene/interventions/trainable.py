"""Trainable interventions: DAS rotations, masks, low-rank edits, autoencoders, LoRA.

Shapes. Each intervention acts on ``n`` features (``embed_dim`` = the component's size ×
``max_number_of_units``). By default the engine flattens the selected units, ``(batch, units, d)``
-> ``(batch, units*d)``, as pyvene does; an intervention also accepts ``(batch, units, d)`` with
``units*d == n`` (flattened here), and any input whose last dimension is a multiple of ``n`` (each
block of ``n`` features is treated alike: a ``max_number_of_units=1`` rotation applied to the whole
sequence acts position by position). So every type works for any number of units (pyvene's
boundless and mask interventions crashed with ``max_number_of_units > 1``). Through an
``IntervenableModel`` a call must select exactly ``max_number_of_units`` units when that is above 1
(``units_sized``; see ``vene.locations.check_unit_counts``): otherwise a mismatch whose sizes
happened to multiply out would silently rotate, e.g., two positions of one head as one vector.

Subspaces. ``subspaces`` (per example; partition ids when the intervention has a
``subspace_partition``) select which coordinates are swapped, in the *intervention's* basis: rotated
coordinates for rotations, columns for low-rank rotations, latents for autoencoders, features for
masks. Without subspaces ``interchange_dim`` applies: left at its default (``embed_dim``) every
coordinate is used; set with ``set_interchange_dim(k)`` the first ``k`` (a list: those indices).

Math (``b`` base, ``s`` source, ``R`` orthogonal, ``M`` the selected coordinates):

* RotatedSpace: ``out = b + ((s - b) R ⊙ M) Rᵀ``, equal to pyvene's ``(swap_M(bR, sR)) Rᵀ``.
* LowRankRotatedSpace: ``W`` ``(n, r)`` orthonormal columns: ``out = b + ((s - b) W ⊙ M) Wᵀ``.
* BoundlessRotatedSpace: ``out = b + ((s - b) R ⊙ m) Rᵀ`` with the soft mask
  ``m_i = σ((i + ½)/T) σ((βn - i - ½)/T)`` (dimension centres, so that at low temperature exactly
  the first ``round(βn)`` rotated dimensions are swapped; pyvene evaluated at ``i`` and so gave
  dimension 0 a weight of at most ½).
* SigmoidMaskRotatedSpace: same with ``m = σ(masks / T)``.
* SigmoidMask: ``out = b + σ(mask / T) ⊙ (s - b)`` (in the model's basis).
* PCARotatedSpace: components ``C`` ``(k, n)``: ``out = b + (((s - b)/σ) Cᵀ ⊙ M) C σ``; the part of
  the base outside the PCA span is kept (pyvene returned the reconstruction and lost it).
* Autoencoder / JumpReLUAutoencoder: swap latents, and add the change of the decoded value to the
  base (``out = b + dec(z') - dec(z)``), so the SAE error term is kept; ``preserve_error=False``
  returns the reconstruction ``dec(z')`` as pyvene did.
* LoRA: ``out = base + dropout(x) A B · alpha/r``, ``x`` the module's *input* at the same units.

Temperatures are annealed by a schedule (``IntervenableModel.set_temperature``, the training
loop), so they are stored as parameters with ``requires_grad=False``: they are saved with the
intervention but never handed to the optimiser.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError, ShapeMismatchError
from .base import (
    BasisAgnosticIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    TrainableIntervention,
    feature_mask,
)
from .basic import _source
from .layers import AutoencoderLayer, orthogonal_low_rank_layer, orthogonal_rotate_layer

__all__ = [
    "AutoencoderIntervention", "BoundlessRotatedSpaceIntervention", "JumpReLUAutoencoderIntervention",
    "LoRAIntervention", "LowRankRotatedSpaceIntervention", "PCARotatedSpaceIntervention",
    "RotatedSpaceIntervention", "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
]


# ---------------------------------------------------------------------------------------------
# helpers


#: the largest weight matrix (elements) an intervention allocates: 2**30 is 4 GiB in float32
MAX_WEIGHT_ELEMENTS = 1 << 30


def _positive_int(value: Any) -> int | None:
    """``value`` as an int when it is a positive integer (a 0-d integer tensor counts), else None."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _need_embed_dim(iv: Intervention, kwargs: dict) -> int:
    raw = kwargs.get("embed_dim")
    if raw is None:
        raise ConfigError(
            f"{type(iv).__name__} needs embed_dim (the size of the representation it acts on). It "
            "is filled in from the component for known architectures; for a raw module path of "
            f"unknown size pass an instance, e.g. {type(iv).__name__}(embed_dim=768)."
        )
    n = _positive_int(raw)
    if n is None:
        raise ConfigError(f"{type(iv).__name__}: embed_dim must be a positive int, got {raw!r:.60}.")
    return n


def _need_rank(iv: Intervention, kwargs: dict, name: str = "low_rank_dimension") -> int:
    raw = kwargs.get(name)
    r = _positive_int(raw)
    if r is None:
        raise ConfigError(
            f"{type(iv).__name__} needs {name}=<positive int> (got {raw!r:.60}); set it in the "
            "RepresentationConfig or pass it to the constructor."
        )
    return r


def _check_weight(iv: Intervention, rows: int, cols: int, what: str) -> None:
    """Refuse, before allocating, a weight matrix too large to be meant."""
    if rows * cols > MAX_WEIGHT_ELEMENTS:
        gib = rows * cols * 4 / 2**30
        raise ConfigError(
            f"{type(iv).__name__}: {what} would be a {rows} x {cols} matrix ({gib:.0f} GiB in float32), "
            f"more than the limit of {MAX_WEIGHT_ELEMENTS} elements. Check embed_dim / "
            "max_number_of_units / low_rank_dimension (embed_dim = component size x max_number_of_units)."
        )


def _fit(x: torch.Tensor, n: int, iv: Intervention) -> tuple[torch.Tensor, Any]:
    """View ``x`` with a last dimension of ``n`` (see the module docstring); returns the view and
    what :func:`_unfit` needs to restore the layout."""
    d = x.shape[-1]
    if d == n:
        return x, None
    if x.dim() == 4 and x.shape[1] * d == n:  # (b, heads, pos, dh): concatenate heads, as pyvene
        return x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], n), ("heads", x.shape)
    if x.dim() >= 3 and x.shape[-2] * d == n:
        return x.reshape(*x.shape[:-2], n), x.shape
    if d % n == 0:
        return x.reshape(*x.shape[:-1], d // n, n), x.shape
    raise ShapeMismatchError(
        f"{type(iv).__name__} acts on {n} features (embed_dim = component size x "
        f"max_number_of_units) but received a selection of shape {tuple(x.shape)}. Select "
        "max_number_of_units units per example, or set max_number_of_units to the number of "
        "units you select."
    )


def _unfit(y: torch.Tensor, shape: Any) -> torch.Tensor:
    if shape is None:
        return y
    if isinstance(shape, tuple) and shape and shape[0] == "heads":
        b, h, p, d = shape[1]
        return y.reshape(b, p, h, d).permute(0, 2, 1, 3)
    return y.reshape(shape)


def _dim(iv: Intervention) -> int:
    """The representation size of an intervention that requires one (checked at construction)."""
    n = iv.embed_dim
    if n is None:
        raise ConfigError(f"{type(iv).__name__} has no embed_dim.")
    return int(n)


def _is_default_interchange(iv: Intervention) -> bool:
    k, n = iv.interchange_dim, iv.embed_dim
    if k is None:
        return True
    return k.dim() == 0 and n is not None and int(k) == int(n)


def _mask(iv: Intervention, subspaces: Any, n: int, x: torch.Tensor, index_semantics: bool = False) -> torch.Tensor | None:
    """Boolean mask over ``n`` coordinates broadcastable to ``x`` ``(batch, ..., n)``; None = all.

    ``subspaces`` win; otherwise a non-default ``interchange_dim`` (a bound ``k``: the first ``k``;
    with ``index_semantics`` a scalar is a single index, as pyvene's autoencoder read it; a list:
    those indices).
    """
    batch = x.shape[0]
    if subspaces is not None:
        fm = feature_mask(subspaces, n, batch, iv.subspace_partition, x.device)
        return None if fm is None else fm.view(batch, *([1] * (x.dim() - 2)), n)
    k = iv.interchange_dim
    if k is None or _is_default_interchange(iv):
        return None
    m = torch.zeros(n, dtype=torch.bool, device=x.device)
    if k.dim() == 0 and not index_semantics:
        m[: int(k)] = True
    else:
        idx = k.reshape(-1).long().to(x.device)
        if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -n):
            raise ShapeMismatchError(
                f"{type(iv).__name__}: interchange_dim {k.tolist()} indexes past the {n} coordinates."
            )
        m[idx] = True
    return m


def _apply(m: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    return t if m is None else t * m.to(t.dtype)


class _Temperature:
    """``temperature`` handling shared by the annealed interventions."""

    temperature: nn.Parameter

    def get_temperature(self) -> nn.Parameter:
        return self.temperature

    def set_temperature(self, temp: Any) -> None:
        with torch.no_grad():
            self.temperature.fill_(float(temp))


# ---------------------------------------------------------------------------------------------
# rotations


def _rotated_interchange(iv: Any, base: torch.Tensor, source: Any, subspaces: Any,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """``b + ((s - b) R * w)[S] Rᵀ``: swap the selected (and ``weights``-scaled) coordinates of the
    base for the source's in the orthogonal basis ``R`` of ``iv.rotate_layer``."""
    src = _source(iv, base, source)
    n = int(iv.embed_dim)
    b2, shape = _fit(base, n, iv)
    s2, _ = _fit(src, n, iv)
    R = iv.rotate_layer.weight
    bf = b2.to(R.dtype)
    delta = torch.matmul(s2.to(R.dtype) - bf, R)
    if weights is not None:
        delta = delta * weights.to(R.dtype)
    delta = _apply(_mask(iv, subspaces, n, delta), delta)
    out = bf + torch.matmul(delta, R.T)
    return _unfit(out.to(base.dtype), shape)


class RotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Distributed alignment search: interchange in a learned orthogonal basis ``R`` ``(n, n)``."""

    accepted_kwargs = frozenset()

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        _check_weight(self, n, n, "the rotation")
        self.rotate_layer = orthogonal_rotate_layer(n)

    def forward(self, base, source=None, subspaces=None):
        return _rotated_interchange(self, base, source, subspaces)


class LowRankRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Interchange along ``r = low_rank_dimension`` learned orthonormal directions ``W`` ``(n, r)``.

    Subspaces (and partitions) index the ``r`` directions.
    """

    accepted_kwargs = frozenset()

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        self.low_rank_dimension = _need_rank(self, kwargs)
        _check_weight(self, n, min(self.low_rank_dimension, n), "the low-rank rotation")
        self.rotate_layer = orthogonal_low_rank_layer(n, self.low_rank_dimension)

    def _mask_r(self, subspaces: Any, x: torch.Tensor) -> torch.Tensor | None:
        r = self.low_rank_dimension
        k = self.interchange_dim
        if subspaces is None and (k is None or _is_default_interchange(self) or (k.dim() == 0 and int(k) >= r)):
            return None
        return _mask(self, subspaces, r, x)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        n = _dim(self)
        b2, shape = _fit(base, n, self)
        s2, _ = _fit(src, n, self)
        W = self.rotate_layer.weight  # (n, r)
        bf = b2.to(W.dtype)
        delta = torch.matmul(s2.to(W.dtype) - bf, W)
        delta = _apply(self._mask_r(subspaces, delta), delta)
        out = bf + torch.matmul(delta, W.T)
        return _unfit(out.to(base.dtype), shape)


class BoundlessRotatedSpaceIntervention(_Temperature, TrainableIntervention, DistributedRepresentationIntervention):
    """Boundless DAS: a rotation plus a learned boundary ``β`` selecting the first ``βn`` rotated
    dimensions through a soft mask annealed by ``temperature``. Subspaces, when given, further
    restrict the mask."""

    accepted_kwargs = frozenset()

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    keep_last_dim_default = True  # pyvene does not flatten it; both layouts work here
    #: integer positions 0..n-1: kept in float32 when the intervention follows a bf16 model
    exact_buffers = ("intervention_population",)
    intervention_population: torch.Tensor  # a buffer: the rotated coordinates' indices

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        _check_weight(self, n, n, "the rotation")
        self.rotate_layer = orthogonal_rotate_layer(n)
        self.intervention_boundaries = nn.Parameter(torch.tensor([0.5]), requires_grad=True)
        self.temperature = nn.Parameter(torch.tensor(50.0), requires_grad=False)
        self.register_buffer("intervention_population", torch.arange(n, dtype=torch.float32))

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.intervention_boundaries

    def set_intervention_boundaries(self, boundaries: Any) -> None:
        with torch.no_grad():
            self.intervention_boundaries.copy_(torch.as_tensor(boundaries, dtype=torch.float32).reshape(1))

    def soft_mask(self) -> torch.Tensor:
        """The ``(n,)`` mask over rotated dimensions at the current temperature."""
        n = _dim(self)
        beta = torch.clamp(self.intervention_boundaries, 1e-3, 1.0)
        pos = self.intervention_population + 0.5
        t = self.temperature
        return torch.sigmoid(pos / t) * torch.sigmoid((beta * n - pos) / t)

    def forward(self, base, source=None, subspaces=None):
        return _rotated_interchange(self, base, source, subspaces, self.soft_mask())


class SigmoidMaskRotatedSpaceIntervention(_Temperature, TrainableIntervention, DistributedRepresentationIntervention):
    """A rotation plus a learned per-dimension soft mask ``σ(masks / T)`` over rotated dimensions."""

    accepted_kwargs = frozenset()

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        _check_weight(self, n, n, "the rotation")
        self.rotate_layer = orthogonal_rotate_layer(n)
        self.masks = nn.Parameter(torch.full((n,), 100.0), requires_grad=True)
        self.temperature = nn.Parameter(torch.tensor(50.0), requires_grad=False)

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.masks

    def forward(self, base, source=None, subspaces=None):
        return _rotated_interchange(self, base, source, subspaces, torch.sigmoid(self.masks / self.temperature))


class SigmoidMaskIntervention(_Temperature, TrainableIntervention, LocalistRepresentationIntervention):
    """A learned soft mask over the model's own features: ``out = b + σ(mask/T) ⊙ (s - b)``.

    The temperature reaches the mask's gradient (pyvene detached it).
    """

    accepted_kwargs = frozenset()

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    keep_last_dim_default = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        self.mask = nn.Parameter(torch.zeros(n), requires_grad=True)
        self.temperature = nn.Parameter(torch.tensor(0.01), requires_grad=False)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        n = _dim(self)
        b2, shape = _fit(base, n, self)
        s2, _ = _fit(src, n, self)
        m = torch.sigmoid(self.mask / self.temperature)
        delta = (s2 - b2) * m.to(b2.dtype)
        delta = _apply(_mask(self, subspaces, n, delta), delta)
        return _unfit(b2 + delta, shape)


# ---------------------------------------------------------------------------------------------
# fixed bases


class PCARotatedSpaceIntervention(BasisAgnosticIntervention, DistributedRepresentationIntervention):
    """Interchange in a PCA basis (not trained).

    Arguments: ``pca`` (any object with ``components_`` ``(k, n)`` and optionally ``mean_``, e.g. a
    fitted ``sklearn.decomposition.PCA``) or ``pca_components``; ``pca_mean`` (default: ``pca.mean_``
    or 0) and ``pca_std`` (default 1) standardise the input first. ``n_components`` alone builds an
    empty intervention to load weights into. Subspaces index the ``k`` components.
    """

    pca_components: torch.Tensor  # buffers, set from the data
    pca_mean: torch.Tensor
    pca_std: torch.Tensor

    accepted_kwargs = frozenset({"pca", "pca_components", "pca_mean", "pca_std", "n_components"})

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    keep_last_dim_default = False

    def __init__(self, **kwargs: Any) -> None:
        pca = kwargs.pop("pca", None)
        comps = kwargs.pop("pca_components", None)
        mean = kwargs.pop("pca_mean", None)
        std = kwargs.pop("pca_std", None)
        super().__init__(**kwargs)
        if comps is None and pca is not None:
            comps = getattr(pca, "components_", None)
            if comps is None:
                raise ConfigError("PCARotatedSpaceIntervention: `pca` has no components_ attribute (fit it first).")
            if mean is None and getattr(pca, "mean_", None) is not None:
                mean = pca.mean_
        if comps is None:
            k = kwargs.get("n_components")
            n = kwargs.get("embed_dim")
            if k is None or n is None:
                raise ConfigError(
                    "PCARotatedSpaceIntervention needs pca=<fitted PCA> or pca_components=<(k, n) "
                    "array> (or n_components and embed_dim to load saved weights into)."
                )
            comps = torch.zeros(int(k), int(n))
        comps = torch.as_tensor(comps, dtype=torch.float32)
        if comps.dim() != 2:
            raise ConfigError(f"PCA components must be a (k, n) matrix, got shape {tuple(comps.shape)}.")
        k, n = comps.shape
        if self.embed_dim is not None and _dim(self) != n:
            raise ConfigError(
                f"The PCA was fitted on {n} features but the site has embed_dim {_dim(self)}."
            )
        if self.embed_dim is None:
            self.register_buffer("embed_dim", torch.tensor(n))
            self.register_buffer("interchange_dim", torch.tensor(n))
        mean = torch.zeros(n) if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.ones(n) if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if std.numel() == 1:
            std = std.expand(n).clone()
        if mean.numel() == 1:
            mean = mean.expand(n).clone()
        for name, t in (("pca_mean", mean), ("pca_std", std)):
            if t.numel() != n:
                raise ConfigError(f"PCARotatedSpaceIntervention: {name} has {t.numel()} values for {n} features.")
        if not bool(torch.isfinite(comps).all()) or not bool((std > 0).all()):
            raise ConfigError("PCARotatedSpaceIntervention: the components must be finite and pca_std positive.")
        self.register_buffer("pca_components", comps)
        self.register_buffer("pca_mean", mean)
        self.register_buffer("pca_std", std)
        self.init_kwargs["n_components"] = int(k)
        self.init_kwargs["embed_dim"] = int(n)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        n = _dim(self)
        b2, shape = _fit(base, n, self)
        s2, _ = _fit(src, n, self)
        C = self.pca_components
        bf = b2.to(C.dtype)
        dz = torch.matmul((s2.to(C.dtype) - bf) / self.pca_std, C.T)  # (…, k)
        k = C.shape[0]
        m = _mask(self, subspaces, k, dz) if (subspaces is not None or not _is_default_interchange(self)) else None
        dz = _apply(m, dz)
        out = bf + torch.matmul(dz, C) * self.pca_std
        return _unfit(out.to(base.dtype), shape)


# ---------------------------------------------------------------------------------------------
# autoencoders


class AutoencoderIntervention(TrainableIntervention):
    """Interchange of autoencoder latents (an SAE with ``latent_dim`` latents).

    ``latent_dim`` (or ``low_rank_dimension``) is required. Subspaces index latents; without them
    every latent is swapped, or those named by ``set_interchange_dim`` (an index or a list of
    indices, as in pyvene). ``preserve_error`` (default True) keeps the reconstruction error.
    """

    accepted_kwargs = frozenset({"preserve_error"})

    units_sized = True  # its weights span embed_dim = max_number_of_units x the unit size

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = _need_embed_dim(self, kwargs)
        if kwargs.get("latent_dim") is None and kwargs.get("low_rank_dimension") is None:
            raise ConfigError(
                "AutoencoderIntervention needs latent_dim=<int> (or low_rank_dimension in the "
                "RepresentationConfig): the number of autoencoder latents."
            )
        self.latent_dim = _need_rank(self, kwargs, "latent_dim" if kwargs.get("latent_dim") is not None else "low_rank_dimension")
        self.preserve_error = bool(kwargs.get("preserve_error", True))
        _check_weight(self, n, self.latent_dim, "the encoder")
        self.autoencoder = AutoencoderLayer(n, self.latent_dim)

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        n = _dim(self)
        b2, shape = _fit(base, n, self)
        s2, _ = _fit(src, n, self)
        zb = self.autoencoder.encode(b2)
        zs = self.autoencoder.encode(s2)
        m = _mask(self, subspaces, self.latent_dim, zb, index_semantics=True)
        if self.preserve_error:
            dz = _apply(m, zs - zb)
            W = cast(nn.Linear, self.autoencoder.decoder[0]).weight  # (n, L)
            out = b2.to(W.dtype) + torch.matmul(dz, W.T)
        else:
            z = zs if m is None else torch.where(m, zs, zb)
            out = self.autoencoder.decode(z)
        return _unfit(out.to(base.dtype), shape)


class JumpReLUAutoencoderIntervention(TrainableIntervention):
    """Interchange of JumpReLU SAE latents (Gemma-Scope layout: ``W_enc`` ``(n, w)``, ``W_dec``
    ``(w, n)``, ``threshold``, ``b_enc``, ``b_dec``; ``w = low_rank_dimension``).

    Acts unit by unit (``keep_last_dim``), with ``n`` = the component size. Load released weights
    with ``load_state_dict``; the default initialisation (decoder rows of norm 1, encoder = decoder
    transposed, zero thresholds) makes a freshly built one trainable. Subspaces index latents.
    """

    accepted_kwargs = frozenset({"preserve_error"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs["keep_last_dim"] = True
        super().__init__(**kwargs)
        embed = _need_embed_dim(self, kwargs)
        units = int(kwargs.get("max_number_of_units") or 1)
        n = embed // units if embed % units == 0 else embed
        w = _need_rank(self, kwargs)
        _check_weight(self, n, w, "the encoder")
        self.unit_dim = n
        self.preserve_error = bool(kwargs.get("preserve_error", True))
        W_dec = torch.randn(w, n)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.W_dec = nn.Parameter(W_dec)
        self.threshold = nn.Parameter(torch.zeros(w), requires_grad=False)  # a step: no gradient
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.b_dec = nn.Parameter(torch.zeros(n))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.matmul(x.to(self.W_enc.dtype), self.W_enc) + self.b_enc
        return (pre > self.threshold).to(pre.dtype) * torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.matmul(z, self.W_dec) + self.b_dec

    def forward(self, base, source=None, subspaces=None):
        src = _source(self, base, source)
        b2, shape = _fit(base, self.unit_dim, self)
        s2, _ = _fit(src, self.unit_dim, self)
        zb = self.encode(b2)
        zs = self.encode(s2)
        m = _mask(self, subspaces, self.W_enc.shape[1], zb)
        if self.preserve_error:
            out = b2.to(self.W_dec.dtype) + torch.matmul(_apply(m, zs - zb), self.W_dec)
        else:
            out = self.decode(zs if m is None else torch.where(m, zs, zb))
        return _unfit(out.to(base.dtype), shape)


# ---------------------------------------------------------------------------------------------
# LoRA


def _input_dim_of(module: nn.Module) -> int | None:
    """Input feature size of a module: its own, or its first Linear-like submodule's."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
        w = getattr(m, "weight", None)
        if type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor):  # transformers GPT-2
            return int(w.shape[0])
    return None


class LoRAIntervention(TrainableIntervention):
    """A LoRA adapter as an intervention: ``out = base + dropout(x) A B · (lora_alpha / r)``.

    ``x`` is the hooked module's **input** at the selected units (so on ``"mlp_output"`` it adapts
    the MLP as ``h' = mlp(x) + x A B``; on an input site ``x`` is the base itself). ``A``
    ``(input_dim, r)`` is Kaiming-initialised and ``B`` ``(r, d)`` zero, so a fresh adapter changes
    nothing. Needs no source. Arguments: ``low_rank_dimension`` (r, required), ``input_dim``
    (inferred from the module when built from a config), ``lora_alpha`` (default r),
    ``lora_dropout`` (default 0). Subspaces restrict which output features change.
    """

    accepted_kwargs = frozenset({"lora_alpha", "lora_dropout", "input_dim"})

    uses_module_input = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs["keep_last_dim"] = True
        super().__init__(**kwargs)
        self.is_source_constant = True
        embed = _need_embed_dim(self, kwargs)
        units = int(kwargs.get("max_number_of_units") or 1)
        self.output_dim = embed // units if embed % units == 0 else embed
        self.rank = _need_rank(self, kwargs)
        _check_weight(self, self.output_dim, self.rank, "lora_B")
        self.scaling = float(kwargs.get("lora_alpha") or self.rank) / self.rank
        self.dropout = nn.Dropout(float(kwargs.get("lora_dropout") or 0.0))
        self.input_dim: int | None = None
        if kwargs.get("input_dim") is not None:
            self._build(int(kwargs["input_dim"]))

    def _build(self, input_dim: int) -> None:
        self.input_dim = input_dim
        self.init_kwargs["input_dim"] = input_dim
        a = torch.empty(input_dim, self.rank)
        nn.init.kaiming_uniform_(a.T, a=5 ** 0.5)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(self.rank, self.output_dim))

    def bind_site(self, module: nn.Module, site: Any) -> None:
        """Called by ``IntervenableModel`` with the hooked module: infers ``input_dim``."""
        if self.input_dim is not None:
            return
        d = site.dim if site.io == "input" else _input_dim_of(module)
        if d is None:
            raise ConfigError(
                f"LoRAIntervention cannot infer the input size of {type(module).__name__}; pass an "
                "instance with input_dim=..., e.g. LoRAIntervention(embed_dim=..., input_dim=..., low_rank_dimension=8)."
            )
        self._build(int(d))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        if self.input_dim is None:
            raise ConfigError("LoRAIntervention has no input_dim yet: build it with input_dim=... or through an IntervenableModel.")
        x = kwargs.get("module_input")
        if x is None:
            args = kwargs.get("args") or ()
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is None or x.shape[:-1] != base.shape[:-1]:
                raise ShapeMismatchError(
                    "LoRAIntervention needs the module's input at the selected units; call it through "
                    "an IntervenableModel, or pass module_input=<tensor of shape base.shape[:-1] + (input_dim,)>."
                )
        if x.shape[-1] != self.input_dim:
            raise ShapeMismatchError(
                f"LoRAIntervention expects inputs with {self.input_dim} features, got shape {tuple(x.shape)}."
            )
        b2, shape = _fit(base, self.output_dim, self)
        if shape is not None:
            x = x.reshape(*b2.shape[:-1], -1)
        delta = torch.matmul(torch.matmul(self.dropout(x.to(self.lora_A.dtype)), self.lora_A), self.lora_B) * self.scaling
        delta = _apply(_mask(self, subspaces, self.output_dim, delta) if subspaces is not None else None, delta)
        return _unfit(b2 + delta.to(b2.dtype), shape)
