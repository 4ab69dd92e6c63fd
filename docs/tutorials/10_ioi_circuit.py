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
# # Finding an IOI circuit's heads
#
# Indirect object identification (IOI): in "When Mary and John went to the park, John gave a
# ball to", the answer is the name that was *not* repeated, " Mary". Transformers solve this with
# a small circuit of attention heads. Here we look for the heads that carry the answer in the
# embedded SmolLM2-135M by patching each head's output at the last position between a clean
# prompt and one where the repeated name is changed (so the right answer flips).

# %%
import torch

import vene as pv
from vene.analysis import activation_patching
from vene.models.embedded import load_embedded_model

model, tok = load_embedded_model()
template = "When {a} and {b} went to the {place}, {s} gave a {obj} to"
cases = [("Mary", "John", "park", "ball"), ("Anna", "David", "store", "book"),
         ("Sarah", "Tom", "school", "drink"), ("Emma", "James", "beach", "gift")]
clean_text, corrupt_text, io_ids, s_ids = [], [], [], []
for io, s, place, obj in cases:
    clean_text.append(template.format(a=io, b=s, place=place, s=s, obj=obj))      # answer: io
    corrupt_text.append(template.format(a=io, b=s, place=place, s=io, obj=obj))   # answer: s
    io_ids.append(tok(" " + io, add_special_tokens=False)["input_ids"])
    s_ids.append(tok(" " + s, add_special_tokens=False)["input_ids"])
assert all(len(t) == 1 for t in io_ids + s_ids), "names must be single tokens"
io_ids, s_ids = torch.tensor(io_ids)[:, 0], torch.tensor(s_ids)[:, 0]
clean = tok(clean_text, return_tensors="pt")
corrupted = tok(corrupt_text, return_tensors="pt")
assert clean["input_ids"].shape == corrupted["input_ids"].shape
rows = torch.arange(len(cases))


def metric(logits):                       # (batch, vocab) at the last position -> (batch,)
    return logits[rows, io_ids] - logits[rows, s_ids]


with torch.no_grad():
    clean_ld = float(metric(model(**clean).logits[:, -1]).mean())
    corrupt_ld = float(metric(model(**corrupted).logits[:, -1]).mean())
print(f"logit(IO) - logit(S): clean {clean_ld:.2f}, corrupted {corrupt_ld:.2f}")
assert clean_ld > 0 > corrupt_ld

# %% [markdown]
# ## Patch every head at the last position
#
# `head_attention_value_output` is each head's attention-weighted values, before the output
# projection mixes the heads. `activation_patching` with `positions=[last]` gives a
# `(layers, 1, heads)` grid; we express each cell as the fraction of the logit difference it
# restores.

# %%
last = clean["input_ids"].shape[1] - 1
result = activation_patching(model, clean, corrupted, metric, components=["head_attention_value_output"],
                             positions=[last], progress=False)
effect = (result.scores["head_attention_value_output"][:, 0, :] - corrupt_ld) / (clean_ld - corrupt_ld)
n_heads = effect.shape[1]
top = effect.flatten().argsort(descending=True)[:5].tolist()
for i in top:
    print(f"layer {i // n_heads:2d} head {i % n_heads}: restores {float(effect.flatten()[i]):+.2f}")

# %% [markdown]
# ## Check the strongest head by hand
#
# The same patch as an `IntervenableModel` on one head: unit `"h.pos"` takes
# `[heads, positions]` per example.

# %%
layer, head = top[0] // n_heads, top[0] % n_heads
one_head = pv.IntervenableModel({"layer": layer, "component": "head_attention_value_output",
                                 "unit": "h.pos"}, model)
b = len(cases)
loc = [[[head]] * b, [[last]] * b]
with torch.no_grad():
    _, patched = one_head(corrupted, [clean], {"sources->base": (loc, loc)})
restored = (float(metric(patched.logits[:, -1]).mean()) - corrupt_ld) / (clean_ld - corrupt_ld)
print(f"layer {layer} head {head} patched by hand restores {restored:+.2f}")
assert abs(restored - float(effect[layer, head])) < 1e-3
assert restored > 0.05

# %% [markdown]
# A handful of late heads restore most of the answer on their own: candidates for the circuit's
# *name movers*. The `vene ioi` command goes further (more prompts, path patching from the top
# heads to the logits, direct logit attribution, a figure).
