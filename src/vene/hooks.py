"""Owning hooks: install ours for one call, remove exactly ours afterwards.

Also hosts vene's *probe attention*: transformers 5 computes attention probabilities inside a
function (no module sees them), so for ``attention_weight`` sites vene temporarily switches the
model's attention implementation to an eager implementation of its own that passes the
probabilities through :func:`_apply_probes`, where our getters and setters act on them.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError

# ---------------------------------------------------------------------------------------------
# tensor access inside hooks


def first_tensor(value: Any) -> tuple[torch.Tensor | None, Callable[[Any], Any]]:
    """Find the main tensor of a module output/input; return it and a function rebuilding the
    container with a replacement tensor (or any placeholder object) in its place."""
    if isinstance(value, torch.Tensor):
        return value, lambda t: t
    if isinstance(value, tuple) and value:
        t, rebuild = first_tensor(value[0])
        if t is None:
            return None, lambda t: value
        return t, lambda new: (rebuild(new),) + tuple(value[1:])
    if isinstance(value, list) and value:
        t, rebuild = first_tensor(value[0])
        return t, lambda new: [rebuild(new)] + list(value[1:])
    if isinstance(value, dict) and value:
        k = next(iter(value))
        t, rebuild = first_tensor(value[k])

        def rb(new: torch.Tensor) -> Any:
            value[k] = rebuild(new)  # the module's own fresh output container
            return value

        return t, rb
    return None, lambda t: value


_INPUT_KWARGS = ("hidden_states", "x", "input", "inputs", "input_ids", "inputs_embeds")


def input_tensor(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, Callable[[Any], tuple]]:
    """The main input of a module call (positional first, then a known keyword)."""
    if args:
        t, rebuild = first_tensor(args[0])
        if t is not None:
            return t, lambda new: ((rebuild(new),) + tuple(args[1:]), kwargs)
    for name in _INPUT_KWARGS:
        if name in kwargs and isinstance(kwargs[name], torch.Tensor):
            def rb(new: torch.Tensor, name: str = name) -> tuple:
                kw = dict(kwargs)
                kw[name] = new
                return args, kw
            return kwargs[name], rb
    for name, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            def rb2(new: torch.Tensor, name: str = name) -> tuple:
                kw = dict(kwargs)
                kw[name] = new
                return args, kw
            return v, rb2
    return None, lambda new: (args, kwargs)


# ---------------------------------------------------------------------------------------------
# probe attention

_probe_lock = threading.RLock()
_PROBES: dict[int, Callable[[nn.Module, torch.Tensor], torch.Tensor | None]] = {}
_PROBE_NAME = "vene_probe_eager"
_registered = False


def _apply_probes(module: nn.Module, probs: torch.Tensor) -> torch.Tensor:
    fn = _PROBES.get(id(module))
    if fn is None:
        return probs
    out = fn(module, probs)
    return probs if out is None else out


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def probe_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that exposes its probabilities ``(batch, heads, q, k)`` to vene."""
    if getattr(module, "sinks", None) is not None:
        raise ConfigError("attention_weight is not supported for attention with sinks (gpt-oss).")
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    value = _repeat_kv(value, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:  # T5's relative-position bias, added before the mask
        scores = scores + position_bias
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = _apply_probes(module, probs)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _ensure_registered() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(_PROBE_NAME, probe_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_PROBE_NAME, eager_mask)
    _registered = True


class _AttnSwitch:
    """Temporarily route a model's attention through :func:`probe_eager_attention`.

    The implementation is switched on every config that a probed attention module reads: the
    model's own and, for wrappers whose language model has its own sub-config (LLaVA, Gemma-3
    ``ForConditionalGeneration``: ``text_config``), the probed module's ``config``.
    """

    def __init__(self, model: nn.Module) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "_attn_implementation"):
            raise ConfigError(
                "attention_weight needs a transformers model whose attention goes through "
                "config._attn_implementation; for other models hook the module that receives the "
                "probabilities with a path such as 'h[0].attn.attn_dropout.input'."
            )
        self.saved: list[tuple[Any, Any]] = []
        self.pending = [cfg]

    def add(self, module: nn.Module) -> None:
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            self.pending.append(cfg)
            if self.saved:  # already entered: switch this one now
                self.__enter__()

    def __enter__(self) -> "_AttnSwitch":
        _ensure_registered()
        for cfg in self.pending:
            if all(c is not cfg for c, _ in self.saved):
                self.saved.append((cfg, cfg._attn_implementation))
                cfg._attn_implementation = _PROBE_NAME
        self.pending = []
        return self

    def __exit__(self, *exc: Any) -> None:
        for cfg, previous in reversed(self.saved):
            cfg._attn_implementation = previous
        self.saved = []


# ---------------------------------------------------------------------------------------------


class HookSession:
    """Hooks of one call. Removes exactly what it added, also when the call raises."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[Any] = []
        self.probe_ids: list[int] = []
        self.attn_switch: _AttnSwitch | None = None

    def add(self, module: nn.Module, io: str, fn: Callable) -> None:
        """``fn(module, tensor, fire_index, module_args) -> replacement tensor or None``."""
        counter = [0]
        if io == "output":
            def hook(mod, args, kwargs, output):
                t, rebuild = first_tensor(output)
                if t is None:
                    raise ConfigError(f"{type(mod).__name__} returned no tensor to intervene on.")
                i = counter[0]
                counter[0] += 1
                new = fn(mod, t, i, args)
                return None if new is None else rebuild(new)

            self.handles.append(module.register_forward_hook(hook, with_kwargs=True))
        elif io == "input":
            def pre_hook(mod, args, kwargs):
                t, rebuild = input_tensor(args, kwargs)
                if t is None:
                    raise ConfigError(f"{type(mod).__name__} was called without a tensor input to intervene on.")
                i = counter[0]
                counter[0] += 1
                new = fn(mod, t, i, args)
                return None if new is None else rebuild(new)

            self.handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        elif io == "attn_probs":
            if self.attn_switch is None:
                self.attn_switch = _AttnSwitch(self.model)
                self.attn_switch.__enter__()
            self.attn_switch.add(module)

            def probe(mod, probs):
                i = counter[0]
                counter[0] += 1
                return fn(mod, probs, i, ())

            with _probe_lock:
                if id(module) in _PROBES:
                    raise ConfigError("Another vene call is already probing this attention module.")
                _PROBES[id(module)] = probe
            self.probe_ids.append(id(module))
        else:  # pragma: no cover
            raise ValueError(io)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        with _probe_lock:
            for pid in self.probe_ids:
                _PROBES.pop(pid, None)
        self.probe_ids.clear()
        if self.attn_switch is not None:
            self.attn_switch.__exit__(None, None, None)
            self.attn_switch = None

    def __enter__(self) -> "HookSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
