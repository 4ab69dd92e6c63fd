"""Unit "t" on the built-in GRU: a hook that fires once per time step intervenes only at the
requested steps (per example) and leaves every other step bit-identical."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv
from vene.errors import LocationError

H = 8


def _gru(kind="classifier", n_layer=1, grad=False):
    torch.manual_seed(0)
    cfg = pv.GRUConfig(h_dim=H, n_layer=n_layer, vocab_size=tm.VOCAB, num_classes=3)
    make = {"classifier": pv.create_gru_classifier, "lm": pv.create_gru_lm, "base": pv.create_gru}[kind]
    _, _, model = make(cfg)
    model.eval()
    if not grad:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def _embeds(batch=1, seq=10, seed=1):
    return torch.rand(batch, seq, H, generator=torch.Generator().manual_seed(seed))


def _cells(model):
    return model.gru.cells if hasattr(model, "gru") else model.cells


class _StepHook:
    """Hand-written reference: ``fn(step, tensor) -> tensor or None`` on a module, per firing."""

    def __init__(self, module, fn, pre=False):
        self.module, self.fn, self.pre = module, fn, pre

    def __enter__(self):
        step = [-1]

        def h(t):
            step[0] += 1
            return self.fn(step[0], t)

        self.ctx = tm.hooked(self.module, h, pre=self.pre)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def _hidden(model, inputs):
    """Top-layer states (batch, seq, h) of a GRU classifier / LM run."""
    out = model(**inputs, output_hidden_states=True)
    return out.hidden_states[-1], out


# ---------------------------------------------------------------------------------------------


def test_tutorial_gru_snippets():
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=32))
    pv_gru = pv.IntervenableModel({
        "component": "cell_output",
        "unit": "t",
        "intervention_type": pv.ZeroIntervention}, model=gru)
    rand_t = torch.rand(1, 10, gru.config.h_dim)
    intervened_outputs = pv_gru(base={"inputs_embeds": rand_t}, unit_locations={"base": 3})
    assert intervened_outputs[1].logits.shape == (1, 2)

    rand_b = torch.rand(1, 10, gru.config.h_dim)
    rand_s = torch.rand(1, 10, gru.config.h_dim)
    intervened_outputs = pv_gru(
        base={"inputs_embeds": rand_b},
        sources=[{"inputs_embeds": rand_s}],
        unit_locations={"sources->base": (6, 3)})
    # Zero honours the step: same as zeroing step 3 by hand
    with _StepHook(gru.gru.cells[0], lambda s, t: torch.zeros_like(t) if s == 3 else None):
        ref = gru(inputs_embeds=rand_b)
    assert torch.equal(intervened_outputs[1].logits, ref.logits)


@pytest.mark.parametrize("grad", [False, True])
def test_zero_at_one_step_leaves_other_steps_bit_identical(grad):
    model = _gru(grad=grad)
    x = {"inputs_embeds": _embeds()}
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.ZeroIntervention}, model)
    plain, _ = _hidden(model, x)
    _, out = pvm(x, unit_locations={"base": 3})
    with _StepHook(model.gru.cells[0], lambda s, t: torch.zeros_like(t) if s == 3 else None):
        ref, ref_out = _hidden(model, x)
    assert torch.equal(out.logits, ref_out.logits)
    assert torch.equal(ref[:, :3], plain[:, :3])
    assert torch.equal(ref[:, 3], torch.zeros_like(ref[:, 3]))
    assert not torch.allclose(out.logits, model(**x).logits)
    # pyvene's bug (every other step zeroed) would make the logits equal to the bias alone
    assert not torch.allclose(out.logits, model.score.bias.expand_as(out.logits))


def test_untouched_steps_bit_identical_via_collect():
    model = _gru(kind="base")
    x = {"inputs_embeds": _embeds(batch=2)}
    plain = model(**x).last_hidden_state
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.ZeroIntervention}, model)
    _, out = pvm(x, unit_locations={"base": [[3], [5]]})
    h = out.last_hidden_state
    assert torch.equal(h[0, :3], plain[0, :3]) and torch.equal(h[1, :5], plain[1, :5])
    assert torch.equal(h[0, 3], torch.zeros(H)) and torch.equal(h[1, 5], torch.zeros(H))
    assert not torch.equal(h[0, 4:], plain[0, 4:])
    assert not torch.equal(h[1, 3], torch.zeros(H))  # example 1 untouched at step 3


def test_cross_time_interchange_single():
    model = _gru(kind="base")
    b, s = {"inputs_embeds": _embeds(seed=1)}, {"inputs_embeds": _embeds(seed=2)}
    src_states = model(**s).last_hidden_state
    plain = model(**b).last_hidden_state
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, model)
    _, out = pvm(b, [s], {"sources->base": (6, 3)})
    h = out.last_hidden_state
    assert torch.equal(h[:, :3], plain[:, :3])
    assert torch.equal(h[:, 3], src_states[:, 6])
    with _StepHook(model.cells[0], lambda st, t: src_states[:, 6].clone() if st == 3 else None):
        ref = model(**b).last_hidden_state
    assert torch.equal(h, ref)


def test_cross_time_interchange_batched_per_example():
    model = _gru(kind="base")
    b, s = {"inputs_embeds": _embeds(batch=2, seed=3)}, {"inputs_embeds": _embeds(batch=2, seed=4)}
    src_states = model(**s).last_hidden_state
    plain = model(**b).last_hidden_state
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, model)
    _, out = pvm(b, [s], {"sources->base": ([[[6], [2]]], [[[3], [7]]])})
    h = out.last_hidden_state
    assert torch.equal(h[0, 3], src_states[0, 6]) and torch.equal(h[1, 7], src_states[1, 2])
    assert torch.equal(h[0, :3], plain[0, :3]) and torch.equal(h[1, :7], plain[1, :7])
    # every example equals its own single-example run
    for i, (ss, bs) in enumerate([(6, 3), (2, 7)]):
        _, one = pvm({"inputs_embeds": b["inputs_embeds"][i:i + 1]}, [{"inputs_embeds": s["inputs_embeds"][i:i + 1]}],
                     {"sources->base": (ss, bs)})
        torch.testing.assert_close(one.last_hidden_state[0], h[i], rtol=1e-6, atol=1e-7)


def test_several_steps_per_example_and_layers():
    model = _gru(kind="base", n_layer=2)
    b, s = {"inputs_embeds": _embeds(seed=5)}, {"inputs_embeds": _embeds(seed=6)}
    src_top = model(**s).last_hidden_state
    pvm = pv.IntervenableModel({"layer": 1, "component": "cell_output", "unit": "t"}, model)
    _, out = pvm(b, [s], {"sources->base": ([[[6, 7]]], [[[3, 4]]])})
    h = out.last_hidden_state
    assert torch.equal(h[:, 3], src_top[:, 6]) and torch.equal(h[:, 4], src_top[:, 7])
    assert torch.equal(h[:, :3], model(**b).last_hidden_state[:, :3])


def test_gate_components_and_chunk_views():
    model = _gru(kind="base")
    x = {"inputs_embeds": _embeds(seed=7)}
    cell = model.cells[0]
    third = slice(0, H)
    for comp, module, fn, pre in [
        ("reset_x2h_output", cell.x2h, lambda t: torch.cat([torch.zeros_like(t[:, third]), t[:, H:]], -1), False),
        ("new_h2h_output", cell.h2h, lambda t: torch.cat([t[:, :2 * H], torch.zeros_like(t[:, 2 * H:])], -1), False),
        ("update_gate_output", cell.update_act, torch.zeros_like, False),
        ("reset_gate_input", cell.reset_act, torch.zeros_like, True),
        ("cell_input", cell, torch.zeros_like, True),
        ("x2h_output", cell.x2h, torch.zeros_like, False),
    ]:
        pvm = pv.IntervenableModel({"component": comp, "unit": "t", "intervention_type": pv.ZeroIntervention}, model)
        _, out = pvm(x, unit_locations={"base": 2})
        with _StepHook(module, lambda s, t, fn=fn: fn(t) if s == 2 else None, pre=pre):
            ref = model(**x).last_hidden_state
        assert torch.equal(out.last_hidden_state, ref), comp
        assert pvm._specs[pvm.sorted_keys[0]].site.dim == (3 * H if comp == "x2h_output" else H)
    # the user's inputs are not written into (cell_input of layer 0 is a view of inputs_embeds)
    assert torch.equal(x["inputs_embeds"], _embeds(seed=7))


def test_collect_and_source_representations_on_t():
    model = _gru(kind="base")
    x = {"inputs_embeds": _embeds(batch=2, seed=8)}
    plain = model(**x).last_hidden_state
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.CollectIntervention}, model)
    (_, col), _ = pvm(x, unit_locations={"base": [[1, 4], [0, 9]]})
    assert len(col) == 1 and col[0].shape == (2, 2, H)
    assert torch.equal(col[0][0], plain[0, [1, 4]]) and torch.equal(col[0][1], plain[1, [0, 9]])
    vec = torch.arange(H, dtype=torch.float)
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, model)
    _, out = pvm(x, unit_locations={"base": 5}, source_representations=vec)
    assert torch.equal(out.last_hidden_state[:, 5], vec.expand(2, H))
    assert torch.equal(out.last_hidden_state[:, :5], plain[:, :5])


def test_lm_and_classifier_paths():
    for kind in ("lm", "classifier"):
        model = _gru(kind=kind)
        ids = {"input_ids": torch.randint(0, tm.VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))}
        pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.ZeroIntervention}, model)
        assert pvm._specs[pvm.sorted_keys[0]].site.module_path == "gru.cells.0"
        _, out = pvm(ids, unit_locations={"base": 5})
        with _StepHook(model.gru.cells[0], lambda s, t: torch.zeros_like(t) if s == 5 else None):
            ref = model(**ids)
        assert torch.equal(out.logits, ref.logits)


def test_time_step_errors():
    model = _gru(kind="base")
    b, s = {"inputs_embeds": _embeds(seq=5)}, {"inputs_embeds": _embeds(seq=5, seed=2)}
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, model)
    with pytest.raises(LocationError, match="source time step 6"):
        pvm(b, [s], {"sources->base": (6, 3)})
    with pytest.raises(LocationError, match="base time step 7"):
        pvm(b, [s], {"sources->base": (1, 7)})
    with pytest.raises(LocationError, match="twice"):
        pvm(b, [s], {"sources->base": ([[[1, 2]]], [[[3, 3]]])})
    before = {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()}
    assert all(v == 0 for v in before.values())


def test_no_locations_means_every_step():
    model = _gru(kind="base")
    b, s = {"inputs_embeds": _embeds(seed=9)}, {"inputs_embeds": _embeds(seed=10)}
    pvm = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, model)
    _, out = pvm(b, [s])  # base step t takes source step t, for every t
    assert torch.equal(out.last_hidden_state, model(**s).last_hidden_state)
    zero = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.ZeroIntervention}, model)
    _, out = zero(b)
    assert torch.equal(out.last_hidden_state, torch.zeros_like(out.last_hidden_state))
