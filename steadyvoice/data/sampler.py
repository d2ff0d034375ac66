"""Epoch order and data position: which examples each process trains on, and where to resume.

The order of epoch e is a permutation of all example indices drawn from (seed, e). The data state is one
number, ``consumed``: how many entries of that permutation the whole job has trained on. A global batch
is ``batch_size * world_size`` consecutive entries; rank r takes the r-th slice of ``batch_size``. Because
the state is a global position, a job resumed with another number of processes continues exactly where
the last one stopped: no example of the epoch is skipped or repeated.

The incomplete last global step of an epoch (fewer than batch_size * world_size * accumulate entries
left) is dropped, as DistributedSampler(drop_last=True) does, so every process runs the same number of
steps and every optimizer step sees a full batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

# Separates the epoch-order stream from the per-example streams seeded with (seed, epoch, index).
_ORDER_STREAM = 0x0DE7


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of ``epoch``: a permutation of range(num_examples), a pure function of its inputs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _ORDER_STREAM]))
    return rng.permutation(num_examples)


def usable_examples(num_examples: int, consumed: int, step_examples: int) -> int:
    """Position where the epoch ends: ``consumed`` plus every full global step that still fits."""
    return consumed + ((num_examples - consumed) // step_examples) * step_examples


@dataclass
class DataPosition:
    """The data state saved in checkpoints: epoch and global examples of it already trained on."""

    epoch: int = 0
    consumed: int = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's micro-batches of one epoch, from global position ``start`` up to ``stop``.

    Yields lists of dataset keys ``(epoch, index)``.
    """

    def __init__(self, num_examples: int, *, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                 start: int, stop: int):
        global_batch = batch_size * world_size
        if not 0 <= start <= stop <= num_examples:
            raise ValueError(f"bad data position start={start} stop={stop} for {num_examples} examples")
        if (stop - start) % global_batch:
            raise ValueError(f"stop - start = {stop - start} is not a multiple of the global batch {global_batch}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.start = start
        self.stop = stop
        self.order = epoch_permutation(num_examples, seed, epoch)

    def __len__(self) -> int:
        return (self.stop - self.start) // (self.batch_size * self.world_size)

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        for pos in range(self.start, self.stop, global_batch):
            first = pos + self.rank * self.batch_size
            yield [(self.epoch, int(i)) for i in self.order[first : first + self.batch_size]]
