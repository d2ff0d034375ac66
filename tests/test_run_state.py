"""One trainer per run directory, no orphaned workers, nothing written before the inputs are checked.

The real command runs in subprocesses on the fault-injection corpus (tiny model, 0.25 s crops).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faultinject import RECIPE, WRITE_DELAY_ENV, make_data, overrides, train_command
from steadyvoice.errors import RunDirBusyError
from steadyvoice.train.rundir import LOCK_FILE, RunDirLock

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def _none_left(run_dir: Path, within: float) -> list[int]:
    """The processes still mentioning ``run_dir`` after waiting up to ``within`` seconds for them to go."""
    deadline = time.monotonic() + within
    while _processes_mentioning(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _processes_mentioning(str(run_dir))


def _kill_left(run_dir: Path) -> None:
    for pid in _processes_mentioning(str(run_dir)):
        os.kill(pid, signal.SIGKILL)


def _wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the trainer exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc), zombies excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _listing(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under run_dir with its size and mtime (what "touches nothing" is checked against)."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(run_dir))] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------ the lock
def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from steadyvoice.train.rundir import RunDirLock\n"
        f"RunDirLock.acquire({str(run_dir)!r}); print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusyError) as info:
            RunDirLock.acquire(run_dir)
        message = str(info.value)
        assert f"{run_dir}: another trainer is using this run directory (pid {holder.pid} on {socket.gethostname()}, started 20" in message
        assert "nothing was changed" in message
        holder.kill()  # kill -9: the kernel drops the lock, no stale lock is left behind
        holder.wait(timeout=30)
        with RunDirLock.acquire(run_dir) as lock:
            info = json.loads((run_dir / LOCK_FILE).read_text())
            assert info["pid"] == os.getpid() and lock.run_dir == run_dir
            with pytest.raises(RunDirBusyError, match="this process already trains in this run directory"):
                RunDirLock.acquire(run_dir)
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_touches_nothing(corpus, tmp_path):
    run_dir = tmp_path / "run"
    sets = overrides(corpus, 10_000, ["checkpoint.save_every=1", "train.validate_every=0"])
    env = {**os.environ, WRITE_DELAY_ENV: "0.2"}  # every save stays in flight for about a second
    first = subprocess.Popen(train_command(run_dir, sets), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        checkpoints = run_dir / "checkpoints"
        _wait_for(lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir())
                  and any(p.name.startswith(".tmp-") for p in checkpoints.iterdir()), first)
        config_before = (run_dir / "config.yaml").read_bytes()
        # A save of the first trainer is in flight: the second's start-up clean-up must not remove it.
        for extra in ([], ["--restart", "--set", "optim.lr=0.5"]):  # the same command, or another one
            second = subprocess.run(train_command(run_dir, sets) + extra, capture_output=True, text=True,
                                    timeout=120, env=env)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 1, second.stderr
            assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
            assert lines[0].startswith(f"error: {run_dir}: another trainer is using this run directory "
                                       f"(pid {first.pid} on {socket.gethostname()}, started ")
        assert (run_dir / "config.yaml").read_bytes() == config_before
        assert not [p for p in run_dir.iterdir() if p.name.startswith("checkpoints.restart")]  # --restart moved nothing
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 128 + signal.SIGTERM, stderr  # it finished and saved normally
        assert "No such file or directory" not in stderr and "Traceback" not in stderr  # its saves were left alone
        # A trainer started once the first has ended takes the directory over and resumes.
        later = subprocess.run(train_command(run_dir, [*sets[:-1], "train.max_steps=1"]), capture_output=True,
                               text=True, timeout=300)
        assert later.returncode == 0, later.stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_a_wrong_data_path_writes_nothing(corpus, tmp_path):
    run_dir = tmp_path / "run"
    sets = overrides(corpus, 1)
    wrong = [s for s in sets if not s.startswith("data.clean")] + [f"data.clean=[{tmp_path / 'no-such-dir'}]"]
    out = subprocess.run(train_command(run_dir, wrong), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no-such-dir" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not run_dir.exists()  # not even the directory: a typo leaves nothing behind
    (run_dir).mkdir()
    (run_dir / "notes.txt").write_text("mine")
    out = subprocess.run(train_command(run_dir, wrong), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "notes.txt"]
    fixed = subprocess.run(train_command(run_dir, sets), capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr  # the corrected command is not refused as "a different config"


# ------------------------------------------------------------------------------------------ orphans
@pytest.mark.slow
def test_sigkill_of_the_torchrun_group_leaves_no_worker(corpus, tmp_path):
    run_dir = tmp_path / "ddp-run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "steadyvoice",
           "train", "--config", str(RECIPE), "--run-dir", str(run_dir)]
    for item in overrides(corpus, 10_000, ["checkpoint.save_every=1", "train.validate_every=0", "train.num_workers=1"]):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    group = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)  # torchrun leads its own process group
    try:
        checkpoints = run_dir / "checkpoints"
        _wait_for(lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()), group)
        workers = [p for p in _processes_mentioning(str(run_dir)) if p != group.pid]
        assert len(workers) >= 2  # two trainers (plus their DataLoader workers), in sessions of their own
        os.killpg(group.pid, signal.SIGKILL)
        group.wait(timeout=30)
        assert _none_left(run_dir, within=10) == []
    finally:
        _kill_left(run_dir)
    # The directory is free again: a rerun resumes from the last committed checkpoint.
    rerun = subprocess.run(train_command(run_dir, overrides(corpus, 1)) + ["--set", "train.max_steps=1"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 or "config" in rerun.stderr, rerun.stderr


def test_dataloader_workers_die_with_a_killed_trainer(corpus, tmp_path):
    run_dir = tmp_path / "run"
    sets = overrides(corpus, 10_000, ["checkpoint.save_every=1000", "train.validate_every=0", "train.num_workers=2"])
    proc = subprocess.Popen(train_command(run_dir, sets), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run_dir / "log.jsonl").exists() and len((run_dir / "log.jsonl").read_text().splitlines()) >= 3, proc)
        assert len(_processes_mentioning(str(run_dir))) >= 3  # the trainer and its two DataLoader workers
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
        assert _none_left(run_dir, within=3) == []
        assert "Traceback" not in stderr, stderr
    finally:
        _kill_left(run_dir)


def test_sigkill_of_a_gan_trainer_leaves_no_pesq_worker(corpus, tmp_path):
    """The metric discriminator's PESQ pool dies with its trainer (before: its workers waited forever)."""
    from faultinject import REPO

    run_dir = tmp_path / "gan-run"
    sets = overrides(corpus, 10_000, ["gan.pesq_workers=2", "train.validate_every=0", "data.crop_seconds=0.5"])
    proc = subprocess.Popen(train_command(run_dir, sets, recipe=REPO / "recipes" / "mossformergan-tiny-cpu.yaml"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        log = run_dir / "log.jsonl"
        _wait_for(lambda: log.exists() and '"d_loss"' in log.read_text(), proc)  # the pool has run
        assert len([p for p in _processes_mentioning(str(run_dir)) if p != proc.pid]) == 2  # its two workers
        proc.kill()
        proc.wait(timeout=30)
        assert _none_left(run_dir, within=10) == []
    finally:
        _kill_left(run_dir)


# ------------------------------------------------------------------------------------------ post-load checks
def test_a_checkpoint_whose_schedule_contradicts_its_lr_falls_back(corpus, tmp_path, caplog):
    """Verifying files whose parts disagree (forged, or a buggy writer): reported, the previous one is used."""
    import logging

    from faultinject import reseal, train_inprocess
    from steadyvoice.checkpoint.format import pretty_json

    run_dir = tmp_path / "run"
    sets = overrides(corpus, 4, ["checkpoint.save_every=1", "checkpoint.keep_last=10"])
    assert train_inprocess(run_dir, sets).trainer.step == 4
    newest = run_dir / "checkpoints" / "step-00000004"
    state = json.loads((newest / "state.json").read_text())
    assert state["parts"]["schedule"]["state"] == {"scale": 1.0}
    state["parts"]["schedule"]["state"]["scale"] = 0.5  # the saved lr says 1.0
    (newest / "state.json").write_bytes(pretty_json(state))
    reseal(newest)
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        result = train_inprocess(run_dir, overrides(corpus, 5, ["checkpoint.save_every=1", "checkpoint.keep_last=10"]))
    restored = result.checkpointer.restored
    assert restored.step == 3 and result.trainer.step == 5
    assert len(restored.skipped) == 1 and str(newest) in restored.skipped[0]
    assert "param group 0 of 'optimizer' has lr=" in restored.skipped[0] and "its parts disagree" in restored.skipped[0]
    assert f"checkpoint {newest} is not usable, trying an older one" in caplog.text

