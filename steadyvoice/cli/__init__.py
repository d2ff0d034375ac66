"""The steadyvoice command: argument parsing and exit codes. The only place that exits.

Each subcommand lives in its own module of this package and provides register(subparsers), which adds
its parser and sets func=run, where run(args) -> int returns the exit code. A library error
(steadyvoice.errors.SteadyVoiceError) becomes one line "error: <message>" and the exit code of its
class (see steadyvoice.errors and EXIT_CODES below); an OSError that escapes a command (disk full,
permission denied) becomes "error: <path>: <strerror>" and exit code 1. A genuine bug still shows its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from steadyvoice import __version__
from steadyvoice.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, SteadyVoiceError

# Subcommand name -> module in this package. Imported lazily so that `steadyvoice enhance` does not
# pay for importing the training stack (and a broken optional dependency only breaks its own command).
SUBCOMMANDS = {
    "enhance": "enhance",
    "separate": "separate",
    "convert": "convert",
    "train": "train",
    "ckpt": "ckpt",
    "score": "score",
    "corpus": "corpus",
    "models": "models",
    "export": "export",
}

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "entry", "main"]

EXIT_CODES = """\
exit codes:
  0      success
  1      the command ran but failed: some item failed (a file to enhance or score, a
         checkpoint that does not verify), the system refused a read or write (disk full,
         permission denied, I/O error), stored data is damaged, or another trainer holds
         the run directory
  2      bad usage, config or input, found before any work was done: fix the command
  130    interrupted (Ctrl-C)
  128+N  steadyvoice train stopped by signal N (SIGTERM, SIGINT, SIGUSR1) after saving
         a checkpoint: rerun the same command to resume
"""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steadyvoice",
        description="SteadyVoice: speech enhancement with MossFormer2; training runs that are never lost.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="show the SteadyVoice and torch versions and the "
                        "device --device auto finds, then exit")
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


class _Version(argparse.Action):
    """--version: SteadyVoice's version, torch's and the device `auto` finds (torch is imported only here)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import platform

        import torch

        from steadyvoice.devices import choose_device

        print(f"steadyvoice {__version__}")
        print(f"torch {torch.__version__} (python {platform.python_version()})")
        print(f"device: {choose_device('auto')}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SteadyVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the system refused a read or write that no library code turned into its own error
        print(f"error: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _os_error_text(exc: OSError) -> str:
    """'<path>: <strerror>' (an OSError without a path: its text alone)."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def entry() -> None:
    _keep_freed_memory()
    sys.exit(main())


def _keep_freed_memory() -> None:
    """glibc malloc: serve large blocks from the heap and keep freed memory for reuse (no library does this).

    By default every block above glibc's mmap threshold (tensors of a forward pass, allocated and freed by
    the hundred) is a fresh mapping whose pages the kernel faults in and zeroes again: 4.8 s of system time in
    one 60 s pass of the official-size MossFormer2-SE on one thread, 0.2 s with these settings, and a lower
    peak RSS. Freed memory is then reused instead of returned; the process's peak is what it holds.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
    except OSError:
        return
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl and others have their own settings
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    libc.mallopt(M_MMAP_MAX, 0)  # no mmap per block: large blocks come from the heap as well
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # return freed heap memory to the system only above 1 GiB
