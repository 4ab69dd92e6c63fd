"""Base resumption (vene.resume): a call whose interventions start at layer L and token p runs
layers L.. on positions p.. from a recorded un-intervened pass of the same base. Results equal the
full pass (and hand-written hooks); every way a record can go stale runs the base in full."""
from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import capture, gpt2, hooked, ids, llama

import vene as pv
from vene import resume, reuse


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    torch.manual_seed(0)
    m = (gpt2(lm=True, n_layer=4) if request.param == "gpt2" else llama(n_layer=4)).eval()
    yield m
    reuse.clear(m)
    resume.clear(m)


def layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def counts(model):
    s = resume.stats(model)
    return s["resumed"], s["recorded"]


def call(model, layer, base, src, pos, component="block_output", **kw):
    pvm = pv.IntervenableModel({"layer": layer, "component": component}, model=model, **kw)
    return pvm(base, [src], {"sources->base": pos})[1].logits


def hand(model, layer, base, src, pos):
    mod = layers(model)[layer]
    s = capture(model, mod, src)

    def patch(t):
        t = t.clone()
        t[:, pos] = s[:, pos]
        return t

    with hooked(mod, patch):
        return model(**base).logits


def test_a_loop_over_layers_resumes_and_matches_hand_hooks(model):
    base, src = ids(2, seq=7, seed=1), ids(2, seq=7, seed=2)
    with torch.no_grad():
        got = [call(model, l, base, src, 4) for l in range(4)]
    # call 0 notes the base, call 1 records it (one pass) and resumes, calls 2 and 3 resume
    assert counts(model) == (3, 1)
    for l in range(4):
        torch.testing.assert_close(got[l], hand(model, l, base, src, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("component", ["block_input", "block_output", "mlp_output", "mlp_input",
                                       "attention_output", "attention_input"])
def test_every_position_wise_component_resumes_exactly(model, component):
    base, src = ids(3, seq=6, seed=3), ids(3, seq=6, seed=4)
    with torch.no_grad():
        full = [call(model, l, base, src, 2, component, reuse_base=False) for l in (1, 2, 3)]
        got = [call(model, l, base, src, 2, component) for l in (1, 2, 3)]
    assert counts(model) == (2, 1)
    for a, b in zip(full, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_per_example_positions_and_several_interventions(model):
    """Each example patches its own tokens at two layers; the pass starts at the first of them."""
    base, src = ids(2, seq=8, seed=5), ids(2, seq=8, seed=6)
    cfg = [{"layer": 1, "component": "block_output"}, {"layer": 3, "component": "mlp_output"}]
    locs = {"sources->base": ([[[5, 6], [3, 7]], [[4], [6]]], [[[5, 6], [3, 7]], [[4], [6]]])}
    outs = {}
    with torch.no_grad():
        for rb in (False, True, True, True):
            pvm = pv.IntervenableModel(cfg, model=model, reuse_base=rb)
            outs.setdefault(rb, []).append(pvm(base, [src, src], locs)[1].logits)
    assert counts(model) == (2, 1)
    for o in outs[True]:
        torch.testing.assert_close(o, outs[False][0], rtol=1e-5, atol=1e-5)


def test_padded_batch_with_attention_mask(model):
    base, src = ids(2, seq=7, seed=7), ids(2, seq=7, seed=8)
    base["attention_mask"] = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    src["attention_mask"] = torch.tensor([[1] * 7, [0] + [1] * 6])
    with torch.no_grad():
        full = [call(model, l, base, src, 5, reuse_base=False) for l in range(1, 4)]
        got = [call(model, l, base, src, 5) for l in range(1, 4)]
    assert counts(model)[0] == 2
    for a, b in zip(full, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_collect_and_original_output_on_a_resumed_call(model):
    base, src = ids(2, seq=6, seed=9), ids(2, seq=6, seed=10)
    cfg = [{"layer": 2, "component": "block_output"},
           {"layer": 3, "component": "block_output", "intervention_type": pv.CollectIntervention}]
    with torch.no_grad():
        res = []
        for rb in (False, True, True):
            pvm = pv.IntervenableModel(cfg, model=model, reuse_base=rb)
            res.append(pvm(base, [src, None], {"sources->base": ([[[3]] * 2, None], [[[3]] * 2, [[4, 5]] * 2])},
                           output_original_output=True))
    assert counts(model)[0] == 1
    (orig0, coll0), out0 = res[0]
    (orig2, coll2), out2 = res[2]
    torch.testing.assert_close(out2.logits, out0.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(orig2.logits, orig0.logits)
    torch.testing.assert_close(coll2[0], coll0[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(orig0.logits, model(**base).logits)


def test_a_training_step_builds_the_graph_for_the_patched_positions_only(model):
    """DAS on the last token: the resumed step's loss and gradients equal the full step's, no
    model weight gets a gradient, and the layers after the site run on one position with grad."""
    base, src = ids(3, seq=6, seed=11), ids(3, seq=6, seed=12)
    res = []
    for rb in (False, True):
        torch.manual_seed(0)
        pvm = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 2,
                                    "intervention_type": pv.LowRankRotatedSpaceIntervention},
                                   model=model, reuse_base=rb)
        if rb:  # the model's first record also checks that its layers replay (extra layer calls)
            pvm(ids(3, seq=6, seed=30), [src], {"sources->base": 5})
        seen = []
        h = layers(model)[3].register_forward_hook(
            lambda m, a, o, seen=seen: seen.append(((o[0] if isinstance(o, tuple) else o).shape[1], torch.is_grad_enabled())))
        try:
            _, out = pvm(base, [src], {"sources->base": 5})
        finally:
            h.remove()
        loss = out.logits[:, -1].logsumexp(-1).sum() + out.logits[:, 2].sum()
        loss.backward()
        grads = [p.grad.clone() for p in pvm.get_trainable_parameters()]
        res.append((float(loss.detach()), grads, seen))
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-5)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert res[0][2] == [(6, True)]
    assert res[1][2] == [(6, False), (1, True)]  # the record (no grad), then position 5 with grad
    assert all(p.grad is None for p in model.parameters())


def test_a_training_step_patching_early_tokens_runs_in_full(model):
    base, src = ids(2, seq=6, seed=13), ids(2, seq=6, seed=14)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 2,
                                "intervention_type": pv.LowRankRotatedSpaceIntervention}, model=model)
    _, out = pvm(base, [src], {"sources->base": 1})  # 5 of 6 positions follow: not worth a record
    out.logits.sum().backward()
    assert counts(model) == (0, 0)


def test_in_place_edit_of_the_base_runs_it_in_full(model):
    base, src = ids(2, seq=6, seed=15), ids(2, seq=6, seed=16)
    with torch.no_grad():
        call(model, 2, base, src, 3)
        call(model, 2, base, src, 3)
        assert counts(model) == (1, 1)
        base["input_ids"][0, 1] = 7
        got = call(model, 2, base, src, 3)
    assert counts(model) == (1, 1)
    torch.testing.assert_close(got, hand(model, 2, base, src, 3), rtol=1e-5, atol=1e-5)


def test_changed_weights_train_mode_and_user_hooks_run_in_full(model):
    base, src = ids(2, seq=6, seed=17), ids(2, seq=6, seed=18)
    with torch.no_grad():
        call(model, 2, base, src, 3)
        call(model, 2, base, src, 3)
        assert counts(model) == (1, 1)
        # weights changed in place
        p = next(layers(model)[0].parameters())
        p.add_(0.01)
        got = call(model, 2, base, src, 3)
        assert counts(model) == (1, 1)
        torch.testing.assert_close(got, hand(model, 2, base, src, 3), rtol=1e-5, atol=1e-5)
        # a user hook upstream of the site changes what the layers compute
        bump = layers(model)[0].register_forward_hook(
            lambda m, a, o: ((o[0] if isinstance(o, tuple) else o) + 1.0,) + tuple(o[1:]) if isinstance(o, tuple) else o + 1.0)
        try:
            got = call(model, 2, base, src, 3)
            want = hand(model, 2, base, src, 3)
        finally:
            bump.remove()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # train mode: dropout may differ every call
        model.train()
        try:
            call(model, 2, base, src, 3)
        finally:
            model.eval()
    assert counts(model)[0] == 1


def test_layer_zero_token_zero_head_sites_and_reuse_base_off_run_in_full(model):
    base, src = ids(2, seq=6, seed=19), ids(2, seq=6, seed=20)
    with torch.no_grad():
        for _ in range(3):
            call(model, 0, base, src, 0)  # starts at layer 0, token 0: nothing to skip
            call(model, 2, base, src, 3, reuse_base=False)
            pvm = pv.IntervenableModel({"layer": 2, "component": "head_attention_value_output", "unit": "h.pos"},
                                       model=model)
            pvm(base, [src], {"sources->base": ([[[0]] * 2, [[3]] * 2], [[[0]] * 2, [[3]] * 2])})
    assert counts(model) == (0, 0)


def test_an_explicit_use_cache_runs_in_full(model):
    base, src = ids(2, seq=6, seed=21), ids(2, seq=6, seed=22)
    pvm = pv.IntervenableModel({"layer": 2, "component": "block_output"}, model=model)
    with torch.no_grad():
        for _ in range(3):
            _, out = pvm(base, [src], {"sources->base": 3}, use_cache=True)
    assert out.past_key_values is not None
    assert counts(model) == (0, 0)


def test_a_failing_resumed_call_leaves_no_hooks(model):
    base, src = ids(2, seq=6, seed=23), ids(2, seq=6, seed=24)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with torch.no_grad():
        call(model, 2, base, src, 3)
        call(model, 2, base, src, 3)
        pvm = pv.IntervenableModel({"layer": 2, "component": "block_output"}, model=model)
        next(iter(pvm.interventions.values())).forward = boom
        with pytest.raises(RuntimeError, match="boom"):
            pvm(base, [src], {"sources->base": 3})
    assert counts(model) == (1, 1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(call(model, 2, base, src, 3), hand(model, 2, base, src, 3), rtol=1e-5, atol=1e-5)
    assert counts(model) == (2, 1)


def test_a_model_without_an_output_head_is_never_resumed_and_does_not_warn():
    torch.manual_seed(0)
    m = gpt2(lm=False, n_layer=3).eval()
    base, src = ids(2, seq=6, seed=25), ids(2, seq=6, seed=26)
    with warnings.catch_warnings():
        warnings.simplefilter("error", resume.ResumeFallbackWarning)
        with torch.no_grad():
            for _ in range(3):
                pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=m)(base, [src], {"sources->base": 3})
    s = resume.stats(m)
    assert s["resumed"] == 0 and "causal language model" in s["reason"]


def test_a_model_that_fails_the_replay_check_warns_once_and_runs_in_full(model, monkeypatch):
    from vene.analysis.stepping import LayerStepper

    monkeypatch.setattr(LayerStepper, "check", lambda self, logits: (setattr(self, "reason", "test: not replayable"), False)[1])
    base, src = ids(2, seq=6, seed=27), ids(2, seq=6, seed=28)
    with torch.no_grad(), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = [call(model, 2, base, src, 3) for _ in range(4)]
    msgs = [str(x.message) for x in w if issubclass(x.category, resume.ResumeFallbackWarning)]
    assert len(msgs) == 1 and "test: not replayable" in msgs[0]
    assert resume.stats(model)["reason"] == "test: not replayable"
    with torch.no_grad():
        for g in got:
            torch.testing.assert_close(g, hand(model, 2, base, src, 3), rtol=1e-5, atol=1e-5)


def test_reuse_base_must_be_a_bool(model):
    with pytest.raises(pv.ConfigError, match="reuse_base"):
        pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=model, reuse_base="yes")


def test_layers_whose_forward_nnsight_wrapped_are_recorded_in_the_right_argument_slots():
    """nnsight replaces each module's ``forward`` by an object whose signature starts with
    ``self``; the layer stepper must still hand its key/value recorder to the cache parameter (it
    used to land in ``attention_mask``'s slot and crash GPT-2's attention). Base resumption stays
    off on such a model (the wrapped root forward does more than a replay)."""
    nnsight = pytest.importorskip("nnsight")
    torch.manual_seed(0)
    m = gpt2(lm=True, n_layer=3).eval()
    nnsight.NNsight(m)
    base, src = ids(2, seq=6, seed=31), ids(2, seq=6, seed=32)
    calls = [pv.Call({"layer": l, "component": "block_output"}, base, [src], {"sources->base": 4}) for l in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pv.run_calls(m, calls)
    assert res.modes == ["sweep:step+prefix"] * 3
    with torch.no_grad():
        for l in range(3):
            torch.testing.assert_close(res.logits[l], hand(m, l, base, src, 4)[:, -1], rtol=1e-5, atol=1e-5)
            call(m, l, base, src, 4)
    assert resume.stats(m)["resumed"] == 0


def test_a_hook_on_the_model_itself_is_never_skipped(model):
    """A user's hook on the model root (which a replay of the layers would not run) keeps the
    calls in full: its effect is in every result."""
    base, src = ids(2, seq=6, seed=33), ids(2, seq=6, seed=34)
    h = model.register_forward_hook(lambda m, a, o: o.__class__(**{**o, "logits": o.logits * 2}))
    try:
        with torch.no_grad():
            got = [call(model, 2, base, src, 3) for _ in range(3)]
            want = hand(model, 2, base, src, 3)
    finally:
        h.remove()
    assert counts(model) == (0, 0)
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


def test_a_base_too_big_for_the_budget_is_never_recorded(model, monkeypatch):
    """Recording a base that the budget would drop right away only adds a pass: it runs in full."""
    resume.set_budget(model, 1000)
    monkeypatch.setattr(resume._store(model), "budget", 1000)  # restored after the test
    base, src = ids(2, seq=6, seed=35), ids(2, seq=6, seed=36)
    with torch.no_grad():
        got = [call(model, 2, base, src, 3) for _ in range(3)]
    assert counts(model) == (0, 0)
    with torch.no_grad():
        torch.testing.assert_close(got[2], hand(model, 2, base, src, 3), rtol=1e-5, atol=1e-5)
