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
# # Basics: collect, zero, add, interchange
#
# This first tutorial wraps a small GPT-2 (random weights, built from a config, so it runs
# anywhere in a second) and walks through the four things you do most with vene:
#
# 1. **collect** a representation,
# 2. **zero** it (or set it to any constant),
# 3. **add** a vector to it,
# 4. **interchange** it: take it from one run (the *source*) and write it into another (the *base*).
#
# Along the way it introduces the two ways of saying *where* an intervention acts:
# `unit_locations` (which positions, heads...) and `subspaces` (which features of the vector).
# Every result is checked against a plain PyTorch forward hook doing the same thing by hand.

# %%
import torch
from transformers import GPT2Config, GPT2Model

import vene as pv

torch.manual_seed(0)
config = GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                    bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
gpt2 = GPT2Model(config).eval()

# two "prompts" of six token ids each; think "The capital of Spain is" / "... Italy is"
base = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 9]])}
source = {"input_ids": torch.tensor([[5, 17, 3, 77, 8, 9]])}

# %% [markdown]
# ## A reference made by hand
#
# To check vene we need the same thing done without it: a forward hook on GPT-2's block 1 that
# records its output (the residual stream after block 1) and optionally replaces it.


# %%
def run_with_hook(inputs, layer, edit=None):
    """Run gpt2 on `inputs`; return (last hidden state, block `layer`'s output before `edit`)."""
    seen = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        seen["h"] = hidden.detach().clone()
        if edit is not None:
            hidden = edit(hidden.clone())
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = gpt2.h[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = gpt2(**inputs).last_hidden_state
    finally:
        handle.remove()
    return out, seen["h"]


# %% [markdown]
# ## 1. Collect
#
# An intervention site is described by a dict (a `RepresentationConfig` in full): the layer, the
# component (`block_output` is the residual stream leaving a block; `mlp_output`,
# `attention_output`, `head_attention_value_output`, ... are others) and the intervention type.
# `CollectIntervention` reads and leaves the forward pass untouched. `unit_locations={"base": 3}`
# picks position 3 of the base.

# %%
collector = pv.IntervenableModel(
    {"layer": 1, "component": "block_output", "intervention_type": pv.CollectIntervention}, model=gpt2)
with torch.no_grad():
    (_, collected), _ = collector(base, unit_locations={"base": 3})

_, h1 = run_with_hook(base, layer=1)
print("collected:", [tuple(t.shape) for t in collected])
torch.testing.assert_close(collected[0], h1[:, 3:4])   # (batch, units, features)

# %% [markdown]
# The result follows pyvene's layout, `((original_outputs, collected_activations),
# intervened_outputs)`. `return_dict=True` gives a typed object instead:

# %%
with torch.no_grad():
    result = collector(base, unit_locations={"base": [[1, 3]]}, return_dict=True)
print(type(result).__name__, result.collected_activations[0].shape)   # two positions now
torch.testing.assert_close(result.collected_activations[0], h1[:, [1, 3]])

# %% [markdown]
# `unit_locations={"base": [[1, 3]]}` is the canonical form: one list of positions per example
# of the batch. A single int, or a flat list, is a shorthand that every example shares.
#
# ## 2. Zero (and constants)
#
# `ZeroIntervention` sets the selected units to zero. Any intervention that needs no source
# (zero, noise, a constant `source_representation`) runs the base only.

# %%
zero = pv.IntervenableModel(
    {"layer": 1, "component": "block_output", "intervention_type": pv.ZeroIntervention}, model=gpt2)
with torch.no_grad():
    _, zeroed = zero(base, unit_locations={"base": 3})


def set_pos3_to_zero(h):
    h[:, 3] = 0
    return h


expected, _ = run_with_hook(base, 1, set_pos3_to_zero)
torch.testing.assert_close(zeroed.last_hidden_state, expected)
print("zeroing position 3 matches the hand-written hook")

# %% [markdown]
# ### Subspaces: only some features
#
# `subspaces` selects features of the vector, per example. Here only features 0-7 of position 3
# are zeroed; the other 24 keep their values.

# %%
with torch.no_grad():
    _, part = zero(base, unit_locations={"base": 3}, subspaces=[[list(range(8))]])


def zero_first_8(h):
    h[:, 3, :8] = 0
    return h


torch.testing.assert_close(part.last_hidden_state, run_with_hook(base, 1, zero_first_8)[0])

# %% [markdown]
# ## 3. Add a vector
#
# `AdditionIntervention` adds its source. Instead of a source *run*, give the vector itself with
# `source_representations` (it broadcasts over the selected units).

# %%
adder = pv.IntervenableModel(
    {"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention}, model=gpt2)
direction = torch.randn(config.n_embd)
with torch.no_grad():
    _, added = adder(base, unit_locations={"base": [[2, 3]]}, source_representations=direction)


def add_direction(h):
    h[:, [2, 3]] += direction
    return h


torch.testing.assert_close(added.last_hidden_state, run_with_hook(base, 1, add_direction)[0])
print("adding a direction at positions 2 and 3 matches")

# %% [markdown]
# ## 4. Interchange
#
# The default intervention, `VanillaIntervention`, is an interchange: the base's representation
# at the chosen units is replaced by the source's. Pass the sources as a list (one per group of
# interventions; here one) and say where to read and where to write:
# `{"sources->base": (source_units, base_units)}`, or one value used on both sides.

# %%
swap = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=gpt2)
with torch.no_grad():
    original, swapped = swap(base, [source], {"sources->base": 3}, output_original_output=True)

_, h1_source = run_with_hook(source, 1)


def write_source(h):
    h[:, 3] = h1_source[:, 3]
    return h


torch.testing.assert_close(swapped.last_hidden_state, run_with_hook(base, 1, write_source)[0])
torch.testing.assert_close(original.last_hidden_state, run_with_hook(base, 1)[0])
changed = (swapped.last_hidden_state - original.last_hidden_state).abs().sum(-1)[0]
print("positions changed by the swap:", (changed > 1e-6).nonzero().flatten().tolist())

# %% [markdown]
# Positions before 3 cannot change (GPT-2 is causal); positions 3 to 5 do.
#
# Reading and writing different units: a tuple `(source_units, base_units)`. Here the source's
# position 3 is written into the base's position 4.

# %%
with torch.no_grad():
    _, moved = swap(base, [source], {"sources->base": ([[3]], [[4]])})


def write_source_3_at_4(h):
    h[:, 4] = h1_source[:, 3]
    return h


torch.testing.assert_close(moved.last_hidden_state, run_with_hook(base, 1, write_source_3_at_4)[0])

# %% [markdown]
# ## Heads as units
#
# Components whose name starts with `head_` are split into attention heads, and the unit
# `"h.pos"` takes *(heads, positions)*. Here head 2 of layer 0's attention value output at position
# 3 is swapped; `unit_locations` then holds `[heads, positions]` per side.

# %%
heads = pv.IntervenableModel(
    {"layer": 0, "component": "head_attention_value_output", "unit": "h.pos"}, model=gpt2)
with torch.no_grad():
    _, head_swapped = heads(base, [source], {"sources->base": ([[[2]], [[3]]], [[[2]], [[3]]])})
delta = (head_swapped.last_hidden_state - gpt2(**base).last_hidden_state).abs().sum(-1)[0]
assert float(delta[:3].max()) < 1e-6 and float(delta[3]) > 0
print("head 2 at position 3 changed positions", (delta > 1e-6).nonzero().flatten().tolist())

# %% [markdown]
# ## What you have seen
#
# * an `IntervenableModel` wraps a model with one or more sites described by dicts;
# * a call takes the base inputs, the sources (or `source_representations`), `unit_locations`
#   and `subspaces`;
# * the model itself is never modified: after each call our hooks are gone.

# %%
assert not gpt2.h[1]._forward_hooks, "vene left a hook behind"
