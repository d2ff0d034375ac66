"""Memory of `Enhancer.enhance_file` on a short and an hours-long recording (``bench/enhance.py --suite memory``).

Two 48 kHz stereo PCM_16 wav files of synthetic noise-like audio (a modulated harmonic tone plus white
noise, different in every block) are written block by block into a temporary directory: by default 1 minute
and 3 hours (2.1 GB). Each is enhanced by ``Enhancer.enhance_file`` in its own subprocess, whose peak RSS
(getrusage ru_maxrss: model, imports and the run) is reported with the RSS before the run, then the ratio of
the two peaks. The long file streams (read, resampled 48 -> 16 -> 48 kHz, windows, written block by block),
so its peak should stay that of the short one; the whole file as float32 would be 4.1 GB.

The model is a TINY random-weight MossFormer2-SE (16 kHz, 64 ms frames with a 32 ms hop, 16 dimensions,
one block) so that 3 hours run in minutes on a CPU: the point is memory, not speed or audio quality (a
bigger model adds its own constant, the same for both lengths). Needs about 4.2 GB of temporary disk
($TMPDIR).

    python bench/enhance.py --suite memory                         # 1 min vs 3 h (~10-30 min on 2 cores)
    python bench/enhance.py --suite memory --memory-minutes 1 30   # a shorter long file
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE_RATE = 48000
CHANNELS = 2
BLOCK_SECONDS = 10


def run_memory(short_minutes: float, long_minutes: float) -> int:
    import torch

    print(f"Memory of enhance_file: {SAMPLE_RATE // 1000} kHz stereo PCM_16 wav, TINY random-weight "
          f"MossFormer2-SE (16 kHz; memory only: its speed and output mean nothing here), torch "
          f"{torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          "peak RSS = getrusage ru_maxrss of a fresh subprocess per file", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="steadyvoice-memory-") as tmp:
        for minutes in (short_minutes, long_minutes):
            source = Path(tmp) / f"{minutes:g}min.wav"
            _write_input(source, minutes)
            result = _run_worker(source, Path(tmp) / "out" / source.name)
            results.append(result)
            print(f"  {minutes:7g} min ({result['frames'] / SAMPLE_RATE / 3600:.2f} h, "
                  f"{source.stat().st_size / 2**30:.2f} GB wav)  peak RSS {result['peak_rss_mb']:7.0f} MB  "
                  f"(RSS before the run {result['rss_before_mb']:.0f} MB)  {result['wall_s']:7.1f} s  "
                  f"{result['windows']} windows per channel", flush=True)
            source.unlink()
    short, long = results
    whole = long["frames"] * CHANNELS * 4 / 2**20
    print(f"peak RSS, {long_minutes:g} min / {short_minutes:g} min: x{long['peak_rss_mb'] / short['peak_rss_mb']:.3f} "
          f"(+{long['peak_rss_mb'] - short['peak_rss_mb']:.0f} MB; the long file alone as float32 would be "
          f"{whole:.0f} MB)")
    return 0


def _write_input(path: Path, minutes: float) -> None:
    """``minutes`` of noise-like stereo audio, written BLOCK_SECONDS at a time (bounded memory here too)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    frames = round(minutes * 60 * SAMPLE_RATE)
    block = BLOCK_SECONDS * SAMPLE_RATE
    with sf.SoundFile(path, "w", SAMPLE_RATE, CHANNELS, "PCM_16") as out:
        for start in range(0, frames, block):
            t = np.arange(start, min(start + block, frames)) / SAMPLE_RATE
            voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
            noise = rng.standard_normal((len(t), CHANNELS))
            out.write((0.1 * voice[:, None] + 0.03 * noise).astype(np.float32))


def _run_worker(source: Path, output: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", str(source), str(output)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"memory case {source.name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(source: Path, output: Path) -> dict:
    """Enhance ``source`` into ``output`` with the TINY model; the process's peak RSS and timings."""
    import torch

    from steadyvoice import Enhancer, audio
    from steadyvoice.models import MossFormer2SEConfig, build_model

    cfg = MossFormer2SEConfig(sample_rate=16000, win_length=1024, hop_length=512, n_mels=20, model_dim=16, num_blocks=1,
                              query_key_dim=8, rotary_dim=4, fsmn_inner_dim=16, group_size=64)
    torch.manual_seed(0)
    enhancer = Enhancer(build_model(cfg), cfg)
    header = audio.info(source)
    rss_before = _rss_mb()
    start = time.perf_counter()
    enhancer.enhance_file(source, output)
    wall = time.perf_counter() - start
    written = audio.info(output)
    assert (written.frames, written.channels, written.sample_rate) == (header.frames, CHANNELS, SAMPLE_RATE)
    output.unlink()
    return {"frames": header.frames, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before, "wall_s": wall,
            "windows": enhancer.window_count(header.frames, header.sample_rate)}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        sys.exit("run through bench/enhance.py --suite memory")
