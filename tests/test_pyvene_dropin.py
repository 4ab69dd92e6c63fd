"""pyvene code runs unchanged under ``import vene as pv`` and gives pyvene's results (issue 16).

Each test runs pyvene-style code and checks pyvene's result, or the documented deliberate
difference and its error message.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
import vene as pv


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _dropout_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=tm.VOCAB, n_positions=32,
                     resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    return GPT2LMHeadModel(cfg)  # built from a config: train mode, every weight requires grad


# -- 1. model state on wrap ------------------------------------------------------------------

def test_wrapping_freezes_the_model_like_pyvene():
    model = _dropout_gpt2()
    assert model.training
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 2,
                                     "intervention_type": pv.LowRankRotatedSpaceIntervention}, model)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    a = pv_model(base, [src], {"sources->base": 3})[1].logits
    b = pv_model(base, [src], {"sources->base": 3})[1].logits
    assert torch.equal(a, b)  # dropout off: identical calls, identical outputs
    # pyvene-style training: gradients for the intervention only
    opt = torch.optim.Adam(pv_model.get_trainable_parameters(), lr=1e-3)
    assert len(pv_model.get_trainable_parameters()) == 1
    n_iv = pv_model.count_parameters()
    assert n_iv == 32 * 2 and pv_model.count_parameters(include_model=True) == n_iv
    pv_model(base, [src], {"sources->base": 3})[1].logits.sum().backward()
    opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert pv_model.get_trainable_parameters()[0].grad is not None
    # gradients for the model only when asked
    pv_model.enable_model_gradients()
    n_model = sum(p.numel() for p in model.parameters())
    assert pv_model.count_parameters(include_model=True) == n_iv + n_model
    assert len(pv_model.get_trainable_parameters()) == 1 + len(list(model.parameters()))
    pv_model(base, [src], {"sources->base": 3})[1].logits.sum().backward()
    assert model.lm_head.weight.grad is not None
    pv_model.disable_model_gradients()
    assert pv_model.count_parameters(include_model=True) == n_iv


def test_freeze_model_false_is_the_opt_out():
    model = _dropout_gpt2()
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model, freeze_model=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    # the same rule: what requires grad is trainable
    assert len(pv_model.get_trainable_parameters()) == len(list(model.parameters()))


def test_a_failing_wrap_leaves_the_model_as_it_was():
    model = _dropout_gpt2()
    with pytest.raises(pv.UnknownComponentError):
        pv.IntervenableModel({"layer": 1, "component": "block_outptu"}, model)
    assert model.training and all(p.requires_grad for p in model.parameters())


# -- 3. intervention_types ---------------------------------------------------------------------

def test_intervention_types_gives_back_what_was_passed():
    cfg = pv.IntervenableConfig([{"layer": 0}, {"layer": 1}], intervention_types=pv.VanillaIntervention)
    assert cfg.intervention_types is pv.VanillaIntervention
    both = [pv.VanillaIntervention, pv.ZeroIntervention]
    assert pv.IntervenableConfig([{"layer": 0}, {"layer": 1}], intervention_types=both).intervention_types == both
    assert pv.IntervenableConfig({"layer": 0}).intervention_types is pv.VanillaIntervention
    cfg.intervention_types = pv.AdditionIntervention  # pyvene code assigns it
    assert cfg.site_types() == [pv.AdditionIntervention] * 2
    # once a site names its own type, the list is per site (pyvene's rule)
    cfg = pv.IntervenableConfig([{"layer": 0, "intervention_type": pv.ZeroIntervention},
                                 {"layer": 1, "intervention_type": pv.CollectIntervention}])
    assert cfg.intervention_types == [pv.ZeroIntervention, pv.CollectIntervention]


# -- 4. GRU defaults and built-in model outputs -----------------------------------------------------

def test_gru_config_defaults_to_two_layers_and_layer_1_works():
    assert pv.GRUConfig().n_layer == 2
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=8, vocab_size=10))
    pv_gru = pv.IntervenableModel({"layer": 1, "component": "cell_output", "unit": "t",
                                   "intervention_type": pv.ZeroIntervention}, model=gru)
    x = torch.rand(1, 5, 8)
    _, out = pv_gru({"inputs_embeds": x}, unit_locations={"base": 3})
    assert out[0].shape == (1, 2)


def test_builtin_models_return_tuples_without_return_dict():
    torch.manual_seed(0)
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=4, n_layer=2, num_classes=3))
    x = torch.randn(5, 4)
    out = mlp(inputs_embeds=x)
    assert isinstance(out, tuple) and len(out) == 1
    (logits,) = out  # pyvene code unpacks the tuple
    assert logits.shape == (5, 3) and torch.equal(out.logits, logits) and torch.equal(out["logits"], logits)
    assert out.loss is None
    labels = torch.tensor([0, 1, 2, 1, 0])
    loss, logits2 = mlp(inputs_embeds=x, labels=labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert len(mlp(inputs_embeds=x, output_hidden_states=True)) == 2
    full = mlp(inputs_embeds=x, return_dict=True)
    assert not isinstance(full, tuple) and torch.equal(full.logits, logits)
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=8, vocab_size=10))
    g = gru(inputs_embeds=torch.rand(2, 5, 8))
    assert isinstance(g, tuple) and g[0].shape == (2, 2)
    # intervened outputs keep the model's structure (the tuple), also when sources are fused
    pv_mlp = pv.IntervenableModel({"layer": 0, "component": "block_output"}, mlp)
    _, iout = pv_mlp({"inputs_embeds": x}, [{"inputs_embeds": torch.randn(5, 4)}])
    assert isinstance(iout, tuple) and iout[0].shape == (5, 3)


# -- 5. keys of module-path components ----------------------------------------------------------------

def test_module_path_keys_match_pyvene(gpt2):
    llama = tm.llama()
    pv_model = pv.IntervenableModel({"component": "model.layers[1].mlp.output",
                                     "intervention_type": pv.CollectIntervention}, llama)
    key = "comp_model_layers[1]_mlp_output_unit_pos_nunit_1#0"
    assert pv_model.sorted_keys == [key]
    assert isinstance(pv_model.interventions[key], pv.CollectIntervention)
    pv_gpt2 = pv.IntervenableModel({"component": "h[1].attn.attn_dropout.input",
                                    "intervention": pv.CollectIntervention()}, gpt2)
    assert pv_gpt2.sorted_keys == ["comp_h[1]_attn_attn_dropout_input_unit_pos_nunit_1#0"]
    pv_att = pv.IntervenableModel({"layer": 1, "component": "attention_weight",
                                   "intervention_type": pv.CollectIntervention}, gpt2)
    assert pv_att.sorted_keys == ["layer_1_comp_attention_weight_unit_pos_nunit_1#0"]


# -- 6. one location row for a whole batch ----------------------------------------------------------------

def test_one_location_row_for_a_batch_is_refused_with_the_reason(gpt2):
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2)
    base, src = tm.ids(4, 6, 1), tm.ids(4, 6, 2)
    with pytest.raises(pv.LocationError) as err:
        pv_model(base, [src], {"sources->base": ([[[3]]], [[[3]]])})
    msg = str(err.value)
    assert "example 0's row, and example 0's source activation, for every example" in msg
    assert "[[3], [3], [3]]" in msg and "{'sources->base': 3}" in msg
    assert isinstance(err.value, IndexError)
    # what the message suggests works, and equals per-example rows
    _, a = pv_model(base, [src], {"sources->base": ([[[3]] * 4], [[[3]] * 4])})
    _, b = pv_model(base, [src], {"sources->base": 3})
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)


# -- 7. one location entry for linked interventions ----------------------------------------------------------

def _linked_mlp():
    torch.manual_seed(0)
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=4, n_layer=2, num_classes=3, pdrop=0.0))
    site = {"layer": 0, "component": "block_output", "subspace_partition": [[0, 2], [2, 4]], "intervention_link_key": 0}
    return mlp, pv.IntervenableModel([site, site], mlp)


def test_one_location_entry_serves_linked_interventions():
    mlp, pv_model = _linked_mlp()
    B = 5
    g = torch.Generator().manual_seed(3)
    base, s1, s2 = ({"inputs_embeds": torch.randn(B, 1, 4, generator=g)} for _ in range(3))
    pos = [[[0]] * B]
    _, one = pv_model(base, [s1, s2], {"sources->base": (pos, pos)}, subspaces=[[[0]] * B, [[1]] * B])
    _, two = pv_model(base, [s1, s2], {"sources->base": (pos + pos, pos + pos)}, subspaces=[[[0]] * B, [[1]] * B])
    torch.testing.assert_close(one[0], two[0])
    # hand oracle: features 0-1 from source 1, 2-3 from source 2
    acts = {}
    block = mlp.mlp.h[0]
    for name, inp in (("b", base), ("s1", s1), ("s2", s2)):
        h = block.register_forward_hook(lambda m, a, o, name=name: acts.__setitem__(name, o.clone()))
        mlp(**inp)
        h.remove()
    mixed = acts["b"].clone()
    mixed[..., 0:2] = acts["s1"][..., 0:2]
    mixed[..., 2:4] = acts["s2"][..., 2:4]
    h = block.register_forward_hook(lambda m, a, o: mixed)
    want = mlp(**base)[0]
    h.remove()
    torch.testing.assert_close(one[0], want)


def test_one_location_entry_for_unlinked_interventions_says_why(gpt2):
    pv_model = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], gpt2)
    B = 2
    with pytest.raises(pv.LocationError, match="shared only by interventions linked together"):
        pv_model(tm.ids(B, 6, 1), [tm.ids(B, 6, 2)], {"sources->base": ([[[0]] * B], [[[0]] * B])})


# -- 8. collect keeps the subspace order -----------------------------------------------------------------

def test_collect_keeps_the_order_of_the_subspaces(gpt2):
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output",
                                     "intervention_type": pv.CollectIntervention}, gpt2)
    base = tm.ids(2, 6, 1)
    with torch.no_grad():
        got = pv_model(base, unit_locations={"base": 3}, subspaces=[5, 2])[0][-1][0]
        full = pv_model(base, unit_locations={"base": 3})[0][-1][0]
    assert got.shape == (2, 1, 2)
    torch.testing.assert_close(got, full[..., [5, 2]])
    # per example, in each example's order
    with torch.no_grad():
        got = pv_model(base, unit_locations={"base": 3}, subspaces=[[[7, 1]] * 1 + [[0, 9]]])[0][-1][0]
    torch.testing.assert_close(got[0], full[0][..., [7, 1]])
    torch.testing.assert_close(got[1], full[1][..., [0, 9]])


# -- 9. pyvene's module paths -------------------------------------------------------------------------

PYVENE_MODULES = {
    "intervenable_base": ["IntervenableModel", "IntervenableModelOutput", "IntervenableNdifModel", "build_intervenable_model"],
    "interventions": ["VanillaIntervention", "LowRankRotatedSpaceIntervention", "CollectIntervention", "RotateLayer"],
    "configuration_intervenable_model": ["IntervenableConfig", "RepresentationConfig"],
    "basic_utils": ["embed_to_distrib", "top_vals", "format_token", "set_seed", "count_parameters", "GET_LOC", "sm", "lsm"],
    "intervention_utils": ["_do_intervention_by_swap"],
    "intervenable_modelcard": ["type_to_module_mapping", "type_to_dimension_mapping"],
    "layers": ["RotateLayer", "LowRankRotateLayer"],
    "constants": ["CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK"],
    "mlp.modelings_mlp": ["MLPConfig", "MLPModel", "MLPForClassification"],
    "mlp.modelings_intervenable_mlp": ["create_mlp_classifier"],
    "gru.modelings_gru": ["GRUConfig", "GRUModel", "GRUForClassification", "GRULMHeadModel"],
    "gru.modelings_intervenable_gru": ["create_gru", "create_gru_lm", "create_gru_classifier"],
    "gpt2.modelings_intervenable_gpt2": ["create_gpt2", "create_gpt2_lm"],
    "llama.modelings_intervenable_llama": ["create_llama"],
    "gpt_neo.modelings_intervenable_gpt_neo": ["create_gpt_neo"],
    "gpt_neox.modelings_intervenable_gpt_neox": ["create_gpt_neox"],
    "olmo.modelings_intervenable_olmo": ["create_olmo"],
    "llava.modelings_intervenable_llava": ["create_llava"],
    "blip.modelings_intervenable_blip": ["create_blip"],
    "blip.modelings_intervenable_blip_itm": ["create_blip_itm"],
    "backpack_gpt2.modelings_intervenable_backpack_gpt2": ["create_backpack_gpt2"],
    "gpt_oss.modelings_intervenable_gpt_oss": ["create_gpt_oss"],
}


@pytest.mark.parametrize("path", sorted(PYVENE_MODULES))
def test_pyvene_module_paths_re_export_vene_objects(path):
    mod = importlib.import_module(f"vene.models.{path}")
    for name in PYVENE_MODULES[path]:
        obj = getattr(mod, name)
        if hasattr(pv, name):
            assert obj is getattr(pv, name), name


def test_star_imports_and_attribute_access_like_pyvene():
    ns: dict = {}
    exec("from vene.models.interventions import *", ns)
    assert ns["VanillaIntervention"] is pv.VanillaIntervention and ns["BoundlessRotatedSpaceIntervention"] is pv.BoundlessRotatedSpaceIntervention
    exec("from vene.models.basic_utils import *", ns)
    assert ns["top_vals"] is pv.top_vals
    assert pv.models.interventions.ZeroIntervention is pv.ZeroIntervention  # no import statement needed
    assert pv.models.constants.CONST_OUTPUT_HOOK == "register_forward_hook"
    from vene.models.mlp import MLPConfig  # the old vene paths keep working
    from vene.models.gru import GRUCell  # noqa: F401
    assert MLPConfig is pv.MLPConfig
    with pytest.raises(AttributeError):
        pv.models.no_such_module  # noqa: B018


# -- 10. error classes pyvene users catch --------------------------------------------------------------

def test_out_of_range_locations_and_subspaces_are_index_errors(gpt2):
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2)
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    try:
        pv_model(base, [src], {"sources->base": 9})
    except IndexError as e:
        assert isinstance(e, pv.LocationError) and "out of range" in str(e)
    else:
        raise AssertionError("IndexError was not raised")
    with pytest.raises(IndexError, match="out of range for 32 features"):
        pv_model(base, [src], {"sources->base": 2}, subspaces=[40])
    with pytest.raises(ValueError):  # still ValueErrors too
        pv_model(base, [src], {"sources->base": 9})


# -- 11. the rest of pyvene's top-level names -------------------------------------------------------------

PYVENE_TOP_LEVEL = """CausalModel IntervenableModel IntervenableNdifModel build_intervenable_model IntervenableConfig
RepresentationConfig Intervention TrainableIntervention BasisAgnosticIntervention SharedWeightsTrainableIntervention
SkipIntervention VanillaIntervention AdditionIntervention SubtractionIntervention RotatedSpaceIntervention
BoundlessRotatedSpaceIntervention SigmoidMaskRotatedSpaceIntervention LowRankRotatedSpaceIntervention
PCARotatedSpaceIntervention CollectIntervention ConstantSourceIntervention ZeroIntervention
LocalistRepresentationIntervention DistributedRepresentationIntervention SourcelessIntervention NoiseIntervention
SigmoidMaskIntervention AutoencoderIntervention JumpReLUAutoencoderIntervention InterventionOutput
_do_intervention_by_swap type_to_module_mapping type_to_dimension_mapping create_gpt2 create_gpt2_lm create_blip
create_blip_itm create_gpt_neo create_gpt_neox create_gru create_gru_lm create_gru_classifier create_llava GRUConfig
create_llama create_mlp_classifier create_backpack_gpt2 create_olmo create_gpt_oss lsm sm get_type_from_string
create_directory embed_to_distrib set_seed sigmoid_boundary harmonic_sigmoid_boundary count_parameters
random_permutation_matrix closeness_to_permutation_loss format_token top_vals get_list_depth get_batch_size GET_LOC
models data_generators""".split()


def test_every_pyvene_top_level_name_exists():
    assert [n for n in PYVENE_TOP_LEVEL if not hasattr(pv, n)] == []


def test_create_olmo_builds_offline_and_wraps():
    from transformers import OlmoConfig

    cfg = OlmoConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     vocab_size=tm.VOCAB, max_position_embeddings=32, pad_token_id=0)
    config, tok, olmo = pv.create_olmo(config=cfg)
    assert tok is None and not olmo.training
    pv_olmo = pv.IntervenableModel({"layer": 1, "component": "block_output"}, olmo)
    _, out = pv_olmo(tm.ids(1, 5, 1), [tm.ids(1, 5, 2)], {"sources->base": 2})
    assert out.logits.shape == (1, 5, tm.VOCAB)


@pytest.mark.parametrize("fn", ["create_blip", "create_blip_itm", "create_backpack_gpt2"])
def test_factories_vene_does_not_provide_say_why(fn):
    with pytest.raises(pv.ConfigError, match="vene does not provide"):
        getattr(pv, fn)()


def test_ndif_model_wraps_nnsight_models_only(gpt2):
    # the nnsight backend itself: tests/test_nnsight_backend.py
    with pytest.raises(pv.ConfigError, match="wraps an nnsight model|needs the nnsight package"):
        pv.IntervenableNdifModel({"layer": 0, "component": "block_output"}, gpt2)
    assert isinstance(pv.build_intervenable_model({"layer": 0, "component": "block_output"}, gpt2), pv.IntervenableModel)


def test_do_intervention_by_swap_matches_the_formulas():
    g = torch.Generator().manual_seed(0)
    base, src = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    keep = base.clone()
    out = pv._do_intervention_by_swap(base, src, "interchange", interchange_dim=2)
    want = base.clone()
    want[..., :2] = src[..., :2]
    assert torch.equal(out, want) and torch.equal(base, keep)  # never in place (pyvene mutated base)
    out = pv._do_intervention_by_swap(base, src, "add", subspaces=[[1], [4]])
    want = base.clone()
    want[0, :, 1] += src[0, :, 1]
    want[1, :, 4] += src[1, :, 4]
    torch.testing.assert_close(out, want)  # rows are examples
    out = pv._do_intervention_by_swap(base, src[0, 0], "subtract", subspaces=[[1]],
                                      subspace_partition=[[0, 1], [2, 3, 5]])
    want = base.clone()
    want[..., [2, 3, 5]] -= src[0, 0, [2, 3, 5]]
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(pv._do_intervention_by_swap(base, None, "collect", subspaces=[[5, 0]]), base[..., [5, 0]])


def test_basic_utils_formulas(tmp_path):
    x = torch.arange(10, dtype=torch.float32)
    h = pv.harmonic_sigmoid_boundary(x, 2.0, 6.0, 0.5)
    assert h[0] == pytest.approx(float(torch.sigmoid(torch.tensor(-4.0))))
    assert h[8] == pytest.approx(float(torch.sigmoid(torch.tensor(-4.0))))
    assert h[4] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0 / 0.5))))  # H(2, 2) = 2
    assert h[3] == pytest.approx(float(torch.sigmoid(torch.tensor((2 / (1 + 1 / 3)) / 0.5))))
    P = pv.random_permutation_matrix(5)
    assert torch.equal(P.sum(0), torch.ones(5)) and torch.equal(P.sum(1), torch.ones(5))
    assert float(pv.closeness_to_permutation_loss(P)) == 0.0
    R = torch.full((2, 2), 0.5)
    assert float(pv.closeness_to_permutation_loss(R)) == pytest.approx(0.25)
    assert pv.get_type_from_string("<class 'pyvene.models.interventions.RotatedSpaceIntervention'>") is pv.RotatedSpaceIntervention
    with pytest.raises(pv.UnknownInterventionTypeError):
        pv.get_type_from_string("<class 'os.system'>")
    d = tmp_path / "a" / "b"
    pv.create_directory(str(d))
    pv.create_directory(str(d))
    assert os.path.isdir(d)


# -- 12. documented: subspace rows are examples in direct calls too --------------------------------------

def test_direct_intervention_calls_read_subspace_rows_as_examples():
    """pyvene applied row j of the subspaces to unit j of a (batch, units, d) base; vene applies
    row i to example i, in direct calls as in the engine (docs/coming-from-pyvene.md)."""
    g = torch.Generator().manual_seed(0)
    base, src = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    out = pv.VanillaIntervention(embed_dim=6)(base, src, subspaces=[[0], [1]])
    want = base.clone()
    want[0, :, 0] = src[0, :, 0]
    want[1, :, 1] = src[1, :, 1]
    torch.testing.assert_close(out, want)
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "coming-from-pyvene.md")).read()
    assert "Subspace rows are examples" in text and "One row for a whole batch is refused" in text
