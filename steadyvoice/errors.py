"""Errors raised by the library, and the exit code of each.

Every error a user can cause is a :class:`SteadyVoiceError` whose message says what is wrong and how to
fix it. Library code raises; only :mod:`steadyvoice.cli` turns these into one-line messages and exit
codes (no traceback for user mistakes). The exit code says what to fix:

* 2 (EXIT_USAGE): bad arguments, config or input; rerunning the same command fails the same way. The
  class attribute ``exit_code`` of every error here is 2 unless said otherwise.
* 1 (EXIT_FAILED): the command was right but failed while running: some item failed (a file to enhance or
  score, a checkpoint that does not verify), the system refused a read or write (disk full, permission
  denied, I/O error: an OSError, or a library error made by :func:`os_failure`), or stored data is
  damaged (a checkpoint whose files fail their checksums).
* 130 (EXIT_INTERRUPTED): Ctrl-C. A training run stopped by signal N saves and exits with 128 + N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file, reported as ``<path>: <message>`` (a bad input, a damaged checkpoint file)."""

    path: str | os.PathLike  # the file (or directory) at fault
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SteadyVoiceError(Exception):
    """Base class of every error meant for the user (bad input, bad config, bad checkpoint)."""

    exit_code: int = EXIT_USAGE


class ConfigError(SteadyVoiceError):
    """A configuration file or value is wrong (unknown key, bad type, bad value)."""


class AudioError(SteadyVoiceError):
    """An audio file cannot be read, written or processed."""


class ModelError(SteadyVoiceError):
    """A model cannot be built or its weights do not fit."""


class DataError(SteadyVoiceError):
    """Training or evaluation data is missing or unusable."""


class CheckpointError(SteadyVoiceError):
    """A checkpoint is missing, corrupt, incompatible or cannot be written.

    Exit code 2: a checkpoint given that does not exist, is not one, or does not fit. Exit 1: a checkpoint
    whose files fail verification (checkpoint.format.CorruptCheckpointError: damaged after it was written,
    as ``steadyvoice ckpt verify`` reports it) and a save the system refused (``os_failure(CheckpointError, ...)``).
    """


class RunDirBusyError(SteadyVoiceError):
    """Another live process holds the run directory (exit 1: wait for it, or stop it)."""

    exit_code = EXIT_FAILED


E = TypeVar("E", bound=SteadyVoiceError)


def os_failure(error: type[E], path: str | os.PathLike, exc: OSError, doing: str = "cannot write") -> E:
    """The library error for an OSError the system raised while doing the work (disk full, permission
    denied, I/O error): ``error("<path>: <doing> (<strerror>)")`` with exit code 1, a runtime failure,
    whatever the class's own code."""
    err = error(f"{path}: {doing} ({exc.strerror or exc})")
    err.exit_code = EXIT_FAILED
    return err
