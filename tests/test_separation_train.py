"""Separation training keeps every promise of enhancement training: exact resume at any step, after
SIGKILL (mid-save too), with 2 processes; validation reports SI-SDR improvement.

Tiny MossFormer2-SS (recipes/separation-tiny-cpu.yaml) on four synthetic "speakers" with noise added.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from faultinject import (
    REPO,
    compare_runs,
    final_checkpoint,
    make_talkers,
    overrides,
    train_inprocess,
    trial,
    truncate_run,
)
from steadyvoice.checkpoint.api import load_checkpoint

RECIPE = REPO / "recipes" / "separation-tiny-cpu.yaml"
KEEP_ALL = ["checkpoint.save_every=1", "checkpoint.keep_last=100"]
STEPS = 8  # 4 steps per epoch (8 files, 2 per step); validations at 3, 6 (plateau: reload best + halve), 8


@pytest.fixture(scope="module")
def talkers(tmp_path_factory):
    return make_talkers(tmp_path_factory.mktemp("talkers"))


@pytest.fixture(scope="module")
def straight(talkers, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = train_inprocess(run_dir, overrides(talkers, STEPS, KEEP_ALL), recipe=RECIPE)
    assert result.trainer.step == STEPS and result.trainer.early.plateaus >= 1
    return run_dir


def test_validation_reports_si_sdr_improvement(straight):
    valid = [json.loads(ln) for ln in (straight / "log.jsonl").read_text().splitlines() if '"valid"' in ln]
    assert [v["step"] for v in valid] == [3, 6, 8]
    for v in valid:
        assert {"valid_loss", "valid_si_sdr", "valid_si_sdri"} <= set(v)
        assert v["valid_loss"] == pytest.approx(-v["valid_si_sdr"])  # the loss is negative PIT SI-SNR
    state = load_checkpoint(final_checkpoint(straight)).state
    assert state["parts"]["data"]["state"]["num_examples"] == 8 and state["config"]["model"]["name"].startswith("mossformer2-ss")


@pytest.mark.parametrize("k", [2, 5])
def test_resume_at_step_k_is_bit_identical(k, straight, talkers, tmp_path):
    run_dir = truncate_run(straight, tmp_path / "run", k)
    result = train_inprocess(run_dir, overrides(talkers, STEPS, KEEP_ALL), recipe=RECIPE)
    assert result.checkpointer.restored.step == k
    assert compare_runs(straight, run_dir) == []


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(talkers, tmp_path):
    reference = tmp_path / "reference"
    train_inprocess(reference, overrides(talkers, STEPS), recipe=RECIPE)
    result = trial(0, tmp_path, talkers, reference, max_steps=STEPS, kills=1, rng=random.Random(7), recipe=RECIPE)
    assert len(result.kills) == 1 and result.launches == 2
    assert result.diffs == [], f"killed {result.kills}: {result.diffs}"


@pytest.mark.slow
def test_two_processes_resume_bit_identical(talkers, tmp_path):
    def torchrun(run_dir: Path, steps: int) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "steadyvoice",
               "train", "--config", str(RECIPE), "--run-dir", str(run_dir)]
        for item in overrides(talkers, steps, KEEP_ALL + ["train.batch_size=1"]):
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-4000:]

    straight = tmp_path / "straight"
    torchrun(straight, 6)
    resumed = truncate_run(straight, tmp_path / "resumed", 3)
    torchrun(resumed, 6)
    assert compare_runs(straight, resumed) == []
    state = load_checkpoint(final_checkpoint(resumed)).state
    assert state["world_size"] == 2 and len(state["parts"]["rng"]["ranks"]) == 2
