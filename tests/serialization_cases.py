"""Shared by test_serialization.py and test_hub.py: one small working setup per registered
intervention type, perturbed so that loading its weights is observable; the pyvene fixture."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

import tiny_models
import vene as pv
from vene.interventions import Intervention, registered_interventions

D = 32  # tiny_models.gpt2() width
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pyvene_0_1_8")

# constructor / site extras that some built-in types need
EXTRA = {
    "LowRankRotatedSpaceIntervention": {"low_rank_dimension": 4},
    "AutoencoderIntervention": {"latent_dim": 8},
    "JumpReLUAutoencoderIntervention": {"low_rank_dimension": 8},
    "LoRAIntervention": {"low_rank_dimension": 4},
}
COMPONENT = {"LoRAIntervention": "mlp_output"}


def abstract(cls: type) -> bool:
    """Marker base classes registered for pyvene compatibility; they have no forward of their own."""
    return cls.forward is Intervention.forward


def concrete_types() -> list[str]:
    """Every registered built-in type with a forward of its own."""
    return sorted(n for n, c in registered_interventions().items()
                  if c.__module__.startswith("vene.") and not abstract(c))


def build(name: str, model=None) -> pv.IntervenableModel:
    model = tiny_models.gpt2() if model is None else model
    cls = registered_interventions()[name]
    site = {"layer": 1, "component": COMPONENT.get(name, "block_output")}
    if name == "PCARotatedSpaceIntervention":  # needs a fitted basis: pass an instance
        g = torch.Generator().manual_seed(11)
        comps = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:6].contiguous()
        site["intervention"] = cls(pca_components=comps, pca_mean=torch.randn(D, generator=g), embed_dim=D)
    else:
        site["intervention_type"] = cls
        site.update(EXTRA.get(name, {}))
    return pv.IntervenableModel(pv.IntervenableConfig([site]), model)


def perturb(im: pv.IntervenableModel, seed: int = 1) -> None:
    """Move every float parameter away from its initial value (temperatures excepted)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for iv in {id(v): v for v in im.interventions.values()}.values():
            for n, p in iv.named_parameters():
                if p.is_floating_point() and "temperature" not in n:
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def inputs():
    return tiny_models.ids(2, 6, seed=1), tiny_models.ids(2, 6, seed=2)


def run(im: pv.IntervenableModel, base, src):
    """``(last_hidden_state, collected)``: base-only locations for source-constant interventions,
    else one source with per-example positions."""
    iv = im.interventions[im.sorted_keys[0]]
    with torch.no_grad():
        if iv.is_source_constant:
            out = im(base, unit_locations={"base": [[[1], [3]]] * len(im.sorted_keys)}, return_dict=True)
        else:
            n = len(im.sorted_keys)
            out = im(base, [src], {"sources->base": ([[[2], [4]]] * n, [[[1], [3]]] * n)}, return_dict=True)
    return out.intervened_outputs.last_hidden_state, out.collected_activations


def assert_same_run(a, b) -> None:
    assert torch.equal(a[0], b[0]), (a[0] - b[0]).abs().max()
    assert (a[1] is None) == (b[1] is None)
    if a[1] is not None:
        assert len(a[1]) == len(b[1]) > 0
        for x, y in zip(a[1], b[1]):
            assert torch.equal(x, y)


def assert_same_state(im1: pv.IntervenableModel, im2: pv.IntervenableModel) -> None:
    assert im1.sorted_keys == im2.sorted_keys
    for k in im1.sorted_keys:
        a, b = im1.interventions[k], im2.interventions[k]
        assert type(a) is type(b)
        sa, sb = a.state_dict(), b.state_dict()
        assert sorted(sa) == sorted(sb)
        for n in sa:
            assert sa[n].dtype == sb[n].dtype and torch.equal(sa[n], sb[n]), (k, n)
        assert a.is_source_constant == b.is_source_constant


# pyvene artifacts made by pyvene 0.1.8 itself (fixtures/pyvene_0_1_8/make_fixture.py)


def fixture_model():
    from transformers import GPT2Config, GPT2Model

    with open(os.path.join(FIXTURES, "tiny_gpt2.json")) as f:
        model = GPT2Model(GPT2Config(**json.load(f)))
    model.load_state_dict(load_file(os.path.join(FIXTURES, "tiny_gpt2.safetensors")))
    return model.eval()


def fixture_call(im, case):
    with open(os.path.join(FIXTURES, case, "call.json")) as f:
        call = json.load(f)
    exp = load_file(os.path.join(FIXTURES, case, "expected.safetensors"))
    kw = {}
    if call.get("sources"):
        kw["sources"] = [{"input_ids": exp["source_input_ids"]}]
    locs = dict(call["unit_locations"])
    if isinstance(locs.get("sources->base"), list):  # JSON turned pyvene's (src, base) tuple into a list
        locs["sources->base"] = tuple(locs["sources->base"])
    kw["unit_locations"] = locs
    if "subspaces" in call:
        kw["subspaces"] = call["subspaces"]
    with torch.no_grad():
        _, out = im({"input_ids": exp["base_input_ids"]}, **kw)
    return out.last_hidden_state, exp
