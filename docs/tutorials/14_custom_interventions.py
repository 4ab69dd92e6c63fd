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
# # Writing your own intervention types
#
# An intervention is a plain `nn.Module` with `forward(base, source=None, subspaces=None)`:
# `base` is the selected representation, `(batch, units, features)`, and what you return
# replaces it. This tutorial writes three: a plain function, a scaling intervention with an
# option, and a trainable gated one; it registers them so that configs and saved artifacts can
# name them.

# %%
import tempfile

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

import vene as pv

torch.manual_seed(0)
gpt2 = GPT2Model(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)).eval()
base = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 9]])}
source = {"input_ids": torch.tensor([[5, 17, 3, 77, 8, 9]])}

# %% [markdown]
# ## 1. A function
#
# Any callable `f(base, source)` can be a site's `intervention`; vene wraps it in a
# `LambdaIntervention`. Functions cannot be saved (there is nothing to rebuild them from).

# %%
negate = pv.IntervenableModel({"layer": 1, "component": "mlp_output",
                               "intervention": lambda b, s: -b}, gpt2)
with torch.no_grad():
    _, out = negate(base, unit_locations={"base": 2})
print("negated the MLP output at position 2:", tuple(out.last_hidden_state.shape))

# %% [markdown]
# ## 2. A class with an option
#
# Subclass one of vene's base classes; `ConstantSourceIntervention` says "needs no source run".
# Options arrive as keyword arguments, together with every `RepresentationConfig` field
# (pyvene's convention), so take `**kwargs` and pass them on. Declaring `accepted_kwargs` makes
# vene refuse misspelt options (leave it out and unknown keywords are ignored, as in pyvene).
# `@pv.register_intervention` lets configs and saved artifacts name the class.


# %%
@pv.register_intervention
class Scale(pv.ConstantSourceIntervention):
    """Multiply the selected features by `factor`."""

    accepted_kwargs = frozenset({"factor"})

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def forward(self, base, source=None, subspaces=None):
        return base * self.factor


scale = pv.IntervenableModel({"layer": 1, "component": "block_output",
                              "intervention": Scale(factor=0.5)}, gpt2)
with torch.no_grad():
    _, halved = scale(base, unit_locations={"base": 3})
try:
    Scale(facter=0.5)
except TypeError as err:
    print("refused:", str(err).split("?")[0] + "?")

# %% [markdown]
# ## 3. A trainable one
#
# Subclass `TrainableIntervention` and give it parameters: they show up in
# `get_trainable_parameters()` and in saved artifacts. This one learns a per-feature gate between
# base and source. (Trainable interventions receive the units flattened into one vector,
# `(batch, units * features)`, unless `keep_last_dim=True`, as in pyvene.)


# %%
@pv.register_intervention
class Gate(pv.TrainableIntervention):
    accepted_kwargs = frozenset()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.logits = nn.Parameter(torch.zeros(int(self.embed_dim)))

    def forward(self, base, source=None, subspaces=None):
        g = torch.sigmoid(self.logits)
        return (1 - g) * base + g * source


gated = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": Gate}, gpt2)
print("gate parameters:", gated.count_parameters())       # embed_dim = 32, filled in from the component
with torch.no_grad():
    next(iter(gated.interventions.values())).logits.fill_(20.0)   # gate fully open: a plain interchange
    _, opened = gated(base, [source], {"sources->base": 3})
    _, swapped = pv.IntervenableModel({"layer": 1, "component": "block_output"}, gpt2)(
        base, [source], {"sources->base": 3})
torch.testing.assert_close(opened.last_hidden_state, swapped.last_hidden_state, atol=1e-6, rtol=1e-5)
print("an open gate is an interchange")

# %% [markdown]
# ## Saving and loading custom types
#
# Saved artifacts record the class by its registered name and the constructor's arguments;
# loading looks the name up in the registry (never importing a path read from a file), so import
# the module that defines your class before loading.

# %%
with tempfile.TemporaryDirectory() as folder:
    scale.save(folder)
    again = pv.IntervenableModel.load(folder, gpt2)
    restored = next(iter(again.interventions.values()))
    print(type(restored).__name__, "factor =", restored.factor)
    assert isinstance(restored, Scale) and restored.factor == 0.5
    with torch.no_grad():
        _, out = again(base, unit_locations={"base": 3})
    torch.testing.assert_close(out.last_hidden_state, halved.last_hidden_state)
