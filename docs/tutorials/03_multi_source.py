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
# # Several sources: parallel and serial
#
# One call can combine pieces of several source runs. vene supports pyvene's two modes:
#
# * **parallel** (the default): every source writes directly into the base run;
# * **serial**: source 0 writes into source 1, the (modified) source 1 writes into source 2, ...,
#   the last into the base. This composes interventions: "what layer 2 computes from a layer 0
#   that was itself patched".
#
# Both are checked here against hand-written hooks on a tiny GPT-2.

# %%
import torch
from transformers import GPT2Config, GPT2Model

import vene as pv

torch.manual_seed(0)
gpt2 = GPT2Model(GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)).eval()


def ids(*tokens):
    return {"input_ids": torch.tensor([tokens])}


base = ids(5, 17, 3, 42, 8, 9)
source_a = ids(5, 17, 3, 77, 8, 9)      # differs from the base at position 3
source_b = ids(5, 61, 3, 42, 8, 9)      # differs at position 1


def block_output(inputs, layer, edits=None):
    """Block `layer`'s output on `inputs`, with `edits` {layer: fn(hidden)} applied on the way."""
    seen, handles = {}, []
    for l in range(len(gpt2.h)):
        def hook(module, args, output, l=l):
            h = output[0] if isinstance(output, tuple) else output
            if edits and l in edits:
                h = edits[l](h.clone())
            seen[l] = h
            return (h, *output[1:]) if isinstance(output, tuple) else h
        handles.append(gpt2.h[l].register_forward_hook(hook))
    try:
        with torch.no_grad():
            final = gpt2(**inputs).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    return final if layer is None else seen[layer]


# %% [markdown]
# ## Parallel: two sources, two sites
#
# Site 0 takes layer 1's output at position 3 from source A; site 1 takes layer 1's output at
# position 1 from source B. Without a `group_key` each site is its own group, so `sources` has
# one entry per site and `unit_locations` one entry per site on each side.

# %%
parallel = pv.IntervenableModel([
    {"layer": 1, "component": "block_output"},
    {"layer": 1, "component": "block_output"},
], gpt2)
with torch.no_grad():
    _, out = parallel(base, [source_a, source_b],
                      {"sources->base": ([[[3]], [[1]]], [[[3]], [[1]]])})

ha, hb = block_output(source_a, 1), block_output(source_b, 1)


def both(h):
    h[:, 3] = ha[:, 3]
    h[:, 1] = hb[:, 1]
    return h


torch.testing.assert_close(out.last_hidden_state, block_output(base, None, {1: both}))
print("parallel: both sources landed in the base")

# %% [markdown]
# vene runs sources and base of equal shape in **one** batched forward pass (reading the source
# rows, writing the base rows at each site). `batch_sources=False` forces one pass per source;
# the result is the same.

# %%
separate = pv.IntervenableModel(parallel.config, gpt2, batch_sources=False)
with torch.no_grad():
    _, out2 = separate(base, [source_a, source_b], {"sources->base": ([[[3]], [[1]]], [[[3]], [[1]]])})
torch.testing.assert_close(out.last_hidden_state, out2.last_hidden_state, atol=1e-5, rtol=1e-5)

# %% [markdown]
# ## Serial: a chain of runs
#
# In serial mode the unit locations are keyed by link: `"source_0->source_1"` then
# `"source_1->base"`. Here source A's layer-0 output at position 3 is written into source B's
# run; the resulting layer-2 output of source B at position 5 is written into the base.

# %%
serial = pv.IntervenableModel(pv.IntervenableConfig([
    {"layer": 0, "component": "block_output"},
    {"layer": 2, "component": "block_output"},
], mode="serial"), gpt2)
with torch.no_grad():
    _, chained = serial(base, [source_a, source_b], {"source_0->source_1": 3, "source_1->base": 5})

a0 = block_output(source_a, 0)


def patch_b(h):
    h[:, 3] = a0[:, 3]
    return h


b2 = block_output(source_b, 2, {0: patch_b})   # source B's layer 2, itself intervened


def patch_base(h):
    h[:, 5] = b2[:, 5]
    return h


torch.testing.assert_close(chained.last_hidden_state, block_output(base, None, {2: patch_base}),
                           atol=1e-5, rtol=1e-4)
print("serial: source A -> source B -> base matches the chained hooks")

# %% [markdown]
# The difference matters: a parallel run with the same two sites would read source B's layer 2
# *without* source A's patch.

# %%
as_parallel = pv.IntervenableModel(pv.IntervenableConfig(serial.config.representations), gpt2)
with torch.no_grad():
    _, direct = as_parallel(base, [source_a, source_b], {"sources->base": ([[[3]], [[5]]], [[[3]], [[5]]])})
gap = (direct.last_hidden_state - chained.last_hidden_state).abs().max()
print(f"parallel vs serial, largest difference: {gap:.3g}")
assert gap > 1e-4

# %% [markdown]
# Mixing the two key styles is refused with an explanation, as is a wrong number of sources:

# %%
try:
    serial(base, [source_a, source_b], {"sources->base": 3})
except pv.LocationError as err:
    print("refused:", str(err)[:100], "...")
