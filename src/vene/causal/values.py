"""Comparing and looking up variable values (which may be tensors, arrays or containers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

__all__ = ["values_equal", "lookup_class"]


def values_equal(a: Any, b: Any) -> bool:
    """Equality that also works for tensors / arrays / nested containers."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        except (TypeError, ValueError, RuntimeError):
            return False
        if ta.shape != tb.shape:
            return False
        return bool((ta.detach().cpu() == tb.detach().cpu()).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    try:
        result = a == b
    except Exception:  # noqa: BLE001 - exotic types whose == raises
        return False
    if isinstance(result, bool):
        return result
    shape_a, shape_b = getattr(a, "shape", None), getattr(b, "shape", None)
    if shape_a is not None and shape_b is not None and tuple(shape_a) != tuple(shape_b):
        return False
    if hasattr(result, "all"):
        try:
            return bool(result.all())
        except Exception:  # noqa: BLE001
            return False
    try:
        return bool(result)
    except Exception:  # noqa: BLE001
        return False


def lookup_class(table: Mapping, value: Any) -> Optional[list]:
    """``table[value]`` for an equivalence table, tolerating unhashable values."""
    try:
        if value in table:
            return table[value]
    except TypeError:
        pass
    for key, settings in table.items():
        if values_equal(key, value):
            return settings
    return None
