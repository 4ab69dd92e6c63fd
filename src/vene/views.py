"""Head views: how a hooked tensor is laid out as a site's units, without copying.

Owns every reshape between a module's tensor and the ``(batch, unit, *features)`` /
``(batch, heads, seq, features)`` layouts that locations index, and the merge of a head
selection into one feature axis (and back) for interventions that want a flat vector.
A *view spec* (``Site.view``) is ``None``; ``("chunk", i, n)`` (the i-th of n equal slices of
the last dim); ``("heads", n_heads_key)``; ``("chunk_heads", i, n, n_heads_key)``;
``("neox_qkv", i)`` / ``("neox_qkv_heads", i)`` (GPT-NeoX's interleaved fused q/k/v);
``("slice", start, size)`` / ``("slice_heads", start, size)``; ``("interleaved", slot, n_slots)`` /
``("interleaved_heads", slot, n_slots)`` (per-group fused q/k/v; ``n_heads`` counts the groups);
``("grouped", n_query_slots, n_slots)`` (multi-query fused q/k/v, three feature axes).
"""
from __future__ import annotations

import torch


def make_view(x: torch.Tensor, view: tuple | None, n_heads: int | None) -> torch.Tensor:
    """Return a view of ``x`` laid out as the site's units expect (no copy)."""
    if view is None:
        return x
    kind = view[0]
    if kind == "chunk":
        _, i, n = view
        size = x.shape[-1] // n
        return x.narrow(-1, i * size, size)
    if kind == "heads":
        return split_heads(x, n_heads)
    if kind == "chunk_heads":
        _, i, n, _ = view
        size = x.shape[-1] // n
        return split_heads(x.narrow(-1, i * size, size), n_heads)
    if kind == "slice":  # features [start, start + size) of the last dim
        return x.narrow(-1, view[1], view[2])
    if kind == "slice_heads":
        return split_heads(x.narrow(-1, view[1], view[2]), n_heads)
    if kind in ("interleaved", "interleaved_heads", "grouped"):
        # last dim laid out as (n_heads groups, n_slots, head_dim): take one slot of each group
        # (n_heads here counts the groups); "grouped" takes the slots [0, slot) of each group
        _, slot, n_slots = view
        n_heads = _need_heads(view, n_heads)
        b_s = x.shape[:-1]
        d = x.shape[-1] // (n_heads * n_slots)
        g = x.view(*b_s, n_heads, n_slots, d)
        if kind == "grouped":
            return g.narrow(-2, 0, slot)  # (b, s, groups, slot, d): three feature dims
        v = g.select(-2, slot)  # (b, s, H, d)
        return v.transpose(1, 2) if kind == "interleaved_heads" else v
    if kind in ("neox_qkv", "neox_qkv_heads"):
        i = view[1]
        n_heads = _need_heads(view, n_heads)
        b_s = x.shape[:-1]
        per_head = x.shape[-1] // n_heads
        v = x.view(*b_s, n_heads, 3, per_head // 3).select(-2, i)  # (b, s, H, dh)
        if kind == "neox_qkv_heads":
            return v.transpose(1, 2)  # (b, H, s, dh)
        return v  # (b, s, H, dh): two feature dims, merged by flatten_features
    raise ValueError(f"unknown view {view!r}")


def _need_heads(view: tuple | None, n_heads: int | None) -> int:
    if n_heads is None:
        raise ValueError(f"the view {view!r} needs the number of heads, got n_heads=None")
    return n_heads


def split_heads(x: torch.Tensor, n_heads: int | None) -> torch.Tensor:
    """``(b, s, H * d)`` -> ``(b, H, s, d)`` (a view)."""
    n_heads = _need_heads(("heads",), n_heads)
    b_s = x.shape[:-1]
    d = x.shape[-1] // n_heads
    return x.view(*b_s, n_heads, d).transpose(1, 2)


def feature_ndim(view: tuple | None) -> int:
    """Number of feature axes of one unit (2 for NeoX q/k/v and interleaved fused q/k/v without a
    head split, 3 for grouped (multi-query) fused q/k/v)."""
    if view is None:
        return 1
    return {"neox_qkv": 2, "interleaved": 2, "grouped": 3}.get(view[0], 1)


def flatten_features(t: torch.Tensor, view: tuple | None, n_lead: int) -> torch.Tensor:
    """Merge multi-dim features (NeoX q/k/v) into one feature axis."""
    if feature_ndim(view) == 1:
        return t
    return t.reshape(*t.shape[:n_lead], -1)


def merge_units(t: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """One flat vector per example (``(b, U, d)`` -> ``(b, U * d)``) or per position
    (``(b, H, P, d)`` -> ``(b, P, H * d)``, heads concatenated); returns what
    :func:`unmerge_units` needs."""
    if t.dim() == 3:
        return t.reshape(t.shape[0], -1), tuple(t.shape)
    if t.dim() == 4:
        return t.permute(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1), tuple(t.shape)
    return t, None


def unmerge_units(t: torch.Tensor, shape: tuple | None) -> torch.Tensor:
    """Inverse of :func:`merge_units`."""
    if shape is None:
        return t
    if len(shape) == 3:
        return t.reshape(shape)
    b, h, p, d = shape
    return t.reshape(b, p, h, d).permute(0, 2, 1, 3)
