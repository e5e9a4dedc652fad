"""Atomic file writes: a reader sees the old file or the new one, never a part of one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["WriteError", "write_error", "atomic_write_bytes", "atomic_write_text"]


class WriteError(RuntimeError):
    """A file could not be written (disk full, read-only or unwritable directory); what was
    saved before is intact."""


def write_error(path: Path, err: OSError) -> WriteError:
    """The error for a failed write of ``path``: the cause and the fix."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        how = f"the disk holding {path.parent} is full ({err.strerror}); free space there (or write elsewhere)"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        how = f"{path.parent} is not writable ({err.strerror}); make it writable or choose another directory"
    else:
        how = f"{err.strerror or err}; check the directory {path.parent}"
    return WriteError(f"could not write {path}: {how}. Files saved before are unchanged.")


OnError = Callable[[Path, OSError], Exception]


def atomic_write_bytes(path: Path, data: bytes, on_error: OnError = write_error) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory, flush it to disk, then rename it
    over ``path``. A failed write (a full disk) removes the temporary file and raises
    ``on_error(path, err)``; ``path`` is left as it was."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # else a power cut after the rename can leave an empty file
        os.replace(tmp, path)
    except OSError as err:
        raise on_error(path, err) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str, on_error: OnError = write_error) -> None:
    """``atomic_write_bytes`` for text (UTF-8); creates the parent directory if needed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise on_error(path, err) from err
    atomic_write_bytes(path, text.encode(), on_error)
