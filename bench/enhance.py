"""Benchmark of `enhance` on CPU: real-time factor and peak memory, with baselines measured in the same run.

For each model configuration and input length, three ways of enhancing the same input are timed, each in
its own subprocess so that peak memory (getrusage ru_maxrss) of one case does not leak into another:

* ``enhancer``     SteadyVoice's Enhancer (one pass up to 20 s, then 10 s windows with crossfades)
* ``one-pass``     baseline: one bare features.enhance_waveform call over the whole input (memory grows
                   with the input length)
* ``official-4s``  baseline: the official ClearerVoice long-input strategy, 4 s windows with a 3 s stride,
                   0.5 s dropped at each inner edge, hard cuts (used by them only above 20 s; run here at
                   every length for comparison)

Models have RANDOM weights (seeded): the cost of a forward pass does not depend on the values, so the
timings hold for trained weights; the audio they produce is meaningless. Input: synthetic noisy
speech-like signal at the model's rate (no resampling). Results are printed and written to
bench/out/enhance.json.

    python bench/enhance.py                       # official size + small, 10 s and 60 s (~3 min, 2 idle cores)
    python bench/enhance.py --quick               # small config, 10 s only
    python bench/enhance.py --configs mossformer2-se-48k --durations 10 60 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("enhancer", "one-pass", "official-4s")
BASELINE = "one-pass"
DEFAULT_CONFIGS = ("mossformer2-se-48k", "mossformer2-se-48k-small")
OUT_DIR = Path(__file__).resolve().parent / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="registry config names")
    parser.add_argument("--durations", nargs="+", type=float, default=[10.0, 60.0], help="input seconds")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="small config, 10 s input only")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (default: torch's choice)")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "SECONDS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        config, seconds, method = args.worker
        print(json.dumps(run_case(config, float(seconds), method, args.repeat)))
        return 0
    if args.quick:
        args.configs, args.durations = [DEFAULT_CONFIGS[1]], [10.0]
    return run_all(args.configs, args.durations, args.methods, args.threads, args.repeat)


# ---------------------------------------------------------------------------------------------------
# Parent: one subprocess per case, then a table with ratios against the baseline
# ---------------------------------------------------------------------------------------------------


def run_all(configs: list[str], durations: list[float], methods: list[str], threads: int, repeat: int) -> int:
    import torch

    print(f"CPU benchmark, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; fastest of {repeat} runs per case; "
          "RANDOM-WEIGHT models (timing only); input at the model's rate")
    results = []
    for config in configs:
        for seconds in durations:
            for method in methods:
                result = _run_worker(config, seconds, method, threads, repeat)
                results.append(result)
                print(f"  {config:28s} {seconds:6.0f} s  {method:12s} "
                      f"{result['wall_s']:7.2f} s  RTF {result['rtf']:.3f}  peak RSS {result['peak_rss_mb']:7.0f} MB "
                      f"(+{result['peak_increase_mb']:.0f} MB over the loaded model)", flush=True)
    _print_ratios(results, methods)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "enhance.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {OUT_DIR / 'enhance.json'}")
    return 0


def _run_worker(config: str, seconds: float, method: str, threads: int, repeat: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", config, str(seconds), method,
                           "--threads", str(threads), "--repeat", str(repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark case {config} {seconds} s {method} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_ratios(results: list[dict], methods: list[str]) -> None:
    if BASELINE not in methods:
        return
    print(f"\nratios against the {BASELINE} baseline measured above (time, peak-RSS increase):")
    base = {(r["config"], r["seconds"]): r for r in results if r["method"] == BASELINE}
    for r in results:
        b = base.get((r["config"], r["seconds"]))
        if r["method"] == BASELINE or b is None:
            continue
        mem = r["peak_increase_mb"] / b["peak_increase_mb"] if b["peak_increase_mb"] > 0 else float("nan")
        print(f"  {r['config']:28s} {r['seconds']:6.0f} s  {r['method']:12s} time x{r['wall_s'] / b['wall_s']:.2f}  "
              f"memory x{mem:.2f}")


# ---------------------------------------------------------------------------------------------------
# Worker: one case in a fresh process
# ---------------------------------------------------------------------------------------------------


def run_case(config: str, seconds: float, method: str, repeat: int) -> dict:
    import numpy as np
    import torch

    from steadyvoice.inference import Enhancer
    from steadyvoice.models import build_model, get_config

    cfg = get_config(config)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    wave = _input(seconds, cfg.sample_rate)
    run = _method(method, model, cfg)
    run(wave[: cfg.sample_rate])  # warm-up on 1 s (allocator, kernels)
    rss_before = _reset_peak_and_read_rss_mb()
    wall = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        out = run(wave)
        wall = min(wall, time.perf_counter() - start)
        assert out.shape == wave.shape and np.isfinite(out).all()
    increase = _high_water_mb() - rss_before
    return {"config": config, "seconds": seconds, "method": method, "wall_s": wall, "rtf": wall / seconds,
            "peak_rss_mb": _peak_rss_mb(), "peak_increase_mb": increase, "threads": torch.get_num_threads(),
            "repeat": repeat, "load_average": os.getloadavg()[0],
            "weights": "random (seeded)", "windows": Enhancer(model, cfg).window_count(len(wave), cfg.sample_rate)
            if method == "enhancer" else None}


def _method(method: str, model, cfg):
    import numpy as np
    import torch

    from steadyvoice.features import enhance_waveform
    from steadyvoice.inference import Enhancer

    @torch.no_grad()
    def one_pass(wave: np.ndarray) -> np.ndarray:
        return enhance_waveform(model, torch.from_numpy(wave)[None], cfg)[0].numpy()

    def official_4s(wave: np.ndarray) -> np.ndarray:
        """ClearerVoice's long-input decode: 4 s windows, 3 s stride, 0.5 s dropped at inner edges, hard cuts."""
        window, stride = 4 * cfg.sample_rate, 3 * cfg.sample_rate
        give_up = (window - stride) // 2
        n = len(wave)
        padded = np.zeros(max(window, window + -(-(n - window) // stride) * stride), np.float32)
        padded[:n] = wave
        out = np.zeros_like(padded)
        for start in range(0, len(padded) - window + 1, stride):
            piece = one_pass(padded[start : start + window])
            lo = 0 if start == 0 else give_up
            out[start + lo : start + window - give_up] = piece[lo : window - give_up]
        out[len(padded) - give_up :] = piece[window - give_up :]  # the final edge is kept
        return out[:n]

    if method == "enhancer":
        enhancer = Enhancer(model, cfg)
        return lambda wave: enhancer(wave, cfg.sample_rate)
    if method == "one-pass":
        return one_pass
    return official_4s


def _input(seconds: float, sample_rate: int):
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * voice + 0.03 * rng.standard_normal(t.shape)).astype(np.float32)


def _peak_rss_mb() -> float:
    """Peak RSS of the whole worker process (model, input, run)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _reset_peak_and_read_rss_mb() -> float:
    """Current RSS, after resetting the kernel's peak-RSS mark (Linux /proc/self/clear_refs "5"), so that
    the peak measured next belongs to the timed run alone and not to model construction."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # no reset: the increase is then measured against the earlier peak (an underestimate)
    return _proc_status_mb("VmRSS")


def _high_water_mb() -> float:
    return _proc_status_mb("VmHWM")


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return _peak_rss_mb()


if __name__ == "__main__":
    sys.exit(main())
