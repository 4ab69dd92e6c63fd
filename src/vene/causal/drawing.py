"""Drawing a :class:`~vene.causal.CausalModel` (matplotlib when installed, text otherwise)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Dict

from ._state import CausalModelState

__all__ = ["DrawingMixin"]


class DrawingMixin(CausalModelState):
    """Display methods of :class:`~vene.causal.CausalModel` (not usable on its own)."""

    def _text_rendering(self, labels: Mapping[Any, str]) -> str:
        lines = [
            f"CausalModel: {len(self.variables)} variables, timesteps "
            f"{min(self.timesteps.values(), default=0)}..{self.end_time}"
        ]
        by_step: Dict[int, list] = defaultdict(list)
        for var in self.variables:
            by_step[self.timesteps[var]].append(var)
        for step in sorted(by_step):
            entries = []
            for var in by_step[step]:
                entry = labels[var]
                if self.parents[var]:
                    entry += " <- (" + ", ".join(str(p) for p in self.parents[var]) + ")"
                entries.append(entry)
            lines.append(f"  t={step}: " + "; ".join(entries))
        return "\n".join(lines)

    def _draw(self, labels: Mapping[Any, str], pos, ax, show, as_text, figsize):
        text = self._text_rendering(labels)
        plt: Any = None  # matplotlib.pyplot when show= asks for a window
        if not as_text:
            try:
                from matplotlib.figure import Figure

                if show:
                    import matplotlib.pyplot as plt
            except ImportError:
                as_text = True
        if as_text:
            if show:  # library code prints only when explicitly asked to
                print(text)
            return text

        layout = dict(self.pos)
        if pos:
            layout.update({var: tuple(xy) for var, xy in pos.items()})
        if ax is not None:
            figure = ax.figure
        elif plt is not None:
            figure = plt.figure(figsize=figsize)
            ax = figure.add_subplot()
        else:
            figure = Figure(figsize=figsize)
            ax = figure.add_subplot()
        for child in self.variables:
            for parent in self.parents[child]:
                ax.annotate(
                    "",
                    xy=layout[child],
                    xytext=layout[parent],
                    arrowprops=dict(arrowstyle="-|>", color="0.35", shrinkA=14, shrinkB=14),
                    zorder=1,
                )
        for var in self.variables:
            x, y = layout[var]
            ax.text(
                x,
                y,
                labels[var],
                ha="center",
                va="center",
                zorder=2,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="#9bd39b", edgecolor="0.25"),
            )
        xs = [layout[v][0] for v in self.variables] or [0]
        ys = [layout[v][1] for v in self.variables] or [0]
        ax.set_xlim(min(xs) - 0.75, max(xs) + 0.75)
        ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
        ax.set_axis_off()
        if show and plt is not None:
            plt.show()
        return figure

    def print_structure(self, pos=None, *, ax=None, show=None, as_text=False, figsize=(10, 10)):
        """Draw the causal graph.

        With matplotlib installed (and ``as_text`` False) the graph is drawn
        with nodes at :attr:`pos` (overridden by ``pos``) and a
        ``matplotlib.figure.Figure`` is returned (drawn on ``ax`` when given);
        ``show=True`` also calls ``plt.show()``.  Otherwise (matplotlib absent
        or ``as_text=True``) a text rendering (one line per timestep,
        ``child <- (parents)``) is returned; it is also printed only when
        ``show=True``.
        """
        labels = {var: str(var) for var in self.variables}
        return self._draw(labels, pos, ax, show, as_text, figsize)

    def print_setting(self, total_setting: Mapping, display=None, *, ax=None, show=None, as_text=False, figsize=(10, 10)):
        """Draw the causal graph with each node labelled ``"var: value"``.

        ``display`` optionally maps variables to booleans: variables mapped to
        a false value (or absent from ``total_setting``) are labelled with their
        name only.  Drawing / return value as in :meth:`print_structure`.
        """
        labels = {}
        for var in self.variables:
            shown = var in total_setting and (display is None or display.get(var, True))
            labels[var] = f"{var}: {total_setting[var]}" if shown else str(var)
        return self._draw(labels, None, ax, show, as_text, figsize)
