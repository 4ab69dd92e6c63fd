"""Find a model's layer stacks and each block's parts from its module tree, configs and weights.

A *stack* is a ``ModuleList`` of identical blocks that hold an attention (q/k/v projections,
separate or fused) or a state-space mixer. Each stack gets a short name from its path
(``encoder``, ``decoder``, ``vision``, ``text``, ``text_encoder``…); one of them is the *default*
stack that unprefixed component names address (the language model of a multimodal wrapper, the
encoder of an encoder-decoder model, as in pyvene's Whisper and T5 examples).

:func:`block_anatomy` describes one block: where its attention core, output projection,
cross-attention, MLP input/output and activation are, the head counts (module attributes, then the
config the module reads, then weight shapes) and, for fused q/k/v projections, their layout. The
layouts of fused projections cannot be read off the weights, so they come from
:data:`FUSED_LAYOUTS`, the only per-family table here.
"""
from __future__ import annotations

import re

import weakref
from dataclasses import dataclass
from typing import Any, Callable, cast

from torch import nn

Q_NAMES = ("q_proj", "q", "query", "q_lin", "wq")
K_NAMES = ("k_proj", "k", "key", "k_lin", "wk")
V_NAMES = ("v_proj", "v", "value", "v_lin", "wv")
FUSED_NAMES = ("c_attn", "query_key_value", "qkv_proj", "qkv", "Wqkv", "W_pack")
O_NAMES = ("o_proj", "out_proj", "o", "dense", "c_proj", "out_lin", "wo", "projection", "proj")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "DenseReluDense", "block_sparse_moe", "feedforward")
ACT_NAMES = ("act", "act_fn", "activation_fn", "activation", "gelu_impl", "intermediate_act_fn", "act_layer")
CROSS_MARKS = ("cross", "encoder_attn", "EncDecAttention")
MIXER_NAMES = ("mixer",)

# stack name <- the first path segment containing one of these (checked in order)
_STACK_WORDS = (
    ("vision", "vision"), ("visual", "vision"), ("image", "vision"), ("audio", "audio"),
    ("text_encoder", "text_encoder"), ("text_decoder", "text_decoder"), ("language", "text"),
    ("text", "text"), ("encoder", "encoder"), ("decoder", "decoder"),
)
STACK_ALIASES = {"language": "text", "lm": "text"}


def _layout_falcon(cfg: Any) -> str:
    if getattr(cfg, "new_decoder_architecture", False):
        return "grouped"
    return "concat" if getattr(cfg, "multi_query", False) else "interleaved"


#: attention class name -> layout of its fused q/k/v projection output, read from each modeling
#: file: "concat" ``[q heads | k heads | v heads]``; "interleaved" ``(heads, 3, head_dim)``;
#: "grouped" ``(kv_heads, q_per_kv + 2, head_dim)``. A fused projection of a class not listed
#: here gets no q/k/v components (its layout cannot be read off the weights), never a guess.
FUSED_LAYOUTS: dict[str, Callable[[Any], str]] = {
    "GPT2Attention": lambda cfg: "concat",
    "Phi3Attention": lambda cfg: "concat",
    "BlipAttention": lambda cfg: "concat",
    "GPTNeoXAttention": lambda cfg: "interleaved",
    "BloomAttention": lambda cfg: "interleaved",
    "PersimmonAttention": lambda cfg: "interleaved",
    "FalconAttention": _layout_falcon,
    "GPTBigCodeAttention": lambda cfg: "concat" if getattr(cfg, "multi_query", True) else "interleaved",
}


@dataclass
class Stack:
    name: str
    path: str
    n_layers: int
    kind: str  # "attention" | "mixer"
    config: Any = None


@dataclass
class Attention:
    core: str  # path relative to the block of the module holding q/k/v
    q: str | None = None
    k: str | None = None
    v: str | None = None
    fused: str | None = None
    layout: str = "separate"
    o: str | None = None
    out: tuple[str, str] | None = None  # (path, io) of the attention sublayer's output
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    problem: str | None = None  # why head components are unavailable
    qkv_problem: str | None = None  # why q/k/v components are unavailable
    interface: bool = False  # goes through transformers' attention-function interface
    cls_name: str = ""
    prob_module: str | None = None  # child receiving the probabilities of an inline attention


@dataclass
class Anatomy:
    hidden: int | None = None
    attn: Attention | None = None
    cross: Attention | None = None
    mlp_in: tuple[str, str] | None = None
    mlp_out: tuple[str, str] | None = None
    act: str | None = None
    act_problem: str | None = None
    inner: int | None = None
    mixer: str | None = None
    block_cls: str = ""


# ---------------------------------------------------------------------------------------------


def _children(mod: nn.Module) -> dict[str, nn.Module]:
    return dict(mod.named_children())


def _first(mod: nn.Module, names: tuple[str, ...]) -> str | None:
    ch = _children(mod)
    for n in names:
        if n in ch:
            return n
    return None


def _in_out(mod: nn.Module) -> tuple[int | None, int | None]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)
    nf = getattr(mod, "nf", None)
    if nf is not None and w is not None:  # transformers' Conv1D: weight (in, out)
        return int(w.shape[0]), int(nf)
    if w is not None and getattr(w, "dim", lambda: 0)() == 2:
        return int(w.shape[1]), int(w.shape[0])
    return None, None


def _has_attention_parts(mod: nn.Module) -> bool:
    ch = _children(mod)
    if any(n in ch for n in FUSED_NAMES):
        return True
    return all(any(n in ch for n in names) for names in (Q_NAMES, K_NAMES, V_NAMES))


def _attention_cores(block: nn.Module) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = []
    for name, mod in block.named_modules():
        if name and _has_attention_parts(mod):
            if not any(name.startswith(p + ".") for p, _ in found):
                found.append((name, mod))
    return found


def _stack_name(path: str) -> str:
    for seg in path.split("."):
        low = seg.lower()
        for word, name in _STACK_WORDS:
            if word in low:
                return name
    return "layers"


def _config_of(model: nn.Module, path: str) -> Any:
    """The config of the nearest module at or above ``path`` that has one."""
    parts = path.split(".") if path else []
    for i in range(len(parts), -1, -1):
        mod = model.get_submodule(".".join(parts[:i])) if i else model
        cfg = getattr(mod, "config", None)
        if cfg is not None and not callable(cfg):
            return cfg
    return None


#: model -> ((stacks, default index), number of modules when computed)
_STACKS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[list[Stack], int], int]]" = weakref.WeakKeyDictionary()


def find_stacks(model: nn.Module) -> tuple[list[Stack], int]:
    """All layer stacks of ``model`` and the index of the default one."""
    n_mods = sum(1 for _ in model.modules())
    hit = _STACKS.get(model)
    if hit is not None and hit[1] == n_mods:
        return hit[0]
    stacks: list[Stack] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(name.startswith(s.path + ".") for s in stacks):
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        first = mod[0]
        if _attention_cores(first):
            kind = "attention"
        elif any(n in _children(first) for n in MIXER_NAMES):
            kind = "mixer"
        else:
            continue
        stacks.append(Stack(_stack_name(name), name, len(mod), kind, _config_of(model, name)))
    seen: dict[str, int] = {}
    for s in stacks:
        seen[s.name] = seen.get(s.name, 0) + 1
    for name, count in seen.items():
        if count > 1:
            for i, s in enumerate([s for s in stacks if s.name == name]):
                s.name = f"{name}{i}"
    result = (stacks, _default_stack(stacks))
    _STACKS[model] = (result, n_mods)
    return result


def _default_stack(stacks: list[Stack]) -> int:
    if not stacks:
        return -1
    for pref in ("text", "text_encoder", "encoder", "layers", "decoder"):
        for i, s in enumerate(stacks):
            if s.name == pref:
                return i
    return 0


# ---------------------------------------------------------------------------------------------


def _int_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


_H_ATTRS = ("num_heads", "n_heads", "num_attention_heads", "n_head")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads", "n_head_kv")
_D_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")


def _heads_from_config(cfg: Any, stack: Stack | None) -> int | None:
    if cfg is None:
        return None
    if stack is not None and stack.name in ("encoder", "decoder"):
        v = _int_attr(cfg, (f"{stack.name}_attention_heads",))
        if v:
            return v
    return _int_attr(cfg, ("num_attention_heads", "n_head", "num_heads"))


def _describe_attention(block: nn.Module, rel: str, core: nn.Module, stack: Stack | None) -> Attention:
    a = Attention(core=rel, cls_name=type(core).__name__)
    ch = _children(core)
    a.q, a.k, a.v = (_first(core, names) for names in (Q_NAMES, K_NAMES, V_NAMES))
    a.fused = _first(core, FUSED_NAMES) if a.q is None or a.k is None or a.v is None else None
    if a.fused is not None:
        a.q = a.k = a.v = None
    o = _first(core, O_NAMES)
    if o is not None and o != a.fused:
        a.o = f"{rel}.{o}"
        a.out = (rel, "output")
    else:  # BERT-like: the output projection is a sibling (attention.output.dense)
        parent_path = rel.rsplit(".", 1)[0] if "." in rel else ""
        parent = block.get_submodule(parent_path) if parent_path else block
        out_mod = _children(parent).get("output")
        if out_mod is not None and "dense" in _children(out_mod):
            base = f"{parent_path}.output.dense" if parent_path else "output.dense"
            a.o = base
            a.out = (base, "output")
    cfg = getattr(core, "config", None) or (stack.config if stack is not None else None)
    a.n_heads = _int_attr(core, _H_ATTRS) or _heads_from_config(cfg, stack)
    a.head_dim = _int_attr(core, _D_ATTRS) or _int_attr(cfg, ("head_dim",))
    a.n_kv_heads = _int_attr(core, _KV_ATTRS)
    if a.n_kv_heads is None and getattr(core, "multi_query", False) is True:
        a.n_kv_heads = 1
    qd = _in_out(ch[a.q])[1] if a.q else None
    if a.head_dim is None and a.n_heads and qd:
        a.head_dim = qd // a.n_heads
    d = a.head_dim
    if a.fused is not None:
        total = _in_out(ch[a.fused])[1]
        maker = FUSED_LAYOUTS.get(type(core).__name__)
        a.layout = maker(cfg) if maker is not None else "unknown"
        if a.n_kv_heads is None and total and d and a.n_heads:
            a.n_kv_heads = (total // d - a.n_heads) // 2
        if a.layout == "unknown":
            a.qkv_problem = (
                f"the layout of the fused projection {type(core).__name__}.{a.fused} is not known to "
                "vene (add it to vene.components.introspect.FUSED_LAYOUTS)"
            )
        elif not (total and d and a.n_heads and a.n_kv_heads) or (a.n_heads + 2 * a.n_kv_heads) * d != total:
            a.problem = f"cannot split {type(core).__name__}.{a.fused} ({total} features) into q/k/v heads"
    else:
        kd = _in_out(ch[a.k])[1] if a.k else None
        if d and kd and kd % d == 0:
            a.n_kv_heads = kd // d  # the weights decide (GQA/MQA)
        if not (d and a.n_heads and qd == a.n_heads * d and a.n_kv_heads):
            a.problem = (
                f"cannot tell the heads of {type(core).__name__} (q has {qd} features, "
                f"{a.n_heads} heads of size {d})"
            )
    if a.o is not None:
        od = _in_out(block.get_submodule(a.o))[0]
        if od is not None and d and a.n_heads and od != a.n_heads * d:
            a.problem = a.problem or f"the output projection takes {od} features, not {a.n_heads}x{d}"
    a.interface = _uses_attention_interface(type(core))
    if not a.interface:
        a.prob_module = _prob_module(core)
    return a


_IFACE_CACHE: dict[type, bool] = {}


def _uses_attention_interface(cls: type[nn.Module]) -> bool:
    """Whether ``cls.forward`` calls an attention function picked from transformers' registry
    (``ALL_ATTENTION_FUNCTIONS``), the one place vene can read the probabilities of any implementation.
    A forward that only branches on ``config._attn_implementation`` (e.g. SDPA or an inline softmax,
    as Falcon did before transformers 5.24) does not count: its SDPA branch never forms them."""
    if cls not in _IFACE_CACHE:
        _IFACE_CACHE[cls] = "ALL_ATTENTION_FUNCTIONS" in _source(cls.forward)
    return _IFACE_CACHE[cls]


def _source(obj: Any) -> str:
    import inspect

    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


_SOFTMAX_ASSIGN = re.compile(r"^\s*(\w+)\s*=\s*[\w.]*(?:softmax|Softmax)\(", re.M)
_SELF_CALL = re.compile(r"self\.(\w+)\(\s*(\w+)\s*\)")


def _prob_module(core: nn.Module) -> str | None:
    """The child of an inline attention that receives its probabilities: a dropout module called on
    a variable assigned from a softmax, in the source of the attention's own classes (e.g.
    ``attn_weights = softmax(...)`` ... ``self.attn_dropout(attn_weights)``). ``None`` if there is none."""
    src = "\n".join(_source(c) for c in type(core).__mro__ if issubclass(c, nn.Module) and c is not nn.Module)
    probs = set(_SOFTMAX_ASSIGN.findall(src))
    children = _children(core)
    for child, arg in _SELF_CALL.findall(src):
        if arg in probs and isinstance(children.get(child), nn.Dropout):
            return child
    return None


def _is_activation(mod: nn.Module) -> bool:
    mod_name = type(mod).__module__
    return (
        mod_name.endswith("activations")
        or mod_name.startswith("torch.nn.modules.activation")
        or type(mod).__name__.endswith(("Activation", "Gelu", "GELU", "GeLU"))
    )


def _find_act(mod: nn.Module) -> str | None:
    name = _first(mod, ACT_NAMES)
    if name is not None:
        return name
    for n, m in _children(mod).items():
        if _is_activation(m):
            return n
    return None


def block_anatomy(block: nn.Module, stack: Stack | None = None) -> Anatomy:
    an = Anatomy(block_cls=type(block).__name__)
    cores = _attention_cores(block)
    selfs = [(n, m) for n, m in cores if not any(c in n for c in CROSS_MARKS)]
    crosses = [(n, m) for n, m in cores if any(c in n for c in CROSS_MARKS)]
    if selfs:
        an.attn = _describe_attention(block, selfs[0][0], selfs[0][1], stack)
        first = an.attn.q or an.attn.fused
        an.hidden = _in_out(block.get_submodule(f"{an.attn.core}.{first}"))[0]
    if crosses:
        an.cross = _describe_attention(block, crosses[0][0], crosses[0][1], stack)
    mixer = _first(block, MIXER_NAMES)
    if mixer is not None and an.attn is None:
        an.mixer = mixer
        an.hidden = _in_out(getattr(block.get_submodule(mixer), "out_proj", nn.Identity()))[1]
    # MLP: a named submodule, else fc1..fc2 on the block, else BERT's intermediate/output
    mlp_path = None
    for name, _mod in block.named_modules():
        if name and name.rsplit(".", 1)[-1] in MLP_NAMES:
            mlp_path = name
            break
    ch = _children(block)
    if mlp_path is not None:
        mlp = block.get_submodule(mlp_path)
        an.mlp_in, an.mlp_out = (mlp_path, "input"), (mlp_path, "output")
        act = _find_act(mlp)
        if act is not None:
            an.act = f"{mlp_path}.{act}"
        elif any(n == "experts" for n, _ in mlp.named_children()):
            an.act_problem = (
                "the experts' activation runs on each expert's routed tokens, not on (batch, seq); "
                "address one expert with a module path"
            )
        else:
            an.act_problem = f"{type(mlp).__name__} applies its activation as a function, with no module to hook"
        linears = [m for m in mlp.modules() if _in_out(m)[1] is not None and _in_out(m)[0] == an.hidden]
        named = dict(mlp.named_modules())
        if linears:
            inner = min(w for m in linears if (w := _in_out(m)[1]) is not None)  # all are, by the filter
            gate_up = [n for n in named if "gate_up" in n]
            an.inner = inner // 2 if gate_up and len(linears) == 1 else inner
    elif "fc1" in ch and "fc2" in ch:
        an.mlp_in, an.mlp_out = ("fc1", "input"), ("fc2", "output")
        an.act = _find_act(block)
        an.inner = _in_out(ch["fc1"])[1]
    elif "intermediate" in ch and "output" in ch and "dense" in _children(ch["output"]):
        an.mlp_in, an.mlp_out = ("intermediate", "input"), ("output.dense", "output")
        act = _find_act(ch["intermediate"])
        # without an activation module the intermediate's output is act(dense(x)) (ESM)
        an.act = f"intermediate.{act}" if act is not None else "intermediate"
        dense = _children(ch["intermediate"]).get("dense")
        an.inner = _in_out(dense)[1] if dense is not None else None
    return an


_ANAT: "weakref.WeakKeyDictionary[nn.Module, Anatomy]" = weakref.WeakKeyDictionary()


def anatomy_of(model: nn.Module, stack: Stack) -> Anatomy:
    """Anatomy of the first block of ``stack`` (all blocks of a stack share one class)."""
    block = cast(nn.ModuleList, model.get_submodule(stack.path))[0]  # find_stacks only keeps ModuleLists
    an = _ANAT.get(block)
    if an is None:
        an = block_anatomy(block, stack)
        _ANAT[block] = an
    return an
