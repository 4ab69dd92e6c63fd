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
# # Activation patching and attribution patching
#
# Activation patching compares two prompts that differ in one fact: a *clean* one ("The Eiffel
# Tower is in the city of" -> Paris) and a *corrupted* one ("The Colosseum is in the city of" ->
# Rome). Copy one clean activation into the corrupted run and measure how far the answer moves
# back towards Paris. Attribution patching estimates all of these effects at once from one
# backward pass (a first-order Taylor approximation), which is far cheaper and often close.
#
# The model is the embedded SmolLM2-135M; the metric is `logit(" Paris") - logit(" Rome")`.

# %%
import torch

import vene as pv
from vene.analysis import (
    activation_patching,
    attribution_patching,
    compare_with_patching,
    logit_diff,
)
from vene.models.embedded import load_embedded_model

model, tok = load_embedded_model()
clean = tok("The Eiffel Tower is in the city of", return_tensors="pt")
corrupted = tok("The Colosseum is in the city of", return_tensors="pt")
assert clean["input_ids"].shape == corrupted["input_ids"].shape     # patching needs aligned tokens
paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
rome = tok(" Rome", add_special_tokens=False)["input_ids"][0]
metric = logit_diff(paris, rome)
print(tok.convert_ids_to_tokens(clean["input_ids"][0]))
print(tok.convert_ids_to_tokens(corrupted["input_ids"][0]))

# %% [markdown]
# ## One cell by hand
#
# Patching layer 6's residual stream at position 3 (the last subject token) is one interchange:
# the corrupted prompt is the base, the clean prompt the source.

# %%
one = pv.IntervenableModel({"layer": 6, "component": "block_output"}, model)
with torch.no_grad():
    clean_value = float(metric(model(**clean).logits[:, -1]))
    corrupted_value = float(metric(model(**corrupted).logits[:, -1]))
    _, patched = one(corrupted, [clean], {"sources->base": 3})
by_hand = float(metric(patched.logits[:, -1]))
print(f"metric: clean {clean_value:.2f}, corrupted {corrupted_value:.2f}, layer 6 pos 3 patched {by_hand:.2f}")

# %% [markdown]
# ## The sweep
#
# `activation_patching` does every (layer, position) cell, batching many patches per forward
# pass. To stay quick we take every third layer.

# %%
layers = list(range(0, 30, 3))
result = activation_patching(model, clean, corrupted, metric, components=["block_output"],
                             layers=layers, progress=False)
grid = result.scores["block_output"]                  # (layers, positions)
print("layers x positions:", tuple(grid.shape))
torch.testing.assert_close(grid[layers.index(6), 3].item(), by_hand, atol=1e-3, rtol=1e-3)
print("the sweep's cell (6, 3) equals the hand-made patch")
for i, layer in enumerate(layers):
    print(f"layer {layer:2d}: " + " ".join(f"{v:6.2f}" for v in grid[i].tolist()))

# %% [markdown]
# ## Attribution patching
#
# One forward pass on each prompt and one backward pass give, for every cell, the estimate
# `(clean activation - corrupted activation) . d metric / d activation`. `compare_with_patching`
# reports how well the estimate ranks the cells against the exact sweep.

# %%
estimate = attribution_patching(model, clean, corrupted, metric, components=["block_output"],
                                layers=layers)
agreement = compare_with_patching(estimate, result)["block_output"]
print({k: round(v, 3) for k, v in agreement.items()})
assert agreement["spearman"] > 0.5
