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
# # Devices, frozen models and distributed training
#
# What this tutorial demonstrates, precisely:
#
# * **runs here** (CPU): how wrapping freezes the model, how `enable_model_gradients` unfreezes
#   it for interchange intervention training, moving an `IntervenableModel` with `set_device`,
#   and data-parallel training of an intervention with PyTorch's `DistributedDataParallel`, in a
#   one-process `gloo` group, so the mechanics are the same as on several GPUs;
# * **explained, not run**: the multi-GPU launch (`torchrun`), which needs several devices.
#   Splitting one large model over several GPUs (`device_map`) is not covered here.

# %%
import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import GPT2Config, GPT2LMHeadModel

import vene as pv

torch.manual_seed(0)
lm = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                                bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0))
print("before wrapping, trainable model parameters:", sum(p.requires_grad for p in lm.parameters()))

# %% [markdown]
# ## Wrapping freezes the model
#
# `IntervenableModel` puts the model in eval mode and turns off its gradients (pyvene does the
# same), so an optimiser over `get_trainable_parameters()` trains only the interventions.
# `enable_model_gradients()` trains the model too (IIT, tutorial 05);
# `disable_model_gradients()` freezes it again. `freeze_model=False` leaves it untouched.

# %%
das = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 2,
                            "intervention_type": pv.LowRankRotatedSpaceIntervention}, lm)
print("after wrapping:", sum(p.requires_grad for p in lm.parameters()), "model parameters train;",
      das.count_parameters(), "intervention weights train")
das.enable_model_gradients()
assert len(das.get_trainable_parameters()) == 1 + len(list(lm.parameters()))
das.disable_model_gradients()
assert not any(p.requires_grad for p in lm.parameters())

# %% [markdown]
# ## Devices
#
# `get_device()` reports where the model is; `set_device(d)` moves the interventions and (by
# default) the model. Inputs go on the same device. On this machine everything is on the CPU;
# with a GPU write `"cuda"`.

# %%
device = "cuda" if torch.cuda.is_available() else "cpu"
das.set_device(device)
print("device:", das.get_device())
ids = torch.randint(0, 100, (8, 6), device=device)
src = torch.randint(0, 100, (8, 6), device=device)
with torch.no_grad():
    _, out = das({"input_ids": ids}, [{"input_ids": src}], {"sources->base": 3})
print("logits on", out.logits.device)

# %% [markdown]
# ## Data-parallel training with DDP
#
# In data parallelism every process holds a full copy of the model and its interventions, runs
# its own share of each batch, and DDP averages the gradients across processes before each
# optimiser step, so all copies stay identical. An `IntervenableModel` is an `nn.Module`, so it
# can be handed to `DistributedDataParallel` directly; DDP only synchronises parameters that
# require gradients, here the intervention's (the model is frozen).
#
# The launch on a machine with 4 GPUs would be
# `torchrun --nproc_per_node 4 train.py`, with each process calling
# `dist.init_process_group("nccl")`, `das.set_device(f"cuda:{rank}")` and
# `DistributedDataParallel(das, device_ids=[rank])`, and a `DistributedSampler` splitting the data.
# Here we run the same code in a single CPU process with the `gloo` backend.

# %%
store_dir = tempfile.mkdtemp()
store = os.path.join(store_dir, "rendezvous")
dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
try:
    das.set_device("cpu")
    ddp = DistributedDataParallel(das)
    optimizer = torch.optim.Adam([p for p in ddp.parameters() if p.requires_grad], lr=0.05)
    # a toy objective: make the interchanged run predict token 7 at the last position
    for step in range(20):
        ids, src = torch.randint(0, 100, (16, 6)), torch.randint(0, 100, (16, 6))
        _, out = ddp({"input_ids": ids}, [{"input_ids": src}], {"sources->base": 3})
        loss = nn.functional.cross_entropy(out.logits[:, -1], torch.full((16,), 7))
        optimizer.zero_grad()
        loss.backward()                   # DDP all-reduces the intervention's gradients here
        optimizer.step()
        if step % 5 == 0:
            print(f"step {step:2d}: loss {loss.item():.3f}")
    grads = [p.grad for p in das.get_trainable_parameters()]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for p in lm.parameters())      # the frozen model gets no gradients
finally:
    dist.destroy_process_group()
    if os.path.exists(store):
        os.unlink(store)
    os.rmdir(store_dir)

# %% [markdown]
# After training, save from one process only (`if dist.get_rank() == 0: das.save(...)`): the
# copies are identical.
