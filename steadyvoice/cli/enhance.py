"""steadyvoice enhance INPUT... -o OUTDIR [--model NAME | --checkpoint DIR] [--device auto|cpu|cuda|cuda:N|mps] [--jobs N] [--overwrite]

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

--jobs N enhances N files at once (threads sharing one model and the CPU cores: for many short files).
Progress goes to stderr: a bar on a terminal, otherwise (a log file, a batch job) one plain line every
5 seconds with the count, the rate and the time left.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steadyvoice.batch import Job, check_output_dir, collect_jobs, run_jobs
from steadyvoice.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from steadyvoice.cli.progress import FileProgress, WindowBar, summary
from steadyvoice.devices import DEVICE_HELP, choose_device
from steadyvoice.errors import SteadyVoiceError


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
    source.add_argument("--model", metavar="NAME",
                        help="name of a shipped or installed model, see `steadyvoice models` (default: 'default', "
                             "SteadyVoice's 16 kHz model)")
    source.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="model directory (model.safetensors + config.json) from steadyvoice convert or ckpt export",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("-j", "--jobs", type=_positive_int, default=1, metavar="N",
                   help="files processed at once, on N threads sharing the model and the CPU cores (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


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
    done, skipped, failed = process_jobs(
        jobs, lambda job, progress: enhancer.enhance_file(job.source, job.output, progress=progress),
        is_done=lambda job: job.output.exists(), overwrite=args.overwrite, workers=args.jobs, desc="enhance",
    )
    failed += len(problems)
    _say(summary(done, skipped, failed))
    return EXIT_FAILED if failed else EXIT_OK


def _load_enhancer(args):
    """The Enhancer asked for, or None after printing what to pass instead."""
    from steadyvoice.inference import DEFAULT_MODEL, Enhancer

    name_or_dir = args.checkpoint or args.model or DEFAULT_MODEL
    try:
        choice = choose_device(args.device)
        enhancer = Enhancer.from_pretrained(name_or_dir, device=choice.device)
    except SteadyVoiceError as exc:
        _error(exc)
        return None
    _say(f"device: {choice}")
    return enhancer


def process_jobs(jobs: list[Job], work, *, is_done, overwrite: bool, workers: int, desc: str) -> tuple[int, int, int]:
    """Run ``work(job, window_progress)`` over the jobs with progress on stderr; returns (done, skipped, failed)."""
    progress = FileProgress(len(jobs), desc)

    def report(job: Job, status: str, error) -> None:
        if error is not None:
            progress.write(f"error: {error}")
        progress.update(failed=status == "failed")

    def one(job: Job) -> None:
        windows = WindowBar(job.source.name) if workers == 1 else None
        try:
            work(job, windows)
        finally:
            if windows is not None:
                windows.close()

    try:
        result = run_jobs(jobs, one, is_done=(lambda job: False) if overwrite else is_done,
                          workers=workers, report=report)
    finally:
        progress.close()
    return len(result.done), len(result.skipped), len(result.failed)


def _error(problem) -> None:
    _say(f"error: {problem}")


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
