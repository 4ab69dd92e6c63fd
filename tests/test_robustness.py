"""Issue 15: no silently wrong result, no unhelpful error (locations, loading, saving).

One test (or a few) per numbered item of the issue; each failed before the fix. The randomised
property suite is tests/test_properties.py.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import serialization_cases as C
import tiny_models as tm
import vene as pv
from serialization_cases import FIXTURES, fixture_model
from vene import artifact_fs, serialization
from vene.serialization import CONFIG_NAME, WEIGHTS_NAME


def _cfg(path) -> dict:
    with open(os.path.join(path, CONFIG_NAME)) as f:
        return json.load(f)


def _write_cfg(path, cfg) -> None:
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(cfg, f)


# ---------------------------------------------------------------------------------------------
# 1. a source-reading intervention called without any source


@pytest.mark.parametrize("cls", [pv.VanillaIntervention, pv.RotatedSpaceIntervention, pv.AdditionIntervention])
def test_1_source_reader_without_sources_is_an_error(gpt2, cls):
    im = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": cls}, gpt2)
    base = tm.ids(2, 6, 1)
    with pytest.raises(pv.SourceError, match="reads a source.*sources=None.*un-intervened"):
        im(base, unit_locations={"sources->base": 2})
    with pytest.raises(pv.SourceError, match="reads a source"):
        im(base)
    # what the message offers works: a source representation, or an explicit skip
    rep = torch.randn(2, 1, 32)
    _, out = im(base, unit_locations={"base": 2}, source_representations=rep)
    assert not torch.equal(out.last_hidden_state, gpt2(**base).last_hidden_state)
    _, out = im(base, [None], unit_locations={"sources->base": 2})
    assert torch.equal(out.last_hidden_state, gpt2(**base).last_hidden_state)


def test_1_sourceless_interventions_still_run_without_sources(gpt2):
    im = pv.IntervenableModel([{"layer": 1, "component": "block_output", "intervention_type": pv.ZeroIntervention},
                               {"layer": 2, "component": "block_output", "intervention_type": pv.CollectIntervention}], gpt2)
    (_, collected), out = im(tm.ids(1, 6, 1), unit_locations={"base": 1})
    assert collected and not torch.equal(out.last_hidden_state, gpt2(**tm.ids(1, 6, 1)).last_hidden_state)


def test_1_generate_without_sources_is_an_error_too(gpt2_lm):
    im = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2_lm)
    with pytest.raises(pv.SourceError, match="reads a source"):
        im.generate(tm.ids(1, 4, 1), unit_locations={"sources->base": 1}, max_new_tokens=2)


# ---------------------------------------------------------------------------------------------
# 2. a pyvene folder missing the weights of a trainable intervention


def test_2_pyvene_folder_without_its_intkey_file_is_refused(tmp_path):
    d = tmp_path / "rotated"
    shutil.copytree(os.path.join(FIXTURES, "rotated"), d)
    (name,) = [f for f in os.listdir(d) if f.startswith("intkey_")]
    os.remove(d / name)
    with pytest.raises(pv.SerializationError, match=f"{name}.*missing.*random"):
        pv.IntervenableModel.load(str(d), fixture_model())


# ---------------------------------------------------------------------------------------------
# 3. overwriting a saved folder is atomic


def _state(path):
    return load_file(os.path.join(path, WEIGHTS_NAME)), _cfg(path)["interventions"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("fail_at", range(6))
def test_3_a_crash_while_overwriting_leaves_the_old_or_the_new_folder(tmp_path, monkeypatch, fail_at, exchange):
    target = tmp_path / "a"
    old_im = C.build("RotatedSpaceIntervention")
    old_im.save(target)
    (target / "notes.txt").write_text("mine")
    old = _state(target)
    new_im = C.build("LowRankRotatedSpaceIntervention")
    calls = [0]
    real = {n: getattr(os, n) for n in ("rename", "replace", "link")}

    def flaky(name):
        def fn(*a, **k):
            calls[0] += 1
            if calls[0] > fail_at:
                raise OSError(f"simulated crash in os.{name}")
            return real[name](*a, **k)
        return fn

    real_exchange = artifact_fs._exchange

    def exchange_fn(a, b):
        if not exchange:
            return False
        calls[0] += 1
        if calls[0] > fail_at:
            raise OSError("simulated crash in renameat2")
        return real_exchange(a, b)

    for n in real:
        monkeypatch.setattr(os, n, flaky(n))
    monkeypatch.setattr(artifact_fs, "_exchange", exchange_fn)
    try:
        new_im.save(target)
        saved = True
    except OSError:
        saved = False
    monkeypatch.undo()
    if not saved and not target.exists():
        # without renameat2 there is one moment with no folder at the path: the old one is intact
        # in a sibling (a crash there loses nothing; it is named in the temporary folder's prefix)
        assert not exchange
        (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith(".a.old-")]
        target = moved
    now = _state(target)
    expected = _state_of(new_im) if saved else old
    assert now[1] == expected[1]
    assert now[0].keys() == expected[0].keys() and all(torch.equal(now[0][k], expected[0][k]) for k in now[0])
    assert (target / "notes.txt").read_text() == "mine"
    pv.IntervenableModel.load(str(target), tm.gpt2())  # loads (checksum and config agree)
    if saved:
        assert os.listdir(tmp_path) == ["a"]  # no temporary folder left behind


def _state_of(im):
    config, tensors = serialization.describe(im)
    return {k: v for k, v in tensors.items()}, config["interventions"]


def test_3_overwrite_swaps_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "a"
    C.build("RotatedSpaceIntervention").save(target)
    seen = []
    monkeypatch.setattr(os, "replace", lambda *a: seen.append(a) or (_ for _ in ()).throw(AssertionError("per-file")))
    C.build("LowRankRotatedSpaceIntervention").save(target)
    assert not seen
    assert _cfg(target)["interventions"][0]["type"] == "LowRankRotatedSpaceIntervention"


# ---------------------------------------------------------------------------------------------
# 4. head units on a component without heads


@pytest.mark.parametrize("unit", ["h.pos", "h"])
def test_4_head_units_need_a_head_component(gpt2, unit):
    with pytest.raises(pv.ConfigError, match=f"unit '{unit}' indexes attention heads.*not split into heads"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "unit": unit}, gpt2)
    pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": unit}, gpt2)


# ---------------------------------------------------------------------------------------------
# 6. max_number_of_units must match the locations


def test_6_units_must_match_max_number_of_units(gpt2):
    im = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos",
                               "max_number_of_units": 2, "intervention_type": pv.RotatedSpaceIntervention}, gpt2)
    one_head_two_pos = [[[0]] * 2, [[1, 2]] * 2]
    with pytest.raises(pv.ShapeMismatchError, match="max_number_of_units=2.*select 1 per example"):
        im(tm.ids(2, 6, 1), [tm.ids(2, 6, 2)], {"sources->base": ([one_head_two_pos], [one_head_two_pos])})
    two_heads = [[[0, 1]] * 2, [[1]] * 2]
    im(tm.ids(2, 6, 1), [tm.ids(2, 6, 2)], {"sources->base": ([two_heads], [two_heads])})
    pos = pv.IntervenableModel({"layer": 0, "component": "block_output", "max_number_of_units": 2,
                                "intervention_type": pv.RotatedSpaceIntervention}, gpt2)
    with pytest.raises(pv.ShapeMismatchError, match="max_number_of_units=2"):
        pos(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": [[1, 2, 3, 4]]})
    pos(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": [[1, 2]]})
    # width one: applied unit by unit, any count; Vanilla has no width
    for t in (pv.RotatedSpaceIntervention, pv.VanillaIntervention):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": t}, gpt2)(
            tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": [[1, 2, 3]]})


# ---------------------------------------------------------------------------------------------
# 7. loaded weights are checked


def test_7_checksum_detects_a_changed_payload(tmp_path):
    C.build("RotatedSpaceIntervention").save(tmp_path / "a")
    path = tmp_path / "a" / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(pv.CorruptArtifactError, match="checksum"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


def test_7_checksum_is_required_in_format_2_and_format_1_warns(tmp_path):
    C.build("VanillaIntervention").save(tmp_path / "a")
    cfg = _cfg(tmp_path / "a")
    del cfg["files"]
    _write_cfg(tmp_path / "a", cfg)
    with pytest.raises(pv.CorruptArtifactError, match="no checksum"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())
    cfg["format_version"] = 1
    _write_cfg(tmp_path / "a", cfg)
    with pytest.warns(UserWarning, match="no checksum"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


def _rewrite_tensors(directory, fn):
    """Change the saved tensors and record the new checksum (a consistent but bad artifact)."""
    path = os.path.join(directory, WEIGHTS_NAME)
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)
    cfg = _cfg(directory)
    cfg["files"][WEIGHTS_NAME]["sha256"] = artifact_fs.sha256_file(path)
    _write_cfg(directory, cfg)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_7_nan_and_inf_weights_are_refused(tmp_path, value):
    C.build("RotatedSpaceIntervention").save(tmp_path / "a")

    def poison(t):
        name = next(k for k in t if k.endswith("original"))
        t[name][0, 0] = value
    _rewrite_tensors(tmp_path / "a", poison)
    with pytest.raises(pv.CorruptArtifactError, match="NaN/Inf"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


def test_7_nan_in_a_pyvene_file_is_refused(tmp_path):
    d = tmp_path / "rotated"
    shutil.copytree(os.path.join(FIXTURES, "rotated"), d)
    (name,) = [f for f in os.listdir(d) if f.startswith("intkey_")]
    state = torch.load(d / name, weights_only=True)
    k = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[k][0, 0] = float("nan")
    torch.save(state, d / name)
    with pytest.raises(pv.CorruptArtifactError, match="NaN/Inf"):
        pv.IntervenableModel.load(str(d), fixture_model())


def test_7_wrong_shape_tensors_are_refused_at_load(tmp_path):
    C.build("BoundlessRotatedSpaceIntervention").save(tmp_path / "a")
    _rewrite_tensors(tmp_path / "a", lambda t: t.__setitem__(
        next(k for k in t if k.endswith("intervention_population")), torch.zeros(7)))
    with pytest.raises(pv.CorruptArtifactError, match="intervention_population.*shape"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())
    # tensors that are constructor arguments are checked by the constructor
    C.build("PCARotatedSpaceIntervention").save(tmp_path / "b")
    _rewrite_tensors(tmp_path / "b", lambda t: t.__setitem__(next(k for k in t if k.endswith("pca_mean")), torch.zeros(7)))
    with pytest.raises(pv.SerializationError, match="pca_mean has 7 values for 32 features"):
        pv.IntervenableModel.load(str(tmp_path / "b"), tm.gpt2())


def test_7_constant_source_of_the_wrong_width_is_refused_at_load(tmp_path):
    im = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention,
                               "source_representation": torch.randn(32)}, tm.gpt2())
    im.save(tmp_path / "a")
    _rewrite_tensors(tmp_path / "a", lambda t: t.__setitem__(next(k for k in t if "source_representation" in k), torch.randn(5)))
    with pytest.raises(pv.CorruptArtifactError, match="constant source.*shape"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


# ---------------------------------------------------------------------------------------------
# 8. sizes checked before anything is allocated


def test_8_a_huge_saved_embed_dim_is_refused_before_allocating(tmp_path):
    C.build("RotatedSpaceIntervention").save(tmp_path / "a")
    cfg = _cfg(tmp_path / "a")
    cfg["interventions"][0]["init"]["kwargs"]["embed_dim"] = 6000
    _write_cfg(tmp_path / "a", cfg)
    t = time.perf_counter()
    with pytest.raises(pv.CorruptArtifactError, match="embed_dim 6000 does not fit"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())
    assert time.perf_counter() - t < 5  # a 6000 x 6000 orthogonal initialisation takes far longer


def test_8_max_number_of_units_is_bounded_by_the_model(gpt2):
    with pytest.raises(pv.ConfigError, match="max_number_of_units=100000.*only 32 positions"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "max_number_of_units": 10**5,
                              "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 1}, gpt2)
    with pytest.raises(pv.ConfigError, match="max_number_of_units=5.*only 4 heads"):
        pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos",
                              "max_number_of_units": 5}, gpt2)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_8_low_rank_dimension_must_be_a_positive_int(gpt2, bad):
    with pytest.raises(pv.ConfigError, match="low_rank_dimension"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "low_rank_dimension": bad,
                              "intervention_type": pv.LowRankRotatedSpaceIntervention}, gpt2)


def test_8_constructors_refuse_absurd_sizes_without_allocating():
    with pytest.raises(pv.ConfigError, match="GiB"):
        pv.RotatedSpaceIntervention(embed_dim=10**6)
    with pytest.raises(pv.ConfigError, match="positive int"):
        pv.RotatedSpaceIntervention(embed_dim=-4)
    with pytest.raises(pv.ConfigError, match="positive int"):
        pv.VanillaIntervention(embed_dim="32")
    with pytest.raises(pv.ConfigError, match="GiB"):
        pv.AutoencoderIntervention(embed_dim=1 << 16, latent_dim=1 << 16)


# ---------------------------------------------------------------------------------------------
# 9. symlinks out of a local artifact folder


def test_9_symlink_out_of_the_folder_is_refused(tmp_path):
    C.build("RotatedSpaceIntervention").save(tmp_path / "a")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(tmp_path / "a" / WEIGHTS_NAME, outside)
    os.symlink(outside, tmp_path / "a" / WEIGHTS_NAME)
    with pytest.raises(pv.UnsafeArtifactError, match="symlink.*outside the artifact folder"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())
    # a link inside the folder is fine
    shutil.move(outside, tmp_path / "a" / "real.bin")
    os.remove(tmp_path / "a" / WEIGHTS_NAME)
    os.symlink("real.bin", tmp_path / "a" / WEIGHTS_NAME)
    pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


# ---------------------------------------------------------------------------------------------
# 10. messages that explain


def test_10_two_unit_lists_with_batch_two_are_per_example_not_a_pair(gpt2):
    im = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2)
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    _, short = im(base, [src], {"sources->base": [[1], [2]]})
    _, full = im(base, [src], {"sources->base": ([[[1], [2]]], [[[1], [2]]])})
    assert torch.equal(short.last_hidden_state, full.last_hidden_state)
    _, pair = im(base, [src], {"sources->base": ([1], [2])})  # a tuple is (source units, base units)
    _, explicit = im(base, [src], {"sources->base": ([[[1], [1]]], [[[2], [2]]])})
    assert torch.equal(pair.last_hidden_state, explicit.last_hidden_state)
    with pytest.raises(pv.LocationError, match="2 rows but the batch has 3.*tuple"):
        im(tm.ids(3, 6, 1), [tm.ids(3, 6, 2)], {"sources->base": [[1], [2]]})


def test_10_broadcast_error_names_the_dimension_that_is_wrong():
    iv = pv.VanillaIntervention()
    with pytest.raises(pv.ShapeMismatchError) as err:
        iv(torch.zeros(2, 1, 8), torch.zeros(2, 3, 8))
    assert "must be 8" not in str(err.value) and "feature sizes agree" in str(err.value)
    with pytest.raises(pv.ShapeMismatchError, match="last dimension must be 8 \\(it is 5\\)"):
        iv(torch.zeros(2, 1, 8), torch.zeros(2, 1, 5))


def test_10_bad_device_and_sort_fn_are_vene_errors(gpt2):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
    with pytest.raises(pv.ConfigError, match="'cudx' is not a device"):
        im.set_device("cudx")
    with pytest.raises(pv.ConfigError, match="intervenables_sort_fn must be a function"):
        pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2, intervenables_sort_fn=3)
    with pytest.raises(pv.ConfigError, match="not an ordering of the keys"):
        pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2, intervenables_sort_fn=lambda m, r: ["x"])


def test_10_deeply_nested_inputs_are_vene_errors(tmp_path, gpt2):
    C.build("VanillaIntervention").save(tmp_path / "a")
    text = (tmp_path / "a" / CONFIG_NAME).read_text()
    (tmp_path / "a" / CONFIG_NAME).write_text(text[:-2] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}\n")
    with pytest.raises(pv.SerializationError, match="nested too deeply"):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())
    with pytest.raises(pv.ConfigError, match="nested too deeply"):
        pv.IntervenableConfig.from_json_string("[" * 100000 + "]" * 100000)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
    deep = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(pv.LocationError, match="nested more than"):
        im(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": deep})


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(sorted_key=c["sorted_keys"]), "unknown field 'sorted_key'.*Did you mean 'sorted_keys'"),
    (lambda c: c["interventions"][0].update(shares=None), "unknown field 'shares' in intervention 0"),
    (lambda c: c["interventions"][0]["site"].update(layers=1), "unknown site field 'layers'"),
    (lambda c: c["options"].update(fast=True), "unknown option 'fast'"),
    (lambda c: c.update(format_version=0), "format version 0"),
    (lambda c: c.update(mode="paralel"), "mode must be"),
    (lambda c: c["interventions"][0].update(group="0"), "'group' of intervention 0 must be int"),
])
def test_10_unknown_fields_and_bad_versions_are_refused(tmp_path, edit, match):
    C.build("VanillaIntervention").save(tmp_path / "a")
    cfg = _cfg(tmp_path / "a")
    edit(cfg)
    _write_cfg(tmp_path / "a", cfg)
    with pytest.raises(pv.SerializationError, match=match):
        pv.IntervenableModel.load(str(tmp_path / "a"), tm.gpt2())


def test_10_negative_heads_are_refused_like_negative_positions(gpt2):
    im = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos"}, gpt2)
    with pytest.raises(pv.LocationError, match="negative source h location -1"):
        im(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": pv.GET_LOC((-1, 1))})
    with pytest.raises(pv.LocationError, match="negative source pos location -2"):
        im(tm.ids(1, 6, 1), [tm.ids(1, 6, 2)], {"sources->base": pv.GET_LOC((1, -2))})


def test_10_unknown_intervenable_config_arguments_warn(gpt2):
    with pytest.warns(UserWarning, match="unknown argument.*'sorted_key'.*Did you mean 'sorted_keys'"):
        pv.IntervenableConfig({"layer": 0, "component": "block_output"}, sorted_key=["x"])


def test_found_by_the_property_suite_duplicate_base_units_and_negative_subspaces(gpt2):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
    base, src = tm.ids(1, 6, 1), tm.ids(1, 6, 2)
    with pytest.raises(pv.LocationError, match="list 3 twice"):  # which source wins was undefined
        im(base, [src], {"sources->base": ([[[1, 2]]], [[[3, 3]]])})
    im(base, [src], {"sources->base": ([[[1, 1]]], [[[2, 3]]])})  # reading a unit twice is fine
    with pytest.raises(pv.ShapeMismatchError, match="subspace index -1 is out of range"):  # was: the last feature
        im(base, [src], {"sources->base": 1}, subspaces=[[[-1]]])
