"""Owning hooks: install ours for one call, remove exactly ours afterwards.

Also hosts vene's *probe attention*: transformers 5 computes attention probabilities inside a
function (no module sees them), so for ``attention_weight`` sites vene temporarily switches the
model's attention implementation to an eager implementation of its own that passes the
probabilities through :func:`_apply_probes`, where our getters and setters act on them.
"""
from __future__ import annotations

import functools
import threading
import weakref
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


_GC_LAYERS: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


def checkpointing_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that carry transformers' ``gradient_checkpointing`` flag (cached)."""
    mods = _GC_LAYERS.get(model)
    if mods is None:
        mods = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        _GC_LAYERS[model] = mods
    return mods


_CALL_NAMES = ("__call__", "_call_impl", "_wrapped_call_impl")


def _replay_scope(owner: nn.Module, function: Any) -> tuple[nn.Module, bool]:
    """The module a checkpointed ``function`` runs and whether its own hooks run inside it:
    transformers 5 checkpoints ``partial(forward, layer)`` (the layer's hooks stay outside),
    older code ``layer.__call__`` (they run inside)."""
    f, first = function, None
    if isinstance(function, functools.partial):
        f = function.func
        first = function.args[0] if function.args else None
    bound = getattr(f, "__self__", None)
    if isinstance(bound, nn.Module):
        return bound, getattr(f, "__name__", "") in _CALL_NAMES
    if isinstance(first, nn.Module):
        return first, getattr(f, "__name__", "") in _CALL_NAMES
    return owner, False


class HookSession:
    """Hooks of one call. Removes exactly what it added, also when the call raises.

    Gradient checkpointing: while the session is open with autograd on, every layer that
    transformers checkpoints (``gradient_checkpointing`` set, ``_gradient_checkpointing_func``
    present) gets, for this call only, a checkpoint function whose checkpointed body re-installs
    this call's hooks on the layer's modules when ``backward`` recomputes it after the session has
    closed (fire counts resume where the forward pass had them), so the recomputation applies the
    same interventions and their gradients are exact.
    """

    def __init__(self, model: nn.Module, replay: bool = False) -> None:
        self.model = model
        self.handles: list[Any] = []
        self.probe_ids: list[int] = []
        self.attn_switch: _AttnSwitch | None = None
        self.entries: list[tuple[nn.Module, str, Callable, list[int]]] = []
        self.open = True
        self._replay = replay
        self._gc_saved: list[tuple[nn.Module, Any]] = []

    def add(self, module: nn.Module, io: str, fn: Callable, start: int = 0) -> None:
        """``fn(module, tensor, fire_index, module_args) -> replacement tensor or None``."""
        counter = [start]
        self.entries.append((module, io, fn, counter))
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

    # -- gradient checkpointing --------------------------------------------------------------
    def _patch_checkpointing(self) -> None:
        for m in checkpointing_modules(self.model):
            if getattr(m, "gradient_checkpointing", False) is not True:
                continue
            orig = m.__dict__.get("_gradient_checkpointing_func")
            if not callable(orig):
                continue
            self._gc_saved.append((m, orig))
            m.__dict__["_gradient_checkpointing_func"] = self._checkpoint_func(m, orig)

    def _checkpoint_func(self, owner: nn.Module, orig: Callable) -> Callable:
        def checkpoint_func(function: Callable, *args: Any, **kwargs: Any) -> Any:
            return orig(self._replayable(owner, function), *args, **kwargs)

        return checkpoint_func

    def _replayable(self, owner: nn.Module, function: Callable) -> Callable:
        starts = [c[0] for _, _, _, c in self.entries]  # fire counts when this layer call began
        # probe attention switches every layer's attention: the recomputation must use it too
        switched = [c for c, _ in self.attn_switch.saved] if self.attn_switch is not None else []

        def run(*args: Any, **kwargs: Any) -> Any:
            if self.open:  # the forward pass: our hooks are in place
                return function(*args, **kwargs)
            scope, with_self = _replay_scope(owner, function)
            inside = {id(m) for m in scope.modules()}
            if not with_self:
                inside.discard(id(scope))
            with HookSession(self.model, replay=True) as again:
                if switched:
                    again.attn_switch = _AttnSwitch(self.model)
                    again.attn_switch.pending = list(switched)
                    again.attn_switch.__enter__()
                for (module, io, fn, _), start in zip(self.entries, starts):
                    if id(module) in inside:
                        again.add(module, io, fn, start)
                return function(*args, **kwargs)

        return run

    def close(self) -> None:
        self.open = False
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
        for m, orig in reversed(self._gc_saved):
            m.__dict__["_gradient_checkpointing_func"] = orig
        self._gc_saved.clear()

    def __enter__(self) -> "HookSession":
        if not self._replay and torch.is_grad_enabled():
            self._patch_checkpointing()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
