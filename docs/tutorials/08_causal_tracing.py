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
# # Causal tracing (ROME)
#
# Causal tracing asks *where* a model keeps the fact it is recalling. Corrupt the subject
# ("The Eiffel Tower") with noise so that the model no longer says " Paris"; then restore one
# clean hidden state at a time and see which restorations bring " Paris" back.
#
# First we build one restoration from primitives (a noise intervention and an interchange), then
# run vene's `causal_trace`, which sweeps the whole grid efficiently. The model is the embedded
# SmolLM2-135M.

# %%
import torch

import vene as pv
from vene.analysis import causal_trace
from vene.models.embedded import load_embedded_model

model, tok = load_embedded_model()
prompt = tok("The Eiffel Tower is located in the city of", return_tensors="pt")
tokens = tok.convert_ids_to_tokens(prompt["input_ids"][0])
paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
subject = [1, 2, 3]                       # " E", "iffel", " Tower"
print(list(enumerate(tokens)))


def p_paris(out):
    return float(out.logits[0, -1].softmax(-1)[paris])


# %% [markdown]
# ## One restoration by hand
#
# Site 0 adds Gaussian noise to the input of layer 0 (the token embeddings) at the subject;
# `NoiseIntervention` uses ROME's scale by default (3 x the std of the embedding matrix) and a
# fixed seed. Site 1 copies layer `L`'s clean output at one position from the source run (the
# clean prompt) into the corrupted run. Passing `None` as a group's source skips that site.
# (One noise sample is noisy: this is why the trace below averages over several.)

# %%
def restore(layer, position):
    sites = pv.IntervenableModel([
        {"layer": 0, "component": "block_input", "intervention_type": pv.NoiseIntervention},
        {"layer": layer, "component": "block_output"},
    ], model)
    with torch.no_grad():
        _, out = sites(prompt, [None, prompt],
                       {"sources->base": ([None, [[position]]], [[subject], [[position]]])})
    return p_paris(out)


noise_only = pv.IntervenableModel({"layer": 0, "component": "block_input",
                                   "intervention_type": pv.NoiseIntervention}, model)
with torch.no_grad():
    clean = p_paris(model(**prompt))
    _, corrupted_out = noise_only(prompt, unit_locations={"base": [subject]})
corrupted = p_paris(corrupted_out)
print(f"p(' Paris'): clean {clean:.2f}, corrupted {corrupted:.3f}")
for layer, pos in [(4, 2), (4, 3), (24, 9)]:
    print(f"restore layer {layer:2d} at {tokens[pos]!r:8}: {restore(layer, pos):.3f}")
assert restore(4, 2) > 5 * corrupted and restore(24, 9) > 5 * corrupted

# %% [markdown]
# ## The whole grid with `causal_trace`
#
# `causal_trace` averages over several noise samples, restores every (layer, position) cell of
# each component (MLP and attention outputs in ROME's windows of 10 layers), and packs many
# restorations into few batched passes. To keep this notebook short we trace the residual stream
# at every fourth layer with two noise samples; the `vene trace` command does the full picture.

# %%
result = causal_trace(model, tok, "The Eiffel Tower is located in the city of", answer=" Paris",
                      subject=" Eiffel Tower", components=["block_output"],
                      layers=list(range(0, 30, 4)), samples=2, progress=False)
scores = result.scores["block_output"]          # (layers, positions)
print("subject positions:", result.subject_positions)
print(f"p clean {result.p_clean:.2f}, corrupted {result.p_corrupted:.3f}")
for i, layer in enumerate(result.layers):
    row = " ".join(f"{v:.2f}" for v in scores[i].tolist())
    print(f"layer {layer:2d}: {row}")

# %% [markdown]
# The two bands of ROME's picture: in the early and middle layers the fact is carried at a
# subject token (in SmolLM2 at "iffel", the token that identifies the entity, rather than at the
# last subject token as in GPT-2 XL); late in the network it has moved to the last token.
# `result.plot()` draws ROME's heatmap; `result.save("trace.json")` keeps the numbers.

# %%
iffel = result.subject_positions[1]
early, late = float(scores[1, iffel]), float(scores[-1, -1])
assert early > 5 * result.p_corrupted and late > 5 * result.p_corrupted
figure = result.plot()
figure.savefig("causal_trace.png")
print("saved causal_trace.png")
