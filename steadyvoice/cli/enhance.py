"""steadyvoice enhance INPUT... -o OUTDIR [--model NAME | --checkpoint DIR] [--device auto|cpu|cuda|cuda:N|mps] [--backend torch|onnx] [--precision float32|bfloat16] [--jobs N] [--format EXT] [--overwrite]

INPUT is any mix of audio files, directories (searched recursively for audio files) and list files
(.scp / .txt: one entry per line, the first column a path, or the whole line if it names an existing
file; relative paths are resolved against the list's directory; blank lines and lines starting with #
are skipped). Where outputs go under OUTDIR:

  - a file given directly: OUTDIR/<basename>
  - a file found in a directory input: OUTDIR/<path relative to that directory>
  - a list entry: OUTDIR/<path relative to the list's directory> if it lies under it, else its basename

Outputs keep the input's container, subtype, sample rate, channel count and length, and are written
atomically. --format EXT (wav, flac, ogg, opus, mp3, ...) writes that container instead. Inputs read
through PyAV (m4a, aac, webm, mp4, mkv, mov, ...: pip install 'steadyvoice[formats]') are written as
.flac unless --format says otherwise. An output that already exists is skipped unless --overwrite. A
bad input gets one "error: <file>: <problem>" line and the batch goes on; exit code 1 if any file
failed, 2 if nothing could be done (no model, an OUTDIR that cannot be created or written to).

Pipes: INPUT - reads one audio file from stdin (any format SteadyVoice reads; it is buffered to a
temporary file); with -o OUTDIR it becomes OUTDIR/stdin.wav. -o - writes the one enhanced file to stdout
(wav unless --format), and stdout then carries nothing but audio:

  ffmpeg -i talk.mkv -f wav - | steadyvoice enhance - -o - --format flac > talk.flac

--jobs N enhances N files at once (threads sharing one model and the CPU cores: for many short files).
Progress goes to stderr: a bar on a terminal, otherwise (a log file, a batch job) one plain line every
5 seconds with the count, the rate and the time left.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from steadyvoice.audio import OUTPUT_FORMATS
from steadyvoice.batch import Job, check_output_dir, collect_jobs
from steadyvoice.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from steadyvoice.cli.progress import add_precision_argument, error, positive_int, process_jobs, say, summary
from steadyvoice.devices import DEVICE_HELP, choose_device
from steadyvoice.errors import Problem, SteadyVoiceError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance",
        help="enhance speech in audio files, directories and file lists",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, directory or .scp/.txt list")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR",
                   help="where outputs go; - writes the one output to stdout")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="NAME",
                        help="name of a shipped or installed model, as steadyvoice models lists them "
                             "(default: 'default', SteadyVoice's full-band model; 'default-v1': the 16 kHz one "
                             "before it)")
    source.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="model directory (model.safetensors + config.json) from steadyvoice convert or ckpt export",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run the network in torch (default) or in onnxruntime on the CPU from the model's ONNX "
                        "graph, exported once on first use (pip install 'steadyvoice[onnx]'); "
                        "--device auto then means cpu")
    add_precision_argument(p)
    p.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N",
                   help="files processed at once, on N threads sharing the model and the CPU cores (default 1)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, metavar="EXT",
                   help=f"output container: {', '.join(OUTPUT_FORMATS)} (default: the input's; wav on stdout)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.set_defaults(func=run)


def run(args) -> int:
    to_stdout = str(args.output_dir) == PIPE
    problem = _pipe_problem(args.inputs, to_stdout)
    if problem is not None:
        error(problem)
        return EXIT_USAGE
    with _scratch_if(to_stdout or PIPE in args.inputs) as scratch:  # stdin's copy, stdout's file
        outdir = scratch if to_stdout else Path(args.output_dir)
        problem = check_output_dir(outdir)
        if problem is not None:
            error(problem)
            return EXIT_USAGE
        enhancer = _load_enhancer(args)
        if enhancer is None:
            return EXIT_USAGE
        jobs, problems = collect_jobs([i for i in args.inputs if i != PIPE], outdir, args.format)
        if PIPE in args.inputs:
            jobs, problems = _with_stdin(jobs, problems, scratch, outdir, args.format)
        if to_stdout and len(jobs) + len(problems) > 1:
            error(f"-o - writes one enhanced file to stdout, but {args.inputs[0]} names {len(jobs) + len(problems)}")
            return EXIT_USAGE
        if to_stdout:
            jobs = [Job(job.source, outdir / f"stdout.{args.format or 'wav'}") for job in jobs]
        for problem in problems:
            error(problem)
        done, skipped, failed = process_jobs(
            jobs, _naming_stdin(lambda job, progress: enhancer.enhance_file(job.source, job.output, progress=progress),
                                scratch),
            is_done=lambda job: job.output.exists(), overwrite=args.overwrite, workers=args.jobs, desc="enhance",
        )
        failed += len(problems)
        if to_stdout and done:
            failed += _copy_to_stdout(jobs[0].output)
        say(summary(done, skipped, failed))
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------------
# Pipes: - as INPUT (stdin), -o - (stdout)
# ---------------------------------------------------------------------------------------------------

PIPE = "-"


def _pipe_problem(inputs: list[str], to_stdout: bool) -> str | None:
    """Why these pipe arguments cannot work, or None."""
    if inputs.count(PIPE) > 1:
        return "- (stdin) is given more than once; stdin holds one audio file"
    if to_stdout and len(inputs) != 1:
        return f"-o - writes one enhanced file to stdout, but {len(inputs)} inputs were given; give one file or -"
    if to_stdout and Path(inputs[0]).is_dir():
        return f"-o - writes one enhanced file to stdout, but {inputs[0]} is a directory; give one file or -"
    if PIPE in inputs and sys.stdin.isatty():
        return "- reads audio from stdin, but stdin is a terminal; pipe a file in (cat noisy.wav | steadyvoice enhance -)"
    if to_stdout and sys.stdout.isatty():
        return "-o - writes audio to stdout, but stdout is a terminal; redirect it (> clean.wav) or pipe it"
    return None


@contextlib.contextmanager
def _scratch_if(needed: bool):
    """A temporary directory (under $TMPDIR) that is removed afterwards, or None."""
    if not needed:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="steadyvoice-") as scratch:
        yield Path(scratch)


def _with_stdin(jobs: list[Job], problems: list, scratch: Path, outdir: Path, format: str | None):
    """Copy stdin to ``scratch``/stdin (in blocks: any length) and add its job, or a problem if it is empty."""
    copy = scratch / "stdin"
    try:
        with open(copy, "wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh, 1 << 20)
    except OSError as exc:
        return jobs, [*problems, Problem(PIPE, f"cannot buffer stdin in {scratch} ({exc.strerror or exc}); "
                                               "set TMPDIR to a directory with room")]
    if copy.stat().st_size == 0:
        return jobs, [*problems, Problem(PIPE, "stdin is empty; pipe an audio file in")]
    return [*jobs, Job(copy, outdir / f"stdin.{format or 'wav'}")], problems


def _naming_stdin(work, scratch: Path | None):
    """``work`` whose errors about the copy of stdin name it "stdin" rather than the temporary file."""
    if scratch is None:
        return work

    def named(job: Job, progress) -> None:
        try:
            work(job, progress)
        except SteadyVoiceError as exc:
            copy = str(scratch / "stdin")
            if copy not in str(exc):
                raise
            renamed = type(exc)(str(exc).replace(copy, "stdin"))
            renamed.__dict__.update(exc.__dict__)  # e.g. its exit code
            raise renamed from None

    return named


def _copy_to_stdout(path: Path) -> int:
    """Write the file at ``path`` to stdout; 1 if stdout was closed before the end (a failed file), else 0."""
    try:
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        error("stdout was closed before the whole file was written")
        return 1
    return 0


def _load_enhancer(args):
    """The Enhancer asked for, or None after printing what to pass instead."""
    from steadyvoice.inference import DEFAULT_MODEL, Enhancer, precision_note

    name_or_dir = args.checkpoint or args.model or DEFAULT_MODEL
    try:
        choice = choose_device("cpu" if args.backend == "onnx" and args.device == "auto" else args.device)
        enhancer = Enhancer.from_pretrained(name_or_dir, device=choice.device, backend=args.backend, on_export=say,
                                            precision=args.precision)
    except SteadyVoiceError as exc:
        error(exc)
        return None
    say(f"device: {choice}")
    note = precision_note(args.precision, enhancer.device)
    if note:
        say(note)
    return enhancer
