"""Causal-tracing sweep on the embedded SmolLM2-135M: vene vs hand-written hooks (and peers).

The setup of reference/peer-benchmarks.md section 3: prompt "The Eiffel Tower is located in the
city of" -> " Paris", subject tokens at positions 1-3, one seeded Gaussian noise sample with std
3 x std(embedding matrix) added to the subject embeddings (the same noise for every variant), and
for each of the 30 x 10 (layer, position) pairs the clean block_output restored; the metric is
p(" Paris") at the last position.

Variants, run side by side in one process, round robin (1 warm-up sweep each, then --reps timed):

* hand hooks batched: one forward per layer with batch = 10 positions (32 forward passes), the
  reference everything is divided by;
* vene ``causal_trace`` (layer stepping: each restoration resumes from the cached corrupted state
  at its layer; output head on the last position only);
* vene ``causal_trace(strategy="forward")`` (batched full forward passes, for comparison);
* pyvene-style code on vene (``import vene as pv``; one IntervenableModel per layer, batch 10,
  clean activations passed as source_representations), and the same code on pyvene, nnsight
  (one trace per layer, batch 10) and TransformerLens (TransformerBridge, run_with_hooks per
  layer) when they are importable.

Every grid is compared with the hand-hook grid (max |diff| must be <= 1e-4).

    .venv/bin/python benchmarks/causal_trace_sweep.py [--reps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

PROMPT = "The Eiffel Tower is located in the city of"
ANSWER = " Paris"
SUBJECT = [1, 2, 3]


def setup(seed: int = 0):
    from vene.models.embedded import load_embedded_model

    model, tok = load_embedded_model()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    answer = tok(ANSWER, add_special_tokens=False)["input_ids"][0]
    emb = model.get_input_embeddings().weight
    std = 3 * float(emb.detach().std())
    noise = torch.randn(1, len(SUBJECT), emb.shape[1], generator=torch.Generator().manual_seed(seed)) * std
    return model, tok, ids, answer, noise


# ---------------------------------------------------------------------------------------------
# hand-written batched PyTorch hooks: one forward per layer, batch = one row per position


def hand_hooks(model, ids, answer, noise):
    layers = model.model.layers
    emb = model.get_input_embeddings()
    n, seq = len(layers), ids.shape[1]
    clean = [None] * n

    def saver(i):
        def h(mod, args, out):
            clean[i] = out.detach().clone()
        return h

    hs = [layers[i].register_forward_hook(saver(i)) for i in range(n)]
    try:
        p_clean = model(ids).logits[0, -1].softmax(-1)[answer]
    finally:
        for h in hs:
            h.remove()

    def add_noise(mod, args, out):
        out = out.clone()
        out[:, SUBJECT] += noise[0]
        return out

    hn = emb.register_forward_hook(add_noise)
    try:
        p_corr = model(ids).logits[0, -1].softmax(-1)[answer]
        grid = torch.empty(n, seq)
        batch = ids.expand(seq, -1)
        rows = torch.arange(seq)
        for layer in range(n):
            def restore(mod, args, out, layer=layer):
                out[rows, rows] = clean[layer][0, rows]
                return out

            h = layers[layer].register_forward_hook(restore)
            try:
                grid[layer] = model(batch).logits[:, -1].softmax(-1)[:, answer]
            finally:
                h.remove()
    finally:
        hn.remove()
    return grid, float(p_clean), float(p_corr)


# ---------------------------------------------------------------------------------------------
# vene


MODES: dict[str, str] = {}  # strategy asked for -> mode the sweep ran in (recorded in the result)


def vene_trace(model, tok, ids, answer, noise, strategy="auto"):
    from vene.analysis import causal_trace

    r = causal_trace(model, tok, PROMPT, answer, subject=SUBJECT, components=("block_output",),
                     noise=noise, samples=1, progress=False, strategy=strategy)
    MODES[strategy] = r.extra["strategy"] + (f" (fallback: {r.extra['fallback_reason']})" if r.extra.get("fallback_reason") else "")
    return r.scores["block_output"], r.p_clean, r.p_corrupted


def pyvene_style(pv, model, ids, answer, noise):
    """pyvene-idiomatic code, batched per layer, clean activations collected once."""
    n, seq = model.config.num_hidden_layers, ids.shape[1]

    class Noise(pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention):
        def forward(self, base, source=None, subspaces=None, **kwargs):
            return base + noise[0].to(base.dtype).unsqueeze(0)

    collect = pv.IntervenableModel([
        {"layer": l, "component": "block_output", "intervention_type": pv.CollectIntervention,
         "max_number_of_units": seq} for l in range(n)], model)
    out = collect({"input_ids": ids}, unit_locations={"base": list(range(seq))})
    clean_acts = out[0][1]  # one (1, seq, d) tensor per layer
    p_clean = float(model(ids).logits[0, -1].softmax(-1)[answer])
    noise_cfg = {"layer": 0, "component": "block_input", "intervention_type": Noise, "max_number_of_units": len(SUBJECT)}
    noise_model = pv.IntervenableModel([noise_cfg], model)
    _, cor = noise_model({"input_ids": ids}, unit_locations={"base": [[SUBJECT]]})
    p_corr = float(cor.logits[0, -1].softmax(-1)[answer])
    grid = torch.empty(n, seq)
    batch = ids.expand(seq, -1)
    for layer in range(n):
        m = pv.IntervenableModel([
            noise_cfg,
            {"layer": layer, "component": "block_output", "intervention_type": pv.VanillaIntervention},
        ], model)
        src = clean_acts[layer].reshape(1, seq, -1)[0]  # (seq, d): row i restores position i
        reps = [torch.zeros(seq, 1, src.shape[-1]), src.unsqueeze(1)]
        _, o = m({"input_ids": batch},
                 unit_locations={"base": [[SUBJECT] * seq, [[i] for i in range(seq)]]},
                 source_representations=reps)
        grid[layer] = o.logits[:, -1].softmax(-1)[:, answer]
    return grid, p_clean, p_corr


def nnsight_style(lm, n, ids, answer, noise):
    seq = ids.shape[1]
    saved = []
    with lm.trace(ids):
        for l in range(n):
            saved.append(lm.model.layers[l].output.save())
        pc = lm.output.logits[0, -1].softmax(-1)[answer].save()
    clean = [s if isinstance(s, torch.Tensor) else s.value for s in saved]
    clean = [c[0] if isinstance(c, tuple) else c for c in clean]
    grid = torch.empty(n, seq)
    batch = ids.expand(seq, -1)
    rows = torch.arange(seq)
    with lm.trace(ids):
        lm.model.embed_tokens.output[:, SUBJECT] += noise[0]
        pk = lm.output.logits[0, -1].softmax(-1)[answer].save()
    for l in range(n):
        with lm.trace(batch):
            lm.model.embed_tokens.output[:, SUBJECT] += noise[0]
            lm.model.layers[l].output[rows, rows] = clean[l][0, rows]
            p = lm.output.logits[:, -1].softmax(-1)[:, answer].save()
        grid[l] = p if isinstance(p, torch.Tensor) else p.value
    return grid, float(pc), float(pk)


def tl_style(bridge, ids, answer, noise):
    n, seq = bridge.cfg.n_layers, ids.shape[1]
    _, cache = bridge.run_with_cache(ids)
    p_clean = float(bridge(ids)[0, -1].softmax(-1)[answer])

    def add_noise(x, hook):
        x[:, SUBJECT] += noise[0]
        return x

    p_corr = float(bridge.run_with_hooks(ids, fwd_hooks=[("hook_embed", add_noise)])[0, -1].softmax(-1)[answer])
    grid = torch.empty(n, seq)
    batch = ids.expand(seq, -1)
    rows = torch.arange(seq)
    for l in range(n):
        clean = cache[f"blocks.{l}.hook_resid_post"]

        def restore(x, hook, clean=clean):
            x[rows, rows] = clean[0, rows]
            return x

        out = bridge.run_with_hooks(batch, fwd_hooks=[("hook_embed", add_noise), (f"blocks.{l}.hook_resid_post", restore)])
        grid[l] = out[:, -1].softmax(-1)[:, answer]
    return grid, p_clean, p_corr


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true", help="skip pyvene / nnsight / TransformerLens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, ids, answer, noise = setup()
    import vene as pv_vene

    variants = {
        "hand hooks, batched per layer": lambda: hand_hooks(model, ids, answer, noise),
        "vene causal_trace (layer stepping)": lambda: vene_trace(model, tok, ids, answer, noise),
        "vene causal_trace, strategy='step' (no prefix reuse)": lambda: vene_trace(model, tok, ids, answer, noise, "step"),
        "vene causal_trace, strategy='forward'": lambda: vene_trace(model, tok, ids, answer, noise, "forward"),
        "pyvene-style code on vene (per layer, source_representations)": lambda: pyvene_style(pv_vene, model, ids, answer, noise),
    }
    skipped = []
    if not args.no_peers:
        if importlib.util.find_spec("pyvene") is not None:
            import pyvene

            variants["pyvene (per layer, source_representations)"] = lambda: pyvene_style(pyvene, model, ids, answer, noise)
        else:
            skipped.append("pyvene")
        if importlib.util.find_spec("nnsight") is not None:
            from nnsight import LanguageModel

            lm = LanguageModel(copy.deepcopy(model), tokenizer=tok)
            variants["nnsight (one trace per layer, batch 10)"] = lambda: nnsight_style(lm, model.config.num_hidden_layers, ids, answer, noise)
        else:
            skipped.append("nnsight")
        if importlib.util.find_spec("transformer_lens") is not None:
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(
                "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=copy.deepcopy(model), tokenizer=tok)
            variants["TransformerLens bridge (run_with_hooks per layer)"] = lambda: tl_style(bridge, ids, answer, noise)
        else:
            skipped.append("transformer_lens")

    grids, times, cpu = {}, {k: [] for k in variants}, {k: [] for k in variants}
    with torch.no_grad():
        for name, fn in list(variants.items()):  # warm-up; a peer library that fails is reported, not fatal
            try:
                grids[name] = fn()
            except Exception as err:  # noqa: BLE001
                if name.startswith(("hand", "vene")):
                    raise
                skipped.append(f"{name} (failed: {type(err).__name__}: {err})")
                del variants[name], times[name], cpu[name]
        for _ in range(args.reps):
            for name, fn in variants.items():
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)

    ref_name = "hand hooks, batched per layer"
    ref = statistics.median(times[ref_name])
    ref_cpu = statistics.median(cpu[ref_name])
    ref_grid, p_clean, p_corr = grids[ref_name]
    print(f"causal-trace sweep, SmolLM2-135M, 30 layers x 10 positions, block_output, 1 noise sample; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (shared machine)")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}; vene sweep modes: "
          + ", ".join(f"{k!r} -> {v}" for k, v in MODES.items()))
    print(f"p_clean = {p_clean:.4f}, p_corrupted = {p_corr:.4f}; wall time = median of {args.reps} round-robin runs "
          f"after a warm-up, cpu = process CPU time (both threads; less sensitive to other users of the machine)")
    print(f"{'variant':66s} {'median s':>9s} {'runs':>24s} {'/ hand':>7s} {'cpu s':>7s} {'/ hand':>7s} {'max |grid diff|':>16s}")
    ok = True
    for name in variants:
        med = statistics.median(times[name])
        diff = float((grids[name][0].float() - ref_grid).abs().max())
        ok &= diff <= 1e-4
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        c = statistics.median(cpu[name])
        print(f"{name:66s} {med:9.2f} {runs:>24s} {med / ref:7.2f} {c:7.2f} {c / ref_cpu:7.2f} {diff:16.2e}")
    if skipped:
        print("skipped (not installed or failed): " + ", ".join(skipped))
    print("all grids equal within 1e-4" if ok else "GRIDS DIFFER by more than 1e-4")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
