"""The ``checkpoints/`` directory of a run: atomic commit, listing, retention, clean-up, setting aside.

Commit protocol (a crash or kill -9 at any point leaves either the old set of checkpoints or the old set
plus the complete new one, never a half-written "valid" one)::

    checkpoints/.tmp-step-00001234-<pid>-<token>/   every file written (checksummed as its bytes go out)
                                                   and fsync'ed, manifest.json last, then the directory
                                                   fsync'ed
    rename -> checkpoints/step-00001234/            atomic on POSIX; then the parent is fsync'ed
    retention                                       old checkpoints deleted only after the commit

Deleting renames a directory to a ``.tmp-`` name first, so a crash while deleting never leaves a
half-deleted directory that looks like a checkpoint. Leftover ``.tmp-`` directories are removed (and
reported) by :meth:`CheckpointStore.clean_stale` at the start of a run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyvoice.checkpoint.checksum import DEFAULT_ALGORITHM, new_hasher
from steadyvoice.checkpoint.format import (
    MANIFEST_FILE,
    CorruptCheckpointError,
    FileEntry,
    Manifest,
    Problem,
    build_manifest,
    parse_step_dir_name,
    read_manifest,
    step_dir_name,
)
from steadyvoice.checkpoint.threads import parallel_map
from steadyvoice.errors import EXIT_FAILED, CheckpointError
from steadyvoice.fileio import fsync_dir, write_all

TMP_PREFIX = ".tmp-"
REPLACED_PREFIX = ".old-"  # a committed checkpoint being replaced by a newer save of the same step

# Testing hook for the fault-injection harness: seconds to sleep after each file of a save is written,
# which widens the window in which a SIGKILL lands in the middle of a save. Never set in normal use.
WRITE_DELAY_ENV = "STEADYVOICE_CKPT_WRITE_DELAY"


@dataclass
class Entry:
    """A ``step-*`` directory: its manifest if that is valid, otherwise the problems found."""

    step: int
    path: Path
    manifest: Manifest | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.manifest is not None

    @property
    def is_best(self) -> bool:
        return bool(self.manifest and self.manifest.info.get("is_best"))


def write_file(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a new file and fsync it (os.write loop: a short write is continued, ENOSPC raised).

    Not an atomic replace: the file is new (O_EXCL) inside the temporary checkpoint directory, which is
    what gets renamed into place by the commit.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class ChecksummedFile:
    """A new file (O_EXCL) in the temporary checkpoint directory whose every byte is checksummed as it is
    written: the checksum is of the bytes handed to the disk, and nothing is read back."""

    _CHUNK = 1 << 20  # hash a piece, then write it while it is still in the CPU cache

    def __init__(self, path: Path, algorithm: str = DEFAULT_ALGORITHM):
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._CHUNK):
            piece = view[start : start + self._CHUNK]
            self._hasher.update(piece)
            write_all(self._fd, piece)
        self.size += len(view)

    def commit(self) -> FileEntry:
        """fsync and close; the file's manifest entry."""
        try:
            os.fsync(self._fd)
        finally:
            self.close()
        return FileEntry(self.size, self._hasher.hexdigest(), self.algorithm)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _write_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(WRITE_DELAY_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _remove_tree(path: Path) -> None:
    """Delete a directory without ever leaving it half-deleted under its own name."""
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{_token()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def unique_sibling(parent: Path, stem: str) -> Path:
    candidate = parent / stem
    n = 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{stem}.{n}"
    return candidate


class CheckpointStore:
    """One run's ``checkpoints/`` directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------ listing
    def entries(self) -> list[Entry]:
        """Every ``step-*`` directory, oldest first, with its manifest checked (not its files)."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            step = parse_step_dir_name(child.name)
            if step is None or not child.is_dir():
                continue
            try:
                manifest = read_manifest(child)
            except CorruptCheckpointError as exc:
                out.append(Entry(step, child, None, exc.problems))
                continue
            if manifest.step != step:
                problem = Problem(child / MANIFEST_FILE, f"says step {manifest.step} but the directory is named for step "
                                  f"{step}: the directory was renamed or copied; rename it back to {step_dir_name(manifest.step)}")
                out.append(Entry(step, child, None, [problem]))
                continue
            out.append(Entry(step, child, manifest))
        out.sort(key=lambda e: e.step)
        return out

    def committed(self) -> list[Entry]:
        return [e for e in self.entries() if e.committed]

    def best(self) -> Entry | None:
        """The newest committed checkpoint saved with ``is_best``."""
        best = [e for e in self.committed() if e.is_best]
        return best[-1] if best else None

    # ------------------------------------------------------------------------------------------ commit
    def commit(self, step: int, files: Iterable[tuple[str, Callable[[ChecksummedFile], None]]],
               info: dict[str, Any]) -> Path:
        """Write ``files`` (name, writer of its content) as checkpoint ``step`` atomically; return its path.

        Each writer writes its file's content to the :class:`ChecksummedFile` it is given. On any
        OSError (disk full, permissions) the temporary directory is removed, every earlier checkpoint is
        untouched, and a CheckpointError says what happened.
        """
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{_token()}"
        delay = _write_delay()

        def write_one(item: tuple[str, Callable[[ChecksummedFile], None]]) -> tuple[str, FileEntry]:
            name, write = item
            out = ChecksummedFile(tmp / name)
            try:
                write(out)
                entry = out.commit()
            finally:
                out.close()
            if delay:
                time.sleep(delay)
            return name, entry

        try:
            self._ensure_root()
            os.mkdir(tmp)
            # Two files at a time: checksums (xxhash) and writes release the GIL, so they overlap.
            entries = dict(parallel_map(write_one, list(files)))
            manifest_bytes, _ = build_manifest(step, entries, info)
            write_file(tmp / MANIFEST_FILE, manifest_bytes)  # the commit marker: written last
            fsync_dir(tmp)
            self._install(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            hint = "the disk is full: free space" if exc.errno == 28 else "check permissions and free space"
            err = CheckpointError(
                f"cannot write checkpoint {final}: {exc.strerror or exc} ({hint} in {self.root}); "
                "earlier checkpoints are intact"
            )
            err.exit_code = EXIT_FAILED  # a runtime failure (disk full, permissions), not a usage error
            raise err from exc
        except BaseException:  # e.g. a tensor safetensors has no type for: no half-written directory left
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root.parent)

    def _install(self, tmp: Path, final: Path) -> None:
        """rename(tmp, final); a committed directory of the same step is replaced, never merged."""
        replaced = None
        if final.exists():
            replaced = final.with_name(f"{REPLACED_PREFIX}{final.name}-{_token()}")
            os.rename(final, replaced)  # a crash right here is repaired by clean_stale (renamed back)
        os.rename(tmp, final)
        fsync_dir(self.root)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ clean-up
    def clean_stale(self) -> list[str]:
        """Remove leftovers of interrupted saves/deletes; return one message per item (for the log)."""
        if not self.root.is_dir():
            return []
        messages = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(TMP_PREFIX):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                messages.append(f"removed {child}: left over by an interrupted save")
            elif child.name.startswith(REPLACED_PREFIX):
                original = self.root / child.name[len(REPLACED_PREFIX) :].rsplit("-", 2)[0]
                if not original.exists() and _has_valid_manifest(child):
                    os.rename(child, original)
                    messages.append(f"restored {original}: a save replacing it was interrupted")
                else:
                    shutil.rmtree(child, ignore_errors=True)
                    messages.append(f"removed {child}: left over by an interrupted save")
        if messages:
            fsync_dir(self.root)
        return messages

    # ------------------------------------------------------------------------------------------ retention
    def retain(self, keep_last: int, keep_best: bool, keep_every: int) -> list[Path]:
        """Delete committed checkpoints outside the policy; return what was deleted.

        Kept: the ``keep_last`` newest, the newest ``is_best`` one (if ``keep_best``), every step that is a
        multiple of ``keep_every`` (if > 0). Directories without a valid manifest are never touched here.
        """
        committed = self.committed()
        keep = {e.path for e in committed[-keep_last:]}
        if keep_best:
            best = [e for e in committed if e.is_best]
            if best:
                keep.add(best[-1].path)
        if keep_every > 0:
            keep.update(e.path for e in committed if e.step % keep_every == 0)
        deleted = []
        for e in committed:
            if e.path not in keep:
                _remove_tree(e.path)
                deleted.append(e.path)
        if deleted:
            fsync_dir(self.root)
        return deleted

    # ------------------------------------------------------------------------------------------ set aside
    def set_aside(self, entries: list[Entry], label: str) -> Path | None:
        """Move ``entries`` into ``<run_dir>/checkpoints.<label>-<time>/`` (never deleted); return it."""
        if not entries:
            return None
        dest = unique_sibling(self.root.parent, f"{self.root.name}.{label}-{timestamp()}")
        dest.mkdir(parents=True)
        for e in entries:
            os.rename(e.path, dest / e.path.name)
        fsync_dir(dest)
        fsync_dir(self.root)
        fsync_dir(self.root.parent)
        return dest

    def move_all_aside(self, label: str) -> Path | None:
        """Rename the whole ``checkpoints/`` directory to ``checkpoints.<label>-<time>/`` (--restart)."""
        if not self.root.is_dir() or not any(self.root.iterdir()):
            return None
        dest = unique_sibling(self.root.parent, f"{self.root.name}.{label}-{timestamp()}")
        os.rename(self.root, dest)
        fsync_dir(self.root.parent)
        return dest


def _has_valid_manifest(path: Path) -> bool:
    try:
        read_manifest(path)
        return True
    except CorruptCheckpointError:
        return False
