"""pyvene's ``create_*`` helpers for Hugging Face models, offline-friendly.

Each returns ``(config, tokenizer, model)``. With ``config=...`` the model is built randomly from
that config and no tokenizer is loaded (``tokenizer`` is None) — nothing touches the network.
With a name or local path, weights and tokenizer load with ``local_files_only=True``.
"""
from __future__ import annotations

from typing import Any


def _load(auto_cls: str, name: str, config: Any, cache_dir: str | None = None, dtype: Any = None) -> tuple:
    import transformers

    cls = getattr(transformers, auto_cls)
    if config is not None:
        model = cls.from_config(config)
        model.eval()
        return config, None, model
    kw: dict[str, Any] = {"local_files_only": True, "cache_dir": cache_dir}
    if dtype is not None:
        kw["dtype"] = dtype
    model = cls.from_pretrained(name, **kw)
    model.eval()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True, cache_dir=cache_dir)
    except OSError:
        tok = None
    return model.config, tok, model


def create_gpt2(name: str = "gpt2", cache_dir: str | None = None, config: Any = None) -> tuple:
    """A ``GPT2Model`` (no LM head), as pyvene's tutorial uses."""
    return _load("AutoModel", name, config, cache_dir)


def create_gpt2_lm(name: str = "gpt2", config: Any = None, cache_dir: str | None = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir)


def create_llama(name: str = "sharpbai/alpaca-7b-merged", cache_dir: str | None = None, dtype: Any = None,
                 config: Any = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir, dtype)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: str | None = None, config: Any = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir)


def create_gpt_neox(name: str = "EleutherAI/pythia-70m", cache_dir: str | None = None, config: Any = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir)
