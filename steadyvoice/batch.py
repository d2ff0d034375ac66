"""Many files at once: inputs (files, directories, lists) -> jobs -> outputs, over N worker threads.

Shared by ``steadyvoice enhance``/``separate`` and :meth:`steadyvoice.Enhancer.enhance_files`.

Where outputs go under OUTDIR:

  - a file given directly: OUTDIR/<basename>
  - a file found in a directory input: OUTDIR/<path relative to that directory>
  - a list entry (.scp / .txt: first column a path, relative to the list's directory): OUTDIR/<path relative
    to the list's directory> if it lies under it, else its basename

Workers are threads sharing one model: PyTorch releases the GIL inside its operators, so N threads run N
files' forwards at once; while they run, torch's intra-op threads are divided between them so that the
total stays at the number torch would use for one file (no oversubscription).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from steadyvoice.audio import AUDIO_EXTENSIONS, is_audio_path, output_suffix
from steadyvoice.errors import ConfigError, Problem, SteadyVoiceError
from steadyvoice.listfile import ListFileError, read_list

LIST_EXTENSIONS = (".scp", ".txt")


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes (for separation: the stem its talker files derive from)."""

    source: Path
    output: Path


@dataclass
class BatchResult:
    """What happened to every input: outputs written, outputs kept (already there), and problems."""

    done: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


# ---------------------------------------------------------------------------------------------------
# Output directory
# ---------------------------------------------------------------------------------------------------


def check_output_dir(outdir: Path) -> Problem | None:
    """Create OUTDIR if needed; a Problem if it cannot be created or written to."""
    if outdir.exists() and not outdir.is_dir():
        return Problem(str(outdir), "output directory is an existing file; pass a directory to -o")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Problem(str(outdir), f"cannot create output directory ({exc.strerror or exc})")
    if not os.access(outdir, os.W_OK | os.X_OK):
        return Problem(str(outdir), "output directory is not writable (permission denied)")
    return None


# ---------------------------------------------------------------------------------------------------
# Inputs -> jobs
# ---------------------------------------------------------------------------------------------------


def collect_jobs(inputs: Iterable[str | Path], outdir: Path,
                 format: str | None = None) -> tuple[list[Job], list[Problem]]:
    """Expand files, directories and lists into jobs; anything unusable becomes a Problem."""
    jobs, problems = expand_inputs(inputs, outdir, format)
    jobs, clashes = _without_clashes(jobs)
    return jobs, problems + clashes


def expand_inputs(inputs: Iterable[str | Path], outdir: Path,
                  format: str | None = None) -> tuple[list[Job], list[Problem]]:
    """Expand files, directories and lists into jobs, without checking outputs against each other.

    An output has the extension ``.<format>`` if given, else its input's, except for inputs read but not
    written (m4a, webm, video files: .flac; :func:`steadyvoice.audio.output_suffix`)."""
    jobs: list[Job] = []
    problems: list[Problem] = []
    for item in inputs:
        found, bad = _expand(Path(item), outdir)
        jobs.extend(Job(job.source, job.output.with_suffix(output_suffix(job.source, format))) for job in found)
        problems.extend(bad)
    return jobs, problems


def _expand(path: Path, outdir: Path) -> tuple[list[Job], list[Problem]]:
    if not path.exists():
        return [], [Problem(str(path), "no such file or directory")]
    if path.is_dir():
        return _expand_directory(path, outdir)
    if path.suffix.lower() in LIST_EXTENSIONS:
        return _expand_list(path, outdir)
    if is_audio_path(path):
        return [Job(path, outdir / path.name)], []
    return [], [Problem(str(path), f"not an audio file or a list; {WHAT_INPUTS_ARE}")]


WHAT_INPUTS_ARE = (
    f"inputs are audio files ({', '.join(AUDIO_EXTENSIONS)}), directories or "
    f"{'/'.join(LIST_EXTENSIONS)} lists of paths"
)


def _expand_directory(root: Path, outdir: Path) -> tuple[list[Job], list[Problem]]:
    """Audio files under ``root`` (recursive, sorted, hidden entries and OUTDIR itself left out)."""
    outdir_resolved = outdir.resolve()
    jobs = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if not path.is_file() or not is_audio_path(path):
            continue
        if path.resolve().is_relative_to(outdir_resolved):
            continue  # our own outputs when OUTDIR lies inside the input directory
        jobs.append(Job(path, outdir / relative))
    if not jobs:
        return [], [Problem(str(root), f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory")]
    return jobs, []


def _expand_list(list_path: Path, outdir: Path) -> tuple[list[Job], list[Problem]]:
    """The entries of a list file (steadyvoice.listfile rules: first column a path, relative to the list)."""
    try:
        entries = read_list(list_path)
    except ListFileError as exc:
        return [], [exc.problem]
    jobs, problems = [], []
    for entry in entries:
        problem = _entry_problem(entry.path, list_path, entry.line)
        if problem is not None:
            problems.append(problem)
            continue
        jobs.append(Job(entry.path, outdir / _relative_or_name(entry.path, list_path.parent)))
    if not jobs and not problems:
        problems.append(Problem(str(list_path), "the list names no files"))
    return jobs, problems


def _entry_problem(entry: Path, list_path: Path, number: int) -> Problem | None:
    where = f"(listed in {list_path}, line {number})"
    if not entry.exists():
        return Problem(str(entry), f"no such file {where}")
    if not entry.is_file():
        return Problem(str(entry), f"is not a file {where}")
    if not is_audio_path(entry):
        return Problem(str(entry), f"not an audio file {where}; {WHAT_INPUTS_ARE}")
    return None


def _relative_or_name(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:
        return Path(path.name)


def _without_clashes(jobs: list[Job]) -> tuple[list[Job], list[Problem]]:
    """Drop repeated jobs; refuse jobs whose output is another input's output or their own input."""
    by_output: dict[Path, list[Job]] = {}
    for job in jobs:
        group = by_output.setdefault(job.output.resolve(), [])
        if all(job.source.resolve() != other.source.resolve() for other in group):
            group.append(job)
    kept, problems = [], []
    for output, group in by_output.items():
        if len(group) > 1:
            for job in group:
                others = ", ".join(str(o.source) for o in group if o is not job)
                problems.append(Problem(str(job.source), f"its output {job.output} would also be the output of "
                                        f"{others}; enhance them in separate runs or into separate OUTDIRs"))
        elif group[0].source.resolve() == output:
            problems.append(Problem(str(group[0].source), "its output would replace the input file; "
                                    "choose an OUTDIR that is not the input's directory"))
        else:
            kept.append(group[0])
    return kept, problems


# ---------------------------------------------------------------------------------------------------
# Running jobs
# ---------------------------------------------------------------------------------------------------

# Called once per job when it finishes: (job, "done" | "skipped" | "failed", the error or None).
JobReport = Callable[[Job, str, "SteadyVoiceError | None"], None]


def run_jobs(
    jobs: list[Job],
    work: Callable[[Job], None],
    *,
    is_done: Callable[[Job], bool],
    workers: int = 1,
    report: JobReport | None = None,
) -> BatchResult:
    """Run ``work(job)`` for every job whose output is not there yet (``is_done``), on ``workers`` threads.

    A job whose ``work`` raises a SteadyVoiceError is recorded as failed and the others go on; any other
    exception (a bug, Ctrl-C) stops the batch: jobs not started yet are cancelled, running ones finish.
    Results keep the order of ``jobs``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"jobs={workers!r}: the number of parallel jobs must be a whole number >= 1")
    outcomes: dict[int, tuple[str, SteadyVoiceError | None]] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        job = jobs[index]
        if is_done(job):
            status, error = "skipped", None
        else:
            try:
                work(job)
                status, error = "done", None
            except SteadyVoiceError as exc:
                status, error = "failed", exc
        with lock:
            outcomes[index] = (status, error)
            if report is not None:
                report(job, status, error)

    if workers == 1 or len(jobs) <= 1:
        for index in range(len(jobs)):
            one(index)
    else:
        with torch_threads_shared_by(workers), ThreadPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(one, index) for index in range(len(jobs))}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # re-raise a bug or KeyboardInterrupt from a worker
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    result = BatchResult()
    for index, job in enumerate(jobs):
        status, error = outcomes[index]
        if status == "done":
            result.done.append(job)
        elif status == "skipped":
            result.skipped.append(job)
        else:
            result.failed.append(error if isinstance(error, Problem) else Problem(str(job.source), _message(error, job)))
    return result


def _message(error: SteadyVoiceError, job: Job) -> str:
    """The error's text without a leading '<source>: ' (the Problem names the file)."""
    text = str(error)
    prefix = f"{job.source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


@contextmanager
def torch_threads_shared_by(workers: int):
    """Divide torch's intra-op threads between ``workers`` concurrent forwards, restoring them afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)
