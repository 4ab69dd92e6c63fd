"""Save and load interventions: a versioned directory of JSON + safetensors, never pickle.

A saved directory holds three files::

    intervention_config.json   format version, library version, base-model identity, mode, key
                               order, and per intervention: key, registered type name, site
                               (every RepresentationConfig field), resolved module, the
                               constructor call (all arguments), tensor names, linked key; the
                               sha256 of the tensor file ("files", format 2)
    interventions.safetensors  every tensor: "<key>.<state name>" (weights, buffers, constant
                               sources), "<key>.__init__.<arg>" (tensor constructor arguments not
                               already stored as state), "base_model.<name>" (include_model=True)
    README.md                  a model card (YAML front matter: library_name, base_model, tags)

Types resolve through the intervention registry (``vene.register_intervention``); a name read from
a file is never imported. Linked interventions are stored once (``"shares_with"``) and reload
linked. A save is complete in a sibling temporary folder before it is swapped in (atomically
where the system can exchange two directories), so an interrupted save never leaves a mix.

Loading checks before it builds or changes anything: unknown or mistyped config fields, the
checksum, NaN/Inf, tensor shapes, sizes against the site (before allocating), symlinks out of a
local folder (:mod:`vene.hub`). See docs/errors.md.

Directories written by pyvene (``config.json`` + ``intkey_<key>.bin``) load too: see
:mod:`vene.pyvene_format`.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .config import IntervenableConfig, RepresentationConfig, to_representation
from .errors import ArtifactNotFoundError, ConfigError, CorruptArtifactError, SerializationError
from .interventions import LambdaIntervention, get_intervention_class, registered_interventions
from .artifact_checks import check_schema, check_source_width, precheck_size
from .artifact_fs import sha256_file, write_directory
from .state_io import (TensorStore, check_finite, decode_value, device_of, encode_value, model_param_loader,
                       restore_state)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the config records the sha256 of the tensor file ("files")
MIN_FORMAT_VERSION = 1
CONFIG_NAME = "intervention_config.json"
WEIGHTS_NAME = "interventions.safetensors"
CARD_NAME = "README.md"
PYVENE_CONFIG_NAME = "config.json"  # read only (pyvene artifacts)
PYVENE_MODEL_NAME = "pytorch_model.bin"
ARTIFACT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
MODEL_PREFIX = "base_model."
_SITE_FIELDS = [f for f in RepresentationConfig._fields if f not in ("intervention_type", "intervention")]


# ---------------------------------------------------------------------------------------------
# interventions -> description


def type_name(intervention: nn.Module, key: str = "") -> str:
    """The registered name of ``intervention``'s class, or a clear error."""
    where = f" at {key}" if key else ""
    if isinstance(intervention, LambdaIntervention):
        fn = getattr(intervention.fn, "__name__", repr(intervention.fn))
        raise SerializationError(
            f"The intervention{where} is the plain function {fn!r}; functions cannot be saved. "
            "Write it as an Intervention subclass, decorate it with @vene.register_intervention, "
            "and use that instead."
        )
    cls = type(intervention)
    names = [n for n, c in registered_interventions().items() if c is cls]
    if not names:
        raise SerializationError(
            f"The intervention{where} is a {cls.__qualname__}, which is not registered, so it "
            "could not be rebuilt when loading. Decorate the class with "
            "@vene.register_intervention (it must subclass vene.Intervention)."
        )
    return cls.__name__ if cls.__name__ in names else names[0]


def constructor_call(intervention: nn.Module) -> tuple[list, dict[str, Any]]:
    """``(args, kwargs)`` that rebuild ``intervention``: its recorded outermost constructor call,
    bound to names, updated with ``init_kwargs`` (where classes record derived arguments)."""
    args, kwargs = intervention.__dict__.get("_init_call") or ((), {})
    out_args: list = list(args)
    out_kwargs: dict[str, Any] = dict(kwargs)
    try:
        bound = inspect.signature(type(intervention).__init__).bind(intervention, *args, **kwargs)
    except (TypeError, ValueError):
        bound = None
    if bound is not None:
        out_args, out_kwargs = [], {}
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                out_args.append(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                out_args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out_kwargs.update(value)
            else:
                out_kwargs[name] = value
    out_kwargs.update(getattr(intervention, "init_kwargs", None) or {})
    return out_args, out_kwargs


def _encode_init(iv: nn.Module, key: str, store: TensorStore) -> dict[str, Any]:
    """The JSON form of ``iv``'s constructor call. An argument with no file form (e.g. a fitted
    sklearn PCA) is left out only if the class rebuilds to the same tensor layout without it."""
    args, kwargs = constructor_call(iv)
    out = {"args": encode_value(args, "args", store, key), "kwargs": {}}
    failed: dict[str, SerializationError] = {}
    for name, value in kwargs.items():
        try:
            out["kwargs"][name] = encode_value(value, name, store, key)
        except SerializationError as e:
            failed[name] = e
    if failed:
        kept = {k: v for k, v in kwargs.items() if k not in failed}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                restore_state(type(iv)(*args, **kept), _state_of(iv), key, "cpu", apply=False)
        except Exception:
            raise next(iter(failed.values())) from None
        logger.info("%s: arguments %s are not saved; the saved tensors restore them", key, sorted(failed))
    return out


def _model_identity(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", None) or getattr(model, "name_or_path", None)
    rev = getattr(cfg, "_commit_hash", None)
    mtype = getattr(cfg, "model_type", None)
    return {
        "name_or_path": str(name) if name else None,
        "revision": str(rev) if rev else None,
        "model_type": str(mtype) if mtype else None,
        "class_name": type(model).__name__,
    }


def _state_of(intervention: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in intervention.state_dict().items() if isinstance(v, torch.Tensor)}


def describe(im: Any, include_model: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON description and the tensors of an ``IntervenableModel``; raises before any write."""
    from . import __version__

    store = TensorStore()
    owners: dict[int, str] = {}
    entries = []
    for key in sorted(im._specs, key=lambda k: im._specs[k].index):
        spec = im._specs[key]
        iv = im.interventions[key]
        rep = im.representations[key]
        entry: dict[str, Any] = {"key": key, "type": type_name(iv, key), "group": spec.group,
                                 "resolved": {"module_path": spec.site.module_path, "io": spec.site.io,
                                              "dim": spec.site.dim}}
        owner = owners.get(id(iv))
        if owner is None:
            owners[id(iv)] = key
            state = _state_of(iv)
            for name, t in state.items():
                store.add(f"{key}.{name}", t)
            entry["init"] = _encode_init(iv, key, store)
            entry["tensors"] = sorted(state)
            entry["is_source_constant"] = bool(getattr(iv, "is_source_constant", False))
        entry["shares_with"] = owner
        entry["site"] = {f: encode_value(getattr(rep, f), f"site.{f}", store, key) for f in _SITE_FIELDS}
        entries.append(entry)
    model_params = []
    if include_model:
        for name, p in im.model.named_parameters():
            if p.requires_grad:
                store.add(MODEL_PREFIX + name, p)
                model_params.append(name)
    config = {
        "format_version": FORMAT_VERSION,
        "library": "vene",
        "library_version": __version__,
        "base_model": _model_identity(im.model),
        "mode": im.mode,
        "sorted_keys": list(im.sorted_keys),
        "options": {"use_fast": bool(im.use_fast), "batch_sources": im.batch_sources,
                    "as_adaptor": bool(im.as_adaptor)},
        "interventions": entries,
        "base_model_params": model_params,
    }
    return config, store.tensors


# ---------------------------------------------------------------------------------------------
# files


def write_artifact(directory: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """Write ``config`` + ``tensors`` as an artifact folder; the config records the sha256 of the
    tensor file, which loading verifies."""
    from safetensors.torch import save_file

    from .hub import render_model_card

    def fill(tmp: str) -> None:
        weights = os.path.join(tmp, WEIGHTS_NAME)
        save_file(tensors, weights, metadata={"format": "pt", "vene_format_version": str(FORMAT_VERSION)})
        full = dict(config, files={WEIGHTS_NAME: {"sha256": sha256_file(weights), "bytes": os.path.getsize(weights)}})
        text = json.dumps(full, indent=2, sort_keys=True, allow_nan=False) + "\n"
        for name, content in ((CONFIG_NAME, text), (CARD_NAME, render_model_card(full))):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(content)

    return write_directory(directory, fill, ARTIFACT_FILES)


def save(im: Any, save_directory: Any, include_model: bool = False) -> str:
    """Save ``im``'s interventions (and, with ``include_model``, the model's trainable weights)."""
    config, tensors = describe(im, include_model=include_model)
    path = write_artifact(save_directory, config, tensors)
    logger.info("Saved %d interventions to %s", len(config["interventions"]), path)
    return path


def read_config(directory: str) -> tuple[str, dict[str, Any]]:
    """``("vene" | "pyvene", config)`` for an artifact directory."""
    ours = os.path.join(directory, CONFIG_NAME)
    theirs = os.path.join(directory, PYVENE_CONFIG_NAME)
    path = ours if os.path.isfile(ours) else theirs if os.path.isfile(theirs) else None
    if path is None:
        raise ArtifactNotFoundError(
            f"{directory!r} holds no {CONFIG_NAME} (nor a pyvene {PYVENE_CONFIG_NAME}); it is not a "
            "saved intervention directory."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise SerializationError(f"Cannot read {path!r}: {e}") from None
    except RecursionError:
        raise SerializationError(f"Cannot read {path!r}: its JSON is nested too deeply to be a config.") from None
    if not isinstance(config, dict):
        raise SerializationError(f"{path!r} does not hold a JSON object.")
    if path == ours:
        version = config.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or config.get("library") != "vene":
            raise SerializationError(f"{path!r} is not a vene intervention config (no format_version / library).")
        if version > FORMAT_VERSION:
            raise SerializationError(
                f"{path!r} has format version {version}, written by vene {config.get('library_version')}; "
                f"this vene reads format versions up to {FORMAT_VERSION}. Upgrade vene."
            )
        if version < MIN_FORMAT_VERSION:
            raise SerializationError(
                f"{path!r} has format version {version}; vene format versions start at "
                f"{MIN_FORMAT_VERSION}, so this file was not written by vene (or was edited by hand)."
            )
        check_schema(config, path)
        return "vene", config
    if "representations" not in config or "intervention_types" not in config:
        raise SerializationError(
            f"{path!r} is not an intervention config (it looks like a base model's config.json); "
            f"a saved intervention directory holds {CONFIG_NAME}."
        )
    return "pyvene", config


def _check_identity(saved: dict[str, Any], model: nn.Module) -> None:
    now = _model_identity(model)
    for field in ("class_name", "model_type", "name_or_path"):
        a, b = saved.get(field), now.get(field)
        if a and b and a != b:
            warnings.warn(
                f"These interventions were saved on a model with {field}={a!r}; loading them onto one "
                f"with {field}={b!r}.", UserWarning, stacklevel=4,
            )


# ---------------------------------------------------------------------------------------------
# loading


def _read_tensors(directory: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The artifact's tensors, after checking the file against the sha256 recorded in the config
    and refusing NaN/Inf."""
    from safetensors.torch import load_file

    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        needed = any(e.get("tensors") for e in config.get("interventions", [])) or config.get("base_model_params")
        if needed:
            raise SerializationError(f"{directory!r} has {CONFIG_NAME} but lacks {WEIGHTS_NAME}.")
        return {}
    recorded = ((config.get("files") or {}).get(WEIGHTS_NAME) or {}).get("sha256")
    if recorded is None:
        if config.get("format_version", 1) >= 2:
            raise CorruptArtifactError(
                f"{os.path.join(directory, CONFIG_NAME)!r} records no checksum for {WEIGHTS_NAME}; format "
                f"version {config.get('format_version')} always does, so the config was edited. Re-save the artifact."
            )
        warnings.warn(
            f"{directory!r} was saved in format version 1, which records no checksum of {WEIGHTS_NAME}; "
            "its integrity cannot be verified. Re-save it to add one.", UserWarning, stacklevel=4,
        )
    else:
        actual = sha256_file(path)
        if actual != recorded:
            raise CorruptArtifactError(
                f"{path!r} does not match the checksum recorded when it was saved (sha256 {actual[:16]}... "
                f"instead of {recorded[:16]}...): the file is damaged or was replaced. Re-download or re-save it."
            )
    try:
        tensors = load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise SerializationError(f"Cannot read {path!r}: {e}") from None
    check_finite(tensors, path)
    return tensors


def _filter_kwargs(cls: type[Any], kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Drop (with a warning) saved arguments that this version of ``cls`` no longer accepts."""
    try:
        names: set[str] = set(inspect.signature(cls.__init__).parameters)
        var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    except (TypeError, ValueError):
        return kwargs
    if var_keyword:
        from .interventions.base import accepted_kwargs

        allowed = accepted_kwargs(cls)  # None: the class does not check its keywords
        if allowed is None:
            return kwargs
        names |= set(allowed)
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        warnings.warn(f"{where}: {cls.__name__} no longer accepts {unknown}; dropped. Upgrade vene "
                      "if the artifact is newer.", UserWarning, stacklevel=5)
    return {k: v for k, v in kwargs.items() if k not in unknown}


def _entry_state(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = entry["key"]
    missing = [n for n in entry.get("tensors", []) if f"{key}.{n}" not in tensors]
    if missing:
        raise SerializationError(f"{key}: tensors {missing} are missing from {WEIGHTS_NAME}.")
    return {n: tensors[f"{key}.{n}"] for n in entry.get("tensors", [])}


def _entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    entries = config.get("interventions")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and "key" in e for e in entries):
        raise SerializationError(f"{CONFIG_NAME} has no valid 'interventions' list.")
    return entries


def _build_vene(config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module, kwargs: dict) -> Any:
    from .model import IntervenableModel

    entries = _entries(config)
    classes = {e["key"]: get_intervention_class(str(e.get("type"))) for e in entries if e.get("shares_with") is None}
    instances: dict[str, nn.Module] = {}
    pending: list[tuple[nn.Module, dict[str, torch.Tensor], str, Any]] = []
    reps: list[RepresentationConfig] = []
    for e in entries:
        key, owner = e["key"], e.get("shares_with")
        if owner is not None:
            if owner not in instances:
                raise SerializationError(f"{key} shares the intervention of {owner!r}, which comes later or is unknown.")
            iv = instances[owner]
        else:
            cls = classes[key]
            init = e.get("init") or {}
            args = decode_value(init.get("args", []), tensors, key)
            kw = _filter_kwargs(cls, decode_value(init.get("kwargs", {}), tensors, key), key)
            precheck_size(e, model, kw, tensors)
            try:
                iv = cls(*args, **kw)
            except Exception as err:
                raise SerializationError(
                    f"Could not rebuild {key} as {cls.__name__}(*{args!r:.100}, **{kw!r:.200}): {err}"
                ) from err
            pending.append((iv, _entry_state(e, tensors), key, e.get("is_source_constant")))
        instances[key] = iv
        site = {f: decode_value(v, tensors, key) for f, v in (e.get("site") or {}).items() if f in _SITE_FIELDS}
        try:
            reps.append(to_representation(dict(site, intervention=iv), len(reps)))
        except ConfigError as err:
            raise SerializationError(f"{key}: invalid saved site: {err}") from None
    options = dict(config.get("options") or {})
    options.update(kwargs)
    try:
        im = IntervenableModel(IntervenableConfig(reps, mode=config.get("mode", "parallel"),
                                                  sorted_keys=config.get("sorted_keys")), model, **options)
    except ConfigError as err:
        raise SerializationError(f"The saved interventions do not fit this model: {err}") from err
    built = sorted(im._specs, key=lambda k: im._specs[k].index)
    if built != [e["key"] for e in entries]:
        raise SerializationError(f"Rebuilt keys {built} differ from the saved keys {[e['key'] for e in entries]}.")
    for e in entries:
        saved, now = (e.get("resolved") or {}).get("dim"), im._specs[e["key"]].site.dim
        if saved is not None and now is not None and saved != now:
            raise SerializationError(
                f"{e['key']} was saved for a site {saved} features wide; on this model "
                f"{im._specs[e['key']].site.describe()} is {now} wide (shape mismatch: another model size?)."
            )
    # tensors go in after construction: some interventions create parameters when bound to a site
    for iv, state, key, _ in pending:
        restore_state(iv, state, key, "cpu", apply=False)
    for iv, state, key, const in pending:
        restore_state(iv, state, key, "cpu", apply=True)
        if const is not None:
            iv.is_source_constant = bool(const)  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    for key in built:
        check_source_width(im.interventions[key], key, im._specs[key].site.dim)
    return im


def load(
    load_directory: Any,
    model: nn.Module,
    include_model: bool = False,
    *,
    revision: str | None = None,
    token: Any = None,
    cache_dir: Any = None,
    local_files_only: bool = False,
    local_dir: Any = None,
    from_hub: bool = False,
    **kwargs: Any,
) -> Any:
    """Rebuild an ``IntervenableModel`` around ``model`` from a saved directory or a Hub repo id.

    Reads vene's format and pyvene's. Interventions end up on the model's device; with
    ``include_model`` the saved base-model weights are copied into ``model``. Everything is checked
    before ``model`` is touched. ``kwargs`` go to ``IntervenableModel``.
    """
    from . import pyvene_format
    from .hub import resolve_artifact

    directory = resolve_artifact(load_directory, revision=revision, token=token, cache_dir=cache_dir,
                                 local_files_only=local_files_only, local_dir=local_dir, force_hub=from_hub,
                                 include_model=include_model)
    fmt, config = read_config(directory)
    model_state: dict[str, torch.Tensor] = {}
    loads: list[Callable[[], None]] = []
    if fmt == "vene":
        tensors = _read_tensors(directory, config)
        _check_identity(config.get("base_model") or {}, model)
        im = _build_vene(config, tensors, model, kwargs)
        if include_model:
            model_state = _saved_model_state(config, tensors)
    else:
        im, loads = pyvene_format.build(directory, config, model, kwargs)
        if include_model:
            model_state = pyvene_format.model_state(directory)
    apply_model = model_param_loader(model, model_state)
    for fn in loads:
        fn()
    device = im.get_device()
    for iv in {id(v): v for v in im.interventions.values()}.values():
        iv.to(device)
    apply_model()
    logger.info("Loaded %d interventions (%s format) from %s", len(im.sorted_keys), fmt, directory)
    return im


def _saved_model_state(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = config.get("base_model_params") or []
    missing = [n for n in names if MODEL_PREFIX + n not in tensors]
    if missing:
        raise SerializationError(f"Base-model parameters {missing} are missing from {WEIGHTS_NAME}.")
    return {n: tensors[MODEL_PREFIX + n] for n in names}


def load_into(im: Any, load_directory: Any, include_model: bool = True, **hub_kwargs: Any) -> None:
    """Load saved weights onto ``im``'s existing interventions (pyvene's ``load_intervention``).

    Keys and types must match; everything is checked before anything changes.
    """
    from . import pyvene_format
    from .hub import resolve_artifact

    directory = resolve_artifact(load_directory, include_model=include_model, **hub_kwargs)
    try:
        fmt, config = read_config(directory)
    except ArtifactNotFoundError:  # pyvene's save_intervention writes intkey_*.bin files only
        if not any(f.startswith("intkey_") and f.endswith(".bin") for f in os.listdir(directory)):
            raise
        fmt, config = "pyvene", {}
    steps: list[Callable[[], Any]] = []
    model_state: dict[str, torch.Tensor] = {}
    if fmt == "vene":
        tensors = _read_tensors(directory, config)
        for e in _entries(config):
            if e.get("shares_with") is not None:
                continue
            key = e["key"]
            if key not in im.interventions:
                raise SerializationError(f"The saved intervention {key!r} is not in this model; its keys are {im.sorted_keys}.")
            iv: nn.Module = im.interventions[key]
            if type(iv) is not registered_interventions().get(str(e.get("type"))):
                raise SerializationError(f"{key}: saved as {e.get('type')}, but this model has a {type(iv).__name__} there.")
            state = _entry_state(e, tensors)
            check_source_width(iv, key, im._specs[key].site.dim, state.get("source_representation"))
            dev = device_of(iv, im.get_device())
            restore_state(iv, state, key, dev, apply=False)
            steps.append(functools.partial(restore_state, iv, state, key, dev, apply=True))
            if e.get("is_source_constant") is not None:
                steps.append(functools.partial(setattr, iv, "is_source_constant", bool(e["is_source_constant"])))
        if include_model:
            model_state = _saved_model_state(config, tensors)
    else:
        steps = list(pyvene_format.state_loads(directory, config, im))
        if include_model:
            model_state = pyvene_format.model_state(directory)
    apply_model = model_param_loader(im.model, model_state)
    for step in steps:
        step()
    apply_model()


# ---------------------------------------------------------------------------------------------
# the methods IntervenableModel gets


class SerializationMixin:
    """Saving, loading and sharing for :class:`~vene.IntervenableModel` (see :mod:`vene.serialization`)."""

    def save(self, save_directory: Any, save_to_hf_hub: bool = False, hf_repo_name: str = "my-awesome-model",
             include_model: bool = False) -> None:
        """Save to ``save_directory`` (pyvene's signature); ``save_to_hf_hub`` also pushes it."""
        path = save(self, save_directory, include_model=include_model)
        if save_to_hf_hub:
            from .hub import push_folder

            push_folder(path, hf_repo_name)

    @staticmethod
    def load(load_directory: Any, model: nn.Module, local_directory: Any = None, from_huggingface_hub: bool = False,
             include_model: bool = False, **kwargs: Any) -> Any:
        """Rebuild from a directory or Hub repo id (pyvene's signature; vene and pyvene formats)."""
        return load(load_directory, model, include_model, local_dir=local_directory,
                    from_hub=from_huggingface_hub, **kwargs)

    def save_intervention(self, save_directory: Any, include_model: bool = True) -> None:
        """Save the intervention weights (and trainable model weights) to ``save_directory``."""
        save(self, save_directory, include_model=include_model)

    def load_intervention(self, load_directory: Any, include_model: bool = True) -> None:
        """Load saved weights onto this model's existing interventions."""
        load_into(self, load_directory, include_model=include_model)

    def save_pretrained(self, save_directory: Any, *, include_model: bool = False, push_to_hub: bool = False,
                        repo_id: str | None = None, **push_kwargs: Any) -> None:
        """Hugging Face style save; ``push_to_hub=True`` also pushes (``repo_id`` defaults to the folder name)."""
        path = save(self, save_directory, include_model=include_model)
        if push_to_hub:
            from .hub import push_folder

            push_folder(path, repo_id or os.path.basename(path.rstrip(os.sep)), **push_kwargs)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path_or_repo_id: Any, *, revision: str | None = None,
                        token: Any = None, cache_dir: Any = None, local_files_only: bool = False,
                        include_model: bool = False, **kwargs: Any) -> Any:
        """Hugging Face style load: a local directory, else a Hub repo id."""
        return load(path_or_repo_id, model, include_model, revision=revision, token=token,
                    cache_dir=cache_dir, local_files_only=local_files_only, **kwargs)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    commit_message: str = "Upload vene interventions", token: Any = None,
                    include_model: bool = False, create_pr: bool = False) -> Any:
        """Push as one Hub commit (``create_repo(exist_ok=True)`` + ``upload_folder``); returns its CommitInfo."""
        from .hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            path = save(self, os.path.join(tmp, "artifact"), include_model=include_model)
            return push_folder(path, repo_id, private=private, revision=revision, commit_message=commit_message,
                               token=token, create_pr=create_pr)
