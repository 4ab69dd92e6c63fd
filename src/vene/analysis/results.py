"""Result objects of the sweeps: summaries, JSON round trips with provenance, partial grids.

A grid cell that was not computed (an interrupted run) is NaN in ``scores`` and ``null`` in the
JSON; ``complete`` says whether every cell is there. ``provenance`` records how the numbers were
made: seed, package versions, the sweep's fast path, timings.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

FORMAT_VERSION = 2


def provenance(**fields: Any) -> dict:
    """Versions of Python, vene, torch and transformers, the time, plus ``fields``."""
    from .. import __version__

    out: dict[str, Any] = {"vene": __version__, "torch": torch.__version__,
                           "python": platform.python_version(), "platform": platform.platform(terse=True)}
    tf = sys.modules.get("transformers")
    out["transformers"] = getattr(tf, "__version__", None)
    out["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.update(fields)
    return out


def _grid_to_json(g: torch.Tensor) -> list:
    def conv(x: Any) -> Any:
        if isinstance(x, list):
            return [conv(v) for v in x]
        return None if math.isnan(x) else float(x)

    return conv(g.tolist())


def _grid_from_json(rows: Any) -> torch.Tensor:
    def conv(x: Any) -> Any:
        if isinstance(x, list):
            return [conv(v) for v in x]
        return float("nan") if x is None else float(x)

    return torch.tensor(conv(rows), dtype=torch.float32)


def _load_json(source: Any) -> dict:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory; pass the JSON file inside it (e.g. trace.json).")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"No such results file: {str(path)!r}.") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({err}).") from None


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` atomically (a Ctrl-C never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def nan_argmax(grid: torch.Tensor) -> int:
    """Flat index of the largest non-NaN value (0 when every value is NaN)."""
    filled = torch.nan_to_num(grid.float(), nan=float("-inf"))
    return int(filled.argmax())


def _as_gridset(scores: dict[str, torch.Tensor], axes: Any, name: str, meta: dict) -> Any:
    """``scores`` as a :class:`~vene.analysis.grids.GridSet` (``axes(component, grid)`` gives the
    axis names and labels of one grid)."""
    from .grids import Grid, GridSet

    grids = {}
    for comp, g in scores.items():
        names, labels = axes(comp, g)
        grids[comp] = Grid(g, names, labels, name=name)
    return GridSet(grids, meta)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep. ``result`` holds the cells computed so far (the rest are NaN,
    ``result.complete`` is False); pass it back as ``resume=`` to finish the run."""

    def __init__(self, result: Any) -> None:
        super().__init__("interrupted")
        self.result = result


@dataclass
class CausalTraceResult:
    """What :func:`~vene.analysis.causal_trace` found.

    ``scores[component]`` is a ``(n_layers, n_positions)`` tensor: the answer's probability (mean
    over noise samples) when that component's clean state at that layer (window) and token is
    restored in the corrupted run. ``positions`` are the swept token positions (all by default);
    NaN marks cells not computed (an interrupted run; ``complete`` is then False).
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
    positions: list[int] | None = None
    seed: int | None = None
    answer_rank: int | None = None
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    corruption: str = "noise"

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = list(range(len(self.tokens)))

    @property
    def complete(self) -> bool:
        """Whether every cell of every grid was computed."""
        return not any(bool(torch.isnan(g).any()) for g in self.scores.values())

    @property
    def cells_done(self) -> int:
        return sum(int((~torch.isnan(g)).sum()) for g in self.scores.values())

    @property
    def _positions(self) -> list[int]:
        assert self.positions is not None  # filled in by __post_init__
        return self.positions

    @property
    def cells_total(self) -> int:
        return sum(g.numel() for g in self.scores.values())

    def peak(self, component: str) -> tuple[float, int, int]:
        """``(score, layer, token position)`` of the strongest restoration of ``component``."""
        grid = self.scores[component]
        li, ti = divmod(nan_argmax(grid), grid.shape[1])
        return float(grid[li, ti]), self.layers[li], self._positions[ti]

    def summary(self) -> str:
        """A few lines of text: p(clean), p(corrupted) and where each panel peaks."""
        subj = ", ".join(repr(self.tokens[i]) for i in self.subject_positions)
        lines = [f"prompt {self.prompt!r} -> answer {self.answer!r}; subject tokens {subj} "
                 f"(positions {self.subject_positions})"]
        if self.corruption == "noise":
            noise = f", std {self.noise_std:.4g}" if self.noise_std is not None else ""
            how = f"{self.samples} noise sample{'s' if self.samples != 1 else ''}{noise}"
        else:
            how = f"{self.corruption} corruption" + (f", {self.samples} samples" if self.samples != 1 else "")
        lines.append(f"p_clean = {self.p_clean:.4f}, p_corrupted = {self.p_corrupted:.4f} ({how})")
        if not self.complete:
            lines.append(f"PARTIAL: {self.cells_done} of {self.cells_total} restorations computed")
        last = len(self.tokens) - 1
        for comp, grid in self.scores.items():
            if bool(torch.isnan(grid).all()):
                lines.append(f"{comp}: not computed")
                continue
            value, layer, tok = self.peak(comp)
            where = "subject" if tok in self.subject_positions else ("last token" if tok == last else "other")
            line = (f"{comp} (window {self.window.get(comp, 1)}): peak p={value:.3f} at layer {layer}, "
                    f"token {tok} {self.tokens[tok]!r} ({where})")
            cols = [k for k, p in enumerate(self._positions) if p in self.subject_positions]
            if cols:
                sub = grid[:, cols]
                li, ti = divmod(nan_argmax(sub), sub.shape[1])
                line += f"; best subject restoration p={float(sub[li, ti]):.3f} at layer {self.layers[li]}"
            if last in self._positions:
                col = grid[:, self._positions.index(last)]
                li = nan_argmax(col.unsqueeze(1))
                line += f"; last token best p={float(col[li]):.3f} at layer {self.layers[li]}"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (the format of ``vene trace``'s ``trace.json``)."""
        return {
            "kind": "causal_trace", "format": FORMAT_VERSION,
            "model": self.model_name, "prompt": self.prompt, "answer": self.answer,
            "answer_id": self.answer_id, "answer_rank": self.answer_rank,
            "tokens": list(self.tokens), "subject_positions": list(self.subject_positions),
            "p_clean": self.p_clean, "p_corrupted": self.p_corrupted,
            "layers": list(self.layers), "positions": list(self._positions), "window": dict(self.window),
            "corruption": self.corruption, "noise_std": self.noise_std, "samples": self.samples, "seed": self.seed,
            "complete": self.complete, "cells_done": self.cells_done, "cells_total": self.cells_total,
            "warnings": list(self.warnings), "strategy": self.extra.get("strategy"), "fallback_reason": self.extra.get("fallback_reason"),
            "provenance": dict(self.provenance),
            "scores": {c: _grid_to_json(g) for c, g in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CausalTraceResult":
        if data.get("kind", "causal_trace") != "causal_trace":
            raise ConfigError(f"This is a {data.get('kind')!r} result, not a causal trace.")
        try:
            return cls(
                prompt=data["prompt"], answer=data["answer"], answer_id=int(data["answer_id"]),
                tokens=list(data["tokens"]), subject_positions=[int(p) for p in data["subject_positions"]],
                p_clean=float(data["p_clean"]), p_corrupted=float(data["p_corrupted"]),
                scores={c: _grid_from_json(g) for c, g in data["scores"].items()},
                layers=[int(l) for l in data["layers"]], window={k: int(v) for k, v in data["window"].items()},
                noise_std=data.get("noise_std"), samples=int(data["samples"]), model_name=data.get("model"),
                extra={k: data[k] for k in ("strategy", "fallback_reason") if k in data},
                positions=data.get("positions"), seed=data.get("seed"), answer_rank=data.get("answer_rank"),
                warnings=list(data.get("warnings", [])), provenance=dict(data.get("provenance", {})),
                corruption=str(data.get("corruption", "noise")),
            )
        except KeyError as err:
            raise ConfigError(f"The causal-trace JSON has no {err.args[0]!r} field.") from None

    @classmethod
    def from_json(cls, source: str | os.PathLike | dict) -> "CausalTraceResult":
        """Load a result written by :meth:`save` / ``vene trace`` (``trace.json``)."""
        return cls.from_dict(_load_json(source))

    def to_grids(self) -> Any:
        """The scores as a :class:`~vene.analysis.grids.GridSet`: one grid per component, axes
        ``layer`` x ``position`` labelled with the layers and token positions; ``meta`` has the
        tokens, the subject positions and p(clean) / p(corrupted)."""
        meta = {"tokens": self.tokens, "subject_positions": self.subject_positions, "p_clean": self.p_clean,
                "p_corrupted": self.p_corrupted, "answer": self.answer, "corruption": self.corruption}
        return _as_gridset(self.scores, lambda c, g: (("layer", "position"), {"layer": self.layers, "position": self.positions}),
                           "p_answer", meta)

    def to_pandas(self) -> Any:
        """Long-form ``DataFrame`` (pandas needed): columns ``grid`` (the component), ``layer``,
        ``position``, ``value`` (the restored probability of the answer)."""
        return self.to_grids().to_pandas()

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def plot(self, **kwargs: Any):
        """The ROME panels as a matplotlib ``Figure`` (see :func:`vene.analysis.plot_causal_trace`)."""
        from .plotting import plot_causal_trace

        return plot_causal_trace(self, **kwargs)


@dataclass
class PatchingResult:
    """What :func:`~vene.analysis.activation_patching` found.

    ``scores[component]``: ``(n_layers, n_positions)``, or ``(n_layers, n_positions, n_heads)``
    for head components -- the metric with that clean activation patched into the corrupted run.
    ``positions`` lists the patched positions (``["all"]`` when every position is patched at once).
    ``metric_name`` says what the metric is (e.g. ``"logit(' Paris') - logit(' Rome')"``).
    """

    scores: dict[str, torch.Tensor]
    layers: list[int]
    positions: list[Any]
    heads: dict[str, list[int]]
    clean_metric: float
    corrupted_metric: float
    tokens: list[str] | None = None
    corrupted_tokens: list[str] | None = None
    extra: dict = field(default_factory=dict)
    metric_name: str | None = None
    clean_prompt: str | None = None
    corrupted_prompt: str | None = None
    model_name: str | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every cell was computed (False after Ctrl-C: the rest are NaN)."""
        return not any(bool(torch.isnan(g).any()) for g in self.scores.values())

    def normalized(self) -> dict[str, torch.Tensor]:
        """Scores rescaled so that 0 is the corrupted run and 1 the clean run."""
        span = self.clean_metric - self.corrupted_metric
        if span == 0:
            raise ConfigError("The clean and corrupted runs give the same metric; nothing to normalise by.")
        return {c: (g - self.corrupted_metric) / span for c, g in self.scores.items()}

    def peak(self, component: str) -> tuple[float, tuple[int, ...]]:
        """``(score, (layer, position[, head]))`` of the cell with the largest score."""
        g = self.scores[component]
        idx = [int(i) for i in torch.unravel_index(torch.tensor(nan_argmax(g)), g.shape)]
        value = float(g[tuple(idx)])
        idx[0] = self.layers[idx[0]]
        return value, tuple(idx)

    def summary(self) -> str:
        name = f" {self.metric_name}" if self.metric_name else ""
        lines = [f"metric{name}: clean {self.clean_metric:.4f}, corrupted {self.corrupted_metric:.4f}"]
        for comp in self.scores:
            v, idx = self.peak(comp)
            pos = self.positions[idx[1]]
            label = f"position {pos}"
            if self.tokens is not None and isinstance(pos, int):
                label += f" {self.tokens[pos]!r}"
            head = f", head {self.heads[comp][idx[2]]}" if len(idx) > 2 else ""
            lines.append(f"{comp}: peak {v:.4f} at layer {idx[0]}, {label}{head}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "kind": "activation_patching", "format": FORMAT_VERSION, "model": self.model_name,
            "clean": self.clean_prompt, "corrupted": self.corrupted_prompt, "metric_name": self.metric_name,
            "tokens": self.tokens, "corrupted_tokens": self.corrupted_tokens,
            "layers": list(self.layers), "positions": list(self.positions),
            "heads": {c: list(h) for c, h in self.heads.items()},
            "clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric, "complete": self.complete,
            "strategy": self.extra.get("strategy"), "fallback_reason": self.extra.get("fallback_reason"),
            "provenance": dict(self.provenance),
            "scores": {c: _grid_to_json(g) for c, g in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PatchingResult":
        if data.get("kind", "activation_patching") != "activation_patching":
            raise ConfigError(f"This is a {data.get('kind')!r} result, not activation patching.")
        try:
            return cls(
                scores={c: _grid_from_json(g) for c, g in data["scores"].items()},
                layers=[int(l) for l in data["layers"]], positions=list(data["positions"]),
                heads={c: [int(h) for h in hs] for c, hs in data.get("heads", {}).items()},
                clean_metric=float(data["clean_metric"]), corrupted_metric=float(data["corrupted_metric"]),
                tokens=data.get("tokens"), corrupted_tokens=data.get("corrupted_tokens"),
                extra={k: data[k] for k in ("strategy", "fallback_reason") if k in data},
                metric_name=data.get("metric_name"), clean_prompt=data.get("clean"),
                corrupted_prompt=data.get("corrupted"), model_name=data.get("model"),
                provenance=dict(data.get("provenance", {})),
            )
        except KeyError as err:
            raise ConfigError(f"The patching JSON has no {err.args[0]!r} field.") from None

    @classmethod
    def from_json(cls, source: str | os.PathLike | dict) -> "PatchingResult":
        """Load a result written by :meth:`save` / ``vene patch`` (``patch.json``)."""
        return cls.from_dict(_load_json(source))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def to_grids(self) -> Any:
        """The scores as a :class:`~vene.analysis.grids.GridSet`: one grid per component, axes
        ``layer`` x ``position`` (x ``head``), labelled with the layers, positions and heads;
        ``meta`` has the tokens and the clean / corrupted metric."""
        def axes(comp: str, g: torch.Tensor) -> tuple:
            if g.dim() == 3:
                return ("layer", "position", "head"), {"layer": self.layers, "position": self.positions,
                                                       "head": self.heads.get(comp, list(range(g.shape[2])))}
            return ("layer", "position"), {"layer": self.layers, "position": self.positions}

        meta = {"tokens": self.tokens, "clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric,
                "metric_name": self.metric_name}
        return _as_gridset(self.scores, axes, self.metric_name or "metric", meta)

    def to_pandas(self) -> Any:
        """Long-form ``DataFrame`` (pandas needed): columns ``grid`` (the component), ``layer``,
        ``position`` (``head``), ``value`` (the patched metric)."""
        return self.to_grids().to_pandas()

    def plot(self, **kwargs: Any):
        """Heatmaps as a matplotlib ``Figure`` (see :func:`vene.analysis.plot_patching`)."""
        from .plotting import plot_patching

        return plot_patching(self, **kwargs)
