"""Formats read through PyAV (m4a, webm, the audio track of video files): decoding, enhancing, outputs.

The inputs are made here with PyAV itself (a sine encoded as AAC or Opus, with or without a video track).
The model is the TEST FIXTURE of conftest.py (tiny, random weights).
"""

import sys

import numpy as np
import pytest
import torch

from steadyvoice import Enhancer, audio
from steadyvoice.cli import main
from steadyvoice.errors import AudioError
from steadyvoice.models import build_model

from conftest import TINY

av = pytest.importorskip("av", reason="PyAV is the optional extra steadyvoice[formats] (in the test extra)")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 48000


def encode(path, codec: str | None, seconds: float = 1.5, channels: int = 2, video: str | None = None):
    """Write ``seconds`` of a 440 Hz sine (``channels``) with ``codec`` (None: no audio track), plus a
    small black video track with ``video``. Returns the number of samples encoded per channel."""
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t + c) for c in range(channels)]).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE, layout="stereo" if channels == 2 else "mono") if codec else None
        if video:
            picture = out.add_stream(video, rate=25)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
            for k in range(int(seconds * 25)):
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                frame.pts = k
                out.mux(picture.encode(frame))
            out.mux(picture.encode(None))
        if stream is not None:
            for i in range(0, n, 960):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, i : i + 960]), format="fltp",
                                                   layout=stream.layout.name)
                frame.sample_rate, frame.pts = RATE, i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return n


CASES = [("clip.m4a", "aac", None), ("call.webm", "libopus", None), ("film.mp4", "aac", "mpeg4"),
         ("movie.mkv", "libopus", "mpeg4")]


@pytest.mark.parametrize("name, codec, video", CASES)
def test_decoded_length_rate_and_channels_are_the_encoded_ones(tmp_path, name, codec, video):
    n = encode(tmp_path / name, codec, video=video)
    header = audio.info(tmp_path / name)
    assert (header.sample_rate, header.channels, header.decoder) == (RATE, 2, "pyav")
    x, sr = audio.read_audio(tmp_path / name)
    assert sr == RATE and x.shape == (n, 2) and x.dtype == np.float32
    blocks = list(audio.read_blocks(tmp_path / name))
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    t = np.arange(n) / RATE
    middle = slice(n // 4, 3 * n // 4)  # away from the codec's edges
    assert np.corrcoef(x[middle, 0], np.sin(2 * np.pi * 440 * t[middle]))[0, 1] > 0.99  # the sine, in time


def test_enhance_writes_flac_beside_the_stem_unless_format(tmp_path, model_dir, capsys):
    lengths = {name: encode(tmp_path / name, codec, video=video) for name, codec, video in CASES}
    out = tmp_path / "out"
    assert main(["enhance", *[str(tmp_path / name) for name in lengths], "-o", str(out),
                 "--checkpoint", str(model_dir), "--device", "cpu"]) == 0, capsys.readouterr().err
    for name, n in lengths.items():
        got = audio.info(out / f"{name.split('.')[0]}.flac")
        assert (got.format, got.sample_rate, got.channels, got.frames) == ("FLAC", RATE, 2, n)
    assert main(["enhance", str(tmp_path / "clip.m4a"), "-o", str(out), "--format", "wav",
                 "--checkpoint", str(model_dir), "--device", "cpu"]) == 0
    assert audio.info(out / "clip.wav").frames == lengths["clip.m4a"]


def test_long_pyav_input_streams_with_the_samples_of_the_whole_array(tmp_path):
    n = encode(tmp_path / "long.m4a", "aac", seconds=7.0)
    torch.manual_seed(0)
    enhancer = Enhancer(build_model(TINY), TINY, one_pass_max_seconds=2.0, window_seconds=3.0, margin_seconds=0.25,
                        crossfade_seconds=0.25)
    enhancer.enhance_file(tmp_path / "long.m4a", tmp_path / "long.wav")
    decoded, _ = audio.read_audio(tmp_path / "long.m4a")
    whole = enhancer(decoded, RATE)
    streamed, sr = audio.read_audio(tmp_path / "long.wav")
    assert sr == RATE and streamed.shape == (n, 2)
    assert np.max(np.abs(streamed - whole)) <= 1 / 32768  # PCM_16 rounding of the same samples


def test_no_audio_track_and_unreadable_files_are_named(tmp_path):
    encode(tmp_path / "silent-film.mp4", None, video="mpeg4")
    with pytest.raises(AudioError, match=r"silent-film\.mp4: the file has no audio track"):
        audio.info(tmp_path / "silent-film.mp4")
    (tmp_path / "broken.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x07" * 200)
    with pytest.raises(AudioError, match=r"broken\.m4a: not a readable audio or video file"):
        audio.read_audio(tmp_path / "broken.m4a")


def test_writing_a_read_only_format_says_what_to_write(tmp_path):
    with pytest.raises(AudioError, match=r"out\.m4a: SteadyVoice reads \.m4a files but cannot write them; use \.wav"):
        audio.write_audio(tmp_path / "out.m4a", np.zeros(100, np.float32), RATE)


def test_without_pyav_the_error_names_the_file_and_the_extra(tmp_path, monkeypatch):
    encode(tmp_path / "clip.m4a", "aac")
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(AudioError, match=r"clip\.m4a: reading \.m4a files needs PyAV, which is not installed; "
                                         r"pip install 'steadyvoice\[formats\]'"):
        audio.info(tmp_path / "clip.m4a")
