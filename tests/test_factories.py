"""pv.create_* helpers: eager GPT-2, local files first, the Hub only when allowed (mocked), clear errors."""
from __future__ import annotations

import pytest
import torch

import vene as pv
from vene.models.embedded import ModelNotAvailableError
from vene.models import factories

transformers = pytest.importorskip("transformers")


def _cfg():
    return transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                   bos_token_id=0, eos_token_id=0)


@pytest.mark.parametrize("factory", [pv.create_gpt2, pv.create_gpt2_lm])
def test_gpt2_is_eager_so_attentions_come_back(factory):
    with pytest.warns(UserWarning, match="tokenizer is None"):
        _, tok, model = factory(config=_cfg())
    assert tok is None
    assert model.config._attn_implementation == "eager"
    out = model(torch.tensor([[1, 2, 3, 4]]), output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == 2
    att = out.attentions[0]
    assert att.shape == (1, 2, 4, 4)
    torch.testing.assert_close(att.sum(-1), torch.ones(1, 2, 4))  # rows of probabilities
    assert torch.all(att.triu(1) == 0)                               # causal


class _Recorder:
    """Stands in for ``from_pretrained``: fails for local-only calls unless ``local`` says so."""

    def __init__(self, result, local: bool, hub: bool = True):
        self.calls: list[dict] = []
        self.result, self.local, self.hub = result, local, hub

    def __call__(self, name, **kw):
        self.calls.append(kw)
        if kw.get("local_files_only") and not self.local:
            raise OSError("not in the cache")
        if not kw.get("local_files_only") and not self.hub:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return self.result


def _patch(monkeypatch, model_rec, tok_rec):
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_rec)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_rec)


def test_local_files_are_used_first_and_the_hub_is_not_asked(monkeypatch):
    model = transformers.GPT2LMHeadModel(_cfg())
    m, t = _Recorder(model, local=True), _Recorder("TOKENIZER", local=True)
    _patch(monkeypatch, m, t)
    _, tok, got = pv.create_gpt2_lm("gpt2", allow_download=True)
    assert got is model and tok == "TOKENIZER"
    assert [c["local_files_only"] for c in m.calls] == [True]
    assert m.calls[0]["attn_implementation"] == "eager"
    assert [c["local_files_only"] for c in t.calls] == [True]
    assert not model.training


def test_the_hub_is_asked_when_allowed_and_nothing_is_local(monkeypatch):
    model = transformers.GPT2LMHeadModel(_cfg())
    m, t = _Recorder(model, local=False), _Recorder("TOKENIZER", local=False)
    _patch(monkeypatch, m, t)
    _, tok, got = pv.create_gpt2_lm("gpt2", allow_download=True)
    assert got is model and tok == "TOKENIZER"
    assert [c.get("local_files_only") for c in m.calls] == [True, None]
    assert m.calls[1]["attn_implementation"] == "eager"


def test_offline_environment_means_no_hub_call_and_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m, t = _Recorder(None, local=False), _Recorder(None, local=False)
    _patch(monkeypatch, m, t)
    with pytest.raises(ModelNotAvailableError, match="downloads are off") as err:
        pv.create_gpt2_lm("gpt2")
    assert "hf download gpt2" in str(err.value)
    assert len(m.calls) == 1  # only the local attempt


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    m, t = _Recorder(None, local=False, hub=False), _Recorder(None, local=False)
    _patch(monkeypatch, m, t)
    with pytest.raises(ModelNotAvailableError, match="Hub did not provide it"):
        pv.create_gpt2_lm("gpt2", allow_download=True)


def test_missing_tokenizer_is_an_error_not_none(monkeypatch):
    model = transformers.GPT2LMHeadModel(_cfg())
    m, t = _Recorder(model, local=True), _Recorder(None, local=False)
    _patch(monkeypatch, m, t)
    with pytest.raises(ModelNotAvailableError, match="tokenizer"):
        pv.create_gpt2_lm("gpt2", allow_download=False)


def test_downloads_allowed_reads_the_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert factories.downloads_allowed() is True
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert factories.downloads_allowed() is False
    assert factories.downloads_allowed(True) is True
