"""Fault-injection harness: kill ``steadyvoice train`` with SIGKILL at random moments, resume, compare.

    python tests/faultinject.py --trials 20            # longer runs; the CI share is tests/test_faultinject.py

Each trial runs the real command (``python -m steadyvoice train``) on a tiny synthetic corpus in a
subprocess, SIGKILLs it at a random step plus a random delay (the checkpoint writer is slowed between
files with STEADYVOICE_CKPT_WRITE_DELAY so that many kills land in the middle of a save), checks that
every committed checkpoint still verifies, reruns the same command (which resumes) and repeats until
the run finishes. The end state must be bit-identical to an uninterrupted run: model, optimizer and RNG
tensors of the final checkpoint, its state.json (except the creation time), and the logged losses, LRs
and validation results of every step. The schedule crosses warmup, several validations, a plateau
("reload the best checkpoint and halve the LR") and epoch boundaries.

The helpers here (synthetic data, the tiny config, run comparison, in-process training) are also used by
tests/test_resume.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
WRITE_DELAY_ENV = "STEADYVOICE_CKPT_WRITE_DELAY"  # steadyvoice.checkpoint.store.WRITE_DELAY_ENV

# tiny-cpu shrunk further: 8 examples of 0.25 s per epoch, 2 per step (4 steps per epoch), a validation
# every 3 steps that never improves after the first (min_delta) so that the plateau rule fires at the
# second bad one, checkpoints every 2 steps, warmup over the first 3 steps.
BASE_OVERRIDES = [
    "data.crop_seconds=0.25", "data.valid_count=2", "train.batch_size=2", "train.num_workers=0",
    "train.log_every=1", "train.validate_every=3", "train.max_epochs=1000", "checkpoint.save_every=2",
    "checkpoint.keep_last=2", "schedule.min_delta=100", "schedule.patience=2", "schedule.stop_patience=100",
    "schedule.warmup_steps=3",
]


def make_data(root: Path, n_clean: int = 8, n_noise: int = 3, sample_rate: int = 16000) -> tuple[Path, Path]:
    """Synthetic 'speech' (harmonic tones with a syllable-rate envelope) and white-noise files."""
    import numpy as np
    import soundfile as sf

    clean, noise = root / "clean", root / "noise"
    clean.mkdir(parents=True, exist_ok=True)
    noise.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sample_rate * 1.0)) / sample_rate
    for i in range(n_clean):
        f0 = 110.0 + 17.0 * i
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        sf.write(clean / f"c{i}.wav", (0.1 * x).astype(np.float32), sample_rate)
    rng = np.random.default_rng(0)
    for i in range(n_noise):
        sf.write(noise / f"n{i}.wav", (0.1 * rng.standard_normal(sample_rate * 2)).astype(np.float32), sample_rate)
    return clean, noise


def make_talkers(root: Path, speakers: tuple[str, ...] = ("ann", "bob", "cy", "dee"), per_speaker: int = 2,
                 sample_rate: int = 16000) -> tuple[Path, Path]:
    """Separation data: ``speech/<speaker>/*.wav`` (a harmonic tone per file, pitch by speaker) and noise."""
    import numpy as np
    import soundfile as sf

    speech = root / "speech"
    t = np.arange(sample_rate) / sample_rate
    for s, who in enumerate(speakers):
        (speech / who).mkdir(parents=True, exist_ok=True)
        for i in range(per_speaker):
            f0 = 110.0 + 45.0 * s + 9.0 * i
            x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * (0.6 + 0.4 * np.sin(2 * np.pi * (3 + s) * t))
            sf.write(speech / who / f"{who}{i}.wav", (0.1 * x).astype(np.float32), sample_rate)
    _, noise = make_data(root / "noise-only", n_clean=0)
    return speech, noise


def overrides(data: tuple[Path, Path], max_steps: int, extra: list[str] = ()) -> list[str]:
    clean, noise = data
    return [f"data.clean=[{clean}]", f"data.noise=[{noise}]", *BASE_OVERRIDES, f"train.max_steps={max_steps}", *extra]


def train_command(run_dir: Path, sets: list[str], *extra: str, recipe: Path = RECIPE) -> list[str]:
    cmd = [sys.executable, "-m", "steadyvoice", "train", "--config", str(recipe), "--run-dir", str(run_dir)]
    for item in sets:
        cmd += ["--set", item]
    return cmd + list(extra)


@dataclass
class InProcessRun:
    reason: str
    trainer: object
    checkpointer: object


def train_inprocess(run_dir: Path, sets: list[str], *, data=None, resume_from: Path | None = None,
                    dist=None, recipe: Path = RECIPE) -> InProcessRun:
    """Run the trainer in this process exactly as `steadyvoice train` does (minus argument parsing)."""
    from steadyvoice.checkpoint import Checkpointer
    from steadyvoice.train.config import load_train_config
    from steadyvoice.train.loop import Trainer, training_data
    from steadyvoice.train.rundir import prepare_run_dir

    cfg = load_train_config(recipe, sets)
    prepare_run_dir(run_dir, cfg, restart=False)
    if data is None:
        data = training_data(cfg)
    trainer = Trainer(cfg, data, dist, run_dir=run_dir)
    checkpointer = Checkpointer(run_dir, cfg.checkpoint, dist, resume_from=resume_from)
    return InProcessRun(trainer.fit(checkpointer), trainer, checkpointer)


def truncate_run(source: Path, dest: Path, k: int) -> Path:
    """A copy of run ``source`` as it was when it stopped at step k: checkpoints <= k, log records <= k."""
    shutil.copytree(source, dest)
    for d in (dest / "checkpoints").iterdir():
        if int(d.name.split("-")[1]) > k:
            shutil.rmtree(d)
    lines = (dest / "log.jsonl").read_text().splitlines()
    (dest / "log.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= k))
    return dest


def reseal(step_dir: Path) -> None:
    """Recompute the manifest of an edited checkpoint: a forgery (or a buggy writer) that verifies."""
    from steadyvoice.checkpoint.checksum import DEFAULT_ALGORITHM, checksum_file
    from steadyvoice.checkpoint.format import FileEntry, build_manifest, read_manifest

    old = read_manifest(step_dir)
    files = {}
    for name in old.files:
        path = step_dir / name
        files[name] = FileEntry(path.stat().st_size, checksum_file(path, DEFAULT_ALGORITHM), DEFAULT_ALGORITHM)
    (step_dir / "manifest.json").write_bytes(build_manifest(old.step, files, old.info)[0])


# ------------------------------------------------------------------------------------------ recording
def record_batches(record_dir: Path, rank: int):
    """Patch the training sampler to append every (epoch, index) it hands out to record_dir/rank<r>.jsonl.

    Returns a function that undoes the patch. Used to prove that no example of an epoch is skipped or
    repeated when a run is resumed with another number of processes.
    """
    from steadyvoice.data.sampler import ShardedBatchSampler

    original = ShardedBatchSampler.__iter__
    path = Path(record_dir) / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def recording_iter(self):
        for batch in original(self):
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps([list(map(int, key)) for key in batch]) + "\n")
            yield batch

    ShardedBatchSampler.__iter__ = recording_iter
    return lambda: setattr(ShardedBatchSampler, "__iter__", original)


def recorded_examples(record_dir: Path) -> list[tuple[int, int]]:
    """Every (epoch, index) recorded by record_batches, all ranks."""
    out = []
    for path in sorted(Path(record_dir).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            out.extend(tuple(key) for key in json.loads(line))
    return out


# ------------------------------------------------------------------------------------------ comparison
def final_checkpoint(run_dir: Path) -> Path:
    from steadyvoice.checkpoint.store import CheckpointStore

    committed = CheckpointStore(run_dir / "checkpoints").committed()
    if not committed:
        raise AssertionError(f"{run_dir}: no committed checkpoint")
    return committed[-1].path


def last_records(run_dir: Path) -> dict[tuple[str, int], dict]:
    """The last log.jsonl record of each (event, step), without timing fields (a resumed step is logged again)."""
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") in ("train", "valid"):
            out[(rec["event"], rec["step"])] = {k: v for k, v in rec.items() if k not in ("time", "step_time", "samples_per_s")}
    return out


def compare_runs(a: Path, b: Path, log_steps_after: int = 0) -> list[str]:
    """Differences between two runs' final checkpoints (bit level) and logs; empty when identical."""
    import torch
    from safetensors.torch import load_file

    diffs = []
    ca, cb = final_checkpoint(a), final_checkpoint(b)
    if ca.name != cb.name:
        diffs.append(f"final checkpoints differ: {ca.name} vs {cb.name}")
        return diffs
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        ta, tb = load_file(ca / name), load_file(cb / name)
        if ta.keys() != tb.keys():
            diffs.append(f"{name}: keys differ: {sorted(set(ta) ^ set(tb))[:5]}")
            continue
        for key in ta:
            x, y = ta[key], tb[key]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(
                    x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                diffs.append(f"{name}: tensor '{key}' differs (bit level)")
    sa, sb = (json.loads((c / "state.json").read_text()) for c in (ca, cb))
    for s in (sa, sb):
        s.pop("created")
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            diffs.append(f"state.json: '{key}' differs")
    la, lb = last_records(a), last_records(b)
    la = {k: v for k, v in la.items() if k[1] > log_steps_after}
    lb = {k: v for k, v in lb.items() if k[1] > log_steps_after}
    if la.keys() != lb.keys():
        diffs.append(f"log.jsonl: different steps logged: {sorted(set(la) ^ set(lb))[:6]}")
    for key in sorted(set(la) & set(lb)):
        if la[key] != lb[key]:
            diffs.append(f"log.jsonl: {key[0]} record of step {key[1]} differs: {la[key]} vs {lb[key]}")
    return diffs


# ------------------------------------------------------------------------------------------ trials
@dataclass
class Kill:
    target_step: int
    delay: float
    during_save: bool


@dataclass
class TrialResult:
    trial: int
    kills: list[Kill] = field(default_factory=list)
    launches: int = 0
    diffs: list[str] = field(default_factory=list)


def _new_records(log: Path, offset: int) -> list[dict]:
    if not log.exists():
        return []
    with open(log, encoding="utf-8") as fh:
        fh.seek(offset)
        lines = fh.read().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


def run_until(cmd: list[str], run_dir: Path, *, kill_after_step: int | None, delay: float, env: dict,
              timeout: float = 300.0) -> tuple[int | None, bool]:
    """Start ``cmd``; SIGKILL it ``delay`` s after it logs step ``kill_after_step``.

    Returns (exit code or None if killed, whether a save was in progress when it was killed).
    """
    log = run_dir / "log.jsonl"
    offset = log.stat().st_size if log.exists() else 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(cmd)} did not finish in {timeout} s")
            if kill_after_step is not None and any(
                    r.get("event") == "train" and r["step"] >= kill_after_step for r in _new_records(log, offset)):
                time.sleep(delay)
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                root = run_dir / "checkpoints"
                during_save = root.is_dir() and any(p.name.startswith(".tmp-") for p in root.iterdir())
                return None, during_save
            time.sleep(0.02)
        stderr = proc.stderr.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{stderr[-3000:]}")
        return proc.returncode, False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_committed_checkpoints(run_dir: Path) -> None:
    """After a kill: every step-* directory verifies (only .tmp-* leftovers may be incomplete)."""
    from steadyvoice.checkpoint.format import verify_dir

    root = run_dir / "checkpoints"
    if not root.is_dir():
        return
    for d in root.iterdir():
        if not d.name.startswith("."):
            report = verify_dir(d)
            if not report.valid:
                raise AssertionError(f"a committed checkpoint is broken after SIGKILL: {report.problems}")


def reference_run(workdir: Path, data, max_steps: int) -> Path:
    ref = workdir / "reference"
    if not (ref / "checkpoints").is_dir():
        run_until(train_command(ref, overrides(data, max_steps)), ref, kill_after_step=None, delay=0.0, env=dict(os.environ))
    return ref


def trial(index: int, workdir: Path, data, reference: Path, *, max_steps: int, kills: int, rng: random.Random,
          recipe: Path = RECIPE, extra: list[str] = ()) -> TrialResult:
    run_dir = workdir / f"trial-{index:03d}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = TrialResult(index)
    cmd = train_command(run_dir, overrides(data, max_steps, list(extra)), recipe=recipe)
    done_step = 0
    while True:
        env = {**os.environ, WRITE_DELAY_ENV: f"{rng.uniform(0.0, 0.12):.3f}"}
        if len(result.kills) < kills and done_step < max_steps - 1:
            target, delay = rng.randint(done_step + 1, max_steps - 1), rng.uniform(0.0, 0.4)
        else:
            target, delay = None, 0.0
        code, during_save = run_until(cmd, run_dir, kill_after_step=target, delay=delay, env=env)
        result.launches += 1
        if code is not None:
            break
        result.kills.append(Kill(target, delay, during_save))
        check_committed_checkpoints(run_dir)
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        done_step = max((r["step"] for r in records if r.get("event") == "train"), default=0)
    result.diffs = compare_runs(reference, run_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before it may finish")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="faultinject-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    data = make_data(workdir / "data")
    t0 = time.monotonic()
    reference = reference_run(workdir, data, args.steps)
    failures = 0
    for i in range(args.trials):
        r = trial(i, workdir, data, reference, max_steps=args.steps, kills=args.kills, rng=rng)
        kills = ", ".join(f"step {k.target_step}+{k.delay:.2f}s{' (mid-save)' if k.during_save else ''}" for k in r.kills)
        status = "identical" if not r.diffs else "DIFFERENT"
        print(f"trial {i}: {len(r.kills)} kill(s) [{kills}], {r.launches} launches: {status}", flush=True)
        for d in r.diffs:
            print(f"    {d}")
        failures += bool(r.diffs)
    print(f"{args.trials - failures}/{args.trials} trials bit-identical to the uninterrupted run "
          f"({time.monotonic() - t0:.0f} s)")
    if args.workdir is None and not failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def _train_recorded(argv: list[str]) -> int:
    """``faultinject.py train-recorded RECORD_DIR TRAIN_ARGS...``: `steadyvoice train` with batch recording
    (the entry point torchrun runs in the DDP tests; RANK comes from torchrun)."""
    from steadyvoice.cli import main as cli_main

    record_batches(Path(argv[0]), int(os.environ.get("RANK", "0")))
    return cli_main(["train", *argv[1:]])


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "train-recorded":
        sys.exit(_train_recorded(sys.argv[2:]))
    sys.exit(main())
