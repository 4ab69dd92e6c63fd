# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Interchange intervention training with a `CausalModel`
#
# DAS (tutorial 04) *searches* a frozen network for a variable. Interchange intervention training
# (IIT) goes the other way: it *trains the network* so that a chosen piece of its hidden state
# behaves like a variable of a high-level causal model. The training signal is the causal
# model's counterfactual: "if `S` took the value it has in the source, the output would be ...".
#
# The task: three bits `A`, `B`, `C`; an intermediate `S = A xor B`; the output `O = S xor C`.
# We train a small MLP so that the first 8 features of its first layer *are* `S`.

# %%
import random

import torch
import torch.nn.functional as F

import vene as pv

random.seed(0)
torch.manual_seed(0)

# %% [markdown]
# ## The causal model
#
# A `CausalModel` takes variables, their possible values, their parents and a function per
# variable. Input variables have no parents (their function gives a default value).
# `input_function` turns a setting into the network's input: here ±1 for each bit, zero-padded
# to the MLP's width of 16.

# %%
width = 16
causal = pv.CausalModel(
    variables=["A", "B", "C", "S", "O"],
    values={"A": [0, 1], "B": [0, 1], "C": [0, 1], "S": [0, 1], "O": [0, 1]},
    parents={"A": [], "B": [], "C": [], "S": ["A", "B"], "O": ["S", "C"]},
    functions={"A": lambda: 0, "B": lambda: 0, "C": lambda: 0,
               "S": lambda a, b: a ^ b, "O": lambda s, c: s ^ c},
    input_function=lambda s: torch.tensor([2.0 * s[v] - 1 for v in "ABC"] + [0.0] * (width - 3)),
)
setting = causal.run_forward({"A": 1, "B": 0, "C": 1})
print("A=1, B=0, C=1 ->", {k: setting[k] for k in ("S", "O")})
# the counterfactual IIT trains on: S taken from another input
print("with S from (A=1, B=1):", causal.run_interchange({"A": 1, "B": 0, "C": 1},
                                                        {"S": {"A": 1, "B": 1, "C": 0}})["O"])

# %% [markdown]
# `generate_counterfactual_dataset` draws a base input and, for the intervened variable, a
# source input where it takes the sampled value; the label is the output after the interchange.
# Batches share one intervention, as a training loop expects.

# %%
data = causal.generate_counterfactual_dataset(
    4096, intervention_id=0, batch_size=64,
    intervention_sampler=lambda: {"S": random.choice([0, 1])})
print({k: tuple(v.shape) for k, v in data[0].items()})


def batches(examples, size=64):
    for i in range(0, len(examples), size):
        chunk = examples[i:i + size]
        yield {"input_ids": torch.stack([d["input_ids"] for d in chunk]),
               "source_input_ids": torch.stack([d["source_input_ids"] for d in chunk]),
               "labels": torch.stack([d["labels"] for d in chunk]).view(-1).long()}


train, test = list(batches(data[:3584])), list(batches(data[3584:]))

# %% [markdown]
# ## The network and the alignment
#
# `create_mlp_classifier` builds vene's small MLP (the same one pyvene ships). The intervention
# swaps features 0-7 of layer 0's output between the source and base runs. Wrapping freezes the
# model; `enable_model_gradients()` unfreezes it, because in IIT the *model* is trained.

# %%
_, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=width, n_layer=2, num_classes=2, pdrop=0.0))
iit = pv.IntervenableModel({"layer": 0, "component": "block_output",
                            "subspace_partition": [[0, 8], [8, width]]}, mlp)
iit.enable_model_gradients()


def add_subspace(batch):
    # swap partition 0 (features 0-7) of every example
    return {**batch, "subspaces": [[[0]] * batch["labels"].shape[0]]}


def accuracy(preds, labels):
    correct = sum(int((p.argmax(-1) == y).sum()) for p, y in zip(preds, labels))
    return {"accuracy": correct / sum(len(y) for y in labels)}


before = pv.training.eval_alignment(iit, test, accuracy, add_subspace, input_key="inputs_embeds",
                                    progress=False)
history = pv.training.train_alignment(
    iit, train, lambda logits, labels: F.cross_entropy(logits, labels), inputs_collator=add_subspace,
    lr=0.02, epochs=6, warm_up_steps=0, input_key="inputs_embeds", progress=False)
after = pv.training.eval_alignment(iit, test, accuracy, add_subspace, input_key="inputs_embeds",
                                   progress=False)
print(f"interchange intervention accuracy: {before['accuracy']:.2f} before, {after['accuracy']:.2f} after")
assert after["accuracy"] > 0.95

# %% [markdown]
# The model also learnt the task itself (IIT examples whose source has the base's `S` are
# ordinary examples), and swapping the *other* half of layer 0 does not carry `S`:

# %%
factual = causal.generate_factual_dataset(512)
x = torch.stack([d["input_ids"] for d in factual])
y = torch.stack([d["labels"] for d in factual]).view(-1)
with torch.no_grad():
    task_acc = float((mlp(inputs_embeds=x).logits.argmax(-1) == y).float().mean())
print(f"task accuracy without intervention: {task_acc:.2f}")


def other_half(batch):
    return {**batch, "subspaces": [[[1]] * batch["labels"].shape[0]]}


wrong = pv.training.eval_alignment(iit, test, accuracy, other_half, input_key="inputs_embeds", progress=False)
print(f"accuracy against the S-counterfactual when swapping features 8-15: {wrong['accuracy']:.2f}")
assert task_acc > 0.95 and wrong["accuracy"] < 0.8
