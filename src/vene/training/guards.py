"""Checks run before an intervened call that needs gradients."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


def check_gradient_checkpointing(intervenable: Any) -> None:
    """Refuse to run with activation (gradient) checkpointing active while recording gradients.

    Checkpointed layers recompute their forward pass during ``backward``, after vene has removed
    its hooks, so the recomputation would run *without* the interventions: gradients would be
    silently wrong (or torch would fail with an obscure checkpoint error). The modules that carry
    a ``gradient_checkpointing`` flag (transformers models) are looked up once and cached.
    """
    if not torch.is_grad_enabled():
        return
    mods = intervenable.__dict__.get("_gc_modules")
    if mods is None:
        mods = [m for m in intervenable.model.modules() if hasattr(m, "gradient_checkpointing")]
        intervenable.__dict__["_gc_modules"] = mods
    for m in mods:
        if getattr(m, "gradient_checkpointing", False) is True and m.training:
            raise ConfigError(
                "Gradient (activation) checkpointing is enabled on the wrapped model; checkpointed layers "
                "recompute their forward pass during backward, after vene's hooks are removed, so "
                "gradients would ignore the interventions. Call "
                "model.activation_checkpointing_disable() (gradient_checkpointing_disable() on "
                "older transformers), or run this call under torch.no_grad() or with the model in "
                "eval mode, before training through interventions."
            )
