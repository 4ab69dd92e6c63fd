"""Every component of every supported architecture reads and writes the tensor a hand-written hook
sees at the module we expect (paths written out here by hand, independently of vene's tables)."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv

L = 1


def heads(x, h):
    b, s, d = x.shape
    return x.view(b, s, h, d // h).transpose(1, 2)


def neox_qkv(x, h, i):
    b, s, d3 = x.shape
    return x.view(b, s, h, 3, d3 // (3 * h))[..., i, :]


# component -> (module getter, pre-hook?, transform of the captured tensor into vene's view)
def gpt2_table(m):
    blk = m.h[L]
    d = m.config.n_embd
    H = m.config.n_head
    return {
        "block_input": (blk, True, None),
        "block_output": (blk, False, None),
        "mlp_activation": (blk.mlp.act, False, None),
        "mlp_output": (blk.mlp, False, None),
        "mlp_input": (blk.mlp, True, None),
        "attention_value_output": (blk.attn.c_proj, True, None),
        "head_attention_value_output": (blk.attn.c_proj, True, lambda x: heads(x, H)),
        "attention_output": (blk.attn, False, None),
        "attention_input": (blk.attn, True, None),
        "query_output": (blk.attn.c_attn, False, lambda x: x[..., :d]),
        "key_output": (blk.attn.c_attn, False, lambda x: x[..., d:2 * d]),
        "value_output": (blk.attn.c_attn, False, lambda x: x[..., 2 * d:]),
        "head_query_output": (blk.attn.c_attn, False, lambda x: heads(x[..., :d], H)),
        "head_key_output": (blk.attn.c_attn, False, lambda x: heads(x[..., d:2 * d], H)),
        "head_value_output": (blk.attn.c_attn, False, lambda x: heads(x[..., 2 * d:], H)),
    }


def llama_table(m):
    blk = m.model.layers[L]
    H, KV = m.config.num_attention_heads, m.config.num_key_value_heads
    return {
        "block_input": (blk, True, None),
        "block_output": (blk, False, None),
        "mlp_activation": (blk.mlp.act_fn, False, None),
        "mlp_output": (blk.mlp, False, None),
        "mlp_input": (blk.mlp, True, None),
        "attention_value_output": (blk.self_attn.o_proj, True, None),
        "head_attention_value_output": (blk.self_attn.o_proj, True, lambda x: heads(x, H)),
        "attention_output": (blk.self_attn, False, None),
        "attention_input": (blk.self_attn, True, None),
        "query_output": (blk.self_attn.q_proj, False, None),
        "key_output": (blk.self_attn.k_proj, False, None),
        "value_output": (blk.self_attn.v_proj, False, None),
        "head_query_output": (blk.self_attn.q_proj, False, lambda x: heads(x, H)),
        "head_key_output": (blk.self_attn.k_proj, False, lambda x: heads(x, KV)),
        "head_value_output": (blk.self_attn.v_proj, False, lambda x: heads(x, KV)),
    }


def neo_table(m):
    blk = m.transformer.h[L]
    att = blk.attn.attention
    H = m.config.num_heads
    return {
        "block_input": (blk, True, None),
        "block_output": (blk, False, None),
        "mlp_activation": (blk.mlp.act, False, None),
        "mlp_output": (blk.mlp, False, None),
        "mlp_input": (blk.mlp, True, None),
        "attention_value_output": (att.out_proj, True, None),
        "head_attention_value_output": (att.out_proj, True, lambda x: heads(x, H)),
        "attention_output": (blk.attn, False, None),
        "attention_input": (blk.attn, True, None),
        "query_output": (att.q_proj, False, None),
        "key_output": (att.k_proj, False, None),
        "value_output": (att.v_proj, False, None),
        "head_query_output": (att.q_proj, False, lambda x: heads(x, H)),
        "head_key_output": (att.k_proj, False, lambda x: heads(x, H)),
        "head_value_output": (att.v_proj, False, lambda x: heads(x, H)),
    }


def neox_table(m):
    blk = m.gpt_neox.layers[L]
    H = m.config.num_attention_heads
    qkv = blk.attention.query_key_value
    return {
        "block_input": (blk, True, None),
        "block_output": (blk, False, None),
        "mlp_activation": (blk.mlp.act, False, None),
        "mlp_output": (blk.mlp, False, None),
        "mlp_input": (blk.mlp, True, None),
        "attention_value_output": (blk.attention.dense, True, None),
        "head_attention_value_output": (blk.attention.dense, True, lambda x: heads(x, H)),
        "attention_output": (blk.attention, False, None),
        "attention_input": (blk.attention, True, None),
        "query_output": (qkv, False, lambda x: neox_qkv(x, H, 0).flatten(-2)),
        "key_output": (qkv, False, lambda x: neox_qkv(x, H, 1).flatten(-2)),
        "value_output": (qkv, False, lambda x: neox_qkv(x, H, 2).flatten(-2)),
        "head_query_output": (qkv, False, lambda x: neox_qkv(x, H, 0).transpose(1, 2)),
        "head_key_output": (qkv, False, lambda x: neox_qkv(x, H, 1).transpose(1, 2)),
        "head_value_output": (qkv, False, lambda x: neox_qkv(x, H, 2).transpose(1, 2)),
    }


ARCHS = {
    "gpt2": (tm.gpt2, gpt2_table),
    "llama": (tm.llama, llama_table),
    "gpt_neo": (tm.gpt_neo, neo_table),
    "gpt_neox": (tm.gpt_neox, neox_table),
}
COMPONENTS = list(gpt2_table(tm.gpt2()).keys())
_models: dict = {}


def model_for(arch):
    if arch not in _models:
        _models[arch] = ARCHS[arch][0]()
    return _models[arch]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("component", COMPONENTS)
def test_collect_matches_hand_hook(arch, component):
    m = model_for(arch)
    module, pre, transform = ARCHS[arch][1](m)[component]
    base = tm.ids(2, 7, 3)
    full = tm.capture(m, module, base, pre=pre)
    view = transform(full) if transform else full
    head = component.startswith("head_")
    unit = "h" if head else "pos"
    locs = [[0, 1], [1, 0]] if head else [[0, 2], [3, 1]]  # per example
    pvm = pv.IntervenableModel({"layer": L, "component": component, "unit": unit,
                                "intervention_type": pv.CollectIntervention}, model=m)
    with torch.no_grad():
        (_, collected), _ = pvm(base, unit_locations={"base": locs})
    expected = torch.stack([view[i, locs[i]] for i in range(2)])
    torch.testing.assert_close(collected[0], expected)
    assert pvm.interventions[pvm.sorted_keys[0]].embed_dim is not None
    assert int(pvm.interventions[pvm.sorted_keys[0]].embed_dim) == expected.shape[-1]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("component", ["block_output", "mlp_output", "attention_output", "query_output",
                                       "head_key_output", "head_attention_value_output", "mlp_activation"])
def test_interchange_matches_hand_patch(arch, component):
    m = model_for(arch)
    module, pre, transform = ARCHS[arch][1](m)[component]
    base, src = tm.ids(2, 7, 3), tm.ids(2, 7, 4)
    head = component.startswith("head_")
    unit = "h.pos" if head else "pos"
    src_view_full = tm.capture(m, module, src, pre=pre)
    sv = transform(src_view_full) if transform else src_view_full
    if head:
        locs = [[[[1], [0]], [[2], [5]]]]  # heads per example, positions per example
        unit_locations = {"sources->base": (locs, locs)}
    else:
        unit_locations = {"sources->base": ([[[1, 4], [2, 6]]], [[[1, 4], [2, 6]]])}

    qkv = ["query_output", "key_output", "value_output"]

    def patch(t):
        t = t.clone()
        if arch == "gpt_neox" and component in qkv:  # the flattened view is not writable: write per head
            w = neox_qkv(t, m.config.num_attention_heads, qkv.index(component))
            for i in range(2):
                for p in [[1, 4], [2, 6]][i]:
                    w[i, p] = sv[i, p].view(w.shape[-2], w.shape[-1])
            return t
        v = transform(t) if transform else t
        for i in range(2):
            if head:
                h, p = locs[0][0][i][0], locs[0][1][i][0]
                v[i, h, p] = sv[i, h, p]
            else:
                for p in [[1, 4], [2, 6]][i]:
                    v[i, p] = sv[i, p]
        return t

    with torch.no_grad():
        with tm.hooked(module, patch, pre=pre):
            ref = m(**base)
        pvm = pv.IntervenableModel({"layer": L, "component": component, "unit": unit,
                                    "max_number_of_units": 2}, model=m)
        _, out = pvm(base, [src], unit_locations)
    key = "logits" if hasattr(ref, "logits") else "last_hidden_state"
    torch.testing.assert_close(out[key], ref[key], atol=2e-5, rtol=1e-4)


def _eager_attentions(m, inputs):
    prev = m.config._attn_implementation
    m.config._attn_implementation = "eager"
    try:
        return m(**inputs, output_attentions=True).attentions
    finally:
        m.config._attn_implementation = prev


@pytest.mark.parametrize("arch", list(ARCHS))
def test_attention_weight_is_the_real_probabilities(arch):
    """transformers 5 computes attention functionally; vene still exposes the probabilities."""
    m = model_for(arch)
    base = tm.ids(2, 7, 5)
    pvm = pv.IntervenableModel({"layer": L, "component": "attention_weight", "unit": "h",
                                "intervention_type": pv.CollectIntervention}, model=m)
    with torch.no_grad():
        (_, collected), out = pvm(base, unit_locations={"base": [0, 2, 3]})
        plain = m(**base)
        ref = _eager_attentions(m, base)[L]
    torch.testing.assert_close(collected[0], ref[:, [0, 2, 3]], atol=1e-5, rtol=1e-4)
    key = "logits" if hasattr(plain, "logits") else "last_hidden_state"
    torch.testing.assert_close(out[key], plain[key], atol=1e-5, rtol=1e-4)
    assert m.config._attn_implementation != "vene_probe_eager"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_attention_weight_setter_changes_the_computation(arch):
    """Zeroing a head's probabilities zeroes that head's attention value output."""
    m = model_for(arch)
    base = tm.ids(1, 6, 5)
    cfg = pv.IntervenableConfig([
        {"layer": L, "component": "attention_weight", "unit": "h", "intervention_type": pv.ZeroIntervention},
        {"layer": L, "component": "head_attention_value_output", "unit": "h", "intervention_type": pv.CollectIntervention},
    ])
    pvm = pv.IntervenableModel(cfg, model=m)
    with torch.no_grad():
        (_, collected), _ = pvm(base, unit_locations={"base": [[[1]], [[1, 2]]]})
    head1, head2 = collected[0][0, 0], collected[0][0, 1]
    assert torch.count_nonzero(head1) == 0
    assert torch.count_nonzero(head2) > 0


def test_gqa_head_dimensions():
    m = model_for("llama")
    for comp, dim in [("head_key_output", 8), ("key_output", 16), ("query_output", 32), ("head_query_output", 8)]:
        assert pv.components.component_dimension(m, comp) == dim


def test_raw_module_paths_and_subclasses():
    from transformers import LlamaForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    base = tm.ids(1, 6, 2)
    m = model_for("llama")
    sub = MyLlama(m.config).eval()
    sub.load_state_dict(m.state_dict())
    for model in (m, sub):
        pvm = pv.IntervenableModel({"component": "model.layers[1].mlp.output",
                                    "intervention": pv.CollectIntervention()}, model=model)
        with torch.no_grad():
            (_, a), _ = pvm(base, unit_locations={"base": 2})
        pvm2 = pv.IntervenableModel({"layer": 1, "component": "mlp_output",
                                     "intervention_type": pv.CollectIntervention}, model=model)
        with torch.no_grad():
            (_, b), _ = pvm2(base, unit_locations={"base": 2})
        torch.testing.assert_close(a[0], b[0])
        assert pvm.sorted_keys[0] == "comp_model_layers[1]_mlp_output_unit_pos_nunit_1#0"  # pyvene's key


def test_user_registered_architecture():
    """pyvene's T5 recipe: register a new model class in the global mappings."""
    from torch import nn

    class Cfg:
        d_model = 8
        num_heads = 2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = nn.Linear(8, 8)

        def forward(self, x):
            return self.ff(x)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Cfg()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, inputs_embeds):
            for b in self.blocks:
                inputs_embeds = b(inputs_embeds)
            return inputs_embeds

    pv.type_to_module_mapping[Toy] = {"mlp_output": ("blocks[%s].ff", pv.models.constants.CONST_OUTPUT_HOOK)}
    pv.type_to_dimension_mapping[Toy] = {"mlp_output": ("d_model",)}
    try:
        toy = Toy()
        x = torch.randn(1, 4, 8)
        pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output",
                                    "source_representation": torch.zeros(8)}, model=toy)
        with torch.no_grad():
            _, out = pvm({"inputs_embeds": x}, unit_locations={"base": 3})
            h = toy.blocks[0](x)
            h[:, 3] = 0
            ref = toy.blocks[1](h)
        torch.testing.assert_close(out, ref)
        assert int(pvm.interventions[pvm.sorted_keys[0]].embed_dim) == 8
    finally:
        del pv.type_to_module_mapping[Toy]
        del pv.type_to_dimension_mapping[Toy]


def test_unknown_component_error_suggests():
    m = model_for("gpt2")
    with pytest.raises(pv.UnknownComponentError, match="Did you mean 'block_output'"):
        pv.IntervenableModel({"layer": 0, "component": "block_outptu"}, model=m)
    with pytest.raises(pv.UnknownComponentError, match="out of range"):
        pv.IntervenableModel({"layer": 9, "component": "block_output"}, model=m)
    with pytest.raises(pv.UnknownComponentError, match="no module"):
        pv.IntervenableModel({"component": "h[0].mlpp.output"}, model=m)
    with pytest.raises(KeyError):  # also a KeyError for pyvene-style handlers
        pv.IntervenableModel({"layer": 0, "component": "mlp"}, model=m)
