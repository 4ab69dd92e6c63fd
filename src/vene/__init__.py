"""vene: interventions on the internal states of PyTorch models (pyvene-compatible).

``import vene as pv`` runs pyvene-style code.

The API (and torch) loads on the first use of any of its names, so that the ``vene`` command can
parse its arguments and answer ``--help`` / ``--version`` without importing torch. The names
live in :mod:`vene._api`.
"""
from __future__ import annotations

__version__ = "0.1.0"

_loaded = False


def _load_api() -> None:
    global _loaded
    if not _loaded:
        import importlib

        api = importlib.import_module("._api", __name__)
        g = globals()
        public = set(getattr(api, "__all__", ()))
        for key, value in vars(api).items():
            if not key.startswith("_") or key == "__all__" or key in public:
                g.setdefault(key, value)
        _loaded = True


def __getattr__(name: str):  # PEP 562
    if name.startswith("__") and name != "__all__":
        raise AttributeError(name)
    import importlib
    import importlib.util

    if not _loaded and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (``from . import engine`` inside vene): import just it, not the whole API
        return importlib.import_module(f"{__name__}.{name}")
    _load_api()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module 'vene' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    _load_api()
    return sorted(globals())
