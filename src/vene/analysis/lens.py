"""Logit lens and direct logit attribution for decoder language models.

* :func:`logit_lens` reads the residual stream after every layer through the model's own final
  norm and output head: ``logits_L = unembed(final_norm(resid_L))``. The last layer's row is the
  model's output.
* :func:`direct_logit_attribution` splits the final residual stream at one position into the
  embeddings and each layer's attention and MLP outputs (and each attention head's share, through
  the output projection), and reads each part's direct effect on ``logit[correct] -
  logit[wrong]`` with the final norm's scale frozen at its value on the whole stream. The parts
  add up to the model's logit difference; vene checks that they do and raises when an
  architecture does not decompose this way (e.g. post-attention norms, logit soft-capping).

The final norm is found from the module tree (the norm next to the layer stack: ``norm``,
``ln_f``, ``final_layer_norm``...) and its kind from its class and parameters: LayerNorm
(centre, scale, bias), RMSNorm (scale; Gemma's ``1 + weight``). Both are recorded in the result.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence, cast

import torch
from torch import nn

from ..components import detect_architecture, get_module, resolve_site
from ..errors import ConfigError
from .cache import run_with_cache
from .causal_trace import n_layers_of, token_labels
from .grids import Grid, GridSet

logger = logging.getLogger(__name__)

_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


def final_norm_and_head(model: nn.Module) -> tuple[str | None, nn.Module | None, nn.Module]:
    """``(path, final norm or None, output head)`` of a decoder LM."""
    arch = detect_architecture(model)
    if arch is None:
        raise ConfigError(f"The logit lens needs a decoder LM with a known layer stack; {type(model).__name__} has none.")
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output head (get_output_embeddings() is None); "
                          "use a *ForCausalLM / *LMHeadModel model.")
    parent_path = arch[1].rsplit(".", 1)[0] if "." in arch[1] else ""
    parent = get_module(model, parent_path)
    for name in _NORM_NAMES:
        mod = getattr(parent, name, None)
        if isinstance(mod, nn.Module):
            return (f"{parent_path}.{name}" if parent_path else name), mod, head
    logger.info("no final norm found next to %s; the lens applies the head directly", arch[1])
    return None, None, head


def _softcap(model: nn.Module) -> float | None:
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None) or None


def unembed(model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """``head(final_norm(resid))`` (with the model's logit soft-capping, if any) -> logits."""
    _, norm, head = final_norm_and_head(model)
    h = norm(resid) if norm is not None else resid
    logits = head(h).float()
    cap = _softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logit_lens(
    model: nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    positions: Sequence[int] | None = (-1,),
    layers: Sequence[int] | None = None,
    target: int | str | None = None,
    top_k: int = 5,
) -> GridSet:
    """The residual stream after each layer, read through the final norm and the head.

    Args:
        inputs: one prompt (text with ``tokenizer``, ids, or tokenizer output); with a batch,
            the first row is read.
        positions: positions to read (default: the last); None: all.
        target: a token id or text (its first token) whose log-probability is tracked; default:
            the model's own prediction at each position.
    Returns a :class:`GridSet` with ``logprob`` (log p(target), axes ``("layer", "position")``,
    layer labels ``"embed", 0, 1, ...``) and ``rank`` (the target's rank, 0 = top); ``meta["top"]``
    holds the top-k tokens of every cell.
    """
    from .patching import _as_inputs

    ins = _as_inputs(inputs, tokenizer, "lens")
    ids = ins["input_ids"][:1]
    ins = {k: v[:1] for k, v in ins.items()}
    seq = ids.shape[1]
    pos = list(range(seq)) if positions is None else [int(p) % seq for p in positions]
    n = n_layers_of(model)
    ls = list(range(n)) if layers is None else [int(l) % n for l in layers]
    cache = run_with_cache(model, ins, ["block_output"], layers=ls, positions=pos)
    emb = run_with_cache(model, ins, ["block_input"], layers=[0], positions=pos)["block_input", 0]
    resid = torch.cat([emb, cache.stack("block_output")[:, 0]], 0)  # (1 + L, P, d)
    norm_path, _, _ = final_norm_and_head(model)
    with torch.no_grad():
        logp = unembed(model, resid).log_softmax(-1)  # (1 + L, P, vocab)
    final_logits = cache.output.logits[0, pos].float()
    if isinstance(target, str):
        if tokenizer is None:
            raise ConfigError("A text target needs tokenizer=.")
        tgt = torch.full((len(pos),), int(tokenizer(target, add_special_tokens=False)["input_ids"][0]))
    elif target is None:
        tgt = final_logits.argmax(-1)
    else:
        tgt = torch.full((len(pos),), int(target))
    lp = logp.gather(-1, tgt.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)
    rank = (logp > lp.unsqueeze(-1)).sum(-1).float()
    top = logp.topk(top_k, dim=-1)
    layer_labels: list[Any] = ["embed"] + ls
    decode = (lambda i: tokenizer.decode([int(i)])) if tokenizer is not None else (lambda i: str(int(i)))
    top_tokens = [[[decode(t) for t in top.indices[r, c]] for c in range(len(pos))] for r in range(resid.shape[0])]
    tokens = token_labels(tokenizer, ids[0].tolist()) if tokenizer is not None else None
    pos_labels = [f"{p} {tokens[p]!r}" if tokens else p for p in pos]
    meta = {"final_norm": norm_path, "target": [decode(t) for t in tgt], "top": top_tokens, "tokens": tokens,
            "positions": pos, "max_abs_error_last_layer": float((logp[-1] - final_logits.log_softmax(-1)).abs().max())
            if ls and ls[-1] == n - 1 else None}
    grids = {
        "logprob": Grid(lp, ("layer", "position"), {"layer": layer_labels, "position": pos_labels}, "log p(target)",
                        {"title": "logit lens: log p(target)"}),
        "rank": Grid(rank, ("layer", "position"), {"layer": layer_labels, "position": pos_labels}, "rank of target",
                     {"title": "logit lens: rank of target"}),
    }
    return GridSet(grids, meta)


# ---------------------------------------------------------------------------------------------
# direct logit attribution


def _norm_affine(norm: nn.Module | None, model: nn.Module, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``(scale, bias, centre?)`` so that ``norm(r) == scale * (r - centre * mean(r)) + bias`` at
    this ``resid`` ``(P, d)``, with the scale frozen; checked against the module."""
    d = resid.shape[-1]
    if norm is None:
        return torch.ones_like(resid), torch.zeros(d), torch.zeros(1), "none"
    cls = type(norm).__name__.lower()
    w = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5
    r = resid.float()
    if "rms" in cls:
        weight = w.float() if w is not None else torch.ones(d)
        if str(getattr(getattr(model, "config", None), "model_type", "")).startswith("gemma"):
            weight = 1.0 + weight
        scale = weight / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + eps)
        bias, centre, kind = torch.zeros(d), torch.zeros(1), "rmsnorm"
    elif "layernorm" in cls or isinstance(norm, nn.LayerNorm):
        weight = w.float() if w is not None else torch.ones(d)
        var = r.var(-1, keepdim=True, unbiased=False)
        scale = weight / torch.sqrt(var + eps)
        bias, centre, kind = (b.float() if b is not None else torch.zeros(d)), torch.ones(1), "layernorm"
    else:
        raise ConfigError(f"Direct logit attribution does not know the final norm {type(norm).__name__}; "
                          "it handles LayerNorm and RMSNorm variants.")
    with torch.no_grad():
        ref = norm(resid).float()
    mine = scale * (r - centre * r.mean(-1, keepdim=True)) + bias
    if not torch.allclose(mine, ref, atol=1e-4, rtol=1e-3):
        raise ConfigError(f"The final norm {type(norm).__name__} does not compute a {kind} as expected "
                          f"(max error {float((mine - ref).abs().max()):.3g}); direct logit attribution would be wrong.")
    return scale, bias, centre, kind


def _head_split(model: nn.Module, layer: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head output ``(heads, P, d)`` of the attention output projection given its per-head
    input ``z`` ``(heads, P, head_dim)``, and its bias."""
    site = resolve_site(model, "head_attention_value_output", layer)
    proj = get_module(model, site.module_path)
    w = cast(torch.Tensor, proj.weight).float()  # a Linear's / Conv1D's (checked below); Module attributes type as Tensor | Module
    n_h, _, dh = z.shape
    if isinstance(proj, nn.Linear):  # weight (out, in)
        w_h = w.T.reshape(n_h, dh, -1)
    elif type(proj).__name__ == "Conv1D":  # GPT-2: weight (in, out)
        w_h = w.reshape(n_h, dh, -1)
    else:
        raise ConfigError(f"Per-head attribution needs a Linear or Conv1D output projection, not {type(proj).__name__}.")
    b = getattr(proj, "bias", None)
    bias = b.float() if b is not None else None
    return torch.einsum("hpk,hkd->hpd", z.float(), w_h), bias


def direct_logit_attribution(
    model: nn.Module,
    inputs: Any,
    correct: Any,
    wrong: Any = None,
    tokenizer: Any = None,
    position: int = -1,
    heads: bool = True,
) -> GridSet:
    """Direct effect of every residual-stream part on ``logit[correct] - logit[wrong]`` (or on
    ``logit[correct]`` without ``wrong``) at ``position``, averaged over the batch.

    ``correct`` / ``wrong``: a token id or text, or one id per example (a list or tensor of
    ``batch`` ids, e.g. each IOI prompt's indirect object and subject).

    Returns a :class:`GridSet`: ``components`` (axis ``"component"``: ``embed``, ``attn 0``,
    ``mlp 0``, ... and ``bias`` for the norm and head biases) and, with ``heads=True``,
    ``heads`` (axes ``("layer", "head")``; the output projection's bias is kept in the layer's
    ``attn`` entry only). ``meta["logit_diff"]`` is the model's value, ``meta["sum"]`` the sum
    of the parts (they agree to float precision).
    """
    from .patching import _as_inputs

    if _softcap(model):
        raise ConfigError("Direct logit attribution needs logits linear in the final residual; this model soft-caps them.")
    ins = _as_inputs(inputs, tokenizer, "attribution")

    B = ins["input_ids"].shape[0]

    def tok(x: Any) -> torch.Tensor:
        if isinstance(x, str):
            if tokenizer is None:
                raise ConfigError("A text token needs tokenizer=.")
            x = int(tokenizer(x, add_special_tokens=False)["input_ids"][0])
        t = torch.as_tensor(x, dtype=torch.long).flatten()
        if t.numel() == 1:
            t = t.expand(B)
        if t.numel() != B:
            raise ConfigError(f"Pass one token or one per example ({B}), not {t.numel()}.")
        return t

    c_id = tok(correct)
    w_id = tok(wrong) if wrong is not None else None
    n = n_layers_of(model)
    comps = ["block_input", "attention_output", "mlp_output", "block_output"] + (["head_attention_value_output"] if heads else [])
    keep = {"block_input.0", f"block_output.{n - 1}"} | {f"{c}.{l}" for c in comps[1:] if c != "block_output" for l in range(n)}
    cache = run_with_cache(model, ins, comps, names_filter=lambda k: k in keep, positions=[position])
    with torch.no_grad():  # parameters may require grad; nothing here is differentiated
        return _dla(model, cache, n, c_id, w_id, B, position, heads, tokenizer)


def _dla(model: nn.Module, cache: Any, n: int, c_id: torch.Tensor, w_id: torch.Tensor | None, B: int, position: int,
         heads: bool, tokenizer: Any) -> GridSet:
    norm_path, norm, head = final_norm_and_head(model)
    final = cache["block_output", n - 1][:, 0].float()  # (B, d)
    parts = {"embed": cache["block_input", 0][:, 0].float()}
    for l in range(n):
        parts[f"attn {l}"] = cache["attention_output", l][:, 0].float()
        parts[f"mlp {l}"] = cache["mlp_output", l][:, 0].float()
    total = torch.stack(list(parts.values())).sum(0)
    if not torch.allclose(total, final, atol=1e-3 * (1 + float(final.abs().max())), rtol=1e-3):
        raise ConfigError(f"The residual stream of {type(model).__name__} is not the sum of the embeddings and the "
                          f"attention and MLP outputs (max error {float((total - final).abs().max()):.3g}); direct logit "
                          "attribution needs that decomposition.")
    scale, bias, centre, kind = _norm_affine(norm, model, final)
    W = cast(torch.Tensor, head.weight).float()  # the output head's (vocab, d) weight
    direction = W[c_id] - (W[w_id] if w_id is not None else 0.0)  # (B, d)
    hb = getattr(head, "bias", None)
    head_bias = (hb[c_id] - (hb[w_id] if w_id is not None else 0.0)).float().mean() if hb is not None else torch.tensor(0.0)

    def direct(x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return ((scale * (x - centre * x.mean(-1, keepdim=True))) * direction).sum(-1)

    contrib = {k: direct(v).mean() for k, v in parts.items()}
    contrib["bias"] = (direction @ bias).mean() + head_bias
    logits = cache.output.logits[:, position].float()
    rows = torch.arange(B)
    actual = (logits[rows, c_id] - (logits[rows, w_id] if w_id is not None else 0.0)).mean()
    names = list(contrib)
    values = torch.stack([contrib[k] for k in names])
    same = bool((c_id == c_id[0]).all()) and (w_id is None or bool((w_id == w_id[0]).all()))
    dec = (lambda i: repr(tokenizer.decode([int(i)]))) if tokenizer is not None else (lambda i: str(int(i)))
    if same:
        target = f"logit[{dec(c_id[0])}]" + (f" - logit[{dec(w_id[0])}]" if w_id is not None else "")
    else:
        target = "logit[correct] - logit[wrong] (per example)" if w_id is not None else "logit[correct] (per example)"
    meta = {"final_norm": norm_path, "norm_kind": kind, "target": target, "logit_diff": float(actual),
            "sum": float(values.sum()), "position": position}
    grids = {"components": Grid(values, ("component",), {"component": names}, "direct effect",
                                {"title": f"direct logit attribution: {target}"})}
    if heads:
        head_rows = []
        for l in range(n):
            z = cache["head_attention_value_output", l]  # (B, H, 1, dh)
            per_head = torch.stack([_head_split(model, l, z[b])[0] for b in range(z.shape[0])])  # (B, H, 1, d)
            head_rows.append(torch.stack([direct(per_head[:, h, 0]).mean() for h in range(per_head.shape[1])]))
        grid = torch.stack(head_rows)
        grids["heads"] = Grid(grid, ("layer", "head"), {"layer": list(range(n))}, "direct effect",
                              {"title": f"per-head direct effect: {target}"})
    return GridSet(grids, meta)
