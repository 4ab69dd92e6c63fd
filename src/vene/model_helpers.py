"""pyvene-compatible helpers of ``IntervenableModel``: devices, gradients, parameters, training."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from . import training


def _unique_trainable(modules: Any) -> Iterator[nn.Parameter]:
    """Parameters that require grad, each once (linked interventions share theirs)."""
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p


class ParameterHelpersMixin:
    """Mixed into :class:`vene.IntervenableModel` (which provides ``model`` and ``interventions``)."""

    model: nn.Module
    interventions: nn.ModuleDict
    model_has_grad: bool

    def get_device(self) -> torch.device:
        """Where the model takes its inputs: accelerate's main device for a ``device_map`` /
        offloaded model, else the device of its first (non-meta) parameter, else cpu."""
        from .placement import model_device

        return model_device(self.model)

    def set_device(self, device: Any, set_model: bool = True) -> None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            from .errors import ConfigError

            raise ConfigError(
                f"set_device: {device!r} is not a device ({str(e).splitlines()[0][:120]}); use e.g. "
                "'cpu', 'cuda', 'cuda:1' or a torch.device."
            ) from None
        for iv in self.interventions.values():
            iv.to(device)
        if set_model:
            self.model.to(device)

    def enable_model_gradients(self) -> None:
        """Train the wrapped model too (interchange intervention training)."""
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model_has_grad = True

    def disable_model_gradients(self) -> None:
        """Freeze the wrapped model and put it in eval mode."""
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model_has_grad = False

    def disable_intervention_gradients(self) -> None:
        for iv in self.interventions.values():
            for p in iv.parameters():
                p.requires_grad_(False)

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter that requires grad, each once (linked interventions share theirs):
        the interventions', then the model's (none while it is frozen, the default after wrapping;
        all of them after :meth:`enable_model_gradients`)."""
        return list(_unique_trainable(list(self.interventions.values()) + [self.model]))

    def count_parameters(self, include_model: bool = False) -> int:
        """Number of intervention parameters that require grad (each once), plus, with
        ``include_model``, the model's (the same rule as :meth:`get_trainable_parameters`)."""
        modules = list(self.interventions.values()) + ([self.model] if include_model else [])
        return sum(p.numel() for p in _unique_trainable(modules))

    def set_temperature(self, temp: Any) -> None:
        """Set the temperature of every annealed intervention (boundless, sigmoid masks)."""
        for iv in training.annealed_interventions(self):
            iv.set_temperature(temp)

    def train_alignment(self, *args: Any, **kwargs: Any) -> Any:
        """pyvene's training loop: :func:`vene.training.train_alignment` on this model."""
        return training.train_alignment(self, *args, **kwargs)

    def eval_alignment(self, *args: Any, **kwargs: Any) -> Any:
        """pyvene's evaluation loop: :func:`vene.training.eval_alignment` on this model."""
        return training.eval_alignment(self, *args, **kwargs)

    def set_zero_grad(self) -> None:
        for iv in self.interventions.values():
            iv.zero_grad()
