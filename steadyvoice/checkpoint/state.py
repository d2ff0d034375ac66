"""Named parts <-> checkpoint files: host snapshot, pickle-free encoding, decoding for this rank.

:func:`snapshot` takes the ``state_dict()`` of every named part (see :mod:`steadyvoice.checkpoint.parts`)
and lays it out as files, in host memory (the only part of a save that training waits for):

* a model part ``M`` -> ``M.safetensors`` (its tensors, by name);
* an optimizer part ``O`` -> ``O.safetensors`` (per-parameter tensors as ``<key>/<parameter name>``) and
  its param groups and scalar per-parameter state in state.json;
* an RNG part -> the states of every rank in state.json (byte states in state.safetensors);
* any other part -> JSON in state.json, tensor and numpy leaves in state.safetensors; tuples, numpy scalars
  and non-string dict keys are tagged so that they come back exactly (python's RNG state needs tuples).

:meth:`Content.part_states` decodes a verified checkpoint back into ``{part name: state}`` for one rank.
RNG states: each rank gets its own when the world size is unchanged; with another world size every
generator found in rank 0's state (python ``random``, numpy legacy and Generator states, torch CPU and CUDA
byte states) is re-seeded from SHA-256(manifest digest, new world size, rank, key path), so two resumes
of the same checkpoint with the same world size are identical.

Checkpoints of format version 1 (one fixed ``trainer`` dict) are read through
:mod:`steadyvoice.checkpoint.v1`, which turns their state.json into this layout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

from steadyvoice.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    STATE_FILE,
    STATE_TENSORS_FILE,
    CorruptCheckpointError,
    Problem,
    part_file,
    pretty_json,
)
from steadyvoice.checkpoint.tensorfile import Sink, write_tensors
from steadyvoice.errors import CheckpointError


def host_copy(t: torch.Tensor, staging: dict[str, torch.Tensor] | None = None, key: str = "") -> torch.Tensor:
    """A private contiguous CPU copy of ``t`` (training may go on changing ``t`` in place).

    With ``staging``, the buffer of the previous save under ``key`` is reused when it fits: copying into
    memory that is already mapped avoids a page fault per 4 KB, which dominates the copy of a large model
    (torchtitan keeps staging buffers for its async saves for the same reason). The caller guarantees that
    the previous save using these buffers has been written.
    """
    if staging is not None:
        buf = staging.get(key)
        if buf is not None and buf.shape == t.shape and buf.dtype == t.dtype:
            return buf.copy_(t.detach())
        buf = t.detach().to("cpu", copy=True).contiguous()
        staging[key] = buf
        return buf
    return t.detach().to("cpu", copy=True).contiguous()


def versions() -> dict[str, str]:
    from steadyvoice import __version__

    return {
        "steadyvoice": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------- generic encoding
# JSON has no tuples, tensors, numpy arrays or int dict keys; these tags bring them back exactly.
# (Hand-written: no library round-trips python RNG tuples and tensors through JSON without pickle.)
class _Encoder:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def encode(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, torch.Tensor):
            self.tensors[path] = host_copy(obj)
            return {"__tensor__": path}
        if isinstance(obj, np.ndarray):
            self.tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {"__ndarray__": path}
        if isinstance(obj, np.generic):
            return {"__npscalar__": [obj.dtype.str, obj.item()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{path}/{k}") for k, v in obj.items()}
            return {"__items__": [[self.encode(k, f"{path}/key{i}"), self.encode(v, f"{path}/{i}")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, bytes):
            return {"__bytes__": base64.b64encode(obj).decode("ascii")}
        raise CheckpointError(
            f"cannot store state at '{path}': values of type {type(obj).__name__} are not supported "
            "(use numbers, strings, lists, dicts, tensors or numpy arrays)"
        )


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag in ("__tensor__", "__ndarray__"):
            if value not in tensors:
                raise CorruptCheckpointError([Problem(where, f"refers to tensor '{value}', which {STATE_TENSORS_FILE} lacks")])
            t = tensors[value]
            return t.numpy() if tag == "__ndarray__" else t
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, where) for v in value)
        if tag == "__items__":
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
        if tag == "__npscalar__":
            return np.dtype(value[0]).type(value[1])
        if tag == "__bytes__":
            return base64.b64decode(value)
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ snapshot
@dataclass
class Snapshot:
    """One save, in host memory: what the background writer turns into files."""

    step: int
    files: dict[str, dict[str, torch.Tensor]]  # safetensors file name -> tensors (part files + state.safetensors)
    state: dict[str, Any]  # state.json, JSON-ready
    info: dict[str, Any]  # copied into manifest.json for listing

    def writers(self) -> list[tuple[str, Callable[[Sink], None]]]:
        """(file name, writer of its content to a sink), in write order; manifest.json is added by the store."""
        out: list[tuple[str, Callable[[Sink], None]]] = [
            (name, lambda sink, t=tensors: write_tensors(sink, t, {"format": FORMAT})) for name, tensors in self.files.items()]
        out.append((STATE_FILE, lambda sink: sink.write(pretty_json(self.state))))
        return out


def _named_optimizer(state: dict, name: str, staging: dict | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """OptimizerState.state_dict() -> (tensors "<key>/<param name>", JSON: param groups + scalar state)."""
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for g, group in enumerate(state["param_groups"]):
        hyper = {k: v for k, v in group.items() if k != "params"}
        groups.append({"params": list(group["params"]),
                       "hyperparameters": _Encoder(tensors).encode(hyper, f"param_groups/{g}")})
    scalars: dict[str, dict[str, Any]] = {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}/{param}"] = host_copy(value, staging, f"{name}/{key}/{param}")
            else:
                scalars.setdefault(param, {})[key] = _Encoder(tensors).encode(value, f"scalar/{param}/{key}")
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def snapshot(
    states: dict[str, tuple[str, Any]],
    *,
    step: int,
    info: dict[str, Any],
    config: Any,
    staging: dict[str, torch.Tensor] | None = None,
) -> Snapshot:
    """Copy every part's state to host memory and lay it out as checkpoint files.

    ``states``: {part name: (kind, state)} in load order; an "rng" part's state is the list of every
    rank's. ``info`` (epoch, created, reason, is_best, metrics, world_size) goes to state.json and the
    manifest. ``staging``: host buffers of the previous save to copy into (see :func:`host_copy`).
    """
    files: dict[str, dict[str, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}  # state.safetensors
    enc = _Encoder(tensors)
    parts: dict[str, Any] = {}
    for name, (kind, state) in states.items():
        if kind == "model":
            files[part_file(name)] = {k: host_copy(v, staging, f"{name}/{k}") for k, v in state.items()}
            parts[name] = {"kind": kind, "file": part_file(name)}
        elif kind == "optimizer":
            files[part_file(name)], layout = _named_optimizer(state, name, staging)
            parts[name] = {"kind": kind, "file": part_file(name), **layout}
        elif kind == "rng":
            parts[name] = {"kind": kind, "world_size": len(state),
                           "ranks": [enc.encode(r, f"{name}/{rank}") for rank, r in enumerate(state)]}
        else:
            parts[name] = {"kind": "json", "state": enc.encode(state, name)}
    files[STATE_TENSORS_FILE] = tensors
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **info, "versions": versions(),
            "config": config, "parts": parts}
    json.dumps(body, allow_nan=True)  # fail here (training thread), not in the writer, if not JSON-able
    return Snapshot(step=step, files=files, state=body, info=info)


# ------------------------------------------------------------------------------------------ loading
@dataclass
class Content:
    """A verified checkpoint, parsed (tensors on CPU); state.json in the current layout."""

    path: Path
    digest: str
    step: int
    state: dict[str, Any]  # state.json (format version 1 already upgraded)
    files: dict[str, dict[str, torch.Tensor]]  # safetensors file name -> tensors

    @property
    def epoch(self) -> Any:
        return self.state.get("epoch")

    @property
    def parts(self) -> dict[str, dict]:
        return self.state["parts"]

    def tensors_of(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of a model part (its safetensors file)."""
        return self.files[self.parts[name]["file"]]

    def part_state(self, name: str, rank: int = 0, world_size: int = 1) -> Any:
        """Part ``name``'s state as its ``load_state_dict`` takes it (RNG: this rank's, see module doc)."""
        where = self.path / STATE_FILE
        entry = self.parts[name]
        kind = entry["kind"]
        if kind == "model":
            return self.tensors_of(name)
        if kind == "optimizer":
            return _optimizer_state(entry, self.files[entry["file"]], self.path / entry["file"], where)
        tensors = self.files[STATE_TENSORS_FILE]
        if kind == "rng":
            ranks = entry["ranks"]
            if len(ranks) == world_size:
                return _decode(ranks[rank], tensors, where)
            return derive_rng_state(_decode(ranks[0], tensors, where), f"{self.digest}/{world_size}/{rank}")
        return _decode(entry["state"], tensors, where)


def _optimizer_state(entry: dict, tensors: dict[str, torch.Tensor], file: Path, where: Path) -> dict:
    """The JSON + tensors of an optimizer part -> OptimizerState's named state dict."""
    groups = []
    for group in entry["param_groups"]:
        groups.append({**_decode(group["hyperparameters"], tensors, where), "params": list(group["params"])})
    known = {p for g in groups for p in g["params"]}
    state: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("param_groups/"):
            continue
        skey, _, param = key.partition("/")
        if param not in known:
            raise CorruptCheckpointError([Problem(file, f"holds optimizer state for '{param}', which no param group lists")])
        state.setdefault(param, {})[skey] = tensor
    for param, scalars in entry.get("scalar_state", {}).items():
        for skey, value in scalars.items():
            state.setdefault(param, {})[skey] = _decode(value, tensors, where)
    return {"param_groups": groups, "state": state}


# ------------------------------------------------------------------------------------------ RNG re-derivation
def _seed(material: str) -> int:
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "little")


def derive_rng_state(template: Any, material: str) -> Any:
    """A fresh RNG state with the structure of ``template``, every generator seeded from ``material``.

    Recognised generators: python ``random`` state (3, (625 ints), gauss), numpy legacy
    ('MT19937', keys, pos, has_gauss, cached) and numpy Generator dicts ({'bit_generator': ...}), torch
    generator byte states (CPU Mersenne Twister; CUDA Philox seed+offset). Anything else is kept as is.
    """
    seed = _seed(material)
    if isinstance(template, tuple) and len(template) == 3 and template[0] == 3 and isinstance(template[1], tuple):
        return random.Random(seed).getstate()
    if isinstance(template, tuple) and template and template[0] == "MT19937":
        return np.random.RandomState(seed % 2**32).get_state()
    if isinstance(template, dict) and "bit_generator" in template and "state" in template:
        bitgen = getattr(np.random, template["bit_generator"], None)
        if bitgen is not None:
            return bitgen(seed).state
        return template
    if isinstance(template, torch.Tensor) and template.dtype == torch.uint8:
        if template.numel() == torch.Generator().get_state().numel():
            return torch.Generator().manual_seed(seed).get_state()
        if template.numel() == 16:  # CUDA Philox state: uint64 seed, int64 offset
            return torch.tensor(list(seed.to_bytes(8, "little")) + [0] * 8, dtype=torch.uint8)
        return template
    if isinstance(template, dict):
        return {k: derive_rng_state(v, f"{material}/{k}") for k, v in template.items()}
    if isinstance(template, list):
        return [derive_rng_state(v, f"{material}/{i}") for i, v in enumerate(template)]
    return template
