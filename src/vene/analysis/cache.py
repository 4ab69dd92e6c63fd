"""Collect many sites in one forward pass (TransformerLens ``run_with_cache``, nnsight
``tracer.cache()``), and the gradients of the same sites with one backward pass.

>>> cache = run_with_cache(model, inputs, components=["block_output", "mlp_output"])
>>> cache["block_output", 3].shape           # (batch, seq, d_model)
>>> cache["block_output.3"]                  # the same tensor
>>> cache.stack("block_output").shape        # (layers, batch, seq, d_model)
>>> cache = run_with_cache(model, inputs, grad_of=lambda logits: logits[:, -1, tok].sum())
>>> cache.grads["block_output", 3]           # d metric / d activation, same shape

Shapes (``P`` = number of cached positions, ``seq`` when ``positions`` is None):

* residual / module outputs and inputs (``block_output``, ``mlp_output``, ``attention_output``,
  ``block_input``, ``mlp_activation``, ``query_output``...): ``(batch, P, features)``;
* head components (``head_*``): ``(batch, heads, P, head_dim)``;
* ``attention_weight``: ``(batch, heads, P, key_positions)`` (``positions`` picks queries).

Keys are ``(component, layer)`` pairs; ``cache[component, -1]`` is the last layer and
``"component.layer"`` strings work too. Sites are resolved with
:func:`vene.components.resolve_site`, so every component name vene knows (and raw module paths
such as ``"model.layers[3].mlp.output"``, cached under layer ``None``) can be cached.

:func:`cache_to_disk` runs a dataset batch by batch and writes one safetensors shard per batch
(only one batch is ever held in memory); :func:`load_cache` opens such a directory (or a file
written by :meth:`ActivationCache.save`) lazily.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..components import Site, detect_architecture, get_module, make_view, resolve_site
from ..errors import ConfigError, HookNotFiredError
from ..hooks import HookSession
from .causal_trace import n_layers_of

logger = logging.getLogger(__name__)

#: What ``run_with_cache`` collects when ``components`` is not given.
DEFAULT_CACHE_COMPONENTS = ("block_input", "attention_output", "mlp_output", "block_output")

Key = tuple  # (component, layer)


def _logits_or_output(out: Any) -> Any:
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def _model_inputs(inputs: Any) -> dict:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, torch.Tensor):
        return {"input_ids": inputs.unsqueeze(0) if inputs.dim() == 1 else inputs}
    raise ConfigError(f"inputs must be a dict of model inputs or an input_ids tensor, not {type(inputs).__name__}.")


def _select_filter(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        rx = re.compile(names_filter)
        return lambda name: rx.search(name) is not None
    if isinstance(names_filter, Iterable):
        allowed = set(names_filter)
        return lambda name: name in allowed
    raise ConfigError(f"names_filter must be a callable, a regex string or a list of names, not {type(names_filter).__name__}.")


def plan_sites(
    model: nn.Module,
    components: Sequence[str] | str | None = None,
    layers: Sequence[int] | None = None,
    names_filter: Any = None,
) -> dict[Key, Site]:
    """Resolve ``components`` x ``layers`` (filtered by ``names_filter`` on ``"component.layer"``)
    to sites, in forward order (layer-major). ``components="all"``: every component in the
    model's table. Raw module paths are cached once, under layer ``None``."""
    arch = detect_architecture(model)
    if components == "all":
        if arch is None:
            raise ConfigError("components='all' needs a model with a component table; list the module paths instead.")
        components = [c for c in arch[2] if c != "attention_weight"]
    elif components is None:
        components = list(DEFAULT_CACHE_COMPONENTS)
    elif isinstance(components, str):
        components = [components]
    keep = _select_filter(names_filter)
    n_layers = n_layers_of(model) if arch is not None else None
    if layers is None:
        layer_list = list(range(n_layers)) if n_layers is not None else [0]
    else:
        if n_layers is None:
            raise ConfigError("layers= needs a model with a layer stack; pass raw module paths instead.")
        layer_list = [int(l) % n_layers for l in layers]
    sites: dict[Key, Site] = {}
    raw = [c for c in components if c.endswith((".input", ".output")) and not (arch and c in arch[2])]
    named = [c for c in components if c not in raw]
    for layer in layer_list:
        for comp in named:
            if keep(f"{comp}.{layer}"):
                sites[(comp, layer)] = resolve_site(model, comp, layer)
    for comp in raw:
        if keep(comp):
            sites[(comp, None)] = resolve_site(model, comp)
    if not sites:
        raise ConfigError(f"Nothing to cache: names_filter {names_filter!r} removed every site of {components}.")
    return sites


def _seq_axis(site: Site) -> int:
    return 2 if site.head_layout or site.io == "attn_probs" else 1


def _view(t: torch.Tensor, site: Site) -> torch.Tensor:
    if site.io == "attn_probs":
        return t
    v = make_view(t, site.view, site.n_heads)
    if v.dim() == 4 and not site.head_layout:  # neox (b, s, H, dh): flatten the features
        v = v.flatten(2)
    return v


def _cache_key(key: Any, keys: Iterable[Key], n_layers: int | None) -> Key:
    """``key`` (a ``(component, layer)`` pair or ``"component.layer"``) normalised against the cache's ``keys``."""
    if isinstance(key, str):
        if key in {k[0] for k in keys if k[1] is None}:
            return (key, None)
        comp, _, num = key.rpartition(".")
        if not comp or not num.lstrip("-").isdigit():
            raise KeyError(f"Cache keys look like ('block_output', 3) or 'block_output.3', not {key!r}.")
        key = (comp, int(num))
    if not (isinstance(key, tuple) and len(key) == 2):
        raise KeyError(f"Cache keys are (component, layer) pairs, not {key!r}.")
    comp, layer = key
    if isinstance(layer, int) and layer < 0 and n_layers:
        layer += n_layers
    return (comp, layer)


class ActivationCache(Mapping):
    """Activations keyed by ``(component, layer)``; ``grads`` holds gradients of the same keys
    (empty unless asked for). ``positions`` lists the cached positions (None: all)."""

    def __init__(self, acts: dict[Key, torch.Tensor], grads: dict[Key, torch.Tensor] | None = None,
                 positions: list[int] | None = None, n_layers: int | None = None, output: Any = None,
                 meta: dict | None = None) -> None:
        self._acts = acts
        self.grads = _Grads(self, grads or {})
        self.positions = positions
        self.n_layers = n_layers
        self.output = output
        self.meta = meta or {}

    def _key(self, key: Any) -> Key:
        return _cache_key(key, self._acts, self.n_layers)

    def __getitem__(self, key: Any) -> torch.Tensor:
        k = self._key(key)
        if k not in self._acts:
            have = sorted({c for c, _ in self._acts})
            raise KeyError(f"{k} was not cached; cached components: {have}, layers "
                           f"{sorted({l for _, l in self._acts if l is not None})}.")
        return self._acts[k]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def components(self) -> list[str]:
        return list(dict.fromkeys(c for c, _ in self._acts))

    def layers(self, component: str) -> list[int]:
        return [l for c, l in self._acts if c == component]

    def stack(self, component: str) -> torch.Tensor:
        """Every cached layer of ``component`` stacked: ``(layers, *shape)``."""
        ls = self.layers(component)
        if not ls:
            raise KeyError(f"{component!r} was not cached; cached: {self.components()}.")
        return torch.stack([self._acts[(component, l)] for l in ls])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "ActivationCache":
        acts = {k: v.to(device=device, dtype=dtype) for k, v in self._acts.items()}
        grads = {k: v.to(device=device, dtype=dtype) for k, v in self.grads.items()}
        return ActivationCache(acts, grads, self.positions, self.n_layers, self.output, dict(self.meta))

    def save(self, path: str | os.PathLike) -> None:
        """Write the activations (and gradients) to one safetensors file."""
        from safetensors.torch import save_file

        tensors = {f"act/{_name(k)}": v.contiguous() for k, v in self._acts.items()}
        tensors.update({f"grad/{_name(k)}": v.contiguous() for k, v in self.grads.items()})
        meta = {"positions": json.dumps(self.positions), "n_layers": json.dumps(self.n_layers), "format": "vene-cache-1"}
        save_file(tensors, str(path), metadata=meta)


class _Grads(Mapping):
    def __init__(self, cache: ActivationCache, grads: dict[Key, torch.Tensor]) -> None:
        self._cache, self._g = cache, grads

    def __getitem__(self, key: Any) -> torch.Tensor:
        k = self._cache._key(key)
        if k not in self._g:
            raise KeyError(f"No gradient for {k}: pass grad_of= to run_with_cache to get gradients." if not self._g
                           else f"No gradient for {k}.")
        return self._g[k]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._g)

    def __len__(self) -> int:
        return len(self._g)


def _name(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]}.{key[1]}"


def _unname(name: str) -> Key:
    comp, _, layer = name.rpartition(".")
    if comp and layer.isdigit():
        return (comp, int(layer))
    return (name, None)


def run_with_cache(
    model: nn.Module,
    inputs: Any,
    components: Sequence[str] | str | None = None,
    layers: Sequence[int] | None = None,
    names_filter: Any = None,
    positions: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    grad_of: Callable[[Any], torch.Tensor] | None = None,
    keep_output: bool = True,
) -> ActivationCache:
    """Run ``model(**inputs)`` once and keep the activations of many sites.

    Args:
        inputs: model inputs (``{"input_ids": ..., "attention_mask": ...}``) or an ids tensor.
        components: component names or raw module paths (default
            :data:`DEFAULT_CACHE_COMPONENTS`; ``"all"``: the model's whole table except
            ``attention_weight``, which must be asked for by name).
        layers: layers to cache (default: all; negative counts from the end).
        names_filter: keep only keys whose ``"component.layer"`` name passes: a callable, a regex
            (``re.search``) or a list of names.
        positions: sequence positions to keep (default: all); gathered inside the hook, so only
            these positions are ever copied.
        dtype, device: cast / move each activation as it is captured (``device="cpu"``
            offloads from an accelerator during the pass).
        grad_of: ``grad_of(logits)`` -> a tensor (summed if not a scalar); the gradient of it
            with respect to every cached site is computed with one backward pass and stored in
            ``cache.grads`` (gathered, cast and moved like the activations). ``logits`` is the
            model's ``(batch, seq, vocab)`` output (``last_hidden_state`` for models without a
            head). Model parameters get no ``.grad``.
        keep_output: store the model output in ``cache.output``.

    Each module must fire exactly once in the pass; a site that never fires raises
    :class:`~vene.errors.HookNotFiredError`, one that fires again raises ``ConfigError``.
    """
    sites = plan_sites(model, components, layers, names_filter)
    inputs = _model_inputs(inputs)
    pos_index = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    raw: dict[Key, torch.Tensor] = {}  # graph tensors (grad mode)
    acts: dict[Key, torch.Tensor] = {}
    fired: dict[Key, int] = {k: 0 for k in sites}

    def finish(t: torch.Tensor, site: Site) -> torch.Tensor:
        v = _view(t, site)
        if pos_index is not None:
            ax = _seq_axis(site)
            if v.shape[ax] <= int(pos_index.max()) or int(pos_index.min()) < -v.shape[ax]:
                raise ConfigError(f"positions {pos_index.tolist()} are out of range for {v.shape[ax]} positions at {site.describe()}.")
            v = v.index_select(ax, pos_index.to(v.device) % v.shape[ax])
        v = v.detach()
        if dtype is not None or device is not None:
            v = v.to(device=device, dtype=dtype)
        if v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            v = v.clone()  # never alias the module's tensor
        return v

    def make_hook(key: Key, site: Site):
        def fn(mod, t, i, args):
            fired[key] += 1
            if fired[key] > 1:
                raise ConfigError(f"{site.describe()} ran {fired[key]} times in one forward pass; run_with_cache caches "
                                  "one firing per site (for generation use IntervenableModel with CollectIntervention).")
            if grad_of is not None:
                raw[key] = t
            acts[key] = finish(t, site)
            return None
        return fn

    want_grad = grad_of is not None
    with HookSession(model) as session:
        for key, site in sites.items():
            session.add(get_module(model, site.module_path), site.io, make_hook(key, site))
        if want_grad:
            get_emb = getattr(model, "get_input_embeddings", None)
            emb = get_emb() if callable(get_emb) else None
            if emb is None:
                raise ConfigError("grad_of needs a model with get_input_embeddings() to start the graph at.")
            session.handles.append(emb.register_forward_hook(
                lambda mod, a, out: out if out.requires_grad else out.detach().requires_grad_(True)))
        with torch.enable_grad() if want_grad else torch.no_grad():
            out = model(**inputs)
            missing = [k for k, n in fired.items() if n == 0]
            if missing:
                raise HookNotFiredError(f"These sites never ran: {[_name(k) for k in missing]}.")
            grads: dict[Key, torch.Tensor] = {}
            if grad_of is not None:  # (want_grad)
                target = grad_of(_logits_or_output(out))
                target = target.sum() if target.dim() else target
                keys = list(raw)
                gs = torch.autograd.grad(target, [raw[k] for k in keys], allow_unused=True)
                for k, g in zip(keys, gs):
                    if g is None:
                        g = torch.zeros_like(raw[k])
                        warnings.warn(f"{_name(k)} does not influence grad_of's value; its gradient is zero.", stacklevel=2)
                    grads[k] = finish(g, sites[k])
                raw.clear()
    if keep_output and want_grad:
        out = _detach(out)
    return ActivationCache(acts, grads, None if pos_index is None else pos_index.tolist(),
                           n_layers_of(model) if detect_architecture(model) else None,
                           out if keep_output else None, {"sites": {_name(k): s.describe() for k, s in sites.items()}})


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, dict):
        for k in list(x.keys()):
            x[k] = _detach(x[k])
        return x
    if isinstance(x, tuple):
        return tuple(_detach(v) for v in x)
    return x


def cache_to_disk(
    model: nn.Module,
    batches: Iterable[Any],
    directory: str | os.PathLike,
    progress: bool = True,
    **kwargs: Any,
) -> "DiskCache":
    """Run :func:`run_with_cache` on each batch and write ``directory/shard_00000.safetensors``...
    as it goes (one batch in memory at a time). Keyword arguments as in :func:`run_with_cache`
    (``keep_output`` is off). Returns the :class:`DiskCache` of the directory."""
    from tqdm.auto import tqdm

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    kwargs["keep_output"] = False
    shards = []
    for i, batch in enumerate(tqdm(batches, disable=not progress, desc="cache_to_disk")):
        cache = run_with_cache(model, batch, **kwargs)
        name = f"shard_{i:05d}.safetensors"
        cache.save(out / name)
        shards.append(name)
        logger.info("wrote %s (%d sites)", out / name, len(cache))
    with open(out / "index.json", "w", encoding="utf-8") as fh:
        json.dump({"format": "vene-cache-1", "shards": shards}, fh, indent=1)
    return DiskCache(out)


class DiskCache(Mapping):
    """A cache on disk (a file from :meth:`ActivationCache.save` or a :func:`cache_to_disk`
    directory), read lazily: ``disk[key]`` loads that site from every shard and concatenates
    along the batch axis."""

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        p = Path(path)
        if p.is_dir():
            index = p / "index.json"
            if not index.exists():
                raise ConfigError(f"{p} is not a vene cache directory (no index.json).")
            self.files = [p / s for s in json.loads(index.read_text())["shards"]]
        else:
            self.files = [p]
        if not self.files:
            raise ConfigError(f"{p} holds no shards.")
        with safe_open(str(self.files[0]), "pt") as f:
            names = list(f.keys())
            meta = f.metadata() or {}
        self._keys = [_unname(n[4:]) for n in names if n.startswith("act/")]
        self._grad_keys = [_unname(n[5:]) for n in names if n.startswith("grad/")]
        self.positions = json.loads(meta.get("positions", "null"))
        self.n_layers = json.loads(meta.get("n_layers", "null"))

    def _read(self, prefix: str, key: Key) -> torch.Tensor:
        from safetensors import safe_open

        parts = []
        for fp in self.files:
            with safe_open(str(fp), "pt") as f:
                parts.append(f.get_tensor(prefix + _name(key)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def __getitem__(self, key: Any) -> torch.Tensor:
        k = _cache_key(key, self._keys, self.n_layers)
        if k not in self._keys:
            raise KeyError(f"{k} is not in the cache at {self.files[0].parent}.")
        return self._read("act/", k)

    def grad(self, key: Any) -> torch.Tensor:
        k = _cache_key(key, self._keys, self.n_layers)
        if k not in self._grad_keys:
            raise KeyError(f"No gradient for {k} on disk.")
        return self._read("grad/", k)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def load(self) -> ActivationCache:
        """Everything into memory as an :class:`ActivationCache`."""
        return ActivationCache({k: self[k] for k in self._keys}, {k: self.grad(k) for k in self._grad_keys},
                               self.positions, self.n_layers)


def load_cache(path: str | os.PathLike) -> DiskCache:
    """Open a cache written by :meth:`ActivationCache.save` or :func:`cache_to_disk`."""
    return DiskCache(path)
