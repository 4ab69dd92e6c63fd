"""Batching: the row layout of fused calls.

A fused call runs the base and its sources in **one** forward pass. Its batch is the
concatenation of blocks of ``B`` rows, ``[original base?] [base] [source 0] [source 1] ...``
(a source shared by several groups gets one block); getters read a source's block, setters
write the base block (or, in serial mode, the next source's block). This module owns that
layout (:class:`RowLayout`), when fusing is possible and pays (:func:`can_fuse`), building the
fused inputs and taking a block's rows back out of the model output (:func:`select_rows`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SourceError
from .plan import CallPlan

#: Largest fused batch (rows x tokens x hidden width) for ``batch_sources="auto"`` on CPU. Measured
#: on 2 cores: a fused pass wins below it (SmolLM2 b=1: 0.58x of two hand-hooked passes), separate
#: passes with early stopping win above it (SmolLM2 b=4: 0.72x vs 0.77x fused).
FUSE_BUDGET = 45_000
#: The same on CUDA, where batching stays latency-bound for much larger batches (not yet measured).
FUSE_BUDGET_CUDA = 4_000_000

_WIDTH_NAMES = ("hidden_size", "n_embd", "d_model", "h_dim")


@dataclass
class RowLayout:
    """Where each block of a fused batch lives."""

    total: int
    base_rows: slice
    original_rows: slice | None
    getter_rows: dict[int, slice]  # group -> rows its getters read
    target_rows: dict[int, slice]  # group written into (n_groups: the base) -> rows
    blocks: list[Mapping]

    def inputs(self, base: Mapping) -> dict:
        """The fused model inputs: batch tensors concatenated in block order."""
        out = {}
        for k, v in base.items():
            out[k] = torch.cat([b[k] for b in self.blocks], 0) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
        return out


def layout(plan: CallPlan, base: Mapping, want_original: bool) -> RowLayout:
    """Lay out the base, the original base (when asked) and the sources a call needs."""
    B = plan.batch
    blocks: list[Mapping] = []
    offset = 0
    orig_rows = None
    if want_original:
        blocks.append(base)
        orig_rows = slice(0, B)
        offset = B
    base_rows = slice(offset, offset + B)
    blocks.append(base)
    offset += B
    row_of_source: dict[int, slice] = {}
    getter_rows: dict[int, slice] = {}
    # serial mode: every group's source needs its own rows (it is written into)
    needed = sorted(set(plan.groups_read()) | (plan.groups_written() if plan.serial else set()))
    for g in needed:
        src = plan.sources[g]
        if src is None:
            raise SourceError(f"Serial mode writes into source {g}, but source {g} is None.")
        if not plan.serial and id(src) in row_of_source:
            getter_rows[g] = row_of_source[id(src)]
            continue
        rows = slice(offset, offset + B)
        blocks.append(src)
        offset += B
        row_of_source[id(src)] = rows
        getter_rows[g] = rows
    target_rows: dict[int, slice] = {plan.n_groups: base_rows}
    if plan.serial:
        for g in needed:
            target_rows[g] = getter_rows[g]
    return RowLayout(offset, base_rows, orig_rows, getter_rows, target_rows, blocks)


def _same_inputs(a: Mapping, b: Mapping) -> bool:
    if set(a.keys()) != set(b.keys()):
        return False
    for k, v in a.items():
        w = b[k]
        if isinstance(v, torch.Tensor):
            if not isinstance(w, torch.Tensor) or v.shape != w.shape or v.dtype != w.dtype or v.device != w.device:
                return False
        elif isinstance(w, torch.Tensor) or v != w:
            return False
    return True


def _fusion_pays(plan: CallPlan, base: Mapping, want_original: bool, model_config: Any) -> bool:
    """Whether one fused pass beats separate passes (measured: benchmarks/interchange.py)."""
    blocks = 1 + int(want_original) + len({id(s) for s in plan.sources if s is not None})
    tokens, device = 1, None
    for v in base.values():
        if isinstance(v, torch.Tensor) and v.dim() >= 2:
            tokens, device = v.shape[1], v.device
            break
    width = next((getattr(model_config, a) for a in _WIDTH_NAMES if isinstance(getattr(model_config, a, None), int)), 1024)
    budget = FUSE_BUDGET_CUDA if device is not None and device.type == "cuda" else FUSE_BUDGET
    return plan.batch * blocks * tokens * width <= budget


def can_fuse(plan: CallPlan, base: Mapping, policy: bool | str, want_original: bool, model_config: Any,
             batch_coupled: bool) -> bool:
    """Whether a call may (and, with ``policy="auto"``, should) run as one fused pass.
    ``batch_coupled``: something couples the rows of a batch (BatchNorm in training, labels
    reduced over the batch, a cache or recurrent state), so blocks cannot share a batch."""
    if not policy or batch_coupled:
        return False
    if policy == "auto" and not _fusion_pays(plan, base, want_original, model_config):
        return False
    return all(s is None or _same_inputs(base, s) for s in plan.sources)


def select_rows(obj: Any, rows: slice, total: int) -> Any:
    """Take batch rows ``rows`` out of a model output (tensors, tuples, dicts, ModelOutputs)."""
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() > 0 and obj.shape[0] == total else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(select_rows(v, rows, total) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(select_rows(v, rows, total) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: select_rows(v, rows, total) for k, v in obj.items()}
        make: Any = type(obj)  # a dict, or a ModelOutput-like mapping taking keywords
        try:
            return make(**items)
        except TypeError:
            return make(items)
    return obj
