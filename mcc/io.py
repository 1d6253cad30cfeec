"""Atomic file output: an interrupted run never leaves a half-written model or report."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mcc.errors import ExportError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist; "
                          "create it first or choose another output path")
    if path.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: it is a directory; give a file name")
    return path


def default_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()`` would give a new file (or, with
    0o777, a directory). mkstemp/mkdtemp create 0600/0700 entries, which would hide an output
    from other users and deployment services once renamed into place."""
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success it replaces ``path`` in one step.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
