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
# # Trainable interventions and distributed alignment search (DAS)
#
# Some interventions have parameters: a learned rotation, a low-rank subspace, a mask. Training
# them answers questions such as *"is there a direction in this layer that stores variable a?"*.
# That is distributed alignment search: learn a subspace such that swapping it between two runs
# changes the output exactly as swapping the variable would.
#
# To know the right answer, we build a model with a planted structure: its hidden layer stores
# `a` and `b` along two random orthogonal directions of a 6-d space, and the output is `a * b`.
# DAS should find the direction of `a`.

# %%
import torch
from torch import nn

import vene as pv

torch.manual_seed(0)
Q, _ = torch.linalg.qr(torch.randn(6, 6))       # a random rotation; columns 0 and 1 carry a and b


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 6, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(Q[:, :2])

    def forward(self, x):                      # x: (batch, 1, 2) holding (a, b)
        h = self.hidden(x)                     # (batch, 1, 6)
        z = h @ Q                              # back to (a, b, 0, 0, 0, 0)
        return z[..., 0] * z[..., 1]


model = Product().eval()

# %% [markdown]
# ## A one-dimensional DAS intervention
#
# `LowRankRotatedSpaceIntervention` with `low_rank_dimension=1` learns one unit vector `w`; the
# interchange replaces the base's component along `w` by the source's:
# `h' = h_base + ((h_source - h_base) · w) w`. Any module path can be a component; here the
# output of `hidden`. Wrapping freezes the model, so only the intervention trains.

# %%
das = pv.IntervenableModel({"component": "hidden.output", "low_rank_dimension": 1,
                            "intervention_type": pv.LowRankRotatedSpaceIntervention}, model)
print("trainable parameters:", das.count_parameters(), "| model frozen:",
      not any(p.requires_grad for p in model.parameters()))


def batch(n):
    x = torch.randn(n, 1, 2)
    return x


optimizer = torch.optim.Adam(das.get_trainable_parameters(), lr=0.05)
for step in range(300):
    xb, xs = batch(64), batch(64)
    # the counterfactual: what the output would be with a taken from the source
    target = xs[:, 0, 0] * xb[:, 0, 1]
    _, out = das({"x": xb}, [{"x": xs}], {"sources->base": 0})
    loss = nn.functional.mse_loss(out, target[:, None])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"final interchange loss: {loss.item():.2e}")

# %% [markdown]
# The learned direction should be the planted one (up to sign):

# %%
w = next(iter(das.interventions.values())).rotate_layer.weight[:, 0].detach()
cosine = float(w @ Q[:, 0])
print(f"|cos(learned, planted a)| = {abs(cosine):.4f}, |cos(learned, planted b)| = {abs(float(w @ Q[:, 1])):.4f}")
assert abs(cosine) > 0.99 and loss.item() < 1e-3

# %% [markdown]
# ## A full rotation and subspaces
#
# `RotatedSpaceIntervention` learns a full `n x n` rotation. Which rotated coordinates are
# swapped is chosen per call with `subspaces` (or once with `set_interchange_dim`). Before
# training, swapping *all* coordinates is an ordinary interchange, whatever the rotation:

# %%
rotation = pv.IntervenableModel({"component": "hidden.output",
                                 "intervention_type": pv.RotatedSpaceIntervention}, model)
xb, xs = batch(8), batch(8)
with torch.no_grad():
    _, all_swapped = rotation({"x": xb}, [{"x": xs}], {"sources->base": 0})
    _, two_swapped = rotation({"x": xb}, [{"x": xs}], {"sources->base": 0}, subspaces=[[0, 1]] * 8)
torch.testing.assert_close(all_swapped, model(xs))      # everything swapped: the source's output
print("swapping every rotated coordinate reproduces the source run")
print("swapping two of six random coordinates gives something in between:",
      bool((two_swapped - model(xs)).abs().max() > 1e-3))

# %% [markdown]
# ## Getting the trained weights out
#
# `get_trainable_parameters()` lists what an optimiser should update (shared and linked weights
# once; annealed temperatures are left out). `save` / `load` keep them (tutorial 02).

# %%
names = [n for n, p in das.interventions.named_parameters() if p.requires_grad]
print("parameters:", names)
