"""Fast paths for pyvene-style code: run_calls (many calls as one sweep) gives what the calls give
one by one; DAS training steps keep source rows out of the autograd graph."""
from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import gpt2, ids, llama

import vene as pv
from vene import reuse


def one_by_one(model, calls):
    out = []
    with torch.no_grad():
        for c in calls:
            pvm = pv.IntervenableModel(c.config, model, reuse_sources=False)
            out.append(pvm(c.base, c.sources, c.unit_locations)[1].logits[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("make", [lambda: llama(n_layer=3), lambda: gpt2(lm=True, n_layer=3)])
def test_a_loop_over_layers_runs_as_one_sweep_with_the_same_logits(make):
    model = make()
    clean, corrupt = ids(3, seq=6, seed=2), ids(3, seq=6, seed=3)
    calls = [pv.Call({"layer": l, "component": c}, corrupt, [clean], {"sources->base": p})
             for c in ("block_output", "mlp_output", "attention_input") for l in range(3) for p in (0, 2, 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback for plain interchanges
        res = pv.run_calls(model, calls)
    assert res.logits.shape == (len(calls), 3, model.config.vocab_size)
    assert all(m.startswith("sweep:") for m in res.modes), res.modes
    torch.testing.assert_close(res.logits, one_by_one(model, calls), rtol=1e-4, atol=1e-4)
    reuse.clear(model)


def test_multi_site_and_multi_position_calls_and_heads():
    model = llama(n_layer=3)
    clean, corrupt = ids(2, seq=6, seed=4), ids(2, seq=6, seed=5)
    calls = [
        pv.Call([{"layer": 0, "component": "block_output"}, {"layer": 2, "component": "mlp_output"}],
                corrupt, [clean], {"sources->base": ([[[1, 3], [1, 3]], [[4], [4]]],) * 2}),
        pv.Call({"layer": 1, "component": "head_attention_value_output", "unit": "h.pos"},
                corrupt, [clean], {"sources->base": ([[[[1], [1]], [[2, 4], [2, 4]]]],) * 2}),
        pv.Call({"layer": 1, "component": "block_output"}, corrupt, clean, {"sources->base": 2}),
    ]
    res = pv.run_calls(model, calls)
    assert all(m.startswith("sweep:") for m in res.modes), res.reasons
    torch.testing.assert_close(res.logits, one_by_one(model, calls), rtol=1e-4, atol=1e-4)


def test_calls_that_cannot_be_swept_run_one_by_one_and_say_why():
    model = gpt2(lm=True, n_layer=2)
    clean, corrupt = ids(2, seq=6, seed=2), ids(2, seq=6, seed=3)
    calls = [
        pv.Call({"layer": 0, "component": "block_output"}, corrupt, [clean], {"sources->base": 1}),
        pv.Call({"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention},
                corrupt, [clean], {"sources->base": 1}),
        pv.Call({"layer": 1, "component": "block_output"}, corrupt, [clean], {"sources->base": (2, 3)}),
        pv.Call({"layer": 1, "component": "block_output"}, corrupt, [clean], {"sources->base": [[[1], [1]]]}),
    ]
    with pytest.warns(pv.CallFallbackWarning, match="2 of 4 calls"):
        res = pv.run_calls(model, calls)
    assert res.modes[0].startswith("sweep:") and res.modes[3].startswith("sweep:")
    assert res.modes[1] == "forward" and "AdditionIntervention" in res.reasons[1]
    assert res.modes[2] == "forward" and "other positions" in res.reasons[2]
    torch.testing.assert_close(res.logits, one_by_one(model, calls), rtol=1e-4, atol=1e-4)


def test_calls_with_different_bases_get_their_own_sweep():
    model = llama(n_layer=2)
    clean = ids(2, seq=5, seed=2)
    bases = [ids(2, seq=5, seed=s) for s in (3, 4)]
    calls = [pv.Call({"layer": l, "component": "block_output"}, b, [clean], {"sources->base": 2})
             for b in bases for l in range(2)]
    res = pv.run_calls(model, calls)
    torch.testing.assert_close(res.logits, one_by_one(model, calls), rtol=1e-4, atol=1e-4)


def test_run_calls_leaves_the_model_as_it_was():
    model = llama(n_layer=2)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    calls = [pv.Call({"layer": 0, "component": "block_output"}, ids(1, seed=3), [ids(1, seed=2)], {"sources->base": 1})]
    pv.run_calls(model, calls)
    assert model.model.layers[0].mlp.down_proj.weight.requires_grad
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_calls_are_named():
    model = llama(n_layer=2)
    with pytest.raises(pv.ConfigError, match=r"calls\[0\]"):
        pv.run_calls(model, [({"layer": 0}, ids(1))])


# ---------------------------------------------------------------------------------------------
# training steps


def _das(model, batch_sources):
    torch.manual_seed(0)
    return pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 2,
                                 "intervention_type": pv.LowRankRotatedSpaceIntervention},
                                model=model, batch_sources=batch_sources, reuse_base=False)


def test_das_step_keeps_source_rows_out_of_the_graph_and_matches_the_fused_gradient():
    """A training step (grad on, trainable intervention) runs the source under no_grad in its own
    pass; its loss and gradient equal those of the fused pass (source rows in the batch)."""
    model = gpt2(lm=True, n_layer=3)
    base, src = ids(2, seed=1), ids(2, seed=2)
    grads, losses = [], []
    for policy in (True, "auto"):
        pvm = _das(model, policy)
        seen = []

        def count(mod, args, out, seen=seen):
            seen.append(out[0].shape[0] if isinstance(out, tuple) else out.shape[0])

        h = model.transformer.h[2].register_forward_hook(count)
        try:
            _, out = pvm(base, [src], {"sources->base": 3})
        finally:
            h.remove()
        loss = out.logits[:, -1].logsumexp(-1).sum()
        loss.backward()
        iv = next(iter(pvm.interventions.values()))
        grads.append(iv.rotate_layer.parametrizations.weight.original.grad.clone())
        losses.append(float(loss.detach()))
        if policy == "auto":
            assert seen == [2]  # the base rows only go past the site (the source pass stopped at layer 1)
        else:
            assert seen == [4]  # batch_sources=True still fuses: source rows ride along
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
