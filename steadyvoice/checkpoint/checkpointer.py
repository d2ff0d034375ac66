"""The Checkpointer: what a trainer calls (restore / save / load_best_weights / close) with its named parts.

Protocol (docs/DESIGN.md, "Training <-> checkpoints")::

    ckpt = Checkpointer(run_dir, cfg.checkpoint, dist, resume_from=None, restart=False)
    resumed = ckpt.restore(parts)        # newest checkpoint that verifies AND loads; False = fresh run
    ckpt.save(parts, step=..., epoch=..., metrics={...}, is_best=..., reason="periodic")  # blocks for the host copy
    ckpt.load_best_weights(parts)        # plateau: best weights + optimizer moments, other parts untouched
    ckpt.close()                         # wait until the last save is committed (re-raises its error)

``parts`` maps names to stateful objects (:mod:`steadyvoice.checkpoint.parts`), in load order.

Restore tries the checkpoints newest first. One is skipped, reported (which checkpoint, what is wrong),
and the next older one tried when its files fail verification OR when loading it into the parts fails a
check (a part it lacks, a shape, a malformed state, or an optimizer learning rate that a later part such
as the schedule rewrote to another value: a checkpoint that contradicts itself). Every part is put back
to its fresh state before the next try. Only when none is usable does training stop with an error, never
silently from scratch. Newer checkpoints that were skipped are moved aside (never deleted).

Under DDP (``dist.world_size > 1``): rank 0 alone touches the file system (clean-up, moving aside,
writing) and lists the candidates; every rank loads and verifies the same checkpoint, ranks compare the
manifest digests, and any rank's failure fails that candidate on all of them. At every save the ranks
compare a SHA-256 of their model parameters; replicas that differ are an error, not a silent save. The
RNG states of all ranks are gathered to rank 0 and saved.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from steadyvoice.checkpoint.api import CHECKPOINTS_DIR, Skipped, load_checkpoint, none_valid_error, resolve_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import STATE_FILE, CorruptCheckpointError
from steadyvoice.checkpoint.parts import ModelState, OptimizerState, Parts, kind_of
from steadyvoice.checkpoint.state import Content, snapshot
from steadyvoice.checkpoint.store import CheckpointStore
from steadyvoice.checkpoint.writer import AsyncWriter
from steadyvoice.distributed import DistContext
from steadyvoice.errors import CheckpointError

log = logging.getLogger("steadyvoice.checkpoint")


@dataclass
class RestoreInfo:
    """What restore() did (also logged)."""

    path: Path
    step: int
    epoch: Any
    digest: str
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that could not be used (messages)
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
        self._staging: dict[str, torch.Tensor] = {}  # rank 0: host buffers reused from save to save
        self._rng_note = "own"  # set by _load_into: "derived" when the world size changed

    # ------------------------------------------------------------------------------------------ restore
    def restore(self, parts: Parts) -> bool:
        """Load the newest usable checkpoint into ``parts``; False when the run starts fresh."""
        plan = _guard(self._candidates) if self.dist.is_main else None
        plan = self.dist.broadcast_object(plan)
        if "error" in plan:
            raise CheckpointError(plan["error"])
        if plan.get("fresh"):
            return False
        unusable = [Skipped(Path(path), [message]) for path, message in plan["skipped"]]
        skipped = [message for _, message in plan["skipped"]]
        fresh = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
        for path in plan["candidates"]:
            outcome = _guard(lambda: self._load_into(parts, Path(path)))
            digests = self.dist.all_gather_object(outcome.digest if isinstance(outcome, Content) else None)
            messages = self.dist.all_gather_object(outcome["error"] if isinstance(outcome, dict) else None)
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if not failed and len(set(digests)) > 1:
                failed = [(0, f"{path}: the ranks read different files (manifest digests "
                              f"{', '.join(d[:12] for d in digests)}): is the run directory the same on every node?")]
            if not failed:
                return self._resumed(parts, outcome, skipped)
            message = failed[0][1] if len(messages) == 1 else "; ".join(f"rank {r}: {m}" for r, m in failed)
            for name, part in parts.items():  # undo a partial load before the next candidate
                _load_part(part, fresh[name], "the fresh state")
            if plan.get("explicit"):
                raise CheckpointError(f"--resume-from {self.resume_from}: the checkpoint cannot be used: {message}")
            log.warning("checkpoint %s is not usable, trying an older one: %s", path, message)
            skipped.append(message)
            unusable.append(Skipped(Path(path), [message]))
        raise none_valid_error(self.store.root, unusable)

    def _candidates(self) -> dict:
        """Rank 0: clean up, apply --restart, list the checkpoints to try, newest first."""
        for message in self.store.clean_stale():
            log.warning(message)
        if self.restart:
            moved = self.store.move_all_aside("restart")
            if moved is not None:
                log.warning("--restart: the existing checkpoints were moved to %s (nothing deleted)", moved)
            return {"fresh": True}
        if self.resume_from is not None:
            return {"candidates": [str(resolve_checkpoint(self.resume_from))], "skipped": [], "explicit": True}
        entries = self.store.entries()
        if not entries:
            return {"fresh": True}
        skipped, candidates = [], []
        for entry in reversed(entries):
            if entry.committed:
                candidates.append(str(entry.path))
            else:
                message = "; ".join(str(p) for p in entry.problems)
                log.warning("checkpoint %s is not usable, trying an older one: %s", entry.path, message)
                skipped.append((str(entry.path), message))
        if not candidates:
            raise none_valid_error(self.store.root, [Skipped(e.path, e.problems) for e in entries])
        return {"candidates": candidates, "skipped": skipped}

    def _load_into(self, parts: Parts, path: Path) -> Content:
        """Verify checkpoint ``path``, load every part, check the result (CheckpointError if anything fails)."""
        content = load_checkpoint(path)
        saved = content.parts
        missing = [n for n in parts if n not in saved]
        if missing:
            raise CheckpointError(f"{path}: the checkpoint has no {', '.join(repr(n) for n in missing)} state, "
                                  "which this trainer needs")
        extra = [n for n in saved if n not in parts]
        if extra:
            raise CheckpointError(f"{path}: the checkpoint holds state this trainer does not have: "
                                  f"{', '.join(repr(n) for n in extra)} (another kind of model or trainer?)")
        self._rng_note = "own"
        optimizer_states = {}
        for name, part in parts.items():
            kind = kind_of(part)
            if saved[name]["kind"] != kind:
                raise CheckpointError(f"{path}: part '{name}' is stored as {saved[name]['kind']} but is a {kind} here")
            if kind == "rng" and saved[name]["world_size"] != self.dist.world_size:
                self._rng_note = "derived"
            state = content.part_state(name, self.dist.rank, self.dist.world_size)
            _load_part(part, state, str(path / saved[name].get("file", STATE_FILE)) + f" (part '{name}')")
            if kind == "optimizer":
                optimizer_states[name] = state
        self._check_learning_rates(parts, optimizer_states, content.path)
        return content

    def _check_learning_rates(self, parts: Parts, optimizer_states: dict[str, dict], path: Path) -> None:
        """No part loaded after an optimizer may have changed its learning rates (the checkpoint would
        contradict itself: e.g. a schedule state that does not produce the lr the optimizer was saved with)."""
        for name, state in optimizer_states.items():
            part = parts[name]
            if part.repaired:
                continue
            for g, (want, group) in enumerate(zip(state["param_groups"], part.optimizer.param_groups)):
                if want.get("lr") != group.get("lr"):
                    raise CheckpointError(
                        f"{path}: after loading, param group {g} of '{name}' has lr={group.get('lr')!r} but "
                        f"the checkpoint saved lr={want.get('lr')!r}: its parts disagree (the schedule state does not "
                        "produce the saved learning rate), so the checkpoint cannot be trusted")

    def _resumed(self, parts: Parts, content: Content, skipped: list[str]) -> bool:
        repaired = [note for part in parts.values() if isinstance(part, OptimizerState) for note in part.repaired]
        set_aside = self._set_aside_newer(content.step, "set-aside") if self.dist.is_main else None
        self.dist.barrier()
        self.restored = RestoreInfo(path=content.path, step=content.step, epoch=content.epoch, digest=content.digest,
                                    skipped=skipped, repaired=repaired, rng=self._rng_note, set_aside=set_aside)
        log.info("resumed from %s (step %d, epoch %s)%s", content.path, content.step, content.epoch,
                 "; RNG re-derived for the new world size" if self._rng_note == "derived" else "")
        return True

    def _set_aside_newer(self, step: int, label: str) -> Path | None:
        """Move checkpoints newer than the one resumed from out of the way (never deleted)."""
        newer = [e for e in self.store.entries() if e.step > step]
        dest = self.store.set_aside(newer, label)
        if dest is not None:
            log.warning("moved %d checkpoint(s) newer than step %d (damaged, or abandoned by --resume-from) to %s",
                        len(newer), step, dest)
        return dest

    # ------------------------------------------------------------------------------------------ save
    def save(self, parts: Parts, *, step: int, epoch: Any = None, metrics: dict | None = None, is_best: bool = False,
             reason: str = "periodic") -> None:
        """Snapshot ``parts`` to host memory and write them in the background (rank 0)."""
        if self.dist.is_main:
            self.writer.wait()  # at most one save in flight; an error of the previous save is raised here
        states: dict[str, tuple[str, Any]] = {}
        for name, part in parts.items():
            kind = kind_of(part)
            state = part.state_dict()
            if kind == "rng":
                state = self.dist.all_gather_object(state)  # every rank's generators
            states[name] = (kind, state)
        if self.dist.is_distributed:
            self._check_replicas(parts, step)
        if not self.dist.is_main:
            return
        metrics = {str(k): float(v) if isinstance(v, (int, float, torch.Tensor)) or hasattr(v, "dtype") else v
                   for k, v in (metrics or {}).items()}
        info = {"epoch": epoch, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "reason": reason, "is_best": bool(is_best), "metrics": metrics, "world_size": self.dist.world_size}
        snap = snapshot(states, step=step, info=info, config=self._run_config(),
                        staging=self._staging)  # free to reuse: the previous save was waited for above
        del states
        self.writer.submit(lambda: self._write(snap))

    def _write(self, snap) -> None:
        path = self.store.commit(snap.step, snap.writers(), snap.info)
        self.last_saved = path
        for deleted in self.store.retain(self.cfg.keep_last, self.cfg.keep_best, self.cfg.keep_every):
            log.info("retention: deleted %s", deleted)

    def _check_replicas(self, parts: Parts, step: int) -> None:
        # Parameters only: buffers such as BatchNorm statistics are per rank between DDP's broadcasts.
        digest = param_digest({name: dict(part.module.named_parameters()) for name, part in parts.items()
                               if isinstance(part, ModelState)})
        digests = self.dist.all_gather_object(digest)
        if len(set(digests)) > 1:
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
    def load_best_weights(self, parts: Parts) -> Path:
        """Plateau rule: the best checkpoint's model parts and optimizer moments; every other part untouched."""
        if self.dist.is_main:
            self.writer.wait()  # the best may be the save in flight
        decision = _guard(self._pick_best) if self.dist.is_main else None
        decision = self.dist.broadcast_object(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        outcome = _guard(lambda: _load_expected(Path(decision["path"]), decision["digest"]))
        messages = self.dist.all_gather_object(outcome["error"] if isinstance(outcome, dict) else None)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            raise CheckpointError("could not load the best checkpoint: " + "; ".join(
                m if len(messages) == 1 else f"rank {r}: {m}" for r, m in failed))
        content: Content = outcome
        for name, part in parts.items():
            where = f"{content.path} (part '{name}')"
            if isinstance(part, ModelState):
                part.load_state_dict(content.part_state(name), where=where)
            elif isinstance(part, OptimizerState):
                part.load_moments(content.part_state(name), where=where)
        log.info("reloaded the best weights from %s (step %d); counters unchanged", content.path, content.step)
        return content.path

    def _pick_best(self) -> dict:
        best = self.store.best()
        if best is None:
            raise CheckpointError(
                f"{self.store.root}: no checkpoint is marked best, so the best weights cannot be reloaded "
                "(keep checkpoint.keep_best: true and validate before the plateau rule applies)"
            )
        content = load_checkpoint(best.path)  # CorruptCheckpointError names the damaged file
        return {"path": str(content.path), "digest": content.digest}

    # ------------------------------------------------------------------------------------------ close
    def close(self) -> None:
        """Wait until the last save is committed; re-raise its error if it failed."""
        self.writer.wait()


def _load_part(part, state: Any, where: str) -> None:
    """``part.load_state_dict(state)``; a malformed state becomes a CheckpointError naming the part."""
    if isinstance(part, (ModelState, OptimizerState)):
        part.load_state_dict(state, where=where)
        return
    try:
        part.load_state_dict(state)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: malformed state ({type(exc).__name__}: {exc})") from None


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


def param_digest(models: dict[str, dict[str, torch.Tensor]]) -> str:
    """SHA-256 over the bytes of every model part's parameters (the replica-consistency check under DDP)."""
    h = hashlib.sha256()
    for part, sd in models.items():
        for name, t in sd.items():
            h.update(f"{part}/{name}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy on CPU
    return h.hexdigest()
