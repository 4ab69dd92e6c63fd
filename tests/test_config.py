"""Every pyvene spelling of a configuration normalises to the same sites."""
from __future__ import annotations

import torch

import vene as pv


def sites(cfg):
    return [(r.layer, r.component, r.unit, r.max_number_of_units) for r in cfg.representations]


def test_spellings_agree():
    want = [(3, "mlp_output", "pos", 1)]
    assert sites(pv.IntervenableConfig({"layer": 3, "component": "mlp_output"})) == want
    assert sites(pv.IntervenableConfig([{"layer": 3, "component": "mlp_output"}])) == want
    assert sites(pv.IntervenableConfig(pv.RepresentationConfig(3, "mlp_output"))) == want
    assert sites(pv.IntervenableConfig([pv.RepresentationConfig(layer=3, component="mlp_output")])) == want
    assert sites(pv.IntervenableConfig([3, "mlp_output"])) == want
    assert sites(pv.IntervenableConfig(representations=[[3, "mlp_output", "pos", 1]])) == want


def test_intervention_types_per_site_and_shared():
    cfg = pv.IntervenableConfig([{"layer": 0}, {"layer": 1}], pv.AdditionIntervention)
    assert cfg.intervention_types is pv.AdditionIntervention  # pyvene gives back what was passed
    assert cfg.site_types() == [pv.AdditionIntervention] * 2
    assert pv.IntervenableConfig({"layer": 0}).intervention_types is pv.VanillaIntervention
    cfg = pv.IntervenableConfig([{"layer": 0}, {"layer": 1}], [pv.ZeroIntervention, pv.CollectIntervention])
    assert cfg.intervention_types == [pv.ZeroIntervention, pv.CollectIntervention]
    inst = pv.ZeroIntervention()
    cfg = pv.IntervenableConfig([{"layer": 0, "intervention": inst}, {"layer": 1, "intervention_type": pv.SkipIntervention}])
    assert cfg.intervention_types == [pv.ZeroIntervention, pv.SkipIntervention]
    assert cfg.site_intervention(0) is inst
    # pyvene's docs pass a class as 'intervention': accepted as the type
    cfg = pv.IntervenableConfig({"intervention": pv.ZeroIntervention})
    assert cfg.intervention_types == [pv.ZeroIntervention]
    fn = lambda b, s: b  # noqa: E731
    cfg = pv.IntervenableConfig({"component": "h[0].mlp.output", "intervention": fn})
    assert cfg.site_intervention(0) is fn


def test_add_intervention_accepts_instances():
    cfg = pv.IntervenableConfig({"layer": 0})
    cfg.add_intervention({"layer": 1, "intervention": pv.CollectIntervention()})
    cfg.add_intervention([{"layer": 2, "intervention_type": pv.ZeroIntervention}])
    assert cfg.intervention_types == [pv.VanillaIntervention, pv.CollectIntervention, pv.ZeroIntervention]


def test_json_round_trip_keeps_everything():
    cfg = pv.IntervenableConfig(
        [{"layer": 1, "component": "block_output", "subspace_partition": [[0, 4], [4, 8]], "group_key": 0,
          "intervention_link_key": 2, "intervention_type": pv.AdditionIntervention,
          "source_representation": torch.ones(8)},
         {"layer": 2, "component": "head_query_output", "unit": "h.pos", "max_number_of_units": 2, "group_key": 1}],
        mode="serial")
    again = pv.IntervenableConfig.from_json_string(cfg.to_json_string())
    assert again == cfg
    assert torch.equal(again.representations[0].source_representation, torch.ones(8))
    assert again.intervention_types == [pv.AdditionIntervention, pv.VanillaIntervention]
    assert again.mode == "serial"
    assert "tensor(shape=[8], dtype=float32)" in repr(cfg)


def test_from_pyvene_positional_arrays():
    data = {"representations": [[0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, None, None]],
            "mode": "parallel", "intervention_types": None}
    cfg = pv.IntervenableConfig.from_dict(data)
    assert sites(cfg) == [(0, "block_output", "pos", 1)]
