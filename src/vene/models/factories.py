"""pyvene's ``create_*`` helpers for Hugging Face models.

Each returns ``(config, tokenizer, model)`` with the model in eval mode.

* ``config=...``: the model is built randomly from that config; nothing touches the network. The
  tokenizer is the one of ``name`` when it is in the local cache (pyvene downloads it); otherwise
  ``None`` with a warning saying so.
* a name or local path: weights and tokenizer come from local files first (a directory, or the
  local Hugging Face cache). When they are not there, the Hugging Face Hub is asked -- unless
  downloads are off (``allow_download=False``, ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``).
  Anything that cannot be found raises :class:`~vene.models.embedded.ModelNotAvailableError`
  naming what was tried; a missing tokenizer is an error too, never a silent ``None``.

GPT-2 is built with eager attention, as pyvene does, so ``output_attentions=True`` and the
``attention_weight`` component work.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

from .embedded import ModelNotAvailableError

_TRUE = {"1", "true", "yes", "on"}


def _transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "Hugging Face models need the transformers package: pip install 'vene[hf]'"
        ) from err
    return transformers


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Whether the Hub may be asked: ``allow_download`` when given, else not when
    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set."""
    if allow_download is not None:
        return bool(allow_download)
    return not any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _local_then_hub(load: Callable[..., Any], name: str, what: str, allow_download: bool | None, **kw: Any) -> Any:
    """``load(name, local_files_only=True)``; on a miss, ``load(name)`` from the Hub if allowed."""
    try:
        return load(name, local_files_only=True, **kw)
    except OSError as local_err:
        if not os.path.exists(name) and downloads_allowed(allow_download):
            try:
                return load(name, **kw)
            except OSError as hub_err:
                raise ModelNotAvailableError(
                    f"Cannot load the {what} of {name!r}: it is not in the local Hugging Face cache, and the "
                    f"Hub did not provide it ({_first_line(hub_err)}). Check the name and the network, or "
                    f"download it beforehand (`hf download {name}`) and pass the local directory."
                ) from hub_err
        why = ("the directory has none" if os.path.isdir(name) else
               "it is not a local directory or in the local Hugging Face cache, and downloads are off "
               "(allow_download=False, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)")
        raise ModelNotAvailableError(
            f"Cannot load the {what} of {name!r}: {why}. Download it where the Hub is reachable "
            f"(`hf download {name}`) or pass a local directory. ({_first_line(local_err)})"
        ) from local_err


def _load(
    auto_cls: str,
    name: str,
    config: Any,
    cache_dir: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    allow_download: bool | None = None,
    tokenizer_name: str | None = None,
) -> tuple:
    transformers = _transformers()
    cls = getattr(transformers, auto_cls)
    kw: dict[str, Any] = {}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    tok_name = tokenizer_name or name
    if config is not None:
        model = cls.from_config(config, **kw)
        model.eval()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(tok_name, local_files_only=True, cache_dir=cache_dir)
        except (OSError, ValueError) as err:
            warnings.warn(
                f"The model was built from the config; no tokenizer of {tok_name!r} is in the local cache "
                f"({_first_line(err)}), so the tokenizer is None. Pass token ids, or load one with "
                f"transformers.AutoTokenizer.from_pretrained(...).",
                stacklevel=3,
            )
            tok = None
        return config, tok, model
    if dtype is not None:
        kw["dtype"] = dtype
    model = _local_then_hub(cls.from_pretrained, name, "weights", allow_download, cache_dir=cache_dir, **kw)
    model.eval()
    tok = _local_then_hub(transformers.AutoTokenizer.from_pretrained, tok_name, "tokenizer", allow_download,
                          cache_dir=cache_dir)
    return model.config, tok, model


def create_gpt2(name: str = "gpt2", cache_dir: str | None = None, config: Any = None,
                allow_download: bool | None = None) -> tuple:
    """A ``GPT2Model`` (no LM head) with eager attention, as pyvene's tutorial uses."""
    return _load("AutoModel", name, config, cache_dir, attn_implementation="eager", allow_download=allow_download)


def create_gpt2_lm(name: str = "gpt2", config: Any = None, cache_dir: str | None = None,
                   allow_download: bool | None = None) -> tuple:
    """A ``GPT2LMHeadModel`` with eager attention (``output_attentions=True`` works)."""
    return _load("AutoModelForCausalLM", name, config, cache_dir, attn_implementation="eager",
                 allow_download=allow_download)


def create_llama(name: str = "sharpbai/alpaca-7b-merged", cache_dir: str | None = None, dtype: Any = None,
                 config: Any = None, allow_download: bool | None = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir, dtype, allow_download=allow_download)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: str | None = None, config: Any = None,
                   allow_download: bool | None = None) -> tuple:
    # pyvene takes the tokenizer from EleutherAI/gpt-neo-125M (TinyStories reuses it)
    return _load("AutoModelForCausalLM", name, config, cache_dir, allow_download=allow_download,
                 tokenizer_name="EleutherAI/gpt-neo-125M" if name == "roneneldan/TinyStories-33M" else None)


def create_gpt_neox(name: str = "EleutherAI/pythia-70m", cache_dir: str | None = None, config: Any = None,
                    allow_download: bool | None = None) -> tuple:
    return _load("AutoModelForCausalLM", name, config, cache_dir, allow_download=allow_download)
