"""The ``vene`` subcommands (imported after the arguments are parsed; see :mod:`vene.cli`)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cli import DEFAULT_ANSWER, DEFAULT_PROMPT, CLIError


def _status(args: argparse.Namespace, text: str) -> None:
    """A status line on stderr (hidden by -q)."""
    if not args.quiet:
        print(f"vene {args.command}: {text}", file=sys.stderr, flush=True)


def _need(module: str, extra: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CLIError(f"{why} needs the '{module}' package, which comes with vene's '{extra}' extra: "
                       f"pip install 'vene[{extra}]'")


def _out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from .models.embedded import EMBEDDED_MODEL_ID, load_model

    name = args.model or EMBEDDED_MODEL_ID
    _status(args, f"loading {name} ...")
    start = time.perf_counter()
    model, tok = load_model(args.model)
    if tok is None:
        raise CLIError(f"{name} has no tokenizer; pass --model with a directory that has one.")
    _status(args, f"loaded {name} in {time.perf_counter() - start:.1f} s")
    return model, tok, name


def _tokenizer(args: argparse.Namespace) -> Any:
    from .models.embedded import load_tokenizer

    return load_tokenizer(args.model)


def _save_figure(fig: Any, out: Path, stem: str, formats: list[str], dpi: int) -> list[str]:
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi if fmt == "png" else None)
        paths.append(str(path))
    return paths


def _one_token(tok: Any, text: str, option: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise CLIError(f"{option} {text!r} tokenizes to nothing.")
    if len(ids) > 1:
        pieces = [tok.decode([i]) for i in ids]
        raise CLIError(f"{option} {text!r} is {len(ids)} tokens {pieces}; this needs a one-token answer "
                       f"(try {option} {pieces[0]!r}, or a word the tokenizer keeps whole).")
    return int(ids[0])


# ---------------------------------------------------------------------------------------------
# trace


def _trace_inputs(args: argparse.Namespace, tok: Any, prompt: str, answer: str | None, subject: str | None) -> dict:
    """Check one prompt's answer and subject with the tokenizer only (before the model loads)."""
    from .analysis.causal_trace import find_subject_positions, guess_subject, weak_subject_reason

    if answer is not None:
        _one_token(tok, answer, "--answer")
    ids = tok(prompt)["input_ids"]
    guessed = subject is None
    if subject is None:
        subject = guess_subject(prompt)
        if subject is None:
            raise CLIError(f"cannot guess the subject of {prompt!r} (no capitalised name); pass --subject with "
                           f"the subject's words as they appear in the prompt.")
    try:
        positions = find_subject_positions(tok, ids, prompt, subject)
    except ValueError:
        raise CLIError(f"--subject {subject!r} does not occur in the prompt {prompt!r}.") from None
    pieces = ", ".join(repr(tok.decode([ids[p]])) for p in positions)
    how = "guessed" if guessed else "given"
    _status(args, f"subject ({how}): {subject!r} = tokens {pieces} at positions {positions}")
    reason = weak_subject_reason(prompt, subject) if guessed else None
    if reason:
        print(f"vene trace: WARNING: the guessed subject may be wrong: {reason}. Pass --subject \"...\" "
              f"to choose it.", file=sys.stderr, flush=True)
    return {"prompt": prompt, "answer": answer, "subject": positions, "n_tokens": len(ids)}


def _resume_state(args: argparse.Namespace, parser_defaults: dict) -> Any:
    from .analysis.results import CausalTraceResult

    path = Path(args.out) / "trace.json"
    if not path.is_file():
        raise CLIError(f"--resume: there is no saved run in {path} (run without --resume first, or pass its --out).")
    prev = CausalTraceResult.from_json(path)
    saved = {"prompt": prev.prompt, "samples": prev.samples, "seed": prev.seed, "components": list(prev.scores),
             "corruption": prev.corruption,
             "layers": prev.layers, "positions": prev.positions, "model": prev.model_name}
    for key, value in saved.items():
        given = getattr(args, key, None)
        if given != parser_defaults.get(key) and given is not None and given != value:
            raise CLIError(f"--resume continues the saved run with its own settings, but --{key} {given!r} differs "
                           f"from the saved {value!r}; drop --{key}, or start a new run without --resume.")
    return prev


def _read_prompts(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--prompts: no such file {path!r}.")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.lstrip().startswith("{"):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise CLIError(f"--prompts {path}:{n}: not valid JSON ({err}).") from None
            if "prompt" not in d:
                raise CLIError(f"--prompts {path}:{n}: a JSON line needs a 'prompt' key.")
        else:
            parts = line.split("\t")
            d = {"prompt": parts[0], "answer": parts[1] if len(parts) > 1 and parts[1] else None,
                 "subject": parts[2] if len(parts) > 2 and parts[2] else None}
        rows.append({"prompt": d["prompt"], "answer": d.get("answer"), "subject": d.get("subject")})
    if not rows:
        raise CLIError(f"--prompts: {path} has no prompts.")
    return rows


def cmd_trace(args: argparse.Namespace) -> int:
    from .cli import build_parser

    if args.prompts and args.resume:
        raise CLIError("--resume works for one prompt, not with --prompts.")
    if args.prompts and args.positions is not None:
        raise CLIError("--prompts averages over every token of each prompt; drop --positions.")
    if not args.no_plot:
        _need("matplotlib", "viz", "the trace figure (use --no-plot to skip it)")
    _need("transformers", "hf", "loading a model")
    trace_parser = build_parser()._subparsers._group_actions[0].choices["trace"]  # type: ignore[union-attr, index]  # typeshed: _subparsers / Action.choices are Optional
    defaults = {a.dest: a.default for a in trace_parser._actions}
    prev = _resume_state(args, defaults) if args.resume else None
    out = _out_dir(args.out)
    tok = _tokenizer(args)
    if args.prompts:
        jobs = [_trace_inputs(args, tok, r["prompt"], r["answer"], r["subject"]) for r in _read_prompts(args.prompts)]
    elif prev is not None:
        jobs = [{"prompt": prev.prompt, "answer": prev.answer_id, "subject": prev.subject_positions}]
        _status(args, f"resuming {out / 'trace.json'}: {prev.cells_done} of {prev.cells_total} restorations done")
    else:
        answer = args.answer if args.answer is not None or args.prompt != DEFAULT_PROMPT else DEFAULT_ANSWER
        jobs = [_trace_inputs(args, tok, args.prompt, answer, args.subject)]
    model, tok, name = _load_model(args)
    settings = dict(components=args.components, window=args.window, noise=args.noise, samples=args.samples,
                    seed=args.seed, layers=args.layers, positions=args.positions, corruption=args.corruption)
    if prev is not None:
        settings.update(components=list(prev.scores), window=prev.window, noise=prev.noise_std,
                        samples=prev.samples, seed=prev.seed, layers=prev.layers, positions=prev.positions,
                        corruption=prev.corruption)
    results, interrupted = [], False
    for k, job in enumerate(jobs):
        if len(jobs) > 1:
            _status(args, f"prompt {k + 1} of {len(jobs)}: {job['prompt']!r}")
        res, interrupted = _run_trace(args, model, tok, name, job, settings, prev)
        results.append(res)
        if interrupted:
            break
    if len(jobs) == 1:
        return _finish_trace(args, results[0], out, interrupted)
    return _finish_average(args, results, out, interrupted, len(jobs))


def _run_trace(args, model, tok, name, job, settings, prev) -> tuple[Any, bool]:
    import torch

    from .analysis import causal_trace
    from .analysis.results import SweepInterrupted

    n_tok = job.get("n_tokens") or len(prev.tokens)
    n_pos = len(settings["positions"]) if settings["positions"] is not None else n_tok
    n_lay = len(settings["layers"]) if settings["layers"] is not None else None
    grid = f"{len(settings['components'])} components x {n_lay or 'all'} layers x {n_pos} tokens"
    if settings["corruption"] == "noise":
        how = f"each restoration is averaged over {settings['samples'] or 10} noise samples"
    else:
        how = f"the subject is corrupted by {settings['corruption']} ablation"
    _status(args, f"sweeping {grid}; {how}")
    try:
        with torch.no_grad():
            res = causal_trace(model, tok, job["prompt"], job["answer"], subject=job["subject"],
                               progress=not args.no_progress, resume=prev, **settings)
        interrupted = False
    except SweepInterrupted as stop:
        res, interrupted = stop.result, True
    res.model_name = name
    return res, interrupted


def _finish_trace(args, result, out: Path, interrupted: bool) -> int:
    result.save(out / "trace.json")
    wrote = [str(out / "trace.json")]
    if not args.no_plot:
        wrote = _save_figure(result.plot(), out, "trace", args.format, args.dpi) + wrote
    timings = result.provenance.get("timings", {})
    if interrupted:
        print(f"vene trace: interrupted: saved {result.cells_done} of {result.cells_total} restorations "
              f"(partial) to {', '.join(wrote)}; continue with: vene trace --resume --out {args.out}", file=sys.stderr)
        return 130
    print(f"causal trace of {result.model_name} in {timings.get('record_s', 0) + timings.get('sweep_s', 0):.1f} s "
          f"(sweep mode {result.extra.get('strategy')})")
    print(result.summary())
    for w in result.warnings:
        print(f"WARNING: {w}")
    print("wrote " + ", ".join(wrote))
    return 0


def _finish_average(args, results, out: Path, interrupted: bool, n_jobs: int) -> int:
    from .analysis.average import average_traces

    done = [r for r in results if r.complete]
    if not done:
        print("vene trace: interrupted before the first prompt finished; nothing saved.", file=sys.stderr)
        return 130
    avg = average_traces(done)
    avg.save(out / "average.json")
    wrote = [str(out / "average.json")]
    if not args.no_plot:
        wrote = _save_figure(avg.plot(), out, "average", args.format, args.dpi) + wrote
    if interrupted:
        print(f"vene trace: interrupted: saved the average of the {len(done)} of {n_jobs} prompts that finished "
              f"(partial) to {', '.join(wrote)}", file=sys.stderr)
        return 130
    print(avg.summary())
    print("wrote " + ", ".join(wrote))
    return 0


# ---------------------------------------------------------------------------------------------
# patch


def cmd_patch(args: argparse.Namespace) -> int:
    if not args.no_plot:
        _need("matplotlib", "viz", "the patching figure (use --no-plot to skip it)")
    _need("transformers", "hf", "loading a model")
    positions: Any = None
    if args.positions is not None:
        from .cli import int_list

        try:
            positions = "all" if args.positions == "all" else int_list(args.positions)
        except argparse.ArgumentTypeError as err:
            raise CLIError(f"--positions: {err}") from None
    tok = _tokenizer(args)
    clean, corrupted = tok(args.clean)["input_ids"], tok(args.corrupted)["input_ids"]
    if len(clean) != len(corrupted):
        raise CLIError(
            f"the prompts must have the same number of tokens ({len(clean)} vs {len(corrupted)}): "
            f"{[tok.decode([i]) for i in clean]} vs {[tok.decode([i]) for i in corrupted]}")
    fixed = {o: _one_token(tok, t, o) for o, t in (("--answer", args.answer), ("--wrong", args.wrong)) if t is not None}
    model, tok, name = _load_model(args)
    import torch

    from .analysis import activation_patching, logit_diff, logprob, probability

    clean_in, corr_in = tok(args.clean, return_tensors="pt"), tok(args.corrupted, return_tensors="pt")
    with torch.no_grad():
        answer = fixed.get("--answer", int(model(**clean_in).logits[0, -1].argmax()))
        wrong = fixed.get("--wrong", int(model(**corr_in).logits[0, -1].argmax()))
    a, w = tok.decode([answer]), tok.decode([wrong])
    if args.metric == "logit_diff":
        if answer == wrong:
            raise CLIError(f"the answer and the wrong answer are the same token {a!r}; pass --answer and --wrong.")
        metric, desc = logit_diff(answer, wrong), f"logit({a.strip()}) - logit({w.strip()})"
    elif args.metric == "prob":
        metric, desc = probability(answer), f"p({a.strip()})"
    else:
        metric, desc = logprob(answer), f"log p({a.strip()})"
    _status(args, f"patching {len(args.components)} components; metric {desc}")
    from .analysis.results import SweepInterrupted

    try:
        with torch.no_grad():
            result = activation_patching(model, clean_in, corr_in, metric, components=args.components,
                                         layers=args.layers, positions=positions, tokenizer=tok,
                                         progress=not args.no_progress, metric_name=desc)
    except SweepInterrupted as stop:
        result = stop.result
    result.model_name, result.clean_prompt, result.corrupted_prompt = name, args.clean, args.corrupted
    out = _out_dir(args.out)
    from .analysis.results import write_json

    write_json(out / "patch.json", {**result.to_dict(), "answer": a, "wrong": w, "metric": args.metric})
    wrote = [str(out / "patch.json")]
    if not args.no_plot:
        normalize = result.clean_metric != result.corrupted_metric
        wrote = _save_figure(result.plot(normalize=normalize), out, "patch", args.format, args.dpi) + wrote
    if not result.complete:
        print(f"vene patch: interrupted: saved the finished cells (partial; the rest are blank/null) to "
              f"{', '.join(wrote)}", file=sys.stderr)
        return 130
    t = result.provenance.get("timings", {})
    print(f"activation patching of {name} in {t.get('record_s', 0) + t.get('sweep_s', 0):.1f} s; metric {desc}")
    print(result.summary())
    print("wrote " + ", ".join(wrote))
    return 0


# ---------------------------------------------------------------------------------------------
# steer


class _TokenBar:
    """A transformers streamer that advances a tqdm bar per generated token."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.first = bar, True

    def put(self, value: Any) -> None:
        if self.first:  # the prompt
            self.first = False
            return
        self.bar.update(1)

    def end(self) -> None:
        self.first = True


def cmd_steer(args: argparse.Namespace) -> int:
    _need("transformers", "hf", "loading a model")
    if args.layers != "all":
        from .cli import int_list

        try:
            layer_list = int_list(args.layers)
        except argparse.ArgumentTypeError as err:
            raise CLIError(f"--layers: {err}") from None
    tok = _tokenizer(args)
    word_ids = tok(args.word, add_special_tokens=False)["input_ids"]
    if not word_ids:
        raise CLIError(f"--word {args.word!r} tokenizes to nothing.")
    model, tok, name = _load_model(args)
    import torch
    from tqdm.auto import tqdm

    from . import IntervenableModel
    from .analysis.causal_trace import n_layers_of
    from .interventions import AdditionIntervention

    with torch.no_grad():
        vector = model.get_input_embeddings().weight[word_ids].mean(0) * args.scale
    n_layers = n_layers_of(model)
    layers = list(range(n_layers)) if args.layers == "all" else layer_list
    bad = [l for l in layers if not -n_layers <= l < n_layers]
    if bad:
        raise CLIError(f"--layers {bad} are out of range: {name} has {n_layers} layers (0-{n_layers - 1}).")
    pv_model = IntervenableModel(
        [{"layer": l % n_layers, "component": args.component, "intervention_type": AdditionIntervention} for l in layers],
        model)
    # only what generation needs: some tokenizers also return token_type_ids, which causal LMs
    # refuse in generate() (transformers 4.x)
    prompt = {k: v for k, v in tok(args.prompt, return_tensors="pt").items() if k in ("input_ids", "attention_mask")}
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is not None:
        gen["pad_token_id"] = pad
    with torch.no_grad(), tqdm(total=2 * args.max_new_tokens, desc="generating (original, then steered)",
                               unit=" tokens", disable=args.no_progress, leave=False) as bar:
        plain = model.generate(**prompt, streamer=_TokenBar(bar), **gen)
        bar.n = args.max_new_tokens
        bar.refresh()
        _, steered = pv_model.generate(prompt, source_representations=vector, timesteps="all",
                                       streamer=_TokenBar(bar), **gen)
    n = prompt["input_ids"].shape[1]
    original_text = tok.decode(plain[0, n:], skip_special_tokens=True)
    steered_text = tok.decode(steered[0, n:], skip_special_tokens=True)
    print(f"steering {name}: + {args.scale} x embedding({args.word!r}) on {args.component} of "
          f"{len(layers)} layers at every decoding step (greedy)")
    print(f"prompt:   {args.prompt!r}")
    print(f"original: {original_text!r}")
    print(f"steered:  {steered_text!r}")
    if args.out:
        from .analysis.results import provenance, write_json

        out = _out_dir(args.out)
        write_json(out / "steer.json", {"kind": "steer", "model": name, "prompt": args.prompt, "word": args.word,
                                        "scale": args.scale, "component": args.component, "layers": layers,
                                        "original": original_text, "steered": steered_text,
                                        "provenance": provenance()})
        print(f"wrote {out / 'steer.json'}")
    return 0
