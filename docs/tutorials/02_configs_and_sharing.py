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
# # Intervention configs, keys and sharing
#
# A site can be written as a dict, as a `RepresentationConfig`, or inside an
# `IntervenableConfig` that also fixes the intervention types and the mode. This tutorial shows
# the forms side by side, how sites are named (their *keys*), how one intervention can serve
# several sites (shared weights), and how a configured model is saved and loaded.

# %%
import tempfile

import torch
from transformers import GPT2Config, GPT2Model

import vene as pv

torch.manual_seed(0)
gpt2 = GPT2Model(GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)).eval()
base = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 9]])}
source = {"input_ids": torch.tensor([[5, 17, 3, 77, 8, 9]])}

# %% [markdown]
# ## Three spellings of the same site
#
# `RepresentationConfig` is a named tuple; its fields, in order, are the ones pyvene uses
# (`layer`, `component`, `unit`, `max_number_of_units`, `low_rank_dimension`,
# `intervention_type`, ...). A dict with the same field names, or a positional list, mean the
# same. A misspelt field is refused with a suggestion.

# %%
as_dict = {"layer": 2, "component": "mlp_output", "intervention_type": pv.ZeroIntervention}
as_tuple = pv.RepresentationConfig(2, "mlp_output", intervention_type=pv.ZeroIntervention)
as_config = pv.IntervenableConfig(
    representations=[pv.RepresentationConfig(2, "mlp_output")], intervention_types=pv.ZeroIntervention)

outputs = []
for spec in (as_dict, as_tuple, as_config):
    with torch.no_grad():
        outputs.append(pv.IntervenableModel(spec, gpt2)(base, unit_locations={"base": 3})[1].last_hidden_state)
torch.testing.assert_close(outputs[0], outputs[1])
torch.testing.assert_close(outputs[0], outputs[2])

try:
    pv.IntervenableModel({"layers": 2, "component": "mlp_output"}, gpt2)
except pv.ConfigError as err:
    print("refused:", str(err)[:80], "...")

# %% [markdown]
# Intervention constructors check their keywords too: pyvene silently ignored a misspelt one.

# %%
try:
    pv.NoiseIntervention(noise_levl=0.5)
except TypeError as err:   # an UnknownKeywordError, which is also a ConfigError
    print("refused:", str(err).split("?")[0] + "?")

# %% [markdown]
# ## Keys
#
# Every site gets a key that names its layer, component, unit and unit count, with a `#n`
# suffix when the same site appears more than once. Keys index `pv_model.interventions` and the
# per-site dicts you can pass to some arguments.

# %%
config = pv.IntervenableConfig(
    representations=[
        {"layer": 0, "component": "block_output"},
        {"layer": 2, "component": "attention_output"},
        {"layer": 2, "component": "attention_output"},
    ],
    intervention_types=[pv.VanillaIntervention, pv.CollectIntervention, pv.CollectIntervention],
)
pv_model = pv.IntervenableModel(config, gpt2)
for key, intervention in pv_model.interventions.items():
    print(f"{key:50s} {type(intervention).__name__}")
assert list(pv_model.interventions)[2].endswith("#1")

# %% [markdown]
# With three sites and no `group_key`, each site is its own group and takes its own source
# (collect sites need none: pass `None` for them). `unit_locations` then has one entry per site.

# %%
with torch.no_grad():
    (_, collected), out = pv_model(
        base, [source, None, None],
        {"sources->base": ([[[3]], None, None], [[[3]], [[1, 3]], [[5]]])},
    )
print("collected shapes:", [tuple(c.shape) for c in collected])

# %% [markdown]
# ## Groups: several sites fed by one source
#
# Sites with the same `group_key` read from the same source run. Here the residual stream of
# layers 0 and 1 at position 3 is swapped from one source.

# %%
grouped = pv.IntervenableModel([
    {"layer": 0, "component": "block_output", "group_key": 0},
    {"layer": 1, "component": "block_output", "group_key": 0},
], gpt2)
with torch.no_grad():
    _, out = grouped(base, [source], {"sources->base": 3})
print("one source, two sites: ok", tuple(out.last_hidden_state.shape))

# %% [markdown]
# ## Sharing one intervention between sites
#
# Pass the *same instance* at several sites, or give the sites one `intervention_link_key`:
# they then share one module (and its weights). A low-rank rotation shared by layers 1 and 2 has
# one set of parameters, counted once.

# %%
shared = pv.IntervenableModel(pv.IntervenableConfig([
    {"layer": 1, "component": "block_output", "low_rank_dimension": 2, "intervention_link_key": "rot"},
    {"layer": 2, "component": "block_output", "low_rank_dimension": 2, "intervention_link_key": "rot"},
], intervention_types=pv.LowRankRotatedSpaceIntervention), gpt2)
first, second = shared.interventions.values()
assert first is second
print("trainable parameters:", shared.count_parameters(), "(one 32 x 2 rotation)")
assert shared.count_parameters() == 32 * 2

one = pv.AdditionIntervention()
by_instance = pv.IntervenableModel([
    {"layer": 0, "component": "block_output", "intervention": one},
    {"layer": 3, "component": "block_output", "intervention": one},
], gpt2)
assert len({id(v) for v in by_instance.interventions.values()}) == 1

# %% [markdown]
# ## JSON and saving
#
# A config round-trips through JSON, and `save` writes the config plus the intervention weights
# (safetensors; nothing is pickled). `IntervenableModel.load` rebuilds it on a model.

# %%
text = shared.config.to_json_string()
again = pv.IntervenableConfig.from_json_string(text)
assert [r.layer for r in again.representations] == [1, 2]

with tempfile.TemporaryDirectory() as folder:
    shared.save(folder)
    loaded = pv.IntervenableModel.load(folder, gpt2)
    with torch.no_grad():
        _, a = shared(base, [source], {"sources->base": 3})
        _, b = loaded(base, [source], {"sources->base": 3})
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
print("saved and reloaded: same outputs")
