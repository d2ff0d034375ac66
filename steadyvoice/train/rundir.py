"""The run directory: one trainer at a time (a kernel-held lock), and its config (checked, then written).

Start-up order (``steadyvoice train``): take the lock, check the config against a resumed run's
(:func:`check_run_config`, writes nothing), check the data, only then write ``config.yaml``
(:func:`write_run_config`): a wrong command leaves nothing behind that refuses the corrected one.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

import yaml

from steadyvoice.errors import ConfigError, RunDirBusyError, os_failure
from steadyvoice.fileio import atomic_write_text
from steadyvoice.train.config import TrainConfig, check_resume_config, config_to_yaml_dict

log = logging.getLogger("steadyvoice")

CONFIG_FILE = "config.yaml"


def check_run_config(run_dir: Path, cfg: TrainConfig, *, restart: bool) -> list[str]:
    """Refuse a config that differs from the resumed run's; returns the allowed changed keys. Writes nothing."""
    path = Path(run_dir) / CONFIG_FILE
    if restart or not path.exists():
        return []
    changed = check_resume_config(path, cfg)
    if changed:
        log.warning("config changed since the run started (allowed on resume): %s", ", ".join(changed))
    return changed


def write_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Write the resolved config to ``run_dir/config.yaml`` (atomically; the directory is created)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    path = run_dir / CONFIG_FILE
    text = "# resolved training config, written by `steadyvoice train`\n" + yaml.safe_dump(
        config_to_yaml_dict(cfg), sort_keys=False, default_flow_style=None)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise os_failure(ConfigError, path, exc) from None


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, *, restart: bool) -> list[str]:
    """check_run_config, then write_run_config (for callers whose inputs are already checked)."""
    changed = check_run_config(run_dir, cfg, restart=restart)
    write_run_config(run_dir, cfg)
    return changed


# ------------------------------------------------------------------------------------------ the lock
LOCK_FILE = ".lock"
_held: dict[str, RunDirLock] = {}  # run directories locked by this process (POSIX locks are per process)


class RunDirLock:
    """One trainer per run directory: an exclusive lock on ``run_dir/.lock``, held until the process ends.

    A POSIX record lock (``fcntl.lockf``): the kernel releases it when the holding process dies, however
    it dies, so a kill -9 never leaves a stale lock; and unlike ``flock`` it is not inherited by forked
    children, so DataLoader workers of a dead trainer cannot keep it. The file holds the holder's pid,
    host, start time and command line for the message another trainer gets.
    """

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir = run_dir
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunDirLock:
        """Lock ``run_dir`` (created if missing) or raise RunDirBusyError naming the holder; writes nothing else."""
        run_dir = Path(run_dir)
        key = os.path.realpath(run_dir)
        if key in _held:
            raise RunDirBusyError(f"{run_dir}: this process already trains in this run directory")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{run_dir}: cannot create the run directory or its lock file ({exc.strerror or exc})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunDirBusyError(
                f"{run_dir}: another trainer is using this run directory ({holder}); nothing was changed. Wait "
                "for it to finish, stop it (it saves on SIGTERM), or use another --run-dir") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        lock = cls(run_dir, fd)
        _held[key] = lock
        return lock

    def release(self) -> None:
        """Unlock (normally the process's exit does it)."""
        if self._fd is None:
            return
        _held.pop(os.path.realpath(self.run_dir), None)
        os.close(self._fd)  # closing the descriptor drops the POSIX lock
        self._fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info.get('command', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"
