"""Override tables, keyed by ``config.model_type`` strings: used instead of introspection for
GPT-2, GPT-Neo and GPT-NeoX (whose components pyvene defines exactly so) and the built-in toy
models (MLP, GRU), which have no attention to introspect.

Each entry maps a pyvene component name to ``(module path relative to one layer, io, view)``:

* ``io`` is ``"input"``, ``"output"`` or ``"attn_probs"`` (the attention probabilities, exposed by
  vene's probe attention for models that compute them functionally).
* ``view`` describes how the hooked tensor is reshaped before units are indexed (see
  :mod:`vene.components`): ``None``; ``("chunk", i, n)`` (the i-th of n equal slices of the last
  dim); ``("heads", n_heads_key)``; ``("chunk_heads", i, n, n_heads_key)``;
  ``("neox_qkv", i)`` / ``("neox_qkv_heads", i)``.

Dimensions are given as functions of the model config.
"""
from __future__ import annotations

from typing import Any, Callable


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def n_heads(cfg: Any) -> int:
    return int(_get(cfg, "num_attention_heads", "n_head", "num_heads"))


def n_kv_heads(cfg: Any) -> int:
    return int(_get(cfg, "num_key_value_heads", default=n_heads(cfg)))


def hidden(cfg: Any) -> int:
    return int(_get(cfg, "hidden_size", "n_embd", "d_model"))


def head_dim(cfg: Any) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else hidden(cfg) // n_heads(cfg)


def mlp_inner(cfg: Any) -> int:
    return int(_get(cfg, "intermediate_size", "n_inner", default=4 * hidden(cfg)))


def max_pos(cfg: Any) -> int:
    return int(_get(cfg, "max_position_embeddings", "n_positions", "n_ctx", default=0))


HEADS = {"n_head": n_heads, "n_kv_head": n_kv_heads}

# component -> (relative module path, io, view, dim fn)
Table = dict[str, tuple[str, str, Any, Callable[[Any], int]]]

GPT2: Table = {
    "block_input": ("", "input", None, hidden),
    "block_output": ("", "output", None, hidden),
    "mlp_activation": ("mlp.act", "output", None, mlp_inner),
    "mlp_output": ("mlp", "output", None, hidden),
    "mlp_input": ("mlp", "input", None, hidden),
    "attention_value_output": ("attn.c_proj", "input", None, hidden),
    "head_attention_value_output": ("attn.c_proj", "input", ("heads", "n_head"), head_dim),
    "attention_weight": ("attn", "attn_probs", None, max_pos),
    "attention_output": ("attn", "output", None, hidden),
    "attention_input": ("attn", "input", None, hidden),
    "query_output": ("attn.c_attn", "output", ("chunk", 0, 3), hidden),
    "key_output": ("attn.c_attn", "output", ("chunk", 1, 3), hidden),
    "value_output": ("attn.c_attn", "output", ("chunk", 2, 3), hidden),
    "head_query_output": ("attn.c_attn", "output", ("chunk_heads", 0, 3, "n_head"), head_dim),
    "head_key_output": ("attn.c_attn", "output", ("chunk_heads", 1, 3, "n_head"), head_dim),
    "head_value_output": ("attn.c_attn", "output", ("chunk_heads", 2, 3, "n_head"), head_dim),
}


GPT_NEO: Table = {
    "block_input": ("", "input", None, hidden),
    "block_output": ("", "output", None, hidden),
    "mlp_activation": ("mlp.act", "output", None, mlp_inner),
    "mlp_output": ("mlp", "output", None, hidden),
    "mlp_input": ("mlp", "input", None, hidden),
    "attention_value_output": ("attn.attention.out_proj", "input", None, hidden),
    "head_attention_value_output": ("attn.attention.out_proj", "input", ("heads", "n_head"), head_dim),
    "attention_weight": ("attn.attention.attn_dropout", "input", None, max_pos),
    "attention_output": ("attn", "output", None, hidden),
    "attention_input": ("attn", "input", None, hidden),
    "query_output": ("attn.attention.q_proj", "output", None, hidden),
    "key_output": ("attn.attention.k_proj", "output", None, hidden),
    "value_output": ("attn.attention.v_proj", "output", None, hidden),
    "head_query_output": ("attn.attention.q_proj", "output", ("heads", "n_head"), head_dim),
    "head_key_output": ("attn.attention.k_proj", "output", ("heads", "n_head"), head_dim),
    "head_value_output": ("attn.attention.v_proj", "output", ("heads", "n_head"), head_dim),
}

GPT_NEOX: Table = {
    "block_input": ("", "input", None, hidden),
    "block_output": ("", "output", None, hidden),
    "mlp_activation": ("mlp.act", "output", None, mlp_inner),
    "mlp_output": ("mlp", "output", None, hidden),
    "mlp_input": ("mlp", "input", None, hidden),
    "attention_value_output": ("attention.dense", "input", None, hidden),
    "head_attention_value_output": ("attention.dense", "input", ("heads", "n_head"), head_dim),
    "attention_weight": ("attention", "attn_probs", None, max_pos),
    "attention_output": ("attention", "output", None, hidden),
    "attention_input": ("attention", "input", None, hidden),
    "query_output": ("attention.query_key_value", "output", ("neox_qkv", 0), hidden),
    "key_output": ("attention.query_key_value", "output", ("neox_qkv", 1), hidden),
    "value_output": ("attention.query_key_value", "output", ("neox_qkv", 2), hidden),
    "head_query_output": ("attention.query_key_value", "output", ("neox_qkv_heads", 0), head_dim),
    "head_key_output": ("attention.query_key_value", "output", ("neox_qkv_heads", 1), head_dim),
    "head_value_output": ("attention.query_key_value", "output", ("neox_qkv_heads", 2), head_dim),
}

# model_type -> (name of the ModuleList that holds the layers, table)
ARCHITECTURES: dict[str, tuple[str, Table]] = {
    "gpt2": ("h", GPT2),
    "gpt_neo": ("h", GPT_NEO),
    "gpt_neox": ("layers", GPT_NEOX),
}
# Llama-like decoders (Llama, Mistral, Qwen, Gemma, OLMo…) need no table: introspection finds
# their layers/self_attn/{q,k,v,o}_proj/mlp.act_fn (vene.components.introspect).


def _h_dim(cfg: Any) -> int:
    return int(cfg.h_dim)


MLP: Table = {
    "block_input": ("", "input", None, _h_dim),
    "block_output": ("", "output", None, _h_dim),
    "mlp_activation": ("act", "output", None, _h_dim),
}
ARCHITECTURES["mlp"] = ("h", MLP)


def _three_h_dim(cfg: Any) -> int:
    return 3 * int(cfg.h_dim)


# Built-in GRU (vene.models.gru): each cells[L] runs once per time step, so these components are
# per-step tensors (batch, d), addressed with unit "t": a location is a time step, per example
# ({"base": 3}; {"sources->base": (6, 3)} puts the source's step 6 into the base's step 3;
# [[3], [5]] gives each example its own step). Only the requested steps of the requested examples
# are intervened; every other step keeps its exact values (also for constant-source interventions
# such as Zero). Without locations every step is intervened, base step t taking source step t.
# A collect intervention on "t" returns one (batch, units, d) tensor: each example's steps.
GRU: Table = {
    "cell_input": ("", "input", None, _h_dim),
    "cell_output": ("", "output", None, _h_dim),
    "x2h_output": ("x2h", "output", None, _three_h_dim),
    "h2h_output": ("h2h", "output", None, _three_h_dim),
}
for _i, _gate in enumerate(("reset", "update", "new")):
    GRU[f"{_gate}_gate_input"] = (f"{_gate}_act", "input", None, _h_dim)
    GRU[f"{_gate}_gate_output"] = (f"{_gate}_act", "output", None, _h_dim)
    GRU[f"{_gate}_x2h_output"] = ("x2h", "output", ("chunk", _i, 3), _h_dim)
    GRU[f"{_gate}_h2h_output"] = ("h2h", "output", ("chunk", _i, 3), _h_dim)
ARCHITECTURES["gru"] = ("cells", GRU)
