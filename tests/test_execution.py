"""Execution semantics: interchange, per-example locations and subspaces, modes, groups, links,
skipping, return structures, fused vs separate passes, hook hygiene."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv


def hs(out):
    return out.last_hidden_state


def patched_run(model, module, base, fn, pre=False):
    with torch.no_grad(), tm.hooked(module, fn, pre=pre):
        return model(**base)


def test_per_example_locations_and_subspaces_are_honoured(gpt2):
    """pyvene's sticky fast path and merged subspaces are bugs (behaviour notes §8.1 #1, #2)."""
    base, src = tm.ids(3, 6, 1), tm.ids(3, 6, 2)
    mod = gpt2.h[1]
    s = tm.capture(gpt2, mod, src)
    src_pos, base_pos = [[1], [2], [4]], [[3], [0], [5]]
    subs = [[0, 1], [5, 6], [10, 11]]
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)
    with torch.no_grad():
        pvm(base, [src], {"sources->base": 2})  # a shorthand call first: nothing may stick
        _, out = pvm(base, [src], {"sources->base": ([src_pos], [base_pos])}, subspaces=[subs])

    def fn(t):
        t = t.clone()
        for i in range(3):
            t[i, base_pos[i][0], subs[i]] = s[i, src_pos[i][0], subs[i]]
        return t

    ref = patched_run(gpt2, mod, base, fn)
    torch.testing.assert_close(hs(out), hs(ref))


def test_ragged_subspaces_per_example(gpt2):
    base = tm.ids(2, 6, 1)
    subs = [[0], [3, 4, 5]]
    pvm = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention_type": pv.ZeroIntervention}, model=gpt2)
    with torch.no_grad():
        _, out = pvm(base, unit_locations={"base": 2}, subspaces=[subs])

    def fn(t):
        t = t.clone()
        t[0, 2, [0]] = 0
        t[1, 2, [3, 4, 5]] = 0
        return t

    torch.testing.assert_close(hs(out), hs(patched_run(gpt2, gpt2.h[0].mlp, base, fn)))


@pytest.mark.parametrize("batch_sources", [True, False])
def test_fused_and_separate_agree(gpt2, batch_sources):
    base, s1, s2 = tm.ids(2, 6, 1), tm.ids(2, 6, 2), tm.ids(2, 6, 3)
    cfg = [{"layer": 0, "component": "block_output"}, {"layer": 2, "component": "mlp_output"}]
    pvm = pv.IntervenableModel(cfg, model=gpt2, batch_sources=batch_sources)
    with torch.no_grad():
        orig, out = pvm(base, [s1, s2], {"sources->base": ([[[1], [2]], [[3], [4]]], [[[0], [5]], [[3], [1]]])},
                        output_original_output=True)
        a = tm.capture(gpt2, gpt2.h[0], s1)
        b = tm.capture(gpt2, gpt2.h[2].mlp, s2)

        def f0(t):
            t = t.clone(); t[0, 0] = a[0, 1]; t[1, 5] = a[1, 2]; return t

        def f2(t):
            t = t.clone(); t[0, 3] = b[0, 3]; t[1, 1] = b[1, 4]; return t

        with tm.hooked(gpt2.h[0], f0), tm.hooked(gpt2.h[2].mlp, f2):
            ref = gpt2(**base)
        plain = gpt2(**base)
    torch.testing.assert_close(hs(out), hs(ref), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hs(orig), hs(plain), atol=1e-5, rtol=1e-4)


def count_forwards(model):
    calls = []
    h = model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    return calls, h


def test_auto_fusion_follows_the_batch_budget(gpt2):
    """Small batches fuse (one pass); past the budget, separate early-stopped passes are used."""
    from vene.model import FUSE_BUDGET

    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)
    calls, h = count_forwards(gpt2)
    try:
        for batch, expected in ((1, 1), (FUSE_BUDGET // (2 * 6 * 32) + 1, 2)):
            calls.clear()
            with torch.no_grad():
                pvm(tm.ids(batch, 6, 1), [tm.ids(batch, 6, 2)], {"sources->base": 3})
            assert len(calls) == expected, batch
    finally:
        h.remove()
    with pytest.raises(pv.ConfigError, match="batch_sources"):
        pv.IntervenableModel({"layer": 1}, model=gpt2, batch_sources="yes")


def test_one_forward_pass_per_interchange(gpt2):
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)
    calls, h = count_forwards(gpt2)
    try:
        with torch.no_grad():
            pvm(base, [src], {"sources->base": 3})
        assert len(calls) == 1
        # different lengths cannot share a batch: source pass + base pass, the source pass stopping
        # after layer 1 (layer 2 never runs for it)
        layer2 = []
        h2 = gpt2.h[2].register_forward_pre_hook(lambda m, a: layer2.append(1))
        calls.clear()
        with torch.no_grad():
            pvm(base, [tm.ids(1, 7, 2)], {"sources->base": 3})
        h2.remove()
        assert len(calls) == 2 and len(layer2) == 1
    finally:
        h.remove()


def test_serial_chain(gpt2):
    base, s0, s1 = tm.ids(1, 6, 1), tm.ids(1, 6, 2), tm.ids(1, 6, 3)
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output"},
                                 {"layer": 2, "component": "block_output"}], mode="serial")
    for bs in (True, False):
        pvm = pv.IntervenableModel(cfg, model=gpt2, batch_sources=bs)
        with torch.no_grad():
            _, out = pvm(base, [s0, s1], {"source_0->source_1": 1, "source_1->base": 4})
            a = tm.capture(gpt2, gpt2.h[0], s0)

            def f0(t):
                t = t.clone(); t[:, 1] = a[:, 1]; return t

            with tm.hooked(gpt2.h[0], f0):
                b = tm.capture(gpt2, gpt2.h[2], s1)  # source 1, itself intervened

            def f2(t):
                t = t.clone(); t[:, 4] = b[:, 4]; return t

            ref = patched_run(gpt2, gpt2.h[2], base, f2)
        torch.testing.assert_close(hs(out), hs(ref), atol=1e-5, rtol=1e-4)


def test_serial_multi_key_groups(gpt2):
    """pyvene crashes here (only the last getter of a group is removed)."""
    base, s0, s1 = tm.ids(1, 6, 1), tm.ids(1, 6, 2), tm.ids(1, 6, 3)
    cfg = pv.IntervenableConfig([
        {"layer": 0, "component": "block_output", "group_key": 0},
        {"layer": 1, "component": "block_output", "group_key": 0},
        {"layer": 2, "component": "block_output", "group_key": 1}], mode="serial")
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        _, out = pvm(base, [s0, s1], {"source_0->source_1": ([[[1]], [[2]]], [[[1]], [[2]]]), "source_1->base": 4})
    assert out.last_hidden_state.shape == (1, 6, 32)


def test_groups_share_one_source_and_skipping(gpt2):
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "group_key": 0},
                                 {"layer": 2, "component": "block_output", "group_key": 0}])
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        _, out = pvm(base, [src], {"sources->base": ([[[3]], [[4]]], [[[3]], [[4]]])})
        a, b = tm.capture(gpt2, gpt2.h[0], src), tm.capture(gpt2, gpt2.h[2], src)

        def f0(t):
            t = t.clone(); t[:, 3] = a[:, 3]; return t

        def f2(t):
            t = t.clone(); t[:, 4] = b[:, 4]; return t

        with tm.hooked(gpt2.h[0], f0), tm.hooked(gpt2.h[2], f2):
            ref = gpt2(**base)
    torch.testing.assert_close(hs(out), hs(ref), atol=1e-5, rtol=1e-4)


def test_skipping_and_linking_tutorial(gpt2):
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output"}] * 3)
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        _, o1 = pvm(base, [None, None, src], {"sources->base": ([None, None, [[4]]], [None, None, [[4]]])})
        _, o3 = pvm(base, [src, None, None], {"sources->base": ([[[4]], None, None], [[[4]], None, None])})
        plain = gpt2(**base)
    assert torch.equal(hs(o1), hs(o3))
    assert not torch.allclose(hs(o1), hs(plain))
    part = [[0, 8], [8, 16]]
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output", "subspace_partition": part,
                                  "intervention_link_key": 0}] * 2)
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    k0, k1 = pvm.sorted_keys
    assert pvm.interventions[k0] is pvm.interventions[k1]
    s2 = tm.ids(1, 6, 3)
    with torch.no_grad():
        _, out = pvm(base, [src, s2], {"sources->base": 4}, subspaces=[[[0]], [[1]]])
        a, b = tm.capture(gpt2, gpt2.h[0], src), tm.capture(gpt2, gpt2.h[0], s2)

        def f(t):
            t = t.clone(); t[:, 4, 0:8] = a[:, 4, 0:8]; t[:, 4, 8:16] = b[:, 4, 8:16]; return t

        ref = patched_run(gpt2, gpt2.h[0], base, f)
    torch.testing.assert_close(hs(out), hs(ref), atol=1e-5, rtol=1e-4)


def test_static_intervention_math(gpt2):
    base = tm.ids(2, 6, 1)
    vec = torch.randn(32)
    mod = gpt2.h[1].mlp
    cases = {
        pv.AdditionIntervention: lambda t, p: t[:, p] + vec,
        pv.SubtractionIntervention: lambda t, p: t[:, p] - vec,
        pv.VanillaIntervention: lambda t, p: vec.expand_as(t[:, p]),
    }
    for cls, formula in cases.items():
        pvm = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention_type": cls}, model=gpt2)
        with torch.no_grad():
            _, out = pvm(base, unit_locations={"base": [1, 3]}, source_representations=vec)

        def fn(t):
            t = t.clone(); t[:, [1, 3]] = formula(t, [1, 3]); return t

        torch.testing.assert_close(hs(out), hs(patched_run(gpt2, mod, base, fn)), msg=cls.__name__)


def test_noise_intervention_is_configurable(gpt2):
    base = tm.ids(1, 8, 1)
    emb_std = float(gpt2.wte.weight.std())
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_input", "intervention_type": pv.NoiseIntervention}, model=gpt2)
    iv = pvm.interventions[pvm.sorted_keys[0]]
    assert iv.level == pytest.approx(3 * emb_std, rel=1e-5)
    with torch.no_grad():
        (_, a), (_, b) = pvm(base, unit_locations={"base": [1, 2, 3]}), pvm(base, unit_locations={"base": [1, 2, 3]})
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)  # seeded: same noise every call
    noise = iv.noise_like(torch.zeros(1, 3, 32))
    assert noise.std() == pytest.approx(3 * emb_std, rel=0.3)

    def fn(t):
        t = t.clone(); t[:, [1, 2, 3]] += noise; return t

    torch.testing.assert_close(hs(a), hs(patched_run(gpt2, gpt2.h[0], base, fn, pre=True)))
    iv2 = pv.NoiseIntervention(noise_level=0.5, seed=3)
    assert iv2.level == 0.5


def test_function_interventions(gpt2):
    base = tm.ids(1, 6, 1)

    def zero3(b, s):
        b[:, 3] = 0.0
        return b

    pvm = pv.IntervenableModel({"component": "h[0].mlp.output", "intervention": zero3}, model=gpt2)
    with torch.no_grad():
        orig, out = pvm(base, output_original_output=True)

    def fn(t):
        t = t.clone(); t[:, 3] = 0; return t

    torch.testing.assert_close(hs(out), hs(patched_run(gpt2, gpt2.h[0].mlp, base, fn)))
    torch.testing.assert_close(hs(orig), hs(gpt2(**base)))
    seen = {}

    def with_subspaces(b, s, subspaces):
        seen["s"] = subspaces
        return b

    pvm = pv.IntervenableModel({"component": "h[0].mlp.output", "intervention": with_subspaces}, model=gpt2)
    with torch.no_grad():
        pvm(base, unit_locations={"base": 2}, subspaces=[{"mag": 2.0}])
    assert seen["s"] == {"mag": 2.0}


def test_return_structures(gpt2):
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    cfg = pv.IntervenableConfig({"layer": 1, "component": "block_output"})
    cfg.add_intervention({"layer": 2, "component": "block_output", "intervention_type": pv.CollectIntervention})
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        (orig, collected), out = pvm(base, [src, None], {"sources->base": 3})
        res = pvm(base, [src, None], {"sources->base": 3}, return_dict=True, output_original_output=True)
    assert orig is None and isinstance(collected, list) and collected[0].shape == (1, 1, 32)
    assert isinstance(res, pv.IntervenableModelOutput)
    torch.testing.assert_close(res.collected_activations[0], collected[0])
    torch.testing.assert_close(res.intervened_outputs.last_hidden_state, out.last_hidden_state)
    assert res.original_outputs is not None


def test_collect_downstream_of_intervention_sees_it(gpt2):
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    cfg = pv.IntervenableConfig([
        {"layer": 1, "component": "block_output"},
        {"layer": 1, "component": "block_output", "intervention_type": pv.CollectIntervention}])
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    with torch.no_grad():
        (_, collected), _ = pvm(base, [src, None], {"sources->base": 3})
        s = tm.capture(gpt2, gpt2.h[1], src)
    torch.testing.assert_close(collected[0][0, 0], s[0, 3])


def test_skip_intervention_replaces_output_by_input(gpt2):
    base = tm.ids(1, 6, 1)
    pvm = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention_type": pv.SkipIntervention}, model=gpt2)
    with torch.no_grad():
        _, out = pvm(base, [base], {"sources->base": 2})
        inp = tm.capture(gpt2, gpt2.h[1].mlp, base, pre=True)

        def fn(t):
            t = t.clone(); t[:, 2] = inp[:, 2]; return t

    torch.testing.assert_close(hs(out), hs(patched_run(gpt2, gpt2.h[1].mlp, base, fn)))


def test_custom_intervention_class(gpt2):
    class MultiplierIntervention(pv.ConstantSourceIntervention):
        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, base, source=None, subspaces=None):
            return base * 99.0

    base = tm.ids(1, 6, 1)
    pvm = pv.IntervenableModel({"intervention_type": MultiplierIntervention}, model=gpt2)
    with torch.no_grad():
        _, out = pvm(base, unit_locations={"base": 3})

    def fn(t):
        t = t.clone(); t[:, 3] *= 99.0; return t

    torch.testing.assert_close(hs(out), hs(patched_run(gpt2, gpt2.h[0], base, fn)))


def test_intervention_additional_kwargs(gpt2):
    seen = {}

    class Scaled(pv.ConstantSourceIntervention):
        def forward(self, base, source=None, subspaces=None, **kwargs):
            seen.update(kwargs)
            return base * kwargs.get("scale", 1.0)

    pvm = pv.IntervenableModel({"intervention": Scaled()}, model=gpt2)
    with torch.no_grad():
        pvm(tm.ids(1, 6, 1), unit_locations={"base": 1}, intervention_additional_kwargs={"scale": 2.0})
    assert seen["scale"] == 2.0 and "args" in seen


def test_keep_last_dim_and_flattening(gpt2):
    seen = {}

    class Probe(pv.TrainableIntervention):
        def forward(self, base, source=None, subspaces=None):
            seen["shape"] = tuple(base.shape)
            return base

    pvm = pv.IntervenableModel({"layer": 0, "component": "block_output", "max_number_of_units": 2,
                                "intervention_type": Probe}, model=gpt2)
    b = tm.ids(2, 6, 1)
    with torch.no_grad():
        pvm(b, [b], unit_locations={"base": [1, 2]})
    assert seen["shape"] == (2, 64)
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": Probe(keep_last_dim=True)}, model=gpt2)
    with torch.no_grad():
        pvm(b, [b], unit_locations={"base": [1, 2]})
    assert seen["shape"] == (2, 2, 32)


def test_gradients_flow_into_base_selection(gpt2):
    """With grad enabled the write is out of place and differentiable."""
    base = tm.ids(1, 6, 1)
    vec = torch.zeros(32, requires_grad=True)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention}, model=gpt2)
    _, out = pvm(base, unit_locations={"base": 2}, source_representations=vec)
    (out.last_hidden_state[:, -1] * torch.randn(32)).sum().backward()  # LayerNorm output sums to a constant
    assert vec.grad is not None and vec.grad.abs().sum() > 0


def test_module_usable_inside_other_modules(gpt2):
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pv = pvm
            self.fc = torch.nn.Linear(32, 1)

        def forward(self, base, sources, unit_locations):
            _, out = self.pv(base, sources, unit_locations)
            return self.fc(out.last_hidden_state)

    head = Head()
    y = head(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": 3})
    assert y.shape == (1, 6, 1)
    assert any(p is head.fc.weight for p in head.parameters())


def test_collect_keeps_values_before_a_later_write_at_the_same_site(gpt2):
    base = tm.ids(1, 6, 1)
    cfg = pv.IntervenableConfig([
        {"layer": 1, "component": "block_output", "intervention_type": pv.CollectIntervention},
        {"layer": 1, "component": "block_output", "intervention_type": pv.ZeroIntervention}])
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    expected = tm.capture(gpt2, gpt2.h[1], base)[:, 2:4]
    for locs in ({"base": [2, 3]}, {"base": [[[2, 3]], [[2, 3]]]}):
        with torch.no_grad():
            (_, collected), _ = pvm(base, unit_locations=locs)
        torch.testing.assert_close(collected[0], expected)


def test_repeated_locations_reuse_index_tensors_but_never_stale_ones(gpt2):
    """A call with equal locations reuses the cached index tensors; any change rebuilds them."""
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    pvm = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)
    s = tm.capture(gpt2, gpt2.h[1], src)
    locs = {"sources->base": ([[[1], [2]]], [[[3], [4]]])}
    with torch.no_grad():
        _, a = pvm(base, [src], locs)
        _, b = pvm(base, [src], locs)
        locs["sources->base"][1][0][1][0] = 5  # the caller edits the same object in place
        _, c = pvm(base, [src], locs)

    def fn(t):
        t = t.clone(); t[0, 3] = s[0, 1]; t[1, 5] = s[1, 2]; return t

    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    torch.testing.assert_close(hs(c), hs(patched_run(gpt2, gpt2.h[1], base, fn)), atol=1e-5, rtol=1e-4)
    idx = torch.tensor([[3], [4]])
    with torch.no_grad():
        _, d = pvm(base, [src], {"sources->base": ([[[1], [2]]], [idx.tolist()])})
    torch.testing.assert_close(hs(d), hs(a))


def test_serial_mode_honours_source_representations(gpt2):
    """pyvene silently ignored source_representations in serial mode."""
    base = tm.ids(1, 6, 1)
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output"},
                                 {"layer": 2, "component": "block_output"}], mode="serial")
    pvm = pv.IntervenableModel(cfg, model=gpt2)
    vec = torch.randn(32)
    with torch.no_grad():
        _, out = pvm(base, unit_locations={"source_0->source_1": 1, "source_1->base": 4},
                     source_representations={pvm.sorted_keys[1]: vec})
    torch.testing.assert_close(hs(out), hs(patched_run(gpt2, gpt2.h[2], base, lambda t: torch.cat([t[:, :4], vec.view(1, 1, -1), t[:, 5:]], 1))))
