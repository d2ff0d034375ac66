"""Many files on the command line (enhance, separate): running the jobs, their progress and messages on
stderr, and the arguments both commands share (--jobs, --precision).

Progress is a tqdm bar on a terminal, a plain line every few seconds otherwise.

A redirected run (a log file, a batch job, a pipe) would get nothing from a tqdm bar (tqdm disables itself
when stderr is not a terminal) or, forced on, carriage-return redraws; it gets one readable line every
``interval`` seconds instead, plus the errors as they happen.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from steadyvoice.batch import Job, run_jobs

PLAIN_INTERVAL_SECONDS = 5.0


class FileProgress:
    """Counts finished items (done, skipped or failed) out of ``total``."""

    def __init__(self, total: int, desc: str, *, unit: str = "file", interval: float = PLAIN_INTERVAL_SECONDS):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count = self.failed = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, failed: bool = False) -> None:
        self.count += 1
        self.failed += int(failed)
        if self._bar is not None:
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.count / elapsed
        text = f"{self.desc}: {self.count}/{self.total} {self.unit}s ({100 * self.count / max(self.total, 1):.0f} %)"
        if self.failed:
            text += f", {self.failed} failed"
        text += f", {rate:.3g} {self.unit}s/s"
        if 0 < self.count < self.total:
            text += f", about {_duration((self.total - self.count) / rate)} left"
        return text

    def write(self, text: str) -> None:
        """A message line (an error) that does not break the bar."""
        if self._bar is not None:
            tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class WindowBar:
    """Progress over the windows of one long file: a second bar that appears only if there are several
    (on a terminal; a redirected run reports files only)."""

    def __init__(self, name: str):
        self.name = name
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1 or not sys.stderr.isatty():
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.name, unit="window", position=1, leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def summary(done: int, skipped: int, failed: int, verb: str = "enhanced") -> str:
    parts = [f"{done} {verb}"]
    if skipped:
        parts.append(f"{skipped} skipped (output exists; --overwrite to redo)")
    parts.append(f"{failed} failed")
    return ", ".join(parts)


def process_jobs(jobs: list[Job], work, *, is_done, overwrite: bool, workers: int, desc: str) -> tuple[int, int, int]:
    """Run ``work(job, window_progress)`` over the jobs with progress on stderr; returns (done, skipped, failed)."""
    progress = FileProgress(len(jobs), desc)

    def report(job: Job, status: str, problem) -> None:
        if problem is not None:
            progress.write(f"error: {problem}")
        progress.update(failed=status == "failed")

    def one(job: Job) -> None:
        windows = WindowBar(job.source.name) if workers == 1 else None
        try:
            work(job, windows)
        finally:
            if windows is not None:
                windows.close()

    try:
        result = run_jobs(jobs, one, is_done=(lambda job: False) if overwrite else is_done,
                          workers=workers, report=report)
    finally:
        progress.close()
    return len(result.done), len(result.skipped), len(result.failed)


def error(problem) -> None:
    say(f"error: {problem}")


def say(text: str) -> None:
    """One message line on stderr (between bar redraws on a terminal)."""
    tqdm.write(text, file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type of --jobs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision (steadyvoice.inference.PRECISIONS), the same for enhance and separate."""
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="float32 (the default: the reference output) or bfloat16: the network's matrix products "
                             "in bfloat16, about 2x faster for the official-size MossFormer2_SE_48K on a CPU with "
                             "native bfloat16 (AVX512-BF16, AMX; the small shipped models gain nothing), slower on a "
                             "CPU without it; the output's difference from float32's lies about 40 dB or more below "
                             "the signal")
