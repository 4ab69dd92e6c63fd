"""The Hugging Face Hub path, offline: the real ``HfApi`` methods are stubbed at the transport
boundary (our arguments are bound to their real signatures), uploads land in a folder laid out
like the Hub cache, and loading goes through the real ``snapshot_download`` in offline mode."""
from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import os
import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl

import serialization_cases as C
import tiny_models
import vene as pv
from vene.hub import is_explicit_local_path
from vene.serialization import ARTIFACT_FILES



class FakeHub:
    """Stands in for the Hub server. Every call made on ``HfApi`` is recorded with its arguments
    bound to the real method's signature (a wrong argument fails as it would against the Hub)."""

    def __init__(self, monkeypatch, cache_dir, user="me"):
        self.cache, self.user, self.calls = str(cache_dir), user, []
        self.uploaded: list[list[str]] = []
        for name in ("create_repo", "create_branch", "upload_folder"):
            monkeypatch.setattr(HfApi, name, self._stub(name, getattr(HfApi, name)))

    def _stub(self, name, real):
        def stub(api, *args, **kwargs):
            bound = inspect.signature(real).bind(api, *args, **kwargs)
            arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
            self.calls.append((name, arguments))
            return getattr(self, "_" + name)(**arguments)
        return stub

    def names(self):
        return [c[0] for c in self.calls]

    def _create_repo(self, repo_id, **kw):
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else self.user + '/' + repo_id}")

    def _create_branch(self, repo_id, **kw):
        return None

    def _upload_folder(self, repo_id, folder_path, revision=None, allow_patterns=None, **kw):
        files = sorted(f for f in os.listdir(folder_path)
                       if any(fnmatch.fnmatch(f, p) for p in (allow_patterns or ["*"])))
        self.uploaded.append(files)
        digest = hashlib.sha1()
        for f in files:
            with open(os.path.join(folder_path, f), "rb") as fh:
                digest.update(fh.read())
        commit = digest.hexdigest()
        self.add_snapshot(repo_id, {f: os.path.join(folder_path, f) for f in files}, commit, revision or "main")
        return f"https://huggingface.co/{repo_id}/commit/{commit}"

    def add_snapshot(self, repo_id, files, commit="0" * 40, ref="main"):
        """Lay ``files`` (name -> path) out as a cached snapshot of ``repo_id`` at ``ref``."""
        root = os.path.join(self.cache, "models--" + repo_id.replace("/", "--"))
        snap = os.path.join(root, "snapshots", commit)
        os.makedirs(snap, exist_ok=True)
        for name, src in files.items():
            shutil.copy(src, os.path.join(snap, name))
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        with open(os.path.join(root, "refs", ref), "w") as f:
            f.write(commit)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests must run with HF_HUB_OFFLINE=1"
    return FakeHub(monkeypatch, tmp_path / "hf-cache")


def test_push_is_one_commit_of_the_whole_folder(hub):
    im = C.build("RotatedSpaceIntervention")
    result = im.push_to_hub("me/das-run", private=True, commit_message="DAS at layer 1")
    assert hub.names() == ["create_repo", "upload_folder"]
    create, upload = hub.calls[0][1], hub.calls[1][1]
    assert create["repo_id"] == "me/das-run" and create["exist_ok"] is True and create["private"] is True
    assert create["repo_type"] == "model"
    assert upload["repo_id"] == "me/das-run" and upload["commit_message"] == "DAS at layer 1"
    assert upload["repo_type"] == "model" and upload["revision"] is None
    assert hub.uploaded == [sorted(ARTIFACT_FILES)]
    assert result.startswith("https://huggingface.co/me/das-run/commit/")


@pytest.mark.parametrize("name", C.concrete_types())
def test_round_trip_through_the_hub_is_bit_identical(hub, name):
    im = C.build(name)
    C.perturb(im)
    base, src = C.inputs()
    ref = C.run(im, base, src)
    im.push_to_hub(f"me/{name}")
    loaded = pv.IntervenableModel.from_pretrained(tiny_models.gpt2(), f"me/{name}", cache_dir=hub.cache)
    C.assert_same_state(im, loaded)
    C.assert_same_run(ref, C.run(loaded, base, src))


def test_pyvene_style_save_to_hub_and_load(hub, tmp_path):
    im = C.build("LowRankRotatedSpaceIntervention")
    C.perturb(im)
    base, src = C.inputs()
    ref = C.run(im, base, src)
    im.save(tmp_path / "local", save_to_hf_hub=True, hf_repo_name="my-awesome-model")
    assert hub.names() == ["create_repo", "upload_folder"]
    assert hub.calls[1][1]["repo_id"] == "me/my-awesome-model"  # the namespaced id create_repo returned
    assert hub.calls[1][1]["folder_path"] == str(tmp_path / "local")
    loaded = pv.IntervenableModel.load("me/my-awesome-model", tiny_models.gpt2(), cache_dir=hub.cache)
    C.assert_same_run(ref, C.run(loaded, base, src))


def test_revision_goes_to_a_branch_and_loads_back(hub):
    im = C.build("VanillaIntervention")
    im.push_to_hub("me/run", revision="v2")
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[1][1]["branch"] == "v2" and hub.calls[1][1]["exist_ok"] is True
    assert hub.calls[2][1]["revision"] == "v2"
    loaded = pv.IntervenableModel.from_pretrained(tiny_models.gpt2(), "me/run", revision="v2", cache_dir=hub.cache)
    assert loaded.sorted_keys == im.sorted_keys
    with pytest.raises(pv.ArtifactNotFoundError):  # nothing on main
        pv.IntervenableModel.from_pretrained(tiny_models.gpt2(), "me/run", cache_dir=hub.cache)


def test_hub_errors_propagate(hub, monkeypatch):
    class Boom(Exception):
        pass

    err = Boom("403 Forbidden")

    def refuse(api, **kwargs):
        raise err

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    im = C.build("VanillaIntervention")
    with pytest.raises(Boom) as caught:
        im.push_to_hub("me/run")
    assert caught.value is err
    monkeypatch.setattr(HfApi, "create_repo", lambda api, *a, **k: refuse(api))
    with pytest.raises(Boom):
        im.push_to_hub("me/run")


@pytest.mark.parametrize("path", ["./missing-run", "../missing-run", "/nonexistent/run", "~/vene-missing-run",
                                  "runs/exp1/final", "C:\\runs\\exp1", "runs\\exp1"])
def test_an_explicit_local_path_that_does_not_exist_is_never_downloaded(path, monkeypatch):
    def no_download(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    assert is_explicit_local_path(path)
    with pytest.raises(pv.ArtifactNotFoundError, match="does not exist"):
        pv.IntervenableModel.load(path, tiny_models.gpt2())


def test_repo_ids_are_not_local_paths():
    assert not is_explicit_local_path("me/run") and not is_explicit_local_path("gpt2")


def test_uncached_or_invalid_repo_id_is_a_clear_error(hub):
    with pytest.raises(pv.ArtifactNotFoundError, match="not in the local cache"):
        pv.IntervenableModel.load("me/never-pushed", tiny_models.gpt2(), cache_dir=hub.cache)
    with pytest.raises(pv.ArtifactNotFoundError, match="valid Hub repo id"):
        pv.IntervenableModel.load("not a repo!", tiny_models.gpt2(), cache_dir=hub.cache)


def test_from_huggingface_hub_prefers_the_hub_over_a_local_folder(hub, tmp_path, monkeypatch):
    im = C.build("ZeroIntervention")
    im.push_to_hub("me/run")
    monkeypatch.chdir(tmp_path)
    os.makedirs("me/run")  # a local folder with the same name, holding no artifact
    with pytest.raises(pv.ArtifactNotFoundError, match="intervention_config.json"):
        pv.IntervenableModel.load("me/run", tiny_models.gpt2(), cache_dir=hub.cache)
    loaded = pv.IntervenableModel.load("me/run", tiny_models.gpt2(), from_huggingface_hub=True, cache_dir=hub.cache)
    assert loaded.sorted_keys == im.sorted_keys


def test_pyvene_artifact_from_the_hub_cache(hub):
    case = os.path.join(C.FIXTURES, "rotated")
    hub.add_snapshot("stanfordnlp/das-tiny", {f: os.path.join(case, f) for f in os.listdir(case)})
    im = pv.IntervenableModel.load("stanfordnlp/das-tiny", C.fixture_model(), cache_dir=hub.cache)
    out, exp = C.fixture_call(im, "rotated")
    torch.testing.assert_close(out, exp["last_hidden_state"], atol=1e-5, rtol=0)


def test_model_card(tmp_path):
    model = tiny_models.gpt2()
    model.config._name_or_path = "openai-community/gpt2"
    im = pv.IntervenableModel([
        {"layer": 1, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention},
        {"layer": 2, "component": "mlp_output", "intervention_type": pv.VanillaIntervention},
    ], model)
    im.save(tmp_path / "a")
    card = ModelCard.load(str(tmp_path / "a" / "README.md"))
    assert card.data.library_name == "vene" and card.data.base_model == "openai-community/gpt2"
    assert set(card.data.tags) == {"vene", "interventions", "RotatedSpaceIntervention", "VanillaIntervention"}
    for key in im.sorted_keys:
        assert f"`{key}`" in card.text
    assert "`h.1.output`" in card.text and "`h.2.mlp.output`" in card.text
    with open(tmp_path / "a" / "intervention_config.json") as f:
        assert json.load(f)["base_model"]["name_or_path"] == "openai-community/gpt2"
