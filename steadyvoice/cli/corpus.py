"""``steadyvoice corpus OUT_DIR``: build the offline training corpus (see steadyvoice.corpus)."""

from __future__ import annotations

import argparse
import sys
import time

from steadyvoice.config import from_dict
from steadyvoice.corpus.config import INTL_SPEECH, REAL_NOISE, REAL_SPEECH, SYNTHETIC_NOISE, TTS_ENGINES, CorpusConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="build an offline training corpus (speech, noise, rooms) from Debian packages",
        description="Build train/valid/test splits of clean English speech (real recordings from Debian "
                    "packages + flite/festival/espeak-ng voices), noise (Debian sound packages + synthetic "
                    "families) and room impulse responses, with a pre-mixed test set and a manifest. "
                    "Deterministic from --seed. Missing tools are listed with the apt-get command to run.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to create (built in OUT_DIR.partial, then renamed)")
    p.add_argument("--hours", type=float, default=1.0, help="approximate clean speech over all splits (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sample-rate", type=int, default=16000, help="sample rate of every file (default 16000)")
    p.add_argument("--speech", nargs="+", metavar="SOURCE", choices=[*REAL_SPEECH, *INTL_SPEECH, *TTS_ENGINES],
                   help=f"speech sources (default: {', '.join([*REAL_SPEECH, *TTS_ENGINES])}; also "
                        f"{', '.join(INTL_SPEECH)}: other languages, train split only)")
    p.add_argument("--noise", nargs="+", metavar="SOURCE", choices=[*REAL_NOISE, *SYNTHETIC_NOISE],
                   help=f"noise sources (default all): {', '.join([*REAL_NOISE, *SYNTHETIC_NOISE])}")
    p.add_argument("--install", action="store_true",
                   help="apt-get install missing Debian packages (needs root) instead of stopping with the command")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: number of CPUs)")
    p.add_argument("--cache-dir", default=None,
                   help="where fetched Debian data packages are unpacked (default ~/.cache/steadyvoice/debian)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadyvoice.extras import require_train_extra

    require_train_extra("steadyvoice corpus", ("pyroomacoustics",))  # the rooms are simulated with it
    from steadyvoice.corpus import build_corpus

    data = {"hours": args.hours, "seed": args.seed, "sample_rate": args.sample_rate}
    if args.speech:
        data["speech"] = args.speech
    if args.noise:
        data["noise"] = args.noise
    cfg = from_dict(CorpusConfig, data)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    start = time.monotonic()
    result = build_corpus(cfg, args.out_dir, cache_dir=args.cache_dir, workers=args.workers,
                          install=args.install, progress=not args.quiet,
                          command=_command(args))
    if result.already_built:
        print(f"{result.out_dir}: already built with these arguments; nothing to do")
        return 0
    print(f"built {result.out_dir} in {time.monotonic() - start:.0f} s")
    for split, s in result.manifest["summary"].items():
        print(f"  {split:5s}: {s['clean_files']:5d} clean files, {s['clean_hours']:.3f} h "
              f"({s['real_speech_hours']:.3f} h real), {len(s['speakers'])} speakers, "
              f"{s['noise_files']} noise files, {s['rirs']} RIRs")
    return 0


def _command(args: argparse.Namespace) -> list[str]:
    """The command line that makes this corpus (options that change the output only)."""
    cmd = ["steadyvoice", "corpus", args.out_dir, "--hours", f"{args.hours:g}", "--seed", str(args.seed),
           "--sample-rate", str(args.sample_rate)]
    if args.speech:
        cmd += ["--speech", *args.speech]
    if args.noise:
        cmd += ["--noise", *args.noise]
    return cmd
