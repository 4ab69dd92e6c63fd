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
