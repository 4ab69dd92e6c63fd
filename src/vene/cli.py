"""The ``vene`` command: causal tracing, activation patching and steering from the shell.

    vene trace "The Eiffel Tower is located in the city of" --answer " Paris" --out out/trace
    vene patch "The Eiffel Tower is in the city of" "The Colosseum is in the city of" --out out/patch
    vene steer "Once upon a time there was a" --word " happy" --scale 1.2

Every command runs offline on the embedded SmolLM2-135M-Instruct unless ``--model`` names a local
directory, a ``.gguf`` file or a model in the local Hugging Face cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"
DEFAULT_ANSWER = " Paris"
STEER_PROMPT = "Once upon a time there was a"


def _load(name: str | None) -> tuple[Any, Any, str]:
    from .models.embedded import EMBEDDED_MODEL_ID, load_model

    model, tok = load_model(name)
    return model, tok, name or EMBEDDED_MODEL_ID


def _out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


# ---------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    import torch

    from .analysis import causal_trace

    model, tok, name = _load(args.model)
    if tok is None:
        raise SystemExit("vene trace: the model has no tokenizer; pass a model directory that has one.")
    answer = args.answer
    if answer is None and args.prompt == DEFAULT_PROMPT:
        answer = DEFAULT_ANSWER
    start = time.perf_counter()
    with torch.no_grad():
        result = causal_trace(
            model, tok, args.prompt, answer, subject=args.subject, components=args.components,
            window=args.window, noise=args.noise, samples=args.samples, seed=args.seed,
            progress=not args.no_progress,
        )
    elapsed = time.perf_counter() - start
    result.model_name = name
    out = _out_dir(args.out)
    _write_json(out / "trace.json", result.to_dict())
    wrote = [str(out / "trace.json")]
    if not args.no_plot:
        fig = result.plot()
        fig.savefig(out / "trace.png", dpi=args.dpi)
        wrote.insert(0, str(out / "trace.png"))
    print(f"causal trace of {name} in {elapsed:.1f} s")
    print(result.summary())
    print("wrote " + ", ".join(wrote))
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    import torch

    from .analysis import activation_patching, logit_diff, logprob, probability

    model, tok, name = _load(args.model)
    if tok is None:
        raise SystemExit("vene patch: the model has no tokenizer; pass a model directory that has one.")
    clean = tok(args.clean, return_tensors="pt")
    corrupted = tok(args.corrupted, return_tensors="pt")
    if clean["input_ids"].shape != corrupted["input_ids"].shape:
        raise SystemExit(
            f"vene patch: the prompts must have the same number of tokens "
            f"({clean['input_ids'].shape[1]} vs {corrupted['input_ids'].shape[1]}); "
            f"tokens: {tok.convert_ids_to_tokens(clean['input_ids'][0])} vs "
            f"{tok.convert_ids_to_tokens(corrupted['input_ids'][0])}"
        )

    def token(text: str | None, ids: Any) -> int:
        if text is None:
            with torch.no_grad():
                return int(model(**ids).logits[0, -1].argmax())
        return int(tok(text, add_special_tokens=False)["input_ids"][0])

    answer, wrong = token(args.answer, clean), token(args.wrong, corrupted)
    if args.metric == "logit_diff":
        if answer == wrong:
            raise SystemExit(f"vene patch: answer and wrong answer are the same token {tok.decode([answer])!r}; pass --answer/--wrong.")
        metric = logit_diff(answer, wrong)
    elif args.metric == "prob":
        metric = probability(answer)
    else:
        metric = logprob(answer)
    positions = None if args.positions is None else ("all" if args.positions == "all" else [int(p) for p in args.positions.split(",")])
    start = time.perf_counter()
    with torch.no_grad():
        result = activation_patching(model, clean, corrupted, metric, components=args.components,
                                     positions=positions, tokenizer=tok, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    out = _out_dir(args.out)
    data = {"model": name, "clean": args.clean, "corrupted": args.corrupted, "answer": tok.decode([answer]),
            "wrong": tok.decode([wrong]), "metric": args.metric, **result.to_dict()}
    _write_json(out / "patch.json", data)
    wrote = [str(out / "patch.json")]
    if not args.no_plot:
        normalize = result.clean_metric != result.corrupted_metric
        result.plot(normalize=normalize).savefig(out / "patch.png", dpi=args.dpi)
        wrote.insert(0, str(out / "patch.png"))
    desc = {"logit_diff": f"logit({tok.decode([answer])!r}) - logit({tok.decode([wrong])!r})",
            "prob": f"p({tok.decode([answer])!r})", "logprob": f"log p({tok.decode([answer])!r})"}[args.metric]
    print(f"activation patching of {name} in {elapsed:.1f} s; metric {desc}")
    print(result.summary())
    print("wrote " + ", ".join(wrote))
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    import torch

    import vene as pv

    model, tok, name = _load(args.model)
    if tok is None:
        raise SystemExit("vene steer: the model has no tokenizer; pass a model directory that has one.")
    word_ids = tok(args.word, add_special_tokens=False)["input_ids"]
    if not word_ids:
        raise SystemExit(f"vene steer: {args.word!r} tokenizes to nothing.")
    with torch.no_grad():
        vector = model.get_input_embeddings().weight[word_ids].mean(0) * args.scale
    n_layers = len(_layers_of(model))
    layers = range(n_layers) if args.layers == "all" else [int(l) for l in args.layers.split(",")]
    pv_model = pv.IntervenableModel(
        [{"layer": l, "component": args.component, "intervention_type": pv.AdditionIntervention} for l in layers], model)
    if not callable(getattr(pv_model, "generate", None)):
        raise SystemExit("vene steer needs IntervenableModel.generate (vene.generation), which is not available.")
    prompt = tok(args.prompt, return_tensors="pt")
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is not None:
        gen["pad_token_id"] = pad
    with torch.no_grad():
        plain = model.generate(**prompt, **gen)
        _, steered = pv_model.generate(prompt, source_representations=vector, timesteps="all", **gen)
    n = prompt["input_ids"].shape[1]
    original_text = tok.decode(plain[0, n:], skip_special_tokens=True)
    steered_text = tok.decode(steered[0, n:], skip_special_tokens=True)
    print(f"steering {name}: + {args.scale} x embedding({args.word!r}) on {args.component} of "
          f"{len(list(layers))} layers at every decoding step (greedy)")
    print(f"prompt:   {args.prompt!r}")
    print(f"original: {original_text!r}")
    print(f"steered:  {steered_text!r}")
    if args.out:
        out = _out_dir(args.out)
        _write_json(out / "steer.json", {"model": name, "prompt": args.prompt, "word": args.word, "scale": args.scale,
                                          "component": args.component, "layers": list(layers),
                                          "original": original_text, "steered": steered_text})
        print(f"wrote {out / 'steer.json'}")
    return 0


def _layers_of(model: Any) -> Any:
    from .components import detect_architecture

    arch = detect_architecture(model)
    if arch is None:
        raise SystemExit(f"vene steer: cannot find the layers of {type(model).__name__}; pass --layers.")
    return model.get_submodule(arch[1])


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vene", description="Interventions on model internals: causal tracing, "
                                 "activation patching, steering (offline, default model: the embedded SmolLM2-135M).")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: str | None) -> None:
        p.add_argument("--model", default=None, help="local model directory, .gguf file or cached Hub id (default: embedded SmolLM2-135M-Instruct)")
        p.add_argument("--out", default=out, help=f"output directory (default: {out})" if out else "output directory (optional)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    t = sub.add_parser("trace", help="ROME causal trace: restore clean states in a subject-corrupted run")
    t.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"prompt (default: {DEFAULT_PROMPT!r})")
    t.add_argument("--answer", default=None, help="answer text (its first token is traced; default: ' Paris' for the default prompt, else the model's prediction)")
    t.add_argument("--subject", default=None, help="subject text in the prompt (default: the first run of capitalised words)")
    t.add_argument("--samples", type=int, default=10, help="noise samples (default 10, as ROME)")
    t.add_argument("--noise", type=float, default=None, help="noise std (default: 3 x std of the embeddings)")
    t.add_argument("--window", type=int, default=10, help="layers restored together for mlp/attention (default 10)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--components", nargs="+", default=["block_output", "mlp_output", "attention_output"])
    t.add_argument("--no-plot", action="store_true", help="write trace.json only")
    t.add_argument("--dpi", type=int, default=150)
    common(t, "out/trace")
    t.set_defaults(func=cmd_trace)

    p = sub.add_parser("patch", help="activation patching: clean activations into a corrupted run, per layer x position")
    p.add_argument("clean", help="clean prompt")
    p.add_argument("corrupted", help="corrupted prompt (same number of tokens)")
    p.add_argument("--answer", default=None, help="correct answer (default: the clean prompt's prediction)")
    p.add_argument("--wrong", default=None, help="wrong answer (default: the corrupted prompt's prediction)")
    p.add_argument("--metric", choices=["logit_diff", "prob", "logprob"], default="logit_diff")
    p.add_argument("--components", nargs="+", default=["block_output", "mlp_output", "attention_output"])
    p.add_argument("--positions", default=None, help="comma-separated positions, or 'all' to patch every position at once (default: each position)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--dpi", type=int, default=150)
    common(p, "out/patch")
    p.set_defaults(func=cmd_patch)

    s = sub.add_parser("steer", help="the pyvene paper's Fig. 1: add a word embedding to every layer while generating")
    s.add_argument("prompt", nargs="?", default=STEER_PROMPT, help=f"prompt (default: {STEER_PROMPT!r})")
    s.add_argument("--word", default=" happy", help="steering word (default ' happy')")
    s.add_argument("--scale", type=float, default=1.2, help="coefficient of the word embedding (default 1.2; from about 2 on SmolLM2 repeats the word)")
    s.add_argument("--component", default="mlp_output")
    s.add_argument("--layers", default="all", help="comma-separated layers or 'all'")
    s.add_argument("--max-new-tokens", type=int, default=40)
    common(s, None)
    s.set_defaults(func=cmd_steer)

    from .studies import ioi, probe_vs_das  # case studies: each module sets up its own command

    probe_vs_das.add_parser(sub)
    ioi.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .errors import VeneError
    from .models.embedded import EmbeddedModelNotInstalledError, ModelNotAvailableError

    try:
        return args.func(args)
    except (VeneError, ModelNotAvailableError, EmbeddedModelNotInstalledError) as err:
        print(f"vene {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
