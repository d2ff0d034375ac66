"""The Checkpointer: what the trainer calls (restore / save / load_best_weights / close).

Protocol (docs/DESIGN.md, "Training <-> checkpoints")::

    ckpt = Checkpointer(run_dir, cfg.checkpoint, dist, resume_from=None, restart=False)
    resumed = ckpt.restore(trainer)      # newest checkpoint that verifies; False = fresh run
    ckpt.save(trainer, metrics={...}, is_best=..., reason="periodic")   # blocks only for the host copy
    ckpt.load_best_weights(trainer)      # plateau: best weights + optimizer moments, counters untouched
    ckpt.close()                         # wait until the last save is committed (re-raises its error)

Under DDP (``dist.world_size > 1``): rank 0 alone touches the file system (clean-up, moving aside,
writing); rank 0 picks the checkpoint to resume and broadcasts its manifest digest, every rank loads and
verifies that same checkpoint, and any rank's failure fails all of them. At every save the ranks compare a
SHA-256 of their model parameters; replicas that differ are an error, not a silent save. The RNG states
of all ranks are gathered to rank 0 and saved.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from steadyvoice.checkpoint.api import CHECKPOINTS_DIR, load_checkpoint, newest_loadable, none_valid_error, resolve_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import CorruptCheckpointError
from steadyvoice.checkpoint.state import (
    MODEL_PART,
    OPTIMIZER_PART,
    RNG_PART,
    Content,
    RestoreNotes,
    check_model_keys,
    restore_state,
    snapshot,
)
from steadyvoice.checkpoint.store import CheckpointStore
from steadyvoice.checkpoint.writer import AsyncWriter
from steadyvoice.errors import CheckpointError
from steadyvoice.train.distributed import DistContext

log = logging.getLogger("steadyvoice.checkpoint")


class Checkpointable(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, sd: dict) -> None: ...
    def param_names(self) -> list[str]: ...


@dataclass
class RestoreInfo:
    """What restore() did (also logged)."""

    path: Path
    step: int
    epoch: Any
    digest: str
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification (messages)
    repaired: list[str] = field(default_factory=list)  # hyperparameters filled in from the config
    rng: str = "own"  # "own" or "derived" (world size changed)
    set_aside: Path | None = None


class Checkpointer:
    def __init__(
        self,
        run_dir: str | Path,
        cfg: CheckpointConfig | None = None,
        dist: DistContext | None = None,
        resume_from: str | Path | None = None,
        restart: bool = False,
    ):
        if resume_from is not None and restart:
            raise CheckpointError("--restart and --resume-from exclude each other: pick one")
        self.run_dir = Path(run_dir)
        self.cfg = cfg or CheckpointConfig()
        self.dist = dist or DistContext()
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.restart = restart
        self.store = CheckpointStore(self.run_dir / CHECKPOINTS_DIR)
        self.writer = AsyncWriter(enabled=self.cfg.async_save)
        self.restored: RestoreInfo | None = None
        self.last_saved: Path | None = None  # path of the last committed save (rank 0)
        self._config: Any = None
        self._picked: Content | None = None  # rank 0: the checkpoint chosen by _prepare_and_pick / _pick_best
        self._staging: dict[str, torch.Tensor] = {}  # rank 0: host buffers reused from save to save

    # ------------------------------------------------------------------------------------------ restore
    def restore(self, trainer: Checkpointable) -> bool:
        """Load the checkpoint to resume from into ``trainer``; False when the run starts fresh."""
        decision = None
        if self.dist.is_main:
            decision = _guard(self._prepare_and_pick)
        decision = self.dist.broadcast_object(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        if decision.get("fresh"):
            return False
        content = self._picked if self.dist.is_main else None
        if content is None:  # other ranks read the same checkpoint and check it is the same one
            content = _guard(lambda: _load_expected(Path(decision["path"]), decision["digest"]))
        self._agree(content, "load the checkpoint to resume from")
        assert isinstance(content, Content)
        notes = self._load_into(trainer, content)
        self._picked = None
        set_aside = None
        if self.dist.is_main:
            set_aside = self._set_aside_newer(content.step, "set-aside")
        self.dist.barrier()
        self.restored = RestoreInfo(
            path=content.path, step=content.step, epoch=content.epoch, digest=content.digest,
            skipped=decision.get("skipped", []), repaired=notes.repaired, rng=notes.rng, set_aside=set_aside,
        )
        log.info("resumed from %s (step %d, epoch %s)%s", content.path, content.step, content.epoch,
                 "; RNG re-derived for the new world size" if notes.rng == "derived" else "")
        return True

    def _prepare_and_pick(self) -> dict:
        """Rank 0: clean up, apply --restart, choose (and load) the checkpoint."""
        self._picked = None
        for message in self.store.clean_stale():
            log.warning(message)
        if self.restart:
            moved = self.store.move_all_aside("restart")
            if moved is not None:
                log.warning("--restart: the existing checkpoints were moved to %s (nothing deleted)", moved)
            return {"fresh": True}
        if self.resume_from is not None:
            path = resolve_checkpoint(self.resume_from)
            try:
                content = load_checkpoint(path)
            except CorruptCheckpointError as exc:
                raise CheckpointError(f"--resume-from {self.resume_from}: the checkpoint does not verify: {exc}") from None
            self._picked = content
            return {"path": str(content.path), "digest": content.digest}
        if not self.store.entries():
            return {"fresh": True}
        content, skipped = newest_loadable(self.store)
        for s in skipped:
            log.warning("checkpoint %s is not usable, trying an older one: %s", s.path, "; ".join(str(p) for p in s.problems))
        if content is None:
            raise none_valid_error(self.store.root, skipped)
        self._picked = content
        return {"path": str(content.path), "digest": content.digest,
                "skipped": [str(p) for s in skipped for p in s.problems]}

    def _agree(self, outcome: Any, what: str) -> None:
        """Every rank succeeded, or all raise (naming the ranks that failed)."""
        message = outcome["error"] if isinstance(outcome, dict) and "error" in outcome else None
        messages = self.dist.all_gather_object(message)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            if len(messages) == 1:
                raise CheckpointError(failed[0][1])
            raise CheckpointError(f"could not {what} on rank(s) {', '.join(str(r) for r, _ in failed)}: " + "; ".join(f"rank {r}: {m}" for r, m in failed))

    def _load_into(self, trainer: Checkpointable, content: Content) -> RestoreNotes:
        current = trainer.state_dict()
        sd, notes = restore_state(content, current, trainer.param_names(), self.dist.rank, self.dist.world_size)
        for note in notes.repaired:
            log.warning("%s: the optimizer state lacked hyperparameters; repaired from the config: %s", content.path, note)
        trainer.load_state_dict(sd)
        if not notes.repaired:  # the trainer must not change the LR while loading (e.g. a scheduler built afterwards)
            after = trainer.state_dict()[OPTIMIZER_PART]["param_groups"]
            for g, (want, got) in enumerate(zip(sd[OPTIMIZER_PART]["param_groups"], after)):
                if want.get("lr") != got.get("lr"):
                    raise CheckpointError(
                        f"{content.path}: after loading, param group {g} has lr={got.get('lr')!r} but the checkpoint "
                        f"says {want.get('lr')!r}: trainer.load_state_dict must restore the optimizer before the "
                        "schedule and must not recreate a scheduler (a bug in the trainer)"
                    )
        return notes

    def _set_aside_newer(self, step: int, label: str) -> Path | None:
        """Move checkpoints newer than the one resumed from out of the way (never deleted)."""
        newer = [e for e in self.store.entries() if e.step > step]
        dest = self.store.set_aside(newer, label)
        if dest is not None:
            log.warning("moved %d checkpoint(s) newer than step %d (damaged, or abandoned by --resume-from) to %s",
                        len(newer), step, dest)
        return dest

    # ------------------------------------------------------------------------------------------ save
    def save(self, trainer: Checkpointable, *, metrics: dict | None = None, is_best: bool = False, reason: str = "periodic") -> None:
        """Snapshot ``trainer`` to host memory and write it in the background (rank 0)."""
        if self.dist.is_main:
            self.writer.wait()  # at most one save in flight; an error of the previous save is raised here
        sd = trainer.state_dict()
        names = list(trainer.param_names())
        if self.dist.is_distributed:
            self._check_replicas(sd[MODEL_PART], names, sd)
        rng_of_ranks = self.dist.all_gather_object(sd.get(RNG_PART))
        if not self.dist.is_main:
            return
        snap = snapshot(
            sd, names, rng_of_ranks, metrics=metrics or {}, is_best=is_best, reason=reason,
            config=self._run_config(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            staging=self._staging,  # free to reuse: the previous save was waited for above
        )
        del sd
        self.writer.submit(lambda: self._write(snap))

    def _write(self, snap) -> None:
        path = self.store.commit(snap.step, snap.files(), snap.info)
        self.last_saved = path
        for deleted in self.store.retain(self.cfg.keep_last, self.cfg.keep_best, self.cfg.keep_every):
            log.info("retention: deleted %s", deleted)

    def _check_replicas(self, model_sd: dict, names: list[str], sd: dict) -> None:
        digest = param_digest(model_sd, names)
        digests = self.dist.all_gather_object(digest)
        if len(set(digests)) > 1:
            step = sd.get("progress", {}).get("step")
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise CheckpointError(
                f"model replicas differ at step {step}: the parameters of rank(s) {', '.join(map(str, differ))} are not "
                "identical to rank 0's, so no checkpoint was saved. DDP replicas went out of sync (a parameter "
                "changed outside DDP, a rank skipped an optimizer step, or non-deterministic ops); resume from the "
                "last checkpoint"
            )

    def _run_config(self) -> Any:
        if self._config is None:
            path = self.run_dir / "config.yaml"
            if path.is_file():
                try:
                    self._config = yaml.safe_load(path.read_text(encoding="utf-8"))
                except (OSError, yaml.YAMLError) as exc:
                    raise CheckpointError(f"{path}: cannot read the run's config to store it in the checkpoint ({exc})") from None
        return self._config

    # ------------------------------------------------------------------------------------------ best
    def load_best_weights(self, trainer: Checkpointable) -> Path:
        """Plateau rule: best checkpoint's model weights and optimizer moments; counters, schedule untouched."""
        if self.dist.is_main:
            self.writer.wait()  # the best may be the save in flight
        decision = None
        if self.dist.is_main:
            decision = _guard(self._pick_best)
        decision = self.dist.broadcast_object(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        content = self._picked if self.dist.is_main else _guard(lambda: _load_expected(Path(decision["path"]), decision["digest"]))
        self._picked = None
        self._agree(content, "load the best checkpoint")
        assert isinstance(content, Content)
        current = trainer.state_dict()
        check_model_keys(content.model, current[MODEL_PART], str(content.path))
        loaded, _ = restore_state(content, current, trainer.param_names(), self.dist.rank, self.dist.world_size)
        sd = dict(current)
        sd[MODEL_PART] = loaded[MODEL_PART]
        sd[OPTIMIZER_PART] = {"state": loaded[OPTIMIZER_PART]["state"], "param_groups": current[OPTIMIZER_PART]["param_groups"]}
        trainer.load_state_dict(sd)
        log.info("reloaded the best weights from %s (step %d); counters unchanged", content.path, content.step)
        return content.path

    def _pick_best(self) -> dict:
        best = self.store.best()
        if best is None:
            raise CheckpointError(
                f"{self.store.root}: no checkpoint is marked best, so the best weights cannot be reloaded "
                "(keep checkpoint.keep_best: true and validate before the plateau rule applies)"
            )
        try:
            content = load_checkpoint(best.path)
        except CorruptCheckpointError as exc:
            raise CheckpointError(f"the best checkpoint does not verify: {exc}") from None
        self._picked = content
        return {"path": str(content.path), "digest": content.digest}

    # ------------------------------------------------------------------------------------------ close
    def close(self) -> None:
        """Wait until the last save is committed; re-raise its error if it failed."""
        self.writer.wait()


def _guard(fn) -> Any:
    """Run ``fn``; a CheckpointError becomes {"error": message} so every rank can learn about it."""
    try:
        return fn()
    except CheckpointError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{exc.filename or ''}: {exc.strerror or exc}"}


def _load_expected(path: Path, digest: str) -> Content:
    try:
        content = load_checkpoint(path)
    except CorruptCheckpointError as exc:
        raise CheckpointError(f"{path} does not verify on this rank: {exc}") from None
    if content.digest != digest:
        raise CheckpointError(f"{path}: manifest digest {content.digest[:12]} differs from rank 0's {digest[:12]} (different files on this node?)")
    return content


def param_digest(model_sd: dict[str, torch.Tensor], names: list[str]) -> str:
    """SHA-256 over the bytes of the named parameters (the replica-consistency check under DDP)."""
    h = hashlib.sha256()
    for name in names:
        t = model_sd[name].detach()
        h.update(name.encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy on CPU
    return h.hexdigest()
