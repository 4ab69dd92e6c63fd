"""Causal tracing (ROME, Meng et al. 2022): where does a model recall a fact?

Corrupt the subject tokens of a prompt with Gaussian noise on their input embeddings (or, with
``corruption=``, replace them by zero, by the mean embedding, or by random tokens), then restore
the clean state of one component at one (layer, token) -- or, for MLP and attention outputs, a
window of layers around it -- and measure how much of the answer's probability comes back.

>>> from vene.analysis import causal_trace
>>> result = causal_trace(model, tokenizer, "The Eiffel Tower is located in the city of",
...                       " Paris", subject="Eiffel Tower")
>>> result.scores["block_output"].shape        # (layers, tokens)
>>> result.plot()                               # the three ROME panels, a matplotlib Figure
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..components import detect_architecture
from ..errors import ConfigError
from .cells import Patch
from .results import CausalTraceResult, SweepInterrupted, provenance
from .sweep import SweepRunner

logger = logging.getLogger(__name__)

DEFAULT_COMPONENTS = ("block_output", "mlp_output", "attention_output")
#: Components restored as single states by default (ROME restores hidden states one at a time
#: and MLP / attention outputs over a window of layers).
_SINGLE_STATE = ("block_output", "block_input")
#: Capitalised words that start sentences or questions rather than name a subject.
_NOT_NAMES = set(
    "The A An This That These Those My Our Your His Her Its Their I We You He She It They There Here "
    "In On At Of For From By With To Into After Before During Since Until When Where What Who Whom Whose Which "
    "Why How If As Once Then Now So But And Or Yes No Q Question Answer Fact Today Yesterday Tomorrow "
    "According Some Many Most All Every Each Is Are Was Were Do Does Did Can Could Will Would".split()
)
#: An answer ranked below this many tokens of the clean prediction gets a warning.
TOP_PREDICTIONS = 10


# ---------------------------------------------------------------------------------------------
# helpers


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable per-token strings (``" Eiffel"``-style), or the ids when there is no tokenizer."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return [tokenizer.decode([int(i)]) for i in ids]


def find_subject_positions(tokenizer: Any, ids: Sequence[int], prompt: str, subject: str) -> list[int]:
    """Token positions covering the first occurrence of ``subject`` in the prompt.

    ROME's method: decode growing prefixes of the token ids and see which tokens' characters
    overlap the subject's characters (works for any tokenizer that can decode)."""
    ids = [int(i) for i in ids]

    def dec(x: list[int]) -> str:
        return tokenizer.decode(x, skip_special_tokens=True)

    full = dec(ids)
    start, sub = full.find(subject), subject
    if start < 0:
        sub = subject.strip()
        start = full.find(sub) if sub else -1
    if start < 0:
        raise ConfigError(f"The subject {subject!r} does not occur in the prompt {prompt!r}.")
    end = start + len(sub)
    positions, prev = [], 0
    for i in range(len(ids)):
        cur = len(dec(ids[: i + 1]))
        if cur > prev and cur > start and prev < end:
            positions.append(i)
        prev = max(prev, cur)
    if not positions:  # pragma: no cover - decode inconsistencies
        raise ConfigError(f"No token of the prompt covers the subject {subject!r}.")
    return positions


def guess_subject(prompt: str) -> str | None:
    """The first run of name-like words (with a capital letter anywhere: "Eiffel", "iPhone"),
    separated by spaces only, skipping words that start sentences or questions rather than name
    things ("The", "In", "Once", "Q", "Where", ...): "In 1889, the Eiffel Tower was" -> "Eiffel
    Tower". None when there is none. Check the guess (:func:`weak_subject_reason`)."""
    run: list[re.Match] = []
    for m in re.finditer(r"[A-Za-z][\w'\-]*", prompt):
        w = m.group(0)
        name_like = any(c.isupper() for c in w) and w not in _NOT_NAMES
        joined = not run or prompt[run[-1].end(): m.start()].strip() == ""
        if name_like and joined:
            run.append(m)
        elif run:
            break
    if not run:
        return None
    return prompt[run[0].start(): run[-1].end()]


def weak_subject_reason(prompt: str, guess: str | None) -> str | None:
    """Why a guessed subject is doubtful (None when it looks like a name)."""
    if guess is None:
        return "the prompt has no capitalised name to guess it from"
    if prompt.lstrip().startswith(guess) and len(guess.split()) == 1:
        return f"{guess!r} is the prompt's first word and may be capitalised only because it starts the sentence"
    return None


def n_layers_of(model: nn.Module) -> int:
    arch = detect_architecture(model)
    if arch is not None:
        return len(cast(nn.ModuleList, model.get_submodule(arch[1])))  # the architecture's layer list
    cfg = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    raise ConfigError(f"Cannot tell how many layers {type(model).__name__} has; pass layers=[...].")


def embedding_std(model: nn.Module) -> float:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if weight is None:
        raise ConfigError("The default noise is 3 x the std of the input embeddings, but the model has none; pass noise=.")
    with torch.no_grad():
        return float(weight.float().std())


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """ROME's window: ``range(layer - window // 2, layer + ceil(window / 2))`` clipped to the model."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def _windows(components: Sequence[str], window: int | Mapping[str, int]) -> dict[str, int]:
    out = {}
    for c in components:
        if isinstance(window, Mapping):
            w = window.get(c, 1 if c in _SINGLE_STATE else 10)
        else:
            w = 1 if c in _SINGLE_STATE else window
        if not isinstance(w, int) or w < 1:
            raise ConfigError(f"window for {c!r} must be a positive int, got {w!r}.")
        out[c] = w
    return out


def _ids(tokenizer: Any, prompt: Any) -> tuple[torch.Tensor, str]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError("A text prompt needs a tokenizer; pass tokenizer= or token ids.")
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        return ids[:1].long(), prompt
    ids = torch.as_tensor(prompt).long()
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ConfigError(f"The prompt must be a string or one sequence of token ids, got shape {tuple(ids.shape)}.")
    text = tokenizer.decode(ids[0]) if tokenizer is not None else " ".join(str(int(i)) for i in ids[0])
    return ids, text


def _answer_id(tokenizer: Any, answer: Any) -> int | None:
    """The answer's token id. A text answer must be one token: a causal trace measures the
    probability of one next token, and tracing the first token of a longer answer would report a
    different quantity under the answer's name, so it is refused (ConfigError) before the model runs."""
    if answer is None:
        return None
    if isinstance(answer, (int, torch.Tensor)):
        return int(answer)
    if tokenizer is None:
        raise ConfigError("A text answer needs a tokenizer; pass the answer's token id instead.")
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"The answer {answer!r} tokenizes to nothing.")
    if len(ids) > 1:
        toks = [tokenizer.decode([i]) for i in ids]
        raise ConfigError(
            f"The answer {answer!r} is {len(ids)} tokens {toks}, but a causal trace measures the probability "
            f"of one next token. Trace its first token explicitly (answer {toks[0]!r}), or choose a "
            f"one-token answer."
        )
    return int(ids[0])


def answer_rank_warning(tokenizer: Any, logits: torch.Tensor, ans: int, answer: Any) -> tuple[int, str | None]:
    """``(rank, warning or None)`` of token ``ans`` in the clean next-token ``logits`` ``(vocab,)``;
    the warning names the top predictions and a spacing variant of a text answer that ranks better."""
    probs = logits.float().softmax(-1)
    rank = int((probs > probs[ans]).sum())
    if rank < TOP_PREDICTIONS:
        return rank, None
    top = probs.topk(5)
    dec = (lambda i: tokenizer.decode([int(i)])) if tokenizer is not None else (lambda i: str(int(i)))
    tops = ", ".join(f"{dec(i)!r} ({float(p):.3f})" for p, i in zip(top.values, top.indices))
    msg = (f"The answer {dec(ans)!r} is not among the model's top {TOP_PREDICTIONS} predictions (rank {rank + 1}, "
           f"p={float(probs[ans]):.2g}); the top predictions are {tops}.")
    if isinstance(answer, str) and tokenizer is not None:
        for variant in {" " + answer.strip(), answer.strip()} - {answer}:
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and probs[ids[0]] > probs[ans]:
                msg += f" Did you mean {variant!r} (p={float(probs[ids[0]]):.2g})?"
                break
    return rank, msg


class TraceWarning(UserWarning):
    """A causal trace that will likely mislead: a weak subject guess, an unlikely answer."""


#: how the subject's input embeddings are corrupted (see :func:`causal_trace`)
CORRUPTIONS = ("noise", "zero", "mean", "resample")


def _replacement_values(kind: str, emb: nn.Module, ids: torch.Tensor, subj_pos: list[int], samples: int,
                        seed: int) -> torch.Tensor:
    """The offsets that turn the subject's embeddings into their replacement (added at the
    embedding's output, like the noise): ``target - embedding``, ``(samples, n_subject, d)``."""
    weight = cast(torch.Tensor, emb.weight)  # (the caller checked it has one; Module attributes type as Tensor | Module)
    with torch.no_grad():
        subject_ids = ids[0, subj_pos]
        here = emb(subject_ids.unsqueeze(0))[0]  # (n_subject, d), scaling inside the module included
        if kind == "zero":
            target = torch.zeros_like(here).unsqueeze(0)
        elif kind == "mean":
            vocab = weight.shape[0]
            total = torch.zeros(here.shape[-1], dtype=torch.float64, device=here.device)
            for a in range(0, vocab, 8192):  # the mean of the module's outputs over the vocabulary
                chunk = torch.arange(a, min(vocab, a + 8192), device=ids.device)
                total += emb(chunk.unsqueeze(0))[0].double().sum(0)
            target = (total / vocab).to(here.dtype).expand_as(here).unsqueeze(0)
        else:  # resample: random tokens of the vocabulary in place of the subject's, one draw per sample
            gen = torch.Generator().manual_seed(int(seed))
            draws = torch.randint(0, weight.shape[0], (samples, len(subj_pos)), generator=gen).to(ids.device)
            draws = torch.where(draws == subject_ids, (draws + 1) % weight.shape[0], draws)
            target = emb(draws)
        return (target - here).expand(samples, -1, -1).contiguous()


def _noise_values(noise: Any, samples: int, n_pos: int, d: int, std: float | None, seed: int, dtype,
                  device) -> tuple[torch.Tensor, float | None]:
    if isinstance(noise, torch.Tensor):
        values = noise.detach()
        if values.dim() == 2:
            values = values.unsqueeze(0).expand(samples, -1, -1)
        if values.dim() != 3 or values.shape[1:] != (n_pos, d):
            raise ConfigError(
                f"noise tensor must have shape (samples, {n_pos}, {d}) or ({n_pos}, {d}) (subject tokens x d_model), "
                f"got {tuple(noise.shape)}."
            )
        return values.to(device=device, dtype=dtype), None
    assert std is not None  # the caller sets it whenever noise is not a tensor
    gen = torch.Generator().manual_seed(int(seed))
    values = torch.randn(samples, n_pos, d, generator=gen) * std
    return values.to(device=device, dtype=dtype), std


# ---------------------------------------------------------------------------------------------


def _sweep_positions(positions: Sequence[int] | None, seq: int) -> list[int]:
    if positions is None:
        return list(range(seq))
    raw = [int(p) for p in positions]
    bad = [p for p in raw if not -seq <= p < seq]
    if bad or not raw:
        raise ConfigError(f"positions {raw} must be token positions in [-{seq}, {seq}) (the prompt has {seq} tokens).")
    return sorted({p % seq for p in raw})


def _check_resume(resume: CausalTraceResult, expected: dict) -> None:
    have = {
        "tokens": resume.tokens, "answer_id": resume.answer_id, "subject_positions": resume.subject_positions,
        "components": list(resume.scores), "layers": resume.layers, "positions": resume.positions,
        "window": resume.window, "samples": resume.samples, "seed": resume.seed, "noise_std": resume.noise_std,
        "corruption": resume.corruption,
    }
    for key, want in expected.items():
        if have[key] != want and not (key == "noise_std" and want is not None and have[key] is not None
                                      and abs(have[key] - want) <= 1e-6 * abs(want)):
            raise ConfigError(
                f"Cannot resume: the saved run has {key} {have[key]!r}, this run {want!r}. Resume with the "
                f"same settings as the saved run, or start a new one."
            )


def causal_trace(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] | torch.Tensor,
    answer: str | int | None = None,
    subject: str | Sequence[int] | None = None,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    window: int | Mapping[str, int] = 10,
    noise: float | torch.Tensor | None = None,
    samples: int | None = None,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    memory_budget: int | None = None,
    strategy: str = "auto",
    positions: Sequence[int] | None = None,
    resume: CausalTraceResult | None = None,
    corruption: str = "noise",
) -> CausalTraceResult:
    """ROME's causal trace of ``prompt`` -> ``answer``.

    Args:
        prompt: text (needs ``tokenizer``) or token ids.
        answer: one-token text, a token id, or None for the model's own top prediction on the
            clean prompt. A text answer of several tokens is refused (ConfigError) before the
            model runs: the trace measures one next token's probability. An answer outside the
            model's top 10 predictions gets a :class:`TraceWarning` (also in ``result.warnings``).
        subject: the subject's text (its first occurrence in the prompt), its token positions,
            or None to guess it (:func:`guess_subject`; a doubtful guess warns).
        components: components to restore, each giving a ``(layers, positions)`` grid; module
            paths are templates with the layer (``"model.layers[{}].mlp.output"``).
        window: layers restored together around each layer for MLP / attention outputs (ROME:
            10); ``block_output`` / ``block_input`` are restored as single states unless a mapping
            ``{component: window}`` says otherwise.
        noise: None (3 x the std of the input-embedding matrix), a float std, or the exact noise
            ``(samples, n_subject_tokens, d_model)`` (or without the samples axis, shared).
        samples: noise samples (default 10, as ROME; 1 for the deterministic corruptions); every
            score is the mean probability over them.
        seed: seed of the noise generator (and of ``"resample"``'s token draws).
        corruption: how the subject's input embeddings are corrupted: ``"noise"`` (ROME: Gaussian
            noise of std ``noise``), ``"zero"`` (zero ablation), ``"mean"`` (the mean embedding
            over the vocabulary: mean ablation) or ``"resample"`` (each sample replaces the subject
            tokens by tokens drawn uniformly from the vocabulary: resample ablation). ``"zero"`` and
            ``"mean"`` are deterministic and take one sample; ``noise=`` belongs to ``"noise"``.
        layers: layers to sweep (default: all).
        positions: token positions to sweep (default: all); the grids' columns.
        progress: show a tqdm progress bar counting restorations (grid cells, each averaged over
            the noise samples).
        memory_budget: bytes of activations per batched chunk (default 512 MiB).
        strategy: "auto" (layer stepping and prefix reuse where the replay checks pass), "step"
            (layer stepping only) or "forward" (batched full forward passes).
        resume: a partial result of the same trace (``SweepInterrupted.result`` or
            ``CausalTraceResult.from_json``); only its missing cells are computed.

    Ctrl-C during the sweep raises :class:`~vene.analysis.results.SweepInterrupted` (a
    ``KeyboardInterrupt``) whose ``result`` holds the cells computed so far.
    """
    if samples is not None and samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}.")
    t_start = time.perf_counter()
    ids, text = _ids(tokenizer, prompt)
    seq = ids.shape[1]
    found: list[str] = []
    guessed = subject is None
    if subject is None:
        guess = guess_subject(text) if isinstance(prompt, str) else None
        if guess is None:
            raise ConfigError("Pass subject= (its text or token positions): it could not be guessed from the prompt.")
        reason = weak_subject_reason(text, guess)
        if reason:
            found.append(f"The guessed subject {guess!r} may be wrong: {reason}. Pass subject= to choose it.")
        logger.info("guessed subject %r", guess)
        subject = guess
    if isinstance(subject, str):
        if tokenizer is None:
            raise ConfigError("A text subject needs a tokenizer; pass its token positions instead.")
        subj_pos = find_subject_positions(tokenizer, ids[0].tolist(), text, subject)
    else:
        subj_pos = sorted({int(p) % seq for p in subject})
        if not subj_pos or any(not -seq <= int(p) < seq for p in subject):
            raise ConfigError(f"subject positions {list(subject)} are out of range for {seq} tokens.")
    components = list(components)
    if not components:
        raise ConfigError("components is empty.")
    ans = _answer_id(tokenizer, answer)
    n_layers = n_layers_of(model)
    grid_layers = list(range(n_layers)) if layers is None else [int(l) % n_layers for l in layers]
    sweep_pos = _sweep_positions(positions, seq)
    windows = _windows(components, window)
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is None or getattr(emb, "weight", None) is None:
        raise ConfigError("Causal tracing adds noise to the input embeddings, but the model has no get_input_embeddings().")
    d = emb.weight.shape[1]
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"corruption must be one of {list(CORRUPTIONS)}, not {corruption!r}.")
    if corruption == "noise":
        if isinstance(noise, torch.Tensor):
            if noise.dim() == 3:
                if samples is not None and samples != noise.shape[0]:
                    raise ConfigError(f"samples={samples} disagrees with the noise tensor's {noise.shape[0]} samples.")
                samples = noise.shape[0]
            std = None
        else:
            std = 3.0 * embedding_std(model) if noise is None else float(noise)
        samples = 10 if samples is None else int(samples)
        values, std = _noise_values(noise, samples, len(subj_pos), d, std, seed, emb.weight.dtype, emb.weight.device)
    else:
        if noise is not None:
            raise ConfigError(f"noise= sets the Gaussian noise of corruption='noise'; corruption={corruption!r} adds none.")
        deterministic = corruption in ("zero", "mean")
        if deterministic and samples not in (None, 1):
            raise ConfigError(f"corruption={corruption!r} is deterministic: every sample would be the same; "
                              "pass samples=1 or leave it out.")
        samples = 1 if deterministic else (10 if samples is None else int(samples))
        std = None
        values = _replacement_values(corruption, emb, ids.to(emb.weight.device), subj_pos, samples, seed)
    tokens = token_labels(tokenizer, ids[0].tolist())
    if resume is not None:
        expected = {"tokens": tokens, "subject_positions": subj_pos, "components": components, "layers": grid_layers,
                    "positions": sweep_pos, "window": windows, "samples": samples, "seed": seed, "noise_std": std,
                    "corruption": corruption}
        if ans is not None:
            expected["answer_id"] = ans
        _check_resume(resume, expected)

    site_index: dict[tuple[str, int], int] = {}
    sites: list[tuple[str, int]] = []
    cells: list[list[Patch]] = []
    for comp in components:
        for layer in grid_layers:
            for lw in window_layers(layer, windows[comp], n_layers):
                if (comp, lw) not in site_index:
                    site_index[(comp, lw)] = len(sites)
                    sites.append((comp, lw))
    entry: list[int] = []  # the lowest restored layer of each cell: chunks group cells that join together
    for comp in components:
        for layer in grid_layers:
            wl = window_layers(layer, windows[comp], n_layers)
            ws = [site_index[(comp, lw)] for lw in wl]
            for t in sweep_pos:
                cells.append([Patch(s, t) for s in ws])
                entry.append(wl[0])

    runner = SweepRunner(
        model, {"input_ids": ids}, {"input_ids": ids.expand(samples, -1)}, sites,
        noise=(subj_pos, values), memory_budget=memory_budget, strategy=strategy,
        progress=False, desc="causal trace",
    )
    runner.record()
    t_record = time.perf_counter()
    if ans is None:
        ans = resume.answer_id if resume is not None else int(runner.clean_logits[0].argmax())
    vocab = runner.clean_logits.shape[-1]
    if not 0 <= ans < vocab:
        raise ConfigError(f"answer token id {ans} is outside the vocabulary (size {vocab}).")
    answer_text = (tokenizer.decode([ans]) if tokenizer is not None and not isinstance(answer, str)
                   else (answer if isinstance(answer, str) else str(ans)))
    rank, msg = answer_rank_warning(tokenizer, runner.clean_logits[0], ans, answer)
    if msg:
        found.append(msg)
    for m in found:
        warnings.warn(m, TraceWarning, stacklevel=2)

    def cell_values(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)[..., ans].mean(-1)

    values_out = torch.full((len(cells),), float("nan"))
    if resume is not None:
        values_out = torch.cat([resume.scores[c].reshape(-1).float() for c in components])
    todo = sorted((k for k in range(len(cells)) if bool(torch.isnan(values_out[k]))), key=lambda k: entry[k])
    per_chunk = max(1, runner.max_rows() // runner.S)
    interrupted = False
    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="causal trace", unit=" restorations",
                  smoothing=0, disable=not progress, leave=False) as bar:
            for a in range(0, len(todo), per_chunk):
                chunk = todo[a: a + per_chunk]
                values_out[torch.as_tensor(chunk)] = runner.run([cells[k] for k in chunk], cell_values).float()
                bar.update(len(chunk))
    except KeyboardInterrupt:
        interrupted = True
    t_end = time.perf_counter()
    per = len(grid_layers) * len(sweep_pos)
    scores = {c: values_out[i * per: (i + 1) * per].view(len(grid_layers), len(sweep_pos)) for i, c in enumerate(components)}
    p_clean = float(runner.clean_logits.softmax(-1)[:, ans].mean())
    p_corr = float(runner.base_logits.softmax(-1)[:, ans].mean())
    cfg = getattr(model, "config", None)
    before = resume.provenance.get("timings", {}) if resume is not None else {}
    timings = {"record_s": round(t_record - t_start, 3), "sweep_s": round(t_end - t_record + before.get("sweep_s", 0.0), 3),
               "restorations_this_run": len(todo) if not interrupted else int((~torch.isnan(values_out[todo])).sum())}
    result = CausalTraceResult(
        prompt=text, answer=answer_text, answer_id=ans, tokens=tokens,
        subject_positions=subj_pos, p_clean=p_clean, p_corrupted=p_corr, scores=scores,
        layers=grid_layers, window=windows, noise_std=std, samples=samples,
        model_name=getattr(cfg, "_name_or_path", None) or type(model).__name__,
        extra={"strategy": runner.mode, "fallback_reason": runner.fallback_reason, "subject_guessed": guessed},
        positions=sweep_pos, seed=seed, answer_rank=rank + 1, warnings=found, corruption=corruption,
        provenance=provenance(seed=seed, strategy=runner.mode, fallback_reason=runner.fallback_reason,
                              timings=timings,
                              resumed=(resume.provenance.get("resumed", 0) + 1) if resume is not None else 0),
    )
    if interrupted:
        raise SweepInterrupted(result) from None
    return result
