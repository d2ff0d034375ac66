"""`steadyvoice convert clearervoice` on files that are not checkpoints: one `error:` line, exit 2, no traceback.

These run the real command in a subprocess, as a user would, so that nothing between the library and
the terminal can let a traceback through.
"""

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]


def _torch_bytes(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"mossformer.norm.weight": torch.ones(8)}, "epoch": 1}, buf,
               _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _zip_without_torch_data() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return buf.getvalue()


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# name of the source, how to make it (None: a directory), what the message must say
CASES = [
    ("noisy.wav", _wav_bytes, "a RIFF/WAV audio file, not a PyTorch checkpoint"),
    ("notes.txt", lambda: b"these are my notes\nnot a checkpoint\n", "a text file, not a PyTorch checkpoint"),
    ("empty.pt", lambda: b"", "the file is empty (0 bytes)"),
    ("archive.pt", _zip_without_torch_data, "a zip archive but not a PyTorch checkpoint (no data.pkl inside)"),
    ("models", None, "is a directory"),
    ("random.pt", lambda: np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint (neither a zip"),
    ("cut.pt", lambda: _torch_bytes()[:-200], "truncated or corrupt"),
    ("cut_legacy.pt", lambda: _torch_bytes(legacy=True)[:-40], "truncated or corrupt"),
    ("data.pkl", lambda: pickle.dumps({"a": 1}, protocol=4), "refused: a plain Python pickle, not a PyTorch checkpoint"),
]


@pytest.mark.parametrize("name, make, message", CASES, ids=[c[0] for c in CASES])
def test_a_file_that_is_not_a_checkpoint_gets_one_error_line(tmp_path, name, make, message):
    src = tmp_path / name
    if make is None:
        src.mkdir()
    else:
        src.write_bytes(make())
    dest = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, "-m", "steadyvoice", "convert", "clearervoice", str(src), str(dest)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {src}: "), lines[0]
    assert message in lines[0]
    assert proc.stdout == "" and not dest.exists()
