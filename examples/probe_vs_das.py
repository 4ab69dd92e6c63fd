"""Linear probes vs 1-d DAS for gender on SmolLM2-135M, per layer (the pyvene paper's Fig. 3).

Writes ``probe_vs_das.png`` and ``probe_vs_das.json`` to ``--out`` (default out/probe_vs_das);
the same as ``vene probe-vs-das``.

    python examples/probe_vs_das.py [--layers 0,5,10,15,20,25,29] [--steps 10]
"""
from __future__ import annotations

import sys

from vene.studies import probe_vs_das


def main() -> int:
    import argparse as ap_mod

    ap = ap_mod.ArgumentParser(description=__doc__, formatter_class=ap_mod.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    probe_vs_das.add_parser(sub)
    args = ap.parse_args(["probe-vs-das", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
