"""Fast version of examples/hierarchical_equality.py: DAS finds WX/YZ where the MLP computes them."""
from __future__ import annotations

import pathlib
import random
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import hierarchical_equality as he  # noqa: E402


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and contention)
    yield
    torch.set_num_threads(n)


def test_das_aligns_wx_and_yz_at_the_first_layer(one_thread):
    s = he.Settings(seed=0, das_train=6000, das_epochs=4, das_test=1000)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    cm = he.equality_causal_model(s)
    model = he.train_mlp(cm, s)
    # the MLP solves the task
    test_f = cm.generate_factual_dataset(1000, sampler=he.balanced_sampler(cm))
    with torch.no_grad():
        pred = model(inputs_embeds=torch.stack([d["input_ids"] for d in test_f])).logits.argmax(-1)
    assert (pred == torch.stack([d["labels"] for d in test_f]).view(-1).long()).float().mean() >= 0.98
    train = he.counterfactuals(cm, s.das_train, s.das_batch)
    test = he.counterfactuals(cm, s.das_test, s.das_batch)
    assert {b["intervention_id"] for b in test} == {0, 1, 2}
    iia = {layer: he.das_at_layer(model, layer, train, test, s) for layer in (0, 1)}
    assert iia[0] >= 0.95
    # at layer 1 the information is still linearly decodable, but no longer separable by DAS
    assert iia[1] <= 0.8
    assert he.probe_accuracy(model, cm, 1, s, n=2000) >= 0.95
