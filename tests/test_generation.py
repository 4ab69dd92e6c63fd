"""Interventions during generation (IntervenableModel.generate), checked against plain
``model.generate`` and hand-written hooks on tiny GPT-2 / Llama / GPT-Neo models."""
from __future__ import annotations

import warnings

import pytest
import torch

import tiny_models as tm
import vene as pv
from vene.errors import ConfigError, LocationError
from vene.generation import GenerateOutput

KW = dict(do_sample=False, pad_token_id=0)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    return tm.gpt2(lm=True) if request.param == "gpt2" else tm.llama()


def _mlp(model, layer):
    return model.transformer.h[layer].mlp if hasattr(model, "transformer") else model.model.layers[layer].mlp


def _steer(model, vec, layers=(0, 1)):
    return pv.IntervenableModel(
        [{"layer": l, "component": "mlp_output", "intervention_type": pv.AdditionIntervention} for l in layers],
        model,
    )


def _vec(model, scale=3.0):
    return model.get_input_embeddings().weight[5].detach() * scale


def _ragged(seed=3, lengths=(3, 6, 4)):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, tm.VOCAB, (n,), generator=g) for n in lengths]
    L = max(lengths)
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = p
        am[i, L - len(p):] = 1
    return prompts, {"input_ids": ids, "attention_mask": am}


class _HandSteer:
    """Hand-written reference: add ``vec`` at chosen (step, column) of a module's output during
    ``model.generate``; ``where(step, seq_len) -> list of columns``."""

    def __init__(self, model, modules, vec, where):
        self.model, self.modules, self.vec, self.where = model, modules, vec, where

    def generate(self, inputs, **kw):
        step = [-1]

        def count(mod, args, kwargs):
            step[0] += 1

        def add(t):
            cols = self.where(step[0], t.shape[1])
            if not cols:
                return None
            t = t.clone()
            t[:, cols] += self.vec
            return t

        handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            ctxs = [tm.hooked(m, add) for m in self.modules]
            for c in ctxs:
                c.__enter__()
            try:
                return self.model.generate(**inputs, **kw)
            finally:
                for c in reversed(ctxs):
                    c.__exit__(None, None, None)
        finally:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# no-op and pyvene defaults


def test_noop_intervention_equals_plain_generate(lm):
    x = tm.ids(2, 5)
    plain = lm.generate(**x, max_new_tokens=8, **KW)
    zero = torch.zeros(lm.config.hidden_size)
    for extra in ({}, {"intervene_on_prompt": True}, {"timesteps": "all", "unit_locations": {"base": -1}},
                  {"positions": "absolute", "unit_locations": {"base": [0, 4, 7]}}):
        _, out = _steer(lm, zero).generate(x, source_representations=zero, max_new_tokens=8, **KW, **extra)
        assert torch.equal(out, plain), extra
    # a lambda returning the base, on the whole tensor at every step (in-place write path)
    ident = pv.IntervenableModel([{"layer": l, "component": "block_output", "intervention": lambda b, s: b} for l in range(3)], lm)
    _, out = ident.generate(x, intervene_on_prompt=True, max_new_tokens=8, **KW)
    assert torch.equal(out, plain)


def test_default_steering_matches_hand_hooks(lm):
    """pyvene default: every decoding step, position 0 of the step input (= the newest token)."""
    x = tm.ids(1, 5)
    vec = _vec(lm)
    _, out = _steer(lm, vec).generate(x, source_representations=vec, max_new_tokens=8, **KW)
    hand = _HandSteer(lm, [_mlp(lm, 0), _mlp(lm, 1)], vec, lambda s, n: [0] if s >= 1 else [])
    ref = hand.generate(x, max_new_tokens=8, **KW)
    assert torch.equal(out, ref)
    assert not torch.equal(out, lm.generate(**x, max_new_tokens=8, **KW))  # it does steer


def test_pyvene_firing_table(gpt2_lm):
    """pyvene-behaviour.md §1.4.5: which passes fire, and the tensor each sees."""
    x = tm.ids(1, 5)
    pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention_type": pv.CollectIntervention}, gpt2_lm)
    gen = dict(max_new_tokens=4, **KW)
    (_, col), _ = pvm.generate(x, **gen)
    assert [tuple(c.shape) for c in col] == [(1, 1, 32)] * 3
    (_, col), _ = pvm.generate(x, intervene_on_prompt=True, **gen)
    assert [tuple(c.shape) for c in col] == [(1, 5, 32)] + [(1, 1, 32)] * 3
    (_, col), _ = pvm.generate(x, intervene_on_prompt=True, unit_locations={"base": 2}, **gen)
    assert len(col) == 1
    (_, col), _ = pvm.generate(x, unit_locations={"base": 0}, **gen)
    assert len(col) == 3


# ---------------------------------------------------------------------------------------------
# choosing steps and positions


@pytest.mark.parametrize("k", [1, 2, 4])
def test_step_k_changes_nothing_before_k(lm, k):
    x = tm.ids(2, 5, seed=7)
    vec = _vec(lm, 6.0)
    n_new = 8
    plain = lm.generate(**x, max_new_tokens=n_new, **KW)
    _, out = _steer(lm, vec).generate(x, source_representations=vec, timesteps=k, unit_locations={"base": -1},
                                      max_new_tokens=n_new, **KW)
    L = x["input_ids"].shape[1]
    assert torch.equal(out[:, : L + k], plain[:, : L + k])
    # the same as a hand-written hook acting only at step k, on the newest token
    hand = _HandSteer(lm, [_mlp(lm, 0), _mlp(lm, 1)], vec, lambda s, n: [n - 1] if s == k else [])
    assert torch.equal(out, hand.generate(x, max_new_tokens=n_new, **KW))
    assert not torch.equal(out, plain)


def test_timestep_forms(gpt2_lm):
    x = tm.ids(1, 4)
    pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention_type": pv.CollectIntervention}, gpt2_lm)
    gen = dict(max_new_tokens=6, **KW, return_dict=True)
    loc = {"base": -1}
    cases = {"prompt": [0], "generated": [1, 2, 3, 4, 5], "all": [0, 1, 2, 3, 4, 5], 3: [3], (1, 4): [1, 4],
             range(2, 4): [2, 3]}
    for ts, steps in cases.items():
        res = pvm.generate(x, unit_locations=loc, timesteps=ts, **gen)
        assert isinstance(res, GenerateOutput)
        assert res.collected_steps == steps, ts
        assert len(res.collected_activations) == len(steps)
    res = pvm.generate(x, unit_locations=loc, timesteps=lambda s: s % 2 == 0, **gen)
    assert res.collected_steps == [0, 2, 4]
    key = pvm.sorted_keys[0]
    res = pvm.generate(x, unit_locations=loc, timesteps={key: "prompt"}, **gen)
    assert res.collected_steps == [0] and res.collected_keys == [key]


def test_collected_values_are_each_steps_activation(lm):
    """Collect the newest token's MLP output at every step: step s holds sequence position
    L - 1 + s, which equals a plain forward pass over the generated sequence."""
    x = tm.ids(2, 5, seed=2)
    pvm = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention_type": pv.CollectIntervention}, lm)
    (_, col), out = pvm.generate(x, unit_locations={"base": -1}, timesteps="all", max_new_tokens=5, **KW)
    full = tm.capture(lm, _mlp(lm, 1), {"input_ids": out})
    L = x["input_ids"].shape[1]
    assert len(col) == 5
    for s, c in enumerate(col):
        assert c.shape == (2, 1, lm.config.hidden_size)
        torch.testing.assert_close(c[:, 0], full[:, L - 1 + s], rtol=1e-4, atol=1e-5)


def test_absolute_positions_and_kv_cache(lm):
    x = tm.ids(1, 5, seed=4)
    vec = _vec(lm, 6.0)
    pvm = _steer(lm, vec)
    gen = dict(max_new_tokens=8, **KW)
    # absolute position 7 is the 3rd generated token: read at step 3, as -1 at timesteps=3
    _, a = pvm.generate(x, source_representations=vec, positions="absolute", unit_locations={"base": 7}, **gen)
    _, b = pvm.generate(x, source_representations=vec, timesteps=3, unit_locations={"base": -1}, **gen)
    assert torch.equal(a, b)
    # cache-independent: without a KV cache position 7 is recomputed (and intervened) every step
    _, c = pvm.generate(x, source_representations=vec, positions="absolute", unit_locations={"base": 7},
                        use_cache=False, **gen)
    assert torch.equal(a, c)
    # a prompt position: same as the forward-pass intervention at that position, for token 1
    _, d = pvm.generate(x, source_representations=vec, positions="absolute", unit_locations={"base": 2}, **gen)
    _, fwd = pvm(x, source_representations=vec, unit_locations={"base": 2})
    assert int(d[0, 5]) == int(fwd.logits[0, -1].argmax())
    _, e = pvm.generate(x, source_representations=vec, positions="absolute", unit_locations={"base": 2},
                        use_cache=False, **gen)
    assert torch.equal(d, e)
    hand = _HandSteer(lm, [_mlp(lm, 0), _mlp(lm, 1)], vec, lambda s, n: [2] if s == 0 else [])
    assert torch.equal(d, hand.generate(x, **gen))


def test_batched_ragged_equals_one_by_one(lm):
    prompts, batch = _ragged()
    vec = _vec(lm, 3.0)
    pvm = _steer(lm, vec)
    gen = dict(max_new_tokens=6, **KW)
    L = batch["input_ids"].shape[1]
    cases = [{}, {"positions": "absolute", "unit_locations": {"base": [1, 5]}},
             {"unit_locations": {"base": -1}, "timesteps": {0, 3}}]
    for extra in cases:
        _, gb = pvm.generate(batch, source_representations=vec, **gen, **extra)
        for i, p in enumerate(prompts):
            one = {"input_ids": p[None], "attention_mask": torch.ones(1, len(p), dtype=torch.long)}
            _, gi = pvm.generate(one, source_representations=vec, **gen, **extra)
            assert torch.equal(gb[i, L:], gi[0, len(p):]), (extra, i)
        plain = lm.generate(**batch, **gen)
        assert not torch.equal(gb, plain)


def test_collect_absolute_ragged_layout(gpt2_lm):
    """Absolute positions: each step keeps the units it computes (a list when examples differ)."""
    prompts, batch = _ragged(lengths=(3, 5))
    pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention_type": pv.CollectIntervention}, gpt2_lm)
    res = pvm.generate(batch, positions="absolute", unit_locations={"base": [1, 4]}, max_new_tokens=4,
                       return_dict=True, **KW)
    # step 0: example 0 has position 1 only (length 3), example 1 both -> per-example list
    assert res.collected_steps == [0, 2]
    first = res.collected_activations[0]
    assert isinstance(first, list) and [t.shape[0] for t in first] == [1, 2]
    # step 2 reads sequence position 4 of example 0 (its 2nd generated token)
    second = res.collected_activations[1]
    assert isinstance(second, list) and [t.shape[0] for t in second] == [1, 0]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1)
    full = tm.capture(gpt2_lm, gpt2_lm.transformer.h[0].mlp, {"input_ids": res.intervened_outputs,
                      "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)})
    torch.testing.assert_close(first[0][0], full[0, 2 + 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first[1][0], full[1, 0 + 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first[1][1], full[1, 0 + 4], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second[0][0], full[0, 2 + 4], rtol=1e-4, atol=1e-5)


def test_sources_during_generation(lm):
    """Interchange the source's last token into every step's newest token, checked against the
    same vector given as source_representations."""
    x = tm.ids(1, 5, seed=5)
    src = tm.ids(1, 7, seed=6)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, lm)
    _, out = pvm.generate(x, [src], unit_locations={"sources->base": (-1, -1)}, timesteps="all",
                          max_new_tokens=6, **KW)
    block = lm.transformer.h[1] if hasattr(lm, "transformer") else lm.model.layers[1]
    act = tm.capture(lm, block, src)[0, -1]
    _, ref = pvm.generate(x, source_representations=act, unit_locations={"base": -1}, timesteps="all",
                          max_new_tokens=6, **KW)
    assert torch.equal(out, ref)
    assert not torch.equal(out, lm.generate(**x, max_new_tokens=6, **KW))


# ---------------------------------------------------------------------------------------------
# errors, warnings, hygiene


def test_errors_and_warnings(gpt2_lm):
    x = tm.ids(1, 4)
    vec = _vec(gpt2_lm)
    pvm = _steer(gpt2_lm, vec)
    with pytest.raises(LocationError, match="newest token"):
        pvm.generate(x, source_representations=vec, unit_locations={"base": 3}, max_new_tokens=3, **KW)
    with pytest.raises(LocationError, match="timesteps"):
        pvm.generate(x, source_representations=vec, timesteps="sometimes", max_new_tokens=3, **KW)
    with pytest.raises(LocationError, match="positions"):
        pvm.generate(x, source_representations=vec, positions="relative", max_new_tokens=3, **KW)
    with pytest.raises(LocationError, match="left"):
        pvm.generate({"input_ids": x["input_ids"], "attention_mask": torch.tensor([[1, 1, 1, 0]])},
                     source_representations=vec, positions="absolute", unit_locations={"base": 1}, max_new_tokens=3, **KW)
    with pytest.warns(UserWarning, match="never acted"):
        pvm.generate(x, source_representations=vec, timesteps=9, unit_locations={"base": -1}, max_new_tokens=3, **KW)
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=8, vocab_size=10))
    with pytest.raises(ConfigError, match="generate"):
        pv.IntervenableModel({"component": "cell_output", "unit": "t"}, gru).generate({"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_hooks_removed_and_foreign_hooks_kept(gpt2_lm):
    x = tm.ids(1, 4)
    vec = _vec(gpt2_lm)
    pvm = _steer(gpt2_lm, vec)
    seen = []
    foreign = gpt2_lm.transformer.h[0].mlp.register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        before = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in gpt2_lm.named_modules()}
        pvm.generate(x, source_representations=vec, max_new_tokens=3, **KW)
        with pytest.raises(LocationError):
            pvm.generate(x, source_representations=vec, unit_locations={"base": 3}, max_new_tokens=3, **KW)
        after = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in gpt2_lm.named_modules()}
        assert before == after
        assert seen  # the foreign hook still fires
    finally:
        foreign.remove()


def test_tutorial_generation_snippet(gpt_neo):
    """pyvene_101 'LMs Generation' on a tiny GPT-Neo (create_gpt_neo needs the Hub)."""
    tinystory = gpt_neo
    emb_happy = tinystory.transformer.wte(torch.tensor(14 % tm.VOCAB))
    pv_tinystory = pv.IntervenableModel([{
        "layer": l,
        "component": "mlp_output",
        "intervention_type": pv.AdditionIntervention,
    } for l in range(tinystory.config.num_layers)], model=tinystory)
    prompt = {"input_ids": torch.tensor([[3, 9, 4, 22, 7]])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, intervened_story = pv_tinystory.generate(prompt, source_representations=emb_happy * 0.3, max_length=16,
                                                    pad_token_id=0)
    assert intervened_story.shape == (1, 16)
    assert torch.equal(intervened_story[0, :5], prompt["input_ids"][0])


def test_head_position_units_follow_the_newest_token(gpt2_lm):
    """'h.pos': heads stay fixed, -1 follows the newest token; absolute positions work too."""
    x = tm.ids(1, 5, seed=8)
    pvm = pv.IntervenableModel({"layer": 1, "component": "head_attention_value_output", "unit": "h.pos",
                                "intervention_type": pv.CollectIntervention}, gpt2_lm)
    res = pvm.generate(x, unit_locations={"base": [[[[0, 2]], [[-1]]]]}, timesteps="all", max_new_tokens=4,
                       return_dict=True, **KW)
    full = tm.capture(gpt2_lm, gpt2_lm.transformer.h[1].attn.c_proj, {"input_ids": res.intervened_outputs}, pre=True)
    heads = full.view(1, full.shape[1], 4, 8)  # (b, s, H, dh)
    assert res.collected_steps == [0, 1, 2, 3]
    for s, c in enumerate(res.collected_activations):
        assert c.shape == (1, 2, 1, 8)
        torch.testing.assert_close(c[0, :, 0], heads[0, 4 + s, [0, 2]], rtol=1e-4, atol=1e-5)
    res = pvm.generate(x, unit_locations={"base": [[[[1]], [[1, 6]]]]}, positions="absolute", max_new_tokens=4,
                       return_dict=True, **KW)
    assert res.collected_steps == [0, 2]
    torch.testing.assert_close(res.collected_activations[0][0, 0, 0], heads[0, 1, 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.collected_activations[1][0, 0, 0], heads[0, 6, 1], rtol=1e-4, atol=1e-5)
