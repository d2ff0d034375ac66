"""ONNX Runtime against PyTorch: which backend enhances faster on the CPU, and how close their outputs are.

    python bench/onnx_backend.py [--models default mossformer2-se-48k] [--seconds 10] [--repeats 3] [--threads 1]

For each model (a shipped or installed name, a model directory, or a configuration name of
steadyvoice.models.CONFIGS, built with random weights): export its graph (steadyvoice.onnx_export, timed
and checked), then time ``Enhancer(audio, rate)`` with ``backend="torch"`` and ``backend="onnx"`` on the
same ``--seconds`` of audio at the model's rate (one pass for up to 20 s), alternating the two backends
``--repeats`` times after a warm-up call each, with ``--threads`` torch / onnxruntime threads. Prints the
medians, the ratio onnx / torch of the medians, and the largest absolute difference of their outputs.
(Not bench/onnx.py: run as a script, that file would shadow the onnx package the exporter imports.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def model_dir_for(name: str, scratch: Path) -> Path:
    """A copy in ``scratch`` of the model directory ``name`` names (its graph is written beside it, never into
    the package or the user's models), or a random-weight model of the configuration ``name``."""
    from steadyvoice.inference import _model_dir_for
    from steadyvoice.models import CONFIGS, MODEL_FILES, build_model, save_pretrained

    if name not in CONFIGS:
        copy = scratch / Path(name).name
        copy.mkdir()
        for file in MODEL_FILES:
            shutil.copyfile(_model_dir_for(name) / file, copy / file)
        return copy
    torch.manual_seed(0)
    return save_pretrained(build_model(CONFIGS[name]), CONFIGS[name], scratch / name, source={"kind": "random"})


def bench(name: str, scratch: Path, seconds: float, repeats: int) -> dict:
    from steadyvoice.inference import Enhancer
    from steadyvoice.onnx_export import export_onnx

    model_dir = model_dir_for(name, scratch)
    start = time.perf_counter()
    checks = export_onnx(model_dir, model_dir / "model.onnx")  # where backend="onnx" looks first
    export_s = time.perf_counter() - start
    enhancers = {backend: Enhancer.from_pretrained(model_dir, backend=backend) for backend in ("torch", "onnx")}
    rate = enhancers["torch"].sample_rate
    noisy = 0.1 * np.random.default_rng(0).standard_normal(round(seconds * rate)).astype(np.float32)
    outputs = {backend: enhancer(noisy, rate) for backend, enhancer in enhancers.items()}  # warm-up
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for _ in range(repeats):
        for backend, enhancer in enhancers.items():
            start = time.perf_counter()
            enhancer(noisy, rate)
            times[backend].append(time.perf_counter() - start)
    medians = {backend: statistics.median(t) for backend, t in times.items()}
    return {"name": name, "rate": rate, "export_s": export_s, "checks": checks, "medians": medians,
            "ratio": medians["onnx"] / medians["torch"],
            "max_abs": float(np.abs(outputs["onnx"] - outputs["torch"]).max()),
            "peak": float(np.abs(outputs["torch"]).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["default", "mossformer2-se-48k"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # onnxruntime's sessions take torch's thread count
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {args.threads} thread(s), "
          f"{args.seconds:g} s of audio, median of {args.repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="steadyvoice-bench-onnx-") as scratch:
        for name in args.models:
            r = bench(name, Path(scratch), args.seconds, args.repeats)
            worst = max(c.relative for c in r["checks"])
            print(f"{name} ({r['rate']} Hz): export {r['export_s']:.1f} s, check max rel. error {worst:.2g}; "
                  f"torch {r['medians']['torch']:.3f} s, onnx {r['medians']['onnx']:.3f} s, "
                  f"onnx/torch {r['ratio']:.2f}; outputs differ by {r['max_abs']:.3g} "
                  f"(peak {r['peak']:.3g})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
