"""The ``unit_locations`` / ``subspaces`` grammar.

User input (pyvene's shorthands and nested lists) is normalised once per call into one
:class:`Loc` per intervention and side: index tensors of shape ``(batch, units)`` (two of them for
two-level units such as ``"h.pos"``). Every validation error about locations is raised here, with
the intervention's key in the message.

Canonical form, parallel mode: ``{"sources->base": (SRC, BASE)}``; ``SRC`` and ``BASE`` are lists
with one entry per intervention (in key order); an entry is ``None`` (skip / whole tensor) or
``[batch][units]`` ints (``[2][batch][units]`` for ``"h.pos"``: heads, then positions).
Shorthands: an int ``k`` (that unit in every example, on both sides); a pair of ints ``(a, b)``
(source unit ``a`` into base unit ``b``, as in pyvene); ``(None, b)`` / ``(a, None)``; a flat list
of ints (those units, both sides); ``[batch][units]`` (one intervention's worth) is shared by every
intervention. Under ``"base"`` a flat list of ints always means units (never a pair). Serial mode uses
``"source_i->source_{i+1}"`` ... ``"source_{n-1}->base"``; each entry lists the interventions of group ``i``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import ConfigError, LocationError, ShapeMismatchError, SourceError


_BATCH_INDEX: dict = {}


def batch_index(batch: int, device: torch.device) -> torch.Tensor:
    """``arange(batch)[:, None]`` on ``device`` (cached)."""
    key = (batch, device)
    b = _BATCH_INDEX.get(key)
    if b is None:
        b = torch.arange(batch, device=device).unsqueeze(1)
        if len(_BATCH_INDEX) > 256:
            _BATCH_INDEX.clear()
        _BATCH_INDEX[key] = b
    return b


class Loc:
    """Index tensors of one intervention on one side (source or base)."""

    __slots__ = ("idx", "idx2", "max1", "max2", "batch", "shared", "span", "rows", "_dev")

    def __init__(self, idx: torch.Tensor, idx2: torch.Tensor | None, max1: int, max2: int, shared: bool = False,
                 rows: torch.Tensor | None = None) -> None:
        self.idx = idx
        self.idx2 = idx2
        self.max1 = max1
        self.max2 = max2
        self.batch = idx.shape[0]
        #: ``(R,)`` batch rows that row ``r`` of ``idx`` selects from (default: row ``r``), for
        #: selections that touch only some rows of a batch (sweep cells)
        self.rows = rows
        #: every example selects the same units (decided per call, never sticky)
        self.shared = shared and idx2 is None and rows is None
        #: (start, length) when the shared units are consecutive: read and written as a slice view
        self.span: tuple[int, int] | None = None
        if self.shared:
            row = idx[0].tolist()
            if row == list(range(row[0], row[0] + len(row))):
                self.span = (row[0], len(row))
        self._dev: dict = {}

    @property
    def two_level(self) -> bool:
        return self.idx2 is not None

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(idx, idx2, batch_index)`` on ``device`` (cached)."""
        got = self._dev.get(device)
        if got is None:
            b = batch_index(self.batch, device) if self.rows is None else self.rows.to(device).unsqueeze(1)
            idx = self.idx[0].to(device) if self.shared else self.idx.to(device)
            idx2 = self.idx2.to(device) if self.idx2 is not None else None
            got = (idx, idx2, b)
            self._dev[device] = got
        return got


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_int(v) for v in x)


def int_rows(value: Any, batch: int, key: str, side: str, what: str) -> list[list[int]]:
    """Validate ``[batch][units]`` ints; return as list of lists."""
    if not isinstance(value, (list, tuple)):
        raise LocationError(
            f"{key}: {side} {what} must be a list with one list of units per example "
            f"([batch][units]), got {value!r}."
        )
    if len(value) != batch:
        if len(value) == 1 and batch > 1 and _is_int_list(value[0]):
            raise LocationError(
                f"{key}: {side} {what} give one row {list(value)!r} for a batch of {batch} examples. "
                "pyvene silently used example 0's row, and example 0's source activation, for every "
                "example; vene refuses. Give one row per example, e.g. "
                f"{[list(value[0])] * min(batch, 3)!r}{'...' if batch > 3 else ''} ([{list(value[0])!r}] * {batch}), "
                "or, for the same positions in every example, a shorthand such as "
                "{'sources->base': 3} or a flat list of positions."
            )
        if _is_int_list(value):
            raise LocationError(
                f"{key}: {side} {what} {list(value)!r} is one level too shallow: give one list of units "
                f"per example, e.g. {[list(value)] * min(batch, 2)!r} for a batch of {batch}."
            )
        raise LocationError(
            f"{key}: {side} {what} has {len(value)} rows but the batch has {batch} examples "
            "(one list of units per example is expected)"
            + ("; for different source and base units write a tuple, ([source units], [base units])."
               if len(value) == 2 else ".")
        )
    rows = []
    width = None
    for i, row in enumerate(value):
        if not _is_int_list(row):
            raise LocationError(
                f"{key}: {side} {what} of example {i} must be a non-empty list of ints, got {row!r} "
                "(wrong nesting? the canonical form is [intervention][batch][units])."
            )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise LocationError(
                f"{key}: {side} {what} have different lengths across examples ({width} vs {len(row)}); "
                "every example must select the same number of units."
            )
        rows.append(list(row))
    return rows


def _check_unique(rows: list[list[int]], key: str, what: str) -> None:
    """A base unit listed twice in one example would be written twice, and which write wins is
    undefined (an addition would land once): refused."""
    for i, r in enumerate(rows):
        if len(set(r)) != len(r):
            dup = next(v for v in r if r.count(v) > 1)
            raise LocationError(
                f"{key}: the base {what} of example {i} list {dup} twice ({r}); each base unit can be "
                "written once. (Source units may repeat.)"
            )


def build_loc(entry: Any, unit: str, batch: int, key: str, side: str, negative: bool = False) -> Loc | None:
    """Turn one intervention's canonical entry into a :class:`Loc` (None = whole tensor).
    ``negative``: keep negative locations (generation resolves them at each step)."""
    if entry is None:
        return None
    if "." in unit:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise LocationError(
                f"{key}: unit {unit!r} has two levels, so each {side} location must be "
                f"[[{unit.split('.')[0]}s per example], [{unit.split('.')[1]}s per example]], got {entry!r}. "
                "Use vene.GET_LOC((head, pos)) to build one."
            )
        r1 = int_rows(entry[0], batch, key, side, unit.split(".")[0] + " locations")
        r2 = int_rows(entry[1], batch, key, side, unit.split(".")[1] + " locations")
        for rows, level in ((r1, unit.split(".")[0]), (r2, unit.split(".")[1])):
            low = min(min(r) for r in rows)
            if low < 0 and not negative:
                raise LocationError(f"{key}: negative {side} {level} location {low}; locations count from 0.")
        if side == "base":
            _check_unique(r1, key, unit.split(".")[0] + " locations")
            _check_unique(r2, key, unit.split(".")[1] + " locations")
        t1 = torch.tensor(r1, dtype=torch.long)
        t2 = torch.tensor(r2, dtype=torch.long)
        return Loc(t1, t2, max(max(r) for r in r1), max(max(r) for r in r2))
    rows = int_rows(entry, batch, key, side, f"{unit} locations")
    mins = min(min(r) for r in rows)
    if mins < 0 and not negative:
        raise LocationError(f"{key}: negative {side} location {mins}; locations count from 0.")
    if side == "base" and unit != "t":  # time steps: checked per step (ops.TimeIndex)
        _check_unique(rows, key, f"{unit} locations")
    shared = all(r == rows[0] for r in rows)
    return Loc(torch.tensor(rows, dtype=torch.long), None, max(max(r) for r in rows), 0, shared)


def expand_shorthand(value: Any, n: int, batch: int, under_base: bool, entry_depth: int = 2) -> tuple[Any, Any]:
    """Apply the shorthand table. Returns (SRC, BASE) lists of length n (or None)."""
    if _is_int(value):
        e = [[value]] * batch
        return ([e] * n if not under_base else None), [e] * n
    if isinstance(value, (list, tuple)) and len(value) == 2 and not under_base:
        a, b = value
        if (_is_int(a) or a is None) and (_is_int(b) or b is None) and not (a is None and b is None):
            src = None if a is None else [[[a]] * batch] * n
            base = None if b is None else [[[b]] * batch] * n
            return src, base
    if _is_int_list(value):
        e = [list(value)] * batch
        return ([e] * n if not under_base else None), [e] * n
    if under_base:
        return None, value
    if isinstance(value, list) and len(value) == 2 and entry_depth == 2 and all(_is_int_list(v) for v in value):
        # [[a, ...], [b, ...]]: read as a (SRC, BASE) pair, each side would be bare ints, which is
        # no per-intervention entry; it is one intervention's [batch][units], used on both sides
        return value, value
    if isinstance(value, list) and len(value) != 2 and _depth(value) in (entry_depth, entry_depth + 1):
        return value, value  # one location list used on both sides (e.g. GET_LOC(...))
    if isinstance(value, tuple) and len(value) == 2:
        # a side given as a flat list of ints means those units in every example
        src_side, base_side = ([[list(v)] * batch] * n if _is_int_list(v) and entry_depth == 2 else v for v in value)
        return src_side, base_side
    if isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, (list, tuple)) for v in value):
        return value[0], value[1]
    raise LocationError(
        f"Cannot read unit locations {value!r}: expected an int, a (source, base) pair of ints, a "
        "flat list of ints, or (SRC, BASE) with one entry per intervention."
    )


#: deeper unit_locations / subspaces nesting than any valid form (a guard against runaway input)
MAX_NESTING = 32


def _depth(x: Any, level: int = 0) -> int:
    if isinstance(x, (list, tuple)):
        if level > MAX_NESTING:
            raise LocationError(
                f"unit_locations are nested more than {MAX_NESTING} levels deep; the deepest valid form is "
                "[intervention][2][batch][units] (two-level units)."
            )
        inner = [_depth(v, level + 1) for v in x if v is not None]
        return 1 + (max(inner) if inner else 0)
    return 0


def per_intervention(side_value: Any, keys: Sequence[str], what: str, units: Sequence[str] | None = None,
                     links: Sequence[Any] | None = None) -> list:
    if side_value is None:
        return [None] * len(keys)
    if (links is not None and len(keys) > 1 and isinstance(side_value, (list, tuple)) and len(side_value) == 1
            and links[0] is not None and all(k == links[0] for k in links)):
        # linked interventions act on one shared selection: one entry serves them all (pyvene)
        return [side_value[0]] * len(keys)
    if units is not None and isinstance(side_value, (list, tuple)) and side_value:
        # one intervention's worth of locations ([batch][units]) is shared by every intervention
        entry_depth = {3 if "." in u else 2 for u in units}
        if len(entry_depth) == 1 and _depth(side_value) == entry_depth.pop() and None not in side_value:
            return [side_value] * len(keys)
    if not isinstance(side_value, (list, tuple)):
        raise LocationError(f"{what} must be a list with one entry per intervention, got {side_value!r}.")
    if len(side_value) != len(keys):
        raise LocationError(
            f"{what} has {len(side_value)} entries but there are {len(keys)} interventions "
            f"({', '.join(keys)}); give one entry per intervention (None to skip one). A single "
            "entry is shared only by interventions linked together (the same intervention_link_key)."
        )
    return list(side_value)


def normalise_unit_locations(
    unit_locations: Any,
    *,
    mode: str,
    keys: Sequence[str],
    groups: Sequence[int],
    n_groups: int,
    units: Sequence[str],
    batch: int,
    links: Sequence[Any] | None = None,
) -> tuple[list[Loc | None], list[Loc | None], list[bool], list[bool], list[int | None]]:
    """Return per-key ``(src_locs, base_locs, src_given, base_given, target)``.

    ``src_given[i]`` is False when the source side was absent (``"base"`` key or ``(None, b)``);
    ``base_given[i]`` likewise. ``target[i]`` is, in serial mode, the group whose run key ``i``
    writes into (``n_groups`` = the base); in parallel mode it is always ``n_groups``.
    """
    n = len(keys)
    target: list[int | None] = [n_groups] * n
    if unit_locations is None:
        return [None] * n, [None] * n, [False] * n, [False] * n, target
    if not isinstance(unit_locations, dict):
        raise LocationError(
            "unit_locations must be a dict such as {'sources->base': 3} or {'base': [0, 1]}, got "
            f"{type(unit_locations).__name__}."
        )
    src_raw: list = [None] * n
    base_raw: list = [None] * n
    src_given = [False] * n
    base_given = [False] * n
    if mode == "parallel":
        extra = [k for k in unit_locations if k not in ("sources->base", "base")]
        if extra:
            raise LocationError(
                f"Unknown unit_locations key {extra[0]!r} in parallel mode; use 'sources->base' or 'base'"
                + (" (serial keys like 'source_0->source_1' need mode='serial')." if "->" in extra[0] else ".")
            )
        if "sources->base" in unit_locations and "base" in unit_locations:
            raise LocationError("Give either 'sources->base' or 'base' in unit_locations, not both.")
        if "base" in unit_locations:
            src, base = expand_shorthand(unit_locations["base"], n, batch, under_base=True)
        else:
            depth = 3 if any("." in u for u in units) else 2
            src, base = expand_shorthand(unit_locations["sources->base"], n, batch, under_base=False, entry_depth=depth)
        src_list = per_intervention(src, keys, "The source side of unit_locations", units, links)
        base_list = per_intervention(base, keys, "The base side of unit_locations", units, links)
        for i in range(n):
            src_raw[i], base_raw[i] = src_list[i], base_list[i]
            src_given[i] = src is not None
            base_given[i] = base is not None
    else:
        if "sources->base" in unit_locations or "base" in unit_locations:
            raise LocationError(
                "Serial mode addresses each hop: use keys 'source_0->source_1', ..., "
                f"'source_{n_groups - 1}->base' (not 'sources->base' / 'base')."
            )
        for loc_key, value in unit_locations.items():
            g, dst = _parse_serial_key(loc_key, n_groups)
            members = [i for i in range(n) if groups[i] == g]
            depth = 3 if any("." in units[i] for i in members) else 2
            src, base = expand_shorthand(value, len(members), batch, under_base=False, entry_depth=depth)
            m_units = [units[i] for i in members]
            m_links = [links[i] for i in members] if links is not None else None
            src_list = per_intervention(src, [keys[i] for i in members], f"The source side of {loc_key!r}", m_units, m_links)
            base_list = per_intervention(base, [keys[i] for i in members], f"The base side of {loc_key!r}", m_units, m_links)
            for j, i in enumerate(members):
                src_raw[i], base_raw[i] = src_list[j], base_list[j]
                src_given[i] = src is not None
                base_given[i] = base is not None
                target[i] = dst
    src_locs = [build_loc(src_raw[i], units[i], batch, keys[i], "source") for i in range(n)]
    base_locs = [build_loc(base_raw[i], units[i], batch, keys[i], "base") for i in range(n)]
    return src_locs, base_locs, src_given, base_given, target


def _parse_serial_key(loc_key: str, n_groups: int) -> tuple[int, int]:
    try:
        left, right = loc_key.split("->")
        if not left.startswith("source_"):
            raise ValueError
        g = int(left[len("source_"):])
        dst = n_groups if right == "base" else int(right[len("source_"):]) if right.startswith("source_") else None
        if dst is None:
            raise ValueError
    except ValueError:
        raise LocationError(
            f"Cannot read serial unit_locations key {loc_key!r}; expected 'source_i->source_j' or 'source_i->base'."
        ) from None
    if not 0 <= g < n_groups:
        raise LocationError(f"{loc_key!r}: there are {n_groups} source groups (source_0..source_{n_groups - 1}).")
    if dst != g + 1 and not (dst == n_groups and right == "base"):
        raise LocationError(f"{loc_key!r}: serial hops go from source_i to source_{g + 1} (or the last one to base).")
    if right == "base" and g != n_groups - 1:
        raise LocationError(
            f"{loc_key!r}: only the last group (source_{n_groups - 1}) writes into the base in serial mode."
        )
    return g, dst


class Subspaces(list):
    """A per-intervention subspace list (``[batch][k]``) that caches its tensor forms."""

    __slots__ = ("_mask_cache",)

    def __init__(self, rows: Any) -> None:
        super().__init__(rows)
        self._mask_cache: dict = {}


def normalise_subspaces(subspaces: Any, keys: Sequence[str], batch: int) -> list[Any]:
    """pyvene's broadcasting: int -> [[[k]]*B]*N; flat int list L -> [[L]*B]*N; else per key."""
    n = len(keys)
    if subspaces is None:
        return [None] * n
    if _is_int(subspaces):
        return [Subspaces([[subspaces]] * batch) for _ in range(n)]
    if _is_int_list(subspaces):
        return [Subspaces([list(subspaces)] * batch) for _ in range(n)]
    if not isinstance(subspaces, (list, tuple)):
        return [subspaces] * n
    if len(subspaces) != n:
        if n == 1:
            subspaces = [subspaces]
        else:
            raise LocationError(
                f"subspaces has {len(subspaces)} entries but there are {n} interventions; give one "
                "entry per intervention ([intervention][batch][indices]; None skips one)."
            )
    out = []
    for key, entry in zip(keys, subspaces):
        if isinstance(entry, (list, tuple)) and entry and all(
            isinstance(r, (list, tuple)) and all(_is_int(v) for v in r) for r in entry
        ):
            if len(entry) != batch:
                if len(entry) == 1:
                    entry = list(entry) * batch
                else:
                    raise LocationError(
                        f"{key}: subspaces has {len(entry)} rows but the batch has {batch} examples."
                    )
            out.append(Subspaces(entry))
        elif _is_int_list(entry):
            out.append(Subspaces([list(entry)] * batch))
        else:
            out.append(entry)  # None, or metadata for a custom intervention
    return out


def GET_LOC(LOC: tuple[int, int], unit: str = "h.pos", batch_size: int = 1) -> list:
    """Locations of one ``"h.pos"`` intervention: head ``LOC[0]``, position ``LOC[1]``."""
    if unit != "h.pos":
        raise NotImplementedError(f"GET_LOC builds 'h.pos' locations only, not {unit!r}.")
    return [[[[LOC[0]]] * batch_size, [[LOC[1]]] * batch_size]]


# ---------------------------------------------------------------------------------------------
# validation of a site's unit settings (construction) and of a call's unit counts and sources


#: config attributes that give the longest sequence a model takes (the bound of "pos" units)
_POSITION_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")
_HEAD_ATTRS = ("n_head", "num_attention_heads", "num_heads", "n_heads")
#: a generic bound on the units of one site where the model does not tell its sizes
MAX_UNITS = 1 << 16


def _config_int(cfg: Any, names: Sequence[str]) -> int | None:
    for sub in (cfg, getattr(cfg, "text_config", None)):
        for a in names:
            v = getattr(sub, a, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def unit_axis_size(unit: str, site: Any, model: Any) -> tuple[int | None, str]:
    """``(size, name)`` of the axis that ``max_number_of_units`` counts at ``site``: heads on head
    components, positions otherwise (None when the model does not say)."""
    cfg = getattr(model, "config", None)
    if site.head_layout:
        return (site.n_heads or _config_int(cfg, _HEAD_ATTRS)), "heads"
    if unit == "pos":
        return _config_int(cfg, _POSITION_ATTRS), "positions"
    return None, f"{unit.split('.')[0]!r} units"


def check_site(rep: Any, site: Any, model: Any, where: str) -> None:
    """Refuse unit settings that cannot fit ``site``, before anything is allocated.

    * ``"h"`` / ``"h.pos"`` need a component split into heads (pyvene refuses them elsewhere too);
    * ``max_number_of_units`` is at most the size of the axis it counts (heads or positions);
    * ``low_rank_dimension`` / ``latent_dim`` are positive ints when given.
    """
    unit = rep.unit
    if unit.split(".")[0] == "h" and not site.head_layout:
        raise ConfigError(
            f"{where}: unit {unit!r} indexes attention heads, but {rep.component!r} "
            f"({site.describe()}) is not split into heads. Use a head component such as "
            "'head_attention_value_output' / 'head_query_output', or unit 'pos'."
        )
    for name in ("low_rank_dimension", "latent_dim"):
        v = getattr(rep, name, None)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{where}: '{name}' must be a positive int, got {v!r}.")
    size, axis = unit_axis_size(unit, site, model)
    m = rep.max_number_of_units
    bound = size if size is not None else MAX_UNITS
    if m > bound:
        raise ConfigError(
            f"{where}: max_number_of_units={m} but {rep.component!r} has "
            + (f"only {size} {axis}" if size is not None else f"no known size, and {MAX_UNITS} {axis} is the limit")
            + "; it counts the units one intervention acts on at once (it sizes the intervention's weights)."
        )


def check_unit_counts(keys: Sequence[str], widths: Sequence[int | None], locs: Sequence[Loc | None], side: str) -> None:
    """An intervention whose weights span ``widths[i]`` units (None: sized per unit, any count works)
    must be given exactly that many units per example (a ``ShapeMismatchError``); a one-unit width is applied unit by unit,
    so any count works there too. (A mismatch whose sizes happened to multiply out would otherwise
    run silently, e.g. positions rotated as one vector.)"""
    for key, m, loc in zip(keys, widths, locs):
        if m is None or m == 1 or loc is None:
            continue
        got = loc.idx.shape[1]
        if got != m:
            raise ShapeMismatchError(
                f"{key}: max_number_of_units={m}, so this intervention acts on exactly {m} units at once, "
                f"but the {side} locations select {got} per example. Select {m} units, or set "
                f"max_number_of_units={got} (a new intervention of that width)."
            )


def check_sources_given(keys: Sequence[str], reads_source: Sequence[bool], reps: Any, sources_given: bool) -> None:
    """A call with ``sources=None`` and no ``source_representations`` at all cannot run an
    intervention that reads a source: it would return the un-intervened output. (Source
    representations given for some keys only are a deliberate choice, e.g. in serial mode.)"""
    if sources_given or reps:
        return
    missing = [k for k, r in zip(keys, reads_source) if r]
    if missing:
        raise SourceError(
            f"{missing[0]} reads a source, but the call has sources=None and no source_representations "
            f"for it{f' (nor for {len(missing) - 1} more)' if len(missing) > 1 else ''}, so it would not run "
            "and the output would be un-intervened. Pass sources=[...] (a dict of inputs per group) or "
            "source_representations=...; to skip it on purpose, pass sources=[None] for its group."
        )


def units_width(intervention: Any, site: Any, unit: str) -> int | None:
    """How many units the weights of ``intervention`` span at ``site`` (None: it is sized per unit,
    or does not say). Interventions declare it with ``units_sized = True``."""
    if unit == "t" or not getattr(intervention, "units_sized", False) or not site.dim:
        return None
    n = getattr(intervention, "embed_dim", None)
    if n is None:
        return None
    n = int(n)
    return n // site.dim if n % site.dim == 0 else None


def check_sorted_keys(sort_fn: Any, model: Any, representations: Any, keys: Sequence[str]) -> list[str]:
    """The key order ``intervenables_sort_fn(model, representations)`` gives, checked to be a
    permutation of ``keys``."""
    if not callable(sort_fn):
        raise ConfigError(
            f"intervenables_sort_fn must be a function (model, representations) -> ordered keys, got "
            f"{type(sort_fn).__name__} {sort_fn!r:.60}."
        )
    order = sort_fn(model, representations)
    try:
        order = list(order)
    except TypeError:
        raise ConfigError(f"intervenables_sort_fn returned {type(order).__name__}, not a list of keys.") from None
    if sorted(map(str, order)) != sorted(keys) or len(order) != len(keys):
        raise ConfigError(
            f"intervenables_sort_fn returned {order!r:.200}, which is not an ordering of the keys {list(keys)}."
        )
    return order
