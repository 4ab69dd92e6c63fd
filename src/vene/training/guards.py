"""Checks run before an intervened call that needs gradients."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import ConfigError
from ..hooks import checkpointing_modules


def check_gradient_checkpointing(intervenable: Any) -> None:
    """Refuse activation (gradient) checkpointing that vene cannot follow, while recording gradients.

    Checkpointed layers recompute their forward pass during ``backward``, after the call's hooks
    are removed. Layers checkpointed through transformers' ``_gradient_checkpointing_func`` (what
    ``model.gradient_checkpointing_enable()`` / ``activation_checkpointing_enable()`` set up) are
    supported: :class:`~vene.hooks.HookSession` re-applies the interventions in the recomputation.
    A module flagged ``gradient_checkpointing`` without such a function checkpoints in a way vene
    cannot see, and its gradients would silently ignore the interventions: that is refused here.
    """
    if not torch.is_grad_enabled():
        return
    for m in checkpointing_modules(intervenable.model):
        if getattr(m, "gradient_checkpointing", False) is not True or not m.training:
            continue
        func = m.__dict__.get("_gradient_checkpointing_func")
        if callable(func) and intervenable.model_has_grad and getattr(func, "keywords", {}).get("use_reentrant") is True \
                and not intervenable.__dict__.get("_warned_reentrant"):
            intervenable.__dict__["_warned_reentrant"] = True
            warnings.warn(
                "Reentrant gradient checkpointing (use_reentrant=True) with model gradients on: a "
                "source activation read inside a checkpointed layer reaches the base run outside "
                "torch's checkpoint, which records no graph for it, so the model's gradient through "
                "the source runs is dropped (the interventions' own gradients are exact). Use "
                "gradient_checkpointing_enable({'use_reentrant': False}), the transformers default.",
                stacklevel=5,  # the user's call of the IntervenableModel
            )
        if not callable(func):
            raise ConfigError(
                f"Gradient (activation) checkpointing is enabled on {type(m).__name__} without a "
                "_gradient_checkpointing_func, so vene cannot re-apply the interventions when "
                "backward recomputes it and gradients would ignore them. Enable checkpointing "
                "with model.gradient_checkpointing_enable() (transformers), or disable it, or run "
                "this call under torch.no_grad() or with the model in eval mode."
            )
