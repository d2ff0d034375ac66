"""Audio files: read, write (atomically), resample, whole or block by block. The only module that opens
audio files.

Arrays follow soundfile's convention: float32, shape (frames, channels), values nominally in [-1, 1].
Every error is an :class:`~steadyvoice.errors.AudioError` whose message starts with the file's path.

Two decoders. libsndfile (through soundfile) reads and writes wav, flac, ogg (Vorbis, Opus), mp3, aiff, au,
w64 and caf. Everything else SteadyVoice reads -- m4a/aac, webm, and the audio track of video files (mp4,
mkv, mov, ...) -- goes through PyAV, FFmpeg's Python binding, which ships its own FFmpeg in its wheel; it
is the optional extra ``steadyvoice[formats]``. Those formats are read only: writing them needs an
encoder, so outputs of such inputs are written with libsndfile (see :data:`PYAV_OUTPUT_FORMAT`).

Long recordings: :func:`read_blocks`, :func:`resample_blocks` and :func:`write_audio_blocks` read,
resample and write one block at a time, so memory does not grow with the file's length.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from steadyvoice.errors import AudioError, os_failure
from steadyvoice.fileio import atomic_write_path

# File extensions libsndfile reads and writes.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf", ".mp3")
# File extensions read through PyAV (the optional extra steadyvoice[formats]): audio-only containers and
# video files, of which the first audio track is read.
PYAV_EXTENSIONS = (".m4a", ".aac", ".webm", ".weba", ".mka", ".wma", ".mp4", ".m4v", ".mov", ".mkv", ".avi")
# Every file extension SteadyVoice reads as audio.
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + PYAV_EXTENSIONS
# Output formats (libsndfile writes them), as given to --format: the output file's extension.
OUTPUT_FORMATS = ("wav", "flac", "ogg", "opus", "mp3", "aiff", "au", "w64", "caf")
# What the output of a PyAV-decoded input is written as unless asked otherwise: lossless and about half
# the size of wav (libsndfile cannot write m4a/webm/video containers).
PYAV_OUTPUT_FORMAT = "flac"
INSTALL_FORMATS = "pip install 'steadyvoice[formats]'"

# Frames per block when a file is read block by block.
BLOCK_FRAMES = 1 << 16

# Sample rates the Opus codec supports (libsndfile refuses the others without saying why).
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""

    path: Path
    sample_rate: int
    channels: int
    frames: int  # PyAV: the stated length of the audio track, or an estimate from the container's duration
    format: str  # soundfile format name, e.g. "WAV"; PyAV: the container's, e.g. "MOV"
    subtype: str  # e.g. "PCM_16"; PyAV: the codec's name, e.g. "AAC"
    decoder: str = "soundfile"  # "soundfile" (libsndfile) or "pyav"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def is_audio_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def info(path: str | Path) -> AudioInfo:
    """Read the header of ``path`` (no samples)."""
    path = Path(path)
    _check_readable(path)
    if _decoded_by_pyav(path):
        return _pyav_info(path)
    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_describe(exc)}){_pyav_hint(path)}") from None
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
    if _decoded_by_pyav(path):
        data, sr = _pyav_read(path)
        data = data[start : None if frames < 0 else start + frames]
    else:
        try:
            data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{path}: not a readable audio file ({_describe(exc)}){_pyav_hint(path)}") from None
    if data.shape[0] == 0 and start == 0:
        raise AudioError(f"{path}: the file holds no samples (zero length)")
    if data.shape[1] == 0:
        raise AudioError(f"{path}: the file has no channels")
    if check_finite:
        _check_finite(path, data)
    return data, int(sr)


def read_blocks(path: str | Path, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """The samples of ``path`` in order, as float32 (n, C) blocks of at most ``block_frames`` frames
    (PyAV: the decoder's frames), with the checks of :func:`read_audio`. Memory holds one block."""
    path = Path(path)
    _check_readable(path)
    blocks = _pyav_blocks(path) if _decoded_by_pyav(path) else _soundfile_blocks(path, block_frames)
    frames = 0
    for block in blocks:
        _check_finite(path, block, at=frames)
        frames += block.shape[0]
        yield block
    if frames == 0:
        raise AudioError(f"{path}: the file holds no samples (zero length)")


class CountedBlocks:
    """Blocks passed through unchanged, counting their frames (``frames``) until the source ends (``done``)."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self._blocks = iter(blocks)
        self.frames = 0
        self.done = False

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self._blocks:
            self.frames += block.shape[0]
            yield block
        self.done = True


def fit_length(blocks: Iterable[np.ndarray], source: CountedBlocks, channels: int) -> Iterator[np.ndarray]:
    """``blocks`` cut or zero-padded to end with exactly ``source.frames`` frames once ``source`` is done
    (the streaming :func:`resample_to_length`; soxr's output may be one frame off). The blocks must lag
    ``source``, as a resampled, windowed copy of it does: nothing is cut before the source's end is known."""
    emitted = 0
    for block in blocks:
        block = block[: max(0, source.frames - emitted)]
        emitted += block.shape[0]
        if block.shape[0]:
            yield block
    if not source.done:
        raise RuntimeError("fit_length: the output ended before its source")  # a programming error
    if emitted < source.frames:
        yield np.zeros((source.frames - emitted, channels), dtype=np.float32)


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
    soundfile's choice for the extension (PCM_16 for WAV; Opus for .opus).
    """
    data = np.asarray(data)
    if data.ndim not in (1, 2):
        raise AudioError(f"{path}: cannot write an array of shape {data.shape}; expected (N,) or (N, C)")
    channels = 1 if data.ndim == 1 else data.shape[1]
    write_audio_blocks(path, [data], sample_rate, channels, subtype=subtype, format=format)


def write_audio_blocks(
    path: str | Path,
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    channels: int,
    *,
    subtype: str | None = None,
    format: str | None = None,
) -> None:
    """Write ``blocks`` ((n,) or (n, C) arrays, one after the other) to ``path`` as one file, atomically.

    The blocks are taken one at a time, so an iterator of blocks is written in bounded memory. libsndfile
    writes a temp file beside ``path``, which replaces ``path`` once complete; on any error, including
    one raised by the iterator (propagated unchanged), the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fmt = format or _format_for(path)
    if fmt == "OGG":
        subtype = subtype or _DEFAULT_SUBTYPES.get(path.suffix.lower())
    if subtype == "OPUS" and int(sample_rate) not in _OPUS_RATES:
        raise AudioError(f"{path}: Opus cannot hold {sample_rate} Hz audio (only "
                         f"{', '.join(str(r) for r in _OPUS_RATES)} Hz); write .ogg (Vorbis) or .flac instead")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_failure(AudioError, path.parent, exc, "cannot create output directory") from None

    def write(tmp: Path) -> None:
        with _writing(path):
            out = _open_for_writing(tmp, int(sample_rate), channels, subtype, fmt)
        try:
            # libsndfile's Ogg encoders cut pages where its write calls end: fixed-size writes make the bytes
            # depend on the samples only, not on how the producer cut them into blocks.
            for block in (_reblock(blocks, BLOCK_FRAMES) if fmt == "OGG" else blocks):  # producer errors propagate
                block = np.asarray(block)
                if block.ndim not in (1, 2) or block.shape[1:] not in ((), (channels,)):
                    raise AudioError(f"{path}: cannot write an array of shape {block.shape} into a "
                                     f"{channels}-channel file; expected (N,) or (N, {channels})")
                if not np.isfinite(block).all():
                    raise AudioError(f"{path}: refusing to write NaN or infinite samples")
                with _writing(path):
                    out.write(block)
        except BaseException:
            with contextlib.suppress(Exception):  # never hide the error that stopped the write
                out.close()
            raise
        with _writing(path):
            out.close()
            if fmt == "OGG":
                _fix_ogg_serial(tmp)

    try:
        atomic_write_path(path, write)  # on any failure the temp file is removed and ``path`` is untouched
    except OSError as exc:
        raise os_failure(AudioError, path, exc) from None


def _reblock(blocks: Iterable[np.ndarray], frames: int) -> Iterator[np.ndarray]:
    """The same samples as ``blocks`` ((n,) or (n, C) arrays), in blocks of exactly ``frames`` frames
    (the last one shorter)."""
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        pending.append(np.asarray(block))
        held += pending[-1].shape[0]
        if held >= frames:
            joined = np.concatenate(pending)
            cut = held - held % frames
            yield from (joined[i : i + frames] for i in range(0, cut, frames))
            pending, held = [joined[cut:]], held - cut
    if held:
        yield np.concatenate(pending)


# Subtype of an Ogg file by extension when none is asked for (libsndfile's default is Vorbis).
_DEFAULT_SUBTYPES = {".opus": "OPUS"}


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """libsndfile's write errors -> AudioError naming ``path`` (OSError is left to the atomic writer)."""
    try:
        yield
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
    same_container = source.decoder == "soundfile" and source.format in _SAME_EXTENSION.get(fmt, (fmt,))
    if same_container and sf.check_format(source.format, source.subtype):
        return source.format, source.subtype
    return fmt, None


def output_suffix(source: str | Path, format: str | None = None) -> str:
    """The extension of the output of ``source``: ``.<format>`` if given, else the input's own, except
    for inputs SteadyVoice reads but cannot write (m4a, webm, video files): ``.flac``."""
    if format is not None:
        if format.lower().lstrip(".") not in OUTPUT_FORMATS:
            raise AudioError(f"unknown output format '{format}'; use one of {', '.join(OUTPUT_FORMATS)}")
        return "." + format.lower().lstrip(".")
    suffix = Path(source).suffix
    return suffix if suffix.lower() in SOUNDFILE_EXTENSIONS else "." + PYAV_OUTPUT_FORMAT


# libsndfile command that turns off the PEAK chunk of float WAV/AIFF files (sndfile.h; soundfile has no
# wrapper for it).
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


def _open_for_writing(path: Path, sample_rate: int, channels: int, subtype: str | None, fmt: str) -> sf.SoundFile:
    """A libsndfile writer on ``path``; the same samples always give the same bytes.

    libsndfile stamps the PEAK chunk it adds to float WAV/AIFF files with the current time; the chunk is
    optional (readers ignore it), so it is switched off before the first sample is written, through
    soundfile's own libsndfile handle.
    """
    out = sf.SoundFile(str(path), "w", sample_rate, channels, subtype, format=fmt)
    sf._snd.sf_command(out._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)  # 0 = SF_FALSE
    return out


# Serial number that every Ogg stream we write carries (the bytes "SVOG").
OGG_STREAM_SERIAL = 0x53564F47


def _fix_ogg_serial(path: Path) -> None:
    """Give every page of the Ogg file at ``path`` the serial number OGG_STREAM_SERIAL, in place, one page
    at a time, so that its bytes depend on the samples only.

    libsndfile gives every Ogg stream a random serial number seeded from the clock, so the same samples
    would give different bytes on every run. mutagen rewrites each page with the fixed serial and a fresh
    page checksum; the audio packets, and so the page's length, are untouched.
    """
    from mutagen.ogg import OggPage  # imported here: only Ogg output needs it

    with open(path, "r+b") as fh:
        end = os.fstat(fh.fileno()).st_size
        while fh.tell() < end:
            offset = fh.tell()
            page = OggPage(fh)
            page.serial = OGG_STREAM_SERIAL
            rewritten = page.write()
            if len(rewritten) != fh.tell() - offset:
                raise RuntimeError(f"Ogg page at byte {offset} changed length when its serial was set")
            fh.seek(offset)
            fh.write(rewritten)


def resample(data: np.ndarray, sr_in: int, sr_out: int, *, quality: str = "HQ") -> np.ndarray:
    """Resample (N,) or (N, C) float audio with soxr. Identity when the rates match."""
    if sr_in == sr_out:
        return data
    _check_rates(sr_in, sr_out)
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


def resample_blocks(blocks: Iterable[np.ndarray], sr_in: int, sr_out: int, channels: int, *,
                    quality: str = "HQ") -> Iterator[np.ndarray]:
    """Resample a stream of float (n, C) blocks with soxr's streaming resampler. soxr runs the same filter
    streaming or in one call: the output equals :func:`resample` of the whole signal, sample for sample."""
    if sr_in == sr_out:
        yield from blocks
        return
    _check_rates(sr_in, sr_out)
    stream = soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32", quality=quality)
    for block in blocks:
        out = stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))
        if out.shape[0]:
            yield out
    yield stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)


def _check_rates(sr_in: int, sr_out: int) -> None:
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"cannot resample from {sr_in} Hz to {sr_out} Hz")


# ---------------------------------------------------------------------------------------------------
# Reading with libsndfile
# ---------------------------------------------------------------------------------------------------


def _soundfile_blocks(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)  # (<= block_frames, C)
                if block.shape[0] == 0:
                    return
                yield block
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_describe(exc)}){_pyav_hint(path)}") from None


# ---------------------------------------------------------------------------------------------------
# Reading with PyAV (m4a, webm, video files, ...)
# ---------------------------------------------------------------------------------------------------


def _decoded_by_pyav(path: Path) -> bool:
    """PyAV for its extensions; libsndfile for its own; any other name (e.g. audio piped on stdin and
    buffered to a file): libsndfile if it recognises the content, else PyAV when it is installed."""
    suffix = path.suffix.lower()
    if suffix in PYAV_EXTENSIONS:
        return True
    if suffix in SOUNDFILE_EXTENSIONS:
        return False
    try:
        sf.info(str(path))
        return False
    except (sf.LibsndfileError, RuntimeError):
        return _pyav_installed()


def _pyav_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _pyav_hint(path: Path) -> str:
    """For a file of unknown extension that libsndfile cannot read: PyAV may, if installed."""
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS or _pyav_installed():
        return ""
    return f"; if it is m4a/aac/webm or a video file, {INSTALL_FORMATS} to read it"


@contextlib.contextmanager
def _pyav_audio_track(path: Path):
    """(av, container, first audio stream) of ``path``; PyAV's errors become AudioErrors naming the file."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{path}: reading {path.suffix or 'such'} files needs PyAV, which is not installed; "
                         f"{INSTALL_FORMATS}") from None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise AudioError(f"{path}: not a readable audio or video file ({_describe_pyav(exc)})") from None
    try:
        if not container.streams.audio:
            raise AudioError(f"{path}: the file has no audio track")
        yield av, container, container.streams.audio[0]
    except av.FFmpegError as exc:
        raise AudioError(f"{path}: cannot decode the audio track ({_describe_pyav(exc)})") from None
    finally:
        container.close()


def _pyav_info(path: Path) -> AudioInfo:
    with _pyav_audio_track(path) as (_, container, stream):
        rate, channels = int(stream.rate), int(stream.channels)
        frames = _stated_frames(stream)
        if frames is None and container.duration is not None:  # an estimate (microseconds)
            frames = round(container.duration * rate / 1_000_000)
        fmt, codec = container.format.name.split(",")[0].upper(), stream.codec_context.name.upper()
    if not rate:
        raise AudioError(f"{path}: the audio track states no sample rate")
    if frames is None:  # no duration anywhere: count the samples (memory holds one block)
        frames = sum(block.shape[0] for block in _pyav_blocks(path))
    return AudioInfo(path, rate, channels, frames, fmt, codec, decoder="pyav")


def _stated_frames(stream) -> int | None:
    """The audio track's length in samples as the container states it (mp4's edit list: the encoder's
    priming and padding excluded), or None."""
    if stream.duration is None or stream.time_base is None:
        return None
    return round(stream.duration * stream.time_base * stream.rate)


def _pyav_blocks(path: Path) -> Iterator[np.ndarray]:
    """The decoded audio track as float32 (n, C) blocks, cut to the track's stated length. FFmpeg converts
    every frame to interleaved float32 at the track's rate and channel layout (so a change of either in
    the middle of the track cannot change the shape of the output)."""
    with _pyav_audio_track(path) as (av, container, stream):
        channels, stated = int(stream.channels), _stated_frames(stream)
        convert = av.AudioResampler(format="flt", layout=stream.layout, rate=stream.rate)
        emitted = 0

        def blocks(frames) -> Iterator[np.ndarray]:
            nonlocal emitted
            for frame in frames:
                block = frame.to_ndarray().reshape(-1, channels)  # packed (1, n * C) -> (n, C)
                if stated is not None:
                    block = block[: max(0, stated - emitted)]
                emitted += block.shape[0]
                if block.shape[0]:
                    yield block

        for frame in container.decode(stream):
            yield from blocks(convert.resample(frame))
        yield from blocks(convert.resample(None))  # flush


def _pyav_read(path: Path) -> tuple[np.ndarray, int]:
    rate = _pyav_info(path).sample_rate
    blocks = list(_pyav_blocks(path))
    if not blocks:
        raise AudioError(f"{path}: the file holds no samples (zero length)")
    return np.concatenate(blocks), rate


def _describe_pyav(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")


def _check_finite(path: Path, data: np.ndarray, at: int = 0) -> None:
    """``data`` holds no NaN/inf; ``at``: the frame where ``data`` starts in the file (for the message)."""
    if np.isfinite(data).all():
        return
    bad = int((~np.isfinite(data)).sum())
    where = f" in the block from frame {at}" if at else ""
    raise AudioError(f"{path}: {bad} samples are NaN or infinite{where}; repair the file before using it")


def _format_for(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "oga": "OGG", "opus": "OGG", "aiff": "AIFF",
               "aif": "AIFF", "au": "AU", "w64": "W64", "caf": "CAF", "mp3": "MP3"}
    if ext not in formats:
        read_only = f"SteadyVoice reads .{ext} files but cannot write them" if path.suffix.lower() in PYAV_EXTENSIONS \
            else f"unknown audio file extension '.{ext}'"
        raise AudioError(f"{path}: {read_only}; use .wav, .flac or .ogg (or one of {', '.join(OUTPUT_FORMATS)})")
    return formats[ext]


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    # libsndfile messages carry the file name already quoted; keep the reason only.
    if ":" in text and "Error opening" in text:
        text = text.split(":", 1)[1].strip()
    return text or type(exc).__name__
