"""steadyvoice enhance INPUT... -o OUTDIR [--model NAME | --checkpoint DIR] [--device cpu|cuda] [--overwrite]

INPUT is any mix of audio files, directories (searched recursively for audio files) and list files
(.scp / .txt: one entry per line, the first column a path, or the whole line if it names an existing
file; relative paths are resolved against the list's directory; blank lines and lines starting with #
are skipped). Where outputs go under OUTDIR:

  - a file given directly: OUTDIR/<basename>
  - a file found in a directory input: OUTDIR/<path relative to that directory>
  - a list entry: OUTDIR/<path relative to the list's directory> if it lies under it, else its basename

Outputs keep the input's container, subtype, sample rate, channel count and length, and are written
atomically. An output that already exists is skipped unless --overwrite. A bad input gets one
"error: <file>: <problem>" line and the batch goes on; exit code 1 if any file failed, 2 if nothing could
be done (no model, an OUTDIR that cannot be created or written to).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from steadyvoice.audio import AUDIO_EXTENSIONS, is_audio_path
from steadyvoice.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from steadyvoice.errors import Problem, SteadyVoiceError
from steadyvoice.listfile import ListFileError, read_list

LIST_EXTENSIONS = (".scp", ".txt")


@dataclass(frozen=True)
class Job:
    """One file to enhance."""

    source: Path
    output: Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance",
        help="enhance speech in audio files, directories and file lists",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, directory or .scp/.txt list")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR", help="where outputs go")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="NAME", help="name of a shipped model (default: 'default', SteadyVoice's 16 kHz model)")
    source.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="model directory (model.safetensors + config.json) from steadyvoice convert or ckpt export",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.set_defaults(func=run)


def run(args) -> int:
    outdir = Path(args.output_dir)
    problem = check_output_dir(outdir)
    if problem is not None:
        _error(problem)
        return EXIT_USAGE
    enhancer = _load_enhancer(args)
    if enhancer is None:
        return EXIT_USAGE
    jobs, problems = collect_jobs(args.inputs, outdir)
    for problem in problems:
        _error(problem)
    done, skipped, failed = _enhance_all(enhancer, jobs, overwrite=args.overwrite)
    failed += len(problems)
    _summary(done, skipped, failed)
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------------
# Model and output directory
# ---------------------------------------------------------------------------------------------------


def _load_enhancer(args):
    """The Enhancer asked for, or None after printing what to pass instead."""
    from steadyvoice.inference import DEFAULT_MODEL, Enhancer

    name_or_dir = args.checkpoint or args.model or DEFAULT_MODEL
    try:
        return Enhancer.from_pretrained(name_or_dir, device=args.device)
    except SteadyVoiceError as exc:
        _error(exc)
        return None


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


def collect_jobs(inputs: list[str], outdir: Path) -> tuple[list[Job], list[Problem]]:
    """Expand files, directories and lists into jobs; anything unusable becomes a Problem."""
    jobs: list[Job] = []
    problems: list[Problem] = []
    for item in inputs:
        found, bad = _expand(Path(item), outdir)
        jobs.extend(found)
        problems.extend(bad)
    jobs, clashes = _without_clashes(jobs)
    return jobs, problems + clashes


def _expand(path: Path, outdir: Path) -> tuple[list[Job], list[Problem]]:
    if not path.exists():
        return [], [Problem(str(path), "no such file or directory")]
    if path.is_dir():
        return _expand_directory(path, outdir)
    if path.suffix.lower() in LIST_EXTENSIONS:
        return _expand_list(path, outdir)
    if is_audio_path(path):
        return [Job(path, outdir / path.name)], []
    return [], [Problem(str(path), f"not an audio file or a list; {_WHAT_INPUTS_ARE}")]


_WHAT_INPUTS_ARE = (
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
        return Problem(str(entry), f"not an audio file {where}; {_WHAT_INPUTS_ARE}")
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
# Processing
# ---------------------------------------------------------------------------------------------------


def _enhance_all(enhancer, jobs: list[Job], *, overwrite: bool) -> tuple[int, int, int]:
    """Enhance each job; returns (done, skipped, failed)."""
    from tqdm import tqdm

    done = skipped = failed = 0
    with tqdm(jobs, desc="enhance", unit="file", file=sys.stderr, disable=None, dynamic_ncols=True) as files:
        for job in files:
            if job.output.exists() and not overwrite:
                skipped += 1
                continue
            windows = _WindowBar(job.source.name)
            try:
                enhancer.enhance_file(job.source, job.output, progress=windows)
                done += 1
            except SteadyVoiceError as exc:
                failed += 1
                _error(exc)
            finally:
                windows.close()
    return done, skipped, failed


class _WindowBar:
    """Progress over the windows of one long file: a second bar that appears only if there are several."""

    def __init__(self, name: str):
        self.name = name
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.name, unit="window", position=1, leave=False,
                            file=sys.stderr, disable=None, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _error(problem) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {problem}", file=sys.stderr)


def _summary(done: int, skipped: int, failed: int, verb: str = "enhanced") -> None:
    from tqdm import tqdm

    parts = [f"{done} {verb}"]
    if skipped:
        parts.append(f"{skipped} skipped (output exists; --overwrite to redo)")
    parts.append(f"{failed} failed")
    tqdm.write(", ".join(parts), file=sys.stderr)
