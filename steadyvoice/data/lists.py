"""Training file lists: find the audio files, read their headers, refuse unusable data before training.

Sources are given as paths. A directory means every audio file under it (recursively, sorted); an audio
file means itself; any other file is a list file with one entry per line (``path [duration]``), read by
:func:`steadyvoice.listfile.read_list` like every list of the project (blank lines and ``#`` comment lines
skipped, relative paths relative to the list file). ClearerVoice-format pair lists hold
``noisy_path clean_path [duration]`` per line.

:func:`scan_files` and :func:`scan_pairs` read every header (``audio.info``) once at start and, when asked,
every file's samples too, so that missing, unreadable, silent, mis-sampled or too-short files are one
clear :class:`~steadyvoice.errors.DataError` before the first training step rather than a crash hours in.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from steadyvoice import audio
from steadyvoice.errors import AudioError, DataError
from steadyvoice.listfile import read_list, resolve_listed

log = logging.getLogger("steadyvoice")

# Peak amplitude below which a whole file counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4
# How many offending files an error message lists before summarising.
MAX_LISTED = 10
# Threads reading headers/samples at start (soundfile releases the GIL while reading).
SCAN_THREADS = 8

ResamplePolicy = Literal["soxr", "error"]


@dataclass(frozen=True)
class AudioFile:
    """One usable audio file, as its header describes it."""

    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class AudioPair:
    """One line of a ClearerVoice pair list: a noisy recording and its clean reference, same length."""

    noisy: AudioFile
    clean: AudioFile

    @property
    def frames(self) -> int:
        return min(self.noisy.frames, self.clean.frames)

    @property
    def duration(self) -> float:
        return self.frames / self.noisy.sample_rate


# ---------------------------------------------------------------- collecting paths


def collect_paths(sources: list[str], role: str) -> list[Path]:
    """Audio file paths named by ``sources`` (directories, audio files, list files), in a stable order."""
    if not sources:
        raise DataError(f"no {role} data given; set data.{role} in the config or pass --{role} PATH")
    paths: list[Path] = []
    for source in sources:
        src = Path(source).expanduser()
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.is_file() and audio.is_audio_path(p))
            if not found:
                raise DataError(f"{src}: the {role} directory holds no audio files ({', '.join(audio.AUDIO_EXTENSIONS)})")
            paths.extend(found)
        elif audio.is_audio_path(src):
            paths.append(src)
        elif src.is_file():
            entries = read_list(src)
            if not entries:
                raise DataError(f"{src}: the {role} list file is empty")
            paths.extend(entry.path for entry in entries)
        else:
            raise DataError(f"{src}: no such {role} file or directory")
    return paths


def read_pair_list(list_path: str) -> list[tuple[Path, Path]]:
    """(noisy, clean) paths of a ClearerVoice pair list: ``noisy_path clean_path [duration]`` per line."""
    src = Path(list_path).expanduser()
    if not src.is_file():
        raise DataError(f"{src}: no such pair list file")
    pairs = []
    for entry in read_list(src):
        if len(entry.fields) not in (2, 3):
            raise DataError(f"{src}, line {entry.line}: {len(entry.fields)} field(s); a pair list line is "
                            "'noisy_path clean_path [duration]'")
        pairs.append((entry.path, resolve_listed(src, entry.fields[1])))
    if not pairs:
        raise DataError(f"{src}: the pair list is empty")
    return pairs


# ---------------------------------------------------------------- scanning


def scan_files(
    paths: list[Path],
    *,
    role: str,
    sample_rate: int,
    resample: ResamplePolicy,
    min_seconds: float,
    check_samples: bool,
) -> list[AudioFile]:
    """Headers (and optionally samples) of ``paths``; raises DataError listing every unusable file.

    Files shorter than ``min_seconds`` are left out with a warning (0 keeps all); if that leaves none,
    the error names the longest file.
    """
    infos = _parallel(paths, _probe_file if check_samples else _probe_header)
    unreadable = [msg for _, msg in infos if isinstance(msg, str)]
    if unreadable:
        raise DataError(_listing(f"{len(unreadable)} {role} file(s) cannot be used", unreadable))
    files = [f for f, _ in infos]
    silent = [f.path for f, msg in infos if msg is True]
    if silent:
        raise DataError(
            _listing(f"{len(silent)} {role} file(s) are silent (peak below {SILENCE_PEAK:g}); remove them from the list", silent)
        )
    _check_rates(files, role, sample_rate, resample)
    return _long_enough(files, min_seconds, f"{role} file", "files", f"{role} files", lambda f: f.path,
                        "lower data.crop_seconds or add longer files")


def scan_pairs(
    pairs: list[tuple[Path, Path]],
    *,
    sample_rate: int,
    resample: ResamplePolicy,
    min_seconds: float,
    check_samples: bool,
) -> list[AudioPair]:
    """Scan both sides of every pair; noisy and clean of a pair must share their sample rate."""
    flat = [p for pair in pairs for p in pair]
    noisy_clean = scan_files(flat, role="pair", sample_rate=sample_rate, resample=resample, min_seconds=0,
                             check_samples=check_samples)
    out = []
    mismatched = []
    for i in range(0, len(noisy_clean), 2):
        noisy, clean = noisy_clean[i], noisy_clean[i + 1]
        if noisy.sample_rate != clean.sample_rate:
            mismatched.append(f"{noisy.path} ({noisy.sample_rate} Hz) vs {clean.path} ({clean.sample_rate} Hz)")
        out.append(AudioPair(noisy, clean))
    if mismatched:
        raise DataError(_listing(f"{len(mismatched)} pair(s) mix sample rates", mismatched))
    out = _long_enough(out, min_seconds, "pair", "pairs", "pairs", lambda p: p.clean.path, "lower data.crop_seconds")
    return out


def _probe_header(path: Path) -> tuple[AudioFile | None, str | bool]:
    """(file, False) when usable, (None, message) when not."""
    try:
        i = audio.info(path)
    except AudioError as exc:
        return None, str(exc)
    if i.frames == 0:
        return None, f"{path}: the file holds no samples (zero length)"
    return AudioFile(str(path), i.sample_rate, i.frames, i.channels), False


def _probe_file(path: Path) -> tuple[AudioFile | None, str | bool]:
    """Header plus a full read: (file, True) when the file is silent."""
    f, msg = _probe_header(path)
    if f is None:
        return f, msg
    try:
        data, _ = audio.read_audio(path)
    except AudioError as exc:
        return None, str(exc)
    return f, bool(np.abs(data).max() < SILENCE_PEAK)


def _check_rates(files: list[AudioFile], role: str, sample_rate: int, resample: ResamplePolicy) -> None:
    if resample == "soxr":
        return
    wrong = [f"{f.path} ({f.sample_rate} Hz)" for f in files if f.sample_rate != sample_rate]
    if wrong:
        raise DataError(
            _listing(f"{len(wrong)} {role} file(s) are not at the model rate {sample_rate} Hz and "
                     "data.resample is 'error'; resample them or set data.resample: soxr", wrong)
        )


def _parallel(paths: list[Path], fn):
    if len(paths) <= 1:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(SCAN_THREADS, len(paths))) as pool:
        return list(pool.map(fn, paths))


def _listing(head: str, items: list[str]) -> str:
    shown = "\n  ".join(items[:MAX_LISTED])
    more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{head}:\n  {shown}{more}"


def _long_enough(items: list, min_seconds: float, noun: str, unit: str, plural: str, path_of, hint: str) -> list:
    """The items at least ``min_seconds`` long (a warning counts the others); an error if none is."""
    if min_seconds <= 0:
        return items
    long_enough = [it for it in items if it.duration >= min_seconds]
    if not long_enough:
        longest = max(items, key=lambda it: it.duration)
        raise DataError(
            f"crop {min_seconds:g} s is longer than every {noun} ({len(items)} {unit}); longest is "
            f"{longest.duration:.2f} s ({path_of(longest)}); {hint}"
        )
    if len(long_enough) < len(items):
        short = [f"{path_of(it)} ({it.duration:.2f} s)" for it in items if it.duration < min_seconds]
        log.warning("%s", _listing(f"{len(short)} of {len(items)} {plural} are shorter than the {min_seconds:g} s "
                                   "crop and are left out", short))
    return long_enough
