"""Reading checkpoints: verified load, path resolution, listing, inspection, weights-only loading, export.

PATH arguments accept a checkpoint directory (``.../checkpoints/step-00001234``), a run directory (its
newest checkpoint that verifies) or the ``checkpoints/`` directory itself, and two names after either of
the last two: ``RUN_DIR/last`` (the newest checkpoint that verifies, the same as ``RUN_DIR``) and
``RUN_DIR/best`` (the newest checkpoint saved as the best validation, the one the plateau rule reloads).
The names are resolved here, never written into the run directory; a file or directory that really has
that name wins.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steadyvoice.checkpoint import v1
from steadyvoice.checkpoint.format import (
    MANIFEST_FILE,
    STATE_FILE,
    CorruptCheckpointError,
    Problem,
    VerifyReport,
    check_part_files,
    check_state_json,
    parse_step_dir_name,
    part_file,
    read_manifest,
    read_verified,
    verify_dir,
)
from steadyvoice.checkpoint.state import Content
from steadyvoice.checkpoint.store import CheckpointStore, Entry
from steadyvoice.checkpoint.tensorfile import read_tensors
from steadyvoice.errors import EXIT_FAILED, CheckpointError

log = logging.getLogger("steadyvoice.checkpoint")

CHECKPOINTS_DIR = "checkpoints"
MODEL_PART = "model"  # the part that holds the inference model (what export and --init-from read)


# ------------------------------------------------------------------------------------------ loading
def load_checkpoint(ckpt_dir: str | Path) -> Content:
    """Read one checkpoint, checking every file's size and checksum before its bytes are parsed.

    Each file is read once; its tensors are views of the bytes that were checked (no second copy).
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    names = sorted(manifest.files)
    # One file at a time: reading into fresh memory is bound by page faults, which two threads of one
    # process contend for (two at a time measured 2-3x slower on 2 cores). Within a file, the checksum runs
    # on a second thread behind the read (read_verified).
    raw = {name: read_verified(ckpt_dir, manifest, name) for name in names}
    state = check_state_json(ckpt_dir / STATE_FILE, raw.pop(STATE_FILE).tobytes())
    if state.get("format_version") == 1:
        state = v1.upgrade(state)
    else:
        check_part_files(ckpt_dir / STATE_FILE, state, manifest)
    if state.get("step") != manifest.step:
        raise CorruptCheckpointError([Problem(ckpt_dir / STATE_FILE, f"says step {state.get('step')}, manifest.json says {manifest.step}")])
    files = {name: read_tensors(ckpt_dir / name, data) for name, data in raw.items() if name.endswith(".safetensors")}
    return Content(path=ckpt_dir, digest=manifest.digest, step=manifest.step, state=state, files=files)


def load_model_tensors(ckpt_dir: Path, part: str = MODEL_PART) -> dict[str, torch.Tensor]:
    """Only the weights file of one model part of a checkpoint (verified)."""
    manifest = read_manifest(ckpt_dir)
    name = part_file(part)
    if name not in manifest.files:
        raise CheckpointError(f"{ckpt_dir}: the checkpoint has no model part '{part}' ({name})")
    return read_tensors(ckpt_dir / name, read_verified(ckpt_dir, manifest, name))


@dataclass
class Skipped:
    """A checkpoint that could not be used, and why (Problems or messages)."""

    path: Path
    problems: list


def none_valid_error(where: Path, skipped: list[Skipped]) -> CheckpointError:
    """The error when checkpoints exist but none can be used (each one's problems, newest first)."""
    details = "; ".join(str(p) for s in skipped for p in s.problems)
    error = CheckpointError(
        f"{where}: checkpoints exist but none can be used ({details}). Refusing to start from scratch: restore "
        "the damaged files (or the run's original config, if it changed), point --resume-from at a good "
        "checkpoint, or pass --restart to start over (existing checkpoints are moved aside, not deleted)"
    )
    error.exit_code = EXIT_FAILED  # the command is right; the stored run is not usable
    return error


# ------------------------------------------------------------------------------------------ paths
def is_checkpoint_dir(path: Path) -> bool:
    return (path / MANIFEST_FILE).exists() or parse_step_dir_name(path.name) is not None


def store_of(path: Path) -> CheckpointStore | None:
    """The checkpoint store of a run directory or of a ``checkpoints/`` directory, else None."""
    if (path / CHECKPOINTS_DIR).is_dir():
        return CheckpointStore(path / CHECKPOINTS_DIR)
    if path.is_dir() and any(parse_step_dir_name(c.name) is not None for c in path.iterdir()):
        return CheckpointStore(path)
    return None


LAST, BEST = "last", "best"  # RUN_DIR/last, RUN_DIR/best


def named_checkpoint(path: Path) -> tuple[CheckpointStore, str] | None:
    """(the run's store, "last" or "best") when PATH is ``RUN_DIR/last`` or ``RUN_DIR/best``, else None.

    Only when nothing of that name exists: a real directory called ``best`` is taken as it is.
    """
    if path.name not in (LAST, BEST) or path.exists():
        return None
    run_dir = path.parent
    if not run_dir.is_dir():
        raise CheckpointError(f"{path}: no such run directory ({run_dir}), so it has no {path.name} checkpoint")
    store = store_of(run_dir)
    if store is None:
        raise CheckpointError(f"{path}: {run_dir} is not a run directory (no {CHECKPOINTS_DIR}/), so it has no "
                              f"{path.name} checkpoint")
    return store, path.name


def best_checkpoint(store: CheckpointStore, run_dir: Path) -> Path:
    """``RUN_DIR/best``: the newest checkpoint saved as the best validation (it must verify)."""
    entry = _best_entry(store, run_dir)
    problems = verify_dir(entry.path).problems
    if problems:
        error = CheckpointError(f"{run_dir / BEST} is {entry.path}, which does not verify: "
                                + "; ".join(str(p) for p in problems))
        error.exit_code = EXIT_FAILED  # stored data is damaged, the command is right
        raise error
    return entry.path


def _best_entry(store: CheckpointStore, run_dir: Path) -> Entry:
    entry = store.best()
    if entry is None:
        raise CheckpointError(
            f"{run_dir / BEST}: no checkpoint of this run is marked best (one is marked when it is saved at a "
            f"validation that improves on every earlier one: has the run validated yet?); use {run_dir / LAST} "
            "for the newest checkpoint")
    return entry


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory for PATH: a checkpoint dir, a run dir's newest checkpoint that verifies,
    ``RUN_DIR/last`` (the same) or ``RUN_DIR/best``."""
    path = Path(path)
    named = named_checkpoint(path)
    if named is not None:
        store, name = named
        return best_checkpoint(store, path.parent) if name == BEST else newest_checkpoint(store, path.parent)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if is_checkpoint_dir(path):
        return path
    store = store_of(path)
    if store is None:
        raise CheckpointError(f"{path}: neither a checkpoint directory (no {MANIFEST_FILE}) nor a run directory (no {CHECKPOINTS_DIR}/)")
    return newest_checkpoint(store, path)


def newest_checkpoint(store: CheckpointStore, path: Path) -> Path:
    """The newest checkpoint of ``store`` that verifies (``RUN_DIR`` or ``RUN_DIR/last``)."""
    for entry in reversed(store.entries()):
        problems = entry.problems if not entry.committed else verify_dir(entry.path).problems
        if not problems:
            return entry.path
        log.warning("skipping %s: %s", entry.path, "; ".join(str(p) for p in problems))
    if not store.entries():
        raise CheckpointError(f"{path}: the run directory has no checkpoints yet")
    raise CheckpointError(f"{path}: no checkpoint in it verifies (run `steadyvoice ckpt verify {path}` for details)")


# ------------------------------------------------------------------------------------------ listing
@dataclass
class CheckpointInfo:
    """One row of ``steadyvoice ckpt list``."""

    path: Path
    step: int
    valid: bool
    problems: list[Problem]
    epoch: Any = None
    created: str | None = None
    size: int = 0
    is_best: bool = False
    reason: str | None = None
    metrics: dict | None = None
    markers: tuple[str, ...] = ()


def _dir_size(path: Path) -> int:
    total = 0
    for child in path.iterdir():
        try:
            total += child.stat().st_size if child.is_file() else 0
        except OSError:
            pass
    return total


def list_checkpoints(path: str | Path, verify: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint directory of a run (oldest first); ``verify`` hashes every file."""
    path = Path(path)
    store = store_of(path) if not is_checkpoint_dir(path) else None
    if store is None:
        if is_checkpoint_dir(path):
            entries = [_entry_of(path)]
        else:
            raise CheckpointError(f"{path}: not a run directory (no {CHECKPOINTS_DIR}/) nor a checkpoint directory")
    else:
        entries = store.entries()
    rows = []
    for e in entries:
        problems = list(e.problems)
        if e.committed and verify:
            problems = verify_dir(e.path).problems
        info = e.manifest.info if e.manifest else {}
        rows.append(
            CheckpointInfo(
                path=e.path, step=e.step, valid=e.committed and not problems, problems=problems,
                epoch=info.get("epoch"), created=info.get("created"), size=_dir_size(e.path),
                is_best=bool(info.get("is_best")), reason=info.get("reason"), metrics=info.get("metrics"),
            )
        )
    valid = [r for r in rows if r.valid]
    best = [r for r in valid if r.is_best]
    for r in rows:
        marks = []
        if valid and r is valid[-1]:
            marks.append("last")
        if best and r is best[-1]:
            marks.append("best")
        r.markers = tuple(marks)
    return rows


def _entry_of(ckpt_dir: Path) -> Entry:
    """The listing entry of one checkpoint directory (the same checks as CheckpointStore.entries)."""
    step = parse_step_dir_name(ckpt_dir.name)
    if step is not None and ckpt_dir.parent.is_dir():
        for entry in CheckpointStore(ckpt_dir.parent).entries():
            if entry.path.name == ckpt_dir.name:
                return entry
    try:
        manifest = read_manifest(ckpt_dir)
        return Entry(manifest.step, ckpt_dir, manifest)
    except CorruptCheckpointError as exc:
        return Entry(-1, ckpt_dir, None, exc.problems)


def verify_checkpoint(path: str | Path) -> list[VerifyReport]:
    """Full verification of a checkpoint directory, or of every checkpoint of a run directory."""
    path = Path(path)
    named = named_checkpoint(path)
    if named is not None:  # RUN_DIR/best is reported even when damaged; RUN_DIR/last is the newest that verifies
        path = _best_entry(named[0], path.parent).path if named[1] == BEST else resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if is_checkpoint_dir(path):
        entries = [_entry_of(path)]
    else:
        store = store_of(path)
        if store is None:
            raise CheckpointError(f"{path}: neither a checkpoint directory (no {MANIFEST_FILE}) nor a run directory (no {CHECKPOINTS_DIR}/)")
        entries = store.entries()
        if not entries:
            raise CheckpointError(f"{path}: no checkpoints to verify")
    return [verify_dir(e.path) if e.committed else VerifyReport(e.path, None, e.problems) for e in entries]


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """A summary of one checkpoint (JSON-able): step, epoch, lr per group, world size, validity, ..."""
    ckpt = resolve_checkpoint(path)
    report = verify_dir(ckpt)
    out: dict[str, Any] = {"path": str(ckpt), "valid": report.valid, "problems": [str(p) for p in report.problems]}
    sizes = {}
    for child in sorted(ckpt.iterdir()):
        if child.is_file():
            sizes[child.name] = child.stat().st_size
    out["sizes"] = sizes
    out["total_size"] = sum(sizes.values())
    if report.manifest is not None:
        out["step"] = report.manifest.step
        out["digest"] = report.manifest.digest
        out.update({k: report.manifest.info.get(k) for k in ("epoch", "created", "reason", "is_best", "metrics", "world_size")})
    try:
        state = check_state_json(ckpt / STATE_FILE, (ckpt / STATE_FILE).read_bytes())
    except (CorruptCheckpointError, OSError):
        return out
    if state.get("format_version") == 1:
        state = v1.upgrade(state)
    out["versions"] = state.get("versions")
    for name, entry in (state.get("parts") or {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("kind") == "optimizer":
            groups = [
                {
                    "lr": _plain(g.get("hyperparameters", {}).get("lr")),
                    "initial_lr": _plain(g.get("hyperparameters", {}).get("initial_lr")),
                    "num_params": len(g.get("params", [])),
                }
                for g in entry.get("param_groups", [])
            ]
            if name == "optimizer":
                out["param_groups"] = groups
                out["lr"] = [g["lr"] for g in groups]
            else:
                out[name] = {"param_groups": groups}
        elif entry.get("kind") == "json":
            out[name] = entry.get("state")
    return out


def _plain(value: Any) -> Any:
    return None if isinstance(value, dict) else value  # tensor-valued hyperparameters are not shown


# ------------------------------------------------------------------------------------------ weights only
def load_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load model weights only (``--init-from``), strictly; returns a description of the source for the log.

    PATH: a checkpoint directory, a run directory (its newest valid checkpoint) or an exported model
    directory (model.safetensors + config.json). Every key and shape must fit.
    """
    from steadyvoice.checkpoint.parts import ModelState
    from steadyvoice.models import is_model_dir, read_pretrained_weights

    path = Path(path)
    if is_model_dir(path) and not is_checkpoint_dir(path):
        sd, where = read_pretrained_weights(path, error=CheckpointError)
        source = f"exported model {path}"
    else:
        ckpt = resolve_checkpoint(path)
        sd = load_model_tensors(ckpt)
        source, where = f"checkpoint {ckpt}", ckpt / part_file(MODEL_PART)
    ModelState(model).load_state_dict(sd, where=str(where))
    return source


# ------------------------------------------------------------------------------------------ export
def model_config_of(state: dict, where: Path):
    """The model configuration a checkpoint was trained with (from the resolved config in state.json)."""
    from steadyvoice.errors import ConfigError, ModelError
    from steadyvoice.models import resolve_config

    config = state.get("config")
    section = config.get("model") if isinstance(config, dict) else None
    if not isinstance(section, dict) or "name" not in section:
        raise CheckpointError(f"{where}: the checkpoint holds no model config (config.model); cannot export it")
    try:
        return resolve_config(section["name"], section.get("overrides") or {}, path="model.overrides")
    except (ConfigError, ModelError) as exc:
        raise CheckpointError(f"{where}: its model config is not valid here: {exc}") from None


@dataclass
class Exported:
    """What ``export_checkpoint`` wrote, and from which checkpoint."""

    out_dir: Path
    checkpoint: Path
    step: int
    is_best: bool  # saved as the best validation so far
    metric: tuple[str, float] | None  # the validation metric the run monitored (schedule.monitor), if saved


def monitored_metric(state: dict, metrics: dict | None) -> tuple[str, float] | None:
    """("valid_loss", value) or ("valid_si_sdr", value): the metric that picks the best (schedule.monitor)."""
    config = state.get("config")
    schedule = config.get("schedule") if isinstance(config, dict) else None
    monitor = schedule.get("monitor", "loss") if isinstance(schedule, dict) else "loss"
    key = f"valid_{monitor}"
    value = (metrics or {}).get(key)
    return (key, float(value)) if isinstance(value, (int, float)) else None


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Exported:
    """Write the inference model of a checkpoint (model.safetensors + config.json) to ``out_dir``."""
    from steadyvoice.models import build_model, save_pretrained

    ckpt = resolve_checkpoint(path)
    content = load_checkpoint(ckpt)
    cfg = model_config_of(content.state, ckpt / STATE_FILE)
    model = build_model(cfg)
    load_model_into(model, content, MODEL_PART)
    source = {
        "kind": "steadyvoice-checkpoint",
        "checkpoint": os.fspath(ckpt.resolve()),
        "digest": content.digest,
        "step": content.step,
        "epoch": content.epoch,
        "metrics": content.state.get("metrics"),
    }
    out = save_pretrained(model, cfg, out_dir, source=source)
    return Exported(out_dir=out, checkpoint=ckpt, step=content.step, is_best=bool(content.state.get("is_best")),
                    metric=monitored_metric(content.state, content.state.get("metrics")))


def load_model_into(model: torch.nn.Module, content: Content, part: str = MODEL_PART) -> None:
    """Strictly load model part ``part`` of a loaded checkpoint into ``model``."""
    from steadyvoice.checkpoint.parts import ModelState

    if part not in content.parts or content.parts[part]["kind"] != "model":
        raise CheckpointError(f"{content.path}: the checkpoint has no model part '{part}'")
    ModelState(model).load_state_dict(content.tensors_of(part), where=str(content.path / content.parts[part]["file"]))
