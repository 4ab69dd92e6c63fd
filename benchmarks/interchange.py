"""Single interchange intervention and per-call overhead: vene vs hand-written hooks (vs pyvene).

Run: .venv/bin/python benchmarks/interchange.py [--no-smollm] [--rounds N]

All methods run side by side in one process, round-robin, under torch.no_grad(); medians in ms.
"Hand hooks" is the straightforward way to do the same work with plain PyTorch: a source pass with
a saving hook, then a base pass with a patching hook (2 forward passes). vene fuses source and base
into one batched pass, so its ratio can be below 1.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import vene as pv

try:  # pyvene is optional: compare when it is installed
    import pyvene  # type: ignore
except Exception:  # noqa: BLE001
    pyvene = None


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                      intermediate_size=688, vocab_size=1000, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def layers_of(model):
    return model.model.layers


def hand_interchange(model, layer, pos):
    mod = layers_of(model)[layer]

    def run(base, src):
        store = {}

        def save(m, a, o):
            store["s"] = (o if isinstance(o, torch.Tensor) else o[0])[:, pos].clone()

        h = mod.register_forward_hook(save)
        model(**src)
        h.remove()

        def patch(m, a, o):
            t = o if isinstance(o, torch.Tensor) else o[0]
            t[:, pos] = store["s"]
            return o

        h = mod.register_forward_hook(patch)
        out = model(**base)
        h.remove()
        return out

    return run


def hand_zero(model, layer, pos):
    mod = layers_of(model)[layer]

    def run(base):
        def patch(m, a, o):
            t = o if isinstance(o, torch.Tensor) else o[0]
            t[:, pos] = 0
            return o

        h = mod.register_forward_hook(patch)
        out = model(**base)
        h.remove()
        return out

    return run


def hand_input_interchange(model, layer, pos):
    """Interchange at the MLP's *input*: the pre-hook writes out of place, since in a pre-norm
    block that tensor is the MLP's own but in post-norm / parallel blocks it is shared."""
    mod = layers_of(model)[layer].mlp

    def run(base, src):
        store = {}

        def save(m, a):
            store["s"] = a[0][:, pos].clone()

        h = mod.register_forward_pre_hook(save)
        model(**src)
        h.remove()

        def patch(m, a):
            t = a[0].clone()
            t[:, pos] = store["s"]
            return (t,) + tuple(a[1:])

        h = mod.register_forward_pre_hook(patch)
        out = model(**base)
        h.remove()
        return out

    return run


def input_site_case(model, batch, rounds, name):
    """The cost of copy-on-write at input sites (vene copies the input before writing)."""
    L = len(layers_of(model)) // 2
    g = torch.Generator().manual_seed(0)
    base = {"input_ids": torch.randint(0, model.config.vocab_size, (batch, 10), generator=g)}
    src = {"input_ids": torch.randint(0, model.config.vocab_size, (batch, 10), generator=g)}
    hand = hand_input_interchange(model, L, 5)
    pvm = pv.IntervenableModel({"layer": L, "component": "mlp_input"}, model=model)
    fns = {"hand hooks (2 passes, out of place)": lambda: hand(base, src), "vene": lambda: pvm(base, [src], {"sources->base": 5})}
    with torch.no_grad():
        diff = float((hand(base, src).logits - pvm(base, [src], {"sources->base": 5})[1].logits).abs().max())
        res = bench(fns, rounds)
    report(f"interchange at an input site (mlp_input), {name}, b={batch} (max |logit diff| {diff:.1e})", res,
           "hand hooks (2 passes, out of place)")
    return res


def bench(fns: dict, rounds: int, warmup: int = 2) -> dict:
    times = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, res: dict, ref: str) -> None:
    print(f"\n{title}")
    for k, v in res.items():
        print(f"  {k:<34} {v:9.3f} ms   {v / res[ref]:5.2f}x")


def case(model, batch, rounds, name):
    L = len(layers_of(model)) // 2
    pos = 5
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    base = {"input_ids": torch.randint(0, vocab, (batch, 10), generator=g)}
    src = {"input_ids": torch.randint(0, vocab, (batch, 10), generator=g)}
    hand = hand_interchange(model, L, pos)
    pvm = pv.IntervenableModel({"layer": L, "component": "block_output"}, model=model)
    fns = {
        "hand hooks (2 passes)": lambda: hand(base, src),
        "vene": lambda: pvm(base, [src], {"sources->base": pos}),
    }
    if pyvene is not None:
        pym = pyvene.IntervenableModel({"layer": L, "component": "block_output"}, model=model)
        fns["pyvene"] = lambda: pym(base, [src], {"sources->base": pos})
    with torch.no_grad():
        a = hand(base, src).logits
        b = pvm(base, [src], {"sources->base": pos})[1].logits
        diff = float((a - b).abs().max())
        res = bench(fns, rounds)
    report(f"interchange, {name}, b={batch} (max |logit diff| vs hand hooks {diff:.1e})", res, "hand hooks (2 passes)")
    return res


def overhead(model, rounds):
    L = len(layers_of(model)) // 2
    base = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))}
    hand = hand_zero(model, L, 5)
    pvm = pv.IntervenableModel({"layer": L, "component": "block_output", "intervention_type": pv.ZeroIntervention}, model=model)
    fns = {
        "plain forward": lambda: model(**base),
        "hand hook (zero one position)": lambda: hand(base),
        "vene (zero one position)": lambda: pvm(base, unit_locations={"base": 5}),
    }
    with torch.no_grad():
        res = bench(fns, rounds, warmup=20)
    report("fixed per-call overhead, tiny llama b=1", res, "hand hook (zero one position)")
    print(f"  => vene overhead per call: {res['vene (zero one position)'] - res['hand hook (zero one position)']:.3f} ms")
    return res


def fusion_sweep(model, name, batches, rounds):
    """Fused pass vs separate early-stopped passes vs the default ("auto") across batch sizes."""
    L = len(layers_of(model)) // 2
    print(f"\nfusion sweep, {name} (ratios to hand hooks, 2 passes)")
    for B in batches:
        g = torch.Generator().manual_seed(0)
        base = {"input_ids": torch.randint(0, model.config.vocab_size, (B, 10), generator=g)}
        src = {"input_ids": torch.randint(0, model.config.vocab_size, (B, 10), generator=g)}
        hand = hand_interchange(model, L, 5)
        variants = {k: pv.IntervenableModel({"layer": L, "component": "block_output"}, model=model, batch_sources=v)
                    for k, v in (("fused", True), ("separate", False), ("auto", "auto"))}
        fns = {"hand": lambda: hand(base, src)}
        for k, m in variants.items():
            fns[k] = (lambda m=m: m(base, [src], {"sources->base": 5}))
        with torch.no_grad():
            r = bench(fns, rounds)
        print(f"  b={B:<3} hand {r['hand']:8.1f} ms   " + "   ".join(f"{k} {r[k] / r['hand']:.2f}x" for k in variants))


class _Stack(torch.nn.Module):
    """Four 16-wide linear layers: a forward of ~20 us, so the library's own cost is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(4)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def pure_overhead(rounds):
    m = _Stack().eval()
    base = {"x": torch.randn(1, 10, 16)}

    def hand():
        def patch(mod, a, o):
            o[:, 5] = 0
            return o

        h = m.layers[2].register_forward_hook(patch)
        out = m(**base)
        h.remove()
        return out

    pvm = pv.IntervenableModel({"component": "layers[2].output", "intervention_type": pv.ZeroIntervention}, model=m)
    fns = {"plain forward": lambda: m(**base), "hand hook": hand, "vene": lambda: pvm(base, unit_locations={"base": 5})}
    with torch.no_grad():
        res = bench(fns, rounds, warmup=200)
    report("fixed per-call overhead, 4 x Linear(16) stack (forward ~20 us)", res, "hand hook")
    print(f"  => vene overhead per call: {res['vene'] - res['hand hook']:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-smollm", action="store_true")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, pyvene {'yes' if pyvene else 'not installed'}")
    pure_overhead(args.rounds * 100)
    tiny = tiny_llama()
    overhead(tiny, args.rounds * 10)
    case(tiny, 1, args.rounds, "tiny llama (4x256)")
    case(tiny, 32, args.rounds, "tiny llama (4x256)")
    input_site_case(tiny, 1, args.rounds, "tiny llama (4x256)")
    input_site_case(tiny, 32, args.rounds, "tiny llama (4x256)")
    fusion_sweep(tiny, "tiny llama (4x256)", (1, 4, 16, 32), args.rounds)
    if not args.no_smollm:
        from vene.models.embedded import load_embedded_model

        model, _ = load_embedded_model()
        case(model, 1, max(5, args.rounds // 3), "SmolLM2-135M")
        case(model, 32, max(3, args.rounds // 10), "SmolLM2-135M")
        fusion_sweep(model, "SmolLM2-135M", (1, 4, 8, 32), max(3, args.rounds // 5))


if __name__ == "__main__":
    sys.exit(main())
