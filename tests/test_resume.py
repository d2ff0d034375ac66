"""Exact resume of real training (tiny MossFormer2 on CPU): any step, SIGTERM, DDP, another world size.

"Stop at step k, then resume" is tested by keeping only the checkpoints up to k of a straight run (and its
log up to k) and rerunning the same command: the state a stop at k saves is exactly that checkpoint (the
SIGTERM test checks the stop itself). The end state must be bit-identical to the straight run: model,
optimizer and RNG tensors, state.json, and every logged loss, LR and validation result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from faultinject import (
    truncate_run,
    RECIPE,
    compare_runs,
    final_checkpoint,
    make_data,
    overrides,
    record_batches,
    recorded_examples,
    train_command,
    train_inprocess,
)
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.data.sampler import epoch_permutation

TESTS = Path(__file__).resolve().parent
KEEP_ALL = ["checkpoint.save_every=1", "checkpoint.keep_last=100"]
# Validations at 3 (best), 6 and 9 (no improvement: plateau at 9 -> reload best + halve), 12 -> early stop.
STRAIGHT = KEEP_ALL + ["schedule.stop_patience=3"]
# Two processes: 2 steps per epoch; validations at 3 (best) and 6 (no improvement -> plateau: every rank
# reloads the best weights rank 0 picked, then halves the LR).
DDP = KEEP_ALL + ["schedule.patience=1"]
SEED = 777  # recipes/tiny-cpu.yaml


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """An uninterrupted single-process run (recorded), checkpoint at every step."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    undo = record_batches(run_dir.parent / "record", 0)
    try:
        result = train_inprocess(run_dir, overrides(corpus, 15, STRAIGHT))
    finally:
        undo()
    assert result.reason == "early_stop" and result.trainer.step == 12
    return run_dir


def test_straight_run_crosses_plateau_and_early_stop(straight):
    valid = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    valid = [r for r in valid if r["event"] == "valid"]
    assert [(r["step"], r["improved"], r["plateau"], r["stop"]) for r in valid] == [
        (3, True, False, False), (6, False, False, False), (9, False, True, False), (12, False, False, True)]
    assert valid[2]["lr"][0] == valid[1]["lr"][0] / 2  # halved at the plateau (after the best weights came back)


# 4 steps per epoch: all mid-epoch; 2 in warmup before the first validation, 5 after the best, 7 before and 10
# after the plateau at 9, 11 just before the early stop at 12 (the SIGTERM test adds one more k).
@pytest.mark.parametrize("k", [2, 5, 7, 10, 11])
def test_resume_at_step_k_is_bit_identical(k, straight, corpus, tmp_path):
    resumed = truncate_run(straight, tmp_path / "run", k)
    result = train_inprocess(resumed, overrides(corpus, 15, STRAIGHT))
    assert result.reason == "early_stop" and result.checkpointer.restored.step == k
    assert compare_runs(straight, resumed) == []


def test_sigterm_finishes_the_step_saves_and_resume_continues_exactly(straight, corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(run_dir, overrides(corpus, 15, STRAIGHT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run_dir / "log.jsonl").exists() and any(
                json.loads(line).get("step", 0) >= 4 for line in (run_dir / "log.jsonl").read_text().splitlines())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Documented by `steadyvoice train`: 128 + signal number, so torchrun / a requeue continues the run.
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    last = final_checkpoint(run_dir)
    stopped_at = load_checkpoint(last).step
    assert f"stopped by SIGTERM at step {stopped_at}" in stderr
    assert load_checkpoint(last).state["reason"] == "signal" and 4 <= stopped_at < 12
    result = train_inprocess(run_dir, overrides(corpus, 15, STRAIGHT))
    assert result.checkpointer.restored.step == stopped_at
    assert compare_runs(straight, run_dir) == []


# ------------------------------------------------------------------------------------------ DDP
def _torchrun(record: Path, run_dir: Path, sets: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "faultinject.py"), "train-recorded", str(record), "--config", str(RECIPE),
           "--run-dir", str(run_dir)]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]


def _epoch_examples(records: list[tuple[int, int]], epoch: int) -> list[int]:
    return [i for e, i in records if e == epoch]


def _first_batch_of_epoch(record: Path, rank: int, epoch: int) -> list[int]:
    for line in (record / f"rank{rank}.jsonl").read_text().splitlines():
        batch = json.loads(line)
        if batch[0][0] == epoch:
            return [i for _, i in batch]
    raise AssertionError(f"rank {rank} trained nothing of epoch {epoch}")


@pytest.fixture(scope="module")
def ddp_straight(corpus, tmp_path_factory):
    """Two processes (gloo), 6 steps: global batch 4, 2 steps per epoch, checkpoint at every step."""
    root = tmp_path_factory.mktemp("ddp")
    _torchrun(root / "record", root / "run", overrides(corpus, 6, DDP))
    valid = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["plateau"]) for r in valid if r["event"] == "valid"] == [(3, False), (6, True)]
    return root


def test_ddp_resume_is_bit_identical(ddp_straight, corpus, tmp_path):
    run_dir = truncate_run(ddp_straight / "run", tmp_path / "run", 3)  # mid-epoch 1, after the validation at 3
    _torchrun(tmp_path / "record", run_dir, overrides(corpus, 6, DDP))
    assert compare_runs(ddp_straight / "run", run_dir) == []
    state = load_checkpoint(final_checkpoint(run_dir)).state
    assert state["world_size"] == 2 and len(state["parts"]["rng"]["ranks"]) == 2
    assert state["parts"]["rng"]["ranks"][0] != state["parts"]["rng"]["ranks"][1]  # each rank's own RNG saved and restored


def test_world_size_2_to_1_skips_and_repeats_no_example(ddp_straight, corpus, tmp_path):
    k = 3  # epoch 1, 4 of 8 examples consumed by 2 processes
    run_dir = truncate_run(ddp_straight / "run", tmp_path / "run", k)
    order = [int(i) for i in epoch_permutation(8, SEED, 1)]
    # What the two processes trained on in epoch 1 up to step k: one global batch, rank 0 then rank 1.
    before = _first_batch_of_epoch(ddp_straight / "record", 0, 1) + _first_batch_of_epoch(ddp_straight / "record", 1, 1)
    assert before == order[:4]
    consumed = load_checkpoint(run_dir / "checkpoints" / f"step-{k:08d}").part_state("data")
    assert consumed == {"epoch": 1, "consumed": 4, "num_examples": 8}
    undo = record_batches(tmp_path / "record", 0)
    try:
        result = train_inprocess(run_dir, overrides(corpus, 6, DDP))
    finally:
        undo()
    assert result.checkpointer.restored.rng == "derived"
    after = recorded_examples(tmp_path / "record")
    assert sorted(before + _epoch_examples(after, 1)) == list(range(8))  # every example of epoch 1 exactly once
    assert _epoch_examples(after, 1) == order[4:]  # and in the epoch's order
    assert result.trainer.step == 6


def test_world_size_1_to_2_skips_and_repeats_no_example(straight, corpus, tmp_path):
    k = 6  # epoch 1, 4 of 8 examples consumed by 1 process (the rest splits evenly over 2 x 2)
    run_dir = truncate_run(straight, tmp_path / "run", k)
    before = recorded_examples(straight.parent / "record")
    _torchrun(tmp_path / "record", run_dir, overrides(corpus, 7, STRAIGHT))  # max_steps may change on resume
    after = recorded_examples(tmp_path / "record")
    epoch1_before = _epoch_examples(before, 1)[:4]  # the single-process run's first 4 examples of epoch 1
    assert sorted(epoch1_before + _epoch_examples(after, 1)) == list(range(8))
    state = load_checkpoint(final_checkpoint(run_dir)).state
    assert state["step"] == 7 and state["world_size"] == 2
    assert state["parts"]["data"]["state"] == {"epoch": 2, "consumed": 0, "num_examples": 8}
    assert np.array_equal(sorted(_epoch_examples(after, 1)), sorted(epoch_permutation(8, SEED, 1)[4:]))
