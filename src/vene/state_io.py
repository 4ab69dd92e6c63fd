"""Values and tensors in saved artifacts: JSON forms of constructor arguments, putting saved
tensors back into modules, and reading pickled tensor files safely.

Shared by vene's own format (:mod:`vene.serialization`) and pyvene's (:mod:`vene.pyvene_format`).
Restoring checks first and mutates only when asked, so a failing load leaves the model as it was.
"""
from __future__ import annotations

import itertools
import math
import pickle
from typing import Any, Callable

import torch
from torch import nn

from .errors import CorruptArtifactError, SerializationError, UnsafeArtifactError
from .interventions import Intervention

#: saved buffers that may legitimately differ in shape from a freshly built module's
VARIABLE_SHAPE_STATE = ("interchange_dim", "source_representation")

_MARKERS = ("__tensor__", "__tuple__", "__dtype__", "__device__", "__float__")


# ---------------------------------------------------------------------------------------------
# values <-> JSON (constructor arguments and site fields); tensors are stored by name


class TensorStore:
    """Tensors to save, CPU and contiguous; a tensor sharing storage with another is cloned."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._ptrs: set[int] = set()

    def add(self, name: str, t: torch.Tensor) -> str:
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in self._ptrs:
            t = t.clone()
        elif ptr is not None:
            self._ptrs.add(ptr)
        self.tensors[name] = t
        return name

    def find_equal(self, prefix: str, t: torch.Tensor) -> str | None:
        t = t.detach().to("cpu")
        for name, s in self.tensors.items():
            if name.startswith(prefix) and s.dtype == t.dtype and s.shape == t.shape and torch.equal(s, t):
                return name
        return None


def encode_value(value: Any, where: str, store: TensorStore, key: str) -> Any:
    """A JSON-able form of ``value``; tensors go to ``store``. ``where`` names it in errors."""
    try:
        return _encode(value, where, store, key)
    except RecursionError:
        raise SerializationError(f"Cannot save {key}: its argument {where!r} is nested too deeply.") from None


def _encode(value: Any, where: str, store: TensorStore, key: str) -> Any:
    encode_value = _encode  # noqa: N806 - recursion goes through the unguarded helper
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if type(value).__module__ == "numpy":  # numpy scalars become numbers, arrays tensors
        try:
            converted = value.item() if getattr(value, "shape", None) == () else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            converted = None
        if isinstance(converted, (bool, int, float, torch.Tensor)):
            return encode_value(converted, where, store, key)
    if isinstance(value, torch.Tensor):
        name = store.find_equal(f"{key}.", value) or store.add(f"{key}.__init__.{where}", value)
        return {"__tensor__": name}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, list):
        return [encode_value(v, f"{where}.{i}", store, key) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v, f"{where}.{i}", store, key) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) and k not in _MARKERS for k in value):
        return {k: encode_value(v, f"{where}.{k}", store, key) for k, v in value.items()}
    raise SerializationError(
        f"Cannot save {key}: its argument {where!r} is a {type(value).__name__} ({value!r:.80}), "
        "which has no file representation. Constructor arguments must be numbers, strings, "
        "booleans, None, tensors, dtypes, or lists/tuples/dicts of these; pass other objects "
        "after loading instead."
    )


def decode_value(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """The value that :func:`encode_value` wrote (tensors looked up by name)."""
    try:
        return _decode(value, tensors, where)
    except RecursionError:
        raise SerializationError(f"{where}: a saved value is nested too deeply to be a constructor argument.") from None


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    decode_value = _decode  # noqa: N806 - recursion goes through the unguarded helper
    if isinstance(value, list):
        return [decode_value(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        name = value["__tensor__"]
        if name not in tensors:
            raise SerializationError(f"{where}: tensor {name!r} is missing from the tensor file.")
        return tensors[name].clone()
    if "__tuple__" in value:
        return tuple(decode_value(v, tensors, where) for v in value["__tuple__"])
    if "__dtype__" in value:
        dt = getattr(torch, str(value["__dtype__"]), None)
        if not isinstance(dt, torch.dtype):
            raise SerializationError(f"{where}: unknown dtype {value['__dtype__']!r}.")
        return dt
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__float__" in value:
        return float(value["__float__"])
    return {k: decode_value(v, tensors, where) for k, v in value.items()}


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse saved floating-point tensors holding NaN or Inf (a diverged run or a damaged file)."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CorruptArtifactError(
                f"{where}: tensor {name!r} holds {bad} NaN/Inf value(s) of {t.numel()}; refusing to load it. "
                "The training run that saved it probably diverged; re-save from a good checkpoint."
            )


def check_tensor_dict(state: Any, path: str) -> dict[str, torch.Tensor]:
    """A pickled state dict read from ``path``: a dict of tensors, all finite."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SerializationError(f"{path!r} does not hold a dict of tensors.")
    check_finite(state, path)
    return dict(state)


def safe_torch_load(path: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a pickle holding code is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeArtifactError(
            f"Refusing to load {path!r}: it holds Python objects other than tensors, and unpickling "
            f"it could run code ({str(e).splitlines()[0][:200]}). Only load files from sources you trust, "
            "and re-save them in vene's safetensors format."
        ) from None



def restore_state(
    iv: nn.Module, state: dict[str, torch.Tensor], where: str, device: Any, apply: bool, cast: bool = False
) -> None:
    """Check (``apply=False``) or load ``state`` into ``iv``, strict on names. Buffers may change
    shape or be registered where the fresh module holds None (on ``device``); parameters keep their
    shape. Saved dtypes are kept, or, with ``cast``, converted to the module's."""
    own = iv.state_dict(keep_vars=True)
    variable = set(getattr(iv, "variable_shape_state", VARIABLE_SHAPE_STATE))
    missing = sorted(k for k in own if k not in state)
    if missing:
        raise SerializationError(
            f"{where}: the saved tensors lack {missing} that a {type(iv).__name__} has; the artifact "
            "was written by a different version of this class."
        )
    fixes: list[Callable[[], None]] = []
    for name, saved in state.items():
        path, _, leaf = name.rpartition(".")
        try:
            owner = iv.get_submodule(path) if path else iv
        except AttributeError:
            owner = None
        cur = own.get(name)
        if cur is None:
            if owner is None or leaf in owner._parameters or getattr(owner, leaf, 0) is not None:
                raise SerializationError(
                    f"{where}: the saved tensor {name!r} has no place in a {type(iv).__name__}; "
                    "the artifact was written by a different version of this class."
                )
            def register(o: nn.Module = owner, n: str = leaf, t: torch.Tensor = saved) -> None:
                _register(o, n, t.to(device))

            fixes.append(register)
        elif isinstance(cur, nn.Parameter):
            if cur.shape != saved.shape:
                raise SerializationError(
                    f"{where}: saved {name!r} has shape {tuple(saved.shape)}, but this model needs "
                    f"{tuple(cur.shape)}: the artifact was made for a model of another size."
                )
            if cur.dtype != saved.dtype and not cast:
                def recast(p: nn.Parameter = cur, dt: torch.dtype = saved.dtype) -> None:
                    p.data = p.data.to(dt)

                fixes.append(recast)
        elif cur.shape != saved.shape and leaf not in variable:
            raise CorruptArtifactError(
                f"{where}: saved {name!r} has shape {tuple(saved.shape)}, but a {type(iv).__name__} built "
                f"for this site holds {tuple(cur.shape)}: the artifact was made for another size, or is damaged."
            )
        elif cur.shape != saved.shape or (cur.dtype != saved.dtype and not cast):
            dt = cur.dtype if cast else saved.dtype
            def replace(o: nn.Module | None = owner, n: str = leaf, t: torch.Tensor = saved, d: torch.device = cur.device,
                        dt: torch.dtype = dt) -> None:
                assert o is not None  # cur is in iv's state_dict, so its owner exists
                o._buffers[n] = t.to(d, dt).clone()

            fixes.append(replace)
    if not apply:
        return
    for fix in fixes:
        fix()
    try:
        iv.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SerializationError(f"{where}: {e}") from None


def _register(owner: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name == "source_representation" and isinstance(owner, Intervention):
        owner.set_source_representation(tensor.clone())
        return
    if name in owner.__dict__:
        del owner.__dict__[name]
    owner.register_buffer(name, tensor.clone())


def model_param_loader(model: nn.Module, state: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Validate ``state`` against ``model``'s parameters; return the function that copies them."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in state.items():
        p = params.get(name)
        if p is None:
            raise SerializationError(f"The saved base-model parameter {name!r} does not exist in this {type(model).__name__}.")
        if p.shape != t.shape:
            raise SerializationError(
                f"The saved base-model parameter {name!r} has shape {tuple(t.shape)}, this model's has {tuple(p.shape)}."
            )

    def apply() -> None:
        with torch.no_grad():
            for name, t in state.items():
                params[name].copy_(t)
    return apply


def device_of(module: nn.Module, default: Any) -> Any:
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return default


