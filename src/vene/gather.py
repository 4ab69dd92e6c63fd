"""Gather / scatter: read and write the units a :class:`~vene.locations.Loc` selects.

The one place where index tensors meet activations: every getter, setter and collect (forward,
generate, sweeps) reads with :func:`gather` and writes with :func:`scatter` (or
:func:`scatter_masked` when only some selected units are real, as in generation steps).
Shapes: a one-level selection of ``v`` ``(batch, units, *f)`` is ``(rows, U, *f)``; a two-level
one (``"h.pos"``) of ``v`` ``(batch, heads, seq, *f)`` is ``(rows, H, P, *f)``.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import LocationError
from .locations import Loc


def gather(v: torch.Tensor, loc: Loc | None, key: str, side: str, axes: tuple[str, str]) -> torch.Tensor:
    """Selected units of ``v`` (``v`` itself when ``loc`` is None; a slice view for a span).
    ``axes`` names axes 1 and 2 for error messages."""
    if loc is None:
        return v
    idx, idx2, b = loc.on(v.device)
    if loc.max1 >= v.shape[1]:
        raise LocationError(
            f"{key}: {side} location {loc.max1} is out of range: {axes[0]} has "
            f"{v.shape[1]} entries (0..{v.shape[1] - 1})."
        )
    if idx2 is None:
        if loc.rows is None and loc.batch != v.shape[0]:
            raise LocationError(f"{key}: {side} locations cover {loc.batch} examples but the batch has {v.shape[0]}.")
        if loc.span is not None:
            return v.narrow(1, loc.span[0], loc.span[1])  # a view: callers copy when they keep it
        if loc.shared:
            return v.index_select(1, idx)
        return v[b, idx]
    if loc.max2 >= v.shape[2]:
        raise LocationError(
            f"{key}: {side} location {loc.max2} is out of range: {axes[1]} has "
            f"{v.shape[2]} entries (0..{v.shape[2] - 1})."
        )
    return v[b.unsqueeze(2), idx.unsqueeze(2), idx2.unsqueeze(1)]


def scatter(v: torch.Tensor, loc: Loc | None, new: torch.Tensor) -> None:
    """Write ``new`` (shaped like ``gather(v, loc)``) into ``v`` in place."""
    if loc is None:
        if new.data_ptr() != v.data_ptr():
            v.copy_(new)
        return
    idx, idx2, b = loc.on(v.device)
    if idx2 is None:
        if loc.span is not None:
            dst = v.narrow(1, loc.span[0], loc.span[1])
            if new.data_ptr() != dst.data_ptr():
                dst.copy_(new)
        elif loc.shared:
            v.index_copy_(1, idx, new)
        else:
            v[b, idx] = new
    else:
        v[b.unsqueeze(2), idx.unsqueeze(2), idx2.unsqueeze(1)] = new


def scatter_masked(v: torch.Tensor, loc: Loc, new: torch.Tensor, mask: torch.Tensor) -> None:
    """Write only the selected units where ``mask`` is True (``(batch, units)``, or
    ``(batch, 1, positions)`` for two-level units)."""
    idx, idx2, b = loc.on(v.device)
    if idx2 is None:
        m = mask.expand(idx.shape)
        v[b.expand(idx.shape)[m], idx[m]] = new[m]
    else:
        grid = (idx.shape[0], idx.shape[1], idx2.shape[1])
        m = mask.expand(grid)
        bb, i1, i2 = b.unsqueeze(2).expand(grid), idx.unsqueeze(2).expand(grid), idx2.unsqueeze(1).expand(grid)
        v[bb[m], i1[m], i2[m]] = new[m]


def keep_masked(new: torch.Tensor, mask: torch.Tensor) -> Any:
    """The units of a selection where ``mask`` holds, per example, in unit order:
    ``(batch, kept, d)`` (``(batch, heads, kept, d)``) when every example keeps as many units,
    else a list with one tensor per example."""
    m = mask.reshape(mask.shape[0], -1)
    axis = 1 if mask.dim() == 2 else 2
    counts = m.sum(1)
    k = int(counts[0])
    if bool((counts == k).all()):
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]
        shape = [order.shape[0]] + [1] * (new.dim() - 1)
        shape[axis] = k
        full = list(new.shape)
        full[axis] = k
        return new.gather(axis, order.view(shape).expand(full))
    return [new[i].index_select(axis - 1, m[i].nonzero().squeeze(1)) for i in range(new.shape[0])]
