"""Run logs: ``run_dir/log.jsonl`` (one JSON object per line), TensorBoard events, a tqdm console bar.

Only the main process writes (others get a logger with ``enabled=False``, whose methods do nothing).
The console shows a tqdm bar on a terminal; when stderr is not a terminal (a log file, a batch job) it
gets one plain line per logged step instead of bar redraws, plus a line after the first step and whenever
``HEARTBEAT_SECONDS`` pass without one (so a redirected run of a big model is never silent for minutes).
Records carry an ``event`` field: ``start`` (once per launch, with the step it resumed from), ``train``
(every ``log_every`` steps) and ``valid``. After a resume, steps after the checkpoint that was resumed are
trained again and logged again: the LAST record for a step is the one that counts. TensorBoard is opened
with ``purge_step`` so that it drops its own events past the resume point.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

HEARTBEAT_SECONDS = 30.0


class RunLogger:
    def __init__(self, run_dir: Path | None, *, enabled: bool, total_steps: int = 0, console: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.enabled = enabled and self.run_dir is not None
        self.console = console and enabled
        self.total_steps = total_steps
        self._writer = None
        self._jsonl = None
        self._bar = None
        self._last_line = time.monotonic()
        self._first_step = True

    def open(self, start_step: int, info: dict) -> None:
        """Start logging at ``start_step`` (0 for a fresh run, the restored step after a resume)."""
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is slow to import

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            self._jsonl = open(self.run_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._write({"event": "start", "step": start_step, "time": time.time(), **info})
        if self.console and sys.stderr.isatty():
            self._bar = tqdm(total=self.total_steps or None, initial=start_step, unit="step", dynamic_ncols=True)

    def train(self, record: dict) -> None:
        """One training record: step, epoch, loss, lr (list), grad_norm, step_time, samples_per_s, skipped."""
        self._first_step = False
        if self._bar is not None:
            self._bar.n = record["step"]
            self._bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr'][0]:.2e}",
                                  sps=f"{record['samples_per_s']:.1f}", refresh=False)
            self._bar.refresh()
        elif self.console:
            self.message(f"step {record['step']} epoch {record['epoch']}: loss {record['loss']:.4g} "
                         f"lr {record['lr'][0]:.3g} grad {record['grad_norm']:.3g} "
                         f"{record['samples_per_s']:.1f} samples/s")
        if not self.enabled:
            return
        self._write({"event": "train", **record})
        step = record["step"]
        self._writer.add_scalar("train/loss", record["loss"], step)
        self._writer.add_scalar("train/grad_norm", record["grad_norm"], step)
        self._writer.add_scalar("train/samples_per_s", record["samples_per_s"], step)
        self._writer.add_scalar("train/step_time", record["step_time"], step)
        self._writer.add_scalar("train/skipped_files", record["skipped_files"], step)
        for i, lr in enumerate(record["lr"]):
            self._writer.add_scalar(f"lr/group{i}", lr, step)

    def valid(self, record: dict) -> None:
        """One validation record: step, epoch, valid_loss, valid_si_sdr, per-SNR-bucket values, decisions."""
        if self.console:
            self.message(f"step {record['step']}: valid loss {record['valid_loss']:.4g}, "
                            f"SI-SDR {record['valid_si_sdr']:.2f} dB" + (" (best)" if record.get("improved") else ""))
        if not self.enabled:
            return
        self._write({"event": "valid", **record})
        step = record["step"]
        self._writer.add_scalar("valid/loss", record["valid_loss"], step)
        self._writer.add_scalar("valid/si_sdr", record["valid_si_sdr"], step)
        for bucket, values in record.get("by_snr", {}).items():
            self._writer.add_scalar(f"valid_loss_by_snr/{bucket}", values["loss"], step)
            self._writer.add_scalar(f"valid_si_sdr_by_snr/{bucket}", values["si_sdr"], step)
        self._writer.flush()

    def heartbeat(self, step: int, epoch: int, loss: float) -> None:
        """Called after every step that is not logged: a plain line after the first step of this launch and
        whenever HEARTBEAT_SECONDS passed without a console line (only when stderr is not a terminal)."""
        if not self.console or self._bar is not None:
            return
        if self._first_step or time.monotonic() - self._last_line >= HEARTBEAT_SECONDS:
            self.message(f"step {step} epoch {epoch}: loss {loss:.4g}")
        self._first_step = False

    def message(self, text: str) -> None:
        if self.console:
            tqdm.write(text, file=sys.stderr)
            self._last_line = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def _write(self, record: dict) -> None:
        self._jsonl.write(json.dumps(_finite(record), sort_keys=False) + "\n")
        self._jsonl.flush()


def _finite(obj):
    """JSON has no NaN/inf: write them as strings so every line stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
