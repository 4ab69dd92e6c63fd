"""Base resumption: a call's base pass starts where its interventions start.

An intervention at layer ``L`` cannot change what layers ``0..L-1`` compute, and under causal
attention an intervention at token ``p`` cannot change any position before ``p``. So a call whose
interventions all sit inside the model's layer stack, at layer ``L`` or later and at positions
``p`` or later, only needs layers ``L..`` on positions ``p..`` -- given the states an
un-intervened pass of the same base left there. vene keeps those states (a *base record*: each
layer's input hidden state, arguments and keys/values, and the output logits; see
:class:`vene.analysis.stepping.LayerStepper`) and runs the rest:

* **a base seen before** (a pyvene-style loop over layers with the same corrupted base): the
  first call runs as usual and notes the base; the second records it (one extra un-intervened
  pass, no graph); that call and every later one resume from the record. A 30-layer loop
  patching one token then costs about half the layers on the positions from the patched token on,
  instead of 30 full passes.
* **a training step** (a new base every step, interventions with gradients): when the
  interventions start at position ``p`` with at most half the positions after it, the base is
  recorded under ``no_grad`` and the graph is built for positions ``p..`` only, so ``backward``
  runs on those positions alone (a DAS step on the last token backpropagates through one position,
  not the whole prompt).

The resumed call returns what the full pass returns, computed by the same modules (logits equal
to floating-point rounding; ``past_key_values`` None, as in vene's batched calls). When it applies:
parallel mode; the base is ``input_ids`` (+ ``attention_mask``); no ``labels``,
``use_cache=True``, hidden states or attentions asked for; every base-side intervention on a
named component inside a layer of the stack, with ``"pos"`` units at non-negative positions; the
model frozen and in eval mode, no recurrent units. Whether the model can be stepped at all is
checked on its first record (replaying layers against the recording, causality included); a model
that fails the check gets one :class:`ResumeFallbackWarning` naming the reason, and its calls run
in full. Records live in a per-model budget (:data:`BUDGET` bytes, :func:`set_budget`; least recently
used dropped, a base too big for it is never recorded);
``IntervenableModel(..., reuse_base=False)`` switches resumption off, :func:`clear` forgets the
records, :func:`stats` counts what happened.
"""
from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .components import detect_architecture
from .hooks import HookSession
from .locations import Loc
from .ops import EveryFiring, Op

#: Bytes of base records kept per model.
BUDGET = 256 * 2**20
#: Base records kept per model (least recently used dropped first).
MAX_RECORDS = 8
#: A training call resumes when at most this share of the positions follows its first written one.
TRAIN_SHARE = 0.5

_INPUTS = ("input_ids", "attention_mask")


class ResumeFallbackWarning(UserWarning):
    """A model's calls cannot resume from recorded base states; they run in full (same results)."""


class _Record:
    __slots__ = ("input", "fingerprint", "stepper", "logits", "out", "nbytes", "state")

    def __init__(self, base: Mapping, fingerprint: tuple) -> None:
        from .reuse import _Input

        self.input = _Input(base)
        self.fingerprint = fingerprint
        self.stepper: Any = None
        self.logits: torch.Tensor | None = None
        self.out: Any = None
        self.nbytes = self.input.nbytes()
        self.state = "seen"  # "seen" -> "recorded"


class _Store:
    def __init__(self) -> None:
        self.records: list[_Record] = []  # most recently used last
        self.budget = BUDGET
        #: None: not checked yet; "" checked and steppable; else why the model cannot be stepped
        self.verdict: str | None = None
        self.verified: Any = None  # the stepper that passed the checks (norm, head, trim)
        self.warned = False
        self.counts = {"resumed": 0, "recorded": 0, "full": 0}
        self.stack: str | None = None  # the layer stack's path ("" when the model has none)
        self.record_kv = True  # False once a recording with key/value recorders failed

    def find(self, base: Mapping, fingerprint: tuple) -> _Record | None:
        for i in range(len(self.records) - 1, -1, -1):
            r = self.records[i]
            if r.fingerprint == fingerprint and r.input.matches(base):
                self.records.append(self.records.pop(i))
                return r
        return None

    def add(self, r: _Record) -> None:
        self.records = [x for x in self.records if x.fingerprint == r.fingerprint and x is not r]
        self.records.append(r)
        self.trim()

    def trim(self) -> None:
        while len(self.records) > MAX_RECORDS:
            self.records.pop(0)
        total = sum(r.nbytes for r in self.records)
        while self.records and total > self.budget:
            total -= self.records.pop(0).nbytes


_STORES: weakref.WeakKeyDictionary[nn.Module, _Store] = weakref.WeakKeyDictionary()


def _store(model: nn.Module) -> _Store:
    s = _STORES.get(model)
    if s is None:
        s = _STORES[model] = _Store()
    return s


def clear(model: nn.Module | None = None) -> None:
    """Forget the base records of ``model`` (of every model when None)."""
    if model is None:
        for s in list(_STORES.values()):
            s.records.clear()
    elif model in _STORES:
        _STORES[model].records.clear()


def set_budget(model: nn.Module, nbytes: int) -> None:
    """Bytes of base records kept for ``model`` (0 keeps none: bases seen again run in full)."""
    s = _store(model)
    s.budget = int(nbytes)
    s.trim()


def stats(model: nn.Module) -> dict:
    """What base resumption did on ``model``: calls ``resumed``, bases ``recorded``, calls that ran
    in ``full`` although eligible (a base seen for the first time), and ``reason`` (why the model
    cannot be stepped, or None)."""
    s = _store(model)
    return dict(s.counts, reason=s.verdict or None)


# ---------------------------------------------------------------------------------------------
# eligibility


def _start(stack: str, plan: Any) -> tuple[int, int] | None:
    """``(first layer, first position)`` the call's base-side interventions touch, or None when
    one of them is not position-wise on a named site inside the layer stack."""
    pat = re.compile(re.escape(stack) + r"\.(\d+)(?:\.|$)")
    first_layer, first_pos = None, None
    for k in plan.keys:
        if not k.active or k.target != plan.n_groups:
            continue
        s = k.spec
        site = s.site
        if s.unit != "pos" or site.head_layout or site.io not in ("input", "output"):
            return None
        m = pat.match(site.module_path)
        if m is None:
            return None
        loc = k.base_loc
        if loc is None or loc.two_level or loc.rows is not None:
            return None
        lo = int(loc.idx.min()) if loc.idx.numel() else 0
        if lo < 0:
            return None
        layer = int(m.group(1))
        first_layer = layer if first_layer is None else min(first_layer, layer)
        first_pos = lo if first_pos is None else min(first_pos, lo)
    if first_layer is None or first_pos is None:
        return None
    return first_layer, first_pos


def _shift(op: Op, p: int) -> None:
    """Point a base-side op's positions at a pass that starts at token ``p``."""
    if p == 0:
        return
    loc = op.loc
    assert loc is not None  # _start accepted only ops with locations
    new = Loc(loc.idx - p, None, loc.max1 - p, loc.max2, shared=loc.shared)
    op.loc = new
    op.step = EveryFiring(new)


def _config_flag(model: nn.Module, name: str) -> bool:
    return bool(getattr(getattr(model, "config", None), name, False))


class Resume:
    """One call's base pass, resumed from a base record (see the module docstring)."""

    def __init__(self, model: nn.Module, store: _Store, record: _Record, stack: str, layer: int, pos: int,
                 base: Mapping, extra: dict, fresh: bool, refresh: Any = None) -> None:
        self.model, self.store, self.record = model, store, record
        self.stack, self.layer, self.pos = stack, layer, pos
        self.base, self.extra = base, extra
        self.fresh = fresh  # the record is made for this call only (a training step)
        self.refresh = refresh  # () -> the model state's fingerprint

    def run(self, session_ops: list[Op], install: Any, protected: set[int]) -> Any:
        """Record the base if needed, then run layers ``layer..`` on positions ``pos..`` with
        ``session_ops`` installed (``install(session, ops, protected)``); returns the model output.
        None when the record turns out unusable (the caller runs the full pass)."""
        r = self.record
        if r.state != "recorded" and not self._record():
            return None
        st = r.stepper
        p = self.pos if st.trim else 0
        if p == 0 and self.layer == 0:
            return None
        for op in session_ops:
            _shift(op, p)
        h = st.layer_in[self.layer]
        if p:
            h = h[:, p:]
        keep = protected | {t.untyped_storage().data_ptr() for t in (st.layer_in[self.layer],)}
        with HookSession(self.model) as session:
            install(session, session_ops, keep)
            for j in range(self.layer, len(st.layers)):
                h = st.replay(j, h, None, p) if st.trim else st.replay(j, h, None)
            logits = self._head(st, h)
        assert r.logits is not None
        if p:
            logits = torch.cat([r.logits[:, :p].to(logits.dtype), logits], 1)
        self.store.counts["resumed"] += 1
        if self.fresh:
            self.store.records = [x for x in self.store.records if x is not r]
        return _with_logits(r.out, logits)

    def _head(self, st: Any, h: torch.Tensor) -> torch.Tensor:
        if st.norm is not None:
            h = st.norm(h)
        logits = st.head(h)
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        assert self.record.logits is not None
        return logits.to(self.record.logits.dtype)

    def _record(self) -> bool:
        from .analysis.stepping import LayerStepper

        r, store, model = self.record, self.store, self.model
        ids = self.base["input_ids"]
        kw = dict(self.extra)
        if _accepts_use_cache(model):
            kw["use_cache"] = False
        # the key/value recorder stands in for the layers' cache argument; a layer whose "cache"
        # is something else (a state-space model's conv/ssm state) rejects it: record without
        for record_kv in ((True, False) if store.record_kv else (False,)):
            stepper = LayerStepper(model, self.stack, ids.shape[0], ids.shape[1], record_kv=record_kv)
            try:
                with torch.no_grad(), HookSession(model) as session:
                    stepper.install(session)
                    out = model(**self.base, **kw)
                break
            except Exception as e:  # noqa: BLE001 - the full pass that follows raises the call's own errors
                if record_kv:
                    store.record_kv = False
                    continue
                store.verdict = f"its recording pass failed ({type(e).__name__}: {e})"
                _warn(store, model)
                return False
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            store.verdict = "the model's output has no (batch, seq, vocab) logits"
            _warn(store, model)
            return False
        if store.verdict is None:
            ok = stepper.check(logits[:, -1].float())
            if not ok:
                store.verdict = stepper.reason or "its layers cannot be replayed"
            else:
                store.verdict = ""
                store.verified = stepper
            if store.verdict:
                _warn(store, model)
                return False
        else:
            why = stepper.prepare(store.verified)
            if why is not None:
                store.verdict = why
                _warn(store, model)
                return False
        r.stepper, r.logits, r.out = stepper, logits, out
        r.state = "recorded"
        if self.refresh is not None:  # after the pass: a lazily built buffer is part of the state
            r.fingerprint = self.refresh()
        r.nbytes = r.input.nbytes() + _stepper_bytes(stepper) + logits.numel() * logits.element_size()
        store.counts["recorded"] += 1
        if not self.fresh:
            store.trim()
        return True


def _with_logits(out: Any, logits: torch.Tensor) -> Any:
    """A copy of the recorded output with ``logits`` in place of its logits."""
    try:
        fields = {k: v for k, v in out.items()}
    except AttributeError:
        return logits
    fields["logits"] = logits
    return type(out)(**fields)


def _estimate(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes of a record of ``ids``: the logits, and per layer its input, output and keys/values."""
    cfg = getattr(model, "config", None)

    def get(*names: str, default: int) -> int:
        return next((v for v in (getattr(cfg, n, None) for n in names) if isinstance(v, int)), default)

    vocab = get("vocab_size", default=50000)
    width = get("hidden_size", "n_embd", "d_model", default=1024)
    layers = get("num_hidden_layers", "n_layer", "num_layers", default=24)
    el = next((p.element_size() for p in model.parameters()), 4)
    return ids.numel() * el * (vocab + 4 * layers * width)


def _stepper_bytes(st: Any) -> int:
    seen: set[int] = set()
    n = 0
    for t in [*st.layer_in, *st.layer_out, *(x for kv in st.kv if kv is not None for x in kv)]:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            n += t.untyped_storage().nbytes()
    return n


def _warn(store: _Store, model: nn.Module) -> None:
    if store.warned:
        return
    store.warned = True
    warnings.warn(
        f"vene cannot resume base passes of {type(model).__name__} from recorded states: {store.verdict}; "
        f"its calls run in full (same results, slower). vene.resume.stats(model) records the reason.",
        ResumeFallbackWarning,
        stacklevel=5,
    )


def _stack_of(model: nn.Module) -> str:
    """The path of the layer stack of a causal language model (one that can generate, with an
    output head), or "" for any other model."""
    can = getattr(model, "can_generate", None)
    try:
        if not (callable(can) and can()):
            return ""
    except Exception:  # noqa: BLE001 - a model that cannot say is not resumed
        return ""
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get) or get() is None:
        return ""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "is_encoder_decoder", False):
        return ""
    arch = detect_architecture(model)
    return arch[1] if arch is not None else ""


def _wrapped_outside(model: nn.Module, stack: str) -> str | None:
    """Why the model's own forward does more than a replay of its layers, norm and head would
    (hooks or a replaced ``forward`` on the model or the modules between it and its layer list,
    which the replay never calls: FSDP's unsharding, accelerate's device alignment, nnsight's
    envoys, a user's hook on the model; or global module hooks), or None."""
    from torch.nn.modules import module as _m

    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return "global module hooks are installed"
    parts = stack.split(".")
    chain = [("", model)] + [(".".join(parts[: i + 1]), model.get_submodule(".".join(parts[: i + 1])))
                             for i in range(len(parts) - 1)]
    for name, m in chain:
        if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
            return f"{name or type(model).__name__} has forward hooks or a replaced forward"
    return None


def _accepts_use_cache(model: nn.Module) -> bool:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "use_cache" in params


def plan_resume(model: nn.Module, plan: Any, base: Mapping, extra: dict, trains: bool,
                fingerprint: Any, refresh: Any = None) -> Resume | None:
    """The call's base resumption, or None when its base pass runs in full.

    ``trains``: the call builds an autograd graph (only interventions' weights train; the model
    is frozen); ``fingerprint()``: the model state (:meth:`vene.reuse.SourceStore.fingerprint`),
    or None when the model state rules resumption out; ``refresh()``: the state after a pass.
    """
    if plan.serial:
        return None
    if set(base) - set(_INPUTS) or "input_ids" not in base:
        return None
    ids = base["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        return None
    if set(extra) - {"use_cache"} or extra.get("use_cache"):
        return None
    if _config_flag(model, "output_hidden_states") or _config_flag(model, "output_attentions"):
        return None
    store = _store(model)
    if store.verdict:
        return None
    if store.stack is None:
        store.stack = _stack_of(model)
        if not store.stack:
            store.verdict = "not a causal language model with a layer stack (only those are resumed)"
            return None
    stack = store.stack
    if _wrapped_outside(model, stack) is not None:
        return None
    start = _start(stack, plan)
    if start is None:
        return None
    layer, pos = start
    if layer == 0 and pos == 0:
        return None
    if layer == 0 and store.verified is not None and not store.verified.trim:
        return None
    fingerprint = fingerprint()
    if fingerprint is None:
        return None
    record = store.find(base, fingerprint)
    if record is None and not trains and _estimate(model, ids) > store.budget:
        return None  # the record would not be kept: recording it would only add a pass
    if trains:
        seq = ids.shape[1]
        if record is None and (seq - pos) / seq <= TRAIN_SHARE:
            return Resume(model, store, _Record(base, fingerprint), stack, layer, pos, base, extra, fresh=True, refresh=refresh)
        if record is None or record.state != "recorded":
            return None
        return Resume(model, store, record, stack, layer, pos, base, extra, fresh=False, refresh=refresh)
    if record is None:
        store.add(_Record(base, fingerprint))
        store.counts["full"] += 1
        return None
    return Resume(model, store, record, stack, layer, pos, base, extra, fresh=False, refresh=refresh)
