"""List files: the one parser for every list of paths (``steadyvoice enhance`` inputs, training lists,
ClearerVoice pair lists).

Rules:

* UTF-8 text (a leading byte-order mark is ignored), one entry per line; lines are numbered from 1 as an
  editor shows them, for error messages.
* Blank lines and lines whose first non-blank character is # are skipped. A # later in a line is part
  of the entry (file names may hold one).
* Columns are separated by whitespace; the first column is a path, the others are what the list's
  format says (a duration, the clean file of a pair, an utterance id...). A line that as a whole names
  an existing file is one column: a path with spaces.
* ~ is expanded; a relative path is relative to the directory of the list file, not to the working
  directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from steadyvoice.errors import DataError, Problem

__all__ = ["ListEntry", "ListFileError", "read_list", "resolve_listed"]


@dataclass(frozen=True)
class ListEntry:
    """One entry of a list file."""

    line: int  # line number in the list file, from 1
    path: Path  # the first column, resolved against the list's directory
    fields: tuple[str, ...]  # every column as written; fields[0] is the path as written


class ListFileError(DataError):
    """A list file cannot be read; ``problem`` names the file and says why."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def read_list(list_path: str | Path) -> list[ListEntry]:
    """The entries of ``list_path`` (see the module docstring); ListFileError if it cannot be read."""
    list_path = Path(list_path)
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ListFileError(Problem(list_path, f"cannot read list file ({exc.strerror or exc})")) from None
    except UnicodeDecodeError:
        raise ListFileError(Problem(list_path, "cannot read list file (not a UTF-8 text file)")) from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        whole = resolve_listed(list_path, line)
        if whole.is_file():  # the whole line is one path (it may hold spaces)
            entries.append(ListEntry(number, whole, (line,)))
        else:
            fields = tuple(line.split())
            entries.append(ListEntry(number, resolve_listed(list_path, fields[0]), fields))
    return entries


def resolve_listed(list_path: str | Path, entry: str) -> Path:
    """A path as written in ``list_path``: ~ expanded, a relative path joined to the list's directory."""
    path = Path(os.path.expanduser(entry))  # os.path keeps an unknown ~user as it is (pathlib raises)
    return path if path.is_absolute() else Path(list_path).parent / path
