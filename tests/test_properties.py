"""Property-based tests of the location / subspace grammar and of configs (issue 15).

Random pyvene-style calls on tiny GPT-2 and GQA Llama models. Every accepted call is checked
against a plain-hook oracle written here from the grammar's documented meaning (nothing of vene's
normalisation is reused); every refused call must raise a ``VeneError`` whose message names the
problem, and leave no hook behind. Fixed seed (``derandomize``) and bounded example counts, so CI is
reproducible: ``VENE_PROPERTY_EXAMPLES`` scales them (default 1.0 => 2,150 examples in all).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tiny_models as tm  # noqa: E402
import vene as pv  # noqa: E402

SCALE = float(os.environ.get("VENE_PROPERTY_EXAMPLES", "1.0"))
settings.register_profile(
    "vene-ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def budget(n: int):
    return settings(settings.get_profile("vene-ci"), max_examples=max(1, int(n * SCALE)))


SEQ = 6
D = 32  # both tiny models are 32 wide, 4 heads of 8; the Llama has 2 key/value heads


# ---------------------------------------------------------------------------------------------
# models and the sites the oracle knows (module, io, heads): written from the architectures


_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = tm.gpt2() if name == "gpt2" else tm.llama(lm=False)
    return _MODELS[name]


def oracle_module(name: str, component: str, layer: int) -> tuple[torch.nn.Module, bool, int]:
    """``(module, hook its input?, number of heads)`` of a component (1 head: whole vectors)."""
    m = model(name)
    if name == "gpt2":
        block = m.h[layer]
        return {"block_output": (block, False, 1), "mlp_output": (block.mlp, False, 1),
                "attention_output": (block.attn, False, 1),
                "head_attention_value_output": (block.attn.c_proj, True, 4)}[component]
    block = m.layers[layer]
    return {"block_output": (block, False, 1), "mlp_output": (block.mlp, False, 1),
            "head_query_output": (block.self_attn.q_proj, False, 4),
            "head_value_output": (block.self_attn.v_proj, False, 2),
            "head_attention_value_output": (block.self_attn.o_proj, True, 4)}[component]


POS_COMPONENTS = {"gpt2": ["block_output", "mlp_output", "attention_output"], "llama": ["block_output", "mlp_output"]}
HEAD_COMPONENTS = {"gpt2": ["head_attention_value_output"],
                   "llama": ["head_query_output", "head_value_output", "head_attention_value_output"]}


def heads_of(name: str, component: str) -> int:
    return oracle_module(name, component, 0)[2]


def no_hooks(m: torch.nn.Module) -> bool:
    return not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())


# ---------------------------------------------------------------------------------------------
# the oracle: cells copied from the source run into the base run


@dataclass
class KeyPlan:
    """What one intervention does, per example: lists of source and base units, ``None`` = every
    unit of the tensor; a unit is a position (``pos``) or a (head, position) pair (``h.pos``)."""

    component: str
    layer: int
    src: list | None  # [batch][units]
    base: list | None
    feats: list | None = None  # [batch][feature ids] (subspaces), None = all


def _units(X: torch.Tensor, heads: int, cells: list | None, b: int, two_level: bool):
    """The list of (position, feature slice) cells of example ``b``."""
    dh = X.shape[-1] // heads
    if cells is None:
        if two_level:
            return [(p, slice(h * dh, (h + 1) * dh)) for h in range(heads) for p in range(X.shape[1])]
        return [(p, slice(None)) for p in range(X.shape[1])]
    if two_level:
        hs, ps = cells
        return [(p, slice(h * dh, (h + 1) * dh)) for h in hs[b] for p in ps[b]]
    return [(p, slice(None)) for p in cells[b]]


def oracle_run(name: str, plans: list[KeyPlan], base: dict, source: dict | None, reps: dict | None,
               two_level: bool) -> torch.Tensor:
    """The base run's last hidden state with every plan applied by hand-written hooks."""
    m = model(name)
    acts = []
    for i, kp in enumerate(plans):
        mod, pre, heads = oracle_module(name, kp.component, kp.layer)
        if reps is not None:
            acts.append(reps[i])
        else:
            acts.append(tm.capture(m, mod, source, pre=pre))
    handles = []
    try:
        for i, kp in enumerate(plans):
            mod, pre, heads = oracle_module(name, kp.component, kp.layer)

            def edit(X, kp=kp, S=acts[i], heads=heads):
                X = X.clone()
                for b in range(X.shape[0]):
                    bu = _units(X, heads, kp.base, b, two_level)
                    su = _units(S, heads, kp.src, b, two_level) if reps is None else None
                    if su is not None and len(su) == 1 and len(bu) > 1:
                        su = su * len(bu)  # one source unit broadcast over the base units
                    for j, (p, fs) in enumerate(bu):
                        new = S[b, su[j][0], su[j][1]] if su is not None else S[b, j]
                        cur = X[b, p, fs]
                        if kp.feats is not None:
                            mask = torch.zeros(cur.shape[-1], dtype=torch.bool)
                            mask[kp.feats[b]] = True
                            new = torch.where(mask, new, cur)
                        X[b, p, fs] = new
                return X

            handles.append(tm.hooked(mod, edit, pre=pre))
            handles[-1].__enter__()
        with torch.no_grad():
            return m(**base).last_hidden_state
    finally:
        for h in reversed(handles):
            h.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# strategies: a valid call, in one of the grammar's spellings, with what it means


@dataclass
class Call:
    model: str
    sites: list  # [(component, layer)]
    batch: int
    unit_locations: Any
    plans: list
    subspaces: Any = None
    use_reps: bool = False
    batch_sources: Any = "auto"
    two_level: bool = False
    notes: dict = field(default_factory=dict)


def _rows(draw, batch: int, n_units: int, limit: int, unique: bool, shared: bool) -> list:
    pick = st.lists(st.integers(0, limit - 1), min_size=n_units, max_size=n_units, unique=unique)
    if shared:
        row = draw(pick)
        return [list(row) for _ in range(batch)]
    return [draw(pick) for _ in range(batch)]


@st.composite
def pos_calls(draw, name: str) -> Call:
    n = draw(st.integers(1, 2))
    layers = 3
    sites = [(draw(st.sampled_from(POS_COMPONENTS[name])), draw(st.integers(0, layers - 1))) for _ in range(n)]
    batch = draw(st.integers(1, 3))
    use_reps = draw(st.integers(0, 4)) == 0
    k = draw(st.integers(1, 3))
    form = draw(st.sampled_from(["int", "pair", "pair_none_src", "pair_none_base", "flat", "rows", "explicit", "base"]))
    if use_reps:
        form = draw(st.sampled_from(["base", "base_int", "base_flat"]))
    plans = []
    if form == "int":
        p = draw(st.integers(0, SEQ - 1))
        ul = {"sources->base": p}
        plans = [KeyPlan(c, l, [[p]] * batch, [[p]] * batch) for c, l in sites]
    elif form in ("pair", "pair_none_src", "pair_none_base"):
        a, b = draw(st.integers(0, SEQ - 1)), draw(st.integers(0, SEQ - 1))
        if form == "pair_none_src":  # the source side defaults to the base side
            ul = {"sources->base": (None, b)}
            plans = [KeyPlan(c, l, [[b]] * batch, [[b]] * batch) for c, l in sites]
        elif form == "pair_none_base":  # one source unit into every base position
            ul = {"sources->base": (a, None)}
            plans = [KeyPlan(c, l, [[a]] * batch, None) for c, l in sites]
        else:
            ul = {"sources->base": draw(st.sampled_from([(a, b), [a, b]]))}
            plans = [KeyPlan(c, l, [[a]] * batch, [[b]] * batch) for c, l in sites]
    elif form == "flat":
        units = draw(st.lists(st.integers(0, SEQ - 1), min_size=max(k, 3), max_size=4, unique=True))
        ul = {"sources->base": units}
        plans = [KeyPlan(c, l, [units] * batch, [units] * batch) for c, l in sites]
    elif form == "rows":  # one intervention's [batch][units], shared by every intervention and side
        rows = _rows(draw, batch, k, SEQ, True, False)
        ul = {"sources->base": rows}
        plans = [KeyPlan(c, l, rows, rows) for c, l in sites]
    elif form == "explicit":  # (SRC, BASE), one entry per intervention; None = the whole tensor
        src, base = [], []
        for c, l in sites:
            kind = draw(st.sampled_from(["rows", "rows", "one_into_all", "all"]))
            if kind == "rows":
                s_, b_ = _rows(draw, batch, k, SEQ, False, False), _rows(draw, batch, k, SEQ, True, False)
            elif kind == "one_into_all":  # one source unit broadcast over every base position
                s_, b_ = _rows(draw, batch, 1, SEQ, False, False), None
            else:
                s_, b_ = None, None
            src.append(s_)
            base.append(b_)
            plans.append(KeyPlan(c, l, s_, b_))
        ul = {"sources->base": (src, base)}
    else:  # under "base": the base units; the source side (when there are sources) is the same
        if form == "base_int":
            p = draw(st.integers(0, SEQ - 1))
            value, rows = p, [[p]] * batch
        elif form == "base_flat":
            rows0 = draw(st.lists(st.integers(0, SEQ - 1), min_size=1, max_size=3, unique=True))
            value, rows = rows0, [rows0] * batch
        else:
            rows = _rows(draw, batch, k, SEQ, True, draw(st.booleans()))
            value = rows
        ul = {"base": value}
        plans = [KeyPlan(c, l, rows, rows) for c, l in sites]
    # subspaces (feature ids of each unit)
    sub_form = draw(st.sampled_from([None, None, "int", "flat", "rows"]))
    subspaces = None
    if sub_form == "int":
        f = draw(st.integers(0, D - 1))
        subspaces, feats = f, [[f]] * batch
    elif sub_form == "flat":
        fl = draw(st.lists(st.integers(0, D - 1), min_size=1, max_size=5, unique=True))
        subspaces, feats = fl, [fl] * batch
    elif sub_form == "rows":
        feats = [draw(st.lists(st.integers(0, D - 1), min_size=2, max_size=2, unique=True)) for _ in range(batch)]
        subspaces = [feats] * n
    if sub_form is not None:
        for kp in plans:
            kp.feats = feats
    return Call(name, sites, batch, ul, plans, subspaces, use_reps, draw(st.sampled_from(["auto", True, False])))


@st.composite
def head_calls(draw, name: str) -> Call:
    comp = draw(st.sampled_from(HEAD_COMPONENTS[name]))
    layer = draw(st.integers(0, 2))
    heads = heads_of(name, comp)
    batch = draw(st.integers(1, 3))
    nh, npos = draw(st.integers(1, heads)), draw(st.integers(1, 3))
    def side():
        return [_rows(draw, batch, nh, heads, True, draw(st.booleans())), _rows(draw, batch, npos, SEQ, True, False)]
    form = draw(st.sampled_from(["get_loc", "one_list", "explicit"]))
    if form == "get_loc":
        h, p = draw(st.integers(0, heads - 1)), draw(st.integers(0, SEQ - 1))
        ul = {"sources->base": pv.GET_LOC((h, p), batch_size=batch)}
        cells = [[[h]] * batch, [[p]] * batch]
        plans = [KeyPlan(comp, layer, cells, cells)]
    elif form == "one_list":
        cells = side()
        ul = {"sources->base": [cells]}
        plans = [KeyPlan(comp, layer, cells, cells)]
    else:
        s, b = side(), side()
        ul = {"sources->base": ([s], [b])}
        plans = [KeyPlan(comp, layer, s, b)]
    dh = D // 4
    subspaces = None
    if draw(st.booleans()):
        fl = draw(st.lists(st.integers(0, dh - 1), min_size=1, max_size=3, unique=True))
        subspaces = fl
        plans[0].feats = [fl] * batch
    return Call(name, [(comp, layer)], batch, ul, plans, subspaces, False, draw(st.sampled_from(["auto", False])), True)


def run_vene(call: Call, base: dict, source: dict | None, reps: list | None) -> torch.Tensor:
    m = model(call.model)
    unit = "h.pos" if call.two_level else "pos"
    cfg = [{"layer": l, "component": c, "unit": unit} for c, l in call.sites]
    im = pv.IntervenableModel(cfg, m, batch_sources=call.batch_sources)
    with torch.no_grad():
        _, out = im(base, None if reps is not None else [source], call.unit_locations,
                    source_representations=reps, subspaces=call.subspaces)
    assert no_hooks(m)
    return out.last_hidden_state


def check_call(call: Call, seed: int) -> None:
    base = tm.ids(call.batch, SEQ, seed)
    source = tm.ids(call.batch, SEQ, seed + 1)
    reps = None
    if call.use_reps:
        g = torch.Generator().manual_seed(seed)
        reps = [torch.randn(call.batch, len(kp.base[0]), D, generator=g) for kp in call.plans]
    want = oracle_run(call.model, call.plans, base, source, reps, call.two_level)
    got = run_vene(call, base, source, reps)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    yield
    torch.set_num_threads(n)


@budget(550)
@given(call=pos_calls("gpt2"), seed=st.integers(1, 50))
def test_accepted_pos_calls_match_the_hook_oracle_gpt2(call, seed):
    check_call(call, seed)


@budget(300)
@given(call=pos_calls("llama"), seed=st.integers(1, 50))
def test_accepted_pos_calls_match_the_hook_oracle_llama(call, seed):
    check_call(call, seed)


@budget(200)
@given(call=head_calls("gpt2"), seed=st.integers(1, 50))
def test_accepted_head_calls_match_the_hook_oracle_gpt2(call, seed):
    check_call(call, seed)


@budget(250)
@given(call=head_calls("llama"), seed=st.integers(1, 50))
def test_accepted_head_calls_match_the_hook_oracle_gqa_llama(call, seed):
    check_call(call, seed)


# ---------------------------------------------------------------------------------------------
# refused calls: one defect each, and the words the message must contain


@st.composite
def bad_calls(draw):
    name = draw(st.sampled_from(["gpt2", "llama"]))
    two = draw(st.booleans())
    batch = draw(st.integers(1, 3))
    comp = draw(st.sampled_from(HEAD_COMPONENTS[name] if two else POS_COMPONENTS[name]))
    heads = heads_of(name, comp) if two else 1
    n = 1
    ok_side = ([[[0]] * batch, [[1]] * batch] if two else [[1]] * batch)
    defect = draw(st.sampled_from([
        "pos_out_of_range", "negative_pos", "negative_head", "head_out_of_range", "rows_vs_batch",
        "ragged", "not_int", "too_many_entries", "unknown_key", "no_sources", "source_batch",
        "subspace_out_of_range", "subspace_rows", "both_keys", "serial_key", "bad_type",
        "duplicate_base", "negative_subspace",
    ]))
    if defect in ("negative_head", "head_out_of_range") and not two:
        defect = "negative_pos"
    src, base = [ok_side], [ok_side]
    ul: Any = {"sources->base": (src, base)}
    subspaces = None
    sources: Any = "default"
    words = []
    if defect == "pos_out_of_range":
        p = draw(st.integers(SEQ, SEQ + 40))
        ul = {"sources->base": pv.GET_LOC((0, p), batch_size=batch)} if two else {"sources->base": p}
        words = ["out of range", str(p)]
    elif defect == "negative_pos":
        p = draw(st.integers(-9, -1))
        ul = {"sources->base": pv.GET_LOC((0, p), batch_size=batch)} if two else {"sources->base": p}
        words = ["negative", str(p)]
    elif defect == "negative_head":
        h = draw(st.integers(-5, -1))
        ul = {"sources->base": pv.GET_LOC((h, 1), batch_size=batch)}
        words = ["negative", str(h)]
    elif defect == "head_out_of_range":
        h = draw(st.integers(heads, heads + 4))
        ul = {"sources->base": pv.GET_LOC((h, 1), batch_size=batch)}
        words = ["out of range", "head"]
    elif defect == "rows_vs_batch":
        rows = [[1]] * (batch + draw(st.integers(1, 2)))
        ul = {"sources->base": ([[rows[: len(rows)], rows]] if two else [rows], [[rows, rows]] if two else [rows])}
        words = ["rows", f"batch has {batch}"]
    elif defect == "ragged":
        if batch == 1:
            batch = 2
        rows = [[1, 2]] + [[3]] * (batch - 1)
        ul = {"sources->base": ([[rows, rows]] if two else [rows],) * 2}
        words = ["different lengths"]
    elif defect == "not_int":
        v = draw(st.sampled_from([1.5, "1", None, [None]]))
        rows = [[v]] * batch
        ul = {"sources->base": ([[rows, rows]] if two else [rows],) * 2}
        words = ["ints"] if v is not None else ["ints", "location"]
    elif defect == "too_many_entries":
        ul = {"sources->base": ([ok_side] * 2, [ok_side] * 2)}
        words = ["2 entries", "1 interventions"]
    elif defect == "unknown_key":
        k = draw(st.sampled_from(["source->base", "sources-base", "bases"]))
        ul = {k: 1}
        words = [f"Unknown unit_locations key {k!r}"]
    elif defect == "no_sources":
        sources = None
        words = ["reads a source", "sources=None"]
    elif defect == "source_batch":
        sources = [tm.ids(batch + 1, SEQ, 3)]
        words = ["batch size", str(batch + 1)]
    elif defect == "subspace_out_of_range":
        f = draw(st.integers(D if not two else D // 4, 80))
        subspaces = [[[f]] * batch]
        words = ["subspace index", "out of range"]
    elif defect == "subspace_rows":
        if batch == 1:
            batch = 2
            ok_side = ([[[0]] * batch, [[1]] * batch] if two else [[1]] * batch)
            ul = {"sources->base": ([ok_side], [ok_side])}
        subspaces = [[[0]] * (batch + 1)]
        words = ["subspaces has", f"batch has {batch}"]
    elif defect == "both_keys":
        ul = {"sources->base": 1, "base": 1} if not two else {"sources->base": pv.GET_LOC((0, 1), batch_size=batch), "base": 1}
        words = ["either 'sources->base' or 'base'"]
    elif defect == "serial_key":
        ul = {"source_0->base": 1}
        words = ["mode='serial'"]
    elif defect == "duplicate_base":
        p = draw(st.integers(0, SEQ - 1))
        rows = [[p, p]] * batch
        side = [[[0]] * batch, rows] if two else rows
        src_side = [[[0]] * batch, [[1, 2]] * batch] if two else [[1, 2]] * batch
        ul = {"sources->base": ([src_side], [side])}
        words = ["twice", str(p)]
    elif defect == "negative_subspace":
        f = draw(st.integers(-8, -1))
        subspaces = [[[f]] * batch]
        words = ["subspace index", str(f), "out of range"]
    elif defect == "bad_type":
        ul = draw(st.sampled_from([[1], 3, "pos"]))
        words = ["unit_locations must be a dict"]
    return name, two, batch, comp, ul, subspaces, sources, words, defect


@budget(450)
@given(case=bad_calls(), seed=st.integers(1, 20))
def test_refused_calls_raise_a_vene_error_naming_the_problem(case, seed):
    name, two, batch, comp, ul, subspaces, sources, words, defect = case
    m = model(name)
    im = pv.IntervenableModel({"layer": 1, "component": comp, "unit": "h.pos" if two else "pos"}, m)
    base = tm.ids(batch, SEQ, seed)
    if sources == "default":
        sources = [tm.ids(batch, SEQ, seed + 1)]
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(pv.VeneError) as err:
        with torch.no_grad():
            im(base, sources, ul, subspaces=subspaces)
    msg = str(err.value)
    assert all(w in msg for w in words), (defect, msg)
    assert no_hooks(m) and all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


# ---------------------------------------------------------------------------------------------
# configs: accepted ones build and run as specified, refused ones name the field


@st.composite
def site_configs(draw):
    name = draw(st.sampled_from(["gpt2", "llama"]))
    comp = draw(st.sampled_from(POS_COMPONENTS[name] + HEAD_COMPONENTS[name] + ["block_outptu", "mlp_outpt"]))
    cfg = {
        "layer": draw(st.sampled_from([0, 1, 2, 3, -1, 7])),
        "component": comp,
        "unit": draw(st.sampled_from(["pos", "h.pos", "h"])),
        "max_number_of_units": draw(st.sampled_from([1, 1, 2, 4, 5, 33, 0, -1, 10**6])),
        "intervention_type": draw(st.sampled_from([pv.VanillaIntervention, pv.RotatedSpaceIntervention,
                                                   pv.LowRankRotatedSpaceIntervention, pv.ZeroIntervention])),
    }
    if cfg["intervention_type"] is pv.LowRankRotatedSpaceIntervention or draw(st.booleans()):
        cfg["low_rank_dimension"] = draw(st.sampled_from([1, 3, 8, 0, -2, 10**5, None]))
    return name, cfg


def expected_problems(name: str, cfg: dict) -> set[str]:
    """The fields an invalid config may be refused for (empty: valid), written from the rules."""
    comp, m, r, t = cfg["component"], cfg["max_number_of_units"], cfg.get("low_rank_dimension"), cfg["intervention_type"]
    if m < 1:
        return {"max_number_of_units"}
    if comp not in POS_COMPONENTS[name] + HEAD_COMPONENTS[name]:
        return {"component"}
    if not 0 <= cfg["layer"] < 3:
        return {"layer"}
    out = set()
    head = comp in HEAD_COMPONENTS[name]
    if cfg["unit"] != "pos" and not head:
        out.add("heads")
    if m > (heads_of(name, comp) if head else 32):  # tiny models: 4 (or 2) heads, 32 positions
        out.add("max_number_of_units")
    if r is not None and r < 1:
        out.add("low_rank_dimension")
    if not out and t is pv.LowRankRotatedSpaceIntervention and (r is None or r > (D // 4 if head else D) * m):
        out.add("low_rank_dimension")
    return out


@budget(400)
@given(case=site_configs(), seed=st.integers(1, 20))
def test_configs_are_built_as_specified_or_refused_naming_the_field(case, seed):
    name, cfg = case
    m = model(name)
    problems = expected_problems(name, cfg)
    if problems:
        with pytest.raises(pv.VeneError) as err:
            pv.IntervenableModel(cfg, m)
        assert any(p in str(err.value) for p in problems), (cfg, str(err.value))
        assert no_hooks(m)
        return
    im = pv.IntervenableModel(cfg, m)
    key = im.sorted_keys[0]
    iv = im.interventions[key]
    head = cfg["component"] in HEAD_COMPONENTS[name]
    units = cfg["max_number_of_units"]
    heads = heads_of(name, cfg["component"]) if head else 1
    assert int(iv.embed_dim) == (D // 4 if head else D) * units
    if head and cfg["unit"] == "h.pos":
        # the selected heads must number max_number_of_units for the rotations: select that many
        ul = {"sources->base": [[[list(range(units))], [[1, 2]]]]}
        cells = [[list(range(units))], [[1, 2]]]
        two = True
    elif head:  # unit "h": whole heads over every position
        ul = {"sources->base": [[list(range(units))]]}
        cells = [[list(range(units))], [list(range(SEQ))]]
        two = True
    else:
        ul = {"sources->base": [[list(range(1, 1 + units))]]}
        cells = [list(range(1, 1 + units))]
        two = False
    base, src = tm.ids(1, SEQ, seed), tm.ids(1, SEQ, seed + 1)
    with torch.no_grad():
        _, out = im(base, [src], ul)
    # the oracle: Vanilla and a full rotation copy the source; Zero zeroes; low rank adds the
    # projection of (source - base) onto the learned directions
    mod, pre, _ = oracle_module(name, cfg["component"], cfg["layer"])
    S = tm.capture(m, mod, src, pre=pre)
    dh = D // 4  # every head is 8 wide (the Llama's 2 key/value heads too)

    def cells_of(X):
        if two:
            return [(p, slice(h * dh, (h + 1) * dh)) for h in cells[0][0] for p in cells[1][0]]
        return [(p, slice(None)) for p in cells[0]]

    t = cfg["intervention_type"]

    def edit(X):
        X = X.clone()
        cs = cells_of(X)
        if t is pv.LowRankRotatedSpaceIntervention:
            # the flattened selection: units concatenated (heads within a position for h.pos)
            W = iv.rotate_layer.weight.detach()
            if two:
                for p in sorted({c[0] for c in cs}):
                    sl = [c for c in cs if c[0] == p]
                    b = torch.cat([X[0, p, f] for _, f in sl])
                    s = torch.cat([S[0, p, f] for _, f in sl])
                    new = b + ((s - b) @ W) @ W.T
                    for j, (_, f) in enumerate(sl):
                        X[0, p, f] = new[j * dh:(j + 1) * dh]
            else:
                b = torch.cat([X[0, p] for p, _ in cs])
                s = torch.cat([S[0, p] for p, _ in cs])
                new = b + ((s - b) @ W) @ W.T
                for j, (p, _) in enumerate(cs):
                    X[0, p] = new[j * D:(j + 1) * D]
            return X
        for p, f in cs:
            X[0, p, f] = 0 if t is pv.ZeroIntervention else S[0, p, f]
        return X

    with tm.hooked(mod, edit, pre=pre), torch.no_grad():
        want = m(**base).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, want, atol=2e-4, rtol=1e-4)
