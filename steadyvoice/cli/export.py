"""``steadyvoice export onnx MODEL OUT.onnx``: an enhancement model's pass as an ONNX graph, checked against PyTorch.

MODEL is a model directory or the name of a shipped or installed model. The graph takes the waveform at the
model's rate with a dynamic length (what it covers, and what its input must be: steadyvoice.onnx_export and the
graph's metadata). After the export the whole pass runs in PyTorch and in onnxruntime on two inputs of other
lengths; the largest absolute difference of each is printed, and OUT is written only if both are within the
tolerance (1e-4 of the output's peak). Needs the onnx extra: pip install 'steadyvoice[onnx]'.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a model to another format (ONNX)",
                                   description="Export a model to another format.")
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT")
    formats.required = True
    onnx = formats.add_parser("onnx", help="an enhancement model's pass as an ONNX graph (checked against PyTorch)",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx.add_argument("model", metavar="MODEL", help="model directory, or the name of a shipped or installed model")
    onnx.add_argument("out", type=Path, metavar="OUT.onnx", help="the ONNX file to write (replaced atomically)")
    onnx.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadyvoice.onnx_export import RELATIVE_TOLERANCE, export_onnx

    print(f"exporting {args.model} to {args.out} (traces every layer: seconds for small models, minutes for "
          "the official-size ones)", file=sys.stderr)
    start = time.perf_counter()
    checks = export_onnx(args.model, args.out)
    for check in checks:
        print(f"check on {check.samples} samples: max abs error {check.max_abs_error:.3g} "
              f"({check.relative:.2g} of the output's peak {check.peak:.3g})")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s (tolerance {RELATIVE_TOLERANCE:g} of the peak)")
    return 0
