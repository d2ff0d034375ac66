"""Many inputs at once: Enhancer on torch tensors and batches, Enhancer.enhance_files, --jobs, progress lines.

The model is the tiny random-weight fixture of conftest (plumbing only).
"""

import io
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from steadyvoice import Enhancer
from steadyvoice.batch import Job, run_jobs
from steadyvoice.cli import main
from steadyvoice.cli.progress import FileProgress
from steadyvoice.errors import AudioError, ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def enhancer(model_dir):
    return Enhancer.from_pretrained(model_dir)


def speechlike(rows: int, samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    voice = np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * voice + 0.03 * rng.standard_normal((rows, samples))).astype(np.float32)  # (rows, samples)


# ---------------------------------------------------------------------------------------------------
# Arrays: kind, dtype, layout
# ---------------------------------------------------------------------------------------------------


def test_a_batch_gives_each_row_its_own_result(enhancer):
    x = speechlike(3, 16000)  # (B, T)
    one_by_one = np.stack([enhancer(row, 16000) for row in x])
    assert np.array_equal(enhancer(x, 16000, batch=True), one_by_one)
    # (B, C, T): 3-D arrays are time-last without being told
    x3 = speechlike(4, 16000, seed=1).reshape(2, 2, 16000)
    out3 = enhancer(x3, 16000)
    assert out3.shape == x3.shape
    assert np.array_equal(out3[1, 0], enhancer(x3[1, 0], 16000))


def test_frames_first_2d_numpy_is_still_frames_by_channels(enhancer):
    x = speechlike(2, 16000).T.copy()  # (N, C) as soundfile reads it
    y = enhancer(x, 16000)
    assert y.shape == x.shape
    assert np.array_equal(y[:, 1], enhancer(x[:, 1].copy(), 16000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_tensor_comes_back_as_a_tensor_of_its_dtype(enhancer, dtype):
    x = speechlike(2, 8000, seed=2)
    tensor = torch.from_numpy(x).to(dtype)  # (B, T): tensors are time-last
    y = enhancer(tensor, 16000)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == tensor.shape
    expected = enhancer(tensor.float().numpy(), 16000, batch=True)
    assert torch.equal(y, torch.from_numpy(expected).to(dtype))


def test_numpy_float64_comes_back_float64(enhancer):
    x = speechlike(1, 8000)[0].astype(np.float64)
    y = enhancer(x, 16000)
    assert y.dtype == np.float64
    assert np.array_equal(y, enhancer(x.astype(np.float32), 16000).astype(np.float64))


def test_integer_tensors_and_bad_shapes_are_refused(enhancer):
    with pytest.raises(AudioError, match="floating point.*32768"):
        enhancer(torch.zeros(100, dtype=torch.int16), 16000)
    with pytest.raises(AudioError, match=r"time-last shape"):
        enhancer(torch.zeros(2, 2, 2, 100), 16000)
    with pytest.raises(AudioError, match="NaN"):
        enhancer(torch.full((1, 100), float("nan")), 16000)


# ---------------------------------------------------------------------------------------------------
# Files: enhance_files and --jobs
# ---------------------------------------------------------------------------------------------------


def _write_inputs(directory, count: int, samples: int = 8000):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sf.write(directory / f"f{i:02d}.wav", speechlike(1, samples, seed=i)[0], 16000, subtype="PCM_16")


def test_enhance_files_in_threads_equals_one_by_one(enhancer, tmp_path):
    _write_inputs(tmp_path / "in", 6)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF not really")
    one = enhancer.enhance_files(tmp_path / "in", tmp_path / "one")
    four = enhancer.enhance_files([tmp_path / "in"], tmp_path / "four", jobs=4)
    for result in (one, four):
        assert len(result.done) == 6 and not result.skipped
        assert [str(p.path) for p in result.failed] == [str(tmp_path / "in" / "broken.wav")]
        assert "not a readable audio file" in result.failed[0].message
    for i in range(6):
        assert (tmp_path / "one" / f"f{i:02d}.wav").read_bytes() == (tmp_path / "four" / f"f{i:02d}.wav").read_bytes()
    again = enhancer.enhance_files(tmp_path / "in", tmp_path / "four", jobs=2)
    assert len(again.skipped) == 6 and not again.done
    redo = enhancer.enhance_files(tmp_path / "in", tmp_path / "four", jobs=2, overwrite=True)
    assert len(redo.done) == 6
    flac = enhancer.enhance_files(tmp_path / "in" / "f00.wav", tmp_path / "flac", format="flac")
    assert [job.output.name for job in flac.done] == ["f00.flac"]
    assert sf.info(tmp_path / "flac" / "f00.flac").format == "FLAC"


def test_enhance_files_refuses_bad_jobs_and_an_unwritable_out_dir(enhancer, tmp_path):
    _write_inputs(tmp_path / "in", 1)
    with pytest.raises(ConfigError, match="jobs=0"):
        enhancer.enhance_files(tmp_path / "in", tmp_path / "out", jobs=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AudioError, match="existing file"):
        enhancer.enhance_files(tmp_path / "in", tmp_path / "file")


def test_run_jobs_stops_on_a_bug_and_keeps_order():
    jobs = [Job(source=f"s{i}", output=f"o{i}") for i in range(8)]  # paths are not touched here
    seen = []
    result = run_jobs(jobs, lambda job: seen.append(job.source), is_done=lambda job: job.source == "s3", workers=3)
    assert [j.source for j in result.done] == [f"s{i}" for i in range(8) if i != 3]
    assert [j.source for j in result.skipped] == ["s3"] and sorted(seen) == [f"s{i}" for i in range(8) if i != 3]

    def bug(job):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_jobs(jobs, bug, is_done=lambda job: False, workers=2)


def test_cli_jobs_gives_the_same_outputs(model_dir, tmp_path, capsys):
    _write_inputs(tmp_path / "in", 5)
    assert main(["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "a"), "--checkpoint", str(model_dir)]) == 0
    assert main(["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--checkpoint", str(model_dir),
                 "--jobs", "3"]) == 0
    for i in range(5):
        assert (tmp_path / "a" / f"f{i:02d}.wav").read_bytes() == (tmp_path / "b" / f"f{i:02d}.wav").read_bytes()
    assert "5 enhanced, 0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "c"), "--jobs", "0"])
    assert exc.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Progress when stderr is not a terminal
# ---------------------------------------------------------------------------------------------------


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()  # not a tty
    monkeypatch.setattr(sys, "stderr", stream)
    progress = FileProgress(10, "enhance", interval=0.0)
    for i in range(4):
        progress.update(failed=i == 2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("enhance: 4/10 files (40 %), 1 failed, ") and "left" in lines[-1]
    quiet = FileProgress(10, "enhance", interval=3600.0)  # nothing until the interval has passed
    quiet.update()
    assert len(stream.getvalue().splitlines()) == 4


def test_a_redirected_training_run_reports_its_first_step_and_then_every_heartbeat(tmp_path, monkeypatch):
    from steadyvoice.train import logging as run_logging

    stream = io.StringIO()  # not a tty
    monkeypatch.setattr(sys, "stderr", stream)
    logger = run_logging.RunLogger(tmp_path / "run", enabled=True, total_steps=100)
    logger.open(0, {})
    logger.message("initial weights: x")  # a message before the first step does not replace it
    logger.heartbeat(1, 0, 0.5)
    logger.heartbeat(2, 0, 0.4)  # within HEARTBEAT_SECONDS of the last line: silent
    monkeypatch.setattr(run_logging, "HEARTBEAT_SECONDS", 0.0)
    logger.heartbeat(3, 0, 0.3)
    logger.close()
    assert stream.getvalue().splitlines() == ["initial weights: x", "step 1 epoch 0: loss 0.5", "step 3 epoch 0: loss 0.3"]
