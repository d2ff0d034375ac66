"""Exit codes of the real `steadyvoice` command, run in a subprocess: 2 bad usage / config / input, 1 runtime
failure (some item failed, the system refused a write, an OSError), 130 Ctrl-C. (128 + N after a signal stop
of training is checked by tests/test_resume.py, which sends SIGTERM to a real run.)"""

import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

from steadyvoice.errors import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, AudioError, CheckpointError, ConfigError, DataError, ModelError,
    Problem, SteadyVoiceError, os_failure,
)

ROOT = Path(__file__).resolve().parent.parent


def steadyvoice(*args, cwd=None, preexec_fn=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steadyvoice", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, preexec_fn=preexec_fn, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The whole stderr must be a single 'error: ...' line: no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def write_pair(root: Path, name="a.wav", sr=16000) -> None:
    t = np.arange(sr) / sr
    clean = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noisy = clean + 0.03 * np.random.default_rng(0).standard_normal(sr).astype(np.float32)
    for sub, x in (("ref", clean), ("est", noisy)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        sf.write(root / sub / name, x, sr, subtype="FLOAT")


# ---- the codes of the error classes --------------------------------------------------------------------


def test_error_classes_and_os_failure():
    for cls in (SteadyVoiceError, ConfigError, AudioError, ModelError, DataError, CheckpointError):
        assert cls("x").exit_code == EXIT_USAGE == 2
    err = os_failure(DataError, Path("/out/s.csv"), OSError(28, "No space left on device"))
    assert isinstance(err, DataError) and err.exit_code == EXIT_FAILED == 1
    assert str(err) == "/out/s.csv: cannot write (No space left on device)"
    assert DataError("y").exit_code == 2  # the class keeps its own code
    assert str(Problem(Path("/a/b.wav"), "is broken")) == "/a/b.wav: is broken"


def test_help_lists_the_exit_codes_in_plain_text():
    top = steadyvoice("--help")
    assert top.returncode == 0
    assert "exit codes:" in top.stdout and "128+N" in top.stdout
    for code in ("  0  ", "  1  ", "  2  ", "  130  "):
        assert code in top.stdout
    enhance = steadyvoice("enhance", "--help")
    assert enhance.returncode == 0 and "list files" in enhance.stdout
    for text in (top.stdout, enhance.stdout):
        assert "``" not in text and ":class:" not in text and ":func:" not in text and "`" not in text


# ---- 2: bad usage, config or input, found before any work ----------------------------------------------


def test_bad_config_is_exit_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "recipes" / "tiny-cpu.yaml").read_text() + "\ntrain_typo: 1\n")
    proc = steadyvoice("train", "--config", cfg, "--run-dir", tmp_path / "run", "--clean", tmp_path,
                       "--noise", tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "train_typo" in one_error_line(proc)
    assert not (tmp_path / "run").exists()


def test_unknown_metric_is_exit_2(tmp_path):
    write_pair(tmp_path)
    proc = steadyvoice("score", "--reference", tmp_path / "ref", "--estimate", tmp_path / "est", "--metrics", "pesq")
    assert proc.returncode == 2 and "unknown metric 'pesq'" in one_error_line(proc)


def test_output_directory_under_a_regular_file_is_exit_2(tmp_path):
    # enhance checks OUTDIR before loading a model or touching an input: -o FILE/sub is an impossible
    # argument, found before any work, so it is bad usage (2), not a failure while running.
    write_pair(tmp_path)
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("x")
    proc = steadyvoice("enhance", tmp_path / "est" / "a.wav", "-o", blocker / "sub")
    assert proc.returncode == 2
    assert one_error_line(proc) == f"error: {blocker / 'sub'}: cannot create output directory (Not a directory)"


# ---- 1: the command ran and failed ---------------------------------------------------------------------


def _tiny_file_size_limit():
    """In the child: writes beyond 16 bytes fail with EFBIG ('File too large'), the way a full disk fails a
    write (root ignores permissions, so a read-only directory would not fail). SIGXFSZ is ignored so the
    write returns the error instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


def test_a_write_the_system_refuses_is_exit_1(tmp_path):
    write_pair(tmp_path)
    csv = tmp_path / "out" / "scores.csv"
    proc = steadyvoice("score", "--reference", tmp_path / "ref", "--estimate", tmp_path / "est", "--metrics",
                       "si_sdr", "--jobs", "1", "--csv", csv, preexec_fn=_tiny_file_size_limit)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {csv}: cannot write (File too large)"], proc.stderr
    assert "Traceback" not in proc.stderr and not csv.exists()


def test_an_escaping_os_error_is_one_line_and_exit_1(tmp_path):
    # No command lets an OSError through on purpose; this stands in for one that would (a bug, or a write
    # deep in a library), running the real entry point with the score command's run() replaced.
    code = textwrap.dedent(f"""
        import errno, os, sys
        import steadyvoice.cli.score as score

        def run(args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), {str(tmp_path / "full" / "file.bin")!r})

        score.run = run  # what register() sets as the command's func
        sys.argv = ["steadyvoice", "score", "--reference", "r", "--estimate", "e"]
        from steadyvoice.cli import entry
        entry()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert one_error_line(proc) == f"error: {tmp_path / 'full' / 'file.bin'}: No space left on device"


# ---- 130: Ctrl-C -----------------------------------------------------------------------------------------


def test_ctrl_c_is_exit_130():
    code = textwrap.dedent("""
        import sys, time
        import steadyvoice.cli.score as score

        def run(args):
            print("ready", flush=True)
            time.sleep(60)
            return 0

        score.run = run
        sys.argv = ["steadyvoice", "score", "--reference", "r", "--estimate", "e"]
        from steadyvoice.cli import entry
        entry()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"  # the command is running: Ctrl-C now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert err.strip() == "interrupted"
