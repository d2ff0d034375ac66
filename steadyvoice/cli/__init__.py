"""The ``steadyvoice`` command: argument parsing and exit codes. The only place that exits.

Each subcommand lives in its own module of this package and provides ``register(subparsers)``, which
adds its parser and sets ``func=run`` where ``run(args) -> int`` returns the exit code. Library errors
(:class:`~steadyvoice.errors.SteadyVoiceError`) become a one-line ``error: ...`` message and exit
code 2; a genuine bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from steadyvoice import __version__
from steadyvoice.errors import SteadyVoiceError

# Subcommand name -> module in this package. Imported lazily so that `steadyvoice enhance` does not
# pay for importing the training stack (and a broken optional dependency only breaks its own command).
SUBCOMMANDS = {
    "enhance": "enhance",
    "convert": "convert",
    "train": "train",
    "ckpt": "ckpt",
    "score": "score",
    "corpus": "corpus",
}

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran but some item failed (a file, a checkpoint)
EXIT_USAGE = 2  # bad arguments, config or input: nothing useful was done


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steadyvoice",
        description="SteadyVoice: speech enhancement with MossFormer2; training runs that are never lost.",
    )
    parser.add_argument("--version", action="version", version=f"steadyvoice {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Only import the module of the subcommand being run (plus all of them for --help).
    wanted = None
    if argv:
        first = next((a for a in argv if not a.startswith("-")), None)
        if first in SUBCOMMANDS:
            wanted = first
    for name, module in SUBCOMMANDS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name)
            continue
        try:
            mod = importlib.import_module(f"steadyvoice.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("steadyvoice.cli."):
                continue  # subcommand not implemented in this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SteadyVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
