"""DAS (a learned 1-d rotation subspace) trained data-parallel: torch DDP, FSDP2, accelerate, or the HF Trainer.

The task is interchange intervention training on a frozen causal LM: swap a 1-d subspace of the
residual stream at one layer and position from a source run into the base run, and train the
rotation so that the intervened base predicts the token the *source* run predicts. Each global
batch is split across the processes; the intervention's gradients are averaged across them (DDP,
FSDP, accelerate and the Trainer all do), so the result equals one process training on the
whole batch (tests/test_scaleout.py checks this for DDP and FSDP with 2 gloo processes).

    python examples/das_distributed.py --tiny                       # one process
    torchrun --nproc_per_node 2 examples/das_distributed.py --tiny  # 2 processes (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 2 examples/das_distributed.py --tiny --engine fsdp
    accelerate launch --num_processes 2 examples/das_distributed.py --engine accelerate   # GPUs
    torchrun --nproc_per_node 2 examples/das_distributed.py --tiny --engine accelerate  # the Accelerator on CPU
    torchrun --nproc_per_node 2 examples/das_distributed.py --engine trainer

``--tiny`` uses a randomly initialised 3-layer Llama (no download); otherwise the embedded
SmolLM2-135M (one process, ``--layer 8 --repeat-batch --steps 8 --global-batch 4``: the loss
fell from 5.35 to 1.92 on CPU). ``--out FILE`` writes the trained rotation (safetensors) and the losses (JSON next
to it) from rank 0. On a GPU machine each process uses ``cuda:<LOCAL_RANK>``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import vene as pv


def build_model(tiny: bool, device: torch.device) -> Any:
    if tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=48, vocab_size=64, max_position_embeddings=32)
        model = LlamaForCausalLM(cfg)
    else:
        from vene.models.embedded import load_embedded_model

        model, _tokenizer = load_embedded_model()
    return model.to(device)


def batches(vocab: int, steps: int, global_batch: int, seq: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same (base, source) token batches on every process."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, vocab, (global_batch, seq), generator=g),
             torch.randint(1, vocab, (global_batch, seq), generator=g)) for _ in range(steps)]


def make_intervenable(model: Any, layer: int, seed: int) -> pv.IntervenableModel:
    torch.manual_seed(seed)  # the same initial rotation everywhere (DDP also broadcasts rank 0's)
    return pv.IntervenableModel(
        {"layer": layer, "component": "block_output", "low_rank_dimension": 1,
         "intervention_type": pv.LowRankRotatedSpaceIntervention},
        model, intervention_dtype=torch.float32,
    )


def targets(model: Any, source: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=source).logits[:, -1].argmax(-1)


def train(args: argparse.Namespace) -> dict:
    if args.lr is None:
        args.lr = 0.5 if args.tiny else 0.05
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() and not args.cpu else torch.device("cpu")
    if args.engine in ("ddp", "fsdp") and world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model = build_model(args.tiny, device)
    vocab = model.config.vocab_size
    pv_model = make_intervenable(model, args.layer, args.seed)
    data = batches(vocab, args.steps, args.global_batch, args.seq, args.seed + 1)
    if args.repeat_batch or args.engine == "trainer":  # the Trainer repeats one dataset per epoch
        data = [data[0]] * args.steps
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} does not split over {world} processes")
    pos = args.seq - 1
    locs = {"sources->base": pos}
    losses: list[float] = []

    if args.engine == "trainer":
        losses = _train_with_trainer(args, pv_model, data, pos, world)
    else:
        if args.engine == "accelerate":
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=device.type == "cpu")
            opt = torch.optim.SGD(pv_model.get_trainable_parameters(), lr=args.lr)
            ddp_model, opt = accelerator.prepare(pv_model, opt)
            rank, world = accelerator.process_index, accelerator.num_processes
        else:
            accelerator = None
        shard = slice(rank * (args.global_batch // world), (rank + 1) * (args.global_batch // world))
        ys = [targets(model, source[shard].to(device)) for _, source in data]  # before FSDP shards the model
        if args.engine == "fsdp":
            from torch.distributed.fsdp import fully_shard

            fully_shard(pv_model)  # FSDP2: the frozen model and the interventions, sharded as one unit
            ddp_model = pv_model
        elif args.engine == "ddp":
            ddp_model = torch.nn.parallel.DistributedDataParallel(pv_model) if world > 1 else pv_model
        if accelerator is None:
            opt = torch.optim.SGD(pv_model.get_trainable_parameters(), lr=args.lr)
        for (base, source), y in zip(data, ys):
            b, s = base[shard].to(device), source[shard].to(device)
            _, out = ddp_model({"input_ids": b}, [{"input_ids": s}], locs)
            loss = F.cross_entropy(out.logits[:, -1], y)
            opt.zero_grad()
            accelerator.backward(loss) if accelerator is not None else loss.backward()
            opt.step()
            losses.append(_global_mean(loss.detach(), world))
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v)  # FSDP2 holds DTensor shards
             for k, v in pv_model.interventions.state_dict().items()}
    result = {"losses": losses, "weights": {k: v.detach().cpu() for k, v in state.items() if v.is_floating_point()}}
    if args.out and rank == 0:
        from safetensors.torch import save_file

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in result["weights"].items()}, str(out))
        out.with_suffix(".json").write_text(json.dumps({"losses": losses, "world_size": world, "engine": args.engine}))
    if dist.is_initialized():
        dist.barrier()
    return result


def _global_mean(loss: torch.Tensor, world: int) -> float:
    if world > 1 and dist.is_initialized():
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world
    return float(loss)


def _train_with_trainer(args: argparse.Namespace, pv_model: pv.IntervenableModel, data: list, pos: int, world: int) -> list[float]:
    """The HF Trainer, no subclass: one dataset of one global batch per epoch (a mean loss does not
    depend on the order of the examples, so the Trainer's shuffling changes nothing)."""
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments

    base, source = data[0]
    y = targets(pv_model.model, source.to(pv_model.get_device()))
    examples = [{"base": {"input_ids": base[i]}, "sources": [{"input_ids": source[i]}],
                 "unit_locations": {"sources->base": ([pos], [pos])}, "labels": y[i].cpu()}
                for i in range(base.shape[0])]
    module = pv.TrainingModule(pv_model, loss_fn=lambda out, labels: F.cross_entropy(out.logits[:, -1], labels))
    losses: list[float] = []

    class Record(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="vene-das-"), per_device_train_batch_size=base.shape[0] // world,
        num_train_epochs=args.steps, learning_rate=args.lr, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0, warmup_steps=0, logging_steps=1, save_strategy="no",
        report_to="none", remove_unused_columns=False, disable_tqdm=True, use_cpu=args.cpu or not torch.cuda.is_available(),
        seed=args.seed,
    )
    Trainer(model=module, args=targs, train_dataset=examples, data_collator=pv.collate_interventions,
            callbacks=[Record()]).train()
    return losses


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["ddp", "fsdp", "accelerate", "trainer"], default="ddp")
    ap.add_argument("--tiny", action="store_true", help="a random 3-layer Llama instead of SmolLM2-135M")
    ap.add_argument("--cpu", action="store_true", help="run on cpu even when cuda is available")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=6)
    ap.add_argument("--lr", type=float, default=None, help="SGD learning rate (default 0.5 with --tiny, else 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat-batch", action="store_true", help="train on the first batch at every step (what --engine trainer does)")
    ap.add_argument("--out", default="")
    return ap.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    r = train(a)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"engine": a.engine, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                          "first_loss": r["losses"][0], "last_loss": r["losses"][-1]}))
    if dist.is_initialized():
        dist.destroy_process_group()
