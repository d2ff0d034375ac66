"""steadyvoice enhance with pipes: - reads stdin, -o - writes stdout (and nothing else goes there).

Real subprocesses with real pipes. The model is the TEST FIXTURE of conftest.py (tiny, random weights).
"""

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

SR = 22050


def enhance(*args, stdin: bytes = b""):
    return subprocess.run([sys.executable, "-m", "steadyvoice", "enhance", *map(str, args), "--device", "cpu"],
                          input=stdin, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipes") / "noisy.wav"
    x = 0.1 * np.random.default_rng(0).standard_normal((SR * 2 + 11, 2))
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_24")
    return path


def test_stdin_to_stdout_is_exactly_the_file_output(noisy, model_dir, tmp_path):
    piped = enhance("-", "-o", "-", "--checkpoint", model_dir, stdin=noisy.read_bytes())
    assert piped.returncode == 0, piped.stderr.decode()
    written = enhance(noisy, "-o", tmp_path, "--checkpoint", model_dir)
    assert written.returncode == 0, written.stderr.decode()
    # Byte for byte the file `enhance noisy.wav -o DIR` writes: stdout holds the audio and nothing else.
    assert piped.stdout == (tmp_path / "noisy.wav").read_bytes()
    out = sf.info(io.BytesIO(piped.stdout))
    assert (out.format, out.subtype, out.samplerate, out.channels, out.frames) == ("WAV", "PCM_24", SR, 2, SR * 2 + 11)
    assert b"1 enhanced" in piped.stderr  # messages go to stderr


def test_a_shell_pipeline_with_format(noisy, model_dir, tmp_path):
    out = tmp_path / "out.flac"
    shell = (f"cat {noisy} | {sys.executable} -m steadyvoice enhance - -o - --format flac --checkpoint {model_dir} "
             f"--device cpu > {out}")
    proc = subprocess.run(shell, shell=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes()[:4] == b"fLaC"
    y, sr = sf.read(out)
    assert sr == SR and y.shape == (SR * 2 + 11, 2) and np.std(y) > 0


def test_stdin_into_a_directory_and_a_file_to_stdout(noisy, model_dir, tmp_path):
    proc = enhance("-", "-o", tmp_path, "--checkpoint", model_dir, stdin=noisy.read_bytes())
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode()
    assert sf.info(tmp_path / "stdin.wav").frames == SR * 2 + 11
    proc = enhance(noisy, "-o", "-", "--format", "ogg", "--checkpoint", model_dir)
    assert proc.returncode == 0 and proc.stdout[:4] == b"OggS"


@pytest.mark.parametrize("args, stdin, message", [
    (["a.wav", "b.wav", "-o", "-"], b"", "-o - writes one enhanced file to stdout, but 2 inputs were given"),
    (["-", "-", "-o", "out"], b"", "- (stdin) is given more than once"),
    (["-", "-o", "-"], b"", "-: stdin is empty; pipe an audio file in"),
    (["-", "-o", "-"], b"not audio at all " * 20, "error: stdin: not a readable audio"),
])
def test_pipe_mistakes_are_errors_with_nothing_on_stdout(model_dir, tmp_path, args, stdin, message):
    proc = enhance(*[tmp_path / a if a.endswith(".wav") else a for a in args], "--checkpoint", model_dir, stdin=stdin)
    assert proc.returncode in (1, 2) and proc.stdout == b""
    assert message in proc.stderr.decode()


def test_format_names_the_output_container_of_files(noisy, model_dir, tmp_path, capsys):
    from steadyvoice.cli import main

    assert main(["enhance", str(noisy), "-o", str(tmp_path), "--format", "flac", "--checkpoint", str(model_dir),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    out = sf.info(tmp_path / "noisy.flac")
    assert (out.format, out.samplerate, out.channels, out.frames) == ("FLAC", SR, 2, SR * 2 + 11)
    assert not (tmp_path / "noisy.wav").exists()
    with pytest.raises(SystemExit):
        main(["enhance", str(noisy), "-o", str(tmp_path), "--format", "m4a"])
    assert "invalid choice: 'm4a'" in capsys.readouterr().err
