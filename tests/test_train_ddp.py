"""Two CPU processes under torchrun (gloo): the run finishes and rank 0 logs metrics averaged over ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from steadyvoice.audio import write_audio

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
HANG_GUARD_S = 300  # a stuck process group fails the test instead of hanging CI


def make_corpus(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "clean").mkdir(parents=True)
    (root / "noise").mkdir(parents=True)
    t = np.arange(SR) / SR
    for i in range(8):
        x = sum(np.sin(2 * np.pi * rng.uniform(100, 250) * k * t) / k for k in range(1, 6))
        write_audio(root / "clean" / f"c{i}.wav", (0.1 * x).astype(np.float32), SR)
    for i in range(2):
        write_audio(root / "noise" / f"n{i}.wav", (0.05 * rng.standard_normal(SR)).astype(np.float32), SR)
    return root / "clean", root / "noise"


def train_command(clean: Path, noise: Path, run_dir: Path, batch_size: int) -> list[str]:
    # Dropout off: the same examples through the same weights must give the same loss in 1 or 2 processes.
    return ["train", "--config", str(ROOT / "recipes" / "tiny-cpu.yaml"), "--run-dir", str(run_dir),
            "--clean", str(clean), "--noise", str(noise), "--max-steps", "3", "--device", "cpu",
            "--set", f"train.batch_size={batch_size}", "--set", "train.num_workers=0", "--set", "train.log_every=1",
            "--set", "data.crop_seconds=0.5", "--set", "data.valid_count=4", "--set", "train.validate_every=3",
            "--set", "model.overrides.attn_dropout=0.0", "--set", "model.overrides.fsmn_dropout=0.0"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on a hang, kill the whole group (torchrun and its workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[:4]} did not finish in {HANG_GUARD_S} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.slow
def test_two_process_ddp_run_logs_averaged_metrics(tmp_path):
    clean, noise = make_corpus(tmp_path)
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "steadyvoice",
               *train_command(clean, noise, tmp_path / "ddp", batch_size=2)], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # The same global batch (4) in one process: identical examples in the same order.
    single = run([sys.executable, "-m", "steadyvoice", *train_command(clean, noise, tmp_path / "one", batch_size=4)],
                 tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]

    start = records(tmp_path / "ddp", "start")
    assert [r["world_size"] for r in start] == [2]  # one start record: only rank 0 writes the log
    ddp_train, one_train = records(tmp_path / "ddp", "train"), records(tmp_path / "one", "train")
    assert [r["step"] for r in ddp_train] == [1, 2, 3] and [r["consumed"] for r in ddp_train] == [4, 0, 4]
    # Step 1 runs the same weights on the same 4 examples: the logged (all-reduced) mean over both ranks
    # equals the single process's loss; one rank's own loss would not.
    assert ddp_train[0]["loss"] == pytest.approx(one_train[0]["loss"], rel=1e-5)
    assert ddp_train[0]["grad_norm"] == pytest.approx(one_train[0]["grad_norm"], rel=1e-4)  # averaged gradients
    assert ddp_train[0]["lr"] == one_train[0]["lr"]
    valid = records(tmp_path / "ddp", "valid")
    assert len(valid) == 1 and valid[0]["step"] == 3 and np.isfinite(valid[0]["valid_si_sdr"])
    assert valid[0]["valid_loss"] == pytest.approx(records(tmp_path / "one", "valid")[0]["valid_loss"], rel=1e-3)
    # Validation is sharded over the ranks and summed: one process validating the same weights gets the
    # very same numbers (same batches per example, one thread per process as under torchrun).
    from steadyvoice.checkpoint import load_weights
    from steadyvoice.config import from_dict
    from steadyvoice.data import build_training_data
    from steadyvoice.train.config import TrainConfig
    from steadyvoice.train.loop import Trainer

    cfg = from_dict(TrainConfig, yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text()))
    data = build_training_data(cfg.data, sample_rate=16000, seed=cfg.train.seed, valid_batch_size=cfg.train.batch_size)
    trainer = Trainer(cfg, data)
    load_weights(trainer.model, tmp_path / "ddp" / "checkpoints" / "step-00000003")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = trainer.validate()
    finally:
        torch.set_num_threads(threads)
    assert (again["valid_loss"], again["valid_si_sdr"]) == (valid[0]["valid_loss"], valid[0]["valid_si_sdr"])
