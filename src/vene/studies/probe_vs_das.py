"""``vene probe-vs-das``: the command line of :mod:`vene.studies.gender` (imports stay lazy)."""
from __future__ import annotations

import argparse
from typing import Any

from ._common import add_common, load, write_outputs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("probe-vs-das", help="the pyvene paper's Fig. 3: linear probes vs 1-d DAS for gender, per layer")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: every fourth layer and the last)")
    p.add_argument("--steps", type=int, default=5, help="DAS optimiser steps (default 5)")
    p.add_argument("--lr", type=float, default=0.02, help="DAS learning rate (default 0.02)")
    p.add_argument("--init", choices=["mean-diff", "random"], default="mean-diff",
                   help="DAS direction at the start: class-mean difference (default) or random")
    p.add_argument("--pairs", type=int, default=48, help="train / test pairs at most (default 48)")
    add_common(p, "out/probe_vs_das")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .gender import run_study

    model, tok, name = load(args)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    out, fig = run_study(model, tok, layers=layers, steps=args.steps, lr=args.lr, init=args.init, max_pairs=args.pairs,
                         seed=args.seed, progress=not args.no_progress)
    out["model"] = name
    wrote = write_outputs(args.out, "probe_vs_das", out, fig, args.dpi)
    print(f"probe vs DAS on {name}: {out['examples']['kept']} prompts kept (model accuracy {out['model_accuracy']:.2f}), "
          f"{out['timings_s']['total']:.0f} s")
    for which in ("name", "last"):
        r = out["results"][which]
        print(f"  {which:>4} token  layer: " + " ".join(f"{l:>4}" for l in out["layers"]))
        print("        probe acc:  " + " ".join(f"{v:4.2f}" for v in r["probe"]))
        print("          DAS IIA:  " + " ".join(f"{v:4.2f}" for v in r["das"]))
    print("wrote " + ", ".join(wrote))
    return 0
