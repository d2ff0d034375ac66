"""Separation scoring: permutation-resolved SI-SDR per talker, SI-SDRi over the mixture, directories.

```python
scores, order = pit_si_sdr(estimates, references)   # (S, N) or (S, N, C) each -> (S,), (S,)
# scores[s] = si_sdr(estimates[order[s]], references[s]); order maximises the mean over talkers
result = score_separation(ref_dir, est_dir, mix_dir, ["si_sdr", "stoi"], jobs=2)
```

Directory layout (what ``steadyvoice separate`` writes): the mixture ``MIX/<rel>/<stem>.<ext>`` has one
file per talker ``<stem>_s1.<ext>``, ``<stem>_s2.<ext>``, ... under the same relative path, both in the
estimate and in the reference directory. Files are grouped by ``<rel>/<stem>`` (any audio extension);
the talker numbering of the estimates need not follow the references': the order that maximises the
mean SI-SDR over talkers is chosen (exhaustively over the S! orders, as utterance-level PIT does in
training, :func:`steadyvoice.train.losses.pit_si_sdr`). Other metrics (PESQ, STOI, ...) are computed per
talker in that order with :func:`steadyvoice.eval.metrics.score_pair`. With a mixture directory, the
unprocessed mixture is scored against every talker too; SI-SDRi is the estimate's SI-SDR minus the
mixture's, against the same reference.

Problems with one mixture never stop the others: they become a row with ``status == "error"`` naming the
file (a missing or extra talker file, a different talker count in the two directories, a missing
mixture, a length difference beyond the tolerance, an unreadable or silent file).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steadyvoice.audio import read_audio
from steadyvoice.errors import AudioError, DataError, SteadyVoiceError
from steadyvoice.eval import score as _score
from steadyvoice.eval.dnsmos import shared_dnsmos
from steadyvoice.eval.metrics import REFERENCE_FREE, metric_columns, parse_metrics, score_pair, si_sdr
from steadyvoice.eval.score import DEFAULT_LENGTH_TOLERANCE, _error_row, _fmt, _list_audio, _load_like, _stats, metric_table

__all__ = [
    "SeparationResult", "best_order", "format_separation_table", "pit_si_sdr", "score_separation",
    "si_sdr_matrix", "summarize_separation", "write_separation_csv",
]

TALKER_FILE = re.compile(r"^(?P<group>.+)_s(?P<talker>[1-9][0-9]*)$")  # "sub/mix_s2" -> ("sub/mix", 2)
EXHAUSTIVE_MAX_TALKERS = 8  # 8! = 40,320 orders; beyond, the Hungarian algorithm finds the same optimum


# --------------------------------------------------------------------------------------------------
# permutation-invariant SI-SDR on arrays


def si_sdr_matrix(estimates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """SI-SDR (dB) of every estimate against every reference: (S, N[, C]) each -> (S, S) [estimate, talker].

    Multi-channel signals (S, N, C) are scored channel by channel and averaged, as score_pair does.
    """
    est, ref = np.asarray(estimates), np.asarray(references)
    if est.ndim not in (2, 3) or est.shape != ref.shape or est.shape[0] == 0:
        raise AudioError(f"expected estimates and references of the same shape (S, N) or (S, N, C), "
                         f"got {est.shape} and {ref.shape}")
    if est.ndim == 2:
        est, ref = est[:, :, None], ref[:, :, None]
    talkers, channels = est.shape[0], est.shape[2]
    out = np.empty((talkers, talkers))
    for i, j in itertools.product(range(talkers), repeat=2):
        out[i, j] = np.mean([si_sdr(est[i, :, c], ref[j, :, c]) for c in range(channels)])
    return out


def best_order(matrix: np.ndarray) -> np.ndarray:
    """The talker order maximising the mean of ``matrix[order[s], s]`` over talkers s -> (S,) int.

    Exhaustive over the S! orders (ties go to the first in itertools.permutations order, as in
    training); for more than EXHAUSTIVE_MAX_TALKERS talkers, scipy's assignment solver.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    talkers = matrix.shape[0]
    if talkers > EXHAUSTIVE_MAX_TALKERS:
        from scipy.optimize import linear_sum_assignment

        est, ref = linear_sum_assignment(matrix, maximize=True)
        order = np.empty(talkers, dtype=np.int64)
        order[ref] = est
        return order
    orders = np.array(list(itertools.permutations(range(talkers))), dtype=np.int64)  # (P, S)
    scores = matrix[orders, np.arange(talkers)].mean(axis=1)  # (P,): order p gives talker s estimate orders[p, s]
    return orders[int(np.argmax(scores))]


def pit_si_sdr(estimates: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation-resolved SI-SDR: (S, N[, C]) estimates and references -> (per-talker SI-SDR (S,), order (S,)).

    ``order[s]`` is the estimate that matches talker s, chosen to maximise the mean SI-SDR over talkers;
    ``scores[s] = si_sdr(estimates[order[s]], references[s])``.
    """
    matrix = si_sdr_matrix(estimates, references)
    order = best_order(matrix)
    return matrix[order, np.arange(matrix.shape[0])], order


# --------------------------------------------------------------------------------------------------
# directories


@dataclass
class SeparationResult:
    """Per-mixture rows (sorted by relative path) and the summary of a separation scoring run."""

    rows: list[dict]
    summary: dict
    columns: list[str]
    has_mixture: bool

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]

    @property
    def max_talkers(self) -> int:
        return max((row["talkers"] for row in self.rows if row["status"] == "ok"), default=0)


@dataclass(frozen=True)
class _Group:
    """One mixture to score; plain data so that it pickles to worker processes."""

    file: str  # row name: the mixture's relative path, e.g. "sub/m1.wav"
    references: tuple  # Path per talker, _s1 first
    estimates: tuple  # Path per estimate, _s1 first
    mixture: Path | None
    metrics: tuple
    length_tolerance: float
    personalized_dnsmos: bool


def score_separation(
    reference: str | Path,
    estimate: str | Path,
    mixture: str | Path | None = None,
    metrics: Iterable[str] = ("si_sdr",),
    *,
    jobs: int | None = None,
    length_tolerance: float = DEFAULT_LENGTH_TOLERANCE,
    personalized_dnsmos: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> SeparationResult:
    """Score every group of talker files of ``estimate`` against the one of the same stem in ``reference``.

    ``si_sdr`` is always computed (it resolves the talker order) and comes first. ``jobs``: worker
    processes (default: min(CPU count, number of mixtures)). ``on_row`` is called with each row as soon
    as it and all rows before it are done. Raises DataError/ConfigError for unusable arguments; per-mixture
    problems are rows with ``status == "error"``.
    """
    metrics = parse_metrics(["si_sdr", *metrics])
    if length_tolerance < 0:
        raise DataError(f"the length tolerance must be >= 0 seconds, not {length_tolerance}")
    dirs = {"reference": Path(reference), "estimate": Path(estimate)}
    if mixture is not None:
        dirs["mixture"] = Path(mixture)
    listing = {role: _list_audio(role, d) for role, d in dirs.items()}

    # group -> role -> talker number -> [paths]; the mixture directory's files are their own group.
    groups: dict[str, dict[str, dict[int, list[Path]]]] = {}
    strays: dict[str, str] = {}  # key -> message, for files in REF/OUT that are not talker files
    for role, files in listing.items():
        for key, paths in files.items():
            if role == "mixture":
                groups.setdefault(key, {}).setdefault(role, {})[0] = paths
                continue
            m = TALKER_FILE.match(key)
            if m is None:
                strays[key] = (f"{paths[0]}: not a talker file: in the {role} directory of --separation every "
                               f"file is named <mixture>_s1, <mixture>_s2, ... (one per talker)")
            else:
                groups.setdefault(m["group"], {}).setdefault(role, {})[int(m["talker"])] = paths

    keys = sorted(set(groups) | set(strays))
    rows: list[dict | None] = [None] * len(keys)
    tasks: list[_Group] = []
    for i, key in enumerate(keys):
        if key in strays and key not in groups:
            rows[i] = _error_row(_row_name(key, listing), strays[key])
            continue
        problem = strays.get(key) or _group_problem(key, groups[key], dirs)
        name = _row_name(key, listing, groups[key])
        if problem:
            rows[i] = _error_row(name, problem)
            continue
        roles = groups[key]
        tasks.append(_Group(
            name,
            tuple(roles["reference"][k][0] for k in sorted(roles["reference"])),
            tuple(roles["estimate"][k][0] for k in sorted(roles["estimate"])),
            roles["mixture"][0][0] if "mixture" in roles else None,
            tuple(metrics), float(length_tolerance), personalized_dnsmos,
        ))
    if jobs is None:
        jobs = min(os.cpu_count() or 1, max(1, len(tasks)))
    if jobs < 1:
        raise DataError(f"--jobs must be at least 1, not {jobs}")

    scored = _score._run(tasks, jobs, _score_group)  # rows in task order
    for i in range(len(rows)):
        if rows[i] is None:
            rows[i] = next(scored)
        if on_row is not None:
            on_row(rows[i])

    columns = metric_columns(metrics)
    summary = summarize_separation(rows, columns, has_mixture=mixture is not None)
    summary["directories"] = {role: str(d) for role, d in dirs.items()}
    summary["metrics"] = list(metrics)
    return SeparationResult(rows, summary, columns, mixture is not None)


def _row_name(key: str, listing: dict, roles: dict | None = None) -> str:
    """The mixture's relative path: its key plus the extension of the mixture (or of the first talker file)."""
    if roles:
        for role in ("mixture", "reference", "estimate"):
            if role in roles:
                first = roles[role][min(roles[role])][0]
                return key + first.suffix
    for files in listing.values():  # a stray file: its own name
        if key in files:
            return key + files[key][0].suffix
    return key


def _names(talkers: dict[int, list[Path]]) -> str:
    return ", ".join(talkers[k][0].name for k in sorted(talkers))


def _group_problem(key: str, roles: dict, dirs: dict[str, Path]) -> str | None:
    """Message for a group that cannot be scored (missing / extra talker files, duplicates), else None."""
    for role, talkers in roles.items():
        for k, paths in sorted(talkers.items()):
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                name = key if role == "mixture" else f"{key}_s{k}"
                return f"{paths[0].parent}: {names} all match '{name}'; keep one {role} file per name"
    ref, est = roles.get("reference"), roles.get("estimate")
    if ref is None:
        some = est or roles["mixture"]
        return f"{some[min(some)][0]}: no reference talker files {key}_s1, {key}_s2, ... in {dirs['reference']}"
    if est is None:
        return f"{ref[1 if 1 in ref else min(ref)][0]}: no estimate talker files {key}_s1, {key}_s2, ... in " \
               f"{dirs['estimate']}"
    for role, talkers in (("reference", ref), ("estimate", est)):
        missing = [k for k in range(1, max(talkers) + 1) if k not in talkers]
        if missing:
            return (f"{dirs[role] / f'{key}_s{missing[0]}'}: missing {role} talker file (the {role} files of "
                    f"'{key}' are {_names(talkers)}; talkers are numbered _s1, _s2, ... without gaps)")
    if len(ref) != len(est):
        return (f"{est[1][0]}: '{key}' has {len(est)} estimate talker file(s) ({_names(est)}) but "
                f"{len(ref)} reference talker file(s) in {ref[1][0].parent} ({_names(ref)}); "
                "the talker counts must match")
    if "mixture" in dirs and "mixture" not in roles:
        return f"{ref[1][0]}: no mixture file {key}.* in {dirs['mixture']}"
    return None


# --------------------------------------------------------------------------------------------------
# scoring one mixture (runs in worker processes)


def _score_group(task: _Group) -> dict:
    """Read, align and score one mixture's talkers. Never raises: problems become an error row."""
    try:
        return _score_group_files(task)
    except SteadyVoiceError as exc:
        return _error_row(task.file, str(exc))
    except Exception as exc:  # a bug or an unexpected library failure: report it, go on with the rest
        return _error_row(task.file, f"{task.estimates[0]}: unexpected {type(exc).__name__}: {exc} "
                                     "(please report this as a SteadyVoice bug)")


def _score_group_files(task: _Group) -> dict:
    anchor_path = task.references[0]
    anchor, sr = read_audio(anchor_path)  # (N, C): every other file is brought to its rate and checked against it
    notes: list[str] = []

    def load(path: Path, role: str) -> np.ndarray:
        if path == anchor_path:
            return anchor
        return _load_like(path, f"{role} {path.name}", anchor, sr, anchor_path, task.length_tolerance, notes)

    refs = [load(p, "reference") for p in task.references]
    ests = [load(p, "estimate") for p in task.estimates]
    mix = load(task.mixture, "mixture") if task.mixture is not None else None
    for path, x, what in [*((p, x, "reference") for p, x in zip(task.references, refs)),
                          *((p, x, "estimate") for p, x in zip(task.estimates, ests)),
                          *([(task.mixture, mix, "mixture")] if mix is not None else [])]:
        for c in range(x.shape[1]):
            if not np.any(x[:, c]):
                where = f" (channel {c})" if x.shape[1] > 1 else ""
                undefined = "SI-SDR is undefined" if what == "reference" else "nothing to score"
                raise AudioError(f"{path}: the {what} is silent (all samples are zero){where}; {undefined}")

    signals = [*refs, *ests, *([mix] if mix is not None else [])]
    n = min(x.shape[0] for x in signals)  # differences are within the tolerance here
    if any(x.shape[0] != n for x in signals):
        notes.append(f"lengths differ ({min(x.shape[0] for x in signals)} to {max(x.shape[0] for x in signals)} "
                     f"samples): trimmed to {n} samples ({n / sr:.3f} s)")
    R = np.stack([x[:n] for x in refs])  # (S, n, C)
    E = np.stack([x[:n] for x in ests])  # (S, n, C)
    try:
        per_talker_si_sdr, order = pit_si_sdr(E, R)
    except AudioError as exc:
        raise AudioError(f"{task.estimates[0].parent / Path(task.file).stem}_s*: {exc}") from None

    dnsmos = (shared_dnsmos(task.personalized_dnsmos, _score._WORKER_THREADS)
              if "dnsmos" in task.metrics else None)
    others = [m for m in task.metrics if m != "si_sdr"]
    columns = metric_columns(task.metrics)
    mix_free: dict[str, float] = {}
    if mix is not None:
        free = [m for m in task.metrics if m in REFERENCE_FREE]  # the same for every talker: once
        if free:
            mix_free = _pair(task.mixture, mix[:n], None, sr, free, dnsmos, "mixture")
    talkers = []
    for s in range(len(refs)):
        e = order[s]
        scores = {"si_sdr": float(per_talker_si_sdr[s])}
        if others:
            scores.update(_pair(task.estimates[e], E[e], R[s], sr, others, dnsmos, "estimate"))
        entry = {"talker": f"s{s + 1}", "estimate_file": task.estimates[e].name,
                 "estimate": {c: scores[c] for c in columns}}
        if mix is not None:
            intrusive = [m for m in task.metrics if m not in REFERENCE_FREE]
            m_scores = {**_pair(task.mixture, mix[:n], R[s], sr, intrusive, dnsmos, "mixture"), **mix_free}
            entry["mixture"] = {c: m_scores[c] for c in columns}
            entry["si_sdri"] = entry["estimate"]["si_sdr"] - entry["mixture"]["si_sdr"]
        talkers.append(entry)

    row = {"file": task.file, "status": "ok", "error": "", "notes": notes, "sample_rate": sr, "seconds": n / sr,
           "talkers": len(refs), "order": [f"s{int(e) + 1}" for e in order],
           "estimate": {c: float(np.mean([t["estimate"][c] for t in talkers])) for c in columns}}
    if mix is not None:
        row["mixture"] = {c: float(np.mean([t["mixture"][c] for t in talkers])) for c in columns}
        row["si_sdri"] = row["estimate"]["si_sdr"] - row["mixture"]["si_sdr"]  # = the mean of the talkers' SI-SDRi
    row["per_talker"] = talkers
    return row


def _pair(path: Path, x: np.ndarray, ref: np.ndarray | None, sr: int, metrics: list[str], dnsmos,
          role: str) -> dict[str, float]:
    if not metrics:
        return {}
    try:
        return score_pair(x, ref, sr, metrics, dnsmos=dnsmos, est_name=role)
    except SteadyVoiceError as exc:
        raise AudioError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# summary, table, CSV


def summarize_separation(rows: list[dict], columns: list[str], *, has_mixture: bool) -> dict:
    """mean, std (ddof=1) and count over mixtures (each mixture: the mean over its talkers) and over talkers.

    ``improvement`` is estimate - mixture; ``si_sdri`` (= improvement.si_sdr) is repeated at the top.
    """
    ok = [row for row in rows if row["status"] == "ok"]
    talkers = [t for row in ok for t in row["per_talker"]]
    summary: dict = {
        "task": "separation",
        "mixtures": {"total": len(rows), "scored": len(ok), "failed": len(rows) - len(ok)},
        "talkers": len(talkers),
        "columns": list(columns),
        "estimate": {c: _stats([row["estimate"][c] for row in ok]) for c in columns},
    }
    if has_mixture:
        summary["mixture"] = {c: _stats([row["mixture"][c] for row in ok]) for c in columns}
        summary["improvement"] = {c: _stats([row["estimate"][c] - row["mixture"][c] for row in ok])
                                  for c in columns}
        summary["si_sdri"] = summary["improvement"]["si_sdr"]
    summary["per_talker"] = {"estimate": {c: _stats([t["estimate"][c] for t in talkers]) for c in columns}}
    if has_mixture:
        summary["per_talker"]["si_sdri"] = _stats([t["si_sdri"] for t in talkers])
    summary["failures"] = [{"file": row["file"], "error": row["error"]} for row in rows if row["status"] != "ok"]
    return summary


def format_separation_table(summary: dict) -> str:
    """metric, estimate mean ± std, mixture, improvement, count (over mixtures), then SI-SDRi."""
    has_mixture = "mixture" in summary
    text = metric_table(summary, "mixture", "mixtures")
    if has_mixture and summary["si_sdri"]["mean"] is not None:
        text.append(f"SI-SDRi (permutation-resolved, mean over talkers): {_fmt(summary['si_sdri'], signed=True)} dB")
    counts = summary["mixtures"]
    text.append(f"{counts['scored']} of {counts['total']} mixtures scored ({summary['talkers']} talkers)" +
                (f", {counts['failed']} failed" if counts["failed"] else ""))
    return "\n".join(text)


def separation_csv_header(columns: list[str], has_mixture: bool, max_talkers: int) -> list[str]:
    header = ["file", "status", "sample_rate", "seconds", "talkers", "order"] + list(columns)
    if has_mixture:
        header += [f"mixture_{c}" for c in columns] + ["si_sdri"]
    for s in range(1, max_talkers + 1):
        header += [f"s{s}_{c}" for c in columns] + ([f"s{s}_si_sdri"] if has_mixture else [])
    return header + ["notes", "error"]


def write_separation_csv(path: str | Path, result: SeparationResult) -> None:
    """One line per mixture: means over talkers, mixture scores and SI-SDRi, then per talker (s1, s2, ...).

    ``order`` lists the estimate matched to each reference talker: "s2 s1" means reference s1 was
    separated into the estimate _s2 and reference s2 into _s1. Per-talker columns follow the reference
    numbering; a mixture with fewer talkers than the widest leaves the rest empty.
    """
    columns, has_mixture, width = result.columns, result.has_mixture, result.max_talkers
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(separation_csv_header(columns, has_mixture, width))
    per_talker = len(columns) + (1 if has_mixture else 0)
    for row in result.rows:
        ok = row["status"] == "ok"
        if not ok:
            cells = [row["file"], row["status"], "", "", "", ""]
            cells += [""] * (len(columns) * (2 if has_mixture else 1) + (1 if has_mixture else 0)
                             + per_talker * width)
            writer.writerow(cells + ["; ".join(row["notes"]), row["error"]])
            continue
        cells = [row["file"], row["status"], row["sample_rate"], f"{row['seconds']:.3f}", row["talkers"],
                 " ".join(row["order"])]
        cells += [_score._cell(row["estimate"][c]) for c in columns]
        if has_mixture:
            cells += [_score._cell(row["mixture"][c]) for c in columns] + [_score._cell(row["si_sdri"])]
        for t in row["per_talker"]:
            cells += [_score._cell(t["estimate"][c]) for c in columns]
            if has_mixture:
                cells.append(_score._cell(t["si_sdri"]))
        cells += [""] * (per_talker * (width - row["talkers"]))
        writer.writerow(cells + ["; ".join(row["notes"]), row["error"]])
    _score._write_text(path, buf.getvalue())
