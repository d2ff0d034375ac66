"""The training loop: :class:`Trainer` owns every stateful part of a run and trains it, step by step.

Read :meth:`Trainer.fit` top to bottom: restore -> [micro-batches -> optimizer step -> log -> validate ->
schedule -> save] until a limit, early stopping or a signal -> final save -> close. There is no hidden
framework: every call to the checkpoint layer is in :meth:`Trainer.fit` and :meth:`Trainer._after_step`.

Exact resume is the design goal:
- every example is a pure function of (seed, epoch, index) and the data state is one global position
  (see steadyvoice.data.sampler), so the DataLoader's workers and prefetching hold no state of their own;
- state is captured only between optimizer steps (never inside gradient accumulation);
- :attr:`Trainer.parts` names every stateful part (model, optimizer, progress counters, data position, LR
  schedule, early stopping, GradScaler, this process's RNG states), each with ``state_dict()`` /
  ``load_state_dict()``; the checkpoint layer saves and restores that mapping, in that order, so that
  training on gives bit-identical results (CPU, same world size) to a run that never stopped.

With ``checkpointer=None`` (unit tests) nothing is saved and the plateau rule's "reload the best weights"
uses an in-memory copy of the best model and optimizer moments.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from steadyvoice.checkpoint.parts import ModelState, OptimizerState, Parts, RNGState
from steadyvoice.data import DataPosition, ShardedBatchSampler, TrainingData, build_training_data, collate, usable_examples
from steadyvoice.errors import ConfigError, DataError, SteadyVoiceError
from steadyvoice.models import architecture_of, build_model, count_parameters
from steadyvoice.train.config import TrainConfig
from steadyvoice.distributed import DistContext, die_with_parent, wrap_model
from steadyvoice.train.gan import MetricGAN
from steadyvoice.train.logging import RunLogger
from steadyvoice.train.losses import si_sdr
from steadyvoice.train.objectives import MossFormerGANObjective, check_gan_section, objective_for
from steadyvoice.train.optim import decay_groups
from steadyvoice.train.schedule import EarlyStopping, LRSchedule

log = logging.getLogger("steadyvoice")

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Checkpointer(Protocol):
    """What the loop needs from steadyvoice.checkpoint.Checkpointer (docs/DESIGN.md)."""

    restored: Any  # what the last restore() loaded (path, step, epoch, ...); None when it started fresh

    def restore(self, parts: Parts) -> bool: ...
    def save(self, parts: Parts, *, step: int, epoch: int, metrics: dict, is_best: bool, reason: str) -> None: ...
    def load_best_weights(self, parts: Parts) -> None: ...
    def close(self) -> None: ...


@dataclass
class Progress:
    """Counters saved in checkpoints (the epoch and position within it live in DataPosition)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done (step * accumulate when nothing was skipped)
    samples: int = 0  # examples trained on, all processes together
    skipped_files: int = 0  # bad files skipped while mixing, all processes together
    nonfinite_steps: int = 0  # optimizer steps skipped because the gradient was NaN/inf
    pesq_failures: int = 0  # GAN: PESQ targets that could not be computed (silence, too short), all processes
    d_skipped_steps: int = 0  # GAN: discriminator steps skipped because of them (their rule)

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_step": self.micro_step, "samples": self.samples,
                "skipped_files": self.skipped_files, "nonfinite_steps": self.nonfinite_steps,
                "pesq_failures": self.pesq_failures, "d_skipped_steps": self.d_skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro_step, self.samples = int(state["step"]), int(state["micro_step"]), int(state["samples"])
        self.skipped_files = int(state.get("skipped_files", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.pesq_failures = int(state.get("pesq_failures", 0))
        self.d_skipped_steps = int(state.get("d_skipped_steps", 0))


class DataState:
    """The data part: the position in the epoch order, checked against the epoch's size on load."""

    def __init__(self, position: DataPosition, num_examples: int):
        self.position = position
        self.num_examples = num_examples

    def state_dict(self) -> dict:
        return {**self.position.state_dict(), "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise DataError(
                f"the checkpoint was trained on an epoch of {state['num_examples']} examples but the data now gives "
                f"{self.num_examples}; the training files changed. Restore them, or start over with --restart")
        self.position.load_state_dict(state)


class ScalerState:
    """The GradScaler (fp16 autocast); empty when it is disabled."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)


def training_data(cfg: TrainConfig) -> TrainingData:
    """Scan and build the run's data for its model: mixtures of noise (enhancement) or of talkers (separation)."""
    model_cfg = cfg.model.resolve()
    return build_training_data(cfg.data, sample_rate=model_cfg.sample_rate, seed=cfg.train.seed,
                               valid_batch_size=cfg.train.valid_batch_size or cfg.train.batch_size,
                               task=architecture_of(model_cfg).task, num_speakers=getattr(model_cfg, "num_spks", 2))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def quiet_child() -> None:
    """In a helper process of the trainer (DataLoader workers, the GAN's PESQ pool): leave stop signals to the
    main process, which finishes its step and saves, and die with it.

    torchrun signals the whole process group, helpers included. The trainer shuts its helpers down itself
    (Trainer._train drops the data iterator on every exit path, the GAN closes its pool); a helper whose main
    process dies exits on its own: the kernel kills it with its trainer (die_with_parent). Without that, a
    trainer killed with SIGKILL left its PESQ workers waiting forever on the pool's queue (each holds the
    queue's write end open for the others, so none ever reads end-of-file).
    """
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    die_with_parent()


def _quiet_worker(_worker_id: int) -> None:
    quiet_child()


def init_and_freeze_parts(model: torch.nn.Module, init_parts: dict[str, str], freeze: list[str]) -> dict[str, str]:
    """``model.init_parts`` and ``model.freeze`` of the config: load each named submodule's weights from an
    exported model (strictly), then stop the listed submodules from training. Returns part -> model dir."""
    from steadyvoice import catalog
    from steadyvoice.checkpoint import load_weights

    def part(name: str, key: str) -> torch.nn.Module:
        try:
            return model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"{key}: the model has no part {name!r} (its parts: {children})") from None

    sources = {}
    for name, source in init_parts.items():
        module = part(name, f"model.init_parts.{name}")
        try:
            path = catalog.path_or_name(source, how_to="pass a model directory")
            load_weights(module, path)
        except SteadyVoiceError as exc:
            raise ConfigError(f"model.init_parts.{name}: {exc}") from None
        sources[name] = str(path)
    for name in freeze:
        part(name, "model.freeze").requires_grad_(False)
    if freeze and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.freeze: {', '.join(freeze)} leaves nothing to train")
    return sources


class _InMemoryBest:
    """Best model weights and optimizer moments kept in memory (used when there is no Checkpointer)."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}

    def remember(self, parts: Parts) -> None:
        self.states = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()
                       if isinstance(part, (ModelState, OptimizerState))}

    def load_best_weights(self, parts: Parts) -> None:
        for name, state in self.states.items():
            if isinstance(parts[name], ModelState):
                parts[name].load_state_dict(copy.deepcopy(state))
            else:
                parts[name].load_moments(copy.deepcopy(state))


class _StopFlag:
    """Set by SIGTERM/SIGINT/SIGUSR1; the loop checks it between optimizer steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in STOP_SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C aborts at once (KeyboardInterrupt), without the save
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    """Model, optimizer, schedule, early stopping, data position, RNG: one run's whole state."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, dist: DistContext | None = None, *,
                 run_dir: str | Path | None = None, console: bool = False):
        self.config = cfg
        self.data = data
        self.dist = dist or DistContext()
        self.device = self.dist.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.console = console
        run = cfg.train
        if run.autocast == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.autocast: fp16 needs a CUDA device; use bf16 (or none) on CPU")
        self.global_batch = run.batch_size * self.dist.world_size
        self.step_examples = self.global_batch * run.accumulate
        if len(data.train) < self.step_examples:
            raise DataError(
                f"an epoch has {len(data.train)} examples but one optimizer step needs {self.step_examples} "
                f"(train.batch_size {run.batch_size} x {self.dist.world_size} processes x train.accumulate "
                f"{run.accumulate}); raise data.epoch_size or lower the batch")

        # Seeded once: model initialisation and dropout. Each rank draws its own dropout masks; DDP copies
        # rank 0's initial weights to every rank, so the start is the same for any number of processes.
        seed_everything(run.seed + self.dist.rank)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

        self.model_config = cfg.model.resolve()
        self.objective = objective_for(self.model_config, cfg.loss)  # what this architecture minimises
        check_gan_section(self.model_config, cfg.loss, cfg.gan)
        self.task = architecture_of(self.model_config).task  # "enhancement" or "separation"
        self.model = build_model(self.model_config).to(self.device)  # the bare model (what state_dict saves)
        self.part_sources = init_and_freeze_parts(self.model, cfg.model.init_parts, cfg.model.freeze)
        self.net = wrap_model(self.model, self.dist)  # what forward/backward run through (DDP when W > 1)
        self.optimizer = self._build_optimizer()
        self.progress = Progress()
        cosine = cfg.schedule.kind == "cosine"
        self.schedule = LRSchedule(self.optimizer, self.progress, cfg.schedule.warmup_steps,
                                   decay_steps=cfg.schedule.decay_steps if cosine else 0,
                                   min_lr_ratio=cfg.schedule.min_lr_ratio)
        self.early = EarlyStopping(cfg.schedule)
        self.position = DataPosition()
        self._batches = None  # this rank's micro-batch iterator for the current epoch (owns the workers)
        self._epoch_stop = 0  # position where the current epoch's last full step ends (set per epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.autocast == "fp16")
        # The run's state, in load order: the schedule rewrites the optimizer's LRs from the progress
        # counter, so it comes after both; the RNG comes last (nothing after it may draw random numbers).
        self.parts: dict[str, Any] = {
            "model": ModelState(self.model),
            "optimizer": OptimizerState(self.optimizer, self._param_names),
            "progress": self.progress,
            "data": DataState(self.position, len(data.train)),
            "schedule": self.schedule,
            "early_stopping": self.early,
            "scaler": ScalerState(self.scaler),
        }
        # GAN training (MossFormerGAN-SE): the metric discriminator, its optimizer and schedule are parts too.
        self.gan = None
        if isinstance(self.objective, MossFormerGANObjective) and cfg.loss.adversarial_weight > 0:
            self.gan = MetricGAN(cfg, self.model_config.sample_rate, self.progress, self.dist)
            self.parts.update(self.gan.parts())
        self._gan_facts: dict = {}
        self.parts["rng"] = RNGState(self.device)  # last: nothing after it may draw random numbers
        self._memory_best = _InMemoryBest()
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ construction helpers

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Two groups: weight matrices (weight decay) and 1-D parameters (biases, norm gains: no decay)."""
        o = self.config.optim
        groups, self._param_names = decay_groups(self.model, o.weight_decay)
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        # optim.fused: the choice is a hyperparameter of the optimizer's state, so a run resumes with the
        # implementation it started with (runs from before the option keep the for-loop).
        fused = o.fused and self.device.type in ("cpu", "cuda")
        return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **({"fused": True} if fused else {"foreach": False}))

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def param_names(self) -> list[str]:
        """Names of the optimizer's parameters, in optimizer order."""
        return list(self._param_names)

    def state_dict(self) -> dict:
        """Every part's state, by name (live tensors: copy before training on)."""
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        """Load every part's state, in the parts' order (what the Checkpointer does, without files)."""
        for name, part in self.parts.items():
            part.load_state_dict(state[name])

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def stop_signal(self) -> str | None:
        """Name of the stop signal this process received, if any (e.g. "SIGTERM")."""
        return self._stop.signal_name

    # ------------------------------------------------------------------ the loop

    def fit(self, checkpointer: Checkpointer | None = None, *,
            init_weights: Callable[[torch.nn.Module], str] | None = None) -> str:
        """Train until a limit, early stopping or a stop signal; returns why it stopped.

        Reasons: "max_steps", "max_epochs", "early_stop", "signal", "finished" (nothing left to do).
        ``init_weights(model)`` (fine-tuning, ``--init-from``) runs only when no checkpoint was restored;
        it returns a description of the weights' source, which the start record of the log keeps.
        """
        logger = RunLogger(self.run_dir, enabled=self.dist.is_main, total_steps=self.config.train.max_steps,
                           console=self.console)
        best = checkpointer if checkpointer is not None else self._memory_best
        self._stop.install()
        try:
            resumed = checkpointer.restore(self.parts) if checkpointer is not None else False
            init_source = None
            if not resumed and init_weights is not None:
                init_source = init_weights(self.model)
            logger.open(self.progress.step, {
                "resumed": bool(resumed), "init_from": init_source, "init_parts": self.part_sources,
                "epoch": self.position.epoch, "consumed": self.position.consumed,
                "world_size": self.dist.world_size, "parameters": count_parameters(self.model),
                "train_examples": len(self.data.train), "valid_examples": self.data.valid.count})
            if init_source:
                logger.message(f"initial weights: {init_source}")
            if resumed:
                info = checkpointer.restored
                logger.message(f"resumed from {info.path} (step {info.step}, epoch {info.epoch}; every checksum "
                               f"verified{'; RNG re-derived for a new world size' if info.rng == 'derived' else ''})")
            done = self._finished()
            if done:
                logger.message(f"nothing to do: the run already ended ({done})")
                return "finished"
            return self._train(checkpointer, best, logger)
        finally:
            self._stop.uninstall()
            if self.gan is not None:
                self.gan.close()  # the PESQ worker pool
            try:
                if checkpointer is not None:
                    checkpointer.close()  # waits for the save in flight
            finally:
                logger.close()

    def _finished(self) -> str | None:
        run = self.config.train
        if self.early.stopped:
            return "early_stop"
        if run.max_steps and self.progress.step >= run.max_steps:
            return "max_steps"
        if self.position.epoch >= run.max_epochs:
            return "max_epochs"
        return None

    def _train(self, checkpointer, best, logger: RunLogger) -> str:
        try:
            return self._train_steps(checkpointer, best, logger)
        finally:
            self._close_batches()  # on every exit path, exceptions included

    def _train_steps(self, checkpointer, best, logger: RunLogger) -> str:
        run = self.config.train
        self.net.train()
        last_log = (time.perf_counter(), self.progress.step, self.progress.samples)
        while True:
            if self._batches is None:
                self._batches = self._epoch_batches()
                if self._batches is None:  # not one full step left in this epoch: go on to the next
                    self._end_epoch()
                    if self._finished():
                        return self._finished()
                    continue
            lrs = self.schedule.lrs()  # the LR of the step about to be taken
            loss, grad_norm = self._optimizer_step()
            epoch_done = self.position.consumed >= self._epoch_stop
            if epoch_done:
                self._close_batches()
                self._end_epoch()

            if self.progress.step % run.log_every == 0:
                now = time.perf_counter()
                t0, s0, n0 = last_log
                steps = max(self.progress.step - s0, 1)
                logger.train({
                    "step": self.progress.step, "epoch": self.position.epoch, "consumed": self.position.consumed,
                    "samples": self.progress.samples,
                    "loss": loss, "lr": lrs, "grad_norm": grad_norm,
                    "step_time": (now - t0) / steps, "samples_per_s": (self.progress.samples - n0) / max(now - t0, 1e-9),
                    "skipped_files": self.progress.skipped_files, "time": time.time(),
                    **({"d_loss": self._gan_facts.get("d_loss"), "pesq_failures": self.progress.pesq_failures}
                       if self.gan is not None else {})})
                last_log = (now, self.progress.step, self.progress.samples)
            else:
                logger.heartbeat(self.progress.step, self.position.epoch, loss)

            reason = self._after_step(checkpointer, best, logger, loss, epoch_done)
            if reason:
                return reason

    def _after_step(self, checkpointer, best, logger: RunLogger, loss: float, epoch_done: bool) -> str | None:
        """Validation, plateau/early stopping, saving and stopping, at an optimizer-step boundary."""
        run = self.config.train
        step = self.progress.step
        due = (step % run.validate_every == 0) if run.validate_every else epoch_done
        stop = self._finished()
        signalled = self.dist.any(self._stop.signal_name is not None)
        metrics: dict[str, Any] = {"train_loss": loss}
        improved = False
        if due or (stop and not signalled):  # always validate at the end
            record, improved = self._validate_and_schedule(best)
            logger.valid(record)
            metrics.update({k: record[k] for k in ("valid_loss", "valid_si_sdr")})
            stop = stop or self._finished()
            if self._finished() == "early_stop":
                logger.message(f"early stop: {self.early.reason}")
        if signalled:
            reason = "signal"
            logger.message(f"stop signal received: saving step {step} and exiting")
        elif stop:
            reason = "end"
        elif due:
            reason = "validation"
        elif checkpointer is not None and step % self.config.checkpoint.save_every == 0:
            reason = "periodic"
        else:
            reason = None
        if reason and checkpointer is not None:
            checkpointer.save(self.parts, step=self.progress.step, epoch=self.position.epoch, metrics=metrics,
                              is_best=improved, reason=reason)
        if signalled:
            return "signal"
        return stop

    # ------------------------------------------------------------------ data

    def _epoch_batches(self):
        """Iterator over this rank's micro-batches from the current position to the epoch's last full step."""
        n = len(self.data.train)
        self._epoch_stop = usable_examples(n, self.position.consumed, self.step_examples)
        if self._epoch_stop <= self.position.consumed:
            return None
        run = self.config.train
        sampler = ShardedBatchSampler(n, batch_size=run.batch_size, rank=self.dist.rank,
                                      world_size=self.dist.world_size, seed=run.seed, epoch=self.position.epoch,
                                      start=self.position.consumed, stop=self._epoch_stop)
        # An explicit generator: a DataLoader iterator otherwise draws its base seed from the global torch
        # RNG, which would make the training RNG stream depend on when loaders were created.
        generator = torch.Generator().manual_seed(run.seed)
        loader = DataLoader(self.data.train, batch_sampler=sampler, num_workers=run.num_workers,
                            collate_fn=collate, generator=generator, worker_init_fn=_quiet_worker,
                            pin_memory=self.device.type == "cuda")
        return iter(loader)

    def _next_batch(self) -> dict:
        """The next micro-batch; a DataError raised in a DataLoader worker is reduced to its own message."""
        try:
            return next(self._batches)
        except DataError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [str(exc)]
            message = lines[-1].removeprefix("steadyvoice.errors.DataError: ")
        # Raised outside the except block: the new error must not keep the worker's traceback (and with
        # it the DataLoader iterator) alive as its __context__.
        raise DataError(message)

    def _close_batches(self) -> None:
        """Shut this epoch's DataLoader workers down now.

        DataLoader does this when its iterator is garbage-collected; an exception's traceback can keep
        the iterator alive until interpreter exit, where multiprocessing's SIGTERM would not stop our
        workers (they ignore stop signals, see _quiet_worker) and the exit would wait forever. So the
        iterator's own clean-up (what its __del__ calls) is called explicitly.
        """
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent for num_workers=0
        if shutdown is not None:
            shutdown()

    def _end_epoch(self) -> None:
        self.position.epoch += 1
        self.position.consumed = 0

    # ------------------------------------------------------------------ one optimizer step

    def _optimizer_step(self) -> tuple[float, float]:
        """``accumulate`` micro-batches, then one optimizer step. Returns (mean loss over ranks, grad norm)."""
        run = self.config.train
        loss_sum = torch.zeros((), dtype=torch.float64)
        skipped = 0
        pending = []  # GAN: what the discriminator's step needs from each micro-batch
        for micro in range(run.accumulate):
            batch = self._next_batch()
            last = micro == run.accumulate - 1
            sync = contextlib.nullcontext() if (last or not self.dist.is_distributed) else self.net.no_sync()
            with sync:
                out = self._losses(self.net, batch["noisy"].to(self.device), batch["clean"].to(self.device))
                losses = out["loss"]
                if self.gan is not None:  # the adversarial term (D frozen); PESQ targets start in the pool
                    losses = losses + self.config.loss.adversarial_weight * self.gan.adversarial(out["gan"])
                    pending.append(self.gan.submit(out["gan"]))
                self.scaler.scale(losses.mean() / run.accumulate).backward()
            loss_sum += losses.detach().double().sum().cpu()
            skipped += len(batch["skipped"])
            self.progress.micro_step += 1
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.optim.max_grad_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params(), max_norm, foreach=False))
        if math.isfinite(grad_norm) or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # GradScaler skips non-finite steps itself
        else:
            self.progress.nonfinite_steps += 1
            log.warning("step %d: gradient is not finite; optimizer step skipped", self.progress.step + 1)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.gan is not None:
            facts = self.gan.step(pending)
            self.progress.pesq_failures += facts["pesq_failures"]
            self.progress.d_skipped_steps += facts["d_skipped"]
            self._gan_facts = facts
        self.progress.step += 1
        self.schedule.apply()  # the LR of the next step
        if self.gan is not None:
            self.gan.schedule.apply()
        totals = self.dist.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(skipped), dtype=torch.float64)]))
        self.progress.samples += self.step_examples
        self.progress.skipped_files += int(totals[1])
        self.position.consumed += self.step_examples
        return float(totals[0]) / self.step_examples, grad_norm

    def _losses(self, net: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, want_wave: bool = False) -> dict:
        """Per-example loss (B,) of a batch, plus the enhanced waveform when asked (validation): the
        architecture's objective (steadyvoice.train.objectives), with autocast around the network only."""
        autocast = self.config.train.autocast
        net_autocast = torch.autocast(self.device.type, dtype=torch.bfloat16 if autocast == "bf16" else torch.float16,
                                      enabled=autocast != "none")
        return self.objective(net, noisy, clean, autocast=net_autocast, want_wave=want_wave)

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict:
        """Loss and SI-SDR (separation: permutation-resolved, and its improvement over the mixture) over
        the validation set, sharded over ranks; identical for any world size.

        Each rank fills its examples' slots of a (4, V) table (loss, SI-SDR, SNR, SI-SDRi); an all_reduce sum
        adds exact zeros elsewhere, and the mean is then taken in index order on every rank.
        """
        valid = self.data.valid
        table = torch.zeros(4, valid.count, dtype=torch.float64)
        self.model.eval()
        try:
            for batch in valid.batches(self.dist.rank, self.dist.world_size):
                out = self._losses(self.model, batch["noisy"].to(self.device), batch["clean"].to(self.device),
                                   want_wave=True)
                idx = batch["index"].long()
                table[0, idx] = out["loss"].double().cpu()
                score = out["si_sdr"] if "si_sdr" in out else si_sdr(out["enhanced"], out["clean"])
                table[1, idx] = score.double().cpu()
                table[2, idx] = batch["snr_db"]
                if "si_sdri" in out:
                    table[3, idx] = out["si_sdri"].double().cpu()
        finally:
            self.model.train()
        table = self.dist.all_reduce_sum(table).numpy()
        record = {"step": self.progress.step, "epoch": self.position.epoch,
                  "valid_loss": float(table[0].sum() / valid.count), "valid_si_sdr": float(table[1].sum() / valid.count)}
        if self.task == "separation":
            record["valid_si_sdri"] = float(table[3].sum() / valid.count)
        record["by_snr"] = _by_snr(table, self.config.data.snr_buckets)
        return record

    def _validate_and_schedule(self, best) -> tuple[dict, bool]:
        """Validate, then apply the plateau rule: remember best / reload best and decay / stop."""
        record = self.validate()
        value = record["valid_loss"] if self.config.schedule.monitor == "loss" else record["valid_si_sdr"]
        decision = self.early.update(value, self.progress.step)
        if decision.improved and best is self._memory_best:
            self._memory_best.remember(self.parts)
        if decision.plateau:
            if self.early.best is not None:
                best.load_best_weights(self.parts)  # weights + optimizer moments; counters stay
            self.schedule.decay(self.config.schedule.factor)
            if self.gan is not None:
                self.gan.schedule.decay(self.config.schedule.factor)
        record.update({"improved": decision.improved, "best": self.early.best, "bad_validations": self.early.bad,
                       "plateau": decision.plateau, "stop": decision.stop, "lr": self.schedule.lrs()})
        return record, decision.improved


def _by_snr(table: np.ndarray, edges: list[float]) -> dict:
    """Mean loss and SI-SDR per SNR bucket ("<0", "0..5", ..., ">=15")."""
    bucket = np.digitize(table[2], edges)
    names = [f"<{edges[0]:g}"] + [f"{a:g}..{b:g}" for a, b in itertools.pairwise(edges)] + [f">={edges[-1]:g}"]
    out = {}
    for b, name in enumerate(names):
        sel = bucket == b
        if sel.any():
            out[name] = {"loss": float(table[0, sel].sum() / sel.sum()), "si_sdr": float(table[1, sel].sum() / sel.sum()),
                         "count": int(sel.sum())}
    return out


__all__ = ["Checkpointer", "DataState", "Progress", "ScalerState", "Trainer", "seed_everything", "training_data"]

