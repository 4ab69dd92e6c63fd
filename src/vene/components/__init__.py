"""Component vocabulary -> :class:`Site`.

A :class:`Site` is everything the engine needs to know about where an intervention acts: the
module, whether its input, output or attention probabilities are hooked, and a *view* that turns
the hooked tensor into ``(batch, unit, *features)`` (or ``(batch, heads, seq, *features)`` for
head components) **without copying**, so that reads gather only the selected units and writes go
straight into the module's tensor.

Resolution order for ``component`` on a model:

1. user registrations in :data:`type_to_module_mapping` (pyvene's format, keyed by class, looked up
   along the MRO so subclasses work);
2. vene's override tables keyed by ``model.config.model_type`` (:mod:`vene.components.tables`:
   GPT-2, GPT-Neo, GPT-NeoX and the built-in toy models);
3. introspection (:mod:`vene.components.introspect`, names in :mod:`vene.components.vocab`): every
   layer stack of the model is found from its module tree; unprefixed names address the default
   stack (the language model of a multimodal wrapper, the encoder of an encoder-decoder model),
   ``"<stack>.<component>"`` addresses another one (``"decoder.cross_attention_output"``,
   ``"vision.block_output"``); :func:`list_components` shows what a model has;
4. a raw module path ending in ``.input`` / ``.output`` (``"model.layers[3].mlp.output"``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from torch import nn

from ..errors import UnknownComponentError, did_you_mean
from ..views import feature_ndim, make_view  # noqa: F401  (re-exported; views live in vene.views)
from . import tables
from .introspect import STACK_ALIASES, Stack, anatomy_of, find_stacks
from .tables import ARCHITECTURES
from .vocab import Entry, stack_entries

CONST_INPUT_HOOK = "register_forward_pre_hook"
CONST_OUTPUT_HOOK = "register_forward_hook"

#: User registrations, pyvene style: ``{ModelClass: {component: (path_template, hook[, ...])}}``.
type_to_module_mapping: dict[type, dict[str, tuple]] = {}
#: User registrations, pyvene style: ``{ModelClass: {component: ("dim expression", ...)}}``.
type_to_dimension_mapping: dict[type, dict[str, tuple]] = {}


@dataclass(frozen=True)
class Site:
    """A resolved intervention location."""

    module_path: str  # dotted path, "" for the model itself
    io: str  # "input" | "output" | "attn_probs"
    view: tuple | None = None  # see vene.views
    dim: int | None = None  # feature size of one unit
    head_layout: bool = False  # view is (batch, heads, seq, features)
    n_heads: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        return f"{self.module_path or '<model>'}.{self.io}"


# ---------------------------------------------------------------------------------------------
# module paths

_SEG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def normalise_path(path: str) -> str:
    """``"model.layers[3].mlp"`` -> ``"model.layers.3.mlp"``."""
    out = []
    for seg in path.split("."):
        if seg == "":
            continue
        m = _SEG.match(seg)
        if m is None:
            if seg.isdigit():
                out.append(seg)
                continue
            raise UnknownComponentError(f"Malformed module path segment {seg!r} in {path!r}.")
        out.append(m.group(1))
        out.extend(re.findall(r"\[(\d+)\]", m.group(2)))
    return ".".join(out)


def get_module(model: nn.Module, path: str) -> nn.Module:
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UnknownComponentError(
            f"The model has no module {path!r}.{did_you_mean(path, names)} "
            f"Module paths look like {names[min(3, len(names) - 1)]!r}."
            if names
            else f"The model has no module {path!r}."
        ) from None


# ---------------------------------------------------------------------------------------------
# architecture detection

_ARCH_CACHE: dict[int, tuple[str, str, dict] | None] = {}


def _find_layers(model: nn.Module, attr: str) -> str | None:
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name == attr or name.endswith("." + attr)):
            if best is None or len(name) < len(best):
                best = name
    return best


def _table_architecture(model: nn.Module) -> tuple[str, str, dict] | None:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type in ARCHITECTURES:
        attr, table = ARCHITECTURES[model_type]
        layers = _find_layers(model, attr)
        if layers is not None:
            return model_type, layers, table
    return None


def _arch_name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def detect_architecture(model: nn.Module) -> tuple[str, str, dict] | None:
    """Return ``(arch name, path of the default layer stack, {component: entry})``, else None."""
    arch = _table_architecture(model)
    if arch is not None:
        return arch
    stacks, default = find_stacks(model)
    if default < 0:
        return None
    st = stacks[default]
    entries = stack_entries(st, anatomy_of(model, st))
    return _arch_name(model), st.path, {k: v for k, v in entries.items() if isinstance(v, Entry)}


def list_components(model: nn.Module) -> dict[str, dict[str, str]]:
    """Every stack's components: ``{stack name: {component: module path template or reason}}``.

    The default stack (addressed by unprefixed names) comes first; the others are addressed as
    ``"<stack>.<component>"``. A reason (a sentence) means the model has no such tensor.
    """
    arch = _table_architecture(model)
    if arch is not None:
        return {"layers": {c: f"{arch[1]}.<layer>" + (f".{e[0]}" if e[0] else "") + f".{e[1]}" for c, e in arch[2].items()}}
    stacks, default = find_stacks(model)
    order = ([stacks[default]] if default >= 0 else []) + [s for i, s in enumerate(stacks) if i != default]
    out = {}
    for st in order:
        out[st.name] = {
            c: (f"{st.path}.<layer>" + (f".{e.rel}" if e.rel else "") + f".{e.io}" if isinstance(e, Entry) else e)
            for c, e in stack_entries(st, anatomy_of(model, st)).items()
        }
    return out


def _split_stack(model: nn.Module, component: str) -> tuple[Stack | None, str, list[Stack], int]:
    stacks, default = find_stacks(model)
    if "." in component:
        prefix, rest = component.split(".", 1)
        prefix = STACK_ALIASES.get(prefix, prefix)
        for st in stacks:
            if st.name == prefix:
                return st, rest, stacks, default
    return (stacks[default] if default >= 0 else None), component, stacks, default


def _user_table(model: nn.Module) -> tuple[dict, dict] | None:
    for cls in type(model).__mro__:
        if cls in type_to_module_mapping:
            return type_to_module_mapping[cls], type_to_dimension_mapping.get(cls, {})
    return None


def _eval_dim(expr: Any, cfg: Any) -> int | None:
    """Evaluate pyvene dimension expressions such as ``"d_model/num_heads"`` or ``"n_embd*4"``."""
    if isinstance(expr, int):
        return expr
    if not isinstance(expr, str):
        return None
    tokens = re.split(r"([*/])", expr.replace(" ", ""))
    value = None
    op = None
    for tok in tokens:
        if tok in ("*", "/"):
            op = tok
            continue
        if tok.isdigit():
            v: Any = int(tok)
        else:
            v = cfg
            for part in tok.split("."):
                v = getattr(v, part, None) if v is not None else None
            if v is None:
                return None
            v = int(v)
        if value is None:
            value = v
        elif op == "*":
            value = value * v
        else:
            value = int(value / v)
    return value


# ---------------------------------------------------------------------------------------------


def resolve_site(model: nn.Module, component: str, layer: int = 0, moe_key: Any = None) -> Site:
    """Resolve a component name (or raw module path) on ``model`` to a :class:`Site`."""
    cfg = getattr(model, "config", None)
    user = _user_table(model)
    if user is not None and component in user[0]:
        entry = user[0][component]
        template, hook = entry[0], entry[1]
        path = template % ((layer, moe_key) if moe_key is not None else layer) if "%s" in template else template
        io = "input" if hook == CONST_INPUT_HOOK else "output"
        view = None
        n_h = None
        for extra in entry[2:]:  # pyvene's (split_fn, param) pairs; heads are the common case
            if isinstance(extra, tuple) and len(extra) == 2 and isinstance(extra[1], str):
                n_h = _eval_dim(extra[1], cfg)
                view = ("heads", extra[1])
        dim = None
        for expr in user[1].get(component, ()):
            dim = _eval_dim(expr, cfg)
            if dim is not None:
                break
        path = normalise_path(path)
        get_module(model, path)
        return Site(path, io, view, dim, head_layout=view is not None, n_heads=n_h)

    arch = _table_architecture(model)
    if arch is not None and component in arch[2]:
        return _table_site(model, arch, component, layer, cfg)

    stack, name, stacks, default = (None, component, [], -1) if arch is not None else _split_stack(model, component)
    entries = stack_entries(stack, anatomy_of(model, stack)) if stack is not None else {}
    entry = entries.get(name)
    if isinstance(entry, Entry) and stack is not None:  # no stack, no entries
        if not 0 <= layer < stack.n_layers:
            raise UnknownComponentError(
                f"layer {layer} is out of range for component {component!r}: the {stack.name} stack "
                f"({stack.path}) has {stack.n_layers} layers (0..{stack.n_layers - 1})."
            )
        path = f"{stack.path}.{layer}" + (f".{entry.rel}" if entry.rel else "")
        get_module(model, path)
        return Site(path, entry.io, entry.view, entry.dim, head_layout=entry.head_layout, n_heads=entry.n_heads)
    if isinstance(entry, str):
        raise UnknownComponentError(
            f"Component {component!r} is not available on {_arch_name(model)}: {entry}. "
            f"Or pass a module path such as {_example_path(model, stack)!r} (ending in .input or .output)."
        )

    if component.endswith(".output") or component.endswith(".input"):
        raw, io = component.rsplit(".", 1)
        path = normalise_path(raw)
        module = get_module(model, path)
        dim = None
        if isinstance(module, nn.Linear):
            dim = module.out_features if io == "output" else module.in_features
        return Site(path, io, None, dim)

    if arch is not None:
        known = sorted(arch[2])
    else:
        known = sorted(c for c, e in entries.items() if isinstance(e, Entry))
    if user is not None:
        known = sorted(set(known) | set(user[0]))
    hint = did_you_mean(name, known)
    msg = f"Unknown component {component!r} for {_arch_name(model)}.{hint}"
    if known:
        where = f" (stack {stack.name!r}, {stack.path})" if stack is not None and len(stacks) > 1 else ""
        msg += f" Known{where}: {', '.join(known)}."
    else:
        msg += " vene found no layer stack with attention or a mixer; register a table in vene.type_to_module_mapping."
    if len(stacks) > 1:
        others = ", ".join(f"{s.name!r} ({s.path})" for i, s in enumerate(stacks) if s is not stack)
        other = [s for s in stacks if s is not stack][0].name
        msg += f" Other stacks: {others}; address them as '<stack>.<component>', e.g. '{other}.block_output'."
    msg += f" Or pass a module path such as {_example_path(model, stack)!r} (ending in .input or .output)."
    raise UnknownComponentError(msg)


def _example_path(model: nn.Module, stack: Stack | None) -> str:
    if stack is not None:
        return f"{stack.path}[0].output"
    arch = _table_architecture(model)
    if arch is not None:
        return f"{arch[1]}[0].output"
    names = [n for n, _ in model.named_modules() if n]
    return f"{names[0]}.output" if names else "model.layers[3].mlp.output"


def _table_site(model: nn.Module, arch: tuple, component: str, layer: int, cfg: Any) -> Site:
    _, layers_path, table = arch
    rel, io, view, dim_fn = table[component]
    n_layers = len(cast(nn.ModuleList, model.get_submodule(layers_path)))  # the table names the layers' ModuleList
    if not 0 <= layer < n_layers:
        raise UnknownComponentError(
            f"layer {layer} is out of range for component {component!r}: the model has "
            f"{n_layers} layers (0..{n_layers - 1})."
        )
    path = f"{layers_path}.{layer}" + (f".{rel}" if rel else "")
    get_module(model, path)
    n_h = None
    if view is not None and view[0] != "chunk":  # plain chunks need no head count (GRU)
        heads_key = view[-1] if view[0] in ("heads", "chunk_heads") else "n_head"
        n_h = tables.HEADS[heads_key](cfg)
    head_layout = view is not None and view[0] in ("heads", "chunk_heads", "neox_qkv_heads")
    if io == "attn_probs" and path.endswith("attn_dropout"):
        io = "input"
    return Site(path, io, view, dim_fn(cfg), head_layout=head_layout or component == "attention_weight", n_heads=n_h)


def component_dimension(model: nn.Module, component: str) -> int | None:
    """Feature size of one unit of ``component`` (pyvene's ``get_dimension_by_component``)."""
    return resolve_site(model, component, 0).dim
