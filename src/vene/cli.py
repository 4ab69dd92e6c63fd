"""The ``vene`` command: causal tracing, activation patching and steering from the shell.

    vene trace "The Eiffel Tower is located in the city of" --answer " Paris" --out out/trace
    vene patch "The Eiffel Tower is in the city of" "The Colosseum is in the city of" --out out/patch
    vene steer "Once upon a time there was a" --word " happy" --scale 1.2

Every command runs offline on the embedded SmolLM2-135M-Instruct unless ``--model`` names a local
directory, a ``.gguf`` file or a model in the local Hugging Face cache.

Nothing heavy is imported before the arguments are parsed (``vene --help`` does not import torch);
the commands live in :mod:`vene.cli_commands`. Subcommands defined elsewhere register with one line
in :data:`EXTERNAL_COMMANDS`: a module with ``add_parser(subparsers)`` (creating its subparser,
returning it; no torch import at module level) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import warnings
from typing import Sequence

from . import __version__

DEFAULT_PROMPT = "The Eiffel Tower is located in the city of"
DEFAULT_ANSWER = " Paris"
STEER_PROMPT = "Once upon a time there was a"
COMPONENTS = ["block_output", "mlp_output", "attention_output"]
FORMATS = ("png", "pdf", "svg")

#: Subcommands defined in other modules (``add_parser(subparsers)`` / ``run(args)``), one line each.
EXTERNAL_COMMANDS: list[str] = [
    "vene.studies.probe_vs_das",
    "vene.studies.ioi",
]

#: Which extra brings which module, for the hint shown instead of a ModuleNotFoundError.
EXTRAS = {"transformers": "hf", "accelerate": "hf", "gguf": "hf", "matplotlib": "viz"}


class CLIError(Exception):
    """A user error found by the command itself; printed as ``vene CMD: error: ...`` (exit 2)."""


# ---------------------------------------------------------------------------------------------
# argument types (validation at parse time: nothing loads before the arguments are right)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


def int_list(text: str) -> list[int]:
    """``"3,5,7-9,-1"`` -> ``[3, 5, 7, 8, 9, -1]`` (ranges inclusive; negatives count from the end)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers or ranges like 0,3,5-9, got {text!r}") from None
    return out


def _formats(text: str) -> list[str]:
    fmts = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"formats must be among {','.join(FORMATS)}, got {text!r}")
    return fmts


# ---------------------------------------------------------------------------------------------
# the parser


def _global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """-v / -q / --no-progress, accepted before and after the subcommand."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="say more: -v logs what vene decides (chunks, fast paths), -vv debug details")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False),
                   help="print only results, warnings and errors (no progress bars, no status lines)")
    g.add_argument("--no-progress", action="store_true", default=d(False), help="hide progress bars")


def _model_options(p: argparse.ArgumentParser, out: str | None) -> None:
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                   help="local model directory, .gguf file or model in the local Hugging Face cache "
                        "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=out, metavar="DIR",
                   help=f"output directory (default: {out})" if out else "output directory for a JSON record (optional)")


def _plot_options(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--no-plot", action="store_true", help=f"write {name}.json only (no figure; matplotlib not needed)")
    p.add_argument("--format", type=_formats, default=["png"], metavar="FMT[,FMT]",
                   help="figure formats, comma-separated among png,pdf,svg (default: png)")
    p.add_argument("--dpi", type=_positive_int, default=150, help="resolution of PNG figures (default: 150)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vene",
        description="Interventions on model internals: causal tracing, activation patching, steering "
                    "(offline; default model: the embedded SmolLM2-135M-Instruct).",
        epilog="Options -v, -q and --no-progress work before or after the command. "
               "'vene COMMAND --help' describes a command.")
    ap.add_argument("--version", action="version", version=f"vene {__version__}", help="print vene's version and exit")
    _global_options(ap, top=True)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands",
                            help="run 'vene COMMAND --help' for its options")

    def add(name: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        _global_options(p, top=False)
        return p

    t = add("trace", help="ROME causal trace: restore clean states in a subject-corrupted run",
            description="ROME's causal trace: corrupt the subject's input embeddings with noise, restore each "
                        "component's clean state at each layer and token, and measure how much of the answer's "
                        "probability comes back. Ctrl-C stops cleanly and keeps what is done (--resume continues).")
    t.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    t.add_argument("--answer", default=None,
                   help="the answer, one token, with its leading space (e.g. ' Paris'); default: ' Paris' for "
                        "the default prompt, else the model's own top prediction. A longer answer is refused.")
    t.add_argument("--subject", default=None,
                   help="the subject's words as they appear in the prompt (default: guessed from capitalised "
                        "names; the guess is shown before the run)")
    t.add_argument("--prompts", default=None, metavar="FILE",
                   help="average the trace over many prompts (ROME Fig. 2): a file with one 'prompt<TAB>answer"
                        "<TAB>subject' per line (answer and subject optional) or JSON lines with those keys")
    t.add_argument("--samples", type=_positive_int, default=None,
                   help="noise samples per restoration (default: 10, as ROME; 1 for --corruption zero/mean)")
    t.add_argument("--corruption", choices=["noise", "zero", "mean", "resample"], default="noise",
                   help="how the subject is corrupted: Gaussian noise on its input embeddings (default, as ROME), "
                        "zero or mean embedding (ablation), or random tokens of the vocabulary (resample)")
    t.add_argument("--noise", type=_positive_float, default=None, help="noise std (default: 3 x the std of the input embeddings)")
    t.add_argument("--window", type=_positive_int, default=10,
                   help="layers restored together for mlp_output / attention_output (default: 10, as ROME)")
    t.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    t.add_argument("--components", nargs="+", default=COMPONENTS, metavar="COMPONENT",
                   help=f"components to restore, one panel each (default: {' '.join(COMPONENTS)})")
    t.add_argument("--layers", type=int_list, default=None, metavar="LIST",
                   help="layers to sweep, e.g. 0-9 or 0,5,10 (default: all)")
    t.add_argument("--positions", type=int_list, default=None, metavar="LIST",
                   help="token positions to sweep, e.g. 0-5,-1 (default: all; restrict long prompts)")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in --out (its settings are reused)")
    _plot_options(t, "trace")
    _model_options(t, "out/trace")
    t.set_defaults(func="trace")

    p = add("patch", help="activation patching: clean activations into a corrupted run, per layer and position",
            description="Activation patching: write each clean activation into the corrupted run, one layer and "
                        "position at a time, and read the metric off the last position.")
    p.add_argument("clean", help="clean prompt")
    p.add_argument("corrupted", help="corrupted prompt (same number of tokens)")
    p.add_argument("--answer", default=None, help="correct answer, one token (default: the clean prompt's prediction)")
    p.add_argument("--wrong", default=None, help="wrong answer, one token (default: the corrupted prompt's prediction)")
    p.add_argument("--metric", choices=["logit_diff", "prob", "logprob"], default="logit_diff",
                   help="logit_diff: logit(answer) - logit(wrong) (default); prob: p(answer); logprob: log p(answer)")
    p.add_argument("--components", nargs="+", default=COMPONENTS, metavar="COMPONENT",
                   help=f"components to patch (default: {' '.join(COMPONENTS)}; head_* components add a heads axis)")
    p.add_argument("--layers", type=int_list, default=None, metavar="LIST", help="layers to sweep (default: all)")
    p.add_argument("--positions", default=None, metavar="LIST|all",
                   help="positions to patch one at a time, e.g. 0-5,-1, or 'all' to patch every position at "
                        "once (default: each position)")
    _plot_options(p, "patch")
    _model_options(p, "out/patch")
    p.set_defaults(func="patch")

    s = add("steer", help="the pyvene paper's Fig. 1: add a word embedding to every layer while generating",
            description="Steering: add a word's input embedding to a component of every (chosen) layer at every "
                        "decoding step, and compare greedy continuations with and without it.")
    s.add_argument("prompt", nargs="?", default=STEER_PROMPT, help=f"prompt (default: {STEER_PROMPT!r})")
    s.add_argument("--word", default=" happy", help="steering word (default: ' happy'); several tokens are averaged")
    s.add_argument("--scale", type=float, default=1.2,
                   help="coefficient of the word embedding (default: 1.2; from about 2 SmolLM2 repeats the word)")
    s.add_argument("--component", default="mlp_output", help="component the vector is added to (default: mlp_output)")
    s.add_argument("--layers", default="all", metavar="LIST|all", help="layers, e.g. 0-9, or 'all' (default: all)")
    s.add_argument("--max-new-tokens", type=_positive_int, default=40, help="tokens to generate (default: 40)")
    _model_options(s, None)
    s.set_defaults(func="steer")

    for modname in EXTERNAL_COMMANDS:
        _register(sub, modname)
    return ap


def _register(sub: argparse._SubParsersAction, modname: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as err:
        if err.name is not None and modname.startswith(err.name):
            return  # not part of this installation
        raise
    before = set(sub.choices)
    parser = mod.add_parser(sub)
    if not isinstance(parser, argparse.ArgumentParser):  # add_parser need not return its parser
        new = [sub.choices[n] for n in sub.choices if n not in before]
        parser = new[0] if new else None
    if parser is None:
        raise RuntimeError(f"{modname}.add_parser(subparsers) added no subcommand.")
    _global_options(parser, top=False)
    parser.set_defaults(func=mod.run)


# ---------------------------------------------------------------------------------------------
# running


def _did_you_mean(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cmd = next((a for a in argv if not a.startswith("-")), None)
    if cmd is None or cmd in sub.choices:
        return
    close = difflib.get_close_matches(cmd, list(sub.choices), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    parser.exit(2, f"vene: error: unknown command '{cmd}'.{hint} Commands: {', '.join(sub.choices)}.\n")


def _cli_words(message: str) -> str:
    """Library wording -> option names (``Pass subject=`` -> ``Pass --subject``)."""
    for name in ("subject", "answer", "samples", "noise", "window", "positions", "layers", "components", "seed", "corruption"):
        message = re.sub(rf"\b{name}=(?!\S)", f"--{name}", message)
        message = message.replace(f"{name}=", f"--{name} ")
    return message


def _setup_output(args: argparse.Namespace, command: str) -> None:
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format=f"vene {command}: %(message)s")

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"vene {command}: WARNING: {_cli_words(str(message))}", file=sys.stderr, flush=True)

    warnings.showwarning = show
    if args.quiet or args.verbose == 0:
        for name in ("transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _did_you_mean(parser, argv)
    args = parser.parse_args(argv)
    if args.quiet:
        args.no_progress = True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = args.command
    old_show = warnings.showwarning
    _setup_output(args, command)
    try:
        if callable(args.func):
            return int(args.func(args) or 0)
        from . import cli_commands

        return getattr(cli_commands, f"cmd_{args.func}")(args)
    except CLIError as err:
        print(f"vene {command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"vene {command}: error: this needs the '{err.name}' package, which comes with vene's "
              f"'{extra}' extra: pip install 'vene[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vene {command}: interrupted; nothing to save.", file=sys.stderr)
        return 130
    except Exception as err:
        from .errors import VeneError

        model_errors: tuple[type[BaseException], ...] = ()
        try:
            from .models.embedded import EmbeddedModelNotInstalledError, ModelNotAvailableError

            model_errors = (ModelNotAvailableError, EmbeddedModelNotInstalledError)
        except ModuleNotFoundError:  # pragma: no cover - torch missing
            pass
        if isinstance(err, (VeneError, *model_errors)):
            print(f"vene {command}: error: {_cli_words(str(err))}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.showwarning = old_show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
