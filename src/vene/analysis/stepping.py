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

Nothing here relies on argument or module names that a dependency may rename: the key/value cache
argument of a layer is found from its signature (the parameter annotated with a ``Cache`` type) or
from the object the layer is handed, and the final norm is whichever norm module next to the layer
list reproduces the recorded logits. Nothing is trusted blindly either: :meth:`LayerStepper.check`
replays the first and last layers (in full, with a prefix, and with the last position perturbed to
test causality) and the output head, and compares them with the recording. When a check fails,
:attr:`LayerStepper.reason` says why, and the caller warns and runs the slower mode.
"""
from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Mapping
from typing import Any, Callable, cast

import torch
from torch import nn

from ..hooks import HookSession, first_tensor, input_tensor

#: Parameters that carry a flag or a position about the cache, never the cache itself.
_NOT_CACHE = ("use_cache", "cache_position", "cache_positions")


def _is_cache_annotation(ann: Any) -> bool:
    """True when a parameter annotation names a key/value cache type (``Cache | None``, ...)."""
    if ann is inspect.Parameter.empty or ann is None:
        return False
    if isinstance(ann, str):
        return re.search(r"\b\w*Cache\b", ann) is not None
    if isinstance(ann, type):
        return any(c.__name__.endswith("Cache") for c in ann.__mro__)
    return any(_is_cache_annotation(a) for a in typing.get_args(ann))


def _is_cache_object(v: Any) -> bool:
    """True for an object that behaves like a key/value cache (transformers' ``Cache`` protocol)."""
    return callable(getattr(v, "update", None)) and callable(getattr(v, "get_seq_length", None))


def call_signature(fn: Callable) -> inspect.Signature:
    """The signature ``fn`` is called with. A module's ``forward`` replaced by a wrapper object
    around the class's function (nnsight's) reports ``self`` first; it is dropped, so positional
    arguments line up with the parameters they fill."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if params and params[0].name == "self" and not inspect.ismethod(fn) and params[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        owner = getattr(fn, "__self__", None)
        if owner is None and not inspect.isfunction(fn):
            sig = sig.replace(parameters=params[1:])
    return sig


def find_cache_parameter(fn: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> str | None:
    """The name of the parameter through which ``fn`` (a layer's ``forward``) receives its key/value
    cache, or None.

    Found, in this order, from the signature (a parameter annotated with a ``*Cache`` type), from the
    objects of this call (an argument that behaves like a cache), and only then from the name of an
    unannotated parameter (``past_key_value(s)``, ``layer_past``, ``cache``...), so a rename keeps
    working and a legacy tuple-of-tensors argument is never mistaken for a cache.
    """
    kwargs = dict(kwargs or {})
    try:
        params = list(call_signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    named = [p for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    for p in named:
        if p.name not in _NOT_CACHE and _is_cache_annotation(p.annotation):
            return p.name
    handed = {p.name: args[i] for i, p in enumerate(named[: len(args)]) if p.kind is not inspect.Parameter.KEYWORD_ONLY}
    handed.update(kwargs)
    for name, v in handed.items():
        if _is_cache_object(v):
            return name
    # a parameter annotated as something else (e.g. a legacy tuple of tensors) is never the cache
    names = [p.name for p in named if p.annotation is inspect.Parameter.empty]
    names += [k for k in kwargs if k not in {p.name for p in named}]
    for name in names:
        if name not in _NOT_CACHE and re.fullmatch(r"(layer_)?past(_key_values?)?|(kv_|past_)?cache", name):
            return name
    return None


def _looks_like_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()


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

    def __init__(self, model: nn.Module, layers_path: str, total: int, seq: int, record_kv: bool = True) -> None:
        self.model = model
        #: hand each layer's attention a key/value recorder (needed for prefix trimming)
        self.record_kv = record_kv
        # layers_path names a stack's ModuleList (components.find_stacks keeps only those)
        self.layers = cast(nn.ModuleList, model.get_submodule(layers_path))
        self.layers_path = layers_path
        self.total, self.seq = total, seq
        n = len(self.layers)
        self.calls: list[Any] = [None] * n
        self.named: list[dict | None] = [None] * n
        self.layer_in: list[Any] = [None] * n
        self.layer_out: list[Any] = [None] * n
        self.kv: list[Any] = [None] * n
        self.slot: list[str | None] = [None] * n
        self.trim = False
        #: Why stepping (or prefix reuse) cannot be used, set by :meth:`check`; None when it can.
        self.reason: str | None = None
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
            slot = find_cache_parameter(mod.forward, args, kwargs) if self.record_kv else None
            if slot is None:
                return None
            params = {p.name: (i, p) for i, p in enumerate(call_signature(mod.forward).parameters.values())}
            i, p = params.get(slot, (len(args), None))
            if i < len(args) and (p is None or p.kind is not inspect.Parameter.KEYWORD_ONLY):
                if args[i] is not None:
                    return None
                args = args[:i] + (_KVRecorder(self.kv, j),) + args[i + 1:]
            elif kwargs.get(slot) is None and (p is None or p.kind is not inspect.Parameter.POSITIONAL_ONLY):
                kwargs = dict(kwargs, **{slot: _KVRecorder(self.kv, j)})
            else:
                return None
            self.slot[j] = slot
            return args, kwargs

        return pre

    def _post(self, j: int) -> Callable:
        def fn(mod: nn.Module, x: torch.Tensor, fire: int, args: tuple) -> None:
            self.layer_out[j] = x
            return None

        return fn

    # -- replay ------------------------------------------------------------------------------------
    def _batch(self, v: Any, src: torch.Tensor | None) -> Any:
        if src is None:  # every row is its own recorded row
            return v
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == self.total and self.total > 1:
            return v.index_select(0, src)
        return v

    def replay(self, j: int, hidden: torch.Tensor, src: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Layer ``j`` on ``hidden`` ``(rows, seq - start, d)``; returns its output hidden state.
        ``src``: the recorded row of each row (None: row ``r`` is recorded row ``r``)."""
        if start == 0:
            args, kwargs = self.calls[j]

            def adapt(v: Any) -> Any:
                return hidden if v is HIDDEN else self._batch(v, src)

            out = self.layers[j](*map_nested(args, adapt), **map_nested(kwargs, adapt))
        else:
            out = self.layers[j](**self._trimmed(j, hidden, src, start))
        t, _ = first_tensor(out)
        assert t is not None  # the recording pass saw a tensor output from every layer
        return t

    def _trimmed(self, j: int, hidden: torch.Tensor, src: torch.Tensor | None, f: int) -> dict:
        s = self.seq
        key, value = self.kv[j]
        if src is not None:
            key, value = key.index_select(0, src), value.index_select(0, src)
        past = _PrefixKV(key[:, :, :f], value[:, :, :f])

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

        named = self.named[j]
        assert named is not None  # set by _check_trim before any trimmed replay
        call: dict[str, Any] = {}
        for name, v in named.items():
            if name == self.slot[j]:
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
        assert self.head is not None  # set by check() before any replay reaches the head
        logits = self.head(h)[:, -1].float()
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- checks ------------------------------------------------------------------------------------
    def check(self, logits: torch.Tensor) -> bool:
        """Replay the first and last layers and the head; True when they reproduce the recording.
        Also decides whether prefix trimming is exact (``self.trim``)."""
        self.trim = False
        step_reason = self._check(logits)
        self.reason = step_reason or self.reason
        return step_reason is None

    def _check(self, logits: torch.Tensor) -> str | None:
        """Run the checks; returns why stepping cannot be used (None when it can) and sets
        :attr:`trim` and, when prefix reuse is not exact, :attr:`reason`."""
        n = len(self.layers)
        if any(x is None for x in self.layer_in) or any(x is None for x in self.layer_out):
            return "not every layer received a hidden-state tensor in the recording pass"
        for j in range(n - 1):
            a, b = self.layer_out[j], self.layer_in[j + 1]
            if a.shape != b.shape or not (a is b or torch.equal(a, b)):
                return f"layer {j + 1} does not receive layer {j}'s output (something runs between the layers)"
        get = getattr(self.model, "get_output_embeddings", None)
        self.head = get() if callable(get) else None
        if self.head is None:
            return "the model has no get_output_embeddings()"
        parent = self.model.get_submodule(self.layers_path.rsplit(".", 1)[0]) if "." in self.layers_path else self.model
        dev = self.layer_in[0].device
        src = torch.arange(self.total - 1, -1, -1, device=dev)
        with torch.no_grad():
            for j in sorted({0, n - 1}):
                if not _close(self.replay(j, self.layer_in[j].index_select(0, src), src), self.layer_out[j].index_select(0, src)):
                    return f"replaying layer {j} with its recorded arguments does not reproduce its output"
            norms = [m for name, m in parent.named_children() if _looks_like_norm(m)]
            last = self.layer_out[n - 1][:, -1:]
            for norm in [*norms, None]:
                self.norm = norm
                if _close(self.tail(last), logits):
                    break
            else:
                self.norm = None
                return "no final norm next to the layer list reproduces the recorded logits with the output head"
            self.reason = self._check_trim(src)
            self.trim = self.reason is None
        return None

    def _bind(self) -> str | None:
        """Bind each layer's recorded arguments to its signature (for trimmed replays)."""
        for j in range(len(self.layers)):
            try:
                bound = call_signature(self.layers[j].forward).bind(*self.calls[j][0], **self.calls[j][1])
            except (TypeError, ValueError) as e:
                return f"layer {j}'s recorded arguments do not bind to its signature ({e})"
            named = {}
            for name, v in bound.arguments.items():
                kind = bound.signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(v)
                elif kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
                    return f"layer {j} takes positional-only arguments ({name!r})"
                else:
                    named[name] = v
            self.named[j] = named
        return None

    def prepare(self, verified: "LayerStepper") -> str | None:
        """Make a new recording replayable with what :meth:`check` established on an earlier
        recording of the same model (final norm, output head, whether prefixes trim), without
        running the numerical checks again. Returns why it cannot be replayed, or None."""
        n = len(self.layers)
        if any(x is None for x in self.layer_in) or any(x is None for x in self.layer_out):
            return "not every layer received a hidden-state tensor in the recording pass"
        self.head, self.norm, self.trim, self.reason = verified.head, verified.norm, verified.trim, verified.reason
        if self.trim:
            if any(self.kv[j] is None for j in range(n)):
                self.trim = False
                self.reason = "a layer's attention did not store its keys/values in the cache it was handed"
                return None
            why = self._bind()
            if why is not None:
                self.trim, self.reason = False, why
        return None

    def _check_trim(self, src: torch.Tensor) -> str | None:
        """None when prefix reuse is exact, else the reason it is not."""
        n, s = len(self.layers), self.seq
        if s < 2:
            return "the prompt has a single token"
        missing = [j for j in range(n) if self.kv[j] is None]
        if missing:
            if any(self.slot[j] is None for j in missing):
                return (f"no key/value cache argument was found in the signature of "
                        f"{type(self.layers[missing[0]]).__name__}.forward")
            return f"layer {missing[0]}'s attention did not store its keys/values in the cache it was handed"
        why = self._bind()
        if why is not None:
            return why
        for j in range(n):
            try:
                self._trimmed(j, self.layer_in[j][:1, 1:], src[:1], 1)
            except _NoTrim as e:
                return f"layer {j}'s argument {e} cannot be cut to a suffix of the positions"
        for j in sorted({0, n - 1}):
            x, want = self.layer_in[j].index_select(0, src), self.layer_out[j].index_select(0, src)
            # causality: changing the last position leaves the others as they were
            bumped = x.clone()
            bumped[:, -1] += 1.0
            if not _close(self.replay(j, bumped, src)[:, :-1], want[:, :-1]):
                return f"layer {j} is not causal (changing the last position changes earlier ones)"
            for f in sorted({1, s - 1}):
                try:
                    got = self.replay(j, x[:, f:], src, f)
                except (_NoTrim, RuntimeError, TypeError, ValueError) as e:
                    return f"replaying layer {j} from position {f} failed ({type(e).__name__}: {e})"
                if not _close(got, want[:, f:]):
                    return f"replaying layer {j} from position {f} with the recorded prefix differs from the recording"
        return None
