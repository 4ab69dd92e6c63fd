"""Small learnable layers used by the trainable interventions.

* :class:`RotateLayer`: an ``n x n`` matrix, applied as ``x @ weight``. Wrapped with
  :func:`torch.nn.utils.parametrizations.orthogonal` it stays orthogonal during training (the
  parametrisation keeps pyvene's state-dict names ``rotate_layer.parametrizations.weight.*``).
* :class:`LowRankRotateLayer`: an ``n x r`` matrix with orthonormal columns (same wrapping).
* :class:`AutoencoderLayer`: a one-hidden-layer ReLU autoencoder (the SAE shape).
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ..errors import ConfigError


class LowRankRotateLayer(nn.Module):
    """``x @ weight`` with an ``(n, m)`` weight whose columns are orthonormal (``m <= n``)."""

    def __init__(self, n: int, m: int, init_orth: bool = True) -> None:
        super().__init__()
        if m > n:
            raise ConfigError(f"low_rank_dimension ({m}) cannot exceed the representation size ({n}).")
        weight = torch.empty(n, m)
        if init_orth:
            nn.init.orthogonal_(weight)
        else:
            nn.init.normal_(weight)
        self.weight = nn.Parameter(weight, requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(self.weight.dtype), self.weight)


class RotateLayer(LowRankRotateLayer):
    """``x @ weight`` with a square ``(n, n)`` weight (orthogonally initialised)."""

    def __init__(self, n: int, init_orth: bool = True) -> None:
        super().__init__(n, n, init_orth)


def orthogonal_rotate_layer(n: int) -> RotateLayer:
    """A :class:`RotateLayer` kept orthogonal by a parametrisation (the same module, its
    ``weight`` now computed by the parametrisation)."""
    return cast(RotateLayer, orthogonal(RotateLayer(n)))


def orthogonal_low_rank_layer(n: int, m: int) -> LowRankRotateLayer:
    """A :class:`LowRankRotateLayer` whose columns stay orthonormal (a parametrisation)."""
    return cast(LowRankRotateLayer, orthogonal(LowRankRotateLayer(n, m)))


class AutoencoderLayer(nn.Module):
    """``encode(x) = ReLU((x - b_dec) W_enc^T + b_enc)``, ``decode(z) = z W_dec^T + b_dec``."""

    def __init__(self, input_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.latent_dim = int(latent_dim)
        self.encoder = nn.Sequential(nn.Linear(self.input_dim, self.latent_dim, bias=True), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(self.latent_dim, self.input_dim, bias=True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        bias = cast(nn.Linear, self.decoder[0]).bias
        x = x.to(bias.dtype)
        return self.encoder(x - bias)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> dict:
        latent = self.encode(x)
        return {"latent": latent, "output": self.decode(latent)}
