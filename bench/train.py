"""Training throughput: samples/s of `steadyvoice train` on CPU, 1 and 2 processes (torchrun, gloo).

Runs the real command (data mixing, DataLoader, loss, DDP, logging, the final checkpoint) on generated
audio and reads the per-step wall-clock times from each run's log.jsonl. The first steps are warm-up and
not counted. Ratios are against the 1-process run of the same network, measured in the same invocation.

    python bench/train.py                      # the tiny recipes and the official-size network (~15 min on 2 cores)
    python bench/train.py --skip-official      # the tiny recipes only
    python bench/train.py --families tiny-cpu  # MossFormer2-SE only (~1 min)
    python bench/train.py --quick              # the floor ratio only: tiny-cpu and a 4-block official network (~2 min)
    python bench/train.py --families tiny-cpu --official-steps 8 --repeat 2   # the official 'vs floor', twice

Families: the tiny recipe of each (16 kHz, 1 s crops, the recipe's batch per process; steps per family, see
TINY): tiny-cpu (MossFormer2-SE, 4), frcrn-tiny-cpu (FRCRN, 4), mossformergan-tiny-cpu (MossFormerGAN generator
+ metric discriminator and its PESQ targets, 2) and separation-tiny-cpu (MossFormer2-SS, 2 talkers, 4; clean
speech only, as its recipe).
Every family trains on the same generated audio (the clean files sit in 4 speaker directories, which
separation needs and enhancement ignores). 'vs tiny-cpu' compares each run with the tiny-cpu run of the same
processes and threads, measured in the same invocation.

The plain-PyTorch floor ('vs floor', MossFormer2-SE runs of one process): a minimal hand-written loop, timed in
the same invocation with the same threads: the same recipe's model (built from the same seed), batch, crop and
loss (the PSM MSE of steadyvoice.train.losses.psm_mse on features.one_pass), torch.optim.Adam (AdamW) with the
recipe's settings (torch's default implementation: the for-loop one on CPU) and clip_grad_norm_ at its max_grad_norm, on random audio, with the model's textbook
formulations (mossformer2.textbook_ops: a depthwise nn.Conv1d plus the residual, attention over zero-padded
groups). 'vs floor' = `steadyvoice train` seconds per step / floor seconds per step (below 1: faster).

Sizes: the official MossFormer2_SE_48K network
(55 M parameters, 48 kHz) with 1 s crops and 1 example per process so that it fits the time budget on a
CPU (its recipe trains 4 s crops, 4 per GPU). Samples/s counts examples of the run's crop length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steadyvoice.audio import write_audio


def make_corpus(root: Path, sr: int, n_clean: int = 16, seconds: float = 2.0,
                speakers: int = 4) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    clean, noise = root / f"clean{sr}", root / f"noise{sr}"
    for k in range(speakers):  # speaker directories (data.speaker_from: parent) for separation
        (clean / f"spk{k}").mkdir(parents=True)
    noise.mkdir(parents=True)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n_clean):
        x = sum(np.sin(2 * np.pi * rng.uniform(100, 250) * k * t) / k for k in range(1, 8))
        x *= 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
        write_audio(clean / f"spk{i % speakers}" / f"c{i}.wav", (0.1 * x).astype(np.float32), sr)
    for i in range(3):
        write_audio(noise / f"n{i}.wav", (0.05 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return clean, noise


def run_training(name: str, procs: int, config: Path, clean: Path, noise: Path | None, work: Path, steps: int,
                 extra: list[str], threads: int | None) -> Path:
    run_dir = work / f"{name}-{procs}p-{threads or 'all'}t"
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                if procs > 1 else [sys.executable])
    cmd = [*launcher, "-m", "steadyvoice", "train", "--config", str(config), "--run-dir", str(run_dir),
           "--clean", str(clean), *(["--noise", str(noise)] if noise else []), "--max-steps", str(steps),
           "--device", "cpu",
           "--set", "train.log_every=1", "--set", "train.validate_every=100000", "--set", "data.valid_count=1",
           "--set", "checkpoint.save_every=100000", "--set", "data.epoch_size=100000", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{name} with {procs} process(es) failed:\n{proc.stderr[-4000:]}")
    return run_dir


def samples_per_s(run_dir: Path, warmup: int) -> tuple[float, float]:
    """(samples/s, seconds per step) over the steps after ``warmup``, from the logged wall-clock times."""
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["event"] == "train"]
    first, last = train[warmup - 1], train[-1]
    seconds = last["time"] - first["time"]
    return (last["samples"] - first["samples"]) / seconds, seconds / (last["step"] - first["step"])


def floor_worker(config: Path, sets: list[str], steps: int, warmup: int) -> None:
    """The plain-PyTorch floor of one training configuration (see the module docstring): prints the mean
    seconds per step after ``warmup`` steps."""
    import torch

    from steadyvoice.features import cropped_length, one_pass, stft
    from steadyvoice.models import build_model
    from steadyvoice.models.mossformer2 import textbook_ops
    from steadyvoice.train.config import load_train_config
    from steadyvoice.train.losses import psm_mse

    cfg = load_train_config(config, sets)
    if cfg.train.accumulate != 1 or cfg.loss.si_snr_weight or cfg.loss.mrstft_weight:
        sys.exit("the floor loop is one micro-batch per step and the PSM loss only: set train.accumulate=1")
    model_cfg, o = cfg.model.resolve(), cfg.optim
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg).train()
    adam = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    optimizer = adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    n = cropped_length(int(cfg.data.crop_seconds * model_cfg.sample_rate), model_cfg)
    clean = 0.1 * torch.randn(cfg.train.batch_size, n)
    noisy = clean + 0.05 * torch.randn(cfg.train.batch_size, n)
    times = []
    with textbook_ops():
        for _ in range(steps):
            t0 = time.perf_counter()
            out = one_pass(model, noisy, model_cfg, reconstruct=False)
            loss = cfg.loss.psm_weight * psm_mse(out.mask, out.noisy_spec, stft(clean, model_cfg), cfg.loss.psm_ratio)
            loss.mean().backward()
            if o.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds_per_step": sum(times[warmup:]) / len(times[warmup:])}))


def floor_seconds(config: Path, sets: list[str], steps: int, warmup: int, threads: int | None) -> float:
    """Seconds per step of the floor, in a fresh process with the threads the training run gets."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--floor-worker", str(config), str(steps), str(warmup), *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"the floor of {config.name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]


# The tiny recipe of each family: (recipe name, batch per process as the recipe, noise mixed in, steps). Steps
# per family keep each run to about a minute: an FRCRN or MossFormerGAN step costs 10-30 tiny-cpu steps.
TINY = (("tiny-cpu", 4, True, 100), ("frcrn-tiny-cpu", 4, True, 30), ("mossformergan-tiny-cpu", 2, True, 20),
        ("separation-tiny-cpu", 4, False, 50), ("fullband-tiny-cpu", 4, True, 30))
TINY_NAMES = [name for name, *_ in TINY]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", choices=TINY_NAMES, default=TINY_NAMES,
                    help="tiny recipes to run (default: all); tiny-cpu is the baseline of 'vs tiny-cpu'")
    ap.add_argument("--tiny-steps", type=int, help="steps of every tiny run (default: per family, 100 for tiny-cpu)")
    ap.add_argument("--official-steps", type=int, default=4)
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="only the 'vs floor' ratios of one process: tiny-cpu and the official network cut to 4 blocks")
    ap.add_argument("--floor-steps", type=int, default=8, help="steps of every floor run (2 of them warm-up)")
    ap.add_argument("--repeat", type=int, default=1, help="measure every row this many times (other load on the "
                    "machine moves single figures; compare the ratios of the same row)")
    ap.add_argument("--keep", type=Path, help="keep the run directories here")
    args = ap.parse_args()

    official = ["--set", "train.accumulate=1", "--set", "data.crop_seconds=1.0"]
    se48k = ROOT / "recipes" / "mossformer2-se-48k.yaml"
    # (name, recipe, sample rate, steps, warm-up steps, batch per process, noise?, extra overrides)
    cases = [(name, ROOT / "recipes" / f"{name}.yaml", 16000, args.tiny_steps or steps, 5, batch, noise, [])
             for name, batch, noise, steps in TINY if name in (["tiny-cpu"] if args.quick else args.families)]
    if args.quick:
        cases.append(("official-48k-4blocks", se48k, 48000, 10, 2, 1, True,
                      [*official, "--set", "model.overrides.num_blocks=4"]))
    elif not args.skip_official:
        cases.append(("official-48k", se48k, 48000, args.official_steps, 2, 1, True, official))
    with_floor = {"tiny-cpu", "official-48k", "official-48k-4blocks"}  # the MossFormer2-SE cases
    print(f"{os.cpu_count()} CPU cores; 'threads' = torch threads per process (torchrun sets 1 per process)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'network':22s} {'procs':>5s} {'threads':>7s} {'global batch':>12s} {'s/step':>8s} {'samples/s':>10s} "
              f"{'ratio':>7s} {'vs 1p1t':>8s} {'vs tiny-cpu':>11s} {'floor s':>8s} {'vs floor':>8s}")
        reference = {}  # (procs, threads) -> samples/s of tiny-cpu
        for name, config, sr, steps, warmup, batch, with_noise, extra in cases:
            extra = [*extra, "--set", f"train.batch_size={batch}", "--set", "train.num_workers=1"]
            clean, noise = make_corpus(work / name, sr)
            noise = noise if with_noise else None
            # 'ratio': against the plain 1-process run (torch uses every core), measured first.
            # 'vs 1p1t': against one process with one thread, the per-process setting torchrun uses.
            base = base_1t = None
            configs = ((1, None), (1, 1)) if args.quick else ((1, None), (1, 1), (2, 1))
            for rep, (procs, threads) in [(r, c) for c in configs for r in range(args.repeat)]:
                floor = None
                if name in with_floor and procs == 1:  # measured right before the run it is compared with
                    floor = floor_seconds(config, extra[1::2], max(args.floor_steps, 3), 2, threads)
                t0 = time.perf_counter()
                run_dir = run_training(f"{name}-{rep}", procs, config, clean, noise, work, steps, extra, threads)
                sps, sec = samples_per_s(run_dir, warmup)
                base = base or sps
                if threads == 1:
                    base_1t = base_1t or sps
                vs_1t = f"{sps / base_1t:7.2f}x" if base_1t else f"{'-':>8s}"
                if name == "tiny-cpu":
                    reference[procs, threads] = sps
                ref = reference.get((procs, threads)) if name in TINY_NAMES else None
                vs_ref = f"{sps / ref:10.2f}x" if ref else f"{'-':>11s}"
                shown = str(threads or os.cpu_count())
                vs_floor = f"{floor:8.3f} {sec / floor:7.2f}x" if floor else f"{'-':>8s} {'-':>8s}"
                print(f"{name:22s} {procs:5d} {shown:>7s} {batch * procs:12d} {sec:8.3f} {sps:10.2f} "
                      f"{sps / base:7.2f}x {vs_1t} {vs_ref} {vs_floor}   (run took {time.perf_counter() - t0:.0f} s)",
                      flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f} (other work on the machine skews the figures)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-worker"]:  # CONFIG STEPS WARMUP SET...: one floor run (floor_seconds)
        floor_worker(Path(sys.argv[2]), sys.argv[5:], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
