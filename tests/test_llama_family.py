"""The Llama-family table serves Mistral, Qwen2/3, Gemma/Gemma2 and OLMo/OLMo2 (GQA-aware),
including attention probabilities (Gemma2's soft-capped attention too)."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv

FAMILY = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "attn_logit_softcapping": 5.0,
                                                      "query_pre_attn_scalar": 8}),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
}


def build(name):
    import transformers

    cfg_cls, model_cls, extra = FAMILY[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=tm.VOCAB, max_position_embeddings=32, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_components(name):
    m = build(name)
    layer = m.model.layers[1]
    base = tm.ids(2, 6, 3)
    cases = {
        "block_output": (layer, False, lambda x: x),
        "mlp_output": (layer.mlp, False, lambda x: x),
        "head_key_output": (layer.self_attn.k_proj, False, lambda x: x.view(2, 6, 2, -1).transpose(1, 2)),
        "head_attention_value_output": (layer.self_attn.o_proj, True, lambda x: x.view(2, 6, 4, -1).transpose(1, 2)),
    }
    for comp, (module, pre, view) in cases.items():
        full = view(tm.capture(m, module, base, pre=pre))
        unit = "h" if comp.startswith("head_") else "pos"
        pvm = pv.IntervenableModel({"layer": 1, "component": comp, "unit": unit,
                                    "intervention_type": pv.CollectIntervention}, model=m)
        with torch.no_grad():
            (_, got), _ = pvm(base, unit_locations={"base": [[1], [0]]})
        torch.testing.assert_close(got[0], torch.stack([full[0, [1]], full[1, [0]]]), msg=f"{name} {comp}")


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_attention_weights(name):
    m = build(name)
    base = tm.ids(1, 6, 4)
    pvm = pv.IntervenableModel({"layer": 1, "component": "attention_weight", "unit": "h",
                                "intervention_type": pv.CollectIntervention}, model=m)
    with torch.no_grad():
        (_, got), out = pvm(base, unit_locations={"base": [0, 3]})
        plain = m(**base)
        prev = m.config._attn_implementation
        m.config._attn_implementation = "eager"
        try:
            ref = m(**base, output_attentions=True).attentions[1]
        finally:
            m.config._attn_implementation = prev
    torch.testing.assert_close(got[0], ref[:, [0, 3]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-4)
