"""Indirect object identification on SmolLM2-135M: head attribution, activation and path patching, DLA.

Writes ``ioi.png`` and ``ioi.json`` to ``--out`` (default out/ioi);
the same as ``vene ioi``.

    python examples/ioi.py [--prompts 8] [--top-heads 10]
"""
from __future__ import annotations

import sys

from vene.studies import ioi


def main() -> int:
    import argparse as ap_mod

    ap = ap_mod.ArgumentParser(description=__doc__, formatter_class=ap_mod.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    ioi.add_parser(sub)
    args = ap.parse_args(["ioi", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
