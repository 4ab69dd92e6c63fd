"""The cost of running vene's configurations through nnsight (``build_intervenable_model`` on an
nnsight model, ``remote=False``) vs vene's own hooks vs hand-written PyTorch hooks.

Run: PYTHONPATH=src .venv/bin/python benchmarks/nnsight_backend.py [--no-smollm] [--rounds N] [--clock cpu|wall]

All methods run side by side in one process, round-robin, under torch.no_grad(); medians in ms
(by default of this process's CPU time, with one torch thread: robust on a shared machine;
``--clock wall`` for wall-clock time), ratios to the hand-written hooks. Work per call, for every method:

* interchange: a source pass saving one position of a block's output, then a base pass writing
  it (2 forward passes; vene's hook backend runs it with batch_sources=False, the same 2
  passes, and with its default "auto", which may fuse them into one batched pass);
* collect: one pass keeping one position of a block's output.

"nnsight by hand" is the same work written directly as nnsight traces (one trace per pass),
i.e. what nnsight itself costs; "vene via nnsight" adds vene's plan and ops on top (one worker
per hooked module, see vene/backends/nnsight_exec.py). Remote execution (NDIF) is not measured:
it cannot be reached from here, and its cost is dominated by the network and the server queue.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import vene as pv


CLOCK = time.process_time  # set in main(): CPU time of this process, or wall-clock time


def bench(fns: dict, rounds: int, warmup: int = 3) -> dict:
    times = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, f in fns.items():
            t0 = CLOCK()
            f()
            if r >= warmup:
                times[k].append((CLOCK() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, res: dict, ref: str) -> None:
    print(f"\n{title}")
    for k, v in res.items():
        print(f"  {k:<40} {v:9.2f} ms   {v / res[ref]:5.2f}x")


def blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def main_tensor(o):
    return o if isinstance(o, torch.Tensor) else o[0]


def hand_interchange(model, layer, pos):
    mod = blocks(model)[layer]

    def run(base, src):
        store = {}

        def save(m, a, o):
            store["s"] = main_tensor(o)[:, pos].clone()

        h = mod.register_forward_hook(save)
        model(**src)
        h.remove()

        def patch(m, a, o):
            main_tensor(o)[:, pos] = store["s"]
            return o

        h = mod.register_forward_hook(patch)
        out = model(**base)
        h.remove()
        return out

    return run


def hand_collect(model, layer, pos):
    mod = blocks(model)[layer]

    def run(base):
        store = {}

        def save(m, a, o):
            store["s"] = main_tensor(o)[:, pos].clone()

        h = mod.register_forward_hook(save)
        model(**base)
        h.remove()
        return store["s"]

    return run


def nnsight_interchange(lm, layer, pos):
    """The same interchange written directly with nnsight (two traces)."""
    env = blocks(lm)[layer]

    def run(base, src):
        with lm.trace(**src):
            s = main_tensor(env.output)[:, pos].clone().save()
        with lm.trace(**base) as tracer:
            main_tensor(env.output)[:, pos] = s
            out = tracer.result.save()
        return out

    return run


def nnsight_collect(lm, layer, pos):
    env = blocks(lm)[layer]

    def run(base):
        with lm.trace(**base):
            s = main_tensor(env.output)[:, pos].clone().save()
        return s

    return run


def cases(model, name, batch, rounds):
    import nnsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = nnsight.NNsight(model)
    L, pos = len(blocks(model)) // 2, 5
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    base = {"input_ids": torch.randint(0, vocab, (batch, 10), generator=g)}
    src = {"input_ids": torch.randint(0, vocab, (batch, 10), generator=g)}
    ul = {"sources->base": pos}
    cfg = {"layer": L, "component": "block_output"}
    hook_sep = pv.IntervenableModel(cfg, model, batch_sources=False)
    hook_auto = pv.IntervenableModel(cfg, model)
    via = pv.build_intervenable_model(cfg, lm)
    hand, by_hand = hand_interchange(model, L, pos), nnsight_interchange(lm, L, pos)
    fns = {
        "hand hooks (2 passes)": lambda: hand(base, src),
        "vene hooks, batch_sources=False": lambda: hook_sep(base, [src], ul),
        "vene hooks, default (auto)": lambda: hook_auto(base, [src], ul),
        "nnsight by hand (2 traces)": lambda: by_hand(base, src),
        "vene via nnsight": lambda: via(base, [src], ul),
    }
    with torch.no_grad():
        ref = hand(base, src).logits
        diffs = {}
        for k, f in fns.items():
            out = f()
            logits = (out[1] if k.startswith("vene") else out).logits
            diffs[k] = float((logits - ref).abs().max())
        res = bench(fns, rounds)
    report(f"interchange, {name}, b={batch} (max |logit diff| vs hand hooks: "
           + f"{max(diffs.values()):.0e})", res, "hand hooks (2 passes)")

    ccfg = {"layer": L, "component": "block_output", "intervention": pv.CollectIntervention()}
    chook = pv.IntervenableModel(ccfg, model)
    cvia = pv.build_intervenable_model(ccfg, lm)
    hc, nc = hand_collect(model, L, pos), nnsight_collect(lm, L, pos)
    cul = {"base": pos}
    fns = {
        "plain forward (no intervention)": lambda: model(**base),
        "hand hook (1 pass)": lambda: hc(base),
        "vene hooks": lambda: chook(base, unit_locations=cul),
        "nnsight by hand (1 trace)": lambda: nc(base),
        "vene via nnsight": lambda: cvia(base, unit_locations=cul),
    }
    with torch.no_grad():
        want = hc(base)
        assert torch.equal(cvia(base, unit_locations=cul)[0][1][0][:, 0], want)
        res2 = bench(fns, rounds)
    report(f"collect one position, {name}, b={batch}", res2, "hand hook (1 pass)")
    return res, res2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-smollm", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu (default): this process's CPU time, which a busy shared machine disturbs "
                         "far less than wall-clock time; with one torch thread it is the work done")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    import nnsight

    print(f"torch {torch.__version__}, nnsight {nnsight.__version__}, threads {torch.get_num_threads()}, "
          f"clock {args.clock}")
    import tiny_models as tm

    tiny = tm.gpt2(lm=True, n_layer=4, n_embd=64)
    cases(tiny, "tiny GPT-2 (4 x 64)", 1, args.rounds)
    cases(tiny, "tiny GPT-2 (4 x 64)", 16, args.rounds)
    if not args.no_smollm:
        from vene.models.embedded import load_embedded_model

        model, _ = load_embedded_model()
        model.eval()
        cases(model, "SmolLM2-135M (30 layers)", 4, max(5, args.rounds // 4))


if __name__ == "__main__":
    main()
