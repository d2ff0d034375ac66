"""A small real trainer for the checkpoint tests (no audio, runs in milliseconds).

It follows the Trainer <-> Checkpointer protocol of docs/DESIGN.md like steadyvoice.train.loop.Trainer
does: ``parts`` names its stateful parts (model, optimizer by parameter name, a real torch LR scheduler
(StepLR, which needs initial_lr) after the optimizer, counters, RNG last). Two parameter groups (decay /
no decay). Every training step draws from python, numpy and torch global RNGs, so RNG restore is tested
too. ``state_dict()`` gathers every part's state for bit-exact comparisons.

Run as a script, it saves in a loop (for the kill -9 tests)::

    python tests/ckpt_toy.py save-loop RUN_DIR N
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from steadyvoice.checkpoint.parts import ModelState, OptimizerState, RNGState


class Counters:
    """The toy's step / epoch / position and "best" value: one JSON part."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.consumed = 0
        self.best: float | None = None

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "consumed": self.consumed, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.consumed = int(state["step"]), int(state["epoch"]), int(state["consumed"])
        self.best = state["best"]


class ToyTrainer:
    def __init__(self, seed: int = 0, hidden: int = 8, lr: float = 0.01, groups: int = 2, model: nn.Module | None = None):
        torch.manual_seed(seed)
        self.model = model if model is not None else nn.Sequential(
            nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )
        named = [(n, p) for n, p in self.model.named_parameters()]
        if groups == 2:
            decay = [(n, p) for n, p in named if p.ndim >= 2]
            no_decay = [(n, p) for n, p in named if p.ndim < 2]
            spec = [{"params": [p for _, p in decay], "weight_decay": 0.01}, {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
            self._names = [n for n, _ in decay] + [n for n, _ in no_decay]
        else:
            spec = [{"params": [p for _, p in named]}]
            self._names = [n for n, _ in named]
        self.optimizer = torch.optim.AdamW(spec, lr=lr, foreach=False)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)
        self.counters = Counters()
        self.parts = {"model": ModelState(self.model), "optimizer": OptimizerState(self.optimizer, self._names),
                      "schedule": self.schedule, "counters": self.counters, "rng": RNGState()}
        self.in_features = next(p for p in self.model.parameters() if p.ndim >= 2).shape[1]

    def param_names(self) -> list[str]:
        return list(self._names)

    def train_step(self) -> float:
        x = torch.randn(8, self.in_features)  # torch RNG
        scale = float(np.random.uniform(0.5, 1.5))  # numpy RNG
        shift = random.random()  # python RNG
        y = self.model(x)
        loss = ((y * scale - shift) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        c = self.counters
        c.step += 1
        c.consumed += 8
        if c.consumed >= 40:
            c.epoch, c.consumed = c.epoch + 1, 0
        return float(loss.detach())

    @property
    def step(self) -> int:
        return self.counters.step

    @property
    def epoch(self) -> int:
        return self.counters.epoch

    def save(self, ckpt, **kwargs) -> None:
        """``ckpt.save`` of every part at this step."""
        ckpt.save(self.parts, step=self.step, epoch=self.epoch, **kwargs)

    def state_dict(self) -> dict:
        """Every part's state (for comparisons)."""
        return {name: part.state_dict() for name, part in self.parts.items()}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical comparison of two trainer state dicts (tensors: dtype, shape and bytes)."""
    assert a.keys() == b.keys()
    for key in a:
        _same(a[key], b[key], key)


def _same(x, y, path: str) -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), path
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), path
    elif isinstance(x, np.ndarray):
        assert isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y), path
    elif isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), f"{path}: {set(x) ^ set(y)}"
        for k in x:
            _same(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _same(u, v, f"{path}/{i}")
    else:
        assert x == y or (x != x and y != y), f"{path}: {x!r} != {y!r}"


def _save_loop(run_dir: str, count: int) -> None:
    """Train and save (async) ``count`` times, printing each committed step (the kill -9 target)."""
    from steadyvoice.checkpoint import Checkpointer
    from steadyvoice.checkpoint.config import CheckpointConfig

    seed_all(0)
    trainer = ToyTrainer(hidden=64)
    ckpt = Checkpointer(Path(run_dir), CheckpointConfig(keep_last=2, async_save=True))
    ckpt.restore(trainer.parts)
    for _ in range(count):
        trainer.train_step()
        trainer.save(ckpt, metrics={"loss": 1.0}, is_best=trainer.step % 3 == 0, reason="test")
        print(trainer.step, flush=True)
    ckpt.close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "save-loop":
        _save_loop(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python tests/ckpt_toy.py save-loop RUN_DIR N")
