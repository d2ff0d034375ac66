"""Audio I/O: clear errors naming the file, atomic writes, exact-length resampling."""

import os

import numpy as np
import pytest
import soundfile as sf

from steadyvoice import audio
from steadyvoice.errors import AudioError


def _tone(n=1600, sr=16000, channels=1):
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, axis=1)


def test_write_read_round_trip(tmp_path):
    x = _tone(channels=2)
    for ext in ("wav", "flac", "ogg"):
        path = tmp_path / f"a.{ext}"
        audio.write_audio(path, x, 16000)
        y, sr = audio.read_audio(path)
        assert sr == 16000 and y.shape == x.shape and y.dtype == np.float32
        tol = 2e-4 if ext != "ogg" else 0.1  # PCM_16 quantisation; vorbis is lossy
        assert np.max(np.abs(y - x)) < tol
        assert audio.info(path).channels == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("hello, I am text, not audio " * 10), "not a readable audio file"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 8), "not a readable audio file"),
    ],
)
def test_bad_files_are_named(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=rf"bad\.wav: {message}"):
        audio.read_audio(path)


def test_zero_length_and_non_finite(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: the file holds no samples"):
        audio.read_audio(empty)
    nan = tmp_path / "nan.wav"
    x = _tone()
    x[10] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: 1 samples are NaN or infinite"):
        audio.read_audio(nan)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.wav"
    audio.write_audio(path, _tone(), 16000)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.os, "fsync", boom)
    with pytest.raises(AudioError, match="out.wav: cannot write \\(No space left on device\\)"):
        audio.write_audio(path, _tone() * 0.5, 16000)
    assert path.read_bytes() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["out.wav"]  # no temp file left behind
    with pytest.raises(AudioError, match="refusing to write NaN"):
        audio.write_audio(tmp_path / "n.wav", np.full(10, np.nan), 16000)
    with pytest.raises(AudioError, match="unknown audio file extension '.xyz'"):
        audio.write_audio(tmp_path / "n.xyz", np.zeros(10), 16000)


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 16000), (16000, 48000), (8000, 22050)])
def test_resample_to_length(sr_in, sr_out):
    x = _tone(n=sr_in, sr=sr_in)[:, 0]
    y = audio.resample_to_length(x, sr_in, sr_out, sr_out)
    assert y.shape == (sr_out,) and y.dtype == np.float32
    back = audio.resample_to_length(y, sr_out, sr_in, sr_in)
    core = slice(sr_in // 10, -sr_in // 10)
    assert np.max(np.abs(back[core] - x[core])) < 0.01
    assert audio.resample(x, sr_in, sr_in) is x


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "opus", "mp3"])
def test_block_writes_give_the_bytes_of_one_write(tmp_path, ext):
    """The bytes depend on the samples only, not on how they were cut into blocks (libsndfile's Ogg
    encoders cut pages where its write calls end: the writer re-blocks Ogg)."""
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (48000 * 3 + 77, 2)).astype(np.float32)
    audio.write_audio(tmp_path / f"whole.{ext}", x, 48000)
    for size in (1000, 65536, 100_000):
        audio.write_audio_blocks(tmp_path / f"blocks.{ext}", (x[i : i + size] for i in range(0, len(x), size)), 48000, 2)
        assert (tmp_path / f"blocks.{ext}").read_bytes() == (tmp_path / f"whole.{ext}").read_bytes()
    assert audio.info(tmp_path / f"whole.{ext}").subtype == {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS",
                                                             "opus": "OPUS", "mp3": "MPEG_LAYER_III"}[ext]


def test_a_failing_producer_leaves_nothing_and_keeps_its_error(tmp_path):
    def blocks():
        yield np.zeros((1000, 1), np.float32)
        raise KeyError("the producer's own error")

    with pytest.raises(KeyError, match="the producer's own error"):
        audio.write_audio_blocks(tmp_path / "out.flac", blocks(), 16000, 1)
    assert os.listdir(tmp_path) == []
    with pytest.raises(AudioError, match=r"x\.opus: Opus cannot hold 44100 Hz audio"):
        audio.write_audio(tmp_path / "x.opus", np.zeros(100, np.float32), 44100)
