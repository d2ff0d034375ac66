"""Atomic file writes: the one implementation of "temp file beside the target, fsync, os.replace".

A reader (or a crash, or kill -9) sees either the old file or the complete new one, never a partial
file: the data goes to a temporary file in the same directory (``.<name>.<random>.tmp``, made by
:func:`tempfile.mkstemp` and then given the permissions ``open()`` would give, 0666 minus the umask), is
flushed and fsync'ed,
then renamed over the target with :func:`os.replace` (atomic on POSIX within one file system). On any
exception, including KeyboardInterrupt, the temporary file is removed and the target is untouched.

Hand-written because the standard library has no atomic replace-with-fsync helper
(``tempfile.NamedTemporaryFile`` neither fsyncs nor renames over a target) and no maintained small
package does exactly this; the code is short enough to keep here.

Errors are raised as :class:`OSError` (with ``strerror``): each caller turns them into its own error type
with a message naming the file (AudioError, DataError, ModelError, ConfigError, CheckpointError).
Creating the parent directory is left to the caller too, for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_path", "atomic_write_text", "atomic_write_bytes", "write_all", "fsync_dir"]

_WRITE_CHUNK = 64 << 20  # bytes per os.write call


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any thread of ours exists.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files we create get the mode open() would give them (mkstemp alone makes them 0600).
_FILE_MODE = 0o666 & ~_current_umask()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte of ``data`` is written: a short write is continued, an error
    (ENOSPC, EIO, ...) is raised as OSError. Does not fsync or close ``fd``."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.write(fd, view[:_WRITE_CHUNK])
        view = view[written:]


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename or new entry in it survives a power loss. Raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (fd, name) of a new temp file beside ``path``; the body writes, fsyncs and closes ``fd``.
    On normal exit the temp file replaces ``path``; on any exception it is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that made the write fail
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *, mode: str = "wb",
                 encoding: str | None = None, newline: str | None = None) -> None:
    """Replace ``path`` atomically with what ``write(fh)`` writes to an open file object.

    ``mode`` is ``"wb"`` (binary file object) or ``"w"`` (text; ``encoding`` defaults to UTF-8,
    ``newline`` as for :func:`open`). Exceptions from ``write`` propagate unchanged after the clean-up.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', not {mode!r}")
    if mode == "w":
        encoding = encoding or "utf-8"
    with _replacing(Path(path)) as (fd, _tmp):
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_path(path: str | Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` atomically with the file ``write(tmp_path)`` creates at a temporary path.

    For writers that only take a file name (e.g. ``safetensors.torch.save_file``); the file is
    fsync'ed after ``write`` returns.
    """
    with _replacing(Path(path)) as (fd, tmp):
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)  # the writer may have made a new file (safetensors' save_file: 0600)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> None:
    """Replace ``path`` atomically with ``data``."""
    with _replacing(Path(path)) as (fd, _tmp):
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", newline: str | None = None) -> None:
    """Replace ``path`` atomically with ``text`` (``newline`` as for :func:`open`)."""
    atomic_write(path, lambda fh: fh.write(text), mode="w", encoding=encoding, newline=newline)
