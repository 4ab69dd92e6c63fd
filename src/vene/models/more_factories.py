"""The rest of pyvene's ``create_*`` helpers (same conventions as :mod:`vene.models.factories`).

OLMo, gpt-oss and LLaVA load like the others: ``config=...`` builds a random model offline (no
tokenizer), a name or local path loads local files only. BLIP and Backpack-GPT2 are not provided:
pyvene wraps BLIP in its own model class and component table, and Backpack-GPT2 runs model code
downloaded from the Hub; both functions raise :class:`vene.ConfigError` saying what to do instead.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .factories import _load


def create_olmo(name: str = "allenai/OLMo-7B-0424-hf", cache_dir: str | None = None, dtype: Any = None,
                config: Any = None) -> tuple:
    """``(config, tokenizer, model)`` for OLMo (``config=`` works, unlike pyvene's)."""
    return _load("AutoModelForCausalLM", name, config, cache_dir, dtype)


def create_gpt_oss(name: str = "openai/gpt-oss-20b", access_token: str | None = None, cache_dir: str | None = None,
                   dtype: Any = None, config: Any = None) -> tuple:
    """``(config, tokenizer, model)`` for gpt-oss; ``access_token`` is accepted and unused
    (vene loads local files only)."""
    return _load("AutoModelForCausalLM", name, config, cache_dir, dtype)


def create_llava(name: str = "llava-hf/llava-1.5-7b-hf", cache_dir: str | None = None, dtype: Any = None,
                 config: Any = None) -> tuple:
    """``(config, tokenizer, model)`` for LLaVA (the image processor is not loaded)."""
    return _load("AutoModelForImageTextToText", name, config, cache_dir, dtype)


def _not_provided(what: str, instead: str) -> ConfigError:
    return ConfigError(f"vene does not provide {what}: {instead}")


def create_blip(name: str = "Salesforce/blip-vqa-base", cache_dir: str | None = None, **kwargs: Any) -> tuple:
    """Not provided (pyvene's ``BlipWrapper`` and its BLIP component table have no vene equivalent)."""
    raise _not_provided(
        "create_blip", "pyvene wrapped BLIP in its own BlipWrapper with a BLIP-only component table. Load "
        "transformers' BlipForQuestionAnswering yourself and address its modules by path, e.g. "
        "'text_encoder.encoder.layer[3].output'."
    )


def create_blip_itm(name: str = "Salesforce/blip-itm-base-coco", cache_dir: str | None = None, **kwargs: Any) -> tuple:
    """Not provided (see :func:`create_blip`)."""
    raise _not_provided(
        "create_blip_itm", "pyvene wrapped BLIP-ITM in its own BlipITMWrapper. Load transformers' "
        "BlipForImageTextRetrieval yourself and address its modules by path."
    )


def create_backpack_gpt2(name: str = "stanfordnlp/backpack-gpt2", cache_dir: str | None = None, **kwargs: Any) -> tuple:
    """Not provided (the Backpack model is code downloaded from the Hub, run with trust_remote_code)."""
    raise _not_provided(
        "create_backpack_gpt2", "the Backpack model is Hub code run with trust_remote_code=True, which vene "
        "never does for you. Load it yourself with transformers (trust_remote_code=True, if you trust it) "
        "and address its modules by path, e.g. 'backpack.sense_network.output' with unit 'sense.pos'."
    )
