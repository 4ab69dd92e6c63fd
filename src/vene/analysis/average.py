"""Causal traces averaged over many prompts (ROME's Fig. 2).

Prompts differ in length and in where their subject is, so tokens are grouped by role before
averaging, as ROME does: the first, middle and last subject tokens, the first token after the
subject, the further tokens, and the last token.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .results import _grid_from_json, _grid_to_json, _load_json, provenance, write_json

ROLES = ("first subject token", "middle subject tokens", "last subject token",
         "first subsequent token", "further tokens", "last token")


def token_roles(n_tokens: int, subject: Sequence[int]) -> dict[int, list[int]]:
    """Role index (into :data:`ROLES`) -> positions of a prompt with ``n_tokens`` tokens."""
    subj = sorted(subject)
    last = n_tokens - 1
    roles: dict[int, list[int]] = {i: [] for i in range(len(ROLES))}
    for t in range(n_tokens):
        if t == last:
            roles[5].append(t)
        elif t in subj:
            roles[0 if t == subj[0] else (2 if t == subj[-1] else 1)].append(t)
        elif t == subj[-1] + 1:
            roles[3].append(t)
        elif t > subj[-1] + 1:
            roles[4].append(t)
    return roles


@dataclass
class AverageTraceResult:
    """Mean restored probability per component, layer and token role over ``n_prompts`` traces.
    ``scores[component]``: ``(n_layers, len(ROLES))``; NaN where no prompt has that role.
    ``counts[r]``: how many prompts contributed to role ``r``."""

    scores: dict[str, torch.Tensor]
    layers: list[int]
    window: dict[str, int]
    samples: int
    n_prompts: int
    p_clean: float
    p_corrupted: float
    counts: list[int]
    prompts: list[str]
    model_name: str | None = None
    noise_std: float | None = None
    provenance: dict = field(default_factory=dict)
    tokens: list[str] = field(default_factory=lambda: list(ROLES))
    positions: list[int] = field(default_factory=lambda: list(range(len(ROLES))))
    subject_positions: list[int] = field(default_factory=lambda: [0, 1, 2])
    answer: str = "answer"
    complete: bool = True

    def figure_title(self) -> str:
        model = f" of {self.model_name}" if self.model_name else ""
        return (f"Average causal trace{model} over {self.n_prompts} prompts\n"
                f"mean p_clean = {self.p_clean:.3f}, mean p_corrupted = {self.p_corrupted:.3f}; "
                f"{self.samples} noise samples per restoration; * = subject")

    def summary(self) -> str:
        lines = [self.figure_title().replace("\n", "; ")]
        for comp, g in self.scores.items():
            col = {r: float(torch.nan_to_num(g[:, r], nan=-1).max()) for r in range(len(ROLES))}
            best = max(col, key=col.__getitem__)
            li = int(torch.nan_to_num(g[:, best], nan=-1).argmax())
            lines.append(f"{comp}: peak mean p={col[best]:.3f} at layer {self.layers[li]}, {ROLES[best]}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"kind": "average_trace", "model": self.model_name, "layers": self.layers, "window": self.window,
                "samples": self.samples, "n_prompts": self.n_prompts, "p_clean": self.p_clean,
                "p_corrupted": self.p_corrupted, "noise_std": self.noise_std, "roles": list(ROLES),
                "counts": self.counts, "prompts": self.prompts, "provenance": self.provenance,
                "scores": {c: _grid_to_json(g) for c, g in self.scores.items()}}

    @classmethod
    def from_json(cls, source: str | os.PathLike | dict) -> "AverageTraceResult":
        d = _load_json(source)
        if d.get("kind") != "average_trace":
            raise ConfigError(f"This is a {d.get('kind')!r} result, not an average trace.")
        return cls(scores={c: _grid_from_json(g) for c, g in d["scores"].items()}, layers=d["layers"],
                   window=d["window"], samples=d["samples"], n_prompts=d["n_prompts"], p_clean=d["p_clean"],
                   p_corrupted=d["p_corrupted"], counts=d["counts"], prompts=d["prompts"],
                   model_name=d.get("model"), noise_std=d.get("noise_std"), provenance=d.get("provenance", {}))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def to_grids(self) -> Any:
        """The scores as a :class:`~vene.analysis.grids.GridSet`: one grid per component, axes
        ``layer`` x ``role`` (the token roles of ROME's Fig. 2); ``meta`` has the counts."""
        from .results import _as_gridset

        meta = {"counts": self.counts, "n_prompts": self.n_prompts, "p_clean": self.p_clean, "p_corrupted": self.p_corrupted}
        return _as_gridset(self.scores, lambda c, g: (("layer", "role"), {"layer": self.layers, "role": self.tokens}),
                           "p_answer", meta)

    def to_pandas(self) -> Any:
        """Long-form ``DataFrame`` (pandas needed): ``grid``, ``layer``, ``role``, ``value``."""
        return self.to_grids().to_pandas()

    def plot(self, **kwargs: Any):
        from .plotting import plot_causal_trace

        return plot_causal_trace(self, **kwargs)


def average_traces(results: Sequence[Any]) -> AverageTraceResult:
    """Average complete :class:`~vene.analysis.results.CausalTraceResult` s of the same model,
    components, layers and window by token role (ROME Fig. 2). Each trace must sweep every token."""
    results = list(results)
    if not results:
        raise ConfigError("average_traces needs at least one trace.")
    first = results[0]
    comps = list(first.scores)
    for r in results:
        if list(r.scores) != comps or r.layers != first.layers or r.window != first.window:
            raise ConfigError("average_traces needs traces with the same components, layers and window.")
        if not r.complete or r.positions != list(range(len(r.tokens))):
            raise ConfigError(f"average_traces needs complete traces over every token; {r.prompt!r} is not.")
    n_l = len(first.layers)
    sums = {c: torch.zeros(n_l, len(ROLES)) for c in comps}
    counts = [0] * len(ROLES)
    for r in results:
        roles = token_roles(len(r.tokens), r.subject_positions)
        for ri, pos in roles.items():
            if not pos:
                continue
            counts[ri] += 1
            for c in comps:
                sums[c][:, ri] += r.scores[c][:, pos].mean(1)
    div = torch.tensor([float(n) if n else float("nan") for n in counts])
    return AverageTraceResult(
        scores={c: s / div for c, s in sums.items()}, layers=list(first.layers), window=dict(first.window),
        samples=first.samples, n_prompts=len(results),
        p_clean=sum(r.p_clean for r in results) / len(results),
        p_corrupted=sum(r.p_corrupted for r in results) / len(results),
        counts=counts, prompts=[r.prompt for r in results], model_name=first.model_name,
        noise_std=first.noise_std, provenance=provenance(seed=first.seed, strategy=first.extra.get("strategy")),
    )
