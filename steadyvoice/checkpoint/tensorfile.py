"""Safetensors files hashed as they are written, and read as views of the bytes that were verified.

The layout is safetensors' own: an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) padded with spaces
to a multiple of 8, then the bytes of every tensor. ``safetensors.torch.load_file`` reads the files
written here, and the files it writes are read here (tests/test_checkpoint_checksum.py checks both).

Hand-written because the library has no hook for either job. Its ``save`` returns a copy of the whole file
in memory (1.5 s for the 664 MB of an official-size model with Adam, as long as torch.save takes in all)
and its ``save_file`` writes from Rust: no checksum of the bytes as they go out, and a full disk comes back
as a SafetensorError instead of an OSError. Its ``load`` copies every tensor a second time out of the bytes
just verified, and ``load_file`` reads the file again after verification (what a flaky disk returns then
is not what was checked). A file this reader does not take as it is (a dtype not listed below, a header
that does not add up) is handed to the library, which loads it or says what is wrong.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load as st_load

from steadyvoice.checkpoint.format import CorruptCheckpointError, Problem
from steadyvoice.errors import CheckpointError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
    "BOOL": torch.bool, "C64": torch.complex64,
}
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _name):
        _DTYPES[_code] = getattr(torch, _name)
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class Sink(Protocol):
    def write(self, data, /) -> None: ...


# ----------------------------------------------------------------------------------------------- writing
def write_tensors(sink: Sink, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as one safetensors file to ``sink``, straight from their memory (no copy)."""
    # Widest elements first, then by name (as safetensors orders them): every tensor starts at a multiple
    # of its element size, so the reader can view it in place.
    order = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))
    header: dict = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, tensor in order:
        code = _CODES.get(tensor.dtype)
        if code is None:
            raise CheckpointError(f"cannot store tensor '{name}': safetensors has no type for {tensor.dtype} "
                                  f"(supported: {', '.join(str(d) for d in _CODES)})")
        blob = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        header[name] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, offset + blob.numel()]}
        offset += blob.numel()
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the tensor bytes start 8-byte aligned
    sink.write(len(head).to_bytes(8, "little") + head)
    for blob in blobs:
        if blob.numel():
            sink.write(blob.numpy())


# ----------------------------------------------------------------------------------------------- reading
def read_tensors(path: Path, buf: np.ndarray) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``path`` whose verified bytes are ``buf`` (uint8), as views of it."""
    tensors = _views(buf)
    if tensors is not None:
        return tensors
    try:
        return st_load(buf.tobytes())
    except Exception as exc:  # safetensors raises its own SafetensorError for malformed headers
        raise CorruptCheckpointError([Problem(path, f"is not a valid safetensors file ({exc})")]) from None


def _views(buf: np.ndarray) -> dict[str, torch.Tensor] | None:
    """Every tensor as a view of ``buf``; None unless the file is exactly the plain layout.

    Each tensor gets its own storage starting at its first byte (``torch.frombuffer`` with an offset,
    keeping ``buf`` alive), as the library's tensors do: some torch functions (``torch.set_rng_state``)
    ignore a tensor's storage offset.
    """
    if sys.byteorder != "little" or len(buf) < 8:
        return None
    n = int.from_bytes(buf[:8].tobytes(), "little")
    if n > len(buf) - 8:
        return None
    try:
        header = json.loads(buf[8 : 8 + n].tobytes())
    except ValueError:  # not UTF-8, not JSON
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    start = 8 + n  # where the tensor bytes begin
    spans = []
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            return None
        numel = math.prod(shape)
        if min(shape, default=0) < 0 or end - begin != numel * dtype.itemsize or (start + begin) % dtype.itemsize:
            return None  # inconsistent, or not aligned to its element size (written by another tool)
        spans.append((begin, end, name, dtype, shape))
    spans.sort(key=lambda s: s[:2])
    starts, ends = [s[0] for s in spans], [s[1] for s in spans]
    if starts != [0, *ends[:-1]][: len(starts)] or (ends[-1] if ends else 0) != len(buf) - start:
        return None  # holes, overlaps or trailing bytes
    return {name: _view(buf, start + begin, end - begin, dtype, shape) for begin, end, name, dtype, shape in spans}


def _view(buf: np.ndarray, offset: int, nbytes: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not nbytes:  # frombuffer refuses empty tensors
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
