"""Checkpoint settings (the ``checkpoint:`` section of a training config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointConfig:
    save_every: int = 1000  # optimizer steps between periodic saves (validation always saves too)
    keep_last: int = 3  # newest checkpoints kept; at least 2, so a crash during a save always leaves one
    keep_best: bool = True  # also keep the checkpoint with the best validation metric
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0 = off)
    async_save: bool = True  # write in a background thread after copying the state to host memory

    def __post_init__(self) -> None:
        if self.keep_last < 2:
            raise ValueError(
                f"checkpoint.keep_last={self.keep_last}: keep at least 2 checkpoints so that a crash "
                "during a save always leaves a committed one"
            )
        if self.save_every < 1:
            raise ValueError(f"checkpoint.save_every={self.save_every}: must be at least 1")
        if self.keep_every < 0:
            raise ValueError(f"checkpoint.keep_every={self.keep_every}: must be 0 (off) or positive")
