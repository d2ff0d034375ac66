"""The run directory's config: check a resumed run against it, then write the resolved config (rank 0)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from steadyvoice.errors import ConfigError
from steadyvoice.fileio import atomic_write_text
from steadyvoice.train.config import TrainConfig, check_resume_config, config_to_yaml_dict

log = logging.getLogger("steadyvoice")

CONFIG_FILE = "config.yaml"


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, *, restart: bool) -> list[str]:
    """Create ``run_dir``, refuse an incompatible config, write ``config.yaml``; returns allowed changed keys.

    With ``restart`` the saved config is simply replaced (the run starts over).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    path = run_dir / CONFIG_FILE
    changed: list[str] = []
    if path.exists() and not restart:
        changed = check_resume_config(path, cfg)
        if changed:
            log.warning("config changed since the run started (allowed on resume): %s", ", ".join(changed))
    text = "# resolved training config, written by `steadyvoice train`\n" + yaml.safe_dump(
        config_to_yaml_dict(cfg), sort_keys=False, default_flow_style=None)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return changed

