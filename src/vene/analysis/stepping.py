"""Layer stepping: re-run the layers of a ``*.layers[i]`` model from recorded states.

During a recording forward pass, :class:`LayerStepper` keeps, for every layer, the hidden state
it received, the other arguments it was called with, its output, and (through a stand-in for the
key/value cache that the attention modules fill) each position's keys and values. Afterwards:

* :meth:`LayerStepper.replay` calls layer ``j`` on any batch of hidden states with the recorded
  arguments (batch-dimension tensors re-indexed to each row's source row) -- a restoration at
  layer ``L`` resumes there instead of recomputing layers ``0..L-1``;
* with ``start=f`` it computes positions ``f..seq-1`` only, attending to the recorded keys and
  values of positions ``0..f-1``: under causal attention a restoration at token ``f`` cannot
  change the positions before it, so they are never recomputed;
* :meth:`LayerStepper.tail` applies the final norm and the output head to the last position.

Nothing here is trusted blindly: :meth:`LayerStepper.check` replays the first and last layers
(in full, with a prefix, and with the last position perturbed to test causality) and the output
head, and compares them with the recording; a model that fails is run with plain forward passes.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from ..hooks import HookSession, first_tensor, input_tensor

_PAST_NAMES = ("past_key_values", "past_key_value", "layer_past")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


class _Hidden:
    """Placeholder for the hidden-state argument of a recorded layer call."""


HIDDEN = _Hidden()


class _NoTrim(Exception):
    """A recorded argument cannot be cut to a suffix of the positions."""


class _KVRecorder:
    """Stands in for a key/value cache in the recording pass: keeps what attention hands it."""

    def __init__(self, store: list, j: int) -> None:
        self.store, self.j = store, j

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.store[self.j] = (key, value)
        return key, value


class _PrefixKV:
    """Stands in for a key/value cache in a replay: prepends recorded keys/values of a prefix."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.key, self.value = key, value

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.key.to(key.dtype), key], -2), torch.cat([self.value.to(value.dtype), value], -2)


def map_nested(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_nested(v, fn) for v in obj)
    if isinstance(obj, list):
        return [map_nested(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: map_nested(v, fn) for k, v in obj.items()}
    return fn(obj)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp(min=1))))


class LayerStepper:
    """Record and replay the layers at ``layers_path`` (see the module docstring).

    ``total`` is the batch size of the recording pass; replays give, for each row, the recorded
    row ``src[row]`` whose per-example arguments (masks, position ids...) it uses.
    """

    def __init__(self, model: nn.Module, layers_path: str, total: int, seq: int) -> None:
        self.model = model
        self.layers = model.get_submodule(layers_path)
        self.layers_path = layers_path
        self.total, self.seq = total, seq
        n = len(self.layers)
        self.calls: list[Any] = [None] * n
        self.named: list[dict | None] = [None] * n
        self.layer_in: list[Any] = [None] * n
        self.layer_out: list[Any] = [None] * n
        self.kv: list[Any] = [None] * n
        self.trim = False
        self.head: nn.Module | None = None
        self.norm: nn.Module | None = None

    def __len__(self) -> int:
        return len(self.layers)

    # -- recording ---------------------------------------------------------------------------------
    def install(self, session: HookSession) -> None:
        for j, layer in enumerate(self.layers):
            session.handles.append(layer.register_forward_pre_hook(self._pre(j), with_kwargs=True))
            session.add(layer, "output", self._post(j))

    def _pre(self, j: int) -> Callable:
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            t, rebuild = input_tensor(args, kwargs)
            if t is None:
                return None
            self.layer_in[j] = t
            self.calls[j] = rebuild(HIDDEN)
            try:
                params = list(inspect.signature(mod.forward).parameters.values())
            except (TypeError, ValueError):
                return None
            names = [p.name for p in params]
            slot = next((n for n in _PAST_NAMES if n in names), None)
            if slot is None:
                return None
            i = names.index(slot)
            if i < len(args) and params[i].kind is not inspect.Parameter.KEYWORD_ONLY:
                if args[i] is not None:
                    return None
                args = args[:i] + (_KVRecorder(self.kv, j),) + args[i + 1:]
            elif kwargs.get(slot) is None and params[i].kind is not inspect.Parameter.POSITIONAL_ONLY:
                kwargs = dict(kwargs, **{slot: _KVRecorder(self.kv, j)})
            else:
                return None
            return args, kwargs

        return pre

    def _post(self, j: int) -> Callable:
        def fn(mod: nn.Module, x: torch.Tensor, fire: int, args: tuple) -> None:
            self.layer_out[j] = x
            return None

        return fn

    # -- replay ------------------------------------------------------------------------------------
    def _batch(self, v: Any, src: torch.Tensor) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == self.total and self.total > 1:
            return v.index_select(0, src)
        return v

    def replay(self, j: int, hidden: torch.Tensor, src: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Layer ``j`` on ``hidden`` ``(rows, seq - start, d)``; returns its output hidden state."""
        if start == 0:
            args, kwargs = self.calls[j]

            def adapt(v: Any) -> Any:
                return hidden if v is HIDDEN else self._batch(v, src)

            out = self.layers[j](*map_nested(args, adapt), **map_nested(kwargs, adapt))
        else:
            out = self.layers[j](**self._trimmed(j, hidden, src, start))
        t, _ = first_tensor(out)
        return t

    def _trimmed(self, j: int, hidden: torch.Tensor, src: torch.Tensor, f: int) -> dict:
        s = self.seq
        key, value = self.kv[j]
        past = _PrefixKV(key.index_select(0, src)[:, :, :f], value.index_select(0, src)[:, :, :f])

        def cut(v: Any) -> Any:
            if v is HIDDEN:
                return hidden
            if not isinstance(v, torch.Tensor):
                return v
            v = self._batch(v, src)
            if v.dim() >= 2 and v.shape[1] == s:
                return v[:, f:]
            if v.dim() == 1 and v.shape[0] == s:
                return v[f:]
            return v

        call = {}
        for name, v in self.named[j].items():
            if name in _PAST_NAMES:
                call[name] = past
            elif name == "attention_mask":
                if v is None:
                    allowed = torch.arange(s, device=hidden.device)[None, :] <= torch.arange(f, s, device=hidden.device)[:, None]
                    mask = torch.zeros(s - f, s, dtype=hidden.dtype, device=hidden.device)
                    call[name] = mask.masked_fill_(~allowed, torch.finfo(hidden.dtype).min)[None, None]
                elif isinstance(v, torch.Tensor) and v.dim() == 4 and tuple(v.shape[-2:]) == (s, s):
                    call[name] = self._batch(v, src)[:, :, f:, :]
                else:
                    raise _NoTrim(name)
            else:
                call[name] = map_nested(v, cut)
        return call

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + output head on ``h`` ``(n, 1, d)`` -> logits ``(n, vocab)``."""
        if self.norm is not None:
            h = self.norm(h)
        logits = self.head(h)[:, -1].float()
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- checks ------------------------------------------------------------------------------------
    def check(self, logits: torch.Tensor) -> bool:
        """Replay the first and last layers and the head; True when they reproduce the recording.
        Also decides whether prefix trimming is exact (``self.trim``)."""
        n = len(self.layers)
        if any(x is None for x in self.layer_in) or any(x is None for x in self.layer_out):
            return False
        for j in range(n - 1):
            a, b = self.layer_out[j], self.layer_in[j + 1]
            if a.shape != b.shape or not (a is b or torch.equal(a, b)):
                return False
        get = getattr(self.model, "get_output_embeddings", None)
        self.head = get() if callable(get) else None
        if self.head is None:
            return False
        parent = self.model.get_submodule(self.layers_path.rsplit(".", 1)[0]) if "." in self.layers_path else self.model
        self.norm = next((getattr(parent, a) for a in _NORM_NAMES if isinstance(getattr(parent, a, None), nn.Module)), None)
        dev = self.layer_in[0].device
        src = torch.arange(self.total - 1, -1, -1, device=dev)
        with torch.no_grad():
            for j in sorted({0, n - 1}):
                if not _close(self.replay(j, self.layer_in[j].index_select(0, src), src), self.layer_out[j].index_select(0, src)):
                    return False
            if not _close(self.tail(self.layer_out[n - 1][:, -1:]), logits):
                return False
            self.trim = self._check_trim(src)
        return True

    def _check_trim(self, src: torch.Tensor) -> bool:
        n, s = len(self.layers), self.seq
        if s < 2 or any(kv is None for kv in self.kv):
            return False
        for j in range(n):
            try:
                bound = inspect.signature(self.layers[j].forward).bind(*self.calls[j][0], **self.calls[j][1])
            except (TypeError, ValueError):
                return False
            named = {}
            for name, v in bound.arguments.items():
                kind = bound.signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(v)
                elif kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
                    return False
                else:
                    named[name] = v
            self.named[j] = named
        for j in sorted({0, n - 1}):
            x, want = self.layer_in[j].index_select(0, src), self.layer_out[j].index_select(0, src)
            # causality: changing the last position leaves the others as they were
            bumped = x.clone()
            bumped[:, -1] += 1.0
            if not _close(self.replay(j, bumped, src)[:, :-1], want[:, :-1]):
                return False
            for f in sorted({1, s - 1}):
                try:
                    got = self.replay(j, x[:, f:], src, f)
                except (_NoTrim, RuntimeError, TypeError, ValueError):
                    return False
                if not _close(got, want[:, f:]):
                    return False
        return True
