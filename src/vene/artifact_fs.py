"""Writing an artifact folder in one step, and hashing its files.

:func:`write_directory` builds the new folder in a sibling temporary directory and, when it is
complete, swaps it for the old one: atomically with Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere
by moving the old folder aside (intact, as ``.<name>.old-*``) and the new one in. A crash at any
point leaves the old folder or the new one, never a mix. Entries of the old folder that the new one
does not write are carried over (hard links where possible).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

from .errors import SerializationError


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the directories ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system cannot."""
    libc = _libc()
    if libc is None:
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


_LIBC: list = []


def _libc() -> Any:
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL(None, use_errno=True)
                lib.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            except (OSError, AttributeError):
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def _carry(src: str, dst: str) -> None:
    """Put the entry ``src`` of the old folder at ``dst`` in the new one (hard links where possible)."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
    else:
        link_or_copy(src, dst)


def _swap_in(tmp: str, directory: str) -> None:
    """Make the complete folder ``tmp`` become ``directory``; afterwards ``tmp`` holds the old one.

    Atomic where the system can exchange two directories; otherwise the old folder is first moved
    to a sibling (intact) and moved back if the second rename fails."""
    if _exchange(tmp, directory):
        return
    parent, base = os.path.split(directory)
    old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
    os.rmdir(old)
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    try:  # the new folder is in place: the old one is only cleaned up from here
        os.rename(old, tmp)
    except OSError:
        shutil.rmtree(old, ignore_errors=True)


def write_directory(directory: Any, fill: Callable[[str], None], owned: tuple[str, ...]) -> str:
    """Write a folder with ``fill(tmp_dir)`` and put it at ``directory`` in one step.

    The new folder is complete in a sibling temporary directory before anything at ``directory``
    changes; an existing folder is then swapped for it (entries other than ``owned`` files are
    carried over), so a crash at any point leaves either the old folder or the new one."""
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise SerializationError(f"{directory!r} is a file; saving needs a directory path.")
    directory = os.path.realpath(directory)  # a symlinked folder is written where it points
    parent, base = os.path.split(directory.rstrip(os.sep)) if directory != os.sep else (os.sep, "")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        fill(tmp)
        if not os.path.exists(directory):
            try:
                os.rename(tmp, directory)
                return directory
            except OSError:  # created meanwhile: swap below
                pass
        for entry in os.listdir(directory):
            if entry not in owned and not os.path.lexists(os.path.join(tmp, entry)):
                _carry(os.path.join(directory, entry), os.path.join(tmp, entry))
        _swap_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
