"""Exception hierarchy.

Every error vene raises is a :class:`VeneError`; each subclass also derives from the builtin
exception a user would naturally catch (``ValueError``, ``KeyError``...), so ``except ValueError``
keeps working; location and subspace errors are also ``IndexError``s, which pyvene code catches.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class VeneError(Exception):
    """Base class of every error raised by vene."""


class ConfigError(VeneError, ValueError):
    """An intervention configuration is malformed."""


class UnknownKeywordError(ConfigError, TypeError):
    """An intervention constructor got a keyword argument it does not know (a misspelling, say).
    Also a ``TypeError``, which Python raises for unexpected keyword arguments."""


class UnknownComponentError(VeneError, KeyError):
    """A component name or module path does not exist on the wrapped model."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class LocationError(VeneError, ValueError, IndexError):
    """``unit_locations`` / ``subspaces`` are malformed or out of range.

    Also an ``IndexError``: pyvene raised one for such inputs, and pyvene code catches it."""


class SourceError(VeneError, ValueError):
    """``sources`` / ``source_representations`` do not match the configuration."""


class ShapeMismatchError(VeneError, ValueError, IndexError):
    """Tensors handed to an intervention have incompatible shapes, or a subspace index is out of
    range. Also an ``IndexError``, which pyvene raised for out-of-range subspaces."""


class HookNotFiredError(VeneError, RuntimeError):
    """A site was configured but its module never ran during the forward pass."""


class UnknownInterventionTypeError(VeneError, KeyError):
    """An intervention type name is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SerializationError(VeneError, ValueError):
    """An intervention artifact cannot be saved, or a saved one is malformed or incompatible."""


class UnsafeArtifactError(SerializationError):
    """A saved file would run code when read (e.g. a pickle holding more than tensors); refused."""


class CorruptArtifactError(SerializationError):
    """A saved file fails an integrity check: its checksum differs from the one recorded at save
    time, it holds NaN/Inf, or a tensor has the wrong shape for the intervention it belongs to."""


class ArtifactNotFoundError(VeneError, FileNotFoundError):
    """A local artifact directory does not exist, or a Hub repo could not be fetched."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean 'x'?"`` suffix, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
