"""Path patching against a hand-written hook oracle (tiny Llama)."""
from __future__ import annotations

import math

import pytest
import torch

import vene as pv
import tiny_models as tm
from vene.analysis import logit_diff, path_patching, path_patching_config

METRIC = logit_diff(3, 5)


@pytest.fixture(scope="module")
def llama():
    return tm.llama(n_layer=3)


def _record(model, inputs):
    """Every layer's attention and MLP output, o_proj inputs and q_proj outputs of one run."""
    rec, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("attn", i), o[0].clone())))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("mlp", i), o.clone())))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: rec.__setitem__(("z", i), a[0].clone())))
        handles.append(layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("q", i), o.clone())))
    with torch.no_grad():
        logits = model(**inputs).logits
    for h in handles:
        h.remove()
    return rec, logits


def _oracle(model, base, source, layer, head, receivers=None):
    """Hand-written path patching. receivers: None (logits) or a list of (layer, head) queries."""
    rb, _ = _record(model, base)
    rs, _ = _record(model, source)
    dh = model.config.hidden_size // model.config.num_attention_heads
    last = len(model.model.layers) if receivers is None else max(l for l, _ in receivers)
    handles = []

    def patch_z(m, a):
        z = a[0].clone()
        z[..., head * dh:(head + 1) * dh] = rs[("z", layer)][..., head * dh:(head + 1) * dh]
        return (z,) + a[1:]

    L = model.model.layers
    handles.append(L[layer].self_attn.o_proj.register_forward_pre_hook(patch_z))
    handles.append(L[layer].mlp.register_forward_hook(lambda m, a, o: rb[("mlp", layer)]))
    for i in range(layer + 1, last):
        handles.append(L[i].self_attn.register_forward_hook(lambda m, a, o, i=i: (rb[("attn", i)],) + tuple(o[1:])))
        handles.append(L[i].mlp.register_forward_hook(lambda m, a, o, i=i: rb[("mlp", i)]))
    got = {}
    for l, _ in receivers or []:
        handles.append(L[l].self_attn.q_proj.register_forward_hook(lambda m, a, o, l=l: got.__setitem__(l, o.clone())))
    with torch.no_grad():
        logits = model(**base).logits
    for h in handles:
        h.remove()
    if receivers is None:
        return float(METRIC(logits[:, -1]).mean())
    handles = []
    for l, hr in receivers:
        def set_q(m, a, o, l=l, hr=hr):
            o = o.clone()
            o[..., hr * dh:(hr + 1) * dh] = got[l][..., hr * dh:(hr + 1) * dh]
            return o
        handles.append(L[l].self_attn.q_proj.register_forward_hook(set_q))
    with torch.no_grad():
        logits = model(**base).logits
    for h in handles:
        h.remove()
    return float(METRIC(logits[:, -1]).mean())


def test_config_matches_the_readme():
    cfg = path_patching_config(1, 4)
    got = [(r.layer, r.component, r.group_key) for r in cfg.representations]
    assert got == [(1, "head_attention_value_output", 0), (1, "mlp_output", 1), (2, "attention_output", 1),
                   (2, "mlp_output", 1), (3, "attention_output", 1), (3, "mlp_output", 1)]
    assert cfg.representations[0].unit == "h.pos"
    assert [r.component for r in path_patching_config(1, 3, component="mlp_output").representations] == \
        ["mlp_output", "attention_output", "mlp_output"]


def test_direct_path_matches_hand_hooks(llama):
    base, source = tm.ids(2, 6, seed=1), tm.ids(2, 6, seed=2)
    grid = path_patching(llama, base, source, METRIC, senders=[(0, 1), (1, 3), (2, 0)], progress=False)
    for l, h in [(0, 1), (1, 3), (2, 0)]:
        assert grid.values[l, h].item() == pytest.approx(_oracle(llama, base, source, l, h), abs=1e-5)
    assert math.isnan(grid.values[0, 0].item())
    assert grid.axes == ("layer", "head")
    # freezing matters: the direct path differs from plain activation patching of the head
    assert grid.meta["base_metric"] != pytest.approx(grid.values[0, 1].item(), abs=1e-7)


def test_readme_config_with_sources_matches_hand_hooks(llama):
    """The README's way: wrap the config, call it with sources=[source, base]."""
    base, source = tm.ids(2, 6, seed=1), tm.ids(2, 6, seed=2)
    layer, head = 1, 2
    m = pv.IntervenableModel(path_patching_config(layer, 3), model=llama)
    n_res = len(m.sorted_keys) - 1
    heads = [[[head]] * 2, [list(range(6))] * 2]
    everywhere = [list(range(6))] * 2
    locs = [heads] + [everywhere] * n_res
    with torch.no_grad():
        _, out = m(base, [source, base], {"sources->base": (locs, locs)})
    assert float(METRIC(out.logits[:, -1]).mean()) == pytest.approx(_oracle(llama, base, source, layer, head), abs=1e-5)


def test_path_to_receiver_queries_matches_hand_hooks(llama):
    base, source = tm.ids(2, 6, seed=3), tm.ids(2, 6, seed=4)
    recv = [("head_query_output", 2, 1), ("head_query_output", 2, 3)]
    grid = path_patching(llama, base, source, METRIC, senders=[(0, 2)], receivers=recv, progress=False)
    expected = _oracle(llama, base, source, 0, 2, receivers=[(2, 1), (2, 3)])
    assert grid.values[0, 2].item() == pytest.approx(expected, abs=1e-5)


def test_receiver_below_sender_is_an_error(llama):
    with pytest.raises(pv.ConfigError, match="not below"):
        path_patching(llama, tm.ids(), tm.ids(seed=2), METRIC, senders=[(2, 0)],
                      receivers=[("head_query_output", 1, 0)], progress=False)
