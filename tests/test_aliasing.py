"""Writes never alias: a value written at an input site changes what that module reads and
nothing else (OLMo-2's post-norm blocks hand the residual stream itself to attention and MLP;
Cohere's parallel blocks hand one tensor to both). Checked against hand-written hooks that
replace the module's input out of place."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
import vene as pv

POS = 2


def _oracle(model, module, base, value=None):
    """Base run with ``module``'s input at POS replaced (out of place) by ``value`` (zero if None)."""
    def fn(t):
        t = t.clone()
        t[:, POS] = 0 if value is None else value
        return t

    with torch.no_grad(), tm.hooked(module, fn, pre=True):
        return model(**base).logits


CASES = [
    ("olmo2", "attention_input", lambda m: m.model.layers[0].self_attn),
    ("olmo2", "mlp_input", lambda m: m.model.layers[0].mlp),
    ("olmo2", "model.layers[0].self_attn.input", lambda m: m.model.layers[0].self_attn),
    ("cohere", "attention_input", lambda m: m.model.layers[0].self_attn),
    ("cohere", "mlp_input", lambda m: m.model.layers[0].mlp),
]


@pytest.mark.parametrize("arch, component, module_of", CASES)
@pytest.mark.parametrize("batch_sources", [True, False])
def test_interchange_at_an_input_site_touches_only_that_module(arch, component, module_of, batch_sources):
    model = getattr(tm, arch)()
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    module = module_of(model)
    source_value = tm.capture(model, module, src, pre=True)[:, POS]
    pvm = pv.IntervenableModel({"layer": 0, "component": component}, model=model, batch_sources=batch_sources)
    with torch.no_grad():
        _, out = pvm(base, [src], {"sources->base": POS})
    torch.testing.assert_close(out.logits, _oracle(model, module, base, source_value))


@pytest.mark.parametrize("arch, component, module_of", CASES)
def test_constant_write_at_an_input_site_touches_only_that_module(arch, component, module_of):
    model = getattr(tm, arch)()
    base = tm.ids(2, 6, 1)
    pvm = pv.IntervenableModel({"layer": 0, "component": component, "intervention_type": pv.ZeroIntervention}, model=model)
    with torch.no_grad():
        _, out = pvm(base, unit_locations={"base": POS})
    torch.testing.assert_close(out.logits, _oracle(model, module_of(model), base))


def test_generation_write_at_an_input_site_touches_only_that_module():
    model = tm.olmo2()
    base = tm.ids(1, 5, 1)
    pvm = pv.IntervenableModel({"layer": 0, "component": "attention_input", "intervention_type": pv.ZeroIntervention}, model=model)
    module = model.model.layers[0].self_attn

    def fn(t):
        t = t.clone()
        t[:, -1] = 0
        return t

    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        _, got = pvm.generate(base, unit_locations={"base": -1}, timesteps="all", **kw)
        with tm.hooked(module, fn, pre=True):
            want = model.generate(**base, **kw)
    assert torch.equal(got, want)
