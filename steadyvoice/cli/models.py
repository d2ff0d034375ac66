"""steadyvoice models [--json]

Lists the model directories known by name, which enhance --model NAME and separate --model NAME take:
the ones shipped with SteadyVoice, then yours in $STEADYVOICE_HOME/models/<name>/ (STEADYVOICE_HOME
defaults to the per-user data directory, e.g. ~/.local/share/steadyvoice on Linux). Install one with

    steadyvoice convert clearervoice last_best_checkpoint.pt --name mossformer2-se-48k

or copy a model directory there (one made by steadyvoice ckpt export, for example). For each: name,
task, architecture, sample rate, parameters (counted from the weights file's header, no weights are
loaded), size on disk and where it lives. A directory there that is not a usable model is listed with
its problem.
"""

from __future__ import annotations

import argparse
import json
import sys

from steadyvoice.cli import EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the models known by name (shipped and in $STEADYVOICE_HOME/models)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from steadyvoice import catalog

    infos = [catalog.describe(entry) for entry in catalog.entries()]
    if args.json:
        print(json.dumps(_as_json(infos, catalog), indent=2))
        return EXIT_OK
    print(f"your models go in {catalog.user_models_dir()} (set {catalog.HOME_ENV} to move them)")
    rows = [("NAME", "TASK", "ARCHITECTURE", "RATE", "PARAMS", "SIZE", "WHERE")]
    rows += [_row(info) for info in infos]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for info in infos:
        if info.problem:
            print(f"unusable: {info.problem}", file=sys.stderr)
        elif info.hidden:
            print(f"{info.name}: {info.path} is hidden by the shipped model of the same name; rename it",
                  file=sys.stderr)
    return EXIT_OK


def _row(info) -> tuple[str, ...]:
    where = f"shipped: {info.path}" if info.origin == "shipped" else str(info.path)
    if info.problem:
        return (info.name, "(unusable)", "-", "-", "-", _size(info.size_bytes), where)
    name = f"{info.name} (hidden)" if info.hidden else info.name
    return (name, info.task, info.architecture, f"{info.sample_rate / 1000:g} kHz", f"{info.parameters / 1e6:.2f} M",
            _size(info.size_bytes), where)


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _as_json(infos, catalog) -> dict:
    return {
        "user_models_dir": str(catalog.user_models_dir()),
        "models": [
            {"name": i.name, "origin": i.origin, "path": str(i.path), "hidden": i.hidden,
             "architecture": i.architecture, "task": i.task, "sample_rate": i.sample_rate,
             "parameters": i.parameters, "size_bytes": i.size_bytes, "problem": i.problem}
            for i in infos
        ],
    }
