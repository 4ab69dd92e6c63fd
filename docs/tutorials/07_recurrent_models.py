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
# # Recurrent models: interventions at time steps
#
# In a transformer every position is computed in one call of a layer, so "position 3" is an
# index into one tensor. In a recurrent network the cell is *called once per time step*, and
# the state at step 3 feeds step 4. vene's unit `"t"` addresses these calls: the hook counts the
# cell's calls and acts only on the requested ones, per example; the other steps are left
# bit-identical. (pyvene's GRU tutorial zeroed every other step by mistake.)
#
# The built-in GRU (`pv.create_gru`, `create_gru_lm`, `create_gru_classifier`) has an explicit
# recurrence, so its cell is a module that fires once per step.

# %%
import torch

import vene as pv

torch.manual_seed(0)
_, _, gru = pv.create_gru(pv.GRUConfig(h_dim=16, n_layer=1))
gru.eval()
x = torch.rand(1, 8, 16)          # (batch, steps, features): an 8-step input sequence
y = torch.rand(1, 8, 16)
plain = gru(inputs_embeds=x).last_hidden_state
print(gru.cells)

# %% [markdown]
# ## Zero the state at one step
#
# `cell_output` is the hidden state the cell returns at a step. Zeroing it at step 3 leaves steps
# 0-2 untouched, makes step 3 zero, and changes every later step through the recurrence.

# %%
zero = pv.IntervenableModel({"component": "cell_output", "unit": "t",
                             "intervention_type": pv.ZeroIntervention}, gru)
with torch.no_grad():
    _, out = zero({"inputs_embeds": x}, unit_locations={"base": 3})
h = out.last_hidden_state
assert torch.equal(h[:, :3], plain[:, :3])
assert torch.equal(h[:, 3], torch.zeros_like(h[:, 3]))
print("steps changed:", [t for t in range(8) if not torch.equal(h[:, t], plain[:, t])])

# %% [markdown]
# The same by hand: a forward hook on the cell that counts its calls.

# %%
calls = {"n": 0}


def zero_step_3(module, args, output):
    step = calls["n"]
    calls["n"] += 1
    if step == 3:
        return torch.zeros_like(output)


handle = gru.cells[0].register_forward_hook(zero_step_3)
try:
    with torch.no_grad():
        by_hand = gru(inputs_embeds=x).last_hidden_state
finally:
    handle.remove()
assert torch.equal(by_hand, h)

# %% [markdown]
# ## Interchange across time
#
# A source's state at one step can be written into the base at another: `(6, 3)` reads the
# source's step 6 and writes it at the base's step 3. Batches take one list of steps per example.

# %%
swap = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, gru)
with torch.no_grad():
    _, moved = swap({"inputs_embeds": x}, [{"inputs_embeds": y}], {"sources->base": (6, 3)})
source_states = gru(inputs_embeds=y).last_hidden_state
assert torch.equal(moved.last_hidden_state[:, 3], source_states[:, 6])
assert torch.equal(moved.last_hidden_state[:, :3], plain[:, :3])

xb, yb = torch.rand(2, 8, 16), torch.rand(2, 8, 16)
with torch.no_grad():
    _, per_example = swap({"inputs_embeds": xb}, [{"inputs_embeds": yb}],
                          {"sources->base": ([[[6], [1]]], [[[3], [5]]])})
src_b = gru(inputs_embeds=yb).last_hidden_state
assert torch.equal(per_example.last_hidden_state[0, 3], src_b[0, 6])
assert torch.equal(per_example.last_hidden_state[1, 5], src_b[1, 1])
print("example 0: source step 6 -> base step 3; example 1: source step 1 -> base step 5")

# %% [markdown]
# ## Collecting states over time
#
# `CollectIntervention` with several steps returns them in order, `(batch, steps, features)`.

# %%
collect = pv.IntervenableModel({"component": "cell_output", "unit": "t",
                                "intervention_type": pv.CollectIntervention}, gru)
with torch.no_grad():
    (_, states), _ = collect({"inputs_embeds": x}, unit_locations={"base": [[0, 4, 7]]})
torch.testing.assert_close(states[0], plain[:, [0, 4, 7]])
print("collected", tuple(states[0].shape))
