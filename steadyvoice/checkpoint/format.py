"""The on-disk format of one checkpoint directory, and how it is verified.

A checkpoint is a directory ``run_dir/checkpoints/step-00001234/`` holding (format version 3)::

    <model part>.safetensors      a model part's state_dict, keyed by name (``model.safetensors``; a GAN
                                  adds ``discriminator.safetensors``)
    <optimizer part>.safetensors  an optimizer's per-parameter state keyed by parameter NAME:
                                  "exp_avg/<name>", "step/<name>" (``optimizer.safetensors``, ...)
    state.safetensors             tensor leaves of state.json (the torch/CUDA RNG byte states of every rank, ...)
    state.json                    "parts": every named part (kind, file, param groups, JSON state, the RNG
                                  of every rank), plus step, epoch, resolved config, world size, versions,
                                  metrics, reason
    manifest.json                 written LAST: the size and checksum of every other file (with the name
                                  of its algorithm, see :mod:`steadyvoice.checkpoint.checksum`) and a
                                  SHA-256 digest of itself

Version 2 had the same files with a SHA-256 of each (``{"size", "sha256"}``); version 1 (before named
parts) also had a fixed ``trainer`` dict in state.json (:mod:`steadyvoice.checkpoint.v1`). Both are
still read and verified.

``manifest.json`` is the commit marker: a directory without a valid manifest does not exist as far as
resume is concerned. Nothing here is ever read with pickle: tensors come from safetensors, the rest is JSON.

Verification (:func:`read_manifest`, :func:`verify_files`, :func:`read_verified`) reports each problem as
a :class:`Problem` naming the file and saying what is wrong (missing, truncated, checksum mismatch, bad JSON,
a Git-LFS pointer or a pickle in place of the data, an unknown format version) and what to do about it.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steadyvoice.checkpoint.checksum import ALGORITHMS, DEFAULT_ALGORITHM, LABELS, SHA256, checksum_file, new_hasher
from steadyvoice.checkpoint.threads import parallel_map
from steadyvoice.errors import EXIT_FAILED, CheckpointError, Problem

FORMAT = "steadyvoice-checkpoint"
FORMAT_VERSION = 3  # bump on incompatible layout changes; readers refuse versions they do not know
READABLE_VERSIONS = (1, 2, 3)  # 1: before named parts (steadyvoice.checkpoint.v1 upgrades it); 1, 2: SHA-256 only

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
V1_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_TENSORS_FILE, STATE_FILE)
REQUIRED_FILES = (STATE_TENSORS_FILE, STATE_FILE)  # plus the part files state.json names (checked on load)


def part_file(name: str) -> str:
    """The safetensors file of a model or optimizer part."""
    return f"{name}.safetensors"


def required_files(version: int) -> tuple[str, ...]:
    return V1_FILES if version == 1 else REQUIRED_FILES

STEP_DIR_PREFIX = "step-"
READ_CHUNK = 8 << 20  # bytes read_verified reads (and hands to the checksum thread) at a time

_LFS_POINTER_HEAD = b"version https://git-lfs.github.com/spec/"


def step_dir_name(step: int) -> str:
    return f"{STEP_DIR_PREFIX}{step:08d}"


def parse_step_dir_name(name: str) -> int | None:
    """``step-00001234`` -> 1234; anything else -> None."""
    if not name.startswith(STEP_DIR_PREFIX):
        return None
    digits = name[len(STEP_DIR_PREFIX) :]
    return int(digits) if digits.isdigit() else None


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory failed verification; ``problems`` lists every fault found."""

    exit_code = EXIT_FAILED  # damaged after it was written: a runtime failure, as `ckpt verify` reports it

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class FileEntry:
    size: int
    checksum: str  # hex
    algorithm: str = DEFAULT_ALGORITHM  # one of checksum.ALGORITHMS (versions 1 and 2: always sha256)


@dataclass(frozen=True)
class Manifest:
    """The parsed, self-consistent ``manifest.json`` of one checkpoint."""

    step: int
    files: dict[str, FileEntry]
    info: dict[str, Any]  # epoch, created, reason, is_best, metrics, world_size (for listing without loading)
    digest: str  # SHA-256 of the manifest content; identifies this checkpoint (ranks agree on it under DDP)
    format_version: int = FORMAT_VERSION


# ----------------------------------------------------------------------------------------------- writing
def canonical_json(data: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): what the manifest digest is computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def pretty_json(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")


def build_manifest(step: int, files: dict[str, FileEntry], info: dict[str, Any]) -> tuple[bytes, str]:
    """The bytes of ``manifest.json`` for ``files`` and its digest."""
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {name: {"size": e.size, "algorithm": e.algorithm, "checksum": e.checksum}
                  for name, e in sorted(files.items())},
        "info": info,
    }
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    return pretty_json({**body, "digest": digest}), digest


# ----------------------------------------------------------------------------------------------- reading
def describe_foreign_content(head: bytes) -> str | None:
    """Say what a file holds when it is not what the manifest promised (from its first bytes)."""
    if not head:
        return "is empty (0 bytes): the write was cut short"
    if head.startswith(_LFS_POINTER_HEAD):
        return (
            "is a Git-LFS pointer, not the data: run `git lfs pull` in the repository it came from "
            "(or download the real file)"
        )
    # Protocol 2+ pickles start with b"\x80" + protocol byte; torch.save writes a zip archive ("PK\x03\x04").
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (
            "is a Python pickle, which SteadyVoice never loads (unpickling can run arbitrary code): "
            "restore the original file"
        )
    if head.startswith(b"PK\x03\x04"):
        return (
            "is a zip archive (torch.save / pickle format), which SteadyVoice never loads (unpickling can run "
            "arbitrary code): restore the original file"
        )
    return None


def _file_head(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _bad_file_problem(path: Path, what: str) -> Problem:
    foreign = describe_foreign_content(_file_head(path))
    if foreign is not None:
        return Problem(path, foreign)
    return Problem(path, what)


def read_manifest(ckpt_dir: Path) -> Manifest:
    """Parse and check ``manifest.json`` (JSON, format, version, self-digest, required files).

    Cheap: does not read the other files. Raises :class:`CorruptCheckpointError`.
    """
    path = Path(ckpt_dir) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpointError(
            [
                Problem(
                    path,
                    "missing: the save never completed (interrupted) or the file was deleted; this directory "
                    "is not a checkpoint (delete it, or restore the file)",
                )
            ]
        ) from None
    except OSError as exc:
        raise CorruptCheckpointError([Problem(path, f"cannot be read ({exc.strerror})")]) from None
    data = parse_json_bytes(path, raw, "manifest")
    if data.get("format") != FORMAT:
        raise CorruptCheckpointError([Problem(path, f"is not a SteadyVoice checkpoint manifest (format {data.get('format')!r})")])
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CorruptCheckpointError([_version_problem(path, version)])
    body = {k: v for k, v in data.items() if k != "digest"}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    if data.get("digest") != digest:
        raise CorruptCheckpointError(
            [Problem(path, "does not match its own digest: the manifest was edited or damaged; this checkpoint cannot be trusted")]
        )
    try:
        step = int(data["step"])
        files = {name: _file_entry(e, version) for name, e in data["files"].items()}
        info = dict(data.get("info") or {})
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CorruptCheckpointError([Problem(path, "has a malformed structure (step/files): written by a broken tool?")]) from None
    unknown = {name: e.algorithm for name, e in files.items() if e.algorithm not in ALGORITHMS}
    if unknown:
        raise CorruptCheckpointError([Problem(path, "names a checksum algorithm this SteadyVoice does not know ("
                                              + ", ".join(f"{a!r} for {n}" for n, a in sorted(unknown.items()))
                                              + f"; it knows {', '.join(ALGORITHMS)}): upgrade steadyvoice to verify "
                                              "this checkpoint")])
    missing = [name for name in required_files(version) if name not in files]
    if missing:
        raise CorruptCheckpointError([Problem(path, f"does not list {', '.join(missing)}: incomplete checkpoint")])
    return Manifest(step=step, files=files, info=info, digest=digest, format_version=version)


def _file_entry(entry: dict, version: int) -> FileEntry:
    """One file of the manifest: versions 1 and 2 list {"size", "sha256"}, version 3 {"size", "algorithm", "checksum"}."""
    if version < 3:
        return FileEntry(int(entry["size"]), str(entry["sha256"]), SHA256)
    return FileEntry(int(entry["size"]), str(entry["checksum"]), str(entry["algorithm"]))


def _version_problem(path: Path, version: Any) -> Problem:
    if isinstance(version, int) and version > FORMAT_VERSION:
        return Problem(
            path,
            f"format_version {version} is newer than this SteadyVoice understands ({FORMAT_VERSION}): "
            "upgrade steadyvoice to read it",
        )
    return Problem(path, f"unknown format_version {version!r} (this SteadyVoice reads versions {', '.join(map(str, READABLE_VERSIONS))})")


def parse_json_bytes(path: Path, raw: bytes, what: str) -> dict:
    """JSON object from ``raw``; a Problem naming ``path`` (and line/column) otherwise."""
    foreign = describe_foreign_content(raw[:64]) if raw[:1] != b"{" else None
    if foreign is not None:
        raise CorruptCheckpointError([Problem(path, foreign)])
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptCheckpointError([Problem(path, f"is not valid UTF-8 text ({what} damaged)")]) from None
    except json.JSONDecodeError as exc:
        raise CorruptCheckpointError(
            [Problem(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the {what} was edited or damaged")]
        ) from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError([Problem(path, f"is not a JSON object ({what} damaged)")])
    return data


def _size_problem(path: Path, actual: int, expected: int) -> Problem:
    if actual == 0:
        return _bad_file_problem(path, f"is empty (0 bytes) but manifest.json says {expected} bytes: the write was cut short")
    if actual < expected:
        what = f"is truncated or was modified: {actual} bytes, manifest.json says {expected}"
    else:
        what = f"was modified or replaced: {actual} bytes, manifest.json says {expected}"
    return _bad_file_problem(path, what)


def _checksum_problem(path: Path, algorithm: str) -> Problem:
    return _bad_file_problem(
        path, f"{LABELS[algorithm]} checksum mismatch: the file is damaged (bit flip, partial overwrite) or was replaced"
    )


def _file_problem(path: Path, entry: FileEntry) -> Problem | None:
    """Stream the file through its checksum (one reused buffer): the problem found, or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Problem(path, "missing (listed in manifest.json): the file was deleted")
    if size != entry.size:
        return _size_problem(path, size, entry.size)
    try:
        digest = checksum_file(path, entry.algorithm)
    except OSError as exc:
        return Problem(path, f"cannot be read ({exc.strerror})")
    return _checksum_problem(path, entry.algorithm) if digest != entry.checksum else None


def verify_files(ckpt_dir: Path, manifest: Manifest) -> list[Problem]:
    """Checksum every file the manifest lists, two files at a time; every problem found (empty list = valid)."""
    names = sorted(manifest.files)
    found = parallel_map(lambda name: _file_problem(Path(ckpt_dir) / name, manifest.files[name]), names)
    return [p for p in found if p is not None]


def read_verified(ckpt_dir: Path, manifest: Manifest, name: str) -> np.ndarray:
    """The bytes of file ``name`` (uint8, read once into fresh memory), checked against the manifest.

    The checksum is computed over exactly these bytes, and callers parse these bytes (tensors are views
    of them): nothing is read from the disk again after the check.
    """
    path = Path(ckpt_dir) / name
    entry = manifest.files.get(name)
    if entry is None:
        raise CorruptCheckpointError([Problem(Path(ckpt_dir) / MANIFEST_FILE, f"does not list {name}")])
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size != entry.size:
                raise CorruptCheckpointError([_size_problem(path, size, entry.size)])
            buf = _fresh_bytes(size)
            got, digest = _read_and_checksum(f, memoryview(buf), entry.algorithm)
    except FileNotFoundError:
        raise CorruptCheckpointError([Problem(path, "missing (listed in manifest.json): the file was deleted")]) from None
    except OSError as exc:
        raise CorruptCheckpointError([Problem(path, f"cannot be read ({exc.strerror})")]) from None
    if got != entry.size:  # shrank while being read
        raise CorruptCheckpointError([_size_problem(path, got, entry.size)])
    if digest != entry.checksum:
        raise CorruptCheckpointError([_checksum_problem(path, entry.algorithm)])
    return buf


def _fresh_bytes(size: int) -> np.ndarray:
    """Uninitialised memory for a file's bytes, in ordinary 4 KB pages.

    From torch's allocator, not numpy's: numpy asks for transparent huge pages on large arrays, and with
    the kernel's default THP setting (defrag=madvise) every 2 MB fault may stall in memory compaction
    (measured: 8-10 s instead of 1 s to read 664 MB on a busy machine).
    """
    return torch.empty(size, dtype=torch.uint8).numpy()


def _read_and_checksum(f, view: memoryview, algorithm: str) -> tuple[int, str]:
    """readinto until ``view`` is full or the file ends: (bytes read, the checksum of those bytes).

    Each chunk is checksummed on a second thread while the next one is read (both release the GIL), so the
    checksum hides behind the read instead of following it (XXH3 of 664 MB: 23 ms, a tenth of the read).
    """
    hasher = new_hasher(algorithm)
    chunks: queue.SimpleQueue = queue.SimpleQueue()

    def checksum_chunks() -> None:
        while (chunk := chunks.get()) is not None:
            hasher.update(chunk)

    worker = threading.Thread(target=checksum_chunks, name="steadyvoice-checksum")
    worker.start()
    got = 0
    try:
        while got < len(view):
            n = f.readinto(view[got:got + READ_CHUNK])
            if not n:
                break
            chunks.put(view[got:got + n])
            got += n
    finally:
        chunks.put(None)
        worker.join()
    return got, hasher.hexdigest()


@dataclass
class VerifyReport:
    """Result of fully verifying one checkpoint directory."""

    path: Path
    manifest: Manifest | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.manifest is not None and not self.problems


def verify_dir(ckpt_dir: Path) -> VerifyReport:
    """Manifest + every file's size and checksum + state.json readable and of a known version."""
    ckpt_dir = Path(ckpt_dir)
    try:
        manifest = read_manifest(ckpt_dir)
    except CorruptCheckpointError as exc:
        return VerifyReport(ckpt_dir, None, exc.problems)
    problems = verify_files(ckpt_dir, manifest)
    if not problems:
        try:
            state = check_state_json(ckpt_dir / STATE_FILE, (ckpt_dir / STATE_FILE).read_bytes())
            if manifest.format_version != 1:
                check_part_files(ckpt_dir / STATE_FILE, state, manifest)
        except CorruptCheckpointError as exc:
            problems = exc.problems
    return VerifyReport(ckpt_dir, manifest, problems)


def check_state_json(path: Path, raw: bytes) -> dict:
    """Parse state.json and check its format and version."""
    data = parse_json_bytes(path, raw, "state file")
    if data.get("format") != FORMAT:
        raise CorruptCheckpointError([Problem(path, f"is not a SteadyVoice checkpoint state (format {data.get('format')!r})")])
    if data.get("format_version") not in READABLE_VERSIONS:
        raise CorruptCheckpointError([_version_problem(path, data.get("format_version"))])
    return data


def check_part_files(path: Path, state: dict, manifest: Manifest) -> None:
    """Every file state.json names for a part is listed in the manifest (so it was verified)."""
    parts = state.get("parts")
    if not isinstance(parts, dict) or not parts:
        raise CorruptCheckpointError([Problem(path, "has no named parts: written by a broken tool?")])
    for name, entry in parts.items():
        if not isinstance(entry, dict) or entry.get("kind") not in ("model", "optimizer", "rng", "json"):
            raise CorruptCheckpointError([Problem(path, f"part '{name}' is malformed (no known kind)")])
        file = entry.get("file")
        if entry["kind"] in ("model", "optimizer") and file not in manifest.files:
            raise CorruptCheckpointError([Problem(path.parent / MANIFEST_FILE, f"does not list {file} (part '{name}' of "
                                                  f"{path.name}): incomplete checkpoint")])
