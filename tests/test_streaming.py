"""Long files stream: read, resampled, enhanced window by window and written block by block.

The model is the TEST FIXTURE of conftest.py (a tiny random-weight MossFormer2-SE): its output is
meaningless, but windows, resampling and blending do not depend on what it learned.
"""

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from steadyvoice import Enhancer
from steadyvoice import audio
from steadyvoice.errors import AudioError
from steadyvoice.inference import WindowPlan, crossfade_weights, overlap_add, overlap_add_blocks
from steadyvoice.models import build_model

from conftest import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def enhancer():
    torch.manual_seed(0)
    return Enhancer(build_model(TINY), TINY)


def noise(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((int(seconds * sr) + 7, channels))).astype(np.float32)  # odd length


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------------
# Streaming overlap-add, without a model
# ---------------------------------------------------------------------------------------------------


def _reference_overlap_add(signal, plan, process):
    """The whole-array overlap-add written out directly from the plan, for comparison."""
    out = np.zeros(len(signal), np.float32)
    starts = plan.starts(len(signal))
    for k, start in enumerate(starts):
        piece = signal[start : start + plan.window]
        kept = len(piece)
        enhanced = process(np.pad(piece, (0, plan.window - kept)))[:kept]
        out[start : start + kept] += (enhanced * crossfade_weights(plan, k == 0, k == len(starts) - 1)[:kept]
                                      ).astype(np.float32)
    return out


@pytest.mark.parametrize("length", [1, 999, 1000, 1001, 1700, 1701, 7777])
@pytest.mark.parametrize("block", [1, 333, 1000, 10_000])
def test_streamed_overlap_add_equals_the_whole_array(length, block):
    plan = WindowPlan(window=1000, stride=700, margin=50)
    x = np.random.default_rng(length).standard_normal((length, 3)).astype(np.float32)
    calls = []

    def process(w):  # depends on the whole window, like a network with global context
        calls.append(len(w))
        return np.tanh(np.cumsum(w) * 0.01 + w.mean()).astype(np.float32)

    out = list(overlap_add_blocks((x[i : i + block] for i in range(0, length, block)), plan, process))
    y = np.concatenate(out)
    assert y.shape == x.shape and set(calls) == {plan.window}
    for c in range(3):
        np.testing.assert_array_equal(y[:, c], _reference_overlap_add(x[:, c], plan, process))
    np.testing.assert_array_equal(overlap_add(x[:, 0], plan, process), y[:, 0])
    assert all(len(b) <= max(plan.window, block + plan.window) for b in out)  # output comes out as it is final


def test_fit_length_cuts_and_pads_to_the_source():
    for produced in (95, 100, 103):
        source = audio.CountedBlocks(np.zeros((10, 2), np.float32) for _ in range(10))
        out = audio.fit_length(_after(source, np.ones((produced, 2), np.float32)), source, 2)
        y = np.concatenate(list(out))
        assert y.shape == (100, 2) and y[: min(produced, 100)].all() and not y[produced:].any()


def _after(source, tail):
    """Yield nothing until ``source`` is used up, then ``tail`` (a stream that lags its source)."""
    for _ in source:
        pass
    yield tail


# ---------------------------------------------------------------------------------------------------
# Enhancer.enhance_file on long files
# ---------------------------------------------------------------------------------------------------


def test_streamed_file_equals_the_whole_array_path(enhancer, tmp_path, monkeypatch):
    """60 s of 3-channel 44.1 kHz audio (8 windows per channel, resampled both ways): the streamed file
    holds exactly the samples of enhancing the whole array (float files, so no quantisation)."""
    sr = 44100
    x = noise(60, sr, 3)
    src, out = tmp_path / "long.wav", tmp_path / "out" / "long.wav"
    sf.write(src, x, sr, subtype="FLOAT")
    whole = enhancer(x, sr)  # (N, 3)
    per_channel = enhancer.window_count(len(x), sr)
    assert per_channel > 1

    def no_whole_reads(*args, **kwargs):
        raise AssertionError("a long file was read whole")

    monkeypatch.setattr(audio, "read_audio", no_whole_reads)
    windows = []
    enhancer.enhance_file(src, out, progress=lambda done, total: windows.append((done, total)))
    streamed, out_sr = sf.read(out, dtype="float32", always_2d=True)
    assert out_sr == sr and streamed.shape == x.shape and sf.info(out).subtype == "FLOAT"
    difference = float(np.max(np.abs(streamed - whole)))
    print(f"streamed vs whole-array: max abs difference {difference:.3g}")
    assert difference <= 1e-6
    assert windows == [(k, 3 * per_channel) for k in range(1, 3 * per_channel + 1)]
    assert _files(out.parent) == ["long.wav"]  # no temp file left


@pytest.mark.parametrize("ext, subtype", [("wav", "PCM_24"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", None)])
def test_streamed_outputs_keep_length_rate_channels_and_format(enhancer, tmp_path, ext, subtype):
    sr = 22050
    x = noise(25, sr, 2, seed=1)
    src = tmp_path / f"in.{ext}"
    sf.write(src, x, sr, subtype=subtype)
    header = audio.info(src)
    out = tmp_path / "out" / f"in.{ext}"
    enhancer.enhance_file(src, out)
    got = audio.info(out)
    assert (got.sample_rate, got.channels, got.format, got.subtype) == (sr, 2, header.format, header.subtype)
    if ext != "mp3":  # libsndfile's mp3 frame count is approximate (padding of the last frame)
        assert got.frames == header.frames
    # Streamed Ogg has the bytes of writing the same samples at once: it depends on the samples only.
    if ext in ("ogg", "wav"):
        samples, _ = audio.read_audio(src)
        again = tmp_path / f"again.{ext}"
        audio.write_audio(again, enhancer(samples, sr), sr, subtype=header.subtype, format=header.format)
        assert again.read_bytes() == out.read_bytes()


def test_a_bad_block_in_a_long_file_leaves_nothing_behind(enhancer, tmp_path):
    sr = 16000
    x = noise(40, sr, 1)
    x[30 * sr] = np.nan  # found only after the first windows were written to the temp file
    src = tmp_path / "nan.wav"
    sf.write(src, x, sr, subtype="FLOAT")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "nan.wav").write_bytes(b"an older output")
    with pytest.raises(AudioError, match=r"nan\.wav: 1 samples are NaN or infinite in the block from frame"):
        enhancer.enhance_file(src, out_dir / "nan.wav")
    assert (out_dir / "nan.wav").read_bytes() == b"an older output"
    assert _files(out_dir) == ["nan.wav"]


def test_memory_does_not_grow_with_the_length(enhancer, tmp_path):
    """numpy's allocations (tracemalloc sees them) for an 8-minute file stay those of a 1-minute one;
    reading it whole would take 8x."""
    sr = 16000
    peaks = {}
    for minutes in (1, 8):
        src = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(src, "w", sr, 1, "PCM_16") as f:
            for _ in range(minutes * 6):
                f.write(noise(10, sr, 1)[: 10 * sr])
        tracemalloc.start()
        try:
            enhancer.enhance_file(src, tmp_path / "out" / f"{minutes}.wav")
            peaks[minutes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert audio.info(tmp_path / "out" / f"{minutes}.wav").frames == minutes * 60 * sr
    whole_file_bytes = 8 * 60 * sr * 4  # the 8-minute file as float32
    print(f"numpy peak: 1 min {peaks[1] / 2**20:.1f} MB, 8 min {peaks[8] / 2**20:.1f} MB")
    assert peaks[8] < 1.25 * peaks[1] and peaks[8] < whole_file_bytes / 2
