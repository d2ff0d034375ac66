"""Benchmark of `enhance` on CPU: real-time factor and peak memory, with baselines measured in the same run.

Two suites (``--suite methods|families|all``, default all); every case runs in its own subprocess so that
peak memory (getrusage ru_maxrss) of one case does not leak into another. A third, ``--suite memory`` (run
only when asked: minutes of CPU and GBs of temporary disk), compares the peak RSS of enhancing a 1-minute and
a 3-hour file (bench/enhance_memory.py); ``--suite files`` runs `steadyvoice enhance` on 1,000 files of 2 s
against one file of the same audio (bench/enhance_files.py).

Methods (MossFormer2-SE windowing). For each model configuration and input length, three ways of enhancing
the same input are timed:

* ``enhancer``     SteadyVoice's Enhancer (one pass up to 20 s, then 10 s windows with crossfades)
* ``one-pass``     baseline: one bare features.enhance_waveform call over the whole input (memory grows
                   with the input length)
* ``official-4s``  baseline: the official ClearerVoice long-input strategy, 4 s windows with a 3 s stride,
                   0.5 s dropped at each inner edge, hard cuts (used by them only above 20 s; run here at
                   every length for comparison)
* ``enhancer-bf16`` the Enhancer with ``precision="bfloat16"`` (the network's matrix products in bfloat16);
                   the case also reports how far below the float32 Enhancer's output their difference lies
                   (``diff dB``; bench/precision.py measures it with trained weights on real test files)

Families (``--families``). The model families on ONE core (torch.set_num_threads(1)), each through the
class a user runs: the shipped default enhancement model (``default``: full band at 48 kHz, a 16 kHz
MossFormer2-SE core and upper-band gains, its trained weights; the baseline of the ratios), the previous default
(``default-v1``: that 16 kHz MossFormer2-SE alone), and the official-size networks FRCRN_SE_16K (``frcrn-se-16k``),
MossFormerGAN_SE_16K (``mossformergan-se-16k``) through the Enhancer (one pass up to 20 s; MossFormerGAN up
to 10 s, then 10 s windows) and MossFormer2_SS_16K (``mossformer2-ss-16k``, 2 talkers) through the Separator
(one pass up to 2 s, then 4 s windows with a 3 s stride: 4 s takes 1 window, 10 s 3). At 4 s and 10 s by
default: MossFormerGAN's attention is quadratic in the number of STFT frames (160 per second, the whole input
in one pass up to 10 s), so its cost per second grows with the length; the two lengths show by how much.
Reported per case: wall time, RTF, peak-RSS increase over the loaded model, parameters and weight size
(float32 tensor bytes, what model.safetensors holds). Every case also reports the FLOPs of one run (matrix
products and convolutions, counted by ``torch.utils.flop_counter`` in an extra untimed run) over its CPU time, as
a fraction of the float32 matmul throughput measured in the same process with the same threads (printed
for the methods suite).

Models have RANDOM weights (seeded; the shipped default model excepted): the cost of a forward pass does
not depend on the values, so the timings hold for trained weights; the audio they produce is meaningless.
Input: synthetic noisy speech-like signal at the model's rate (no resampling). Results are printed and written to
bench/out/enhance.json (methods) and bench/out/enhance-families.json (families).

    python bench/enhance.py                       # both suites (~3 min methods on 2 idle cores + ~12 min families)
    python bench/enhance.py --quick               # small config at 10 s; families at 4 s, one run each (~2 min)
    python bench/enhance.py --suite methods --configs mossformer2-se-48k --durations 10 60 300
    python bench/enhance.py --suite families --family-durations 4 10 30

Before/after (``--baseline-rev REV``, methods suite): every case also runs with the ``steadyvoice`` package of
git revision REV (extracted to a temporary directory and put first on the worker's PYTHONPATH), right before
the working tree's run, and the ratios now/REV are printed: wall and CPU time of the run, peak-RSS increase,
and the model's load time (``--configs`` also takes a model directory: load_pretrained is then timed).

    python bench/enhance.py --suite methods --baseline-rev HEAD --configs MODEL_DIR --methods one-pass --threads 1

Side by side with ClearerVoice (``--clearervoice PATH``, methods suite, the official-size MossFormer2-SE 48 kHz
config or a model directory of it): method ``clearervoice`` runs THEIR network code (``MossFormer_MaskNet``
inside their ``TestNet``, imported from PATH = the directory holding their ``clearvoice`` package: a
ClearerVoice-Studio checkout or the unpacked ``clearvoice`` wheel) on the same weights (mapped to their keys),
inside their decode function's structure (one pass up to 20 s, else 4 s windows with a 3 s stride), on our
features and STFT (the same values; their decode function itself needs torchaudio). Their network needs
einops, rotary-embedding-torch and torchinfo importable (PATH may hold them too).

    python bench/enhance.py --suite methods --configs mossformer2-se-48k --methods one-pass enhancer --clearervoice PATH
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("enhancer", "one-pass", "official-4s", "enhancer-bf16")
CLEARERVOICE = "clearervoice"  # their network, with --clearervoice PATH
_CLEARERVOICE_PATH: str | None = None
BASELINE = "one-pass"
DEFAULT_CONFIGS = ("mossformer2-se-48k", "mossformer2-se-48k-small")
SUITES = ("methods", "families")
# Families suite: a registry config name (random weights) or a model directory / shipped model name (its
# weights); the first is the baseline of the ratios. Enhancement models run through the Enhancer,
# separation models through the Separator (the "enhancer" method: the class a user runs).
SHIPPED_DEFAULT = "default"
FAMILIES = (SHIPPED_DEFAULT, "default-v1", "frcrn-se-16k", "mossformergan-se-16k", "mossformer2-ss-16k")
FAMILY_DURATIONS = (4.0, 10.0)
FAMILY_THREADS = 1
OUT_DIR = Path(__file__).resolve().parent / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="registry config names")
    parser.add_argument("--durations", nargs="+", type=float, default=[10.0, 60.0], help="input seconds")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--suite", choices=(*SUITES, "all", "memory", "files"), default="all",
                        help="which suite to run (default: all = methods and families; memory only when asked: "
                             "see bench/enhance_memory.py)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES),
                        help="families suite: 'default', a model directory or a registry config name; the first is "
                             "the baseline of the ratios")
    parser.add_argument("--family-durations", nargs="+", type=float, default=list(FAMILY_DURATIONS),
                        help="families suite: input seconds")
    parser.add_argument("--quick", action="store_true",
                        help="methods: small config, 10 s only; families: 4 s only, one timed run")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (default: torch's choice)")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="methods suite: also run every case with the steadyvoice package of git revision REV "
                             "and print the ratios against it")
    parser.add_argument("--memory-minutes", nargs=2, type=float, default=[1.0, 180.0], metavar=("SHORT", "LONG"),
                        help="memory suite: the two lengths compared (default: 1 and 180 minutes)")
    parser.add_argument("--files-count", type=int, default=1000, help="files suite: number of short files")
    parser.add_argument("--files-seconds", type=float, default=2.0, help="files suite: seconds per short file")
    parser.add_argument("--files-jobs", type=int, nargs="+", default=[2], help="files suite: --jobs values besides 1")
    parser.add_argument("--clearervoice", metavar="PATH",
                        help="methods suite: add method 'clearervoice', their network from PATH (see above)")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "SECONDS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.suite == "files":  # many short files vs one long file through the real command
        from enhance_files import run_files

        return run_files(args.files_count, args.files_seconds, tuple(args.files_jobs))
    if args.suite == "memory":  # peak RSS of a short vs an hours-long file (minutes of CPU, GBs of temp disk)
        from enhance_memory import run_memory

        return run_memory(*args.memory_minutes)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    global _CLEARERVOICE_PATH
    _CLEARERVOICE_PATH = args.clearervoice
    if args.clearervoice and CLEARERVOICE not in args.methods:
        args.methods.append(CLEARERVOICE)
    if args.worker:
        config, seconds, method = args.worker
        print(json.dumps(run_case(config, float(seconds), method, args.repeat)))
        return 0
    if args.quick:
        args.configs, args.durations = [DEFAULT_CONFIGS[1]], [10.0]
    suites = SUITES if args.suite == "all" else (args.suite,)
    if "methods" in suites:
        run_all(args.configs, args.durations, args.methods, args.threads, args.repeat, args.baseline_rev)
    if "families" in suites:
        if "methods" in suites:
            print()
        durations = [min(args.family_durations)] if args.quick else args.family_durations
        run_families(args.families, durations, 1 if args.quick else args.repeat)
    return 0


# ---------------------------------------------------------------------------------------------------
# Parent: one subprocess per case, then a table with ratios against the baseline
# ---------------------------------------------------------------------------------------------------


def run_all(configs: list[str], durations: list[float], methods: list[str], threads: int, repeat: int,
            baseline_rev: str | None = None) -> int:
    import torch

    print(f"CPU benchmark, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; fastest of {repeat} runs per case; "
          "RANDOM-WEIGHT models (timing only); input at the model's rate")
    with tempfile.TemporaryDirectory(prefix="steadyvoice-baseline-") as tmp:
        baseline_src = _extract_package(baseline_rev, tmp) if baseline_rev else None
        results, baselines = [], []
        for config in configs:
            for seconds in durations:
                for method in methods:
                    if baseline_src:
                        print(f"  [{baseline_rev}]", end="")
                        baselines.append(_run_and_print(config, seconds, method, threads, repeat, baseline_src))
                    results.append(_run_and_print(config, seconds, method, threads, repeat))
    _print_ratios(results, methods)
    if baseline_src:
        _print_revision_ratios(results, baselines, baseline_rev)
    _write(results, "enhance.json")
    return 0


def _extract_package(rev: str, into: str) -> str:
    """The steadyvoice package of git revision ``rev``, extracted under ``into``; returns the import root."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "steadyvoice"], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"--baseline-rev {rev}: git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def _print_revision_ratios(results: list[dict], baselines: list[dict], rev: str) -> None:
    print(f"\nratios against revision {rev} measured right before each case (now / {rev}):")
    for r, b in zip(results, baselines):
        print(f"  {r['config']:28s} {r['seconds']:6.0f} s  {r['method']:12s} wall x{r['wall_s'] / b['wall_s']:.2f}  "
              f"cpu x{r['cpu_s'] / b['cpu_s']:.2f}  memory x{_ratio(r['peak_increase_mb'], b['peak_increase_mb']):.2f}  "
              f"load x{r['load_s'] / b['load_s']:.2f}  (load {b['load_s']:.2f} s -> {r['load_s']:.2f} s, "
              f"RSS after load {b['rss_loaded_mb']:.0f} -> {r['rss_loaded_mb']:.0f} MB)")


def run_families(families: list[str], durations: list[float], repeat: int) -> int:
    """Each family through the Enhancer / Separator on FAMILY_THREADS core(s); ratios against the first."""
    import torch

    print(f"Model families on {FAMILY_THREADS} core (torch.set_num_threads({FAMILY_THREADS})), "
          f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"fastest of {repeat} run(s) per case; "
          f"'{SHIPPED_DEFAULT}' = the shipped model (trained weights), registry names = RANDOM weights "
          "(timing only); Enhancer for enhancement, Separator for separation")
    results = [_run_and_print(family, seconds, "enhancer", FAMILY_THREADS, repeat)
               for family in families for seconds in durations]
    base = {r["seconds"]: r for r in results if r["config"] == families[0]}
    print(f"\nratios against {families[0]} at the same length (time, peak-RSS increase, parameters, weights):")
    for r in results:
        b = base.get(r["seconds"])
        if r["config"] == families[0] or b is None:
            continue
        print(f"  {r['config']:28s} {r['seconds']:6.0f} s  time x{r['wall_s'] / b['wall_s']:.2f}  "
              f"memory x{_ratio(r['peak_increase_mb'], b['peak_increase_mb']):.2f}  "
              f"parameters x{r['parameters'] / b['parameters']:.2f}  "
              f"weights x{r['weights_mb'] / b['weights_mb']:.2f}")
    by_family = {}
    for r in results:
        by_family.setdefault(r["config"], []).append(r)
    growth = [(f, min(rs, key=lambda r: r["seconds"]), max(rs, key=lambda r: r["seconds"]))
              for f, rs in by_family.items() if len(rs) > 1]
    if growth:
        print("cost per second of audio, longest against shortest length (1.00 = linear in the length):")
        for family, short, long in growth:
            print(f"  {family:28s} {long['seconds']:.0f} s / {short['seconds']:.0f} s  "
                  f"RTF x{long['rtf'] / short['rtf']:.2f}  "
                  f"memory x{_ratio(long['peak_increase_mb'], short['peak_increase_mb']):.2f}")
    _write(results, "enhance-families.json")
    return 0


def _run_and_print(config: str, seconds: float, method: str, threads: int, repeat: int,
                   package_root: str | None = None) -> dict:
    result = _run_worker(config, seconds, method, threads, repeat, package_root)
    print(f"  {config:28s} {seconds:6.0f} s  {method:12s} "
          f"{result['wall_s']:7.2f} s (cpu {result['cpu_s']:.2f} s)  RTF {result['rtf']:.3f}  peak RSS {result['peak_rss_mb']:7.0f} MB "
          f"(+{result['peak_increase_mb']:.0f} MB over the loaded model)  {result['parameters'] / 1e6:.2f} M params  "
          f"{result['weights_mb']:.1f} MB weights  {result['windows'] or '-'} window(s)"
          + (f"  diff {result['diff_db']:.1f} dB below float32" if result.get("diff_db") is not None else ""),
          flush=True)
    return result


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0 else float("nan")


def _write(results: list[dict], name: str) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {OUT_DIR / name}")


def _run_worker(config: str, seconds: float, method: str, threads: int, repeat: int,
                package_root: str | None = None) -> dict:
    """One case in a fresh process; ``package_root`` (a directory holding another steadyvoice) goes first on
    its PYTHONPATH."""
    env = dict(os.environ)
    if package_root:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    extra = ["--clearervoice", _CLEARERVOICE_PATH] if _CLEARERVOICE_PATH else []
    proc = subprocess.run([sys.executable, __file__, "--worker", config, str(seconds), method,
                           "--threads", str(threads), "--repeat", str(repeat), *extra], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"benchmark case {config} {seconds} s {method} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_ratios(results: list[dict], methods: list[str]) -> None:
    if BASELINE in methods:
        print(f"\nratios against the {BASELINE} baseline measured above (time, peak-RSS increase):")
        base = {(r["config"], r["seconds"]): r for r in results if r["method"] == BASELINE}
        for r in results:
            b = base.get((r["config"], r["seconds"]))
            if r["method"] == BASELINE or b is None:
                continue
            mem = _ratio(r["peak_increase_mb"], b["peak_increase_mb"])
            print(f"  {r['config']:28s} {r['seconds']:6.0f} s  {r['method']:12s} time x{r['wall_s'] / b['wall_s']:.2f}  "
                  f"memory x{mem:.2f}")
    if CLEARERVOICE in methods:
        print(f"\nratios against {CLEARERVOICE} (their network, float32) measured above: time (wall, CPU)")
        theirs = {(r["config"], r["seconds"]): r for r in results if r["method"] == CLEARERVOICE}
        for r in results:
            t = theirs.get((r["config"], r["seconds"]))
            if r["method"] != CLEARERVOICE and t is not None:
                print(f"  {r['config']:28s} {r['seconds']:6.0f} s  {r['method']:14s} wall x{r['wall_s'] / t['wall_s']:.2f}  "
                      f"cpu x{r['cpu_s'] / t['cpu_s']:.2f}")
    print("\nfraction of this CPU's float32 matmul throughput (measured in each case's process, same threads) that "
          "each case achieves: FLOPs of matrix products and convolutions (torch.utils.flop_counter) / CPU time:")
    for r in results:
        print(f"  {r['config']:28s} {r['seconds']:6.0f} s  {r['method']:12s} {r['flops'] / 1e9:8.1f} GFLOP  "
              f"{r['flops'] / r['cpu_s'] / 1e9:6.1f} GFLOP/s of {r['matmul_flops_per_s'] / 1e9:.1f}: "
              f"{100 * r['matmul_fraction']:.0f} %")


# ---------------------------------------------------------------------------------------------------
# Worker: one case in a fresh process
# ---------------------------------------------------------------------------------------------------


def run_case(config: str, seconds: float, method: str, repeat: int) -> dict:
    import numpy as np
    import torch

    from steadyvoice.models import count_parameters

    start = time.perf_counter()
    model, cfg, weights = _load(config)
    load_s = time.perf_counter() - start
    rss_loaded = _proc_status_mb("VmRSS")
    wave = _input(seconds, cfg.sample_rate)
    run, runner = _method(method, model, cfg)
    run(wave[: cfg.sample_rate])  # warm-up on 1 s (allocator, kernels)
    rss_before = _reset_peak_and_read_rss_mb()
    wall = cpu = float("inf")
    for _ in range(max(1, repeat)):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = run(wave)
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
        assert out.shape[-1] == wave.shape[-1] and np.isfinite(out).all()  # separation: (S, N)
    increase = _high_water_mb() - rss_before
    diff_db = None
    if method == "enhancer-bf16":  # how far below the float32 output the difference lies (untimed)
        from steadyvoice.data.mixing import snr_db

        reference = _method("enhancer", model, cfg)[0](wave).astype(np.float64)
        diff_db = snr_db(reference, out - reference)
    flops = _count_flops(run, wave)  # matrix products and convolutions of one run (elementwise work not counted)
    matmul = _matmul_flops_per_second()
    return {"flops": flops, "matmul_flops_per_s": matmul, "matmul_fraction": flops / cpu / matmul, "diff_db": diff_db,
            "config": config, "architecture": type(cfg).__name__, "seconds": seconds, "method": method,
            "wall_s": wall, "cpu_s": cpu, "load_s": load_s, "rss_loaded_mb": rss_loaded,
            "rtf": wall / seconds, "peak_rss_mb": _peak_rss_mb(), "peak_increase_mb": increase,
            "threads": torch.get_num_threads(), "repeat": repeat, "load_average": os.getloadavg()[0],
            "parameters": count_parameters(model),
            "weights_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20,
            "weights": weights, "windows": runner.window_count(len(wave), cfg.sample_rate) if runner else None}


def _count_flops(run, wave) -> float:
    """FLOPs of one untimed run, as torch.utils.flop_counter counts them (matrix products, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run(wave)
    return float(counter.get_total_flops())


def _matmul_flops_per_second(n: int = 2048, runs: int = 5) -> float:
    """What this CPU does at float32 matrix products with this process's threads: the best of ``runs``
    (n x n) @ (n x n) products, 2 n^3 FLOPs each, timed in CPU seconds like the case itself."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * n**3 / best


def _load(config: str):
    """(model in eval mode, cfg, where its weights come from): a registry config name -> random weights
    (seeded); 'default' or a model directory -> its weights."""
    import torch

    from steadyvoice.models import CONFIGS, build_model, get_config, load_pretrained

    if config in CONFIGS:
        torch.manual_seed(0)
        cfg = get_config(config)
        return build_model(cfg).eval(), cfg, "random (seeded)"
    from steadyvoice.inference import _model_dir_for  # the Enhancer's resolution of 'default' / directories

    model_dir = _model_dir_for(config)
    model, cfg = load_pretrained(model_dir)
    return model, cfg, f"trained ({model_dir})"


def _method(method: str, model, cfg):
    """(wave -> output, the Enhancer / Separator running it or None)."""
    import numpy as np
    import torch

    from steadyvoice.inference import Enhancer
    from steadyvoice.models import architecture_of
    from steadyvoice.pipelines import one_pass as pipeline
    from steadyvoice.separation import Separator

    network = pipeline(cfg)  # the architecture's one-pass path (features.enhance_waveform for MossFormer2-SE)

    @torch.no_grad()
    def one_pass(wave: np.ndarray) -> np.ndarray:
        return network(model, torch.from_numpy(wave)[None], cfg)[0].numpy()

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
        runner = (Separator if architecture_of(cfg).task == "separation" else Enhancer)(model, cfg)
        return (lambda wave: runner(wave, cfg.sample_rate)), runner
    if method == "enhancer-bf16":
        runner = Enhancer(model, cfg, precision="bfloat16")
        return (lambda wave: runner(wave, cfg.sample_rate)), runner
    if architecture_of(cfg).task != "enhancement":
        raise SystemExit(f"method {method} is for enhancement models; use --methods enhancer for {type(cfg).__name__}")
    if method == "one-pass":
        return one_pass, None
    if method == CLEARERVOICE:  # their decode: one pass up to 20 s (their one_time_decode_length), else 4 s windows
        model = _clearervoice_network(model, cfg)  # one_pass and official_4s now run their network
        return (lambda wave: one_pass(wave) if len(wave) <= 20 * cfg.sample_rate else official_4s(wave)), None
    return official_4s, None


def _clearervoice_network(model, cfg):
    """ClearerVoice's MossFormer2_SE_48K network (their code, from --clearervoice PATH) carrying ``model``'s
    weights, as a features (B, T, 180) -> mask (B, T, 961) module."""
    import types

    import torch

    from steadyvoice.models import MossFormer2SEConfig, get_config
    from steadyvoice.models.clearervoice import ours_to_official

    if type(cfg) is not MossFormer2SEConfig or cfg != get_config("mossformer2-se-48k"):
        raise SystemExit("--clearervoice: their TestNet is the official-size MossFormer2-SE 48 kHz network only "
                         "(config mossformer2-se-48k or a model directory of it)")
    root = Path(_CLEARERVOICE_PATH).resolve()
    if not (root / "clearvoice" / "models" / "mossformer2_se").is_dir():
        raise SystemExit(f"--clearervoice {root}: no clearvoice/models/mossformer2_se in it (give the directory "
                         "holding their clearvoice package)")
    sys.path.insert(0, str(root))
    # Their package __init__ imports their whole toolkit (model downloads, audio I/O); only the network is needed.
    package = types.ModuleType("clearvoice")
    package.__path__ = [str(root / "clearvoice")]
    sys.modules["clearvoice"] = package
    try:
        from clearvoice.models.mossformer2_se.mossformer2_se_wrapper import TestNet
    except ImportError as exc:
        raise SystemExit(f"--clearervoice: cannot import their network ({exc}); it needs einops, "
                         "rotary-embedding-torch and torchinfo") from None

    class Theirs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TestNet()

        def forward(self, features):
            return self.net(features)[-1]  # their TestNet returns [mask]

    theirs = Theirs().eval()
    theirs.net.load_state_dict(ours_to_official(model.state_dict(), cfg))
    return theirs


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
