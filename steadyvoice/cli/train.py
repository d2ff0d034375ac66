"""steadyvoice train --config FILE --run-dir DIR [--clean PATH --noise PATH] [options]

Trains MossFormer2 speech enhancement. Rerunning the same command resumes from the newest checkpoint
in DIR that verifies and loads; --restart starts over, --resume-from PATH picks a checkpoint, --init-from
PATH starts a new run from weights only (a checkpoint, a run directory or an exported model). PATH may
also be RUN_DIR/last (the newest checkpoint that verifies) or RUN_DIR/best (the best validation's).

One trainer per run directory: a second one on the same DIR (same command or not) stops at once with
one line naming the process that holds it, and changes nothing. Nothing is written to DIR before the
config and the data are checked.

Several processes (DDP; gloo on CPU, NCCL on GPU):

    torchrun --nproc_per_node=N -m steadyvoice train --config FILE --run-dir DIR ...

Workers stop (save, then exit) within seconds when their torchrun agent dies.
SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 finish the current optimizer step, save a checkpoint and exit with
code 128 + the signal number (non-zero, so torchrun --max-restarts or a scheduler requeue continues the
run). A second Ctrl-C aborts at once (the last committed checkpoint stays valid).
Exit codes: 0 finished (max steps/epochs, early stop), 2 bad command, config or data, 1 failed while
running (a write refused, no usable checkpoint, DIR held by another trainer), 128+N stopped by signal N.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from steadyvoice.cli import EXIT_OK
from steadyvoice.devices import DEVICE_HELP
from steadyvoice.errors import SteadyVoiceError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a speech enhancement model (resumable, torchrun/DDP)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="training config: a YAML file, or the name of a recipe shipped with SteadyVoice (e.g. tiny-cpu)")
    p.add_argument("--run-dir", required=True, type=Path, metavar="DIR", help="where config, logs and checkpoints go")
    p.add_argument("--clean", action="append", metavar="PATH", help="clean speech: directory, audio file or list (repeatable)")
    p.add_argument("--noise", action="append", metavar="PATH", help="noise: directory, audio file or list (repeatable)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps (train.max_steps)")
    p.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N steps (checkpoint.save_every)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (train.seed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--device", metavar="DEVICE", help=f"train.device: {DEVICE_HELP}")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    start.add_argument("--resume-from", type=Path, metavar="PATH",
                       help="resume from this checkpoint (or run dir, RUN_DIR/last, RUN_DIR/best)")
    p.add_argument("--init-from", type=Path, metavar="PATH",
                   help="fresh run starting from these weights only (checkpoint, run dir, RUN_DIR/best, exported "
                        "model, or a model name from `steadyvoice models`)")
    p.set_defaults(func=run)


def overrides_from_args(args) -> list[str]:
    """Command-line options as ``section.key=value`` overrides (applied after --set, so they win)."""
    out = list(args.set)
    if args.clean:
        out.append(f"data.clean={json.dumps([str(p) for p in args.clean])}")
    if args.noise:
        out.append(f"data.noise={json.dumps([str(p) for p in args.noise])}")
    for flag, key in (("max_steps", "train.max_steps"), ("save_every", "checkpoint.save_every"),
                      ("seed", "train.seed"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def run(args) -> int:
    from steadyvoice.extras import require_train_extra

    require_train_extra("steadyvoice train")  # before the imports below, which need the train extra
    # Heavy imports here, not at module level: `steadyvoice --help` must stay fast.
    from steadyvoice.distributed import init_distributed, shutdown_distributed
    from steadyvoice.train.config import load_train_config
    from steadyvoice.train.loop import Trainer, training_data
    from steadyvoice.train.rundir import RunDirLock, check_run_config, write_run_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    cfg = load_train_config(args.config, overrides_from_args(args))
    from steadyvoice.train.objectives import check_gan_section, objective_for

    # Keys of another model family are errors now, before anything is written.
    objective_for(cfg.model.resolve(), cfg.loss)
    check_gan_section(cfg.model.resolve(), cfg.loss, cfg.gan)
    if args.init_from is not None and args.resume_from is not None:
        raise SteadyVoiceError("--init-from starts a new run from weights; it cannot be combined with --resume-from")
    init_path = None
    if args.init_from is not None:  # a checkpoint, run or model directory, or a model's name
        from steadyvoice import catalog

        init_path = catalog.path_or_name(args.init_from, how_to="pass a checkpoint, run or model directory")
    try:
        from steadyvoice.checkpoint import Checkpointer, load_weights
    except ImportError as exc:
        raise SteadyVoiceError(f"checkpoint support is unavailable in this build ({exc})") from None

    dist = init_distributed(cfg.train.device)
    run_dir: Path = args.run_dir
    held: list[RunDirLock] = []  # rank 0 holds the run directory's lock until the run ends
    new_dir = not run_dir.exists()
    try:
        dist.run_on_main(lambda: held.append(RunDirLock.acquire(run_dir)))
        # Check everything before writing anything: the config against a resumed run's, then every data
        # file (rank 0 scans them once and shares the lists); only then config.yaml.
        try:
            dist.run_on_main(lambda: check_run_config(run_dir, cfg, restart=args.restart))
            data = dist.run_on_main(lambda: training_data(cfg))
        except SteadyVoiceError:
            if held and new_dir:
                _remove_if_only_lock(run_dir, held)
            raise
        dist.run_on_main(lambda: write_run_config(run_dir, cfg))
        if dist.is_main:  # only now: a refused run (busy directory, bad config or data) prints its error alone
            from steadyvoice.devices import DeviceChoice

            print(f"device: {DeviceChoice(dist.device, dist.device_reason)}", file=sys.stderr, flush=True)
        trainer = Trainer(cfg, data, dist, run_dir=run_dir, console=dist.is_main)
        checkpointer = Checkpointer(run_dir, cfg.checkpoint, dist, resume_from=args.resume_from, restart=args.restart)
        init = None
        if init_path is not None:

            def init(model):
                return load_weights(model, init_path)

        reason = trainer.fit(checkpointer, init_weights=init)
    finally:
        shutdown_distributed()
        for lock in held:
            lock.release()
    code = EXIT_OK
    if reason == "signal":
        name = trainer.stop_signal or "SIGTERM"  # ranks that did not get the signal stopped with the others
        if dist.is_main:
            print(f"stopped by {name} at step {trainer.step}; rerun the same command to continue", file=sys.stderr)
        code = 128 + int(getattr(signal, name))
    if dist.is_distributed:
        # Every checkpoint is committed and the process group is gone, but a torchrun worker sometimes aborts
        # while the interpreter tears down torch's native threads ("terminate called without an active
        # exception", exit -6), which torchrun reports as a failed run. Nothing is left to do: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _remove_if_only_lock(run_dir: Path, held: list) -> None:
    """A run directory this command created holding nothing but its lock: remove it (a typo leaves no trace)."""
    from steadyvoice.train.rundir import LOCK_FILE

    if {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
        for lock in held:
            lock.release()
        held.clear()
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass
