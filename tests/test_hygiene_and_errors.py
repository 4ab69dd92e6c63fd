"""Hooks we did not install survive; failing calls leave nothing behind; bad input is explained."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv


def all_hooks(model):
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return n


def test_user_hooks_survive_and_ours_are_removed(gpt2):
    seen = []
    h = gpt2.h[0].register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        before = all_hooks(gpt2)
        pvm = pv.IntervenableModel({"layer": 0, "component": "block_output"}, model=gpt2)
        with torch.no_grad():
            pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": 2})
            pvm(tm.ids(1, 6, 1), [tm.ids(1, 7, 2)], {"sources->base": 2})
        assert all_hooks(gpt2) == before
        assert len(seen) == 3  # fused call (1) + source pass and base pass (2)
    finally:
        h.remove()


def test_exception_leaves_no_hooks_and_model_unchanged(gpt2):
    class Boom(pv.ConstantSourceIntervention):
        def forward(self, base, source=None, subspaces=None):
            raise RuntimeError("boom")

    cfg = [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "attention_weight", "unit": "h",
           "intervention_type": pv.CollectIntervention}, {"layer": 2, "component": "mlp_output", "intervention": Boom()}]
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    before = all_hooks(gpt2)
    state = {k: v.clone() for k, v in gpt2.state_dict().items()}
    impl = gpt2.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2), None, None], {"sources->base": 2})
    assert all_hooks(gpt2) == before
    assert gpt2.config._attn_implementation == impl
    assert all(torch.equal(v, state[k]) for k, v in gpt2.state_dict().items())


def test_freeze_model_false_leaves_the_model_as_it_is():
    model = tm.gpt2()
    model.train()
    model.h[0].mlp.c_fc.weight.requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    pv.IntervenableModel({"layer": 0, "component": "block_output"}, model=model, freeze_model=False)
    assert [p.requires_grad for p in model.parameters()] == flags and model.training


def test_user_inputs_are_not_modified(gpt2):
    emb = torch.randn(1, 6, 32)
    keep = emb.clone()
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_input", "intervention_type": pv.ZeroIntervention}, model=gpt2)
    with torch.no_grad():
        pvm({"inputs_embeds": emb}, unit_locations={"base": 2})
    assert torch.equal(emb, keep)


def test_caller_lists_are_not_mutated(gpt2):
    cfg = [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}]
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    sources = [tm.ids(1, 6, 2)]
    with torch.no_grad():
        pvm(tm.ids(1, 6, 1), sources, {"sources->base": 2})
    assert len(sources) == 1


@pytest.mark.parametrize("locs, match", [
    ({"sources->base": 9}, "out of range"),
    ({"sources->base": ([[[1]]], [[[1]], [[2]]])}, "2 entries but there are 1 interventions"),
    ({"sources->base": ([[[1], [2]]], [[[1], [2]]])}, "2 rows but the batch has 1"),
    ({"source_0->base": 1}, "serial"),
    ({"sourcse->base": 1}, "Unknown unit_locations key"),
    ({"sources->base": "x"}, "Cannot read unit locations"),
    ({"sources->base": ([[[-1]]], [[[1]]])}, "negative"),
    ({"sources->base": ([[[[1]]]], [[[1]]])}, "non-empty list of ints"),
])
def test_location_errors(gpt2, locs, match):
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_output"}, model=gpt2)
    with pytest.raises(pv.LocationError, match=match):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], locs)


def test_head_location_errors(gpt2):
    pvm = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos"}, model=gpt2)
    with pytest.raises(pv.LocationError, match="head axis has 4"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": pv.GET_LOC((7, 1))})
    with pytest.raises(pv.LocationError, match="two levels"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": ([[[1]]], [[[1]]])})


def test_source_errors(gpt2):
    pvm = pv.IntervenableModel([{"layer": 0, "component": "block_output"}] * 2, model=gpt2)
    with pytest.raises(pv.SourceError, match="3 sources but the configuration has 2 groups"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)] * 3, {"sources->base": 2})
    with pytest.raises(pv.SourceError, match="batch size 2 but the base has 1"):
        pvm(tm.ids(1, 6, 1), [tm.ids(2, 6, 2), None], {"sources->base": 2})
    with pytest.raises(pv.SourceError, match="unknown key"):
        pvm(tm.ids(1, 6, 1), unit_locations={"base": 2}, source_representations={"nope": torch.zeros(32)})
    with pytest.raises(pv.SourceError, match="dict of model inputs"):
        pvm(torch.zeros(1, 6, dtype=torch.long))


def test_shape_errors(gpt2):
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_output"}, model=gpt2)
    with pytest.raises(pv.ShapeMismatchError, match="last dimension must be 32"):
        pvm(tm.ids(1, 6, 1), unit_locations={"base": 2}, source_representations=torch.zeros(7))
    with pytest.raises(pv.ShapeMismatchError, match="same number of units"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": ([[[1, 2]]], [[[1]]])})
    with pytest.raises(pv.ShapeMismatchError, match="out of range for 32 features"):
        pvm(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": 1}, subspaces=[40])


def test_config_errors(gpt2):
    with pytest.raises(pv.ConfigError, match="Did you mean 'component'"):
        pv.IntervenableConfig({"layer": 0, "compnent": "block_output"})
    with pytest.raises(pv.ConfigError, match="not both"):
        pv.IntervenableConfig({"intervention_type": pv.ZeroIntervention, "intervention": pv.ZeroIntervention()})
    with pytest.raises(pv.ConfigError, match="mode"):
        pv.IntervenableConfig({"layer": 0}, mode="sequential")
    with pytest.raises(pv.ConfigError, match="group_key"):
        pv.IntervenableModel([{"layer": 0, "group_key": 0}, {"layer": 1}], model=gpt2)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        pv.IntervenableConfig([{"layer": 0}], intervention_types=[pv.VanillaIntervention] * 2)


def test_hook_that_never_fires_is_reported(gpt2_lm):
    """With inputs_embeds the token embedding module never runs: say so instead of a KeyError."""
    pvm = pv.IntervenableModel({"component": "transformer.wte.output", "intervention_type": pv.CollectIntervention},
                               model=gpt2_lm)
    with pytest.raises(pv.HookNotFiredError, match="never ran"):
        with torch.no_grad():
            pvm({"inputs_embeds": torch.zeros(1, 4, 32)}, unit_locations={"base": 1})
    with torch.no_grad():
        (_, got), _ = pvm(tm.ids(1, 4, 1), unit_locations={"base": 1})
    assert got[0].shape == (1, 1, 32)
