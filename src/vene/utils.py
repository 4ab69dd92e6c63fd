"""Small utilities with pyvene's names."""
from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from .locations import GET_LOC  # noqa: F401  (re-exported)

lsm = nn.LogSoftmax(dim=2)
sm = nn.Softmax(dim=2)


def set_seed(seed: int) -> None:
    """Seed python, numpy (if installed) and torch."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _output_embedding_weight(model: nn.Module) -> torch.Tensor:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        get = getattr(model, "get_input_embeddings", None)
        head = get() if callable(get) else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError("embed_to_distrib needs a model with input or output embeddings.")
    return head.weight


def embed_to_distrib(model: nn.Module, embed: torch.Tensor, log: bool = False, logits: bool = False) -> torch.Tensor:
    """Project hidden states ``(..., d)`` onto the vocabulary (tied / output embeddings).

    Applies the model's final norm when it has one reachable as ``ln_f`` / ``norm`` is *not*
    done (pyvene projected the raw state too). Returns probabilities, log-probabilities or logits.
    """
    w = _output_embedding_weight(model)
    with torch.inference_mode():
        vocab = embed.to(w.dtype) @ w.T
        if logits:
            return vocab
        return vocab.log_softmax(-1) if log else vocab.softmax(-1)


def format_token(tokenizer: Any, tok: int) -> str:
    return tokenizer.decode(tok).replace(" ", "_").replace("\n", "\\n")


def top_vals(tokenizer: Any, res: torch.Tensor, n: int = 10, return_results: bool = False) -> Any:
    """Top-``n`` entries of a 1-D distribution as ``[(token, value)]``.

    pyvene printed them; vene returns the list (``return_results`` is accepted for compatibility).
    """
    top = torch.topk(res, n)
    return [(format_token(tokenizer, int(i)), float(v)) for v, i in zip(top.values, top.indices)]


def get_list_depth(lst: Any) -> int:
    if isinstance(lst, (list, tuple)):
        return 1 + max((get_list_depth(x) for x in lst), default=0)
    return 0


def get_batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))


def sigmoid_boundary(population: torch.Tensor, lower: Any, upper: Any, temperature: Any) -> torch.Tensor:
    """A soft box: ``sigmoid((x - lower) / T) * sigmoid((upper - x) / T)``."""
    return torch.sigmoid((population - lower) / temperature) * torch.sigmoid((upper - population) / temperature)


def harmonic_sigmoid_boundary(population: torch.Tensor, lower: Any, upper: Any, temperature: Any) -> torch.Tensor:
    """A soft box whose inside is scored by the harmonic mean ``H`` of the distances to both edges.

    Below ``lower``: ``sigmoid((x - lower) / T)``; above ``upper``: ``sigmoid((upper - x) / T)``;
    strictly inside: ``sigmoid(H / T)`` with ``H = 2 / (1 / (x - lower) + 1 / (upper - x))``.
    """
    x = population
    below = x <= lower
    above = x >= upper
    inside = ~(below | above)
    d_lo = (x - lower).abs().clamp_min(torch.finfo(torch.float32).tiny)
    d_hi = (upper - x).abs().clamp_min(torch.finfo(torch.float32).tiny)
    harmonic = 2.0 / (1.0 / d_lo + 1.0 / d_hi)
    return (below * torch.sigmoid((x - lower) / temperature) + above * torch.sigmoid((upper - x) / temperature)
            + inside * torch.sigmoid(harmonic / temperature))


def random_permutation_matrix(n: int) -> torch.Tensor:
    """An ``(n, n)`` permutation matrix: the identity with its rows in a random order."""
    return torch.eye(n)[torch.randperm(n)]


def closeness_to_permutation_loss(rotation: torch.Tensor) -> torch.Tensor:
    """How far a square matrix is from a permutation: row and column sums away from 1, plus
    entries away from {0, 1}: ``(mean|rowsum-1| + mean|colsum-1|) / 2 + mean(R * (1 - R))``."""
    rows = (rotation.sum(1) - 1).abs().mean()
    cols = (rotation.sum(0) - 1).abs().mean()
    return 0.5 * (rows + cols) + (rotation * (1 - rotation)).mean()


def create_directory(path: str) -> None:
    """Create ``path`` (and parents) if it does not exist (pyvene printed a message; vene logs)."""
    import logging
    import os

    if not os.path.exists(path):
        os.makedirs(path, exist_ok=True)
        logging.getLogger(__name__).info("Directory %r created.", path)
    else:
        logging.getLogger(__name__).info("Directory %r already exists.", path)


def get_type_from_string(type_str: str) -> type:
    """The intervention class named by ``type_str`` (``"<class 'pyvene.models.interventions.X'>"``,
    ``"pkg.module.X"`` or ``"X"``).

    Unlike pyvene, no module path is ever imported: the last name is looked up in vene's intervention
    registry (``@vene.register_intervention`` adds your own classes), so a string read from a file
    cannot run code.
    """
    from .interventions import get_intervention_class

    name = str(type_str).strip()
    if name.startswith("<class "):
        name = name[len("<class "):].rstrip(">").strip().strip("'\"")
    return get_intervention_class(name.rsplit(".", 1)[-1])


def feature_indices(subspaces: Any, batch: int, partition: Any = None) -> list[list[int]]:
    """Per-example feature ids in the order given (partition ids expanded in order, the same
    partition lists as a ``subspace_partition`` holds: one list of feature indices per id).
    A flat list of ints, or a single row, is shared by every example."""
    from .errors import ShapeMismatchError

    rows = list(subspaces) if isinstance(subspaces, (list, tuple)) else [[subspaces]]
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    if len(rows) == 1 and batch > 1:
        rows = rows * batch
    if len(rows) != batch:
        raise ShapeMismatchError(
            f"subspaces has {len(rows)} rows but the batch has {batch} examples (rows are examples)."
        )
    out = []
    for row in rows:
        idx: list[int] = []
        for s in row:
            if not isinstance(s, int) or isinstance(s, bool):
                raise ShapeMismatchError(f"subspace entries must be ints, got {s!r}.")
            if partition is not None:
                if not 0 <= s < len(partition):
                    raise ShapeMismatchError(
                        f"subspace {s} is not a partition id: there are {len(partition)} partitions (0..{len(partition) - 1})."
                    )
                idx.extend(partition[s])
            else:
                idx.append(s)
        out.append(idx)
    return out


def _do_intervention_by_swap(
    base: torch.Tensor,
    source: torch.Tensor | None,
    mode: str = "interchange",
    interchange_dim: Any = None,
    subspaces: Any = None,
    subspace_partition: Any = None,
    use_fast: bool = False,
) -> torch.Tensor:
    """pyvene's swap primitive on the last (feature) dimension of ``base`` ``(batch, ..., d)``.

    ``mode``: ``"interchange"`` (take the source's features), ``"add"``, ``"subtract"`` or
    ``"collect"`` (return the selected features of ``base``, in the order asked; ``source`` must be
    None). The features are ``subspaces`` (rows are examples; partition ids when
    ``subspace_partition``, a list of index lists, is given) or else the first ``interchange_dim``.
    ``source`` is broadcast right-aligned to ``base``. Unlike pyvene, ``base`` is never modified in
    place: the result is a new tensor. ``use_fast`` is accepted and ignored (every example's
    subspace is always honoured).
    """
    from .errors import ConfigError
    from .interventions.base import broadcast_source, feature_mask, mask_like

    if mode not in ("interchange", "add", "subtract", "collect"):
        raise ConfigError(f"mode must be 'interchange', 'add', 'subtract' or 'collect', got {mode!r}.")
    d = base.shape[-1]
    if mode == "collect":
        if source is not None:
            raise ConfigError("mode='collect' reads the base only; pass source=None.")
        if subspaces is None:
            k = d if interchange_dim is None else int(interchange_dim)
            return base[..., :k]
        rows = feature_indices(subspaces, base.shape[0], subspace_partition)
        for r in rows:
            if r and (max(r) >= d or min(r) < -d):
                from .errors import ShapeMismatchError

                bad = max(r) if max(r) >= d else min(r)
                raise ShapeMismatchError(f"subspace index {bad} is out of range for {d} features.")
        rows = [[i % d for i in r] for r in rows]
        if any(len(r) != len(rows[0]) for r in rows):
            return [base[i][..., r] for i, r in enumerate(rows)]  # type: ignore[return-value]
        idx = torch.tensor(rows, dtype=torch.long, device=base.device)
        idx = idx.view(idx.shape[0], *([1] * (base.dim() - 2)), idx.shape[1]).expand(*base.shape[:-1], idx.shape[1])
        return base.gather(-1, idx)
    if source is None:
        raise ConfigError(f"mode={mode!r} needs a source tensor.")
    src = broadcast_source(source, base)
    if subspaces is None:
        k = d if interchange_dim is None else int(interchange_dim)
        mask = torch.zeros(d, dtype=torch.bool, device=base.device)
        mask[:k] = True
        mask = mask.expand(base.shape)
    else:
        m = feature_mask(subspaces, d, base.shape[0], subspace_partition, base.device)
        assert m is not None  # feature_mask returns None only for subspaces=None
        mask = mask_like(m, base).expand(base.shape)
    if mode == "interchange":
        return torch.where(mask, src.to(base.dtype), base)
    delta = torch.where(mask, src.to(base.dtype), torch.zeros((), dtype=base.dtype, device=base.device))
    return base + delta if mode == "add" else base - delta
