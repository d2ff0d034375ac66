"""steadyvoice separate INPUT... -o OUTDIR [--model NAME | --checkpoint DIR] [--speakers K] [--device auto|cpu|cuda|cuda:N|mps] [--precision float32|bfloat16] [--overwrite]

Splits each recording into one file per talker: OUTDIR/<relative path>/<stem>_s1.<ext>, <stem>_s2.<ext>,
... with the input's container, subtype, sample rate, channel count and length. INPUT is any mix of audio
files, directories (searched recursively) and .scp/.txt lists, placed under OUTDIR as 'steadyvoice
enhance' places them. Without --model or --checkpoint the shipped two-talker model (separation-default,
16 kHz, trained by SteadyVoice) is used. The talker numbering is the model's (s1 is not "the first to speak"), but each talker
stays in the same file from start to end, across the windows of a long recording and across channels.

Outputs are written atomically; a recording whose talker files all exist is skipped unless --overwrite.
A bad input gets one "error: <file>: <problem>" line and the batch goes on; exit code 1 if any file
failed, 2 if nothing could be done (no model, a model that is not a separation model or separates another
number of talkers than --speakers, an OUTDIR that cannot be created or written to).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steadyvoice.batch import Job, check_output_dir, expand_inputs
from steadyvoice.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from steadyvoice.cli.progress import add_precision_argument, error, positive_int, process_jobs, say, summary
from steadyvoice.devices import DEVICE_HELP, choose_device
from steadyvoice.errors import Problem, SteadyVoiceError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "separate",
        help="separate the talkers of recordings into one file per talker",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, directory or .scp/.txt list")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR", help="where outputs go")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="DIR",
                        help="separation model directory (model.safetensors + config.json), e.g. from 'steadyvoice "
                             "convert clearervoice' of an official MossFormer2_SS_16K checkpoint")
    source.add_argument("--model", metavar="NAME",
                        help="name of a shipped or installed separation model, as steadyvoice models lists them "
                             "(default: separation-default, the shipped 16 kHz two-talker model)")
    p.add_argument("--speakers", type=int, metavar="K",
                   help="talkers expected; a model that separates another number is refused")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_precision_argument(p)
    p.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N",
                   help="recordings processed at once, on N threads sharing the model and the CPU cores (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo recordings whose outputs already exist")
    p.set_defaults(func=run)


def run(args) -> int:
    outdir = Path(args.output_dir)
    problem = check_output_dir(outdir)
    if problem is not None:
        error(problem)
        return EXIT_USAGE
    separator = _load_separator(args)
    if separator is None:
        return EXIT_USAGE
    jobs, problems = collect_jobs(args.inputs, outdir, separator.speakers)
    for problem in problems:
        error(problem)
    from steadyvoice.separation import talker_paths

    done, skipped, failed = process_jobs(
        jobs,
        lambda job, progress: separator.separate_file(job.source, talker_paths(job.output, separator.speakers),
                                                      progress=progress),
        is_done=lambda job: all(p.exists() for p in talker_paths(job.output, separator.speakers)),
        overwrite=args.overwrite, workers=args.jobs, desc="separate",
    )
    failed += len(problems)
    say(summary(done, skipped, failed, verb="separated"))
    return EXIT_FAILED if failed else EXIT_OK


def _load_separator(args):
    """The Separator asked for, or None after printing what to pass instead."""
    from steadyvoice.inference import precision_note
    from steadyvoice.separation import DEFAULT_SEPARATION_MODEL, Separator

    name_or_dir = args.checkpoint or args.model or DEFAULT_SEPARATION_MODEL
    if args.speakers is not None and args.speakers < 2:
        error(f"--speakers {args.speakers}: a separation needs at least 2 talkers")
        return None
    try:
        choice = choose_device(args.device)
        separator = Separator.from_pretrained(name_or_dir, device=choice.device, speakers=args.speakers,
                                              precision=args.precision)
    except SteadyVoiceError as exc:
        error(exc)
        return None
    say(f"device: {choice}")
    note = precision_note(args.precision, separator.device)
    if note:
        say(note)
    return separator


def collect_jobs(inputs: list[str], outdir: Path, speakers: int) -> tuple[list[Job], list[Problem]]:
    """Expand files, directories and lists as `enhance` does (Job.output: where `enhance` would write; the
    talker files are derived from it); anything unusable becomes a Problem."""
    jobs, problems = expand_inputs(inputs, outdir)
    jobs, clashes = _without_clashes(jobs, speakers)
    return jobs, problems + clashes


def _without_clashes(jobs: list[Job], speakers: int) -> tuple[list[Job], list[Problem]]:
    """Drop repeated inputs; refuse recordings whose talker files would be another recording's, or an input."""
    from steadyvoice.separation import talker_paths

    unique: dict[Path, Job] = {}
    for job in jobs:
        unique.setdefault(job.source.resolve(), job)
    sources = {resolved: job.source for resolved, job in unique.items()}
    by_output: dict[Path, list[Job]] = {}
    for job in unique.values():
        by_output.setdefault(job.output.resolve(), []).append(job)
    kept, problems = [], []
    for group in by_output.values():
        for job in group:
            hit = next((p for p in talker_paths(job.output, speakers) if p.resolve() in sources), None)
            if len(group) > 1:
                others = ", ".join(str(o.source) for o in group if o is not job)
                problems.append(Problem(str(job.source), f"its outputs {job.output.stem}_s1... would also be the "
                                        f"outputs of {others}; give them in separate runs or OUTDIRs"))
            elif hit is not None:
                problems.append(Problem(str(job.source), f"its output {hit} would replace the input file "
                                        f"{sources[hit.resolve()]}; choose an OUTDIR that holds no inputs"))
            else:
                kept.append(job)
    return kept, problems
