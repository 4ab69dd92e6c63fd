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
# # Sparse autoencoder interventions
#
# A sparse autoencoder (SAE) rewrites a hidden state as a sparse combination of learned
# *latents*. Interventions on latents ("turn feature 17 off", "copy feature 3 from another
# prompt") are then interventions on the model. vene has two SAE interventions:
#
# * `JumpReLUAutoencoderIntervention`, in the layout of released SAEs such as Gemma Scope
#   (`W_enc`, `W_dec`, `threshold`, `b_enc`, `b_dec`), loaded with `load_state_dict`;
# * `AutoencoderIntervention`, a ReLU SAE you can train.
#
# Both swap the selected latents between source and base and, by default, **keep the SAE's
# reconstruction error**: `out = base + decode(z') - decode(z)`. Swapping no latent is then
# exactly a no-op (pyvene returned the reconstruction, losing the error term;
# `preserve_error=False` gives that behaviour).

# %%
import torch
from transformers import GPT2Config, GPT2Model

import vene as pv

torch.manual_seed(0)
d, width = 32, 64
gpt2 = GPT2Model(GPT2Config(n_layer=3, n_embd=d, n_head=4, vocab_size=100, n_positions=64,
                            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)).eval()
base = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 9]])}
source = {"input_ids": torch.tensor([[5, 17, 3, 77, 8, 9]])}

# %% [markdown]
# ## Loading released weights
#
# We stand in for a downloaded SAE with random weights of the right shapes; with a real one you
# would `load_state_dict` the tensors from its file.

# %%
weights = {"W_enc": torch.randn(d, width) / d ** 0.5, "W_dec": torch.randn(width, d) / width ** 0.5,
           "threshold": torch.full((width,), 0.1), "b_enc": torch.zeros(width), "b_dec": torch.zeros(d)}
sae = pv.JumpReLUAutoencoderIntervention(embed_dim=d, low_rank_dimension=width)
sae.load_state_dict(weights, strict=False)   # the file has no embed_dim buffers

pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": sae}, gpt2)

# %% [markdown]
# ## Swap latents between runs
#
# `subspaces` index latents. First no latent at all (`[[]]`): nothing changes. Then latents
# 0-9 at position 3.

# %%
with torch.no_grad():
    plain = gpt2(**base).last_hidden_state
    _, nothing = pv_model(base, [source], {"sources->base": 3}, subspaces=[[[]]])
    _, some = pv_model(base, [source], {"sources->base": 3}, subspaces=[[list(range(10))]])
torch.testing.assert_close(nothing.last_hidden_state, plain)
print("swapping no latent is a no-op: the reconstruction error is kept")

# %% [markdown]
# By hand: encode both states, swap the chosen latents, add the change of the decoded value.


# %%
def block1(inputs):
    seen = {}
    h = gpt2.h[1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        gpt2(**inputs)
    h.remove()
    return seen["h"][:, 3]


def encode(x):
    pre = x @ weights["W_enc"] + weights["b_enc"]
    return (pre > weights["threshold"]) * torch.relu(pre)


hb, hs = block1(base), block1(source)
zb, zs = encode(hb), encode(hs)
z_new = zb.clone()
z_new[:, :10] = zs[:, :10]
expected = hb + (z_new - zb) @ weights["W_dec"]


def write(module, args, output):
    h = (output[0] if isinstance(output, tuple) else output).clone()
    h[:, 3] = expected
    return (h, *output[1:]) if isinstance(output, tuple) else h


handle = gpt2.h[1].register_forward_hook(write)
with torch.no_grad():
    reference = gpt2(**base).last_hidden_state
handle.remove()
torch.testing.assert_close(some.last_hidden_state, reference, atol=1e-5, rtol=1e-5)
print("latent swap matches the formula")

# %% [markdown]
# ## Training an SAE
#
# `AutoencoderIntervention` holds a ReLU encoder / linear decoder. Train it like any module on
# collected activations (here the layer-1 states of 128 random prompts, reconstruction plus
# an L1 sparsity penalty), then use it as an intervention.

# %%
collector = pv.IntervenableModel({"layer": 1, "component": "block_output",
                                  "intervention_type": pv.CollectIntervention}, gpt2)
ids = torch.randint(0, 100, (128, 8))
with torch.no_grad():
    (_, acts), _ = collector({"input_ids": ids}, unit_locations={"base": [list(range(8))] * 128})
acts = acts[0].reshape(-1, d)
print("activations:", tuple(acts.shape))

ae = pv.AutoencoderIntervention(embed_dim=d, latent_dim=width)
opt = torch.optim.Adam(ae.parameters(), lr=5e-3)
for step in range(200):
    z = ae.autoencoder.encode(acts)
    loss = (ae.autoencoder.decode(z) - acts).pow(2).mean() + 1e-3 * z.abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    z = ae.autoencoder.encode(acts)
    fve = 1 - (ae.autoencoder.decode(z) - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
print(f"fraction of variance explained: {float(fve):.2f}, active latents per state: "
      f"{float((z > 0).float().sum(-1).mean()):.1f} of {width}")
assert fve > 0.7
