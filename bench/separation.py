"""Two-talker separation on the corpus's held-out test split: SI-SDR and SI-SDRi of a separation model.

Regenerates the separation figures from scratch:

1. corpus: ``--corpus DIR`` (default bench/out/quality/corpus, the one bench/quality.py uses; built with
   ``steadyvoice corpus DIR --hours 1 --seed 0`` if missing). Only its TEST split is read: its speakers
   (real recordings and text-to-speech voices) are never seen in training or validation.
2. a fixed set of ``--count`` two-talker mixtures of ``--seconds`` each (default 100 x 4 s) is built from the
   test split's clean files (manifest.json "files" records with split "test", kind "clean"; the speaker label
   is the manifest's "speaker", real vs TTS its "source": TTS sources are named "tts:..."). Mixture i is a
   pure function of (--seed, i), drawn from ``numpy.random.default_rng([seed, i])``, so a smaller --count is
   a prefix of a larger one. Its design cell is fixed by i, so every bucket is filled evenly:

   * overlap ratio r = OVERLAPS[i % 3] = 100 %, 66.7 %, 33.3 %. Each talker speaks over one segment of
     A = L (1 + r) / 2 samples of the L-sample mixture: talker 1 over [0, A), talker 2 over [L - A, L), so the
     segments overlap by 2A - L = r L samples and together cover the mixture (r is overlap / mixture length);
   * level difference d = level(talker 2) - level(talker 1), |d| uniform in the third ((i // 3) % 3) of
     [0, --max-level-db] (default 5 dB, so |d| in 0-1.7, 1.7-3.3, 3.3-5 dB), sign drawn (+/- equally likely);
   * pair of sources: KINDS[(i // 9) % 3] = real + real, real + TTS (which one is talker 1 drawn), TTS + TTS;
     a kind the corpus cannot fill (fewer than two real speakers, ...) is left out of the cycle;
   * speakers: talker 1 uniform over the speakers of its kind, talker 2 uniform over the OTHER speakers of
     its kind (never the same speaker twice in a mixture);
   * each talker's segment: that speaker's test files in a drawn order (cycled when the speaker has too
     little speech), each faded in and out over 5 ms and joined end to end until the segment is covered,
     then a uniformly drawn crop of A samples; scaled to an RMS of -25 dBFS over its segment (the training
     recipe's data.speech_level_db) plus d for talker 2; placed in a silent L-sample track (the reference);
   * mixture = the sum of the two tracks; no noise, no reverberation (the conditions of the separation
     recipe); if its peak passes 0.99 the mixture and both references are scaled down together.
3. each mixture is separated with ``Separator.from_pretrained(--model)`` (torch limited to ONE thread per
   process, so the real-time factor is that of one core) and scored with ``steadyvoice.eval``:
   permutation-resolved SI-SDR of the two outputs against the two references (``pit_si_sdr``), the
   unprocessed mixture's SI-SDR against each reference (the baseline, in the same run), and
   SI-SDRi = SI-SDR(output) - SI-SDR(mixture) per talker. The row of a mixture holds the means over its two
   talkers.
4. printed: a Markdown table of means over mixtures (mixture SI-SDR, separated SI-SDR, SI-SDRi, median
   SI-SDRi), overall, per overlap bucket, per |level difference| bucket, per source pair (the real + real
   row is the real-recordings-only figure) and for the louder / quieter talker of each mixture; the speech
   overlap measured on the references (20 ms frames within 30 dB of the talker's loudest frame; frames where
   both talk / frames where any talks: pauses inside the segments make it lower than the constructed
   ratio); the real-time factor (wall-clock and CPU time of the Separator calls / seconds of audio; a first
   untimed call warms up). ``--json`` and ``--csv`` write the report and one row per mixture; ``--audio DIR``
   writes every mixture, reference and output as wav (keep it out of git, e.g. under bench/out/).

Exit code 0; 1 if some mixture could not be scored (its row says why); 2 on a usage error (no corpus, no
separation model, a corpus with fewer than two test speakers, ...).

    python bench/separation.py --corpus corpus --model models/sep --count 100
    python bench/separation.py --corpus corpus --model models/sep --count 30 \
        --json bench/out/separation.json --csv bench/out/separation.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from steadyvoice.errors import AudioError, DataError, SteadyVoiceError

DEFAULT_CORPUS = Path(__file__).resolve().parent / "out" / "quality" / "corpus"  # bench/quality.py's
OVERLAPS = (1.0, 2.0 / 3.0, 1.0 / 3.0)
KINDS = ("real+real", "real+tts", "tts+tts")
KIND_LABELS = {"real+real": "real + real (real recordings only)", "real+tts": "real + TTS", "tts+tts": "TTS + TTS"}
SPEECH_LEVEL_DB = -25.0  # RMS of each talker over its segment, as data.speech_level_db of the recipes
MAX_PEAK = 0.99
FADE_SECONDS = 0.005  # at both ends of every file joined into a segment (no click at the joins)
FRAME_SECONDS = 0.02  # measured speech overlap: frame length and activity threshold below the loudest frame
ACTIVE_DB = 30.0


# ---------------------------------------------------------------------------------------------------
# Test split
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanFile:
    path: str  # relative to the corpus
    speaker: str
    real: bool
    frames: int


def test_speech(corpus: Path) -> tuple[list[CleanFile], int]:
    """The test split's clean files (sorted by path) and their sample rate, from the corpus manifest."""
    from steadyvoice.audio import info

    manifest_path = corpus / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{corpus}: not a corpus (no manifest.json); build one with "
                        f"`steadyvoice corpus {corpus} --hours 1 --seed 0` or pass another --corpus") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: cannot read ({exc})") from None
    records = sorted((r for r in manifest.get("files", []) if r.get("split") == "test" and r.get("kind") == "clean"),
                     key=lambda r: r["path"])
    files, rates = [], set()
    for r in records:
        if r.get("speaker") is None or r.get("source") is None:
            raise DataError(f"{manifest_path}: {r.get('path')} has no speaker or source")
        header = info(corpus / r["path"])  # AudioError names a missing file
        if header.channels != 1:
            raise DataError(f"{corpus / r['path']}: {header.channels} channels; corpus speech is mono")
        rates.add(header.sample_rate)
        files.append(CleanFile(r["path"], str(r["speaker"]), not str(r["source"]).startswith("tts:"), header.frames))
    if len({f.speaker for f in files}) < 2:
        raise DataError(f"{manifest_path}: the test split needs clean speech of at least two speakers, "
                        f"it has {len({f.speaker for f in files})}")
    if len(rates) != 1:
        raise DataError(f"{corpus}: test files at several sample rates ({sorted(rates)})")
    return files, rates.pop()


def ensure_corpus(given: Path | None) -> Path:
    """--corpus, or bench/quality.py's default corpus (built with `steadyvoice corpus` if missing)."""
    if given is not None:
        return given
    if not (DEFAULT_CORPUS / "manifest.json").is_file():
        command = [sys.executable, "-m", "steadyvoice", "corpus", str(DEFAULT_CORPUS), "--hours", "1", "--seed", "0"]
        print("building the corpus: " + " ".join(command[2:]), flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            raise DataError(f"`{' '.join(command[2:])}` failed (its messages are above)")
    return DEFAULT_CORPUS


# ---------------------------------------------------------------------------------------------------
# Mixture plan (a pure function of seed and index) and rendering
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TalkerSpec:
    speaker: str
    real: bool
    files: tuple[str, ...]  # joined end to end, in this order
    crop: int  # first sample of the segment in the joined files
    start: int  # first sample of the segment in the mixture
    length: int  # samples of the segment
    level_db: float  # RMS over the segment, dBFS


@dataclass(frozen=True)
class MixtureSpec:
    index: int
    name: str
    frames: int
    sample_rate: int
    overlap_target: float  # the design's ratio, one of OVERLAPS
    overlap: float  # as constructed: samples where both segments lie / mixture samples (within 1/frames)
    level_diff_db: float  # talker 2 - talker 1
    kind: str
    talkers: tuple[TalkerSpec, TalkerSpec]


def available_kinds(files: list[CleanFile]) -> list[str]:
    real = {f.speaker for f in files if f.real}
    tts = {f.speaker for f in files if not f.real}
    possible = {"real+real": len(real) >= 2, "real+tts": bool(real) and bool(tts), "tts+tts": len(tts) >= 2}
    kinds = [k for k in KINDS if possible[k]]
    if not kinds:  # only reached when a speaker is both real and TTS: impossible with corpus manifests
        raise DataError("the test split cannot make a pair of two different speakers")
    return kinds


def level_buckets(max_level_db: float) -> list[tuple[float, float]]:
    return [(max_level_db * k / 3, max_level_db * (k + 1) / 3) for k in range(3)]


def plan_mixtures(files: list[CleanFile], sample_rate: int, count: int, seed: int, seconds: float = 4.0,
                  max_level_db: float = 5.0) -> list[MixtureSpec]:
    """The ``count`` mixtures of the module docstring; mixture i depends only on (seed, i) and the files."""
    if count < 1:
        raise DataError(f"--count must be at least 1, not {count}")
    if not seconds > 0:
        raise DataError(f"--seconds must be positive, not {seconds}")
    if not max_level_db >= 0:
        raise DataError(f"--max-level-db must be 0 or more, not {max_level_db}")
    frames = round(seconds * sample_rate)
    by_speaker: dict[str, list[CleanFile]] = {}
    for f in files:
        by_speaker.setdefault(f.speaker, []).append(f)
    speakers = {True: sorted(s for s, fs in by_speaker.items() if fs[0].real),
                False: sorted(s for s, fs in by_speaker.items() if not fs[0].real)}
    kinds = available_kinds(files)
    buckets = level_buckets(max_level_db)
    mixtures = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        overlap = OVERLAPS[i % len(OVERLAPS)]
        low, high = buckets[(i // len(OVERLAPS)) % len(buckets)]
        level = float(rng.uniform(low, high)) * (1.0 if rng.random() < 0.5 else -1.0)
        kind = kinds[(i // (len(OVERLAPS) * len(buckets))) % len(kinds)]
        first_real, second_real = {"real+real": (True, True), "tts+tts": (False, False)}.get(kind, (True, False))
        if kind == "real+tts" and rng.random() < 0.5:
            first_real, second_real = second_real, first_real
        one = speakers[first_real][int(rng.integers(len(speakers[first_real])))]
        others = [s for s in speakers[second_real] if s != one]
        two = others[int(rng.integers(len(others)))]
        segment = round(frames * (1.0 + overlap) / 2.0)
        talkers = (_talker(one, by_speaker[one], segment, 0, SPEECH_LEVEL_DB, rng),
                   _talker(two, by_speaker[two], segment, frames - segment, SPEECH_LEVEL_DB + level, rng))
        mixtures.append(MixtureSpec(i, f"mix{i:04d}", frames, sample_rate, overlap, (2 * segment - frames) / frames,
                                    level, kind, talkers))
    return mixtures


def _talker(speaker: str, pool: list[CleanFile], length: int, start: int, level_db: float,
            rng: np.random.Generator) -> TalkerSpec:
    order = rng.permutation(len(pool))
    chosen, total = [], 0
    while total < length:
        f = pool[order[len(chosen) % len(pool)]]
        chosen.append(f.path)
        total += f.frames
    crop = int(rng.integers(0, total - length + 1))
    return TalkerSpec(speaker, pool[0].real, tuple(chosen), crop, start, length, level_db)


class AudioCache:
    """Clean files read once (float64, faded at both ends)."""

    def __init__(self, corpus: Path, sample_rate: int):
        self.corpus, self.sample_rate = corpus, sample_rate
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, path: str) -> np.ndarray:
        if path not in self.cache:
            from steadyvoice.audio import read_audio

            x, sr = read_audio(self.corpus / path)  # (N, 1)
            if sr != self.sample_rate:
                raise DataError(f"{self.corpus / path}: {sr} Hz, not the split's {self.sample_rate} Hz")
            x = x[:, 0].astype(np.float64)
            fade = min(round(FADE_SECONDS * sr), x.size // 2)
            if fade:
                ramp = (np.arange(fade) + 0.5) / fade  # never exactly 0: the segment keeps its extent
                x[:fade] *= ramp
                x[x.size - fade:] *= ramp[::-1]
            self.cache[path] = x
        return self.cache[path]


def render(spec: MixtureSpec, audio: AudioCache) -> tuple[np.ndarray, np.ndarray]:
    """mixture (L,) float32 and references (2, L) float32 of ``spec`` (mixture == references.sum(0))."""
    references = np.zeros((2, spec.frames))
    for k, t in enumerate(spec.talkers):
        joined = np.concatenate([audio(p) for p in t.files])
        segment = joined[t.crop : t.crop + t.length]
        rms = math.sqrt(float(np.mean(segment ** 2)))
        if rms == 0.0:
            raise DataError(f"{spec.name}: the segment of {t.speaker} from {', '.join(t.files)} is silent")
        references[k, t.start : t.start + t.length] = segment * (10.0 ** (t.level_db / 20.0) / rms)
    mixture = references.sum(0)
    peak = float(np.abs(mixture).max())
    if peak > MAX_PEAK:
        references *= MAX_PEAK / peak
    references = references.astype(np.float32)
    return references.sum(0, dtype=np.float32), references


def speech_overlap(references: np.ndarray, sample_rate: int) -> float:
    """Frames where both talkers are active / frames where any is (see the module docstring)."""
    n = round(FRAME_SECONDS * sample_rate)
    frames = references.shape[1] // n
    energy = (references[:, : frames * n].astype(np.float64).reshape(2, frames, n) ** 2).mean(-1)  # (2, F)
    floor = energy.max(1, keepdims=True) * 10.0 ** (-ACTIVE_DB / 10.0)
    active = energy > np.maximum(floor, 1e-20)
    anyone = active.any(0).sum()
    return float(active.all(0).sum() / anyone) if anyone else 0.0


# ---------------------------------------------------------------------------------------------------
# Separation and scoring
# ---------------------------------------------------------------------------------------------------


def score_mixture(mixture: np.ndarray, references: np.ndarray, estimates: np.ndarray) -> dict:
    """Permutation-resolved SI-SDR of the estimates (2, L), the mixture's SI-SDR against each reference,
    SI-SDRi per talker; the means over talkers."""
    from steadyvoice.eval import si_sdr
    from steadyvoice.eval.separation import pit_si_sdr

    separated, order = pit_si_sdr(estimates, references)
    unprocessed = np.array([si_sdr(mixture, r) for r in references])
    improvement = separated - unprocessed
    return {"order": [int(e) for e in order], "si_sdr_talkers": [float(v) for v in separated],
            "mixture_si_sdr_talkers": [float(v) for v in unprocessed],
            "si_sdri_talkers": [float(v) for v in improvement], "si_sdr": float(separated.mean()),
            "mixture_si_sdr": float(unprocessed.mean()), "si_sdri": float(improvement.mean())}


_SEPARATOR = None


def _init_worker(model: str, worker_process: bool = True) -> None:
    """One torch thread per process (one core), the model loaded once per process."""
    import torch

    from steadyvoice.separation import Separator

    global _SEPARATOR
    torch.set_num_threads(1)
    if worker_process:  # cannot be undone: only in the pool's own processes
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work already started in this process
            pass
    _SEPARATOR = Separator.from_pretrained(model, speakers=2)


def _separate_and_score(job: tuple[str, np.ndarray, np.ndarray, int, bool]) -> dict:
    name, mixture, references, sample_rate, keep = job
    separator = _SEPARATOR
    if not getattr(separator, "_bench_warm", False):
        separator(mixture, sample_rate)  # untimed: first-call allocations and lazy initialisation
        separator._bench_warm = True
    wall, cpu = time.perf_counter(), time.process_time()
    estimates = separator(mixture, sample_rate)  # (2, L)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"name": name, "status": "ok", "error": "", "seconds_wall": wall, "seconds_cpu": cpu}
    try:
        row.update(score_mixture(mixture, references, estimates))
    except AudioError as exc:  # e.g. a silent output
        row.update(status="error", error=f"{name}: {exc}")
    if keep:
        row["estimates"] = estimates
    return row


def run_separation(model: str, jobs: list[tuple], workers: int) -> list[dict]:
    """Rows in job order; ``workers`` > 1 spreads the mixtures over that many processes (one thread each)."""
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            _init_worker(model, worker_process=False)
            return [_separate_and_score(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)  # this process (a caller, a test session) gets its threads back
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(model,)) as pool:
        return list(pool.map(_separate_and_score, jobs))


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "std": None, "count": 0}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "count": int(a.size)}


def _group(key: str, label: str, rows: list[dict], talker: int | None = None) -> dict:
    """Stats over ``rows`` (mixtures); with ``talker`` = index into each row's "louder_quieter" pair, over
    that talker of every mixture."""
    def values(field: str) -> list[float]:
        if talker is None:
            return [r[field] for r in rows]
        return [r[f"{field}_talkers"][r["louder_quieter"][talker]] for r in rows]

    return {"key": key, "label": label, "mixtures": len(rows), "mixture_si_sdr": _stats(values("mixture_si_sdr")),
            "si_sdr": _stats(values("si_sdr")), "si_sdri": _stats(values("si_sdri")),
            "speech_overlap": _stats([r["speech_overlap"] for r in rows])}


def build_report(specs: list[MixtureSpec], rows: list[dict], *, max_level_db: float, info: dict) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    groups = [_group("all", "all mixtures", ok)]
    for r_ in OVERLAPS:
        groups.append(_group(f"overlap_{round(100 * r_)}", f"overlap {100 * r_:.0f} %",
                             [r for r in ok if abs(r["overlap_target"] - r_) < 1e-9]))
    for k, (low, high) in enumerate(level_buckets(max_level_db)):
        last = k == 2
        groups.append(_group(f"level_{k}", f"level difference {low:.1f}-{high:.1f} dB",
                             [r for r in ok if low <= abs(r["level_diff_db"]) and
                              (abs(r["level_diff_db"]) <= high if last else abs(r["level_diff_db"]) < high)]))
    for kind in KINDS:
        members = [r for r in ok if r["kind"] == kind]
        if members or any(s.kind == kind for s in specs):
            groups.append(_group(kind.replace("+", "_"), KIND_LABELS[kind], members))
    groups.append(_group("louder", "louder talker of each mixture", ok, talker=0))
    groups.append(_group("quieter", "quieter talker of each mixture", ok, talker=1))
    seconds = sum(r["seconds"] for r in ok)
    wall = sum(r["seconds_wall"] for r in ok)
    cpu = sum(r["seconds_cpu"] for r in ok)
    rtf = {"audio_seconds": seconds, "wall_seconds": wall, "cpu_seconds": cpu,
           "rtf_wall": wall / seconds if seconds else None, "rtf_cpu": cpu / seconds if seconds else None,
           "torch_threads": 1}
    return {**info, "groups": groups, "rtf": rtf,
            "failures": [{"name": r["name"], "error": r["error"]} for r in rows if r["status"] != "ok"],
            "mixtures": rows}


def format_report(report: dict) -> str:
    c, corpus, model = report["config"], report["corpus"], report["model"]
    lines = [f"Separation of {c['count']} two-talker mixtures of {c['seconds']:g} s (seed {c['seed']}) from the test "
             f"split of {corpus['directory']} ({corpus['speakers']} speakers, {corpus['real_speakers']} of them real "
             f"recordings; {corpus['files']} files); model {model['directory']} ({model['parameters']:,} parameters). "
             "SI-SDR in dB, permutation-resolved; 'mixture' is the unprocessed input scored against each talker "
             "(the SI-SDRi baseline).", "",
             "| mixtures | n | mixture SI-SDR | separated SI-SDR | SI-SDRi | median SI-SDRi | speech overlap |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(stats: dict, fmt: str = "{:.2f}") -> str:
        return "-" if stats["mean"] is None else fmt.format(stats["mean"])

    for g in report["groups"]:
        bold = g["key"] == "all"
        name = f"**{g['label']}**" if bold else g["label"]
        lines.append(f"| {name} | {g['mixtures']} | {cell(g['mixture_si_sdr'])} | {cell(g['si_sdr'])} | "
                     f"{cell(g['si_sdri'], '{:+.2f}')} | "
                     f"{'-' if g['si_sdri']['median'] is None else format(g['si_sdri']['median'], '+.2f')} | "
                     f"{cell(g['speech_overlap'], '{:.0%}')} |")
    rtf = report["rtf"]
    if rtf["rtf_wall"] is not None:
        lines += ["", f"Real-time factor on one core (1 torch thread, {c['jobs']} process(es), warm): "
                      f"{rtf['rtf_wall']:.3f} wall clock, {rtf['rtf_cpu']:.3f} CPU time "
                      f"({rtf['wall_seconds']:.1f} s for {rtf['audio_seconds']:.0f} s of audio)."]
    if report["failures"]:
        lines += ["", f"{len(report['failures'])} mixture(s) not scored:"]
        lines += [f"- {f['error']}" for f in report["failures"]]
    return "\n".join(lines)


CSV_FIELDS = ["name", "status", "kind", "overlap_target", "overlap", "speech_overlap", "level_diff_db", "speaker_1",
              "speaker_2", "files_1", "files_2", "start_2", "segment", "order", "mixture_si_sdr_1", "mixture_si_sdr_2",
              "si_sdr_1", "si_sdr_2", "si_sdri_1", "si_sdri_2", "mixture_si_sdr", "si_sdr", "si_sdri",
              "seconds_wall", "seconds_cpu", "error"]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        cells = {k: r.get(k, "") for k in CSV_FIELDS}
        for k in range(2):
            cells[f"speaker_{k + 1}"] = r["talkers"][k]["speaker"]
            cells[f"files_{k + 1}"] = " ".join(r["talkers"][k]["files"])
            for field in ("mixture_si_sdr", "si_sdr", "si_sdri"):
                values = r.get(f"{field}_talkers")
                cells[f"{field}_{k + 1}"] = "" if values is None else f"{values[k]:.4f}"
        cells["start_2"], cells["segment"] = r["talkers"][1]["start"], r["talkers"][1]["length"]
        cells["order"] = " ".join(f"s{e + 1}" for e in r.get("order", []))
        for field in ("overlap_target", "overlap", "speech_overlap", "level_diff_db", "mixture_si_sdr", "si_sdr",
                      "si_sdri", "seconds_wall", "seconds_cpu"):
            if isinstance(cells[field], float):
                cells[field] = f"{cells[field]:.4f}"
        writer.writerow(cells)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def model_info(model: str) -> dict:
    from steadyvoice.models import load_pretrained
    from steadyvoice.separation import _separation_model_dir

    directory = _separation_model_dir(model)  # ModelError for a missing / non-separation model
    net, cfg = load_pretrained(directory, "cpu")
    from steadyvoice.models import architecture_of

    if architecture_of(cfg).task != "separation":
        raise DataError(f"{model}: an {architecture_of(cfg).task} model, not a separation model")
    if int(cfg.num_spks) != 2:
        raise DataError(f"{model}: separates {cfg.num_spks} talkers; this benchmark mixes two")
    try:
        source = json.loads((directory / "config.json").read_text()).get("source", {})
    except (OSError, ValueError):
        source = {}
    return {"directory": str(directory.resolve()), "source": source, "sample_rate": int(cfg.sample_rate),
            "parameters": sum(p.numel() for p in net.parameters())}


def evaluate(corpus: Path, model: str, *, count: int = 100, seed: int = 0, seconds: float = 4.0,
             max_level_db: float = 5.0, jobs: int = 1, audio_dir: Path | None = None) -> dict:
    """Plan, render, separate, score: the report (see build_report)."""
    started = time.monotonic()
    info = {"model": model_info(model)}  # before any long step: a wrong --model fails at once
    files, sample_rate = test_speech(corpus)
    specs = plan_mixtures(files, sample_rate, count, seed, seconds, max_level_db)
    cache = AudioCache(corpus, sample_rate)
    rendered = [render(s, cache) for s in specs]
    jobs_list = [(s.name, mix, refs, sample_rate, audio_dir is not None) for s, (mix, refs) in zip(specs, rendered)]
    rows = run_separation(model, jobs_list, jobs)
    for spec, (mix, refs), row in zip(specs, rendered, rows):
        row.update(kind=spec.kind, overlap_target=spec.overlap_target, overlap=spec.overlap,
                   level_diff_db=spec.level_diff_db, seconds=spec.frames / sample_rate,
                   speech_overlap=speech_overlap(refs, sample_rate),
                   talkers=[asdict(t) for t in spec.talkers],
                   louder_quieter=[0, 1] if spec.level_diff_db <= 0 else [1, 0])
        estimates = row.pop("estimates", None)
        if audio_dir is not None:
            from steadyvoice.audio import write_audio

            write_audio(audio_dir / "mixture" / f"{spec.name}.wav", mix, sample_rate, subtype="FLOAT")
            for k in range(2):
                write_audio(audio_dir / "reference" / f"{spec.name}_s{k + 1}.wav", refs[k], sample_rate,
                            subtype="FLOAT")
                write_audio(audio_dir / "separated" / f"{spec.name}_s{k + 1}.wav", estimates[k], sample_rate,
                            subtype="FLOAT")
    info["corpus"] = {"directory": str(corpus), "files": len(files), "speakers": len({f.speaker for f in files}),
                      "real_speakers": len({f.speaker for f in files if f.real}), "sample_rate": sample_rate}
    info["config"] = {"count": count, "seed": seed, "seconds": seconds, "max_level_db": max_level_db,
                      "overlaps": list(OVERLAPS), "kinds": available_kinds(files), "jobs": jobs,
                      "speech_level_db": SPEECH_LEVEL_DB}
    report = build_report(specs, rows, max_level_db=max_level_db, info=info)
    report["total_seconds"] = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help=f"corpus directory (default {DEFAULT_CORPUS}, built if missing)")
    parser.add_argument("--model", required=True, help="separation model directory (model.safetensors + config.json)")
    parser.add_argument("--count", type=int, default=100, help="mixtures (default 100)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each mixture (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixture set (default 0)")
    parser.add_argument("--max-level-db", type=float, default=5.0,
                        help="largest |level difference| between the talkers, dB (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="separation processes, one thread each (default 1)")
    parser.add_argument("--json", type=Path, help="write the report (groups, RTF, every mixture) as JSON")
    parser.add_argument("--csv", type=Path, help="write one row per mixture as CSV")
    parser.add_argument("--audio", type=Path, help="write mixtures, references and outputs as wav under this directory")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    try:
        report = evaluate(ensure_corpus(args.corpus), args.model, count=args.count, seed=args.seed,
                          seconds=args.seconds, max_level_db=args.max_level_db, jobs=args.jobs, audio_dir=args.audio)
    except SteadyVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = format_report(report)
    print(text)
    print(f"\n({report['total_seconds']:.0f} s in all)")
    from steadyvoice.fileio import atomic_write_text

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.csv, csv_text(report["mixtures"]))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
