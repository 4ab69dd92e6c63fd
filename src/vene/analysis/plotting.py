"""Plots for sweeps: heatmaps with token labels and ROME's causal-trace panels.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` built without pyplot (no
global state, no GUI backend needed): ``fig.savefig("trace.png")`` works anywhere, and notebooks
display a returned figure.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError

#: ROME's colours: hidden states purple, MLP green, attention red.
PANEL_STYLE = {
    "block_output": ("Purples", "single restored layer"),
    "block_input": ("Purples", "single restored layer"),
    "mlp_output": ("Greens", "center of interval of {w} restored MLP layers"),
    "attention_output": ("Reds", "center of interval of {w} restored attention layers"),
}
_TITLES = {
    "block_output": "Impact of restoring state after corrupted input",
    "block_input": "Impact of restoring layer input after corrupted input",
    "mlp_output": "Impact of restoring MLP after corrupted input",
    "attention_output": "Impact of restoring attention after corrupted input",
}


_PATCH_TITLES = {
    "block_output": "Patching the residual stream (layer output)",
    "block_input": "Patching the layer input",
    "mlp_output": "Patching MLP outputs",
    "attention_output": "Patching attention outputs",
}


def _figure(figsize: tuple[float, float]):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Plotting needs matplotlib: pip install 'vene[viz]'") from err
    return Figure(figsize=figsize, layout="constrained")


def _to_2d(values: Any) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    if t.dim() != 2:
        raise ConfigError(f"heatmap needs a 2-D grid, got shape {tuple(t.shape)}.")
    return t


def draw_heatmap(
    ax: Any,
    values: Any,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str | None = None,
    max_xticks: int = 16,
) -> Any:
    """Draw ``values`` ``(rows, cols)`` on ``ax``; returns the image."""
    t = _to_2d(values)
    import numpy as np

    img = ax.pcolormesh(np.ma.masked_invalid(t.numpy()), cmap=cmap, vmin=vmin, vmax=vmax)  # NaN: blank
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(t.shape[0])])
    ax.set_yticklabels(list(row_labels) if row_labels is not None else [str(i) for i in range(t.shape[0])])
    step = max(1, -(-t.shape[1] // max_xticks))
    cols = list(range(0, t.shape[1], step))
    ax.set_xticks([c + 0.5 for c in cols])
    ax.set_xticklabels([col_labels[c] if col_labels is not None else str(c) for c in cols],
                       rotation=90 if col_labels is not None and any(len(str(l)) > 3 for l in col_labels) else 0)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    cb = ax.figure.colorbar(img, ax=ax)
    if colorbar_label:
        cb.ax.set_title(colorbar_label, y=-0.12, fontsize=9)
    return img


def heatmap(values: Any, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None, *,
            figsize: tuple[float, float] | None = None, **kwargs: Any):
    """A single heatmap ``(rows, cols)`` with labels, as a ``Figure``. Keyword arguments as in
    :func:`draw_heatmap` (``title``, ``xlabel``, ``ylabel``, ``cmap``, ``vmin``, ``vmax``,
    ``colorbar_label``)."""
    t = _to_2d(values)
    fig = _figure(figsize or (max(4.0, 0.25 * t.shape[1] + 2.5), max(2.5, 0.3 * t.shape[0] + 1.2)))
    draw_heatmap(fig.add_subplot(1, 1, 1), t, row_labels, col_labels, **kwargs)
    return fig


def _token_rows(tokens: Sequence[str], marked: Sequence[int]) -> list[str]:
    return [repr(t)[1:-1] + ("*" if i in marked else "") for i, t in enumerate(tokens)]


def token_text(token: str) -> str:
    """A token for a label: no quotes, no leading space (``" Paris"`` -> ``Paris``); repr for
    tokens that are only whitespace or unprintable."""
    stripped = token.strip()
    return stripped if stripped and stripped.isprintable() else repr(token)


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def trace_title(result: Any) -> str:
    """Title of a causal-trace figure: model, prompt, answer, p_clean / p_corrupted, samples."""
    custom = getattr(result, "figure_title", None)
    if callable(custom):
        return custom()
    model = f" of {result.model_name}" if result.model_name else ""
    noise = f", noise std {result.noise_std:.3g}" if result.noise_std is not None else ""
    lines = [f"Causal trace{model}: {_short(result.prompt)!r} → {result.answer!r}",
             f"p_clean = {result.p_clean:.3g}, p_corrupted = {result.p_corrupted:.3g}; "
             f"{result.samples} noise sample{'s' if result.samples != 1 else ''} per restoration{noise}; * = subject"]
    rank = getattr(result, "answer_rank", None)
    if rank is not None and rank > 10:
        lines.append(f"WARNING: the answer is only the model's prediction number {rank}")
    if not result.complete:
        lines.append(f"PARTIAL: {result.cells_done} of {result.cells_total} restorations computed (blank = not computed)")
    return "\n".join(lines)


def plot_causal_trace(result: Any, components: Sequence[str] | None = None, figsize: tuple[float, float] | None = None,
                      title: str | bool = True):
    """ROME's panels: one heatmap per component, tokens down (subject tokens starred), layers
    across, colour = p(answer) with the state restored; the colour scale starts at p(corrupted).
    The figure is titled with the model, prompt, answer, p_clean / p_corrupted and the number of
    noise samples (``title=False`` leaves it out, a string replaces it). Cells not computed (a
    partial run) are blank."""
    comps = list(components) if components is not None else list(result.scores)
    if not comps:
        raise ConfigError("Nothing to plot: the result has no components.")
    positions = list(getattr(result, "positions", None) or range(len(result.tokens)))
    n_tok, n_layers = len(positions), len(result.layers)
    width = max(3.5, 0.12 * n_layers + 2.2)
    heading = trace_title(result) if title is True else (title or None)
    extra_h = 0.25 * (heading.count("\n") + 1) if heading else 0.0
    fig = _figure(figsize or (width * len(comps), max(2.5, 0.3 * n_tok + 1.3) + extra_h))
    rows = _token_rows([result.tokens[p] for p in positions],
                       [k for k, p in enumerate(positions) if p in result.subject_positions])
    answer = token_text(result.answer)
    for k, comp in enumerate(comps):
        ax = fig.add_subplot(1, len(comps), k + 1)
        cmap, xl = PANEL_STYLE.get(comp, ("viridis", "layer"))
        w = result.window.get(comp, 1) if isinstance(result.window, dict) else 1
        grid = result.scores[comp].T  # (positions, layers)
        finite = grid[~torch.isnan(grid)]
        low = float(finite.min()) if finite.numel() else result.p_corrupted
        draw_heatmap(
            ax, grid, rows if k == 0 else [""] * n_tok, [str(l) for l in result.layers],
            title=_TITLES.get(comp, f"Impact of restoring {comp}"),
            xlabel=xl.format(w=w) if w > 1 or "{w}" not in xl else "single restored layer",
            cmap=cmap, vmin=min(result.p_corrupted, low), colorbar_label=f"p({answer})",
        )
    if heading:
        fig.suptitle(heading, fontsize=9)
    return fig


def patch_title(result: Any, normalize: bool) -> str:
    """Title of a patching figure: model, clean / corrupted prompts, the metric and its two ends."""
    model = f" of {result.model_name}" if getattr(result, "model_name", None) else ""
    metric = getattr(result, "metric_name", None) or "metric"
    lines = [f"Activation patching{model}: clean activations into the corrupted run"]
    if getattr(result, "clean_prompt", None):
        lines.append(f"clean {_short(result.clean_prompt, 50)!r}, corrupted {_short(result.corrupted_prompt or '', 50)!r}")
    lines.append(f"metric {metric}: clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f}"
                 + ("; colour: 0 = corrupted, 1 = clean" if normalize else ""))
    return "\n".join(lines)


def plot_patching(result: Any, components: Sequence[str] | None = None, normalize: bool = False,
                  figsize: tuple[float, float] | None = None, title: str | bool = True):
    """Activation-patching grids: positions down, layers across (one panel per component); head
    components get one (heads x layers) panel per patched position. The colour scale is centred
    on the corrupted run (white: no effect); ``normalize=True`` plots (score - corrupted) /
    (clean - corrupted)."""
    scores = result.normalized() if normalize else result.scores
    comps = list(components) if components is not None else list(scores)
    panels = []
    for comp in comps:
        g = scores[comp]
        if g.dim() == 2:
            labels = [
                (repr(result.tokens[p])[1:-1] if result.tokens is not None and isinstance(p, int) else str(p))
                for p in result.positions
            ]
            panels.append((comp, g.T, labels, "position"))
        else:
            for pi, p in enumerate(result.positions[:12]):
                tok = f" {result.tokens[p]!r}" if result.tokens is not None and isinstance(p, int) else ""
                panels.append((f"{comp} @ position {p}{tok}", g[:, pi, :].T, [str(h) for h in result.heads[comp]], "head"))
    if not panels:
        raise ConfigError("Nothing to plot: the result has no components.")
    n_rows_max = max(p[1].shape[0] for p in panels)
    width = max(3.5, 0.12 * len(result.layers) + 2.5)
    fig = _figure(figsize or (width * len(panels), max(2.5, 0.3 * n_rows_max + 1.3)))
    metric = getattr(result, "metric_name", None) or "metric"
    label = f"({metric}) normalised" if normalize else metric
    # white = no effect (the corrupted run's value); red = towards and beyond the clean run
    center = 0.0 if normalize else float(result.corrupted_metric)
    heading = patch_title(result, normalize) if title is True else (title or None)
    for k, (name, grid, rows, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        lim = float((grid - center).abs().max()) or 1.0
        if normalize:
            lim = max(lim, 1.0)
        draw_heatmap(ax, grid, rows, [str(l) for l in result.layers], title=_PATCH_TITLES.get(name, f"Patching {name}"),
                     xlabel="layer", ylabel=ylabel if k == 0 else None, cmap="RdBu_r", vmin=center - lim,
                     vmax=center + lim, colorbar_label=label)
    if heading:
        fig.suptitle(heading, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# generic labelled grids (vene.analysis.grids)


def _short(label: Any) -> str:
    return repr(label)[1:-1] if isinstance(label, str) else str(label)


def _draw_grid(ax: Any, grid: Any, title: str | None = None, centered: bool | None = None, **kwargs: Any) -> None:
    vals = grid.values
    if centered is None:
        centered = bool(vals.numel()) and float(vals.min()) < 0 < float(vals.max())
    if vals.dim() == 1:
        labels = [_short(l) for l in grid.labels[grid.axes[0]]]
        colors = ["#b2182b" if v >= 0 else "#2166ac" for v in vals.tolist()]
        ax.bar(range(len(labels)), vals.numpy(), color=colors)
        step = max(1, -(-len(labels) // 40))
        ax.set_xticks(list(range(0, len(labels), step)))
        ax.set_xticklabels([labels[i] for i in range(0, len(labels), step)], rotation=90, fontsize=7)
        ax.set_xlabel(grid.axes[0])
        ax.set_ylabel(grid.name)
        ax.axhline(0.0, color="black", linewidth=0.5)
        if title:
            ax.set_title(title, fontsize=10)
        return
    if centered and "vmin" not in kwargs and "vmax" not in kwargs:
        lim = float(vals.abs().max()) or 1.0
        kwargs.update(vmin=-lim, vmax=lim)
        kwargs.setdefault("cmap", "RdBu_r")
    r, c = grid.axes
    draw_heatmap(ax, vals, [_short(l) for l in grid.labels[r]], [_short(l) for l in grid.labels[c]],
                 title=title, ylabel=r, xlabel=c, colorbar_label=kwargs.pop("colorbar_label", grid.name), **kwargs)


def plot_grid(grid: Any, title: str | None = None, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """Plot a :class:`vene.analysis.grids.Grid`: bars (1 axis), heatmap (2 axes), or one
    heatmap per label of the first axis (3 axes, at most 12 panels)."""
    vals = grid.values
    if vals.dim() == 0 or vals.dim() > 3:
        raise ConfigError(f"plot() draws grids with 1 to 3 axes; this one has axes {grid.axes}.")
    if vals.dim() <= 2:
        n_r = vals.shape[0] if vals.dim() == 2 else 8
        n_c = vals.shape[-1]
        fig = _figure(figsize or (max(4.0, 0.22 * n_c + 2.5), max(2.8, 0.28 * n_r + 1.4)))
        _draw_grid(fig.add_subplot(1, 1, 1), grid, title=title or grid.meta.get("title"), **kwargs)
        return fig
    first = grid.axes[0]
    labs = grid.labels[first][:12]
    n_r, n_c = vals.shape[1], vals.shape[2]
    fig = _figure(figsize or (len(labs) * max(3.0, 0.22 * n_c + 2.0), max(2.8, 0.28 * n_r + 1.4)))
    lim = float(vals.abs().max()) or 1.0
    for k, lab in enumerate(labs):
        sub = grid.sel(**{first: lab})
        kw = dict(kwargs)
        if float(vals.min()) < 0 < float(vals.max()):
            kw.setdefault("vmin", -lim)
            kw.setdefault("vmax", lim)
            kw.setdefault("cmap", "RdBu_r")
        _draw_grid(fig.add_subplot(1, len(labs), k + 1), sub, title=f"{first} {_short(lab)}", **kw)
    return fig


def plot_grids(grids: Sequence[Any], figsize: tuple[float, float] | None = None, max_panels: int = 12, **kwargs: Any):
    """One panel per grid, side by side; a 3-axis grid gets one panel per label of its middle axis
    (e.g. one (layer x head) panel per position)."""
    panels = []
    for g in grids:
        if g.values.dim() == 3:
            mid = g.axes[1]
            for lab in g.labels[mid]:
                sub = g.sel(**{mid: lab})
                panels.append((sub, f"{g.meta.get('title', g.name)} @ {mid} {_short(lab)}"))
        elif g.values.dim() in (1, 2):
            panels.append((g, g.meta.get("title", g.name)))
        else:
            raise ConfigError(f"plot_grids draws grids with 1 to 3 axes, not {g.axes}.")
    if not panels:
        raise ConfigError("Nothing to plot: no grids.")
    panels = panels[:max_panels]
    w = max(max(3.5, 0.22 * g.values.shape[-1] + 2.5) for g, _ in panels)
    h = max(max(2.8, 0.28 * (g.values.shape[0] if g.values.dim() == 2 else 8) + 1.4) for g, _ in panels)
    fig = _figure(figsize or (w * len(panels), h))
    for k, (g, title) in enumerate(panels):
        _draw_grid(fig.add_subplot(1, len(panels), k + 1), g, title=title, **kwargs)
    return fig
