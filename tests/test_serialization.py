"""Saving and loading interventions: vene's format, pyvene's format, and refusing unsafe files."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import serialization_cases as C
from serialization_cases import FIXTURES, fixture_call as _fixture_call, fixture_model as _fixture_model
import tiny_models
import vene as pv
from vene.interventions import registered_interventions
from vene.serialization import CONFIG_NAME, WEIGHTS_NAME



def _config(path) -> dict:
    with open(os.path.join(path, CONFIG_NAME)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# round trips


def test_every_concrete_registered_type_is_covered():
    names = C.concrete_types()
    # the static ones always; the trainable ones whenever they are registered
    assert {"VanillaIntervention", "AdditionIntervention", "SubtractionIntervention", "ZeroIntervention",
            "CollectIntervention", "SkipIntervention", "NoiseIntervention"} <= set(names)
    skipped = set(registered_interventions()) - set(names)
    assert skipped <= {"ConstantSourceIntervention", "SourcelessIntervention"}, skipped


@pytest.mark.parametrize("name", C.concrete_types())
def test_round_trip_is_bit_identical(name, tmp_path):
    im = C.build(name)
    C.perturb(im)
    base, src = C.inputs()
    ref = C.run(im, base, src)
    plain = tiny_models.gpt2()(**base).last_hidden_state
    if name == "CollectIntervention":
        assert torch.equal(ref[0], plain) and ref[1]
    else:  # the intervention does something, so a load that lost it would show
        assert not torch.equal(ref[0], plain)
    im.save(tmp_path / "art")
    assert sorted(os.listdir(tmp_path / "art")) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert not os.path.exists(tmp_path / "art" / "config.json")
    loaded = pv.IntervenableModel.load(str(tmp_path / "art"), tiny_models.gpt2())
    C.assert_same_state(im, loaded)
    C.assert_same_run(ref, C.run(loaded, base, src))
    cfg = _config(tmp_path / "art")
    assert cfg["format_version"] == 1 and cfg["library"] == "vene"
    assert [e["type"] for e in cfg["interventions"]] == [name]


def test_config_describes_sites_model_and_constructor(tmp_path):
    model = tiny_models.gpt2()
    im = pv.IntervenableModel([
        {"layer": 2, "component": "mlp_output", "unit": "pos", "max_number_of_units": 2,
         "low_rank_dimension": 4, "intervention_type": pv.LowRankRotatedSpaceIntervention,
         "subspace_partition": [[0, 2], [2, 4]], "group_key": 0},
        {"layer": 0, "component": "head_attention_value_output", "unit": "h.pos",
         "intervention_type": pv.VanillaIntervention, "group_key": 1},
    ], model, batch_sources=False)
    im.save(tmp_path / "a")
    cfg = _config(tmp_path / "a")
    assert cfg["base_model"] == {"class_name": "GPT2Model", "model_type": "gpt2", "name_or_path": None, "revision": None}
    assert cfg["mode"] == "parallel" and cfg["sorted_keys"] == im.sorted_keys
    assert cfg["options"]["batch_sources"] is False
    e0, e1 = cfg["interventions"]
    assert e0["site"]["component"] == "mlp_output" and e0["site"]["layer"] == 2
    assert e0["site"]["max_number_of_units"] == 2 and e0["site"]["subspace_partition"] == [[0, 2], [2, 4]]
    assert e0["init"]["kwargs"]["low_rank_dimension"] == 4 and e0["init"]["kwargs"]["embed_dim"] == 64
    assert e0["resolved"] == {"module_path": "h.2.mlp", "io": "output", "dim": 32}
    assert e1["site"]["unit"] == "h.pos" and e1["site"]["group_key"] == 1 and e1["group"] == 1
    assert e0["type"] == "LowRankRotatedSpaceIntervention" and e1["type"] == "VanillaIntervention"
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    assert f"{e0['key']}.rotate_layer.parametrizations.weight.original" in tensors
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    assert loaded.batch_sources is False and loaded.n_groups == 2
    assert loaded.interventions[e0["key"]].subspace_partition == [[0, 1], [2, 3]]


def test_linked_interventions_share_one_saved_tensor_and_reload_linked(tmp_path):
    im = pv.IntervenableModel([
        {"layer": 0, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention,
         "intervention_link_key": "r"},
        {"layer": 2, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention,
         "intervention_link_key": "r"},
    ], tiny_models.gpt2())
    k0, k1 = im.sorted_keys
    assert im.interventions[k0] is im.interventions[k1]
    C.perturb(im)
    base, src = C.inputs()
    ref = C.run(im, base, src)
    im.save(tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    assert not any(k.startswith(k1) for k in tensors)  # stored once, under the first key
    assert _config(tmp_path / "a")["interventions"][1]["shares_with"] == k0
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    assert loaded.interventions[k0] is loaded.interventions[k1]
    C.assert_same_run(ref, C.run(loaded, base, src))


def test_constant_source_is_stored_once(tmp_path):
    sr = torch.randn(32)
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention,
                                "source_representation": sr}], tiny_models.gpt2())
    base, _ = C.inputs()
    ref = C.run(im, base, None)
    im.save(tmp_path / "a")
    key = im.sorted_keys[0]
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    assert sorted(tensors) == [f"{key}.embed_dim", f"{key}.interchange_dim", f"{key}.source_representation"]
    e = _config(tmp_path / "a")["interventions"][0]
    assert e["init"]["kwargs"]["source_representation"] == {"__tensor__": f"{key}.source_representation"}
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    assert torch.equal(loaded.interventions[key].source_representation, sr)
    assert torch.equal(loaded.representations[key].source_representation, sr)
    C.assert_same_run(ref, C.run(loaded, base, None))


class ScaledAddition(pv.ConstantSourceIntervention):
    """A user class whose own arguments never reach the base class (so are not in init_kwargs)."""

    def __init__(self, factor, direction=None, *, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.shift = shift
        self.register_buffer("direction", torch.as_tensor(direction))

    def forward(self, base, source=None, subspaces=None):
        return base + self.factor * self.direction + self.shift


class Unregistered(pv.ConstantSourceIntervention):
    def forward(self, base, source=None, subspaces=None):
        return base


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that test registrations do not leak."""
    from vene import interventions

    monkeypatch.setattr(interventions, "_REGISTRY", dict(interventions._REGISTRY))
    return interventions._REGISTRY


def test_custom_registered_intervention_round_trips_with_all_its_arguments(tmp_path, registry):
    pv.register_intervention(name="TestScaledAddition")(ScaledAddition)  # the decorator, applied

    @pv.register_intervention
    class Halve(pv.ConstantSourceIntervention):  # local to a function, as in a notebook
        def forward(self, base, source=None, subspaces=None):
            return base / 2

    im = pv.IntervenableModel([{"layer": 0, "component": "block_output", "intervention_type": Halve}], tiny_models.gpt2())
    base, _ = C.inputs()
    ref = C.run(im, base, None)
    im.save(tmp_path / "h")
    C.assert_same_run(ref, C.run(pv.IntervenableModel.load(str(tmp_path / "h"), tiny_models.gpt2()), base, None))

    direction = torch.randn(32)
    iv = ScaledAddition(2.5, direction, shift=np.float32(0.25), embed_dim=32)
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": iv}], tiny_models.gpt2())
    base, _ = C.inputs()
    ref = C.run(im, base, None)
    im.save(tmp_path / "a")
    e = _config(tmp_path / "a")["interventions"][0]
    assert e["type"] == "TestScaledAddition"
    assert e["init"]["kwargs"]["factor"] == 2.5 and e["init"]["kwargs"]["shift"] == 0.25
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    got = loaded.interventions[im.sorted_keys[0]]
    assert isinstance(got, ScaledAddition) and got.factor == 2.5 and got.shift == 0.25
    assert torch.equal(got.direction, direction)
    C.assert_same_run(ref, C.run(loaded, base, None))


def test_unencodable_argument_is_dropped_only_when_the_tensors_restore_it(tmp_path, registry):
    pv.register_intervention(name="TestScaledAddition")(ScaledAddition)
    class FittedPCA:  # stands in for sklearn's PCA
        components_ = torch.linalg.qr(torch.randn(32, 32))[0][:5].contiguous()
        mean_ = torch.randn(32)

    pca_iv = pv.PCARotatedSpaceIntervention(pca=FittedPCA(), embed_dim=32)
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": pca_iv}], tiny_models.gpt2())
    base, src = C.inputs()
    ref = C.run(im, base, src)
    im.save(tmp_path / "a")
    assert "pca" not in _config(tmp_path / "a")["interventions"][0]["init"]["kwargs"]
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    C.assert_same_run(ref, C.run(loaded, base, src))
    # an argument the class cannot do without fails at save time, naming it
    bad = ScaledAddition(object(), torch.zeros(32), embed_dim=32)
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": bad}], tiny_models.gpt2())
    with pytest.raises(pv.SerializationError, match="'factor'"):
        im.save(tmp_path / "b")
    assert not os.path.exists(tmp_path / "b")


def test_plain_function_and_unregistered_class_fail_at_save_time(tmp_path):
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": lambda b, s: b * 2}],
                              tiny_models.gpt2())
    with pytest.raises(pv.SerializationError, match="plain function.*register_intervention"):
        im.save(tmp_path / "a")
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": Unregistered(embed_dim=32)}],
                              tiny_models.gpt2())
    with pytest.raises(pv.SerializationError, match="not registered.*register_intervention"):
        im.save(tmp_path / "a")
    assert os.listdir(tmp_path) == []  # nothing written, no temp dir left


def test_unknown_type_and_newer_format_are_clear_errors(tmp_path):
    im = C.build("VanillaIntervention")
    im.save(tmp_path / "a")
    cfg = _config(tmp_path / "a")
    cfg["interventions"][0]["type"] = "MyForgottenIntervention"
    with open(tmp_path / "a" / CONFIG_NAME, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(pv.UnknownInterventionTypeError) as err:
        pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    assert "MyForgottenIntervention" in str(err.value) and "VanillaIntervention" in str(err.value)
    assert "register_intervention" in str(err.value)
    cfg["interventions"][0]["type"] = "VanillaIntervention"
    cfg["format_version"] = 99
    with open(tmp_path / "a" / CONFIG_NAME, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(pv.SerializationError, match="format version 99.*Upgrade vene"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())


def test_atomic_write_keeps_foreign_files_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    im = C.build("RotatedSpaceIntervention")
    im.save(target)
    assert sorted(os.listdir(target)) == ["README.md", CONFIG_NAME, WEIGHTS_NAME, "notes.txt"]
    before = (target / WEIGHTS_NAME).read_bytes()
    bad = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention": lambda b, s: b}],
                               tiny_models.gpt2())
    with pytest.raises(pv.SerializationError):
        bad.save(target)
    assert (target / WEIGHTS_NAME).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(pv.SerializationError, match="is a file"):
        im.save(tmp_path / "file")


def test_include_model_saves_and_restores_trainable_model_weights(tmp_path):
    model = tiny_models.gpt2()
    with torch.no_grad():
        model.ln_f.weight.mul_(3.0)
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output"}], model)
    model.ln_f.weight.requires_grad_(True)  # after wrapping, which freezes the model (as pyvene)
    im.save(tmp_path / "a", include_model=True)
    assert _config(tmp_path / "a")["base_model_params"] == ["ln_f.weight"]
    fresh = tiny_models.gpt2()
    pv.IntervenableModel.load(str(tmp_path / "a"), fresh)
    assert torch.equal(fresh.ln_f.weight, tiny_models.gpt2().ln_f.weight)  # not asked: untouched
    pv.IntervenableModel.load(str(tmp_path / "a"), fresh, include_model=True)
    assert torch.equal(fresh.ln_f.weight, model.ln_f.weight)


def test_save_intervention_and_load_intervention_onto_an_existing_model(tmp_path):
    im = C.build("LowRankRotatedSpaceIntervention")
    C.perturb(im, seed=4)
    base, src = C.inputs()
    ref = C.run(im, base, src)
    im.save_intervention(tmp_path / "a")
    other = C.build("LowRankRotatedSpaceIntervention")
    assert not torch.equal(C.run(other, base, src)[0], ref[0])
    other.load_intervention(str(tmp_path / "a"))
    C.assert_same_run(ref, C.run(other, base, src))
    # keys must match; the failing call changes nothing
    wrong = pv.IntervenableModel([{"layer": 2, "component": "block_output", "low_rank_dimension": 4,
                                   "intervention_type": pv.LowRankRotatedSpaceIntervention}], tiny_models.gpt2())
    state = {k: v.clone() for k, v in wrong.interventions[wrong.sorted_keys[0]].state_dict().items()}
    with pytest.raises(pv.SerializationError, match="not in this model"):
        wrong.load_intervention(str(tmp_path / "a"))
    after = wrong.interventions[wrong.sorted_keys[0]].state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_shape_mismatch_is_a_clear_error_and_model_is_untouched(tmp_path):
    im = C.build("RotatedSpaceIntervention")
    im.save(tmp_path / "a")
    wide = tiny_models.gpt2(n_embd=48)
    snapshot = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(pv.SerializationError, match="shape"):
        pv.IntervenableModel.load(str(tmp_path / "a"), wide)
    assert all(torch.equal(v, wide.state_dict()[k]) for k, v in snapshot.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in wide.modules())


def test_loading_onto_another_model_class_warns(tmp_path):
    im = C.build("VanillaIntervention")
    im.save(tmp_path / "a")
    with pytest.warns(UserWarning, match="class_name='GPT2Model'.*GPT2LMHeadModel"):
        loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2(lm=True))
    assert loaded.sorted_keys == im.sorted_keys


def test_saved_dtype_is_kept(tmp_path):
    im = C.build("RotatedSpaceIntervention")
    iv = im.interventions[im.sorted_keys[0]]
    iv.double()
    im.save(tmp_path / "a")
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    C.assert_same_state(im, loaded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_reload_on_another_device(tmp_path):
    im = C.build("RotatedSpaceIntervention", tiny_models.gpt2().cuda())
    C.perturb(im)
    base, src = C.inputs()
    ref = C.run(im, {k: v.cuda() for k, v in base.items()}, {k: v.cuda() for k, v in src.items()})
    im.save(tmp_path / "a")
    cpu = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())
    assert all(t.device.type == "cpu" for t in cpu.interventions[cpu.sorted_keys[0]].state_dict().values())
    gpu = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2().cuda())
    assert all(t.device.type == "cuda" for t in gpu.interventions[gpu.sorted_keys[0]].state_dict().values())
    torch.testing.assert_close(C.run(cpu, base, src)[0], ref[0].cpu(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# pyvene artifacts (made by pyvene 0.1.8 itself: tests/fixtures/pyvene_0_1_8/make_fixture.py)


# Boundless DAS: vene centres its soft mask on i+0.5 (pyvene's mask is 0.5 at dimension 0 at any
# temperature); with pyvene's weights the outputs agree to ~1e-3, not to rounding.
PYVENE_CASES = {"constant_sources": 1e-5, "vanilla_subspace": 1e-5, "rotated": 1e-5,
                "low_rank_rotated": 1e-5, "sigmoid_mask": 1e-5, "boundless_rotated": 2e-3}


@pytest.mark.parametrize("case", sorted(PYVENE_CASES))
def test_pyvene_artifact_loads_and_reproduces_pyvene(case):
    directory = os.path.join(FIXTURES, case)
    with open(os.path.join(directory, "config.json")) as f:
        types_ = json.load(f)["intervention_types"]
    for t in types_:  # the fixture only uses types vene registers
        pv.get_intervention_class(t)
    im = pv.IntervenableModel.load(directory, _fixture_model())
    out, exp = _fixture_call(im, case)
    plain = _fixture_model()(input_ids=exp["base_input_ids"]).last_hidden_state
    assert (plain - exp["last_hidden_state"]).abs().max() > 0.1  # pyvene's interventions did something
    torch.testing.assert_close(out, exp["last_hidden_state"], atol=PYVENE_CASES[case], rtol=0)
    for key in im.sorted_keys:  # every saved tensor landed, exactly
        path = os.path.join(directory, f"intkey_{key}.bin")
        if not os.path.exists(path):
            continue
        saved = torch.load(path, weights_only=True)
        state = im.interventions[key].state_dict()
        for name, t in saved.items():
            if name in state and (isinstance(im.interventions[key], pv.TrainableIntervention) or name == "source_representation"):
                assert torch.equal(state[name].to(t.dtype), t), (key, name)


def test_pyvene_artifact_resaves_in_vene_format(tmp_path):
    im = pv.IntervenableModel.load(os.path.join(FIXTURES, "rotated"), _fixture_model())
    ref, _ = _fixture_call(im, "rotated")
    im.save(tmp_path / "a")
    again = pv.IntervenableModel.load(str(tmp_path / "a"), _fixture_model())
    assert torch.equal(_fixture_call(again, "rotated")[0], ref)


@pytest.mark.parametrize("weights_only", [False, True])
def test_pyvene_load_intervention_onto_existing_model(tmp_path, weights_only):
    directory = os.path.join(FIXTURES, "low_rank_rotated")
    if weights_only:  # what pyvene's save_intervention writes: intkey_*.bin, no config.json
        for f in os.listdir(directory):
            if f.startswith("intkey_"):
                shutil.copy(os.path.join(directory, f), tmp_path / f)
        directory = str(tmp_path)
    im = pv.IntervenableModel([{"layer": 0, "component": "block_output", "low_rank_dimension": 4,
                                "intervention_type": pv.LowRankRotatedSpaceIntervention}], _fixture_model())
    im.load_intervention(directory)
    out, exp = _fixture_call(im, "low_rank_rotated")
    torch.testing.assert_close(out, exp["last_hidden_state"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# malicious artifacts


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _pyvene_dir(tmp_path, intervention_type="<class 'pyvene.models.interventions.VanillaIntervention'>"):
    d = tmp_path / "pv"
    d.mkdir()
    key = "layer_0_comp_block_output_unit_pos_nunit_1#0"
    config = {"representations": [[0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, True, None]],
              "intervention_types": [intervention_type], "intervention_dimensions": [16],
              "intervention_constant_sources": [True], "mode": "parallel", "sorted_keys": [key]}
    (d / "config.json").write_text(json.dumps(config))
    return d, d / f"intkey_{key}.bin"


@pytest.mark.parametrize("as_zip", [True, False])
def test_pickle_that_would_run_code_is_refused(tmp_path, as_zip):
    sentinel = tmp_path / "pwned"
    d, binfile = _pyvene_dir(tmp_path)
    payload = {"source_representation": _Payload(sentinel)}
    if as_zip:
        torch.save(payload, binfile)
    else:
        binfile.write_bytes(pickle.dumps(payload, protocol=2))
    model = _fixture_model()
    with pytest.raises(pv.UnsafeArtifactError, match="Refusing to load"):
        pv.IntervenableModel.load(str(d), model)
    assert not sentinel.exists()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_pyvene_constant_source_without_its_file_is_an_error(tmp_path):
    d, binfile = _pyvene_dir(tmp_path)
    assert not binfile.exists()
    with pytest.raises(pv.SerializationError, match="constant source.*missing"):
        pv.IntervenableModel.load(str(d), _fixture_model())


def test_class_paths_in_a_config_are_never_imported(tmp_path, monkeypatch):
    sentinel = tmp_path / "imported"
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "vene_evil_probe.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nclass Payload: pass\n")
    monkeypatch.syspath_prepend(str(mod))
    for path in ("<class 'vene_evil_probe.Payload'>", "<class 'os.system'>", "os.system"):
        d, _ = _pyvene_dir(tmp_path, path)
        with pytest.raises(pv.UnknownInterventionTypeError, match="Unknown intervention type"):
            pv.IntervenableModel.load(str(d), _fixture_model())
        os.remove(d / "config.json")
        os.rmdir(d)
    assert not sentinel.exists() and "vene_evil_probe" not in sys.modules
    # vene's own format: a type name is a registry name, nothing else
    im = C.build("VanillaIntervention")
    im.save(tmp_path / "a")
    cfg = _config(tmp_path / "a")
    cfg["interventions"][0]["type"] = "os.system"
    with open(tmp_path / "a" / CONFIG_NAME, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(pv.UnknownInterventionTypeError):
        pv.IntervenableModel.load(str(tmp_path / "a"), tiny_models.gpt2())


def test_a_base_model_directory_is_not_an_intervention_artifact(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(pv.SerializationError, match="base model"):
        pv.IntervenableModel.load(str(tmp_path), tiny_models.gpt2())
    (tmp_path / "empty").mkdir()
    with pytest.raises(pv.ArtifactNotFoundError, match="intervention_config.json"):
        pv.IntervenableModel.load(str(tmp_path / "empty"), tiny_models.gpt2())
