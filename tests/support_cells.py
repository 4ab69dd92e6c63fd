"""One support-matrix cell: a component of a family's stack, checked against the hand-written
oracle of :mod:`arch_zoo` (collected values, Zero, interchange, and under causal attention: no
earlier position moves). Shared by ``tests/test_support_matrix.py`` and ``scripts/support_matrix.py``."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

import torch

import arch_zoo as zoo
import vene as pv

LAYER = 1  # the last layer of every 2-layer tiny model
POS = [[1, 3], [1, 3]]
ATOL, RTOL = 2e-5, 1e-4

_models: dict[str, Any] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _models:
        _models[name] = zoo.FAMILIES[name].build()
    return _models[name]


# ---------------------------------------------------------------------------------------------
# oracle: (path relative to the block, io, view of the hooked tensor in vene's layout, n heads)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, s, f = x.shape
    return x.view(b, s, n, f // n).transpose(1, 2)


def _fused_view(layout: str, role: str, H: int, KV: int, d: int, head: bool) -> Callable:
    if layout == "concat":
        start, n = {"q": (0, H), "k": (H, KV), "v": (H + KV, KV)}[role]

        def f(x):
            flat = x[..., start * d:(start + n) * d]
            return _heads(flat, n) if head else flat
        return f
    if layout == "interleaved":
        i = "qkv".index(role)

        def f(x):
            g = x.view(*x.shape[:2], H, 3, d)[..., i, :]
            return g.transpose(1, 2) if head else g
        return f
    per = H // KV + 2

    def f(x):  # grouped: (kv groups, queries of the group + key + value, head_dim)
        g = x.view(*x.shape[:2], KV, per, d)
        if role == "q":
            return g[..., : per - 2, :]
        t = g[..., per - 2 if role == "k" else per - 1, :]
        return t.transpose(1, 2) if head else t
    return f


def oracle(s: zoo.S, comp: str) -> tuple[str, str, Callable | None, int | None] | None:
    ident = None
    if comp == "block_input":
        return "", "input", ident, None
    if comp == "block_output":
        return "", "output", ident, None
    if s.mixer is not None:
        if comp in ("mixer_input", "mixer_output"):
            return s.mixer, comp.split("_")[1], ident, None
        return None
    table: dict[str, tuple] = {}
    if s.mlp_in is not None:
        table["mlp_input"] = (*s.mlp_in, ident, None)
        table["mlp_output"] = (*s.mlp_out, ident, None)
        if s.act is not None:
            table["mlp_activation"] = (s.act, "output", ident, None)
    parts = [("", dict(attn=s.attn, q=s.q, k=s.k, v=s.v, o=s.o, out=s.attn_out, fused=s.fused), s.KV)]
    if s.cross is not None:
        parts.append(("cross_", dict(s.cross, fused=None), s.H))
    for p, a, kv in parts:
        if a["attn"] is None:
            continue
        table[f"{p}attention_input"] = (a["attn"], "input", ident, None)
        table[f"{p}attention_output"] = (*a["out"], ident, None)
        table[f"{p}attention_value_output"] = (a["o"], "input", ident, None)
        table[f"head_{p}attention_value_output"] = (a["o"], "input", lambda x: _heads(x, s.H), s.H)
        table[f"{p}attention_weight"] = ("<probs>", p, None, s.H)
        for role, name in (("q", "query"), ("k", "key"), ("v", "value")):
            n = s.H if role == "q" else kv
            if a["fused"] is not None:
                path, layout = a["fused"]
                table[f"{p}{name}_output"] = (path, "output", _fused_view(layout, role, s.H, kv, s.d, False), None)
                table[f"head_{p}{name}_output"] = (path, "output", _fused_view(layout, role, s.H, kv, s.d, True), n)
            elif a[role] is not None:
                table[f"{p}{name}_output"] = (a[role], "output", ident, None)
                table[f"head_{p}{name}_output"] = (a[role], "output", lambda x, n=n: _heads(x, n), n)
    return table.get(comp)


def expected_components(s: zoo.S) -> set[str]:
    names = ["block_input", "block_output", "mixer_input", "mixer_output", "mlp_input", "mlp_output", "mlp_activation"]
    for p in ("", "cross_"):
        names += [f"{p}attention_input", f"{p}attention_output", f"{p}attention_value_output",
                  f"head_{p}attention_value_output", f"{p}attention_weight"]
        for r in ("query", "key", "value"):
            names += [f"{p}{r}_output", f"head_{p}{r}_output"]
    return {c for c in names if oracle(s, c) is not None and c not in s.absent}


# ---------------------------------------------------------------------------------------------
# hand-written hooks


def _main(t: Any) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else t[0]


@contextmanager
def hand_hook(module: torch.nn.Module, io: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    if io == "input":
        def h(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new,) + tuple(args[1:]), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
            new = fn(kwargs[key])
            return None if new is None else (args, dict(kwargs, **{key: new}))
        handle = module.register_forward_pre_hook(h, with_kwargs=True)
    else:
        def h(mod, args, out):
            new = fn(_main(out))
            if new is None:
                return None
            return new if isinstance(out, torch.Tensor) else (new,) + tuple(out[1:])
        handle = module.register_forward_hook(h)
    try:
        yield
    finally:
        handle.remove()


def _capture(m, module, io, inputs) -> torch.Tensor:
    store = {}

    def fn(t):
        store["t"] = t.detach().clone()
    with torch.no_grad(), hand_hook(module, io, fn):
        m(**inputs)
    return store["t"]


def _eager_attentions(m, inputs, runner=None) -> Any:
    cfgs = {id(c): c for c in [m.config] + [getattr(mod, "config", None) for mod in m.modules()] if c is not None
            and hasattr(c, "_attn_implementation")}
    saved = [(c, c._attn_implementation) for c in cfgs.values()]
    try:
        for c, _ in saved:
            c._attn_implementation = "eager"
        with torch.no_grad():
            out = (runner or m)(**inputs, output_attentions=True)
    finally:
        for c, prev in saved:
            c._attn_implementation = prev
    return out


# ---------------------------------------------------------------------------------------------


def _component(prefix: str, comp: str) -> str:
    return f"{prefix}.{comp}" if prefix else comp


def _close(a, b, what):
    # plus an absolute error relative to the output's scale (1e-4 of its largest value, as the
    # layer stepper's own check): a call may run on fewer positions than the reference
    # (vene.resume), which rounds differently in the last bits
    atol = ATOL
    if isinstance(b, torch.Tensor) and b.numel() and b.is_floating_point():
        atol = max(ATOL, 1e-4 * float(b.detach().abs().max()))
    torch.testing.assert_close(a, b, atol=atol, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def out_of(fam: zoo.Family, out: Any) -> torch.Tensor:
    return fam.output(out) if fam.output is not None else zoo.main_output(out)


def check_cell(family: str, prefix: str, comp: str) -> None:
    fam = zoo.FAMILIES[family]
    s = fam.stacks[prefix]
    m = model(family)
    name = _component(prefix, comp)
    if comp in s.absent:
        try:
            pv.IntervenableModel({"layer": LAYER, "component": name}, model=m)
        except pv.UnknownComponentError as e:
            assert s.absent[comp] in str(e), f"{name}: reason {str(e)!r} lacks {s.absent[comp]!r}"
            return
        raise AssertionError(f"{name} resolved although the block has no such tensor")
    rel, io, view, n_heads = oracle(s, comp)
    base, src = fam.inputs(3), fam.inputs(4)
    if s.not_run and s.not_run in comp:  # resolves, and says clearly that it never ran
        pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "intervention_type": pv.CollectIntervention}, model=m)
        try:
            with torch.no_grad():
                pvm(base, unit_locations={"base": POS})
        except pv.HookNotFiredError:
            return
        raise AssertionError(f"{name}: expected HookNotFiredError, the module is not run by {type(m).__name__}")
    with torch.no_grad():
        plain = out_of(fam, m(**base))
    if rel == "<probs>":
        return _check_probs(fam, s, m, prefix, comp, io, base, plain)
    head = comp.startswith("head_")
    path = f"{s.path}.{LAYER}" + (f".{rel}" if rel else "")
    module = m.get_submodule(path)
    view = view or (lambda x: x)
    unit = "h" if head else "pos"
    units = [[min(1, n_heads - 1)]] * 2 if head else POS

    # 1. collected values
    full = view(_capture(m, module, io, base))
    pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "unit": unit,
                                "intervention_type": pv.CollectIntervention}, model=m)
    with torch.no_grad():
        (_, collected), _ = pvm(base, unit_locations={"base": units})
    expected = torch.stack([full[i, units[i]] for i in range(2)]).flatten(3 if head else 2)
    _close(collected[0], expected, f"{name} collect")
    dim = pvm.interventions[pvm.sorted_keys[0]].embed_dim
    assert dim is not None and int(dim) == expected.shape[-1], f"{name}: embed_dim {dim} != {expected.shape[-1]}"

    # 2. Zero, against a hand hook writing zeros at the same units
    # (outputs are written in place, so that transformers' captured hidden states see the write,
    # as LLaVA's vision features do; inputs are replaced, so that no other reader sees them)
    def zero(t):
        t = t.clone() if io == "input" else t
        v = view(t)
        for i in range(2):
            v[i, units[i]] = 0
        return t
    with torch.no_grad(), hand_hook(module, io, zero):
        ref = out_of(fam, m(**base))
    pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "unit": unit,
                                "intervention_type": pv.ZeroIntervention}, model=m)
    with torch.no_grad():
        _, out = pvm(base, unit_locations={"base": units})
    _close(out_of(fam, out), ref, f"{name} zero")
    assert not torch.allclose(ref, plain), f"{name}: zeroing changed nothing (oracle hook inert?)"

    # 3. interchange: the source's units into the base's same units
    sv = view(_capture(m, module, io, src))

    def swap(t):
        t = t.clone() if io == "input" else t
        v = view(t)
        for i in range(2):
            v[i, units[i]] = sv[i, units[i]]
        return t
    with torch.no_grad(), hand_hook(module, io, swap):
        ref = out_of(fam, m(**base))
    pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "unit": unit,
                                "intervention_type": pv.VanillaIntervention}, model=m)
    with torch.no_grad():
        _, out = pvm(base, [src], {"sources->base": ([units], [units])})
    _close(out_of(fam, out), ref, f"{name} interchange")

    # 4. causal attention: zeroing position 3 moves no earlier position
    if s.causal and not head and not comp.startswith(("cross_key", "cross_value")):
        pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "unit": "pos",
                                    "intervention_type": pv.ZeroIntervention}, model=m)
        with torch.no_grad():
            _, out = pvm(base, unit_locations={"base": [[3], [3]]})
        o = out_of(fam, out)
        _close(o[:, :3], plain[:, :3], f"{name} causality")
        assert not torch.allclose(o[:, 3:], plain[:, 3:]), f"{name}: zeroing position 3 changed nothing"


def _check_probs(fam, s, m, prefix, comp, kind, base, plain) -> None:
    name = _component(prefix, comp)
    heads = [0, 2]
    if prefix == "vision":  # the vision tower, run alone on the same pixels
        tower = m.get_submodule(s.path.rsplit(".encoder.layers", 1)[0])
        out = _eager_attentions(tower, {"pixel_values": base["pixel_values"]})
    else:
        out = _eager_attentions(m, base)
    if prefix == "vision":
        attn = out.attentions
    elif kind == "cross_":
        attn = out.cross_attentions
    elif prefix == "decoder":
        attn = out.decoder_attentions
    elif hasattr(out, "encoder_attentions") and out.encoder_attentions is not None:
        attn = out.encoder_attentions
    elif prefix == "" and getattr(out, "text_model_output", None) is not None:
        attn = out.text_model_output.attentions
    else:
        attn = out.attentions
    ref = attn[LAYER][:, heads]
    pvm = pv.IntervenableModel({"layer": LAYER, "component": name, "unit": "h",
                                "intervention_type": pv.CollectIntervention}, model=m)
    with torch.no_grad():
        (_, collected), o = pvm(base, unit_locations={"base": [heads, heads]})
    _close(collected[0], ref, f"{name} collect")
    # (the probe is eager attention: it may round differently from the model's sdpa kernel)
    torch.testing.assert_close(out_of(fam, o), plain, atol=1e-4, rtol=1e-3,
                               msg=lambda e: f"{name} collect leaves the output: {e}")
    # Zero a head's probabilities: that head's merged value output is zero, the other heads' not
    value = _component(prefix, f"head_{kind}attention_value_output")
    cfg = pv.IntervenableConfig([
        {"layer": LAYER, "component": name, "unit": "h", "intervention_type": pv.ZeroIntervention},
        {"layer": LAYER, "component": value, "unit": "h", "intervention_type": pv.CollectIntervention},
    ])
    pvm = pv.IntervenableModel(cfg, model=m)
    with torch.no_grad():
        (_, collected), o = pvm(base, unit_locations={"base": [[[1]] * 2, [[1, 2]] * 2]})
    assert torch.count_nonzero(collected[0][:, 0]) == 0, f"{name}: zeroed head still has a value output"
    assert torch.count_nonzero(collected[0][:, 1]) > 0
    assert not torch.allclose(out_of(fam, o), plain), f"{name}: zeroing probabilities changed nothing"


def cells() -> list[tuple[str, str, str]]:
    out = []
    for fam in zoo.FAMILIES.values():
        for prefix, s in fam.stacks.items():
            for comp in sorted(expected_components(s) | set(s.absent)):
                out.append((fam.name, prefix, comp))
    return out
