"""Steer SmolLM2-135M by adding a word embedding to every layer's MLP output while it decodes
(the pyvene paper's Fig. 1).

The embedding of " happy" (or " sad"), times ``--scale``, is added to ``mlp_output`` of all 30
layers at every decoding step (pyvene's default for ``generate``: each generated step, on the
newest token). The original continuation and the two steered ones are printed.

    python examples/steering.py [--scale 2.0] [--max-new-tokens 30] [--prompt "..."]
"""
from __future__ import annotations

import argparse

import torch

import vene as pv
from vene.models.embedded import load_embedded_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="Once upon a time there was a little dog who")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--max-new-tokens", type=int, default=30)
    args = ap.parse_args()

    model, tok = load_embedded_model()
    prompt = tok(args.prompt, return_tensors="pt")
    n_layers = model.config.num_hidden_layers
    pv_model = pv.IntervenableModel(
        [{"layer": l, "component": "mlp_output", "intervention_type": pv.AdditionIntervention} for l in range(n_layers)],
        model=model,
    )
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=False, repetition_penalty=1.3)
    emb = model.get_input_embeddings()

    def continuation(ids: torch.Tensor) -> str:
        return tok.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)

    def vector(word: str) -> torch.Tensor:
        token = tok(word, add_special_tokens=False)["input_ids"][0]
        return emb(torch.tensor(token)) * args.scale

    with torch.no_grad():
        # output_original_output=True also returns the un-intervened generation
        original, happy = pv_model.generate(
            prompt, source_representations=vector(" happy"), output_original_output=True, **gen
        )
        _, sad = pv_model.generate(prompt, source_representations=vector(" sad"), **gen)

    print(f"prompt: {args.prompt!r}\n")
    print(f"original:         {continuation(original)!r}")
    print(f"steered happy x{args.scale:g}: {continuation(happy)!r}")
    print(f"steered sad   x{args.scale:g}: {continuation(sad)!r}")
    if torch.equal(happy, original) or torch.equal(sad, original):
        print("(the steering did not change the continuation; try a larger --scale)")

if __name__ == "__main__":
    main()
