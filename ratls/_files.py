"""Writing output files so that a failure loses nothing.

A certificate, key or evidence file is written next to its final name and renamed over
it only once every byte is on disk.  A full disk, a quota or an I/O error therefore
leaves the previous file (or no file) in place, never a truncated one that a later run
would load; the half-written temporary file is removed.  Outputs that are not regular
files (``/dev/stdout``, a FIFO, ``/dev/full``) cannot be renamed over and are written
directly.  A symbolic link is followed: the file it points to is replaced, the link stays.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` all or nothing; create missing parent directories.

    Args:
        path: the file to write (replaced if it exists).
        data: its new contents.
        mode: permission bits of the new file (0o600 for private keys).

    Raises:
        OSError: the data could not be written; ``path`` is as it was before.
    """
    target = Path(path)
    if target.is_symlink():
        # Replace what the link points to, not the link itself.
        target = target.resolve()
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        _write_all_to(target, data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(target.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_all_to(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open a directory for it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
