"""Continue a ClearerVoice-Studio training run: import its newest checkpoint as a SteadyVoice run directory.

A ClearerVoice training directory holds ``model.ckpt-E-S.pt`` files (``torch.save({'model', 'optimizer',
'epoch', 'step'})``) and the text pointers ``last_checkpoint`` / ``last_best_checkpoint`` naming a file.
:func:`import_clearervoice` takes the newest checkpoint the pointers name (or, if they name nothing that
exists, the newest ``model.ckpt-*.pt``), reads it without running pickled code
(:func:`steadyvoice.models.clearervoice.read_official_checkpoint`; then ``torch.load(weights_only=True)``
for the optimizer), maps every weight to our names, infers the network configuration from the shapes,
maps the Adam state from their parameter ORDER to our parameter NAMES, and produces the state of each
named part of a fresh :class:`~steadyvoice.train.loop.Trainer` (model, optimizer, progress, data position,
schedule), loading it through the parts' own ``load_state_dict`` (so a missing ``lr`` / ``initial_lr`` is
repaired, with a warning, where every checkpoint's is: :class:`~steadyvoice.checkpoint.parts.
OptimizerState`). It then writes ``config.yaml`` and saves one ordinary, verified checkpoint through
:class:`~steadyvoice.checkpoint.Checkpointer`. This module sits above both ``steadyvoice.checkpoint`` and
``steadyvoice.train``: it is the one place that uses both.

Semantics of their counters (their solver, ``train/speech_enhancement/solver.py``):

* ``epoch`` E is the 0-based index of the epoch that was running when the file was written. The solver
  saves both in the middle of epoch E (every ``checkpoint_save_freq`` batches) and at its end, and the two
  cannot be told apart from the file. On resume ClearerVoice itself restarts epoch E from its first
  batch. The import does the same by default (data position: epoch E, 0 examples consumed): no example is
  skipped, at worst part of an epoch is seen again. ``epoch_finished=True`` (``--epoch-finished``) says the
  file was written at the end of epoch E and continues with epoch E+1.
* ``step`` S counts their mini-batches (with gradient accumulation, several per optimizer step). Our step
  counts optimizer steps, so it is taken from Adam's own per-parameter ``step`` (S when there is no Adam
  state); S is kept as ``progress.micro_step``.
* Their best validation loss and patience counter are not saved: early stopping starts fresh (the first
  validation becomes the best; nothing is overwritten, every SteadyVoice save is a new directory). Their
  learning rate (halved by their plateau rule) is kept: the schedule's scale is set to lr / optim.lr.

Parameter order: their optimizer state is indexed by the position of each parameter in
``model.parameters()``, which is the state_dict order without buffers (``pos_enc.inv_freq``) and
without repeats of a shared parameter (the rotary ``freqs``, one tensor listed once per layer, counted at
its first occurrence). The mapping is checked: the number of parameters must equal the optimizer's and
every moment must have the size of its parameter.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steadyvoice.checkpoint.api import CHECKPOINTS_DIR
from steadyvoice.errors import CheckpointError, ConfigError

log = logging.getLogger("steadyvoice.checkpoint")

POINTER_FILES = ("last_checkpoint", "last_best_checkpoint")
CHECKPOINT_NAME = re.compile(r"^model\.ckpt-(\d+)-(\d+)\.pt$")
_BUFFER_SUFFIXES = ("pos_enc.inv_freq",)  # persistent buffers in their state_dict (not parameters)
_SHARED_PARAMETER_SUFFIX = "rotary_pos_emb.freqs"  # one parameter shared by every layer
# MossFormer2SEConfig fields read from the tensor shapes by infer_config (the rest come from the config).
_INFERRED_FIELDS = {"n_mels", "win_length", "model_dim", "num_blocks", "num_spks", "query_key_dim",
                    "expansion_factor", "rotary_dim", "conv_kernel", "fsmn_inner_dim", "fsmn_lorder",
                    "norm_type", "use_global_pos_enc", "sample_rate", "hop_length", "fmin"}


@dataclass
class ImportResult:
    source: Path  # the ClearerVoice file imported
    their_epoch: int
    their_step: int
    checkpoint: Path  # the SteadyVoice checkpoint written
    step: int  # optimizer steps
    epoch: int  # the epoch the continued run starts with
    config_path: Path
    repaired: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ finding
def _epoch_step(path: Path) -> tuple[int, int] | None:
    m = CHECKPOINT_NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_checkpoint(src_dir: Path) -> Path:
    """The newest checkpoint named by the pointer files, else the newest ``model.ckpt-E-S.pt``."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise CheckpointError(f"{src_dir}: not a directory; give the ClearerVoice checkpoint directory "
                              "(the one holding last_checkpoint and model.ckpt-*.pt)")
    named = []
    for pointer in POINTER_FILES:
        path = src_dir / pointer
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").split()
        target = src_dir / lines[0] if lines else None
        if target is not None and target.is_file():
            named.append(target)
        else:
            log.warning("%s names %r, which does not exist; looking at the other checkpoints", path, lines[0] if lines else "")
    if named:
        return max(named, key=lambda p: (_epoch_step(p) or (-1, -1), p.stat().st_mtime))
    files = [p for p in src_dir.iterdir() if _epoch_step(p) is not None]
    if not files:
        raise CheckpointError(f"{src_dir}: no ClearerVoice checkpoint (no last_checkpoint / last_best_checkpoint "
                              "pointer naming a file, no model.ckpt-E-S.pt)")
    return max(files, key=lambda p: _epoch_step(p))


def _read_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state_dict, whole checkpoint dict) without running pickled code."""
    from steadyvoice.models.clearervoice import read_official_checkpoint

    model_sd = read_official_checkpoint(path)  # refuses Git-LFS pointers, code-running pickles, non-tensors
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            whole = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # read_official_checkpoint already explained unsafe/corrupt files
        raise CheckpointError(f"{path}: cannot read the training state ({exc})") from None
    if not isinstance(whole, dict) or "optimizer" not in whole:
        raise CheckpointError(f"{path}: holds no optimizer state: it is a weights-only file (use "
                              "`steadyvoice convert clearervoice` and --init-from to fine-tune from it)")
    return model_sd, whole


# ------------------------------------------------------------------------------------------ mapping
def parameter_keys(model_sd: dict[str, torch.Tensor], count: int) -> list[str]:
    """Their state_dict keys in ``model.parameters()`` order (see the module docstring), checked against ``count``."""
    from steadyvoice.models.clearervoice import strip_wrapper_prefixes

    keys = [k for k in strip_wrapper_prefixes(model_sd) if not k.endswith(_BUFFER_SUFFIXES)]
    with_shared, seen = [], False
    for k in keys:
        if k.endswith(_SHARED_PARAMETER_SUFFIX):
            if seen:
                continue
            seen = True
        with_shared.append(k)
    without_shared = [k for k in keys if not k.endswith(_SHARED_PARAMETER_SUFFIX)]
    for candidate in (with_shared, without_shared):
        if len(candidate) == count:
            return candidate
    raise CheckpointError(
        f"the optimizer state has {count} parameters but the network has {len(with_shared)}: the checkpoint's "
        "optimizer does not belong to its model (or the network is not ClearerVoice's MossFormer2_SE)"
    )


def _our_name(key: str, tensor: torch.Tensor) -> str | None:
    from steadyvoice.models.clearervoice import official_to_ours

    mapped = official_to_ours({key: tensor})
    return next(iter(mapped)) if mapped else None  # None: a fixed table we compute (rotary freqs)


def map_optimizer_state(model_sd: dict[str, torch.Tensor], osd: dict, ours: dict[str, torch.Tensor],
                        where: Path) -> dict[str, dict[str, Any]]:
    """Their index-keyed Adam state -> {our parameter name: state}, moments reshaped like our weights."""
    from steadyvoice.models.clearervoice import strip_wrapper_prefixes

    bare = strip_wrapper_prefixes(model_sd)
    indices = [i for g in osd.get("param_groups", []) for i in g.get("params", [])]
    keys = parameter_keys(model_sd, len(indices))
    by_name: dict[str, dict[str, Any]] = {}
    for position, index in enumerate(indices):
        state = osd.get("state", {}).get(index)
        key = keys[position]
        name = _our_name(key, bare[key])
        if name is None or not state:
            continue
        target = ours[name]
        converted = {}
        for skey, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if value.numel() != target.numel():
                    raise CheckpointError(
                        f"{where}: optimizer state '{skey}' of parameter {index} has {value.numel()} values but "
                        f"'{key}' has {target.numel()}: the optimizer state does not match the model's parameter order")
                value = value.reshape(target.shape).clone()
            converted[skey] = value
        by_name[name] = converted
    return by_name


# ------------------------------------------------------------------------------------------ import
def import_clearervoice(src_dir: str | Path, dest_run_dir: str | Path, *, config: str | Path | None = None,
                        overrides: list[str] | None = None, sample_rate: int | None = None,
                        epoch_finished: bool = False) -> ImportResult:
    """Write ``dest_run_dir`` (config.yaml + one committed checkpoint) from a ClearerVoice training directory."""
    from steadyvoice.config import apply_overrides, from_dict, to_dict
    from steadyvoice.data import build_training_data
    from steadyvoice.models import get_config
    from steadyvoice.models.clearervoice import infer_config
    from steadyvoice.train.config import ModelSection, TrainConfig, load_train_config
    from steadyvoice.distributed import DistContext
    from steadyvoice.train.loop import Trainer
    from steadyvoice.train.rundir import RunDirLock, check_run_config, write_run_config

    dest = Path(dest_run_dir)
    if (dest / CHECKPOINTS_DIR).is_dir() and any((dest / CHECKPOINTS_DIR).iterdir()):
        raise CheckpointError(f"{dest}: already has checkpoints; import into a new run directory")
    path = find_checkpoint(Path(src_dir))
    model_sd, whole = _read_training_checkpoint(path)
    their_epoch, their_step = int(whole.get("epoch", 0) or 0), int(whole.get("step", 0) or 0)

    # The continued run's config: the given one (or the defaults = the official recipe), with the network
    # read from the checkpoint; what shapes cannot tell (rate, hop, fixed inner settings) comes from it.
    if config is not None:
        cfg = load_train_config(config, overrides)
    else:
        cfg = from_dict(TrainConfig, apply_overrides({}, overrides or []))
    base = cfg.model.resolve()
    if sample_rate is not None:
        base = dataclasses.replace(base, sample_rate=sample_rate)
    fixed = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in _INFERRED_FIELDS}
    try:
        model_cfg = infer_config(model_sd, sample_rate=base.sample_rate, hop_length=base.hop_length, fmin=base.fmin, **fixed)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    named = get_config(cfg.model.name)
    changed = {k: v for k, v in to_dict(model_cfg).items() if to_dict(named)[k] != v}
    cfg = dataclasses.replace(cfg, model=ModelSection(name=cfg.model.name, overrides=changed))
    if cfg.model.resolve() != model_cfg:  # a bug here, not a user error
        raise CheckpointError(f"{path}: could not express the inferred network configuration in config.yaml")
    if not (cfg.data.clean or cfg.data.pairs):
        raise CheckpointError(
            "the imported run needs the training data it will continue on: pass --pairs LIST (ClearerVoice's "
            ".scp lists work as they are), or --clean DIR --noise DIR, or --config FILE with a data section")

    with RunDirLock.acquire(dest):  # no trainer may use the run directory while it is written
        try:
            check_run_config(dest, cfg, restart=False)
        except ConfigError as exc:
            raise CheckpointError(f"{dest}: {exc}") from None
        data = build_training_data(cfg.data, sample_rate=model_cfg.sample_rate, seed=cfg.train.seed,
                                   valid_batch_size=cfg.train.valid_batch_size or cfg.train.batch_size)
        try:
            write_run_config(dest, cfg)
        except ConfigError as exc:
            raise CheckpointError(f"{dest}: {exc}") from None
        return _import_into(dest, cfg, Trainer(cfg, data, DistContext(), run_dir=dest), path, model_sd, whole,
                            their_epoch, their_step, epoch_finished)


def _import_into(dest: Path, cfg, trainer, path: Path, model_sd: dict, whole: dict, their_epoch: int,
                 their_step: int, epoch_finished: bool) -> ImportResult:
    """Their model, optimizer and counters as the state of ``trainer``'s parts, saved as one checkpoint."""
    from steadyvoice.checkpoint.checkpointer import Checkpointer
    from steadyvoice.distributed import DistContext
    from steadyvoice.models.clearervoice import official_to_ours


    parts = trainer.parts
    parts["model"].load_state_dict(official_to_ours(model_sd), where=str(path))
    state_by_name = map_optimizer_state(model_sd, whole["optimizer"], trainer.model.state_dict(), path)
    names = trainer.param_names()
    unknown = sorted(set(state_by_name) - set(names))
    if unknown:
        raise CheckpointError(f"{path}: optimizer state for parameter(s) the trainer does not optimise: {unknown[:5]}")
    opt_steps = [int(s["step"]) for s in state_by_name.values() if "step" in s]
    step = max(opt_steps) if opt_steps else their_step

    # Our two parameter groups with their learning rate (one group there; halved by their plateau rule).
    # A missing lr / initial_lr is left out: the optimizer part repairs it from the config and says so.
    theirs = (whole["optimizer"].get("param_groups") or [{}])[0]
    live = parts["optimizer"].state_dict()["param_groups"]
    groups = [{**{k: v for k, v in g.items() if k not in ("lr", "initial_lr")},
               **{k: theirs[k] for k in ("lr", "initial_lr") if k in theirs}} for g in live]
    parts["optimizer"].load_state_dict({"param_groups": groups, "state": state_by_name}, where=str(path))
    lr = float(theirs["lr"]) if "lr" in theirs else cfg.optim.lr
    parts["progress"].load_state_dict({"step": step, "micro_step": their_step, "samples": 0})
    parts["data"].load_state_dict({"epoch": their_epoch + 1 if epoch_finished else their_epoch, "consumed": 0,
                                   "num_examples": len(trainer.data.train)})
    parts["schedule"].load_state_dict({"scale": lr / cfg.optim.lr})  # rewrites every group's lr

    checkpointer = Checkpointer(dest, cfg.checkpoint, DistContext())
    checkpointer.save(parts, step=step, epoch=trainer.position.epoch, metrics={}, is_best=False,
                      reason=f"imported from ClearerVoice {path.name} (epoch {their_epoch}, step {their_step})")
    checkpointer.close()
    return ImportResult(source=path, their_epoch=their_epoch, their_step=their_step, checkpoint=checkpointer.last_saved,
                        step=step, epoch=trainer.position.epoch, config_path=dest / "config.yaml",
                        repaired=list(parts["optimizer"].repaired))
