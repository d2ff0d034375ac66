"""`steadyvoice enhance` end to end on tiny files: outputs, reruns, atomic writes, bad input, input kinds.

The model is a TEST FIXTURE (tiny random-weight MossFormer2-SE saved into a temporary directory), never a
default: it only exercises the command's plumbing.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from steadyvoice.audio import AUDIO_EXTENSIONS
from steadyvoice.cli import main

# model_dir (the tiny fixture model) and one_torch_thread come from conftest.py.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone(seconds=0.5, sr=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.02 * rng.standard_normal((n, channels))
    return x.astype(np.float32)


def write(path: Path, seconds=0.5, sr=16000, channels=1, subtype=None, seed=0) -> Path:
    """Write a test file; ``subtype`` may be a (format, subtype) pair."""
    container, subtype = subtype if isinstance(subtype, tuple) else (None, subtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, channels, seed), sr, subtype=subtype, format=container)
    return path


def enhance(capsys, *args, model=None):
    """Run `steadyvoice enhance ...` in-process -> (exit code, stderr lines)."""
    argv = ["enhance", *map(str, args)]
    if model is not None:
        argv += ["--checkpoint", str(model)]
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def error_lines(lines):
    return [line for line in lines if line.startswith("error: ")]


def files_under(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------
# What an output keeps
# ---------------------------------------------------------------------------------------------------

CASES = [  # name, seconds, rate, channels, subtype
    ("mono16k.wav", 0.5, 16000, 1, "PCM_16"),
    ("stereo44k.wav", 0.4, 44100, 2, "PCM_24"),
    ("float8k.wav", 0.6, 8000, 1, "FLOAT"),
    ("stereo48k.flac", 0.3, 48000, 2, "PCM_16"),
    ("mono22k.flac", 0.5, 22050, 1, "PCM_24"),
    ("stereo16k.ogg", 0.5, 16000, 2, "VORBIS"),
    ("long16k.wav", 25.0, 16000, 1, "PCM_16"),  # longer than one pass: windows
    ("quad16k.wav", 0.3, 16000, 4, ("WAVEX", "PCM_24")),  # WAVE_FORMAT_EXTENSIBLE stays so
]


@pytest.fixture(scope="module")
def batch(model_dir, tmp_path_factory):
    """One run over a directory of mixed files, then a rerun with --overwrite into the same OUTDIR."""
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    for i, (name, seconds, sr, channels, subtype) in enumerate(CASES):
        write(src / "sub" / name if i % 2 else src / name, seconds, sr, channels, subtype, seed=i)
    out = root / "out"
    first = main(["enhance", str(src), "-o", str(out), "--checkpoint", str(model_dir)])
    first_bytes = {p: (out / p).read_bytes() for p in files_under(out)}
    again = main(["enhance", str(src), "-o", str(out), "--checkpoint", str(model_dir), "--overwrite"])
    return src, out, first, again, first_bytes


def test_outputs_keep_format_subtype_rate_channels_length_and_paths(batch):
    src, out, first, _, _ = batch
    assert first == 0
    assert files_under(out) == files_under(src)  # same relative paths, nothing else (no temp files)
    for rel in files_under(src):
        a, b = sf.info(str(src / rel)), sf.info(str(out / rel))
        assert (b.format, b.subtype, b.samplerate, b.channels, b.frames) == (
            a.format, a.subtype, a.samplerate, a.channels, a.frames), rel
        x, _ = sf.read(str(src / rel))
        y, _ = sf.read(str(out / rel))
        assert np.std(y) > 0 and not np.allclose(x, y, atol=1e-3), rel
    # libsndfile would stamp float WAVs with the time of writing (PEAK chunk): reruns would differ.
    assert b"PEAK" not in (out / "float8k.wav").read_bytes()[:200]


def test_rerun_gives_byte_identical_outputs(batch):
    _, out, _, again, first_bytes = batch
    assert again == 0
    assert {p: (out / p).read_bytes() for p in files_under(out)} == first_bytes


def test_rerun_skips_finished_outputs_unless_overwrite(model_dir, tmp_path, capsys):
    a, b = write(tmp_path / "a.wav"), write(tmp_path / "b.flac", seed=1)
    out = tmp_path / "out"
    assert enhance(capsys, a, b, "-o", out, model=model_dir)[0] == 0
    (out / "a.wav").write_bytes(b"stale but finished")  # a finished output is never redone...
    (out / "b.flac").unlink()
    code, lines = enhance(capsys, a, b, "-o", out, model=model_dir)
    assert code == 0 and (out / "a.wav").read_bytes() == b"stale but finished" and (out / "b.flac").exists()
    assert lines[-1] == "1 enhanced, 1 skipped (output exists; --overwrite to redo), 0 failed"
    code, lines = enhance(capsys, a, b, "-o", out, "--overwrite", model=model_dir)  # ...unless asked
    assert code == 0 and lines[-1] == "2 enhanced, 0 failed"
    assert sf.info(str(out / "a.wav")).frames == sf.info(str(a)).frames


# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------


def _failing_write(exc):
    real_write = sf.SoundFile.write

    def write_half_then_fail(self, data):
        real_write(self, data[: len(data) // 2])  # some samples reach the temp file
        self.flush()
        raise exc

    return write_half_then_fail


def test_failure_mid_write_leaves_no_partial_file(model_dir, tmp_path, capsys, monkeypatch):
    a = write(tmp_path / "a.wav")
    out = tmp_path / "out"
    monkeypatch.setattr(sf.SoundFile, "write", _failing_write(OSError(28, "No space left on device")))
    code, lines = enhance(capsys, a, "-o", out, model=model_dir)
    assert code == 1 and error_lines(lines) == [f"error: {out / 'a.wav'}: cannot write (No space left on device)"]
    assert files_under(out) == []


def test_interrupt_mid_write_leaves_no_partial_file_and_rerun_finishes(model_dir, tmp_path, capsys, monkeypatch):
    a, b = write(tmp_path / "a.wav"), write(tmp_path / "b.wav", seed=2)
    out = tmp_path / "out"
    monkeypatch.setattr(sf.SoundFile, "write", _failing_write(KeyboardInterrupt()))
    code, lines = enhance(capsys, a, b, "-o", out, model=model_dir)
    assert code == 130 and lines[-1] == "interrupted"
    assert files_under(out) == []
    monkeypatch.undo()
    code, lines = enhance(capsys, a, b, "-o", out, model=model_dir)
    assert code == 0 and files_under(out) == ["a.wav", "b.wav"]


# ---------------------------------------------------------------------------------------------------
# Bad input: one line each, the batch goes on
# ---------------------------------------------------------------------------------------------------


def _bad_inputs(d: Path) -> dict[str, str]:
    """Make one file per kind of bad input -> {path: expected problem}."""
    (d / "empty.wav").write_bytes(b"")
    sf.write(d / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    (d / "text.wav").write_text("this is not audio at all, only text " * 20)
    (d / "header.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x07" * 30)
    nan = tone()
    nan[100:103] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    write(d / "slow.wav", sr=4000)
    write(d / "many.wav", seconds=0.1, channels=40)
    (d / "notes.pdf").write_bytes(b"%PDF-1.4")
    return {
        str(d / "missing.wav"): "no such file or directory",
        str(d / "empty.wav"): "the file is empty (0 bytes)",
        str(d / "zero.wav"): "the file holds no samples (zero length)",
        str(d / "text.wav"): "not a readable audio file",
        str(d / "header.wav"): "not a readable audio file",
        str(d / "nan.wav"): "3 samples are NaN or infinite",
        str(d / "slow.wav"): "sample rate 4000 Hz is not supported",
        str(d / "many.wav"): "40 channels is more than the 32 supported",
        str(d / "notes.pdf"): "not an audio file or a list",
    }


def test_each_bad_input_gets_one_line_and_the_batch_goes_on(model_dir, tmp_path, capsys):
    expected = _bad_inputs(tmp_path)
    good = write(tmp_path / "good.wav")
    clash_a, clash_b = write(tmp_path / "x" / "same.wav"), write(tmp_path / "y" / "same.wav", seed=3)
    out = tmp_path / "out"
    code, lines = enhance(capsys, *expected, good, clash_a, clash_b, "-o", out, model=model_dir)
    errors = error_lines(lines)
    assert code == 1
    assert len(errors) == len(expected) + 2, "\n".join(lines)
    for path, problem in expected.items():
        mine = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert len(mine) == 1 and problem in mine[0], (path, mine)
    for path in (clash_a, clash_b):
        mine = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert len(mine) == 1 and "would also be the output of" in mine[0]
    assert files_under(out) == ["good.wav"]
    assert lines[-1] == f"1 enhanced, {len(expected) + 2} failed"


def test_unwritable_outdir_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    good = write(tmp_path / "good.wav")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, lines = enhance(capsys, good, "-o", blocker / "out", model=model_dir)
    assert code == 2 and lines == [f"error: {blocker / 'out'}: cannot create output directory (Not a directory)"]
    code, lines = enhance(capsys, good, "-o", blocker, model=model_dir)
    assert code == 2 and lines == [f"error: {blocker}: output directory is an existing file; pass a directory to -o"]


def test_output_may_not_replace_its_input(model_dir, tmp_path, capsys):
    a = write(tmp_path / "a.wav")
    code, lines = enhance(capsys, a, "-o", tmp_path, model=model_dir)
    assert code == 1 and error_lines(lines) == [
        f"error: {a}: its output would replace the input file; choose an OUTDIR that is not the input's directory"]


@pytest.mark.parametrize(
    "model_args, message",
    [
        ([], "model 'default': its weights are missing from this installation"),
        (["--model", "default"], "model 'default': its weights are missing from this installation"),
        (["--model", "mossformer2-se-48k"], "is a network configuration without trained weights"),
        (["--checkpoint", "/nonexistent/model"], "/nonexistent/model: no such model directory or model name"),
    ],
)
def test_missing_model_is_a_usage_error(tmp_path, capsys, monkeypatch, model_args, message):
    monkeypatch.setattr("steadyvoice.catalog.SHIPPED_DIR", tmp_path / "weights")  # an installation without them
    good = write(tmp_path / "good.wav")
    code, lines = enhance(capsys, good, "-o", tmp_path / "out", *model_args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "steadyvoice convert clearervoice" in lines[0]


def test_real_command_line_prints_no_traceback(model_dir, tmp_path):
    good = write(tmp_path / "good.wav")
    (tmp_path / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 50)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "steadyvoice", "enhance", str(good), str(tmp_path / "broken.flac"),
         str(tmp_path / "gone.ogg"), "-o", str(out), "--checkpoint", str(model_dir)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr.splitlines())
    assert [e.split(": ")[1] for e in errors] == [str(tmp_path / "gone.ogg"), str(tmp_path / "broken.flac")]
    assert (out / "good.wav").is_file()


# ---------------------------------------------------------------------------------------------------
# Directories and lists keep relative paths
# ---------------------------------------------------------------------------------------------------


def test_directory_inputs_keep_relative_paths_and_skip_their_own_outdir(model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for rel in ("a.wav", "spk1/b.flac", "spk1/deep/c.ogg", ".hidden/d.wav"):
        write(data / rel)
    (data / "spk1" / "readme.txt").write_text("not audio, not an input here")
    out = data / "enhanced"  # OUTDIR inside the input directory
    for _ in range(2):  # the second run must not pick up the first run's outputs as inputs
        code, lines = enhance(capsys, data, "-o", out, model=model_dir)
        assert code == 0, lines
    assert files_under(out) == ["a.wav", "spk1/b.flac", "spk1/deep/c.ogg"]
    assert lines[-1] == "0 enhanced, 3 skipped (output exists; --overwrite to redo), 0 failed"


def test_list_files_resolve_relative_paths_and_keep_them(model_dir, tmp_path, capsys):
    lists = tmp_path / "lists"
    write(lists / "clips" / "one.wav")
    write(lists / "clips" / "two words.flac")
    outside = write(tmp_path / "elsewhere" / "three.wav")
    scp = lists / "noisy.scp"
    scp.write_text(
        "# noisy clean duration\n"
        "clips/one.wav clips/one_clean.wav 0.5\n"
        "\n"
        "clips/two words.flac\n"
        f"{outside} whatever\n"
        "clips/missing.wav\n"
    )
    out = tmp_path / "out"
    code, lines = enhance(capsys, scp, "-o", out, model=model_dir)
    assert code == 1
    assert error_lines(lines) == [f"error: {lists / 'clips' / 'missing.wav'}: no such file (listed in {scp}, line 6)"]
    assert files_under(out) == ["clips/one.wav", "clips/two words.flac", "three.wav"]


def test_empty_directory_and_unreadable_list_are_reported(model_dir, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00garbage")
    code, lines = enhance(capsys, tmp_path / "nothing", tmp_path / "bad.txt", "-o", tmp_path / "out",
                          model=model_dir)
    assert code == 1
    assert error_lines(lines) == [
        f"error: {tmp_path / 'nothing'}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory",
        f"error: {tmp_path / 'bad.txt'}: cannot read list file (not a UTF-8 text file)",
    ]
