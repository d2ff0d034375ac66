"""Learning-rate schedule and early stopping: two small classes with JSON state dicts.

:class:`LRSchedule` sets the LR of EVERY parameter group to ``initial_lr * warmup(step) * cosine(step) *
scale``, where ``scale`` is the product of all plateau factors applied so far and ``cosine`` is 1 unless
the schedule is ``kind: cosine``. It reads the step from the trainer's progress counter and stores only
``scale``, so restoring it is loading one number and calling :meth:`apply` (no ``last_epoch``/``initial_lr``
traps of torch.optim.lr_scheduler; the checkpoint still finds ``initial_lr`` in every param group).

:class:`EarlyStopping` watches the validation metric: it reports an improvement, a plateau (``patience``
validations without improvement -> the trainer reloads the best weights and calls :meth:`LRSchedule.
decay`), or a stop (``stop_patience`` validations without improvement, or a plateau past
``max_halvings``). The counter of bad validations is not reset by a plateau (ClearerVoice's rule:
halve after 5 bad epochs, stop after 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from steadyvoice.train.config import ScheduleConfig


class StepCounter(Protocol):
    step: int  # optimizer steps taken


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, progress: StepCounter, warmup_steps: int,
                 decay_steps: int = 0, min_lr_ratio: float = 0.0):
        self.optimizer = optimizer
        self.progress = progress  # the trainer's counters: the step is read from there, never stored here
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps  # 0 = no cosine decay
        self.min_lr_ratio = min_lr_ratio
        self.scale = 1.0  # product of plateau factors
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.apply()

    @property
    def step(self) -> int:
        return self.progress.step

    def warmup_factor(self) -> float:
        if self.warmup_steps <= 0 or self.step >= self.warmup_steps:
            return 1.0
        return (self.step + 1) / self.warmup_steps  # the first step already uses lr / warmup_steps

    def decay_factor(self) -> float:
        """Half a cosine from 1 at the end of the warmup to min_lr_ratio decay_steps later, flat after."""
        if self.decay_steps <= 0:
            return 1.0
        t = min(max(self.step - self.warmup_steps, 0), self.decay_steps) / self.decay_steps
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self) -> None:
        """Write the LR of the next step into every param group (call after each optimizer step)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.warmup_factor() * self.decay_factor() * self.scale

    def decay(self, factor: float) -> None:
        """Multiply the LR of every param group by ``factor`` from now on."""
        self.scale *= factor
        self.apply()

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.apply()


@dataclass
class Decision:
    improved: bool
    plateau: bool  # reload the best weights and decay the LR
    stop: bool
    reason: str = ""


class EarlyStopping:
    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.best: float | None = None
        self.best_step = -1
        self.bad = 0  # validations since the last improvement
        self.plateaus = 0
        self.stopped = False
        self.reason = ""

    @property
    def higher_is_better(self) -> bool:
        return self.cfg.monitor == "si_sdr"

    def is_improvement(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        delta = value - self.best if self.higher_is_better else self.best - value
        return delta > self.cfg.min_delta

    def update(self, value: float, step: int) -> Decision:
        """Record validation ``value`` at ``step``; says whether to decay or stop."""
        if self.is_improvement(value):
            self.best, self.best_step, self.bad = float(value), step, 0
            return Decision(improved=True, plateau=False, stop=False)
        self.bad += 1
        if self.cfg.kind != "plateau":
            return Decision(improved=False, plateau=False, stop=False)
        if self.bad >= self.cfg.stop_patience:
            return self._stop(f"no improvement in {self.bad} validations (schedule.stop_patience)")
        if self.bad % self.cfg.patience == 0:
            if self.cfg.max_halvings and self.plateaus >= self.cfg.max_halvings:
                return self._stop(f"plateau after {self.plateaus} LR decays (schedule.max_halvings)")
            self.plateaus += 1
            return Decision(improved=False, plateau=True, stop=False)
        return Decision(improved=False, plateau=False, stop=False)

    def _stop(self, reason: str) -> Decision:
        self.stopped, self.reason = True, reason
        return Decision(improved=False, plateau=False, stop=True, reason=reason)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "plateaus": self.plateaus,
                "stopped": self.stopped, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = int(state["best_step"])
        self.bad = int(state["bad"])
        self.plateaus = int(state["plateaus"])
        self.stopped = bool(state["stopped"])
        self.reason = str(state.get("reason", ""))
