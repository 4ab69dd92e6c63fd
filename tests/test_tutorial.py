"""The pyvene 101 tutorial's forward-pass snippets, on a tiny GPT-2 (integer ids for prompts).

Each test follows one snippet with ``import vene as pv`` and checks the result against a
hand-computed intervention. (GRU, generation and saving snippets live in their own test files.)
"""
from __future__ import annotations

import torch

import tiny_models as tm
import vene as pv

SPAIN = tm.ids(1, 5, 11)  # "The capital of Spain is"
ITALY = tm.ids(1, 5, 12)  # "The capital of Italy is"
CHINA = tm.ids(1, 5, 13)
LANGUAGE = tm.ids(1, 5, 14)  # "The language of Spain is"


def hidden(out):
    return out.last_hidden_state


def run_with(model, patches):
    """``patches``: list of (module, fn, pre)."""
    from contextlib import ExitStack

    with torch.no_grad(), ExitStack() as stack:
        for mod, fn, pre in patches:
            stack.enter_context(tm.hooked(mod, fn, pre=pre))
        return model(**SPAIN)


def set_at(pos, value, dims=slice(None)):
    def fn(t):
        t = t.clone()
        t[:, pos, dims] = value
        return t
    return fn


def test_get_attention_weights(gpt2):
    pv_gpt2 = pv.IntervenableModel({"layer": 2, "component": "attention_weight", "unit": "h",
                                    "intervention_type": pv.CollectIntervention}, model=gpt2)
    with torch.no_grad():
        attn = pv_gpt2(base=SPAIN, unit_locations={"base": [0, 1, 3]})[0][-1][0]
    assert attn.shape == (1, 3, 5, 5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 3, 5))
    assert torch.all(attn.triu(1) == 0)  # causal


def test_set_activation_to_zeros(gpt2):
    pv_gpt2 = pv.IntervenableModel({"layer": 0, "component": "mlp_output",
                                    "source_representation": torch.zeros(gpt2.config.n_embd)}, model=gpt2)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, unit_locations={"base": 3})
    ref = run_with(gpt2, [(gpt2.h[0].mlp, set_at(3, 0.0), False)])
    torch.testing.assert_close(hidden(out), hidden(ref))


def test_zero_with_subspaces(gpt2):
    pv_gpt2 = pv.IntervenableModel(pv.IntervenableConfig({"layer": 0, "component": "mlp_output"}), model=gpt2)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, unit_locations={"base": 3}, subspaces=[10, 11, 12],
                         source_representations=torch.zeros(gpt2.config.n_embd))
    ref = run_with(gpt2, [(gpt2.h[0].mlp, set_at(3, 0.0, [10, 11, 12]), False)])
    torch.testing.assert_close(hidden(out), hidden(ref))


def test_interchange_intervention(gpt2):
    cfg = pv.IntervenableConfig({"layer": 0, "component": "mlp_output"}, intervention_types=pv.VanillaIntervention)
    pv_gpt2 = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, sources=ITALY, unit_locations={"sources->base": 3}, subspaces=[10, 11, 12])
    src = tm.capture(gpt2, gpt2.h[0].mlp, ITALY)
    ref = run_with(gpt2, [(gpt2.h[0].mlp, set_at(3, src[:, 3, [10, 11, 12]], [10, 11, 12]), False)])
    torch.testing.assert_close(hidden(out), hidden(ref))


def test_intervention_configuration_and_print(gpt2):
    config = pv.IntervenableConfig([{"layer": i, "component": "mlp_output",
                                     "source_representation": torch.zeros(gpt2.config.n_embd)} for i in range(3)],
                                   mode="parallel")
    text = str(config)
    assert "mlp_output" in text and "tensor(shape=[32]" in text
    pv_gpt2 = pv.IntervenableModel(config, model=gpt2)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, unit_locations={"base": 3})
    ref = run_with(gpt2, [(gpt2.h[i].mlp, set_at(3, 0.0), False) for i in range(3)])
    torch.testing.assert_close(hidden(out), hidden(ref))
    again = pv.IntervenableConfig.from_json_string(config.to_json_string())
    assert again == config


def test_addition_intervention(gpt2):
    config = pv.IntervenableConfig({"layer": 0, "component": "mlp_input"}, pv.AdditionIntervention)
    pv_gpt2 = pv.IntervenableModel(config, model=gpt2)
    vec = torch.rand(gpt2.config.n_embd)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, unit_locations={"base": [0, 1, 2, 3]}, source_representations=vec)

    def add(t):
        t = t.clone(); t[:, :4] += vec; return t

    torch.testing.assert_close(hidden(out), hidden(run_with(gpt2, [(gpt2.h[0].mlp, add, True)])))


def test_trainable_low_rank_rotation_backward(gpt2):
    if not hasattr(pv, "LowRankRotatedSpaceIntervention"):
        import pytest
        pytest.skip("trainable interventions not available")
    das_config = pv.IntervenableConfig({"layer": 2, "component": "block_output", "low_rank_dimension": 1},
                                       pv.LowRankRotatedSpaceIntervention)
    das_gpt2 = pv.IntervenableModel(das_config, model=gpt2)
    last = das_gpt2(base=SPAIN, sources=ITALY, unit_locations={"sources->base": 3})[-1].last_hidden_state[:, -1]
    logits = last @ gpt2.wte.weight.t()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([7]))
    loss.backward()
    params = das_gpt2.get_trainable_parameters()
    assert params and all(p.grad is not None for p in params)


def test_activation_collection(gpt2):
    config = pv.IntervenableConfig({"layer": 2, "component": "block_output", "intervention_type": pv.CollectIntervention})
    pv_gpt2 = pv.IntervenableModel(config, model=gpt2)
    with torch.no_grad():
        collected = pv_gpt2(base=SPAIN, unit_locations={"sources->base": 3})[0][-1]
    torch.testing.assert_close(collected[0], tm.capture(gpt2, gpt2.h[2], SPAIN)[:, [3]])


def test_collection_downstream_of_intervention(gpt2):
    config = pv.IntervenableConfig({"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention})
    config.add_intervention({"layer": 2, "component": "block_output", "intervention_type": pv.CollectIntervention})
    pv_gpt2 = pv.IntervenableModel(config, model=gpt2)
    with torch.no_grad():
        collected = pv_gpt2(base=SPAIN, sources=[ITALY, None], unit_locations={"sources->base": 3})[0][-1]
    src = tm.capture(gpt2, gpt2.h[1], ITALY)
    with torch.no_grad(), tm.hooked(gpt2.h[1], set_at(3, src[:, 3])):
        expected = tm.capture(gpt2, gpt2.h[2], SPAIN)[:, [3]]
    torch.testing.assert_close(collected[0], expected)


def test_single_neuron_of_a_head(gpt2):
    config = pv.IntervenableConfig({"layer": 2, "component": "head_attention_value_output", "unit": "h.pos",
                                    "intervention_type": pv.CollectIntervention})
    pv_gpt2 = pv.IntervenableModel(config, model=gpt2)
    with torch.no_grad():
        collected = pv_gpt2(base=SPAIN, unit_locations={"base": pv.GET_LOC((3, 3))}, subspaces=[0])[0][-1]
    z = tm.capture(gpt2, gpt2.h[2].attn.c_proj, SPAIN, pre=True)  # (1, 5, 32): heads of 8
    assert collected[0].shape == (1, 1, 1, 1)
    torch.testing.assert_close(collected[0].flatten(), z[:, 3, 3 * 8 + 0])


def test_new_intervention_type(gpt2):
    class MultiplierIntervention(pv.ConstantSourceIntervention):
        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, base, source=None, subspaces=None):
            return base * 99.0

    pv_gpt2 = pv.IntervenableModel({"intervention_type": MultiplierIntervention}, model=gpt2)
    with torch.no_grad():
        _, out = pv_gpt2(base=SPAIN, unit_locations={"base": 3})

    def mul(t):
        t = t.clone(); t[:, 3] *= 99.0; return t

    torch.testing.assert_close(hidden(out), hidden(run_with(gpt2, [(gpt2.h[0], mul, False)])))


def test_multi_source_parallel(gpt2):
    cfg = pv.IntervenableConfig([{"layer": 1, "component": "block_output"}, {"layer": 1, "component": "block_output"}],
                                mode="parallel")
    m = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        out = m(SPAIN, [LANGUAGE, ITALY], {"sources->base": ([[[1]], [[3]]], [[[1]], [[3]]])})
    a, b = tm.capture(gpt2, gpt2.h[1], LANGUAGE), tm.capture(gpt2, gpt2.h[1], ITALY)

    def f(t):
        t = t.clone(); t[:, 1] = a[:, 1]; t[:, 3] = b[:, 3]; return t

    torch.testing.assert_close(hidden(out[1]), hidden(run_with(gpt2, [(gpt2.h[1], f, False)])), atol=1e-5, rtol=1e-4)
    distrib = pv.embed_to_distrib(gpt2, out[1].last_hidden_state, logits=False)
    torch.testing.assert_close(distrib[0][-1].sum(), torch.tensor(1.0))


def test_multi_source_serial(gpt2):
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output"}, {"layer": 2, "component": "block_output"}],
                                mode="serial")
    m = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        out = m(SPAIN, [LANGUAGE, ITALY], {"source_0->source_1": 1, "source_1->base": 4})
    a = tm.capture(gpt2, gpt2.h[0], LANGUAGE)
    with torch.no_grad(), tm.hooked(gpt2.h[0], set_at(1, a[:, 1])):
        b = tm.capture(gpt2, gpt2.h[2], ITALY)
    torch.testing.assert_close(hidden(out[1]), hidden(run_with(gpt2, [(gpt2.h[2], set_at(4, b[:, 4]), False)])),
                               atol=1e-5, rtol=1e-4)


def test_multi_source_subspaces_parallel_and_serial(gpt2):
    part = [[0, 8], [8, 16]]
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "subspace_partition": part}] * 2,
                                intervention_types=pv.VanillaIntervention, mode="parallel")
    m = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        out = m(SPAIN, [ITALY, CHINA], {"sources->base": 4}, subspaces=[[[0]], [[1]]])
    a, c = tm.capture(gpt2, gpt2.h[0], ITALY), tm.capture(gpt2, gpt2.h[0], CHINA)

    def f(t):
        t = t.clone(); t[:, 4, 0:8] = a[:, 4, 0:8]; t[:, 4, 8:16] = c[:, 4, 8:16]; return t

    torch.testing.assert_close(hidden(out[1]), hidden(run_with(gpt2, [(gpt2.h[0], f, False)])), atol=1e-5, rtol=1e-4)

    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "subspace_partition": part},
                                 {"layer": 2, "component": "block_output", "subspace_partition": part}],
                                intervention_types=pv.VanillaIntervention, mode="serial")
    m = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        out = m(SPAIN, [ITALY, CHINA], {"source_0->source_1": 3, "source_1->base": 4}, subspaces=[[[0]], [[1]]])
    with torch.no_grad(), tm.hooked(gpt2.h[0], set_at(3, a[:, 3, 0:8], slice(0, 8))):
        c2 = tm.capture(gpt2, gpt2.h[2], CHINA)
    ref = run_with(gpt2, [(gpt2.h[2], set_at(4, c2[:, 4, 8:16], slice(8, 16)), False)])
    torch.testing.assert_close(hidden(out[1]), hidden(ref), atol=1e-5, rtol=1e-4)


def test_iit_enable_model_gradients(gpt2_lm):
    import copy

    model = copy.deepcopy(gpt2_lm)
    pv_gpt2 = pv.IntervenableModel({"layer": 1}, model=model)
    pv_gpt2.enable_model_gradients()
    _, out = pv_gpt2(SPAIN, [ITALY], {"sources->base": 3})
    loss = torch.nn.functional.cross_entropy(out.logits[:, -1], torch.tensor([5]))
    loss.backward()
    assert model.transformer.h[0].mlp.c_fc.weight.grad is not None
    assert pv_gpt2.count_parameters(include_model=True) == sum(p.numel() for p in model.parameters())


def test_path_patching_config_builds(gpt2):
    def path_patching_config(layer, last_layer, component="head_attention_value_output", unit="h.pos"):
        intervening = [{"layer": layer, "component": component, "unit": unit, "group_key": 0}]
        restoring = [{"layer": layer, "component": "mlp_output", "group_key": 1}]
        for i in range(layer + 1, last_layer):
            restoring += [{"layer": i, "component": "attention_output", "group_key": 1},
                          {"layer": i, "component": "mlp_output", "group_key": 1}]
        return pv.IntervenableConfig(intervening + restoring)

    m = pv.IntervenableModel(path_patching_config(1, gpt2.config.n_layer), model=gpt2)
    assert len(m.sorted_keys) == 1 + 1 + 2 * 1
    n_res = len(m.sorted_keys) - 1
    locs = pv.GET_LOC((2, 3))[0]
    with torch.no_grad():
        _, out = m(SPAIN, [ITALY, SPAIN],
                   {"sources->base": ([locs] + [[[3]]] * n_res, [locs] + [[[3]]] * n_res)})
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_causal_tracing_config_builds(gpt2):
    def causal_tracing_config(l, c="mlp_activation", w=10, tl=3):
        s = max(0, l - w // 2)
        e = min(tl, l - (-w // 2))
        return pv.IntervenableConfig([{"component": "block_input"}] + [{"layer": i, "component": c} for i in range(s, e)],
                                     [pv.NoiseIntervention] + [pv.VanillaIntervention] * (e - s))

    m = pv.IntervenableModel(causal_tracing_config(1), model=gpt2)
    n = len(m.sorted_keys)
    with torch.no_grad():
        _, out = m(SPAIN, [None] + [SPAIN] * (n - 1), {"sources->base": ([None] + [[[1, 2]]] * (n - 1),
                                                                           [[[1, 2]]] + [[[1, 2]]] * (n - 1))})
        plain = gpt2(**SPAIN)
    # restoring every layer's MLP activations at the noised positions does not undo the noise in
    # the residual stream, so the output differs from the clean run
    assert not torch.allclose(out.last_hidden_state, plain.last_hidden_state)
