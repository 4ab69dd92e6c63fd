"""One result type for the analysis toolkit: a grid of numbers with labelled axes.

:class:`Grid` holds ``values`` (a float tensor) whose dimensions are named by ``axes`` (e.g.
``("layer", "position", "head")``) and labelled by ``labels[axis]`` (layer numbers, token
strings, head numbers, component names...). Every grid can be turned into a long-form
``pandas.DataFrame`` (one column per axis plus ``value``; pandas is optional and imported only
there), plotted (:meth:`Grid.plot` returns a matplotlib ``Figure``), saved to JSON and read back
(:func:`load_result`). :class:`GridSet` is a named collection of grids (one per component) with
the same three operations.

>>> g = Grid(torch.zeros(2, 3), ("layer", "position"), {"layer": [0, 1], "position": ["a", "b", "c"]})
>>> g.to_pandas().columns.tolist()
['layer', 'position', 'value']
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..errors import ConfigError


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:  # NaN is not JSON
        return None
    return x


@dataclass
class Grid:
    """``values`` with named, labelled axes.

    ``values``: float tensor; ``axes``: one name per dimension; ``labels``: ``axis -> list`` of
    ``values.shape[i]`` labels (default ``0..n-1``); ``name``: what the numbers are (used as the
    DataFrame column and the colour-bar label); ``meta``: anything JSON-able worth keeping (the
    metric's clean/corrupted values, what ran, timings).
    """

    values: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list] = field(default_factory=dict)
    name: str = "value"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values).detach().float().cpu()
        self.axes = tuple(self.axes)
        if len(self.axes) != self.values.dim():
            raise ConfigError(f"Grid has {self.values.dim()} dimensions {tuple(self.values.shape)} but axes {self.axes}.")
        for i, ax in enumerate(self.axes):
            lab = self.labels.get(ax)
            if lab is None:
                self.labels[ax] = list(range(self.values.shape[i]))
            elif len(lab) != self.values.shape[i]:
                raise ConfigError(f"Axis {ax!r} has {self.values.shape[i]} entries but {len(lab)} labels.")
            else:
                self.labels[ax] = list(lab)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def index(self, axis: str, label: Any) -> int:
        """Position of ``label`` on ``axis``."""
        if axis not in self.axes:
            raise ConfigError(f"No axis {axis!r}; axes are {self.axes}.")
        labs = self.labels[axis]
        if label in labs:
            return labs.index(label)
        raise ConfigError(f"{label!r} is not a label of axis {axis!r}; labels are {labs[:20]}.")

    def sel(self, **where: Any) -> "Grid":
        """The sub-grid at the given labels, e.g. ``grid.sel(layer=3)`` (that axis is dropped)."""
        vals, axes, labels = self.values, list(self.axes), dict(self.labels)
        for ax, lab in where.items():
            i = axes.index(ax) if ax in axes else None
            if i is None:
                raise ConfigError(f"No axis {ax!r}; axes are {tuple(axes)}.")
            vals = vals.select(i, self.index(ax, lab))
            axes.pop(i)
            labels.pop(ax)
        return Grid(vals, tuple(axes), labels, self.name, dict(self.meta))

    def top(self, k: int = 10, largest: bool = True, absolute: bool = False) -> list[tuple[dict, float]]:
        """The ``k`` cells with the largest (or smallest; ``absolute``: largest ``|value|``)
        values, as ``({axis: label}, value)`` pairs."""
        flat = self.values.flatten()
        key = flat.abs() if absolute else flat
        idx = key.topk(min(k, flat.numel()), largest=largest).indices
        out = []
        for i in idx.tolist():
            coords = torch.unravel_index(torch.tensor(i), self.values.shape)
            out.append(({ax: self.labels[ax][int(c)] for ax, c in zip(self.axes, coords)}, float(flat[i])))
        return out

    def to_pandas(self):
        """Long-form ``DataFrame``: one row per cell, one column per axis, and ``name``."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas needs pandas: pip install pandas") from err
        grids = torch.meshgrid(*[torch.arange(n) for n in self.values.shape], indexing="ij") if self.axes else ()
        cols = {ax: [self.labels[ax][int(i)] for i in g.flatten()] for ax, g in zip(self.axes, grids)}
        cols[self.name] = self.values.flatten().tolist()
        return pd.DataFrame(cols)

    def to_dict(self) -> dict:
        return {"kind": "grid", "name": self.name, "axes": list(self.axes),
                "labels": _jsonable(self.labels), "values": self.values.tolist(), "meta": _jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Grid":
        axes = tuple(d["axes"])
        values = torch.tensor(d["values"], dtype=torch.float32)
        if values.dim() != len(axes):  # an empty grid
            values = values.reshape([len(d["labels"][a]) for a in axes])
        return cls(values, axes, {a: list(d["labels"][a]) for a in axes}, d.get("name", "value"), dict(d.get("meta", {})))

    def save_json(self, path: str | os.PathLike) -> None:
        _write(path, self.to_dict())

    def plot(self, **kwargs: Any):
        """A ``Figure``: a bar chart for one axis, a heatmap for two (first axis down), one
        heatmap per label of the first axis for three (at most 12 panels). Keyword arguments go
        to :func:`vene.analysis.plotting.draw_heatmap` (``title``, ``cmap``, ``vmin``...)."""
        from .plotting import plot_grid

        return plot_grid(self, **kwargs)


@dataclass
class GridSet:
    """Named grids (e.g. one per component) with shared metadata."""

    grids: dict[str, Grid]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> Grid:
        if key not in self.grids:
            raise KeyError(f"No grid {key!r}; have {list(self.grids)}.")
        return self.grids[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.grids)

    def __len__(self) -> int:
        return len(self.grids)

    def items(self):
        return self.grids.items()

    def to_pandas(self):
        """All grids in one long-form ``DataFrame`` with a ``grid`` column (axes missing from a
        grid are left empty)."""
        import pandas as pd

        frames = []
        for k, g in self.grids.items():
            df = g.to_pandas().rename(columns={g.name: "value"})
            df.insert(0, "grid", k)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def to_dict(self) -> dict:
        return {"kind": "gridset", "grids": {k: g.to_dict() for k, g in self.grids.items()}, "meta": _jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GridSet":
        return cls({k: Grid.from_dict(v) for k, v in d["grids"].items()}, dict(d.get("meta", {})))

    def save_json(self, path: str | os.PathLike) -> None:
        _write(path, self.to_dict())

    def plot(self, keys: Sequence[str] | None = None, **kwargs: Any):
        """One panel per grid (two-dimensional grids) as a single ``Figure``."""
        from .plotting import plot_grids

        return plot_grids([self.grids[k] for k in (keys or list(self.grids))], **kwargs)


def _write(path: str | os.PathLike, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def load_result(path: str | os.PathLike) -> Grid | GridSet:
    """Read a :class:`Grid` or :class:`GridSet` written by ``save_json``."""
    with open(path, encoding="utf-8") as fh:
        d = json.load(fh)
    kind = d.get("kind")
    if kind == "grid":
        return Grid.from_dict(d)
    if kind == "gridset":
        return GridSet.from_dict(d)
    raise ConfigError(f"{path} holds no vene analysis result (kind {kind!r}; expected 'grid' or 'gridset').")
