"""Source reuse across calls (vene.reuse): hits give the same results as running the source, and
every way a recording can go stale runs the source again."""
from __future__ import annotations

import pytest
import torch
from tiny_models import capture, gpt2, hooked, ids

import vene as pv
from vene import reuse


@pytest.fixture
def model():
    m = gpt2(lm=True, n_layer=3)
    yield m
    reuse.clear(m)


class PassCounter:
    """Counts forward passes by wrapping the embedding's forward (no hook: hooks are part of the
    model state that reuse checks)."""

    def __init__(self, model, monkeypatch):
        self.n = 0
        emb = model.transformer.wte
        orig = emb.forward

        def counted(*a, **k):
            self.n += 1
            return orig(*a, **k)

        monkeypatch.setattr(emb, "forward", counted)


def hand_interchange(model, layer, base, src, pos):
    mod = model.transformer.h[layer]
    s = capture(model, mod, src)

    def patch(t):
        t = t.clone()
        t[:, pos] = s[:, pos]
        return t

    with hooked(mod, patch):
        return model(**base).logits


def call(model, layer, base, src, pos=2, **kw):
    kw.setdefault("reuse_base", False)  # these tests count source passes; base resumption: test_resume.py
    pvm = pv.IntervenableModel({"layer": layer, "component": "block_output"}, model=model, batch_sources=False, **kw)
    return pvm(base, [src], {"sources->base": pos})[1].logits


def test_loop_over_layers_runs_the_source_twice_and_matches_hand_hooks(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    counter = PassCounter(model, monkeypatch)
    with torch.no_grad():
        got = [call(model, l, base, src) for l in range(3)]
    # 3 base passes + the source twice: early-stopped in call 0, recording every layer in call 1
    assert counter.n == 5
    assert reuse.store_for(model).hits == 1
    with torch.no_grad():
        for l in range(3):
            torch.testing.assert_close(got[l], hand_interchange(model, l, base, src, 2), rtol=0, atol=1e-6)


def test_hit_with_other_positions_reads_the_whole_recorded_tensor(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 1, base, src, pos=0)
        counter = PassCounter(model, monkeypatch)
        got = call(model, 1, base, src, pos=4)
        assert counter.n == 1  # base pass only
        torch.testing.assert_close(got, hand_interchange(model, 1, base, src, 4), rtol=0, atol=1e-6)


def test_fused_first_call_then_reuse(model, monkeypatch):
    """b=1 calls fuse; the first one remembers the source, the next records, then hits."""
    base, src = ids(1, seed=1), ids(1, seed=2)
    counter = PassCounter(model, monkeypatch)
    with torch.no_grad():
        outs = []
        for l in range(3):
            pvm = pv.IntervenableModel({"layer": l, "component": "block_output"}, model=model, reuse_base=False)
            outs.append(pvm(base, [src], {"sources->base": 2})[1].logits)
        assert counter.n == 1 + 2 + 1  # fused; source (wide) + base; base
        for l in range(3):
            torch.testing.assert_close(outs[l], hand_interchange(model, l, base, src, 2), rtol=0, atol=1e-6)


def test_content_equal_new_tensor_is_a_hit(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 1, base, src)
        counter = PassCounter(model, monkeypatch)
        call(model, 1, base, {"input_ids": src["input_ids"].clone()})
    assert counter.n == 1


def test_in_place_edit_of_the_source_runs_it_again(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 1, base, src)
        src["input_ids"][:, 1] = (src["input_ids"][:, 1] + 1) % 64
        counter = PassCounter(model, monkeypatch)
        got = call(model, 1, base, src, pos=3)
        assert counter.n == 2
        torch.testing.assert_close(got, hand_interchange(model, 1, base, src, 3), rtol=0, atol=1e-6)


def test_a_new_tensor_with_other_contents_is_never_a_hit(model):
    """Even if Python reuses the freed tensor's id()."""
    base = ids(2, seed=1)
    with torch.no_grad():
        for seed in (2, 3, 4, 5):
            src = ids(2, seed=seed)
            got = call(model, 1, base, src, pos=3)
            torch.testing.assert_close(got, hand_interchange(model, 1, base, src, 3), rtol=0, atol=1e-6)
            del src


def test_weights_changed_in_place_run_the_source_again(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 2, base, src)
        model.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
        counter = PassCounter(model, monkeypatch)
        got = call(model, 2, base, src)
        assert counter.n == 2
        torch.testing.assert_close(got, hand_interchange(model, 2, base, src, 2), rtol=0, atol=1e-6)


def test_weights_replaced_or_loaded_run_the_source_again(model):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 2, base, src)
        w = model.transformer.h[1].attn.c_attn.weight
        w.data = w.data * 0.5
        torch.testing.assert_close(call(model, 2, base, src), hand_interchange(model, 2, base, src, 2), rtol=0, atol=1e-6)
        sd = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(sd)
        torch.testing.assert_close(call(model, 2, base, src), hand_interchange(model, 2, base, src, 2), rtol=0, atol=1e-6)


def test_an_optimizer_step_on_the_model_runs_the_source_again(model):
    base, src = ids(2, seed=1), ids(2, seed=2)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=model, batch_sources=False)
    with torch.no_grad():
        pvm(base, [src], {"sources->base": 2})
    opt = torch.optim.SGD([model.transformer.h[0].mlp.c_proj.weight], lr=10.0)
    model.transformer.h[0].mlp.c_proj.weight.requires_grad_(True)
    model(**base).logits.sum().backward()
    opt.step()
    model.transformer.h[0].mlp.c_proj.weight.requires_grad_(False)
    with torch.no_grad():
        got = pvm(base, [src], {"sources->base": 2})[1].logits
        torch.testing.assert_close(got, hand_interchange(model, 1, base, src, 2), rtol=0, atol=1e-6)


def test_training_mode_never_reuses(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 1, base, src)
        model.train()  # (wrapping freezes the model: keep the mode with freeze_model=False)
        counter = PassCounter(model, monkeypatch)
        call(model, 1, base, src, freeze_model=False)
        call(model, 1, base, src, freeze_model=False)
        assert counter.n == 4  # dropout may differ every call: the source runs every call
        model.eval()
        model.transformer.h[2].train()  # one submodule in training mode is enough
        call(model, 1, base, src, freeze_model=False)
        assert counter.n == 6


def test_a_user_hook_upstream_of_the_getter_runs_the_source_again(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        call(model, 2, base, src)
        with hooked(model.transformer.h[0], lambda t: t * 2):
            counter = PassCounter(model, monkeypatch)
            got = call(model, 2, base, src)
            assert counter.n == 2
            want = hand_interchange(model, 2, base, src, 2)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_different_interventions_upstream_in_serial_mode_are_not_reused(model):
    """Serial hops write into sources: a source pass there depends on the interventions."""
    base, s0, s1 = ids(1, seed=1), ids(1, seed=2), ids(1, seed=3)
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "group_key": 0},
                                 {"layer": 2, "component": "block_output", "group_key": 1}], mode="serial")

    def run(pos0, reuse_sources):
        pvm = pv.IntervenableModel(cfg, model=model, reuse_sources=reuse_sources)
        return pvm(base, [s0, s1], {"source_0->source_1": pos0, "source_1->base": 2})[1].logits

    with torch.no_grad():
        for pos0 in (1, 2, 3):
            torch.testing.assert_close(run(pos0, True), run(pos0, False), rtol=0, atol=0)


def test_reuse_off_and_zero_budget_always_run_the_source(model, monkeypatch):
    base, src = ids(2, seed=1), ids(2, seed=2)
    counter = PassCounter(model, monkeypatch)
    with torch.no_grad():
        for _ in range(3):
            call(model, 1, base, src, reuse_sources=False)
        assert counter.n == 6
        reuse.set_budget(model, 0)
        for _ in range(2):
            call(model, 1, base, src)
        assert counter.n == 10


def test_budget_drops_what_does_not_fit(model):
    base = ids(2, seed=1)
    store = reuse.store_for(model)
    with torch.no_grad():
        call(model, 1, base, ids(2, seed=2))
        one = store.entries[-1].nbytes
        reuse.set_budget(model, int(one * 2.5))
        for seed in range(3, 8):
            call(model, 1, base, ids(2, seed=seed))
    assert sum(e.nbytes for e in store.entries) <= store.budget
    assert 1 <= len(store.entries) <= 2


def test_grad_through_a_trained_model_is_not_reused(model):
    """With model gradients on, source passes record a graph each call: never served from a record."""
    base, src = ids(2, seed=1), ids(2, seed=2)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=model, batch_sources=False)
    pvm.enable_model_gradients()
    pvm.eval()
    pvm(base, [src], {"sources->base": 2})
    out = pvm(base, [src], {"sources->base": 2})[1].logits
    out.sum().backward()
    assert model.transformer.h[0].mlp.c_fc.weight.grad is not None
    assert reuse.store_for(model).hits == 0


def test_loop_over_an_input_site(model):
    """A hit serves a getter whose site is an input site too (block_input)."""
    base, src = ids(2, seed=1), ids(2, seed=2)
    with torch.no_grad():
        for l in range(3):
            pvm = pv.IntervenableModel({"layer": l, "component": "block_input"}, model=model, batch_sources=False)
            got = pvm(base, [src], {"sources->base": 1})[1].logits
            mod = model.transformer.h[l]
            s = capture(model, mod, src, pre=True)

            def patch(t, s=s):
                t = t.clone()
                t[:, 1] = s[:, 1]
                return t

            with hooked(mod, patch, pre=True):
                want = model(**base).logits
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_wide_recording_stays_within_the_budget(model, monkeypatch):
    """With room for one more site only, the wide pass records the requested site and no sibling."""
    base, src = ids(2, seed=1), ids(2, seed=2)
    per_site = 2 * 6 * 32 * 4  # batch x tokens x n_embd x float32
    store = reuse.store_for(model)
    with torch.no_grad():
        call(model, 0, base, src)  # records layer 0 (early stopped)
        reuse.set_budget(model, store.entries[-1].nbytes + per_site + 8)
        counter = PassCounter(model, monkeypatch)
        call(model, 1, base, src)  # seen at another site: a wide pass, with room for its own site only
        assert counter.n == 2
        assert sorted(p for p, _ in store.entries[-1].sites) == ["transformer.h.0", "transformer.h.1"]
        assert sum(e.nbytes for e in store.entries) <= store.budget
        for l in range(3):
            torch.testing.assert_close(call(model, l, base, src), hand_interchange(model, l, base, src, 2), rtol=0, atol=1e-6)
        assert sum(e.nbytes for e in store.entries) <= store.budget


def test_generate_reuses_a_source_seen_before(model, monkeypatch):
    """A source run by an earlier call (forward or generate) is not run again by ``generate``, and
    the generated tokens are those of the call that runs it."""
    base, src = ids(1, seq=3, seed=1), ids(1, seq=5, seed=2)
    seen: list[int] = []
    emb = model.transformer.wte
    orig = emb.forward

    def counted(x, *a, **k):
        seen.append(x.shape[-1])
        return orig(x, *a, **k)

    monkeypatch.setattr(emb, "forward", counted)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    outs = {}
    for rs in (False, True, True, True):
        pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=model, reuse_sources=rs)
        seen.clear()
        with torch.no_grad():
            outs.setdefault(rs, []).append(pvm.generate(base, sources=[src], unit_locations={"sources->base": (4, 2)}, timesteps="prompt", **kw)[1])
        outs[rs][-1] = (outs[rs][-1], seen.count(5))
    assert outs[False][0][1] == 1
    assert [n for _, n in outs[True]] == [1, 0, 0]  # run (and recorded) once, then reused
    for g, _ in outs[True]:
        assert torch.equal(g, outs[False][0][0])
