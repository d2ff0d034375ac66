"""`--help` of every command and subcommand is plain text: no reStructuredText from module docstrings.

Subcommand descriptions are taken from module docstrings, where ``--restart`` or :mod:`x` reads well in
the source but shows up raw in a terminal.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from steadyvoice.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
RST = re.compile(r"``|:(?:mod|class|func|meth|attr|data|obj|ref|doc):`|::\s*$", re.MULTILINE)


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree: (), ("train",), ("ckpt", "list"), ..."""
    paths = [prefix]
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_command_paths(sub, prefix + (name,)))
    return paths


COMMANDS = _command_paths(build_parser())


def test_every_subcommand_is_covered():
    names = {path for path in COMMANDS if len(path) == 1}
    assert {("train",), ("enhance",), ("convert",), ("ckpt",), ("score",), ("corpus",)} <= names
    assert ("convert", "clearervoice") in COMMANDS
    assert {("ckpt", action) for action in ("list", "verify", "inspect", "export")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "steadyvoice" for c in COMMANDS])
def test_help_is_plain_text(command):
    proc = subprocess.run([sys.executable, "-m", "steadyvoice", *command, "--help"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "COLUMNS": "100"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: steadyvoice")
    markup = [line for line in proc.stdout.splitlines() if RST.search(line)]
    assert markup == [], f"reStructuredText markup in `steadyvoice {' '.join(command)} --help`"
