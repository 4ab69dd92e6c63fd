"""Code written the pyvene way, run on vene: per-layer loops, many calls as one, DAS training
steps and the fixed per-call cost, each against hand-written PyTorch hooks doing the same work.

Run: PYTHONPATH=src .venv/bin/python benchmarks/perf_paths.py [--reps 3] [--only loop,das,...]
     [--json benchmarks/results/perf_paths.json]

Everything runs in one process, round robin (one warm-up round, then ``--reps`` timed rounds;
medians). Every variant's result is compared with the hand-written one before anything is timed.
pyvene columns are printed when pyvene is importable (it is not installed in vene's lock).

Cases:

* ``loop`` -- activation patching written the pyvene way: one ``IntervenableModel`` per layer,
  ``sources=[clean]``, interchange of ``block_output`` at one position, SmolLM2-135M, 8 prompt
  pairs x 30 layers x 12 tokens. Hand hooks: one clean pass saving every layer's output, then one
  patched corrupted pass per layer (31 passes). vene with reuse: the clean source runs once
  (the first call records every layer's ``block_output``; the later calls reuse it);
  ``reuse=False``: the clean source runs (early-stopped) in every call.
* ``many`` -- the same 30 calls handed to :func:`vene.run_calls` at once (layer-stepped sweep).
* ``das`` -- one DAS training step written the pyvene way (``LowRankRotatedSpaceIntervention``
  on layer 15's ``block_output``, last position, cross-entropy on the last-position logits,
  ``loss.backward()`` + Adam), SmolLM2-135M, 12 tokens: rank 1 / batch 8 and rank 16 / batch 32.
  Hand hooks: a source pass under ``no_grad`` saving the site, then a base pass with a hook
  applying the same rotation interchange (two passes).
* ``overhead`` -- tiny GPT-2 (2 layers, n_embd 64, 10 tokens, b=1): a plain forward vs the same
  forward through vene with one Collect, one interchange, and 12 interventions (one per block
  output / MLP output / attention output / block input over the 2 layers and 3 positions each),
  repeated calls with the same arguments; vene's extra cost in ms. ``batch_sources=False``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

import vene as pv

try:  # pyvene is optional: compare when it is installed
    import pyvene  # type: ignore
except Exception:  # noqa: BLE001
    pyvene = None

HAS_NEW = hasattr(pv, "run_calls")  # False on vene before issue 18 (for "before" numbers)


def bench(fns: dict, reps: int, warmup: int = 1, inner: int = 1) -> dict:
    times: dict = {k: [] for k in fns}
    for r in range(warmup + reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            dt = (time.perf_counter() - t0) / inner
            if r >= warmup:
                times[k].append(dt * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, res: dict, ref: str) -> None:
    print(f"\n{title}", flush=True)
    for k, v in res.items():
        print(f"  {k:<44} {v:10.3f} ms   {v / res[ref]:5.2f}x", flush=True)


def _smollm():
    from vene.models.embedded import load_embedded_model

    model, _ = load_embedded_model()
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the per-layer loop


def loop_case(model, reps: int, pairs: int = 8, seq: int = 12, pos: int = 4) -> dict:
    layers = model.model.layers
    n = len(layers)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    clean = {"input_ids": torch.randint(0, vocab, (pairs, seq), generator=g)}
    corrupt = {"input_ids": torch.randint(0, vocab, (pairs, seq), generator=g)}

    def hand():
        saved = [None] * n

        def saver(i):
            def h(m, a, o):
                saved[i] = (o if isinstance(o, torch.Tensor) else o[0])[:, pos].clone()
            return h

        hs = [layers[i].register_forward_hook(saver(i)) for i in range(n)]
        try:
            model(**clean)
        finally:
            for h in hs:
                h.remove()
        outs = []
        for l in range(n):
            def patch(m, a, o, l=l):
                t = o if isinstance(o, torch.Tensor) else o[0]
                t[:, pos] = saved[l]
                return o

            h = layers[l].register_forward_hook(patch)
            try:
                outs.append(model(**corrupt).logits[:, -1])
            finally:
                h.remove()
        return torch.stack(outs)

    def vene_loop(reuse):
        def run():
            outs = []
            for l in range(n):
                kw = {} if reuse is None else {"reuse_sources": reuse}
                m = pv.IntervenableModel({"layer": l, "component": "block_output"}, model=model, **kw)
                _, out = m(corrupt, [clean], {"sources->base": pos})
                outs.append(out.logits[:, -1])
            return torch.stack(outs)
        return run

    def vene_many():
        calls = [pv.Call({"layer": l, "component": "block_output"}, corrupt, [clean], {"sources->base": pos}) for l in range(n)]
        return pv.run_calls(model, calls).logits

    fns = {"hand hooks (31 passes)": hand}
    if HAS_NEW:
        fns["vene, pyvene-style loop"] = vene_loop(True)
        fns["vene, pyvene-style loop, reuse_sources=False"] = vene_loop(False)
        fns["vene.run_calls (30 calls as one)"] = vene_many
    else:  # the release before reuse and run_calls
        fns["vene, pyvene-style loop"] = vene_loop(None)
    if pyvene is not None:
        def py_loop():
            outs = []
            for l in range(n):
                m = pyvene.IntervenableModel({"layer": l, "component": "block_output"}, model=model)
                _, out = m(corrupt, [clean], {"sources->base": pos})
                outs.append(out.logits[:, -1])
            return torch.stack(outs)
        fns["pyvene loop"] = py_loop
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hand()
        for k, f in fns.items():
            d = float((f() - ref).abs().max())
            assert d < 1e-3, (k, d)
        res = bench(fns, reps)
    print(f"[loop case: {pairs} pairs]", flush=True)
    report(f"per-layer activation patching loop, SmolLM2-135M, {pairs} pairs x {n} layers x {seq} tokens",
           res, "hand hooks (31 passes)")
    return res


# ---------------------------------------------------------------------------------------------
# DAS training step


def das_case(model, reps: int, rank: int, batch: int, seq: int = 12) -> dict:
    layer = len(model.model.layers) // 2
    mod = model.model.layers[layer]
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    # a new batch every step, as in training (a repeated source would be reused, see vene.reuse)
    data = [({"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)},
             {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)},
             torch.randint(0, vocab, (batch,), generator=g)) for _ in range(reps + 2)]
    step_of = {"hand": 0, "vene": 0}

    def next_batch(who):
        i = step_of[who]
        step_of[who] += 1
        return data[i % len(data)]

    pos = seq - 1
    cfg = {"layer": layer, "component": "block_output", "low_rank_dimension": rank,
           "intervention_type": pv.LowRankRotatedSpaceIntervention}
    torch.manual_seed(0)
    pvm = pv.IntervenableModel(cfg, model=model)  # freezes the model
    iv = next(iter(pvm.interventions.values()))
    hand_iv = copy.deepcopy(iv)
    opt_v = torch.optim.Adam(pvm.get_trainable_parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(hand_iv.parameters(), lr=1e-3)

    def vene_step(grads=None):
        base, src, labels = next_batch("vene")
        _, out = pvm(base, [src], {"sources->base": pos})
        loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels)
        loss.backward()
        if grads is not None:
            grads.append(torch.cat([p.grad.flatten() for p in iv.parameters()]))
        opt_v.step()
        opt_v.zero_grad()
        return loss.detach()

    def hand_step(grads=None):
        base, src, labels = next_batch("hand")
        store = {}

        def save(m, a, o):
            store["s"] = (o if isinstance(o, torch.Tensor) else o[0])[:, pos].clone()

        h = mod.register_forward_hook(save)
        try:
            with torch.no_grad():
                model(**src)
        finally:
            h.remove()

        def patch(m, a, o):
            t = o if isinstance(o, torch.Tensor) else o[0]
            W = hand_iv.rotate_layer.weight
            b = t[:, pos]
            new = b + ((store["s"] - b) @ W) @ W.T
            t = t.clone()
            t[:, pos] = new
            return (t,) + tuple(o[1:]) if isinstance(o, tuple) else t

        h = mod.register_forward_hook(patch)
        try:
            out = model(**base)
        finally:
            h.remove()
        loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels)
        loss.backward()
        if grads is not None:
            grads.append(torch.cat([p.grad.flatten() for p in hand_iv.parameters()]))
        opt_h.step()
        opt_h.zero_grad()
        return loss.detach()

    fns = {"hand hooks (2 passes, source no_grad)": hand_step, "vene (pyvene-style step)": vene_step}
    # results equal before timing: the first step's losses and gradients match (gradients, not the
    # updated weights: Adam's first step is lr * sign(grad), which rounding flips for entries near 0)
    grads: list = []
    a, b = hand_step(grads), vene_step(grads)
    assert abs(float(a) - float(b)) < 1e-4, (float(a), float(b))
    scale = float(grads[0].abs().max())
    assert float((grads[0] - grads[1]).abs().max()) < 1e-4 * scale, float((grads[0] - grads[1]).abs().max())
    n_grads = sum(p.grad is not None for p in model.parameters())
    assert n_grads == 0, f"{n_grads} model weights got gradients"
    res = bench(fns, reps)
    report(f"DAS training step, SmolLM2-135M layer {layer}, rank {rank}, batch {batch}, {seq} tokens",
           res, "hand hooks (2 passes, source no_grad)")
    return res


# ---------------------------------------------------------------------------------------------
# per-call overhead


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def overhead_case(reps: int) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds contention noise
    try:
        return _overhead(reps)
    finally:
        torch.set_num_threads(threads)


def _overhead(reps: int) -> dict:
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(2)
    base = {"input_ids": torch.randint(0, 1000, (1, 10), generator=g)}
    src = {"input_ids": torch.randint(0, 1000, (1, 10), generator=g)}
    collect = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.CollectIntervention},
                                   model=model, batch_sources=False)
    one = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model=model, batch_sources=False)
    comps = ("block_output", "mlp_output", "attention_output", "block_input", "mlp_input", "attention_input")
    twelve = pv.IntervenableModel([{"layer": l, "component": c} for l in range(2) for c in comps],
                                  model=model, batch_sources=False)
    locs12 = {"sources->base": [[[3]]] * 12}
    # hand-written hooks doing the same work, with the source values the user kept from before
    with torch.no_grad():
        _, twelve_src = pv.IntervenableModel([{"layer": l, "component": c, "intervention_type": pv.CollectIntervention}
                                              for l in range(2) for c in comps], model=model)(src, unit_locations={"base": 3})[0]
    sites = [(twelve.key_specs[i].module, twelve.key_specs[i].site.io) for i in range(12)]

    def hand(which):
        def run():
            handles = []
            for i in which:
                mod, io = sites[i]
                val = twelve_src[i]
                if io == "output":
                    def h(m, a, o, val=val):
                        t = o if isinstance(o, torch.Tensor) else o[0]
                        t[:, 3:4] = val
                        return o
                    handles.append(mod.register_forward_hook(h))
                else:
                    def h(m, a, val=val):
                        t = a[0].clone()
                        t[:, 3:4] = val
                        return (t,) + tuple(a[1:])
                    handles.append(mod.register_forward_pre_hook(h))
            try:
                return model(**base)
            finally:
                for hd in handles:
                    hd.remove()
        return run

    def hand_collect():
        kept = {}

        def keep(m, a, o):
            kept["x"] = (o if isinstance(o, torch.Tensor) else o[0])[:, 3:4].clone()

        h = model.transformer.h[1].register_forward_hook(keep)
        try:
            return model(**base), kept["x"]
        finally:
            h.remove()

    one_site = twelve.sorted_keys.index(next(k for k in twelve.sorted_keys if k.startswith("layer_1_comp_block_output")))
    with torch.no_grad():
        d1 = float((hand([one_site])().logits - one(base, [src], {"sources->base": 3})[1].logits).abs().max())
        d12 = float((hand(range(12))().logits - twelve(base, [src], locs12)[1].logits).abs().max())
        dc = float((hand_collect()[1] - collect(base, unit_locations={"base": 3})[0][1][0]).abs().max())
    assert max(d1, d12, dc) < 1e-5, (d1, d12, dc)
    fns = {
        "plain forward": lambda: model(**base),
        "hand hook Collect (1 site)": hand_collect,
        "hand hook interchange (kept source, 1 site)": hand([one_site]),
        "hand hooks 12 interchanges (kept sources)": hand(range(12)),
        "vene Collect (1 site)": lambda: collect(base, unit_locations={"base": 3}),
        "vene interchange (1 site, source pass)": lambda: one(base, [src], {"sources->base": 3}),
        "vene 12 interventions (source pass)": lambda: twelve(base, [src], locs12),
    }
    with torch.no_grad():
        res = bench(fns, max(reps, 5), warmup=1, inner=100)
    report("per-call cost, tiny GPT-2 (2 layers, n_embd 64), b=1, 10 tokens, repeated calls, 1 thread", res, "plain forward")
    for k in list(fns)[1:]:
        print(f"  => {k}: {res[k] - res['plain forward']:.3f} ms more than the plain forward")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="loop,das,overhead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--pairs", type=int, default=8, help="prompt pairs of the loop case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, pyvene {'yes' if pyvene else 'not installed'}")
    only = set(args.only.split(","))
    out: dict = {"threads": args.threads, "reps": args.reps, "pyvene": pyvene is not None}
    if "overhead" in only:
        out["overhead"] = overhead_case(args.reps)
    if only & {"loop", "das"}:
        model = _smollm()
        if "loop" in only:
            out["loop"] = loop_case(model, args.reps, pairs=args.pairs)
            out["loop_pairs"] = args.pairs
        if "das" in only:
            out["das_r1_b8"] = das_case(model, args.reps, 1, 8)
            out["das_r16_b32"] = das_case(model, args.reps, 16, 32)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
