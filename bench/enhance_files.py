"""Many short files against one long file of the same total length (``bench/enhance.py --suite files``).

Writes ``--count`` (default 1,000) 16 kHz mono PCM_16 wav files of ``--seconds`` (default 2 s) of synthetic
noisy speech-like audio into a temporary directory, and one file holding the same audio end to end. Then
runs the real command, ``steadyvoice enhance``, with the shipped default model, in a subprocess each:

* ``one long file``  (the baseline: the model's in-process speed, one start-up, 10 s windows)
* ``N short files``  with ``--jobs 1``
* ``N short files``  with ``--jobs J`` for each J of ``--jobs`` (default 2)

and prints wall and CPU time per case, files per second and the ratio to the baseline. A ratio near 1 means a
directory of short files costs what its audio costs, not a process start or a model load per file.

    python bench/enhance.py --suite files                      # 1,000 x 2 s (~2-4 min on 2 cores)
    python bench/enhance.py --suite files --files-count 200    # a quicker check
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def run_files(count: int = 1000, seconds: float = 2.0, jobs: tuple[int, ...] = (2,)) -> int:
    with tempfile.TemporaryDirectory(prefix="steadyvoice-bench-files-") as tmp:
        tmp = Path(tmp)
        short_dir, long_file = _write_inputs(tmp, count, seconds)
        total = count * seconds
        print(f"enhance: {count} files of {seconds:g} s against one file of {total:g} s (the same audio), shipped "
              f"default model, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; the whole command "
              "in a subprocess (start-up included)\n")
        cases = [("one long file", [str(long_file)], 1)] + [
            (f"{count} files, --jobs {j}", [str(short_dir)], j) for j in (1, *jobs)]
        print("| case | wall s | CPU s | RTF (wall) | files/s | wall / baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        baseline = None
        for name, inputs, j in cases:
            out = tmp / f"out-{len(name)}-{j}"
            wall, cpu = _run(inputs, out, j)
            shutil.rmtree(out, ignore_errors=True)
            baseline = baseline or wall
            files = 1 if name == "one long file" else count
            print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / total:.4f} | {files / wall:.1f} | "
                  f"{wall / baseline:.2f} |", flush=True)
    return 0


def _write_inputs(tmp: Path, count: int, seconds: float) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    short_dir = tmp / "short"
    short_dir.mkdir()
    long_file = tmp / "long.wav"
    with sf.SoundFile(long_file, "w", SAMPLE_RATE, 1, subtype="PCM_16") as whole:
        for i in range(count):
            pitch = 100 + 120 * rng.random()
            voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
            x = (0.08 * voice + 0.02 * rng.standard_normal(n)).astype(np.float32)
            sf.write(short_dir / f"{i:05d}.wav", x, SAMPLE_RATE, subtype="PCM_16")
            whole.write(x)
    return short_dir, long_file


def _run(inputs: list[str], out: Path, jobs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one `steadyvoice enhance` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "steadyvoice", "enhance", *inputs, "-o", str(out), "--jobs", str(jobs),
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
