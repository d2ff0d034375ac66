"""Atomic commit, retention, clean-up, async writer, kill -9 during saves, restart / resume-from / best."""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ckpt_toy import ToyTrainer, assert_same_state, seed_all
from steadyvoice.checkpoint import Checkpointer
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import verify_dir
from steadyvoice.checkpoint.store import WRITE_DELAY_ENV, CheckpointStore
from steadyvoice.errors import CheckpointError

TESTS = Path(__file__).resolve().parent


def _steps(run_dir: Path) -> list[int]:
    return [e.step for e in CheckpointStore(run_dir / "checkpoints").committed()]


def _train_and_save(run_dir: Path, steps: int, cfg: CheckpointConfig, best_at=(), trainer=None) -> ToyTrainer:
    if trainer is None:
        seed_all(0)
        trainer = ToyTrainer()
    ckpt = Checkpointer(run_dir, cfg)
    for _ in range(steps):
        trainer.train_step()
        trainer.save(ckpt, metrics={"valid_loss": 1.0 / trainer.step}, is_best=trainer.step in best_at, reason="periodic")
    ckpt.close()
    return trainer


def test_retention_keeps_last_best_and_every_kth(tmp_path):
    cfg = CheckpointConfig(keep_last=2, keep_best=True, keep_every=4)
    _train_and_save(tmp_path, 10, cfg, best_at=(1, 3))
    assert _steps(tmp_path) == [3, 4, 8, 9, 10]  # best = newest is_best (3); every 4th; last 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_retention_without_best_or_kth(tmp_path):
    _train_and_save(tmp_path, 5, CheckpointConfig(keep_last=2, keep_best=False), best_at=(1,))
    assert _steps(tmp_path) == [4, 5]


def test_keep_last_below_two_is_refused():
    from steadyvoice.config import from_dict
    from steadyvoice.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_last=1: keep at least 2"):
        from_dict(CheckpointConfig, {"keep_last": 1})


def test_disk_full_during_save_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
    cfg = CheckpointConfig(keep_last=2, async_save=True)
    trainer = _train_and_save(tmp_path, 3, cfg)  # steps 2 and 3 kept
    before = {p.name: p.read_bytes() for d in (tmp_path / "checkpoints").iterdir() for p in d.iterdir()}
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the second file of the save: the first one was written completely
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    ckpt = Checkpointer(tmp_path, cfg)
    trainer.train_step()
    monkeypatch.setattr(os, "write", full_disk)
    trainer.save(ckpt, reason="periodic")  # the error happens in the background writer ...
    with pytest.raises(CheckpointError, match=r"step-00000004: No space left on device \(the disk is full.*earlier checkpoints are intact"):
        ckpt.close()  # ... and is raised in the training thread
    monkeypatch.setattr(os, "write", real_write)
    assert _steps(tmp_path) == [2, 3]  # nothing deleted by retention, no step 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    after = {p.name: p.read_bytes() for d in (tmp_path / "checkpoints").iterdir() for p in d.iterdir()}
    assert after == before
    assert all(verify_dir(d).valid for d in (tmp_path / "checkpoints").iterdir())
    trainer.save(ckpt, reason="periodic")  # space is back: the next save works (the error was collected once)
    ckpt.close()
    assert _steps(tmp_path) == [3, 4]


def test_writer_error_is_raised_at_the_next_save(tmp_path, monkeypatch):
    trainer = _train_and_save(tmp_path, 1, CheckpointConfig(keep_last=2))
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=2))
    monkeypatch.setattr(ckpt.store, "commit", lambda *a, **k: (_ for _ in ()).throw(CheckpointError("boom: disk gone")))
    trainer.train_step()
    trainer.save(ckpt)
    trainer.train_step()
    with pytest.raises(CheckpointError, match="boom: disk gone"):
        trainer.save(ckpt)


def test_at_most_one_save_in_flight_and_close_waits(tmp_path, monkeypatch):
    monkeypatch.setenv(WRITE_DELAY_ENV, "0.05")
    seed_all(0)
    trainer = ToyTrainer()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=5))
    trainer.train_step()
    trainer.save(ckpt)
    trainer.train_step()
    trainer.save(ckpt)  # returns only once step 1 is committed (it waits for the save in flight first)
    assert _steps(tmp_path) == [1]
    ckpt.close()
    assert _steps(tmp_path) == [1, 2]


def test_process_exit_waits_for_the_last_save(tmp_path):
    """No close(): the interpreter still waits for the writer before exiting (non-daemon thread + atexit)."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        from ckpt_toy import ToyTrainer, seed_all
        from steadyvoice.checkpoint import Checkpointer
        from steadyvoice.checkpoint.config import CheckpointConfig
        seed_all(0); t = ToyTrainer(); t.train_step()
        t.save(Checkpointer({str(tmp_path)!r}, CheckpointConfig(keep_last=2)))
        print("returned", flush=True)
    """)
    env = {**os.environ, WRITE_DELAY_ENV: "0.3"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "returned"
    assert _steps(tmp_path) == [1] and verify_dir(tmp_path / "checkpoints" / "step-00000001").valid


def test_kill_9_during_saves_never_leaves_a_broken_valid_checkpoint(tmp_path):
    """SIGKILL a process that saves continuously (slowed between files) at random moments, 3 times."""
    rng = random.Random(1)
    env = {**os.environ, WRITE_DELAY_ENV: "0.02"}
    for trial in range(3):
        run_dir = tmp_path / f"run{trial}"
        proc = subprocess.Popen([sys.executable, str(TESTS / "ckpt_toy.py"), "save-loop", str(run_dir), "1000"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "1"  # first save handed over (maybe still being written)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        root = run_dir / "checkpoints"
        for d in root.iterdir():  # every step-* directory is complete; leftovers are only .tmp-*
            assert d.name.startswith(".tmp-") or verify_dir(d).valid, d
        committed = _steps(run_dir)
        seed_all(5)
        resumed = ToyTrainer(hidden=64)
        ckpt = Checkpointer(run_dir, CheckpointConfig(keep_last=2))
        assert ckpt.restore(resumed.parts) == bool(committed)
        if committed:
            assert resumed.step == committed[-1]
        assert not [p for p in root.iterdir() if p.name.startswith(".")]  # stale temp dirs cleaned


def test_stale_temp_dirs_are_removed_and_reported(tmp_path, caplog):
    trainer = _train_and_save(tmp_path, 2, CheckpointConfig(keep_last=2))
    stale = tmp_path / "checkpoints" / ".tmp-step-00000003-999-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        assert Checkpointer(tmp_path, CheckpointConfig()).restore(ToyTrainer().parts)
    assert not stale.exists()
    assert f"removed {stale}: left over by an interrupted save" in caplog.text
    assert trainer.step == 2


def test_same_step_save_replaces_and_interrupted_replace_is_recovered(tmp_path):
    seed_all(0)
    trainer = ToyTrainer()
    trainer.train_step()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False))
    trainer.save(ckpt, reason="periodic")
    trainer.save(ckpt, metrics={"valid_loss": 0.5}, is_best=True, reason="validation")  # same step, more facts
    entries = CheckpointStore(tmp_path / "checkpoints").committed()
    assert [e.step for e in entries] == [1] and entries[0].manifest.info["reason"] == "validation"
    # A crash between "rename the old one aside" and "rename the new one in": the old one comes back.
    root = tmp_path / "checkpoints"
    os.rename(root / "step-00000001", root / ".old-step-00000001-123-beef")
    messages = CheckpointStore(root).clean_stale()
    assert messages == [f"restored {root / 'step-00000001'}: a save replacing it was interrupted"]
    assert verify_dir(root / "step-00000001").valid


# ------------------------------------------------------------------------------- restart / resume-from
def test_restart_moves_checkpoints_aside(tmp_path, caplog):
    _train_and_save(tmp_path, 2, CheckpointConfig())
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        assert Checkpointer(tmp_path, CheckpointConfig(), restart=True).restore(ToyTrainer().parts) is False
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.restart-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-00000001", "step-00000002"]
    assert "moved to" in caplog.text and "nothing deleted" in caplog.text
    assert not (tmp_path / "checkpoints").exists()


def test_resume_from_picks_that_checkpoint_and_sets_newer_ones_aside(tmp_path):
    _train_and_save(tmp_path, 3, CheckpointConfig(keep_last=3))
    expected = load_checkpoint(tmp_path / "checkpoints" / "step-00000002")
    fresh = ToyTrainer(seed=3)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(), resume_from=tmp_path / "checkpoints" / "step-00000002")
    assert ckpt.restore(fresh.parts) and fresh.step == 2
    assert torch.equal(fresh.model.state_dict()["0.weight"], expected.tensors_of("model")["0.weight"])
    assert _steps(tmp_path) == [1, 2]  # step 3 belongs to the abandoned branch: moved, not deleted
    assert (ckpt.restored.set_aside / "step-00000003" / "manifest.json").exists()


def test_resume_from_a_damaged_checkpoint_is_an_error(tmp_path):
    _train_and_save(tmp_path, 2, CheckpointConfig())
    target = tmp_path / "checkpoints" / "step-00000001"
    (target / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"--resume-from .*model.safetensors: is empty \(0 bytes\)"):
        Checkpointer(tmp_path, CheckpointConfig(), resume_from=target).restore(ToyTrainer().parts)


def test_restart_and_resume_from_exclude_each_other(tmp_path):
    with pytest.raises(CheckpointError, match="exclude each other"):
        Checkpointer(tmp_path, CheckpointConfig(), resume_from=tmp_path, restart=True)


# ------------------------------------------------------------------------------- best weights
def test_load_best_weights_restores_weights_and_moments_not_counters(tmp_path):
    seed_all(0)
    trainer = ToyTrainer()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=2))
    for _ in range(2):
        trainer.train_step()
        trainer.save(ckpt, is_best=trainer.step == 2, reason="validation")
    ckpt.close()
    best = load_checkpoint(tmp_path / "checkpoints" / "step-00000002")
    for _ in range(3):
        trainer.train_step()
        trainer.save(ckpt, is_best=False, reason="validation")
    ckpt.close()
    before = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "checkpoints").iterdir()}
    digests = {e.path.name: e.manifest.digest for e in CheckpointStore(tmp_path / "checkpoints").committed()}
    lr_before = [g["lr"] for g in trainer.optimizer.param_groups]
    sched_before = trainer.schedule.state_dict()

    path = ckpt.load_best_weights(trainer.parts)
    assert path.name == "step-00000002"
    sd = trainer.state_dict()
    for name, tensor in best.tensors_of("model").items():
        assert torch.equal(sd["model"][name], tensor)
    best_moments = best.part_state("optimizer")["state"]
    for name in trainer.param_names():
        assert torch.equal(sd["optimizer"]["state"][name]["exp_avg"], best_moments[name]["exp_avg"])
    assert trainer.step == 5 and [g["lr"] for g in trainer.optimizer.param_groups] == lr_before
    assert trainer.schedule.state_dict() == sched_before
    after = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "checkpoints").iterdir()}
    assert after == before  # nothing written, nothing overwritten
    assert {e.path.name: e.manifest.digest for e in CheckpointStore(tmp_path / "checkpoints").committed()} == digests
    assert _steps(tmp_path) == [2, 4, 5]


def test_load_best_weights_without_a_best_is_an_error(tmp_path):
    trainer = _train_and_save(tmp_path, 2, CheckpointConfig())
    with pytest.raises(CheckpointError, match="no checkpoint is marked best"):
        Checkpointer(tmp_path, CheckpointConfig()).load_best_weights(trainer.parts)


def test_replica_check_compares_parameter_hashes(tmp_path):
    """The DDP replica check, with a stand-in context whose other rank holds different weights."""
    from steadyvoice.checkpoint.checkpointer import param_digest
    from steadyvoice.distributed import DistContext

    trainer = _train_and_save(tmp_path, 1, CheckpointConfig())
    other = ToyTrainer(seed=11)

    class TwoRanks(DistContext):
        def all_gather_object(self, obj):
            if isinstance(obj, str):
                return [obj, param_digest({"model": other.model.state_dict()})]
            return [obj, obj]

    ckpt = Checkpointer(tmp_path, CheckpointConfig(), TwoRanks(rank=0, world_size=2))
    with pytest.raises(CheckpointError, match=r"model replicas differ at step 1: the parameters of rank\(s\) 1"):
        trainer.save(ckpt)
    assert _steps(tmp_path) == [1]
    other.model.load_state_dict(trainer.model.state_dict())
    trainer.save(ckpt)  # identical replicas: saved, with both ranks' RNG states
    ckpt.close()
    state = load_checkpoint(tmp_path / "checkpoints" / "step-00000001").state
    assert state["world_size"] == 2 and len(state["parts"]["rng"]["ranks"]) == 2


def test_resume_with_same_world_size_gives_each_rank_its_rng(tmp_path):
    from steadyvoice.distributed import DistContext

    class TwoRanks(DistContext):
        def all_gather_object(self, obj):
            if isinstance(obj, dict) and "python" in obj:  # rank 1's RNG differs from rank 0's
                seed_all(1)
                other = {"python": random.getstate(), "numpy": __import__("numpy").random.get_state(), "torch": torch.get_rng_state()}
                return [obj, other]
            return [obj, obj]

    trainer = _train_and_save(tmp_path, 1, CheckpointConfig())
    rank0_rng = trainer.state_dict()["rng"]
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False), TwoRanks(rank=0, world_size=2))
    trainer.save(ckpt)
    content = load_checkpoint(tmp_path / "checkpoints" / "step-00000001")
    assert_same_state(content.part_state("rng", 0, 2), rank0_rng)
    seed_all(1)
    assert content.part_state("rng", 1, 2)["python"] == random.getstate()
    single = content.part_state("rng", 0, 1)  # another world size: re-derived
    assert single["python"] != rank0_rng["python"]
    assert_same_state(single, content.part_state("rng", 0, 1))  # deterministically


def test_a_rank_reading_different_files_is_an_error(tmp_path):
    """Under DDP every rank checks it loaded the checkpoint rank 0 picked (same manifest digest)."""
    from steadyvoice.checkpoint.checkpointer import _load_expected

    _train_and_save(tmp_path, 1, CheckpointConfig())
    path = tmp_path / "checkpoints" / "step-00000001"
    assert _load_expected(path, load_checkpoint(path).digest).step == 1
    with pytest.raises(CheckpointError, match=r"manifest digest [0-9a-f]{12} differs from rank 0's 000000000000"):
        _load_expected(path, "0" * 64)
