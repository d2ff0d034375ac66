"""bfloat16 against float32 inference (``Enhancer(precision=...)``, ``enhance --precision``): what it costs in
accuracy and what it saves in time, per model, measured in the same run on the corpus's test split.

For each model (``--models``: shipped or installed names and model directories; default ``default`` and
``default-v1``) every test file (test/noisy at its own rate; ``--limit N`` for the first N) is enhanced twice
through the Enhancer, with one torch thread: precision float32 and precision bfloat16. Reported per model:

* ``diff dB``: how far below the float32 output the difference between the two outputs lies, 10 log10(sum f32^2 /
  sum (bf16 - f32)^2) per file: median and worst file;
* PESQ-WB, STOI and SI-SDR (dB) of each output against test/clean, means over files, and their differences
  (bfloat16 minus float32): what a user's scores would see;
* CPU time of each precision over all files (the sum of each file's time, the model loaded beforehand) and
  their ratio bf16/f32. Whether bfloat16 is faster depends on the CPU: native bfloat16 matrix products
  (AVX512-BF16, AMX) run at about twice the float32 rate; without them bfloat16 is emulated and slower. The
  header says which this CPU has (``torch.backends.cpu.get_cpu_capability()`` and oneDNN's bfloat16 check).

For the official-size MossFormer2_SE_48K network the time side is in ``bench/enhance.py --precision bfloat16``
(with ``--clearervoice PATH``, side by side with their network in float32).

    python bench/precision.py --corpus /work/corpus1h                 # 16 kHz corpus, both shipped models
    python bench/precision.py --corpus /work/corpus48k2 --limit 40 --models default

Results are printed and written to bench/out/precision.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import test_files  # noqa: E402  (the same test split as the quality benchmark)

from steadyvoice.data.mixing import snr_db  # noqa: E402
from steadyvoice.eval.metrics import pesq_wb, si_sdr, stoi  # noqa: E402
from steadyvoice.inference import Enhancer  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a corpus made by `steadyvoice corpus`")
    parser.add_argument("--models", nargs="+", default=["default", "default-v1"])
    parser.add_argument("--limit", type=int, default=None, help="the first N test files only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = test_files(args.corpus, args.limit)
    print(f"torch {torch.__version__}, one thread, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bfloat16 (oneDNN): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; {len(files)} test files "
          f"of {args.corpus}", flush=True)
    results = [measure(name, files) for name in args.models]  # each printed as it is done
    out = HERE / "out" / "precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": str(args.corpus), "files": len(files), "results": results}, indent=2))
    print(f"written {out}")
    return 0


def measure(model: str, files: list[dict]) -> dict:
    enhancers = {p: Enhancer.from_pretrained(model, precision=p) for p in PRECISIONS}
    for enhancer in enhancers.values():  # warm-up (allocator, kernels) on 1 s
        enhancer(np.zeros(enhancer.sample_rate, np.float32), enhancer.sample_rate)
    cpu = dict.fromkeys(PRECISIONS, 0.0)
    scores: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    diffs = []
    for f in files:
        noisy, rate = sf.read(f["noisy"], dtype="float32")
        clean, _ = sf.read(f["clean"], dtype="float32")
        outputs = {}
        for p, enhancer in enhancers.items():
            start = time.process_time()
            outputs[p] = enhancer(noisy, rate)
            cpu[p] += time.process_time() - start
            scores[p].append({"pesq_wb": pesq_wb(outputs[p], clean, rate), "stoi": stoi(outputs[p], clean, rate),
                              "si_sdr": si_sdr(outputs[p], clean)})
        reference = outputs["float32"].astype(np.float64)
        diffs.append(snr_db(reference, outputs["bfloat16"] - reference))
    means = {p: {k: float(np.nanmean([s[k] for s in scores[p]])) for k in scores[p][0]} for p in PRECISIONS}
    row = {"model": model, "files": len(files), "diff_db_median": float(np.median(diffs)),
           "diff_db_worst": float(np.min(diffs)), "cpu_s": cpu, "cpu_ratio": cpu["bfloat16"] / cpu["float32"],
           "means": means}
    print(format_row(row), flush=True)
    return row


def format_row(row: dict) -> str:
    f32, bf16 = row["means"]["float32"], row["means"]["bfloat16"]
    metrics = "  ".join(f"{k} {f32[k]:.3f} -> {bf16[k]:.3f} ({bf16[k] - f32[k]:+.3f})" for k in f32)
    return (f"  {row['model']:<12} {row['files']} files  diff {row['diff_db_median']:.1f} dB median, "
            f"{row['diff_db_worst']:.1f} dB worst  {metrics}  CPU {row['cpu_s']['float32']:.1f} s -> "
            f"{row['cpu_s']['bfloat16']:.1f} s (x{row['cpu_ratio']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
