"""Audio files: read, write (atomically), resample. The only module that opens audio files.

Arrays follow soundfile's convention: float32, shape (frames, channels), values nominally in [-1, 1].
Every error is an :class:`~steadyvoice.errors.AudioError` whose message starts with the file's path.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from steadyvoice.errors import AudioError, os_failure
from steadyvoice.fileio import atomic_write

# File extensions SteadyVoice reads as audio (libsndfile formats).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf", ".mp3")


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str  # soundfile format name, e.g. "WAV"
    subtype: str  # e.g. "PCM_16"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def is_audio_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def info(path: str | Path) -> AudioInfo:
    """Read the header of ``path`` (no samples)."""
    path = Path(path)
    _check_readable(path)
    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_describe(exc)})") from None
    return AudioInfo(path, int(i.samplerate), int(i.channels), int(i.frames), i.format, i.subtype)


def read_audio(
    path: str | Path,
    *,
    start: int = 0,
    frames: int = -1,
    check_finite: bool = True,
) -> tuple[np.ndarray, int]:
    """Read ``path`` -> (samples float32 (N, C), sample_rate).

    ``start``/``frames`` read a part of the file. Empty files, unreadable or corrupt files and non-finite
    samples (float files can hold NaN/inf) raise AudioError naming the file.
    """
    path = Path(path)
    _check_readable(path)
    try:
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_describe(exc)})") from None
    if data.shape[0] == 0 and start == 0:
        raise AudioError(f"{path}: the file holds no samples (zero length)")
    if data.shape[1] == 0:
        raise AudioError(f"{path}: the file has no channels")
    if check_finite and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"{path}: {bad} samples are NaN or infinite; repair the file before using it")
    return data, int(sr)


def write_audio(
    path: str | Path,
    data: np.ndarray,
    sample_rate: int,
    *,
    subtype: str | None = None,
    format: str | None = None,
) -> None:
    """Write ``data`` (N,) or (N, C) to ``path`` atomically: a temp file in the same directory, then rename.

    An interrupted write leaves no half-written file at ``path``. ``subtype``/``format`` default to
    soundfile's choice for the extension (PCM_16 for WAV).
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim not in (1, 2):
        raise AudioError(f"{path}: cannot write an array of shape {data.shape}; expected (N,) or (N, C)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    fmt = format or _format_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_failure(AudioError, path.parent, exc, "cannot create output directory") from None

    def encode(fh) -> None:
        if fmt == "OGG":
            fh.write(_ogg_bytes(data, int(sample_rate), subtype))
        else:
            _encode(fh, data, int(sample_rate), subtype, fmt)

    try:
        atomic_write(path, encode)  # on any failure the temp file is removed and ``path`` is untouched
    except OSError as exc:
        raise os_failure(AudioError, path, exc) from None
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{path}: cannot write audio ({_describe(exc)})") from None


# Containers that share a file extension: a .wav may hold plain WAV, WAVE_FORMAT_EXTENSIBLE or RF64.
_SAME_EXTENSION = {"WAV": ("WAV", "WAVEX", "RF64")}


def matching_format(source: AudioInfo, out_path: str | Path) -> tuple[str, str | None]:
    """(format, subtype) to write ``out_path`` with so that it matches ``source``: a WAVEX PCM_24 file
    stays WAVEX PCM_24. When ``out_path``'s extension names another container, that container with its
    default subtype (None).
    """
    fmt = _format_for(Path(out_path))
    if source.format in _SAME_EXTENSION.get(fmt, (fmt,)) and sf.check_format(source.format, source.subtype):
        return source.format, source.subtype
    return fmt, None


# libsndfile command that turns off the PEAK chunk of float WAV/AIFF files (sndfile.h; soundfile has no
# wrapper for it).
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


def _encode(fh, data: np.ndarray, sample_rate: int, subtype: str | None, fmt: str) -> None:
    """Encode ``data`` into the open binary file ``fh``; the same samples always give the same bytes.

    libsndfile stamps the PEAK chunk it adds to float WAV/AIFF files with the current time; the chunk is
    optional (readers ignore it), so it is switched off before the first sample is written, through
    soundfile's own libsndfile handle.
    """
    channels = 1 if data.ndim == 1 else data.shape[1]
    with sf.SoundFile(fh, "w", sample_rate, channels, subtype, format=fmt) as out:
        sf._snd.sf_command(out._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)  # 0 = SF_FALSE
        out.write(data)


# Serial number that every Ogg stream we write carries (the bytes "SVOG").
OGG_STREAM_SERIAL = 0x53564F47


def _ogg_bytes(data: np.ndarray, sample_rate: int, subtype: str | None) -> bytes:
    """Encode ``data`` as an Ogg file whose bytes depend on the samples only.

    libsndfile gives every Ogg stream a random serial number seeded from the clock, so the same samples
    would give different bytes on every run. mutagen rewrites each page with a fixed serial and a fresh
    page checksum; the audio packets are untouched.
    """
    from mutagen.ogg import OggPage  # imported here: only Ogg output needs it

    encoded = io.BytesIO()
    _encode(encoded, data, sample_rate, subtype, "OGG")
    encoded.seek(0)
    end = encoded.getbuffer().nbytes
    pages = []
    while encoded.tell() < end:
        page = OggPage(encoded)
        page.serial = OGG_STREAM_SERIAL
        pages.append(page.write())
    return b"".join(pages)


def resample(data: np.ndarray, sr_in: int, sr_out: int, *, quality: str = "HQ") -> np.ndarray:
    """Resample (N,) or (N, C) float audio with soxr. Identity when the rates match."""
    if sr_in == sr_out:
        return data
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"cannot resample from {sr_in} Hz to {sr_out} Hz")
    out = soxr.resample(np.ascontiguousarray(data, dtype=np.float32), sr_in, sr_out, quality=quality)
    return out.astype(np.float32, copy=False)


def resample_to_length(data: np.ndarray, sr_in: int, sr_out: int, length: int) -> np.ndarray:
    """Resample and then cut or zero-pad to exactly ``length`` frames (soxr may be off by one)."""
    out = resample(data, sr_in, sr_out)
    if out.shape[0] > length:
        return out[:length]
    if out.shape[0] < length:
        pad = [(0, length - out.shape[0])] + [(0, 0)] * (out.ndim - 1)
        return np.pad(out, pad)
    return out


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")


def _format_for(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "oga": "OGG", "opus": "OGG", "aiff": "AIFF",
               "aif": "AIFF", "au": "AU", "w64": "W64", "caf": "CAF", "mp3": "MP3"}
    if ext not in formats:
        raise AudioError(f"{path}: unknown audio file extension '.{ext}'; use .wav, .flac or .ogg")
    return formats[ext]


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    # libsndfile messages carry the file name already quoted; keep the reason only.
    if ":" in text and "Error opening" in text:
        text = text.split(":", 1)[1].strip()
    return text or type(exc).__name__
