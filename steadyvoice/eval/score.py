"""Score directories: match files by relative path, score each pair (in parallel), summarise.

A file ``DIR/sub/a.wav`` is matched with ``OTHER/sub/a.<any audio extension>``. For every match the
estimate (and, if a noisy directory is given, the noisy input) is scored against the reference with
:func:`steadyvoice.eval.metrics.score_pair`. Problems with one file never stop the others; they become
a row with ``status == "error"`` and a message naming the file:

- a reference without an estimate (or noisy) file, or the other way round;
- an unreadable or empty file; a silent (all-zero) reference or estimate;
- a different channel count; a length that differs from the reference's by more than
  ``length_tolerance`` seconds (within it, all signals are trimmed to the shortest, with a note);
- a different sample rate is not an error: the estimate is resampled to the reference's rate, with a note.

Rows come back in a fixed order (sorted relative paths) whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steadyvoice.audio import is_audio_path, read_audio, resample
from steadyvoice.errors import AudioError, DataError, SteadyVoiceError, os_failure
from steadyvoice.eval.dnsmos import shared_dnsmos
from steadyvoice.eval.metrics import METRICS, REFERENCE_FREE, metric_columns, parse_metrics, score_pair
from steadyvoice.fileio import atomic_write_text

__all__ = [
    "ScoreResult", "score_directories", "summarize", "format_table", "write_csv", "write_json",
    "DEFAULT_LENGTH_TOLERANCE",
]

DEFAULT_LENGTH_TOLERANCE = 0.1  # seconds: enhancers may drop or pad up to a few STFT hops
ROLES = ("reference", "estimate", "noisy")


@dataclass
class ScoreResult:
    """Per-file rows (deterministic order) and the summary of a directory scoring run."""

    rows: list[dict]
    summary: dict
    columns: list[str]
    has_noisy: bool

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]


@dataclass(frozen=True)
class _Task:
    """One file to score; plain data so that it pickles to worker processes."""

    file: str
    paths: dict  # role -> Path
    metrics: tuple
    length_tolerance: float
    personalized_dnsmos: bool


@dataclass(frozen=True)
class _Match:
    file: str  # relative path, e.g. "sub/a.wav"
    paths: dict  # role -> Path
    duplicates: dict  # role -> [Path, ...] when several files of one directory have this name


def score_directories(
    reference: str | Path,
    estimate: str | Path,
    noisy: str | Path | None = None,
    metrics: Iterable[str] = tuple(METRICS),
    *,
    jobs: int | None = None,
    length_tolerance: float = DEFAULT_LENGTH_TOLERANCE,
    personalized_dnsmos: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> ScoreResult:
    """Score every file of ``estimate`` (and ``noisy``) against its namesake in ``reference``.

    ``jobs``: worker processes (default: min(CPU count, number of files); 1 scores in this process).
    ``on_row`` is called with each row as soon as it and all rows before it are done.
    Raises DataError/ConfigError for unusable arguments (missing or empty directory, unknown metric);
    per-file problems are rows with ``status == "error"``.
    """
    metrics = parse_metrics(metrics)
    if length_tolerance < 0:
        raise DataError(f"the length tolerance must be >= 0 seconds, not {length_tolerance}")
    dirs = {"reference": Path(reference), "estimate": Path(estimate)}
    if noisy is not None:
        dirs["noisy"] = Path(noisy)
    listing = {role: _list_audio(role, d) for role, d in dirs.items()}
    matches = _match(listing)

    rows: list[dict | None] = [None] * len(matches)  # in match order: sorted relative paths
    tasks: list[tuple[int, _Task]] = []
    for i, match in enumerate(matches):
        problem = _match_problem(match, dirs)
        if problem:
            rows[i] = _error_row(match.file, problem)
        else:
            tasks.append((i, _Task(match.file, match.paths, tuple(metrics), float(length_tolerance),
                                   personalized_dnsmos)))
    if jobs is None:
        jobs = min(os.cpu_count() or 1, max(1, len(tasks)))
    if jobs < 1:
        raise DataError(f"--jobs must be at least 1, not {jobs}")

    scored = _run([task for _, task in tasks], jobs)  # rows in task order, as they complete
    for i in range(len(rows)):
        if rows[i] is None:  # the slot of the next task (rows of unmatched files are known already)
            rows[i] = next(scored)
        if on_row is not None:
            on_row(rows[i])

    columns = metric_columns(metrics)
    summary = summarize(rows, columns, has_noisy=noisy is not None)
    summary["directories"] = {role: str(d) for role, d in dirs.items()}
    summary["metrics"] = list(metrics)
    return ScoreResult(rows, summary, columns, noisy is not None)


# --------------------------------------------------------------------------------------------------
# matching files


def _list_audio(role: str, directory: Path) -> dict[str, list[Path]]:
    """key (relative path without extension, '/'-separated) -> audio files with that key."""
    if not directory.exists():
        raise DataError(f"{directory}: {role} directory not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: the {role} directory is a file, not a directory")
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and is_audio_path(path) and not path.name.startswith("."):
            key = path.relative_to(directory).with_suffix("").as_posix()
            found.setdefault(key, []).append(path)
    if not found:
        raise DataError(f"{directory}: the {role} directory holds no audio files (.wav, .flac, ...)")
    return found


def _match(listing: dict[str, dict[str, list[Path]]]) -> list[_Match]:
    """Group files of the same key across roles, sorted by key."""
    matches = []
    for key in sorted(set().union(*listing.values())):
        paths = {role: files[key][0] for role, files in listing.items() if key in files}
        duplicates = {role: files[key] for role, files in listing.items() if len(files.get(key, ())) > 1}
        first = next(paths[role] for role in ROLES if role in paths)
        # Rows are named by the relative path in the first directory that has the file.
        matches.append(_Match(key + first.suffix, paths, duplicates))
    return matches


def _match_problem(match: _Match, dirs: dict[str, Path]) -> str | None:
    """Message for a match that cannot be scored (missing counterpart, ambiguous name), else None."""
    if match.duplicates:
        role, paths = next(iter(match.duplicates.items()))
        names = ", ".join(p.name for p in paths)
        return f"{paths[0].parent}: {names} all match '{match.file}'; keep one {role} file per name"
    missing = [role for role in dirs if role not in match.paths]
    if not missing:
        return None
    present = next(role for role in ROLES if role in match.paths)
    where = "; ".join(f"no {role} file of the same name in {dirs[role]}" for role in missing)
    return f"{match.paths[present]}: {where}"


# --------------------------------------------------------------------------------------------------
# scoring (runs in worker processes)

_WORKER_THREADS: int | None = None  # onnxruntime threads per worker process; None in-process


def _init_worker(threads: int) -> None:
    global _WORKER_THREADS
    _WORKER_THREADS = threads


def _run(tasks: list, jobs: int, score: Callable[[object], dict] | None = None) -> Iterator[dict]:
    """Yield one row per task, in task order: in this process, or in ``jobs`` worker processes.

    ``score``: the module-level function turning one task into a row (default :func:`_score_task`;
    separation scoring passes its own). It must never raise.
    """
    score = score or _score_task
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield score(task)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                 initargs=(1,)) as pool:
            yield from pool.map(score, tasks)  # map keeps the order
    except BrokenProcessPool:
        raise DataError("a scoring worker process died (out of memory or a crash in a metric library); "
                        "rerun with --jobs 1 to see which file causes it") from None


def _score_task(task: _Task) -> dict:
    """Read, align and score one file. Never raises: problems become an error row."""
    try:
        return _score_files(task)
    except SteadyVoiceError as exc:
        return _error_row(task.file, str(exc))
    except Exception as exc:  # a bug or an unexpected library failure: report it, go on with the rest
        return _error_row(task.file, f"{task.paths['estimate']}: unexpected {type(exc).__name__}: {exc} "
                                     "(please report this as a SteadyVoice bug)")


def _score_files(task: _Task) -> dict:
    ref_path = task.paths["reference"]
    ref, sr = read_audio(ref_path)
    intrusive = [m for m in task.metrics if m not in REFERENCE_FREE]
    if intrusive and not np.any(ref):
        raise AudioError(f"{ref_path}: the reference is silent (all samples are zero); "
                         f"{', '.join(intrusive)} are undefined for it")
    notes: list[str] = []
    signals = {}
    for role in ("estimate", "noisy"):
        if role in task.paths:
            signals[role] = _load_like(task.paths[role], role, ref, sr, ref_path, task.length_tolerance, notes)
    # Trim everything to the shortest length (differences are within the tolerance here).
    n = min([ref.shape[0]] + [x.shape[0] for x in signals.values()])
    if any(x.shape[0] != n for x in [ref, *signals.values()]):
        lengths = ", ".join(f"{role} {x.shape[0]}" for role, x in [("reference", ref), *signals.items()])
        notes.append(f"lengths differ ({lengths} samples): trimmed to {n} samples ({n / sr:.3f} s)")
    ref = ref[:n]
    dnsmos = shared_dnsmos(task.personalized_dnsmos, _WORKER_THREADS) if "dnsmos" in task.metrics else None
    scores = {}
    for role, x in signals.items():
        try:
            scores[role] = score_pair(x[:n], ref, sr, task.metrics, dnsmos=dnsmos, est_name=role)
        except SteadyVoiceError as exc:
            raise AudioError(f"{task.paths[role]}: {exc}") from None
    return {"file": task.file, "status": "ok", "error": "", "notes": notes, "sample_rate": sr,
            "seconds": n / sr, **scores}


def _load_like(path: Path, role: str, ref: np.ndarray, sr: int, ref_path: Path, tolerance: float,
               notes: list[str]) -> np.ndarray:
    """Read ``path`` and bring it to the reference's rate; check channels and length."""
    x, x_sr = read_audio(path)
    if x.shape[1] != ref.shape[1]:
        raise AudioError(f"{path}: has {x.shape[1]} channel(s) but the reference {ref_path} has "
                               f"{ref.shape[1]}")
    if x_sr != sr:
        x = resample(x, x_sr, sr)
        notes.append(f"{role} is {x_sr} Hz, the reference {sr} Hz: resampled the {role} to {sr} Hz")
    diff = x.shape[0] - ref.shape[0]
    if abs(diff) > tolerance * sr:
        longer = "longer" if diff > 0 else "shorter"
        raise AudioError(
            f"{path}: {x.shape[0] / sr:.3f} s long, {abs(diff) / sr:.3f} s ({abs(diff)} samples) {longer} "
            f"than the reference {ref_path} ({ref.shape[0] / sr:.3f} s); more than the {tolerance:g} s "
            "tolerance, so it is probably not the same utterance")
    return x


def _error_row(file: str, message: str) -> dict:
    return {"file": file, "status": "error", "error": message, "notes": []}


# --------------------------------------------------------------------------------------------------
# summary, CSV, JSON, table


def summarize(rows: list[dict], columns: list[str], *, has_noisy: bool) -> dict:
    """mean, std (sample, ddof=1) and count per column for estimate, noisy and the improvement."""
    ok = [row for row in rows if row["status"] == "ok"]
    summary: dict = {
        "files": {"total": len(rows), "scored": len(ok), "failed": len(rows) - len(ok)},
        "columns": list(columns),
        "estimate": {c: _stats([row["estimate"][c] for row in ok]) for c in columns},
    }
    if has_noisy:
        summary["noisy"] = {c: _stats([row["noisy"][c] for row in ok]) for c in columns}
        summary["improvement"] = {
            c: _stats([row["estimate"][c] - row["noisy"][c] for row in ok]) for c in columns
        }
    summary["failures"] = [{"file": row["file"], "error": row["error"]} for row in rows if row["status"] != "ok"]
    return summary


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "count": 0}
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "count": int(a.size)}


def metric_table(summary: dict, baseline: str, count_label: str) -> list[str]:
    """Text lines: metric, estimate mean ± std, then the ``baseline`` (noisy input, mixture) and the
    improvement over it when the summary has one, then the count."""
    has_baseline = baseline in summary
    header = ["metric", "estimate"] + ([baseline, "improvement"] if has_baseline else []) + [count_label]
    lines = [header]
    for c in summary["columns"]:
        est = summary["estimate"][c]
        line = [c, _fmt(est)]
        if has_baseline:
            line += [_fmt(summary[baseline][c]), _fmt(summary["improvement"][c], signed=True)]
        line.append(str(est["count"]))
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in lines]


def format_table(summary: dict) -> str:
    """The summary as a text table: metric, estimate mean ± std, noisy, improvement, count."""
    text = metric_table(summary, "noisy", "files")
    files = summary["files"]
    text.append(f"{files['scored']} of {files['total']} files scored" +
                (f", {files['failed']} failed" if files["failed"] else ""))
    return "\n".join(text)


def _fmt(stats: dict, signed: bool = False) -> str:
    if stats["mean"] is None:
        return "-"
    mean = f"{stats['mean']:+.3f}" if signed else f"{stats['mean']:.3f}"
    return f"{mean} ± {stats['std']:.3f}"


def csv_header(columns: list[str], has_noisy: bool) -> list[str]:
    return (["file", "status", "sample_rate", "seconds"] + columns
            + ([f"noisy_{c}" for c in columns] if has_noisy else []) + ["notes", "error"])


def write_csv(path: str | Path, result: ScoreResult) -> None:
    """One line per file: scores of the estimate (and noisy_* of the noisy input), notes, error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(result.columns, result.has_noisy))
    for row in result.rows:
        ok = row["status"] == "ok"
        cells = [row["file"], row["status"], row.get("sample_rate", ""),
                 f"{row['seconds']:.3f}" if ok else ""]
        cells += [_cell(row["estimate"][c]) if ok else "" for c in result.columns]
        if result.has_noisy:
            cells += [_cell(row["noisy"][c]) if ok else "" for c in result.columns]
        cells += ["; ".join(row["notes"]), row["error"]]
        writer.writerow(cells)
    _write_text(path, buf.getvalue())


def write_json(path: str | Path, summary: dict) -> None:
    _write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _cell(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else ""


def _write_text(path: str | Path, text: str) -> None:
    """Atomic text write (steadyvoice.fileio); an OSError becomes a DataError naming the file (exit code 1)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, newline="")
    except OSError as exc:
        raise os_failure(DataError, path, exc) from None
