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
# # Generation and steering
#
# `IntervenableModel.generate` runs `model.generate` with the interventions installed for the
# whole decoding loop. This tutorial steers the embedded SmolLM2-135M model by adding a word's
# embedding to every layer's MLP output while it writes, then patches a prompt position during
# generation, and checks the steering against hand-written hooks.

# %%
import torch

import vene as pv
from vene.models.embedded import load_embedded_model

model, tok = load_embedded_model()
prompt = tok("My favourite food is", return_tensors="pt")
n_prompt = prompt["input_ids"].shape[1]
gen = {"max_new_tokens": 12, "do_sample": False}


def text(ids):
    return tok.decode(ids[0, n_prompt:], skip_special_tokens=True)


# %% [markdown]
# ## Steering with a constant vector
#
# One `AdditionIntervention` per layer on `mlp_output`; the vector is given as
# `source_representations`, so no source run is needed. With no `unit_locations`, `generate`
# follows pyvene's rule: act on every generated step, on the newest token. As in pyvene the
# result is a pair: the plain generation (with `output_original_output=True`, else `None`) and
# the intervened one.

# %%
layers = range(model.config.num_hidden_layers)
steer = pv.IntervenableModel(
    [{"layer": l, "component": "mlp_output", "intervention_type": pv.AdditionIntervention} for l in layers],
    model)
embed = model.get_input_embeddings()
word = tok(" pizza", add_special_tokens=False)["input_ids"][0]
vector = 2.0 * embed.weight[word].detach()

with torch.no_grad():
    original, steered = steer.generate(prompt, source_representations=vector,
                                       output_original_output=True, **gen)
print("original:", repr(text(original)))
print("steered: ", repr(text(steered)))
assert not torch.equal(original, steered)

# %% [markdown]
# The same thing by hand: a forward hook on every MLP that adds the vector when the step's input
# is a single new token (the prompt pass is left alone).

# %%
def add_on_decoding_steps(module, args, output):
    if output.shape[1] == 1:
        return output + vector


handles = [layer.mlp.register_forward_hook(add_on_decoding_steps) for layer in model.model.layers]
try:
    with torch.no_grad():
        by_hand = model.generate(**prompt, **gen)
finally:
    for h in handles:
        h.remove()
assert torch.equal(by_hand, steered)
print("hand-written hooks give the same tokens")

# %% [markdown]
# ## Choosing the steps
#
# `timesteps` (a vene extension) says at which decoding steps to act: `"prompt"` (the prompt
# pass only), `"generated"`, `"all"`, a set of step numbers, or a function of the step. Acting
# on the prompt only, at its last token, shifts the start of the continuation; later tokens are
# then produced by the unmodified model.

# %%
with torch.no_grad():
    _, prompt_only = steer.generate(prompt, unit_locations={"base": n_prompt - 1},
                                 source_representations=vector, timesteps="prompt", **gen)
print("prompt only:", repr(text(prompt_only)))
assert torch.equal(prompt_only[:, :n_prompt], original[:, :n_prompt])

# %% [markdown]
# ## Interchange during generation
#
# Sources work too: they are run once, up front. Here the residual stream at the country token of
# a different prompt is patched into the prompt pass (`intervene_on_prompt=True`), which changes
# what the model says about it.

# %%
base = tok("The capital of Spain is", return_tensors="pt")
source = tok("The capital of Italy is", return_tensors="pt")
patch = pv.IntervenableModel({"layer": 8, "component": "block_output"}, model)
with torch.no_grad():
    before, after = patch.generate(base, sources=[source], unit_locations={"sources->base": 3},
                                   intervene_on_prompt=True, output_original_output=True,
                                   max_new_tokens=4, do_sample=False)
n = base["input_ids"].shape[1]
print(repr(tok.decode(before[0, n:])), "->", repr(tok.decode(after[0, n:])))
assert "Rome" in tok.decode(after[0, n:])
