"""``steadyvoice score --reference DIR --estimate DIR [--noisy DIR] [--metrics M ...] [--csv F] [--json F]
[--plot F.png] [--jobs N]``; ``steadyvoice score --separation --reference DIR --estimate DIR [--mixture DIR] ...``

Scores every estimate against the reference file of the same relative path (the extension may
differ: ref/a/b.flac matches est/a/b.wav). Metrics: pesq_wb (16 kHz), pesq_nb (8 kHz), stoi, estoi,
si_sdr, dnsmos (SIG, BAK, OVRL, P.808; reference-free) and composite (CSIG, CBAK, COVL); all by default.
With --noisy, the noisy inputs are scored too and the table shows the improvement (estimate - noisy).
Multi-channel files are scored channel by channel and the scores averaged over channels (the channel
counts of a pair must match).

A different sample rate is resampled to the reference's (with a note); a length difference up to
--length-tolerance seconds is trimmed (with a note), a larger one is an error for that file, as are a
missing counterpart, a silent reference and an unreadable file: each gets one 'error:' line naming the
file and the rest goes on. Exit code 0 if every file was scored, 1 if some failed, 2 on usage errors
(missing or empty directory, unknown metric).

Separation (--separation): files are grouped by mixture. For a mixture MIX/sub/m.wav, the estimate
directory holds one file per talker, sub/m_s1.wav, sub/m_s2.wav, ... (as steadyvoice separate writes
them), and the reference directory the true talkers under the same names; the talker numbering of
the estimates may differ from the references'. The talker order that maximises the mean SI-SDR over
talkers is chosen (all S! orders), and every metric is computed per talker in that order; a mixture
scores the mean over its talkers. --mixture DIR (another name for --noisy) scores the unprocessed
mixture against every talker too, for the improvement; SI-SDRi is the estimate's SI-SDR minus the
mixture's against the same talker. si_sdr is always computed; --metrics adds others (pesq_wb, stoi,
...). The CSV has one line per mixture: order (the estimate matched to reference talker s1, s2, ...;
"s2 s1" means swapped), the means over talkers, mixture_* and si_sdri with --mixture, then s1_*,
s2_*, ... per reference talker. The JSON summary holds mean, std and count over mixtures (estimate,
mixture, improvement, si_sdri) and over all talkers (per_talker). A missing talker file, a different
number of talker files in the two directories, a file not named <mixture>_s<N>, a missing mixture, a
length difference beyond the tolerance, a silent or unreadable file fails that mixture with one
'error:' line naming the file; the rest goes on. Exit codes as above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from steadyvoice.cli import EXIT_FAILED, EXIT_OK
from steadyvoice.errors import ConfigError
from steadyvoice.eval.metrics import METRICS, parse_metrics
from steadyvoice.eval.score import DEFAULT_LENGTH_TOLERANCE, format_table, score_directories, write_csv, write_json
from steadyvoice.eval.separation import format_separation_table, score_separation, write_separation_csv


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score enhanced or separated files against references (PESQ, STOI, SI-SDR, DNSMOS, ...)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--separation", action="store_true",
                   help="score separated talkers: files grouped by mixture (<mixture>_s1, _s2, ...), "
                        "permutation-resolved SI-SDR and SI-SDRi")
    p.add_argument("--reference", required=True, type=Path, metavar="DIR",
                   help="clean reference files (with --separation: the true talkers)")
    p.add_argument("--estimate", required=True, type=Path, metavar="DIR",
                   help="files to judge (enhanced, or separated talkers)")
    p.add_argument("--noisy", "--mixture", dest="noisy", type=Path, metavar="DIR",
                   help="the unprocessed inputs (noisy files, or mixtures with --separation), to report "
                        "the improvement")
    p.add_argument("--metrics", nargs="+", default=None, metavar="M",
                   help=f"metrics, space- or comma-separated (default: all; with --separation: si_sdr): "
                        f"{', '.join(METRICS)}")
    p.add_argument("--csv", type=Path, metavar="F", help="write per-file scores to this CSV file")
    p.add_argument("--json", type=Path, metavar="F", help="write the summary (mean, std, count) to this JSON file")
    p.add_argument("--plot", type=Path, metavar="F.png", help="write a PNG plot of the per-file scores")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: min(CPU count, files))")
    p.add_argument("--length-tolerance", type=float, default=DEFAULT_LENGTH_TOLERANCE, metavar="SECONDS",
                   help=f"largest length difference that is trimmed rather than refused "
                        f"(default {DEFAULT_LENGTH_TOLERANCE:g} s)")
    p.add_argument("--personalized-dnsmos", action="store_true",
                   help="use the personalized DNSMOS model (interfering talkers count as noise)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.separation:
        return _run_separation(args)
    metrics = parse_metrics(args.metrics or list(METRICS))
    _check_outputs(args)
    with _Progress(" files") as progress:
        result = score_directories(
            args.reference, args.estimate, args.noisy, metrics, jobs=args.jobs,
            length_tolerance=args.length_tolerance, personalized_dnsmos=args.personalized_dnsmos, on_row=progress.row,
        )
    print(format_table(result.summary))
    _write_outputs(args, lambda: write_csv(args.csv, result), result.summary, lambda plot_scores: plot_scores(
        args.plot, result.rows, result.columns, has_noisy=result.has_noisy))
    return EXIT_FAILED if result.failed else EXIT_OK


def _run_separation(args) -> int:
    metrics = parse_metrics(["si_sdr", *(args.metrics or [])])
    _check_outputs(args)
    with _Progress(" mixtures") as progress:
        result = score_separation(
            args.reference, args.estimate, args.noisy, metrics, jobs=args.jobs,
            length_tolerance=args.length_tolerance, personalized_dnsmos=args.personalized_dnsmos, on_row=progress.row,
        )
    print(format_separation_table(result.summary))
    # One point per mixture (the mean over its talkers); the mixture plays the noisy input's part.
    rows = [{"status": row["status"], "estimate": row.get("estimate"), "noisy": row.get("mixture")} for row in result.rows]
    _write_outputs(args, lambda: write_separation_csv(args.csv, result), result.summary, lambda plot_scores: plot_scores(
        args.plot, rows, result.columns, has_noisy=result.has_mixture, noisy_label="mixture",
        title=f"per-mixture scores ({len(result.rows) - len(result.failed)} mixtures)"))
    return EXIT_FAILED if result.failed else EXIT_OK


class _Progress:
    """A progress bar on a terminal (nothing otherwise) that also prints each row's notes and errors."""

    def __init__(self, unit: str):
        self.bar = tqdm(unit=unit, file=sys.stderr, disable=None, leave=False)

    def row(self, row: dict) -> None:
        for note in row["notes"]:
            self.bar.write(f"note: {row['file']}: {note}", file=sys.stderr)
        if row["status"] != "ok":
            self.bar.write(f"error: {row['error']}", file=sys.stderr)
        self.bar.update(1)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _write_outputs(args, write_csv_file, summary: dict, plot) -> None:
    """--csv, --json and --plot, each announced on stdout."""
    if args.csv:
        write_csv_file()
        print(f"wrote {args.csv}")
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    if args.plot:
        from steadyvoice.eval.plot import plot_scores

        plot(plot_scores)
        print(f"wrote {args.plot}")


def _check_outputs(args) -> None:
    """Refuse unusable output paths before spending time on scoring."""
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError(f"{args.plot}: the plot is written as PNG; give a file name ending in .png")
    for option in ("csv", "json", "plot"):
        path = getattr(args, option)
        if path is not None and path.is_dir():
            raise ConfigError(f"{path}: --{option} names a directory; give a file name")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {args.jobs}")
