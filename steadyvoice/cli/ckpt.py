"""steadyvoice ckpt list|verify|inspect|export|import-clearervoice: look after training checkpoints.

PATH is a checkpoint directory (RUN/checkpoints/step-00001234), a run directory (its newest
checkpoint that verifies; for 'verify', every checkpoint of the run), RUN/last (the newest checkpoint
that verifies) or RUN/best (the best validation's checkpoint). last and best work wherever a checkpoint
is taken, also in train --resume-from and train --init-from.

    steadyvoice ckpt list RUN_DIR                   step, epoch, time, size, valid/INVALID, best/last
    steadyvoice ckpt verify PATH                    exit 0 if all verify, 1 otherwise (one line per problem)
    steadyvoice ckpt inspect PATH [--json]          step, epoch, lr per group, world size, metrics, versions, sizes
    steadyvoice ckpt export PATH OUT_DIR [--best]   inference model (model.safetensors + config.json) for
                                                    `steadyvoice enhance --checkpoint OUT_DIR`; --best: the
                                                    run's best validation checkpoint (= PATH/best)
    steadyvoice ckpt import-clearervoice SRC DEST   a ClearerVoice-Studio training directory -> a run directory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steadyvoice.cli import EXIT_FAILED, EXIT_OK
from steadyvoice.errors import CheckpointError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ckpt", help="list, verify, inspect, export or import training checkpoints",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="ckpt_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="the checkpoints of a run directory")
    p.add_argument("path", type=Path, metavar="RUN_DIR")
    p.add_argument("--no-verify", action="store_true", help="check manifests only, do not hash every file")
    p.set_defaults(func=run_list)

    p = sub.add_parser("verify", help="check every file of a checkpoint (or of every checkpoint of a run)")
    p.add_argument("path", type=Path, metavar="PATH")
    p.set_defaults(func=run_verify)

    p = sub.add_parser("inspect", help="what a checkpoint holds")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_inspect)

    p = sub.add_parser("export", help="write the inference model of a checkpoint")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--best", action="store_true",
                   help="the run's best validation checkpoint (PATH is a run directory; same as PATH/best) "
                        "instead of its newest")
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "import-clearervoice", help="turn a ClearerVoice-Studio training directory into a SteadyVoice run",
        description="Import the newest checkpoint of a ClearerVoice-Studio training directory (model.ckpt-E-S.pt "
                    "with last_checkpoint / last_best_checkpoint pointers) as a SteadyVoice run directory that "
                    "`steadyvoice train --config DEST/config.yaml --run-dir DEST` continues.",
    )
    p.add_argument("src", type=Path, metavar="SRC_DIR")
    p.add_argument("dest", type=Path, metavar="DEST_RUN_DIR")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="training config of the continued run (default: the official recipe); its model section "
                        "is replaced by the configuration read from the checkpoint")
    p.add_argument("--clean", action="append", metavar="PATH", help="clean speech for the continued run (repeatable)")
    p.add_argument("--noise", action="append", metavar="PATH", help="noise for the continued run (repeatable)")
    p.add_argument("--pairs", action="append", metavar="LIST",
                   help="ClearerVoice-style pair list 'noisy clean [duration]' (repeatable; data.pairs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="sample rate the model was trained at (not stored in the weights; default: the config's)")
    p.add_argument("--epoch-finished", action="store_true",
                   help="the checkpoint was written at the end of its epoch E: continue with epoch E+1 "
                        "(default: repeat epoch E from its start, as ClearerVoice itself does)")
    p.set_defaults(func=run_import)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_list(args) -> int:
    from steadyvoice.checkpoint.api import list_checkpoints

    rows = list_checkpoints(args.path, verify=not args.no_verify)
    if not rows:
        print(f"{args.path}: no checkpoints")
        return EXIT_OK
    print(f"{'step':>10}  {'epoch':>5}  {'created':<25}  {'size':>9}  {'status':<8}  markers")
    for r in rows:
        status = "valid" if r.valid else "INVALID"
        epoch = "-" if r.epoch is None else str(r.epoch)
        print(f"{r.step:>10}  {epoch:>5}  {r.created or '-':<25}  {_size(r.size):>9}  {status:<8}  {' '.join(r.markers)}")
    for r in rows:
        for p in r.problems:
            print(f"  {p}")
    return EXIT_OK if all(r.valid for r in rows) else EXIT_FAILED


def run_verify(args) -> int:
    from steadyvoice.checkpoint.api import verify_checkpoint

    reports = verify_checkpoint(args.path)
    for report in reports:
        if report.valid:
            print(f"ok       {report.path}")
        for problem in report.problems:
            print(f"INVALID  {problem}")
    bad = sum(not r.valid for r in reports)
    print(f"{len(reports) - bad} of {len(reports)} checkpoint(s) verify", file=sys.stderr)
    return EXIT_OK if bad == 0 else EXIT_FAILED


def run_inspect(args) -> int:
    from steadyvoice.checkpoint.api import inspect_checkpoint

    info = inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True, default=str))
        return EXIT_OK if info["valid"] else EXIT_FAILED
    print(f"checkpoint   {info['path']}")
    print(f"valid        {'yes' if info['valid'] else 'NO'}")
    for problem in info["problems"]:
        print(f"  problem    {problem}")
    for key in ("step", "epoch", "created", "reason", "is_best", "world_size"):
        if key in info:
            print(f"{key:<12} {info[key]}")
    for g, group in enumerate(info.get("param_groups", [])):
        print(f"group {g:<6} lr={group['lr']} initial_lr={group['initial_lr']} params={group['num_params']}")
    if info.get("metrics"):
        print("metrics      " + ", ".join(f"{k}={v}" for k, v in info["metrics"].items()))
    for key in ("data", "schedule", "early_stopping"):
        if key in info:
            print(f"{key:<12} {json.dumps(info[key], sort_keys=True)}")
    if info.get("versions"):
        print("versions     " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print("sizes        " + ", ".join(f"{k} {_size(v)}" for k, v in info["sizes"].items()) + f" (total {_size(info['total_size'])})")
    return EXIT_OK if info["valid"] else EXIT_FAILED


def run_export(args) -> int:
    from steadyvoice.checkpoint.api import BEST, export_checkpoint, is_checkpoint_dir, named_checkpoint

    path = args.path
    if args.best and path.name != BEST:
        if is_checkpoint_dir(path):
            raise CheckpointError(f"{path}: --best picks the best checkpoint of a run directory, and this is one "
                                  "checkpoint; pass the run directory, or drop --best to export this one")
        path = path / BEST
    named = named_checkpoint(path)
    if named is not None:
        which = "the best" if named[1] == BEST else "the newest"
    else:
        which = None if is_checkpoint_dir(path) else "the newest"
    exported = export_checkpoint(path, args.out_dir)
    facts = [f"step {exported.step}"] + ([which] if which else [])
    if exported.metric is not None:  # the monitored validation metric, when this checkpoint was validated
        name, value = exported.metric
        if which == "the best":
            facts[-1] += f": {name} {value:.4g}"
        else:
            facts.append(f"{name} {value:.4g}" + (", best so far" if exported.is_best else ""))
    print(f"exported {exported.checkpoint} ({', '.join(facts)}) -> {exported.out_dir}")
    from steadyvoice.catalog import task_of

    command = "separate" if task_of(exported.out_dir) == "separation" else "enhance"
    print(f"use: steadyvoice {command} --checkpoint {exported.out_dir} ...")
    return EXIT_OK


def run_import(args) -> int:
    import logging

    from steadyvoice.extras import require_train_extra

    require_train_extra("steadyvoice ckpt import-clearervoice")  # it makes a run to be trained
    from steadyvoice.legacy import import_clearervoice

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    overrides = list(args.set)
    for flag, key in (("clean", "data.clean"), ("noise", "data.noise"), ("pairs", "data.pairs")):
        values = getattr(args, flag)
        if values:
            overrides.append(f"{key}={json.dumps([str(v) for v in values])}")
    result = import_clearervoice(args.src, args.dest, config=args.config, overrides=overrides,
                                 sample_rate=args.sample_rate, epoch_finished=args.epoch_finished)
    print(f"imported {result.source} (ClearerVoice epoch {result.their_epoch}, step {result.their_step}) -> "
          f"{result.checkpoint} (step {result.step}, next epoch {result.epoch})")
    print(f"continue with: steadyvoice train --config {result.config_path} --run-dir {args.dest}")
    return EXIT_OK
