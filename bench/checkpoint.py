"""Checkpoint benchmark: the official-size MossFormer2_SE_48K (55 M parameters) with Adam state.

    python bench/checkpoint.py [--repeats 3] [--dir /path/on/the/training/disk]

Measured in the same process, same file system, warm page cache:

* blocked: time the training loop waits in ``Checkpointer.save`` (async: host copy + snapshot only)
  against a synchronous ``torch.save`` of the same state (the loop waits for all of it);
* full save: ``save`` until the checkpoint is committed (written and checksummed, fsync'ed, renamed,
  retention done) against ``torch.save`` + fsync of the same state; target <= 1.5x;
* load + verify: ``load_checkpoint`` (read, checksum of every file, parse) against plain reading of the
  same files (target <= 1.2x), and against ``torch.load`` of the torch.save file.

Prints the medians and minima, the ratios, and the two ratios against their targets (issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET_FULL_SAVE = 1.5  # full background save / (torch.save + fsync)
TARGET_LOAD = 1.2  # load + verify / plain read of the same files


class BenchTrainer:
    """Named parts around the official network and Adam (state after one step), as the Trainer registers them."""

    def __init__(self):
        from steadyvoice.models import build_model, count_parameters

        torch.manual_seed(0)
        self.model = build_model("mossformer2-se-48k")
        self.num_parameters = count_parameters(self.model)
        params = list(self.model.named_parameters())
        self.names = [n for n, _ in params]
        self.optimizer = torch.optim.Adam([p for _, p in params], lr=5e-4, foreach=False)
        for _, p in params:
            p.grad = torch.randn_like(p) * 1e-3
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        self.step = 1

        from steadyvoice.checkpoint import ModelState, OptimizerState, RNGState

        self.counters = Counters(self)
        self.parts = {"model": ModelState(self.model), "optimizer": OptimizerState(self.optimizer, self.names),
                      "counters": self.counters, "rng": RNGState()}

    def state_dict(self):
        """Every part's state (what the torch.save baseline writes)."""
        return {name: part.state_dict() for name, part in self.parts.items()}


class Counters:
    """Step and data position of the bench trainer: one JSON part."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self):
        return {"step": self.trainer.step, "epoch": 0, "consumed": 8 * self.trainer.step}

    def load_state_dict(self, state):
        self.trainer.step = int(state["step"])


def stats(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def main(argv=None) -> int:
    from steadyvoice.checkpoint import Checkpointer
    from steadyvoice.checkpoint.api import load_checkpoint
    from steadyvoice.checkpoint.config import CheckpointConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        trainer = BenchTrainer()
        print(f"model: mossformer2-se-48k, {trainer.num_parameters:,} parameters; Adam state; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; writing to {work}")
        ckpt = Checkpointer(work / "run", CheckpointConfig(keep_last=2, async_save=True))
        torch_file = work / "state.pt"
        t = {k: [] for k in ("blocked", "full", "torch", "torch_fsync", "read", "load", "torch_load", "restore")}

        def timed(key, fn):
            t0 = time.perf_counter()
            fn()
            t[key].append(time.perf_counter() - t0)

        def torch_save_fsync():
            with open(torch_file, "wb") as fh:
                torch.save(trainer.state_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())

        # Interleaved, so that both sides of each ratio see the same machine conditions.
        for _ in range(args.repeats):
            trainer.step += 1
            t0 = time.perf_counter()
            ckpt.save(trainer.parts, step=trainer.step, epoch=0, reason="bench")
            t["blocked"].append(time.perf_counter() - t0)
            ckpt.close()
            t["full"].append(time.perf_counter() - t0)
            timed("torch", lambda: torch.save(trainer.state_dict(), torch_file))
            timed("torch_fsync", torch_save_fsync)
            last = ckpt.last_saved
            timed("read", lambda last=last: [p.read_bytes() for p in sorted(last.iterdir())])
            timed("load", lambda last=last: load_checkpoint(last))
            timed("torch_load", lambda: torch.load(torch_file, map_location="cpu", weights_only=False))
            timed("restore", lambda: Checkpointer(work / "run", CheckpointConfig()).restore(trainer.parts))
        size = sum(p.stat().st_size for p in ckpt.last_saved.iterdir())
        m = {k: stats(v) for k, v in t.items()}
        print("blocked per save: " + ", ".join(f"{x:.3f}" for x in t["blocked"]))

        def both(key):
            return f"{m[key][0]:.3f} s (min {m[key][1]:.3f})"

        def ratio(a, b):
            return f"{m[a][0] / m[b][0]:.2f}x (mins: {m[a][1] / m[b][1]:.2f}x)"

        print(f"checkpoint size: {size / 1e6:.0f} MB (torch.save file: {torch_file.stat().st_size / 1e6:.0f} MB)")
        print(f"save, blocked in the training loop (async: host copy): {both('blocked')}")
        print(f"   synchronous torch.save: {both('torch')} -> torch.save / blocked = {ratio('torch', 'blocked')}")
        print(f"   torch.save + fsync:     {both('torch_fsync')} -> (torch.save + fsync) / blocked = {ratio('torch_fsync', 'blocked')}")
        print(f"save, full (host copy, written and checksummed, fsync'ed, renamed): {both('full')} = "
              f"{ratio('full', 'torch_fsync')} torch.save + fsync")
        t["background"] = [f - b for f, b in zip(t["full"], t["blocked"])]
        m["background"] = stats(t["background"])
        print(f"   of which in the background (full - blocked): {both('background')} = "
              f"{ratio('background', 'torch_fsync')} torch.save + fsync")
        print(f"load + verify (read, checksum of every file, parse): {both('load')}")
        print(f"   plain read of the same files: {both('read')} -> {ratio('load', 'read')}")
        print(f"   torch.load of the torch.save file: {both('torch_load')} -> {ratio('load', 'torch_load')}")
        print(f"full restore into model + optimizer (verify, validate, load_state_dict): {both('restore')}")
        print(f"(medians and minima of {args.repeats} interleaved repeats; warm page cache; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        algorithms = sorted({e["algorithm"] for e in json.loads((ckpt.last_saved / "manifest.json").read_text())["files"].values()})
        print(f"targets (checksum: {', '.join(algorithms)}):")
        for key, base, target, what in (("full", "torch_fsync", TARGET_FULL_SAVE, "full save / (torch.save + fsync)"),
                                        ("load", "read", TARGET_LOAD, "load + verify / plain read")):
            median = m[key][0] / m[base][0]
            verdict = "met" if median <= target else "NOT met"
            print(f"   {what}: {median:.2f}x (mins: {m[key][1] / m[base][1]:.2f}x), target <= {target}x: {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
