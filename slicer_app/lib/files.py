"""Crash-safe file replacement for the datastore (index, images, labels) and the publishing of trained checkpoints.

A write goes to a temporary file in the destination's folder, is flushed to disk (``fsync``), then renamed over
the destination (``os.replace``, atomic on POSIX) and the folder entry is flushed too. A process killed at any
point leaves either the old file or the new one, never a partial one; a destination that is a symbolic link is
replaced as a link (its target is never written).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_copy", "atomic_write_bytes", "remove_interrupted_writes", "TEMP_PREFIX"]

TEMP_PREFIX = ".quantunet-tmp-"  # temporary files of interrupted writes start with it (removed at start-up)


def _atomic_write(dst: str | Path, write: Callable[[str], None]) -> None:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=dst.parent, prefix=f"{TEMP_PREFIX}{dst.name}.")
    os.close(fd)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o644)  # a temporary file is private (0600); the result is an ordinary file
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dst)
        folder = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy the file ``src`` to ``dst`` atomically and durably (a reader never sees a half-written file)."""
    _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def atomic_write_bytes(dst: str | Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` atomically and durably."""
    _atomic_write(dst, lambda tmp: Path(tmp).write_bytes(data))


def remove_interrupted_writes(folder: str | Path) -> int:
    """Remove the temporary files that writes killed before their rename left in ``folder`` (not recursive);
    returns how many."""
    removed = 0
    for entry in os.scandir(folder):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)
            removed += 1
    return removed
