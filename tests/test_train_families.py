"""FRCRN, MossFormerGAN and full-band training keep every checkpoint promise: exact resume at any step, after SIGKILL
(mid-save too) and with 2 processes, for every named part (a GAN's discriminator, its optimizer and its
schedule included). Tiny networks (recipes/*-tiny-cpu.yaml) on 0.5 s crops of the synthetic corpus.
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
    make_data,
    overrides,
    train_inprocess,
    trial,
    truncate_run,
)
from steadyvoice.checkpoint.api import inspect_checkpoint, load_checkpoint

RECIPES = {"frcrn": REPO / "recipes" / "frcrn-tiny-cpu.yaml", "gan": REPO / "recipes" / "mossformergan-tiny-cpu.yaml",
           "fullband": REPO / "recipes" / "fullband-tiny-cpu.yaml"}
STEPS = 5  # 4 steps per epoch; validations at 3 (best) and 5 (end)
SMALL = ["data.crop_seconds=0.5", "checkpoint.save_every=1", "checkpoint.keep_last=100"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    runs = {}
    for family, recipe in RECIPES.items():
        run_dir = tmp_path_factory.mktemp(f"straight-{family}") / "run"
        result = train_inprocess(run_dir, overrides(corpus, STEPS, SMALL), recipe=recipe)
        assert result.trainer.step == STEPS
        runs[family] = run_dir
    return runs


@pytest.mark.parametrize("family", list(RECIPES))
def test_resume_at_step_k_is_bit_identical(family, straight, corpus, tmp_path):
    run_dir = truncate_run(straight[family], tmp_path / "run", 2)
    result = train_inprocess(run_dir, overrides(corpus, STEPS, SMALL), recipe=RECIPES[family])
    assert result.checkpointer.restored.step == 2
    assert compare_runs(straight[family], run_dir) == []


def test_the_gan_checkpoint_holds_every_part_and_exports_the_generator(straight, tmp_path):
    from steadyvoice.cli import main
    from steadyvoice.models import read_model_config

    last = final_checkpoint(straight["gan"])
    content = load_checkpoint(last)
    assert {"model", "optimizer", "discriminator", "optimizer_d", "schedule_d", "schedule", "rng"} <= set(content.parts)
    info = inspect_checkpoint(last)
    assert len(info["lr"]) == 2 and len(info["optimizer_d"]["param_groups"]) == 2  # every group of both optimizers
    assert info["optimizer_d"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    log = [json.loads(ln) for ln in (straight["gan"] / "log.jsonl").read_text().splitlines()]
    assert all("d_loss" in r and "pesq_failures" in r for r in log if r["event"] == "train")
    out = tmp_path / "exported"
    assert main(["ckpt", "export", str(last), str(out)]) == 0
    assert type(read_model_config(out)).__name__ == "MossFormerGANConfig"
    keys = set(load_checkpoint(last).tensors_of("model"))
    from safetensors.torch import load_file
    assert set(load_file(out / "model.safetensors")) == keys  # the generator only


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RECIPES))
def test_sigkill_then_resume_is_bit_identical(family, corpus, tmp_path):
    reference = tmp_path / "reference"
    extra = ["data.crop_seconds=0.5"]
    train_inprocess(reference, overrides(corpus, STEPS, extra), recipe=RECIPES[family])
    result = trial(0, tmp_path, corpus, reference, max_steps=STEPS, kills=1, rng=random.Random(11),
                   recipe=RECIPES[family], extra=extra)
    assert len(result.kills) == 1 and result.diffs == [], f"killed {result.kills}: {result.diffs}"


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RECIPES))
def test_two_processes_resume_bit_identical(family, corpus, tmp_path):
    def torchrun(run_dir: Path, steps: int) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "steadyvoice",
               "train", "--config", str(RECIPES[family]), "--run-dir", str(run_dir)]
        for item in overrides(corpus, steps, SMALL + ["train.batch_size=1"]):
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-4000:]

    straight = tmp_path / "straight"
    torchrun(straight, 4)
    resumed = truncate_run(straight, tmp_path / "resumed", 2)
    torchrun(resumed, 4)
    assert compare_runs(straight, resumed) == []
    assert load_checkpoint(final_checkpoint(resumed)).state["world_size"] == 2


def test_a_failed_pesq_skips_the_discriminator_step_and_is_counted():
    import math

    import torch

    from steadyvoice.distributed import DistContext
    from steadyvoice.train.config import load_train_config
    from steadyvoice.train.gan import MetricGAN, pesq_target
    from steadyvoice.train.loop import Progress

    cfg = load_train_config(RECIPES["gan"], ["gan.pesq_workers=0"])
    torch.manual_seed(0)
    gan = MetricGAN(cfg, 16000, Progress(), DistContext())
    mag = torch.rand(2, 1, 40, 201)
    before = {k: v.clone() for k, v in gan.disc.state_dict().items()}
    silent = pesq_target(torch.zeros(8000).numpy(), torch.zeros(8000).numpy(), 16000)
    assert math.isnan(silent)  # PESQ cannot score silence
    facts = gan.step([{"clean_mag": mag, "est_mag": mag * 0.5, "targets": [0.4, silent]}])
    assert facts == {"d_skipped": 1, "pesq_failures": 1, "d_loss": facts["d_loss"]} and math.isnan(facts["d_loss"])
    assert all(torch.equal(before[k], v) for k, v in gan.disc.state_dict().items())  # D untouched
    facts = gan.step([{"clean_mag": mag, "est_mag": mag * 0.5, "targets": [0.4, 0.7]}])
    assert facts["d_skipped"] == 0 and math.isfinite(facts["d_loss"])
    assert any(not torch.equal(before[k], v) for k, v in gan.disc.state_dict().items())  # D learned
    # The adversarial term reaches the generator only: D's parameters get no gradient from it.
    est = (mag * 0.5).requires_grad_(True)
    gan.adversarial({"clean_mag": mag, "est_mag": est}).sum().backward()
    assert est.grad is not None and all(p.grad is None for p in gan.disc.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RECIPES))
def test_sigkill_of_every_process_of_a_2_process_run_then_resume_is_bit_identical(family, corpus, tmp_path):
    """kill -9 of the agent and both workers (mid-save when it lands there), then the same torchrun again."""
    import signal
    import time

    from faultinject import WRITE_DELAY_ENV
    from test_run_state import _processes_mentioning

    def torchrun_cmd(run_dir: Path) -> list[str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "steadyvoice",
               "train", "--config", str(RECIPES[family]), "--run-dir", str(run_dir)]
        for item in overrides(corpus, 4, ["data.crop_seconds=0.5", "train.batch_size=1"]):
            cmd += ["--set", item]
        return cmd

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    assert subprocess.run(torchrun_cmd(straight), capture_output=True, timeout=900, env=env).returncode == 0
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, WRITE_DELAY_ENV: "0.1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        log = run_dir / "log.jsonl"
        while not (log.exists() and any('"step": 2' in ln for ln in log.read_text().splitlines())):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        for pid in [proc.pid, *_processes_mentioning(str(run_dir))]:  # agent and workers, all at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    finally:
        for pid in _processes_mentioning(str(run_dir)):
            os.kill(pid, signal.SIGKILL)
    out = subprocess.run(torchrun_cmd(run_dir), capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert compare_runs(straight, run_dir) == []
