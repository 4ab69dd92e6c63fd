"""Component resolution by introspection: stacks, prefixes, error messages, the attention
implementation switch on multimodal wrappers. (Per-cell semantics: tests/test_support_matrix.py.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import arch_zoo as zoo
import support_cells as sc
import vene as pv
from vene.components import resolve_site


@pytest.fixture(scope="module")
def t5():
    return zoo.FAMILIES["t5"].build()


@pytest.fixture(scope="module")
def llava():
    return zoo.FAMILIES["llava"].build()


def test_encoder_decoder_stacks_and_prefixes(t5):
    listing = pv.list_components(t5)
    assert list(listing) == ["encoder", "decoder"]  # the default (unprefixed) stack first
    assert resolve_site(t5, "block_output", 1).module_path == "encoder.block.1"
    assert resolve_site(t5, "decoder.block_output", 1).module_path == "decoder.block.1"
    site = resolve_site(t5, "decoder.cross_attention_output", 0)
    assert (site.module_path, site.io) == ("decoder.block.0.layer.1.EncDecAttention", "output")
    site = resolve_site(t5, "decoder.head_cross_key_output", 1)
    assert site.module_path == "decoder.block.1.layer.1.EncDecAttention.k" and site.n_heads == 4 and site.dim == 8
    # an encoder block has no cross-attention: the error names what exists
    with pytest.raises(pv.UnknownComponentError) as e:
        resolve_site(t5, "cross_attention_output", 0)
    msg = str(e.value)
    assert "Known (stack 'encoder', encoder.block):" in msg and "block_output" in msg
    assert "'decoder' (decoder.block)" in msg and "decoder.block_output" in msg
    assert "or Or" not in msg and " Or pass a module path such as 'encoder.block[0].output'" in msg


def test_multimodal_wrapper_resolves_from_the_language_model(llava):
    """LLaVA's top-level config has no hidden size; dimensions come from the text model."""
    assert list(pv.list_components(llava)) == ["text", "vision"]
    site = resolve_site(llava, "head_key_output", 1)
    assert site.module_path == "model.language_model.layers.1.self_attn.k_proj"
    assert (site.n_heads, site.dim) == (2, 8)  # GQA: 2 key/value heads of 8
    assert resolve_site(llava, "vision.block_output", 1).module_path == "model.vision_tower.encoder.layers.1"
    assert resolve_site(llava, "language.block_output", 0).module_path == "model.language_model.layers.0"
    pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output"}, model=llava)
    assert int(pvm.interventions[pvm.sorted_keys[0]].embed_dim) == 32


def test_attention_weight_switches_the_config_the_language_model_reads(llava):
    """Before: the switch went to the top-level config only, the text model kept sdpa, and the
    collected probabilities were empty."""
    inputs = zoo.llava_in(3)
    text_cfg = llava.model.language_model.config
    assert text_cfg is not llava.config
    before = (llava.config._attn_implementation, text_cfg._attn_implementation)
    pvm = pv.IntervenableModel({"layer": 1, "component": "attention_weight", "unit": "h",
                                "intervention_type": pv.CollectIntervention}, model=llava)
    with torch.no_grad():
        (_, collected), _ = pvm(inputs, unit_locations={"base": [[0, 3], [0, 3]]})
    ref = sc._eager_attentions(llava, inputs).attentions[1][:, [0, 3]]
    assert collected[0].shape == ref.shape == (2, 2, 8, 8)
    torch.testing.assert_close(collected[0], ref, atol=1e-5, rtol=1e-4)
    assert (llava.config._attn_implementation, text_cfg._attn_implementation) == before


def test_attention_switch_is_restored_when_the_call_fails(llava):
    text_cfg = llava.model.language_model.config
    before = text_cfg._attn_implementation
    pvm = pv.IntervenableModel({"layer": 1, "component": "attention_weight", "unit": "h",
                                "intervention_type": pv.CollectIntervention}, model=llava)
    with pytest.raises(Exception):
        pvm(zoo.llava_in(3), unit_locations={"base": [[0, 99], [0, 99]]})  # head 99 does not exist
    assert text_cfg._attn_implementation == before


def test_not_present_components_say_why():
    m = zoo.FAMILIES["mixtral"].build()
    with pytest.raises(pv.UnknownComponentError, match="routed tokens") as e:
        pv.IntervenableModel({"layer": 0, "component": "mlp_activation"}, model=m)
    assert "Or pass a module path such as 'model.layers[0].output'" in str(e.value)
    mamba = zoo.FAMILIES["mamba"].build()
    with pytest.raises(pv.UnknownComponentError, match="mixer_input / mixer_output"):
        resolve_site(mamba, "attention_output", 0)
    assert resolve_site(mamba, "mixer_output", 1).module_path == "backbone.layers.1.mixer"


def test_misspelt_component_suggests_and_lists(t5):
    with pytest.raises(pv.UnknownComponentError, match="Did you mean 'block_output'"):
        resolve_site(t5, "block_outptu", 0)
    with pytest.raises(pv.UnknownComponentError, match=r"decoder stack \(decoder.block\) has 2 layers"):
        resolve_site(t5, "decoder.block_output", 5)


def test_fused_projection_of_unknown_layout_is_not_guessed():
    """A fused q/k/v whose layout vene does not know gives no q/k/v components (never a guess)."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj = nn.Linear(8, 24)
            self.out_proj = nn.Linear(8, 8)
            self.num_heads = 2

        def forward(self, x):
            q, k, v = self.qkv_proj(x).chunk(3, -1)
            return self.out_proj(q + k + v)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attn()

        def forward(self, x):
            return x + self.attn(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for b in self.layers:
                x = b(x)
            return x

    net = Net()
    assert resolve_site(net, "attention_value_output", 1).module_path == "layers.1.attn.out_proj"
    with pytest.raises(pv.UnknownComponentError, match="FUSED_LAYOUTS"):
        resolve_site(net, "query_output", 0)
    with pytest.raises(pv.UnknownComponentError, match="FUSED_LAYOUTS"):
        resolve_site(net, "head_key_output", 0)


class _InlineAttention(nn.Module):
    """An attention that forms its probabilities inline and hands them to a dropout module."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.resid_dropout = nn.Dropout(0.0)
        self.attn_dropout = nn.Dropout(0.0)

    def _attn(self, q, k, v):
        w = q @ k.transpose(-1, -2)
        attn_weights = nn.functional.softmax(w, dim=-1)
        attn_weights = attn_weights.to(v.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        return attn_weights @ v

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.resid_dropout(self._attn(q, k, v))


class _SubclassedInline(_InlineAttention):
    def forward(self, x):  # the softmax lives in the parent class's helper
        return super().forward(x) * 1.0


class _NoProbModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        probs = torch.softmax(x, -1)
        hidden = self.dropout(x)  # a dropout, but not on the probabilities
        return probs @ hidden


def test_inline_attention_probabilities_are_found_on_the_module_that_receives_them():
    """transformers 5.23's GPT-J and CodeGen computed softmax(qk) in ``_attn`` and passed it to
    ``attn_dropout``; vene found no way to read attention_weight there (a name table listed only
    Bloom and BLIP). The module is now found from the source, on subclasses too, and a dropout
    applied to something else is not taken."""
    from vene.components.introspect import _prob_module

    assert _prob_module(_InlineAttention()) == "attn_dropout"
    assert _prob_module(_SubclassedInline()) == "attn_dropout"
    assert _prob_module(_NoProbModule()) is None
    # the families the name table used to list are still found
    for family, rel in (("bloom", "self_attention"),):
        attn = zoo.FAMILIES[family].build().transformer.h[0].get_submodule(rel)
        assert _prob_module(attn) == "attention_dropout"
