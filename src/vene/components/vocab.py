"""pyvene's component names (and vene's additions) on an introspected block.

Every name means the tensor it means on Llama:

* ``block_input`` / ``block_output``: the residual stream entering / leaving the block;
* ``attention_input``: what the self-attention's q/k/v projections read (after the pre-norm where
  there is one; on post-norm blocks such as BERT, BART, OLMo-2 this is the block input itself);
* ``attention_output``: the attention sublayer's output after its output projection, before any
  residual add or post-norm (BERT: ``attention.output.dense``);
* ``attention_value_output``: the merged heads entering the output projection;
* ``query/key/value_output`` and their ``head_*`` forms: the projections' outputs, split into
  heads (key/value heads for GQA/MQA); fused projections are sliced by their layout;
* ``attention_weight``: the attention probabilities ``(batch, heads, q, k)``;
* ``mlp_input`` / ``mlp_output``: the feed-forward sublayer's input / output before the residual
  add; ``mlp_activation``: the activation's output (on gated MLPs, the gate branch only);
* ``cross_*``: the same names for an encoder-decoder block's cross-attention
  (``cross_attention_output``, ``head_cross_key_output``…); its keys and values are indexed by
  encoder positions;
* state-space blocks (Mamba): ``block_input``/``block_output`` and ``mixer_input``/``mixer_output``.

Each entry is a :class:`Entry`, or a string saying why the block has no such tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .introspect import Anatomy, Attention, Stack

#: attention classes that do not use the attention-function interface but hand their
#: probabilities to a module we can hook (class name -> child module receiving them as input)


_OPT_FLAT = ("OPT flattens (batch, seq) into one axis around its MLP, so no position can be addressed there; "
             "use block_output or a module path with unit 't'")
#: what introspection cannot see: block class -> {component: reason it has no such tensor}
BLOCK_OVERRIDES: dict[str, dict[str, str]] = {
    "OPTDecoderLayer": {c: _OPT_FLAT for c in ("mlp_input", "mlp_output", "mlp_activation")},
}


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the block ("" = the block)
    io: str
    view: tuple | None
    dim: int | None
    n_heads: int | None = None
    head_layout: bool = False


def _max_pos(cfg: Any) -> int | None:
    for n in ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions", "max_source_positions"):
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    return None


def _qkv_entries(a: Attention, prefix: str, out: dict) -> None:
    names = {r: f"{prefix}{r}_output" for r in ("query", "key", "value")}
    heads = {r: f"head_{prefix}{r}_output" for r in ("query", "key", "value")}
    problem = a.qkv_problem or a.problem
    if problem is not None:
        for r in names:
            out[heads[r]] = problem
        if a.fused is not None or a.qkv_problem is not None:
            for r in names:
                out[names[r]] = problem
            return
    H, KV, d = a.n_heads, a.n_kv_heads, a.head_dim
    if a.fused is None:
        for r, mod in (("query", a.q), ("key", a.k), ("value", a.v)):
            n = H if r == "query" else KV
            path = f"{a.core}.{mod}"
            out[names[r]] = Entry(path, "output", None, n * d if n and d else None)
            if a.problem is None:
                out[heads[r]] = Entry(path, "output", ("heads", None), d, n, True)
        return
    path = f"{a.core}.{a.fused}"
    # a fused projection without a problem has every size (introspect.py checks them against its width)
    assert H is not None and KV is not None and d is not None
    if a.layout == "concat":
        spans = {"query": (0, H), "key": (H, KV), "value": (H + KV, KV)}
        for r, (start, n) in spans.items():
            out[names[r]] = Entry(path, "output", ("slice", start * d, n * d), n * d)
            out[heads[r]] = Entry(path, "output", ("slice_heads", start * d, n * d), d, n, True)
    elif a.layout == "interleaved":
        for slot, r in enumerate(("query", "key", "value")):
            out[names[r]] = Entry(path, "output", ("interleaved", slot, 3), H * d, H)
            out[heads[r]] = Entry(path, "output", ("interleaved_heads", slot, 3), d, H, True)
    elif a.layout == "grouped":
        per = H // KV + 2
        for slot, r in ((per - 2, "key"), (per - 1, "value")):
            out[names[r]] = Entry(path, "output", ("interleaved", slot, per), KV * d, KV)
            out[heads[r]] = Entry(path, "output", ("interleaved_heads", slot, per), d, KV, True)
        out[names["query"]] = Entry(path, "output", ("grouped", per - 2, per), H * d, KV)
        if KV == 1:
            out[heads["query"]] = Entry(path, "output", ("slice_heads", 0, H * d), d, H, True)
        else:
            out[heads["query"]] = (
                "the fused projection stores each key/value group's query heads together, so the "
                "query heads are not one strided axis; use query_output"
            )


def attention_entries(a: Attention, prefix: str, hidden: int | None, cfg: Any, out: dict) -> None:
    p = prefix
    out[f"{p}attention_input"] = Entry(a.core, "input", None, hidden)
    if a.out is not None:
        out[f"{p}attention_output"] = Entry(a.out[0], a.out[1], None, hidden)
    else:
        out[f"{p}attention_output"] = "no output projection found in the attention module"
    if a.o is not None:
        hd = a.n_heads * a.head_dim if a.n_heads and a.head_dim else None
        out[f"{p}attention_value_output"] = Entry(a.o, "input", None, hd)
        out[f"head_{p}attention_value_output"] = (
            Entry(a.o, "input", ("heads", None), a.head_dim, a.n_heads, True) if a.problem is None else a.problem
        )
    else:
        out[f"{p}attention_value_output"] = out[f"head_{p}attention_value_output"] = "no output projection found"
    if a.interface:
        out[f"{p}attention_weight"] = Entry(a.core, "attn_probs", None, _max_pos(cfg), None, True)
    elif a.prob_module is not None:
        out[f"{p}attention_weight"] = Entry(f"{a.core}.{a.prob_module}", "input", None, _max_pos(cfg), None, True)
    else:
        out[f"{p}attention_weight"] = (
            "this attention computes its probabilities inline, without transformers' attention "
            "interface or a module that receives them"
        )
    _qkv_entries(a, p, out)


def stack_entries(stack: Stack, an: Anatomy) -> dict[str, Entry | str]:
    out: dict[str, Entry | str] = {}
    h = an.hidden
    out["block_input"] = Entry("", "input", None, h)
    out["block_output"] = Entry("", "output", None, h)
    if an.mixer is not None:
        out["mixer_input"] = Entry(an.mixer, "input", None, h)
        out["mixer_output"] = Entry(an.mixer, "output", None, h)
        for name in ("attention_input", "attention_output", "attention_weight", "mlp_input", "mlp_output", "mlp_activation"):
            out[name] = "a state-space block has no attention or MLP; use mixer_input / mixer_output"
        return out
    if an.attn is not None:
        attention_entries(an.attn, "", h, stack.config, out)
    if an.mlp_in is not None and an.mlp_out is not None:  # set together
        out["mlp_input"] = Entry(an.mlp_in[0], an.mlp_in[1], None, h)
        out["mlp_output"] = Entry(an.mlp_out[0], an.mlp_out[1], None, h)
        out["mlp_activation"] = Entry(an.act, "output", None, an.inner) if an.act and not an.act_problem else (
            an.act_problem or "no activation module found in the MLP"
        )
    else:
        for name in ("mlp_input", "mlp_output", "mlp_activation"):
            out[name] = "no feed-forward sublayer found in the block"
    if an.cross is not None:
        attention_entries(an.cross, "cross_", h, stack.config, out)
    out.update(BLOCK_OVERRIDES.get(an.block_cls, {}))
    return out
