"""Causal tracing (ROME, Meng et al. 2022): where does a model recall a fact?

Corrupt the subject tokens of a prompt with Gaussian noise on their input embeddings, then restore
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..components import detect_architecture
from ..errors import ConfigError
from .cells import Patch
from .sweep import SweepRunner

logger = logging.getLogger(__name__)

DEFAULT_COMPONENTS = ("block_output", "mlp_output", "attention_output")
#: Components restored as single states by default (ROME restores hidden states one at a time
#: and MLP / attention outputs over a window of layers).
_SINGLE_STATE = ("block_output", "block_input")
_ARTICLES = {"The", "A", "An", "This", "That", "These", "Those", "My", "Our", "His", "Her", "Its", "Their"}


@dataclass
class CausalTraceResult:
    """What :func:`causal_trace` found.

    ``scores[component]`` is a ``(n_layers, n_tokens)`` tensor: the answer's probability (mean
    over noise samples) when that component's clean state at that layer (window) and token is
    restored in the corrupted run.
    """

    prompt: str
    answer: str
    answer_id: int
    tokens: list[str]
    subject_positions: list[int]
    p_clean: float
    p_corrupted: float
    scores: dict[str, torch.Tensor]
    layers: list[int]
    window: dict[str, int]
    noise_std: float | None
    samples: int
    model_name: str | None = None
    extra: dict = field(default_factory=dict)

    def peak(self, component: str) -> tuple[float, int, int]:
        """``(score, layer, token position)`` of the strongest restoration of ``component``."""
        grid = self.scores[component]
        flat = int(grid.argmax())
        li, t = divmod(flat, grid.shape[1])
        return float(grid[li, t]), self.layers[li], t

    def summary(self) -> str:
        """A few lines of text: p(clean), p(corrupted) and where each panel peaks."""
        subj = ", ".join(repr(self.tokens[i]) for i in self.subject_positions)
        lines = [
            f"prompt {self.prompt!r} -> answer {self.answer!r}; subject tokens {subj} "
            f"(positions {self.subject_positions})",
            f"p_clean = {self.p_clean:.4f}, p_corrupted = {self.p_corrupted:.4f} "
            f"({self.samples} noise sample{'s' if self.samples != 1 else ''}, std {self.noise_std:.4g})"
            if self.noise_std is not None
            else f"p_clean = {self.p_clean:.4f}, p_corrupted = {self.p_corrupted:.4f}",
        ]
        last = len(self.tokens) - 1
        for comp, grid in self.scores.items():
            value, layer, tok = self.peak(comp)
            where = "subject" if tok in self.subject_positions else ("last token" if tok == last else "other")
            line = f"{comp} (window {self.window.get(comp, 1)}): peak p={value:.3f} at layer {layer}, token {tok} {self.tokens[tok]!r} ({where})"
            if self.subject_positions:
                sub = grid[:, self.subject_positions]
                li, ti = divmod(int(sub.argmax()), sub.shape[1])
                line += f"; best subject restoration p={float(sub[li, ti]):.3f} at layer {self.layers[li]}"
            col = grid[:, last]
            line += f"; last token best p={float(col.max()):.3f} at layer {self.layers[int(col.argmax())]}"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (the format of ``vene trace``'s ``trace.json``)."""
        return {
            "model": self.model_name,
            "prompt": self.prompt,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "tokens": list(self.tokens),
            "subject_positions": list(self.subject_positions),
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted,
            "layers": list(self.layers),
            "window": dict(self.window),
            "noise_std": self.noise_std,
            "samples": self.samples,
            "scores": {c: [[float(v) for v in row] for row in g.tolist()] for c, g in self.scores.items()},
        }

    def plot(self, **kwargs: Any):
        """The ROME panels as a matplotlib ``Figure`` (see :func:`vene.analysis.plot_causal_trace`)."""
        from .plotting import plot_causal_trace

        return plot_causal_trace(self, **kwargs)


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
    """The first run of capitalised words, without a leading article ("The Eiffel Tower is ..."
    -> "Eiffel Tower"); None when there is none."""
    words = list(re.finditer(r"[A-Za-z][\w'\-]*", prompt))
    run: list[re.Match] = []
    for m in words:
        w = m.group(0)
        if w[0].isupper() and not (not run and w in _ARTICLES):
            run.append(m)
        elif run:
            break
    if not run:
        return None
    return prompt[run[0].start(): run[-1].end()]


def n_layers_of(model: nn.Module) -> int:
    arch = detect_architecture(model)
    if arch is not None:
        return len(model.get_submodule(arch[1]))
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
        logger.info("answer %r has %d tokens; tracing the first, %r", answer, len(ids), tokenizer.decode(ids[:1]))
    return int(ids[0])


def _noise_values(noise: Any, samples: int, n_pos: int, d: int, std: float | None, seed: int, dtype, device) -> tuple[torch.Tensor, float | None]:
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
    gen = torch.Generator().manual_seed(int(seed))
    values = torch.randn(samples, n_pos, d, generator=gen) * std
    return values.to(device=device, dtype=dtype), std


# ---------------------------------------------------------------------------------------------


def causal_trace(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] | torch.Tensor,
    answer: str | int | None = None,
    subject: str | Sequence[int] | None = None,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    window: int | Mapping[str, int] = 10,
    noise: float | torch.Tensor | None = None,
    samples: int = 10,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    memory_budget: int | None = None,
    strategy: str = "auto",
) -> CausalTraceResult:
    """ROME's causal trace of ``prompt`` -> ``answer``.

    Args:
        prompt: text (needs ``tokenizer``) or token ids.
        answer: text (its first token is traced), a token id, or None for the model's own top
            prediction on the clean prompt.
        subject: the subject's text (its first occurrence in the prompt), its token positions,
            or None to guess it (the first run of capitalised words after an optional article).
        components: components to restore, each giving a ``(layers, tokens)`` grid; module paths
            are templates with the layer (``"model.layers[{}].mlp.output"``).
        window: layers restored together around each layer for MLP / attention outputs (ROME:
            10); ``block_output`` / ``block_input`` are restored as single states unless a mapping
            ``{component: window}`` says otherwise.
        noise: None (3 x the std of the input-embedding matrix), a float std, or the exact noise
            ``(samples, n_subject_tokens, d_model)`` (or without the samples axis, shared).
        samples: noise samples; every score is the mean probability over them.
        seed: seed of the noise generator.
        layers: layers to sweep (default: all).
        progress: show a tqdm progress bar.
        memory_budget: bytes of activations per batched chunk (default 512 MiB).
        strategy: "auto" (layer stepping and prefix reuse where the replay checks pass), "step"
            (layer stepping only) or "forward" (batched full forward passes).
    """
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}.")
    ids, text = _ids(tokenizer, prompt)
    seq = ids.shape[1]
    if subject is None:
        guess = guess_subject(text) if isinstance(prompt, str) else None
        if guess is None:
            raise ConfigError("Pass subject= (its text or token positions): it could not be guessed from the prompt.")
        logger.info("guessed subject %r", guess)
        subject = guess
    if isinstance(subject, str):
        if tokenizer is None:
            raise ConfigError("A text subject needs a tokenizer; pass its token positions instead.")
        positions = find_subject_positions(tokenizer, ids[0].tolist(), text, subject)
    else:
        positions = sorted({int(p) % seq for p in subject})
        if not positions or any(not -seq <= int(p) < seq for p in subject):
            raise ConfigError(f"subject positions {list(subject)} are out of range for {seq} tokens.")
    components = list(components)
    if not components:
        raise ConfigError("components is empty.")
    n_layers = n_layers_of(model)
    grid_layers = list(range(n_layers)) if layers is None else [int(l) % n_layers for l in layers]
    windows = _windows(components, window)
    emb = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    if emb is None or getattr(emb, "weight", None) is None:
        raise ConfigError("Causal tracing adds noise to the input embeddings, but the model has no get_input_embeddings().")
    d = emb.weight.shape[1]
    if isinstance(noise, torch.Tensor):
        if noise.dim() == 3:
            samples = noise.shape[0]
        std = None
    else:
        std = 3.0 * embedding_std(model) if noise is None else float(noise)
    values, std = _noise_values(noise, samples, len(positions), d, std, seed, emb.weight.dtype, emb.weight.device)

    site_index: dict[tuple[str, int], int] = {}
    sites: list[tuple[str, int]] = []
    cells: list[list[Patch]] = []
    for comp in components:
        for layer in grid_layers:
            for lw in window_layers(layer, windows[comp], n_layers):
                if (comp, lw) not in site_index:
                    site_index[(comp, lw)] = len(sites)
                    sites.append((comp, lw))
    for comp in components:
        for layer in grid_layers:
            ws = [site_index[(comp, lw)] for lw in window_layers(layer, windows[comp], n_layers)]
            for t in range(seq):
                cells.append([Patch(s, t) for s in ws])

    runner = SweepRunner(
        model, {"input_ids": ids}, {"input_ids": ids.expand(samples, -1)}, sites,
        noise=(positions, values), memory_budget=memory_budget, strategy=strategy,
        progress=progress, desc="causal trace",
    )
    runner.record()
    ans = _answer_id(tokenizer, answer)
    if ans is None:
        ans = int(runner.clean_logits[0].argmax())
    vocab = runner.clean_logits.shape[-1]
    if not 0 <= ans < vocab:
        raise ConfigError(f"answer token id {ans} is outside the vocabulary (size {vocab}).")
    answer_text = tokenizer.decode([ans]) if tokenizer is not None and not isinstance(answer, str) else (answer if isinstance(answer, str) else str(ans))

    def cell_values(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)[..., ans].mean(-1)

    values_out = runner.run(cells, cell_values)
    per = len(grid_layers) * seq
    scores = {c: values_out[i * per: (i + 1) * per].view(len(grid_layers), seq) for i, c in enumerate(components)}
    p_clean = float(runner.clean_logits.softmax(-1)[:, ans].mean())
    p_corr = float(runner.base_logits.softmax(-1)[:, ans].mean())
    cfg = getattr(model, "config", None)
    return CausalTraceResult(
        prompt=text, answer=answer_text, answer_id=ans, tokens=token_labels(tokenizer, ids[0].tolist()),
        subject_positions=positions, p_clean=p_clean, p_corrupted=p_corr, scores=scores,
        layers=grid_layers, window=windows, noise_std=std, samples=samples,
        model_name=getattr(cfg, "_name_or_path", None) or type(model).__name__,
        extra={"strategy": runner.mode, "fallback_reason": runner.fallback_reason},
    )
