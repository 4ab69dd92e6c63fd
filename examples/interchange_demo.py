"""Swap the subject representation of one prompt into another on SmolLM2-135M.

"The capital of Spain is" is run with the residual stream (block_output) at the subject token
" Spain" replaced by the one of " Italy" from "The capital of Italy is", at one layer; the top next
tokens are printed before and after.
"""
from __future__ import annotations

import argparse

import torch

import vene as pv
from vene.models.embedded import load_embedded_model


def top(tokenizer, logits: torch.Tensor, n: int = 5) -> str:
    probs = logits.softmax(-1)
    v, i = probs.topk(n)
    return ", ".join(f"{tokenizer.decode(int(t))!r} {float(p):.3f}" for p, t in zip(v, i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=8)
    args = ap.parse_args()
    model, tok = load_embedded_model()
    base = tok("The capital of Spain is", return_tensors="pt")
    source = tok("The capital of Italy is", return_tensors="pt")
    tokens = tok.convert_ids_to_tokens(base["input_ids"][0])
    pos = next(i for i, t in enumerate(tokens) if "Spain" in t)
    pv_model = pv.IntervenableModel({"layer": args.layer, "component": "block_output"}, model)
    with torch.no_grad():
        original, swapped = pv_model(
            base, [source], {"sources->base": pos}, output_original_output=True
        )
    print(f"tokens: {tokens}; swapping position {pos} at layer {args.layer}")
    print("before:", top(tok, original.logits[0, -1]))
    print("after: ", top(tok, swapped.logits[0, -1]))


if __name__ == "__main__":
    main()
