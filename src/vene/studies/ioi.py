"""``vene ioi``: the command line of :mod:`vene.studies.ioi_circuit` (imports stay lazy)."""
from __future__ import annotations

import argparse
from typing import Any

from ._common import add_common, load, write_outputs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ioi", help="indirect object identification: head attribution, activation and path patching, DLA")
    p.add_argument("--prompts", type=int, default=8, help="number of IOI prompts (default 8)")
    p.add_argument("--names", type=int, default=10, help="names kept, those the model handles best (default 10)")
    p.add_argument("--top-heads", type=int, default=10, help="heads path-patched (default 10)")
    p.add_argument("--layers", default=None, help="comma-separated layers whose heads are patched (default: all)")
    add_common(p, "out/ioi")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .ioi_circuit import run_study

    model, tok, name = load(args)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    out, fig = run_study(model, tok, n_prompts=args.prompts, n_names=args.names, top_heads=args.top_heads, layers=layers,
                         seed=args.seed, progress=not args.no_progress)
    out["model"] = name
    wrote = write_outputs(args.out, "ioi", out, fig, args.dpi)
    ld = out["logit_diff"]
    print(f"IOI on {name}: {len(out['prompts'])} prompts, logit diff clean {ld['clean']:.3f}, corrupted {ld['corrupted']:.3f}, "
          f"clean accuracy {out['clean_accuracy']:.2f}; {out['timings_s']['total']:.0f} s")
    a = out["attribution_vs_activation_patching"]
    print(f"attribution vs exact head patching: Spearman {a['spearman']:.3f}, Pearson {a['pearson']:.3f} over {a['cells']} heads")
    print("heads that matter (fraction of the logit diff restored; DLA in logits):")
    for h in out["heads_that_matter"]:
        print(f"  L{h['layer']:>2}H{h['head']}: patching {h['activation_patching']:+.3f}  direct path {h['path_patching_direct']:+.3f}  "
              f"attribution {h['attribution']:+.3f}  DLA {h['direct_logit_attribution']:+.3f}")
    print("wrote " + ", ".join(wrote))
    return 0
