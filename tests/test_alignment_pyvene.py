"""``train_alignment`` / ``eval_alignment`` run pyvene's Intervention_Training tutorial code unchanged.

The collator, loss and metrics functions below follow the tutorial's signatures and conventions
(written in our own code): locations and subspaces come as batch fields, ``compute_metrics`` gets
one-element lists ``[logits]``, ``[labels]`` and returns a bare number. The interchange
intervention accuracy (IIA) that ``eval_alignment`` reports is checked against a hand-written loop
that applies the learned low-rank swap with plain PyTorch hooks.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import CrossEntropyLoss
from torch.utils.data import DataLoader

import tiny_models as tm
import vene as pv
from vene.models.configuration_intervenable_model import IntervenableConfig, RepresentationConfig
from vene.models.intervenable_base import IntervenableModel
from vene.models.interventions import LowRankRotatedSpaceIntervention

SEQ = 6
POS = SEQ - 2  # the position whose logits predict the last token
LAYER = 2      # the last block: a full swap there gives the source's prediction exactly
RANK = 16
BATCH = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and the machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the tutorial's three functions (same signatures and conventions) ---------------------------

def inputs_collator(inputs):
    for k, v in inputs.items():
        if "->" in k:
            inputs[k] = v.tolist()
        elif "subspace" in k:
            inputs[k] = [v.tolist()]
        elif v is not None and isinstance(v, torch.Tensor):
            inputs[k] = v.to("cpu")
    return inputs


def compute_loss(logits, labels):
    shift_logits = logits[..., :-1, :].contiguous().view(-1, tm.VOCAB)
    shift_labels = labels[..., 1:].contiguous().view(-1)
    return CrossEntropyLoss()(shift_logits, shift_labels.to(shift_logits.device))


def compute_metrics(eval_preds, eval_labels):
    total_count, correct_count = 0, 0
    for eval_pred, eval_label in zip(eval_preds, eval_labels):
        actual = eval_label[:, -1]
        pred = torch.argmax(eval_pred[:, -2], dim=-1)
        correct = actual == pred
        total_count += len(correct)
        correct_count += correct.sum().tolist()
    accuracy = round(correct_count / total_count, 2)
    return {"accuracy": accuracy}["accuracy"]


# -- data: counterfactual labels = the source's own next-token prediction at POS ---------------

def _dataset(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, tm.VOCAB, (n, SEQ), generator=g)
    src = torch.randint(1, tm.VOCAB, (n, SEQ), generator=g)
    with torch.no_grad():
        target = model(input_ids=src).logits[:, POS].argmax(-1)
    rows = []
    for i in range(n):
        labels = torch.full((SEQ,), -100)
        labels[-1] = target[i]
        rows.append({
            "input_ids": base[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "source_input_ids": src[i], "source_attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": labels,
            "source_0->base.0.pos": torch.tensor([POS]), "source_0->base.1.pos": torch.tensor([POS]),
            "subspaces": torch.tensor([0]),
        })
    return rows


def _tutorial_setup():
    model = tm.gpt2(lm=True)
    config = IntervenableConfig(
        representations=[RepresentationConfig(LAYER, "block_output", "pos", 1, low_rank_dimension=RANK,
                                              subspace_partition=[[0, RANK]])],
        intervention_types=LowRankRotatedSpaceIntervention,
    )
    intervenable = IntervenableModel(config, model)
    intervenable.set_device("cpu")
    intervenable.disable_model_gradients()
    train = DataLoader(_dataset(model, 256, seed=1), batch_size=BATCH)
    test = DataLoader(_dataset(model, 200, seed=2), batch_size=BATCH)  # a short last batch (8)
    return model, intervenable, train, test


def _hand_iia(model, intervention, loader):
    """The tutorial metric, computed with plain hooks: per batch, round(correct / n, 2), then the
    batch-size-weighted average; also the exact accuracy over all examples."""
    W = intervention.rotate_layer.weight.detach()  # (n_embd, RANK)
    block = model.transformer.h[LAYER]
    per_batch, sizes, correct = [], [], 0
    with torch.no_grad():
        for batch in loader:
            store = {}
            h = block.register_forward_hook(lambda m, a, o: store.__setitem__("s", tm.main_tensor(o)[:, POS].clone()))
            model(input_ids=batch["source_input_ids"])
            h.remove()

            def swap(m, a, o):
                hidden = tm.main_tensor(o).clone()
                b = hidden[:, POS]
                hidden[:, POS] = b + (store["s"] - b) @ W @ W.T
                return (hidden,) + tuple(o[1:]) if isinstance(o, tuple) else hidden

            h = block.register_forward_hook(swap)
            logits = model(input_ids=batch["input_ids"]).logits
            h.remove()
            ok = (logits[:, POS].argmax(-1) == batch["labels"][:, -1])
            per_batch.append(round(int(ok.sum()) / len(ok), 2))
            sizes.append(len(ok))
            correct += int(ok.sum())
    weighted = sum(a * n for a, n in zip(per_batch, sizes)) / sum(sizes)
    return weighted, correct / sum(sizes)


def test_tutorial_code_trains_and_evaluates_unchanged():
    model, intervenable, train, test = _tutorial_setup()
    inter = intervenable.interventions[intervenable.sorted_keys[0]]

    before = intervenable.eval_alignment(eval_dataloader=test, compute_metrics=compute_metrics,
                                         inputs_collator=inputs_collator)
    hand_before, exact_before = _hand_iia(model, inter, test)
    assert isinstance(before, float)
    assert before == pytest.approx(hand_before, abs=1e-12)
    assert before == pytest.approx(exact_before, abs=0.005)  # per-batch rounding only

    history = intervenable.train_alignment(train_dataloader=train, compute_loss=compute_loss,
                                           compute_metrics=compute_metrics, inputs_collator=inputs_collator,
                                           lr=2e-2, epochs=10)
    assert len(history["loss"]) == len(train) * 10
    assert len(history["metrics"]) == len(train) * 10 and all(isinstance(m, float) for m in history["metrics"])

    after = intervenable.eval_alignment(eval_dataloader=test, compute_metrics=compute_metrics,
                                        inputs_collator=inputs_collator)
    hand_after, exact_after = _hand_iia(model, inter, test)
    assert after == pytest.approx(hand_after, abs=1e-12)
    assert after == pytest.approx(exact_after, abs=0.005)
    assert after > before + 0.3 and after >= 0.6
    # pyvene-style training never touched (or computed gradients for) the model's weights
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_pyvene_positional_call_and_readme_keyword():
    """pyvene's README calls ``eval_alignment(train_dataloader=...)``; positional arguments follow
    pyvene's order (loader, compute_loss, compute_metrics, inputs_collator)."""
    model, intervenable, train, test = _tutorial_setup()
    a = intervenable.eval_alignment(test, compute_metrics, inputs_collator)
    b = intervenable.eval_alignment(train_dataloader=test, compute_metrics=compute_metrics, inputs_collator=inputs_collator)
    assert a == b
    hist = intervenable.train_alignment(train, compute_loss, compute_metrics, inputs_collator, epochs=1)
    assert len(hist["loss"]) == len(train)


def test_dict_metrics_are_averaged_per_key_weighted_by_batch_size():
    model, intervenable, _, test = _tutorial_setup()
    seen = []

    def metrics(preds, labels):
        assert isinstance(preds, list) and isinstance(labels, list) and len(preds) == len(labels) == 1
        seen.append(preds[0].shape[0])
        return {"n": float(preds[0].shape[0]), "first_label": labels[0][0, -1]}

    res = intervenable.eval_alignment(test, metrics, inputs_collator)
    assert seen == [32] * 6 + [8]
    assert res["n"] == pytest.approx((32 * 32 * 6 + 8 * 8) / 200)
    firsts = [int(b["labels"][0, -1]) for b in test]
    assert res["first_label"] == pytest.approx(sum(f * n for f, n in zip(firsts, seen)) / 200)


def test_vene_tensor_form_and_bad_metric_returns():
    model, intervenable, _, test = _tutorial_setup()
    res = intervenable.eval_alignment(test, lambda lg, y: (lg[:, -2].argmax(-1) == y[:, -1]).float().mean(),
                                      inputs_collator, metrics_args="tensors")
    want = intervenable.eval_alignment(test, compute_metrics, inputs_collator)
    assert res == pytest.approx(want, abs=0.005)
    with pytest.raises(pv.ConfigError, match="number or a dict"):
        intervenable.eval_alignment(test, lambda p, y: "high", inputs_collator)
    with pytest.raises(pv.ConfigError, match="'acc' is list"):
        intervenable.eval_alignment(test, lambda p, y: {"acc": [1, 2]}, inputs_collator)
    with pytest.raises(pv.ConfigError, match="metrics_args"):
        intervenable.eval_alignment(test, compute_metrics, inputs_collator, metrics_args="list")


def test_batch_fields_without_a_collator():
    """Tensor location fields and a ``(batch, k)`` subspaces tensor work without a collator."""
    model, intervenable, _, test = _tutorial_setup()
    with_collator = intervenable.eval_alignment(test, compute_metrics, inputs_collator)
    without = intervenable.eval_alignment(test, compute_metrics)
    assert with_collator == without


def test_training_runs_the_model_in_eval_mode_and_restores_it():
    model, intervenable, train, _ = _tutorial_setup()
    model.train()
    modes = []
    h = model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    try:
        intervenable.train_alignment(train, compute_loss, None, inputs_collator, epochs=1)
    finally:
        h.remove()
    assert modes and not any(modes)
    assert model.training


def test_schedule_is_transformers_linear_warmup():
    transformers = pytest.importorskip("transformers")
    from vene.training.alignment import _linear_warmup

    for total, warm in [(10, 1.0), (80, 8.0), (7, 0.7), (20, 5)]:
        p = torch.nn.Parameter(torch.zeros(1))
        ours = _linear_warmup(torch.optim.SGD([p], lr=1.0), warm, total)
        q = torch.nn.Parameter(torch.zeros(1))
        ref = transformers.get_linear_schedule_with_warmup(torch.optim.SGD([q], lr=1.0), warm, total)
        for _ in range(total):
            assert ours.get_last_lr() == pytest.approx(ref.get_last_lr())
            ours.optimizer.step(), ref.optimizer.step()
            ours.step(), ref.step()
