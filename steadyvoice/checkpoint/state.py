"""Trainer state <-> checkpoint files: host snapshot, optimizer state by parameter name, validated restore.

The trainer hands over ``trainer.state_dict()`` (torch-native, see docs/DESIGN.md) and
``trainer.param_names()``. This module

* copies every tensor to host memory (:func:`snapshot`; the only part a training step waits for),
* renames the optimizer's index-keyed state to parameter names (``exp_avg/<name>``), so a checkpoint
  survives a reordering of parameters and a mismatch can be reported by name,
* encodes everything else as JSON, with tensor leaves moved to ``state.safetensors`` and tuples, numpy
  arrays and non-string dict keys tagged so that they come back exactly (python's RNG needs tuples),
* and, on load (:func:`restore_state`), checks the checkpoint against the live trainer: same parameter
  groups, same parameter names, same shapes, every hyperparameter present (missing ``lr``/``initial_lr``
  and defaults repaired from the freshly built optimizer, with a warning naming them), then builds a
  state dict in the live optimizer's own numbering for ``trainer.load_state_dict``.

Per-rank RNG states: saved for every rank. On resume with the same world size each rank gets its own.
With a different world size, every rank's RNG state is re-derived deterministically: each RNG found in
rank 0's saved state (python ``random``, numpy legacy and Generator states, torch CPU and CUDA generator
states) is seeded from SHA-256(manifest digest, new world size, rank, key path), so two resumes of the same
checkpoint with the same world size are identical. The data position (samples of the epoch consumed,
global over ranks) is not RNG and carries over unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from steadyvoice.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    STATE_TENSORS_FILE,
    CorruptCheckpointError,
    Problem,
    pretty_json,
)
from steadyvoice.errors import CheckpointError

# Parts of trainer.state_dict() handled specially; every other part is stored generically in state.json.
MODEL_PART = "model"
OPTIMIZER_PART = "optimizer"
RNG_PART = "rng"
_GROUP_STRUCTURE_KEYS = ("params", "param_names")  # per-group keys that are not hyperparameters


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
            f"cannot store trainer state at '{path}': values of type {type(obj).__name__} are not supported "
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
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]  # "exp_avg/<param name>", "step/<param name>", ...
    tensors: dict[str, torch.Tensor]  # tensor leaves of state.json
    state: dict[str, Any]  # JSON-ready
    info: dict[str, Any]  # copied into manifest.json for listing

    def files(self) -> list[tuple[str, Callable[[], bytes]]]:
        """(file name, producer of its bytes), in write order; manifest.json is added by the store."""
        return [
            (MODEL_FILE, lambda: st_save(self.model, metadata={"format": FORMAT})),
            (OPTIMIZER_FILE, lambda: st_save(self.optimizer, metadata={"format": FORMAT})),
            (STATE_TENSORS_FILE, lambda: st_save(self.tensors, metadata={"format": FORMAT})),
            (STATE_FILE, lambda: pretty_json(self.state)),
        ]


def progress_of(trainer_sd: dict) -> tuple[int, Any]:
    """(step, epoch) from the trainer's ``progress`` part."""
    progress = trainer_sd.get("progress")
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise CheckpointError("trainer.state_dict()['progress'] must be a dict with an integer 'step' (trainer bug)")
    return progress["step"], progress.get("epoch")


def named_optimizer_state(osd: dict, names: list[str], staging: dict[str, torch.Tensor] | None = None
                          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Index-keyed ``optimizer.state_dict()`` -> (tensors keyed "<key>/<param name>", JSON part)."""
    indices = [i for g in osd["param_groups"] for i in g["params"]]
    if sorted(indices) != list(range(len(names))):
        raise CheckpointError(
            f"the optimizer has {len(indices)} parameters but trainer.param_names() lists {len(names)} (trainer bug)"
        )
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for g, group in enumerate(osd["param_groups"]):
        hyper = {k: v for k, v in group.items() if k not in _GROUP_STRUCTURE_KEYS}
        groups.append(
            {
                "params": [names[i] for i in group["params"]],
                "hyperparameters": _Encoder(tensors).encode(hyper, f"param_groups/{g}"),
            }
        )
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in osd["state"].items():
        name = names[idx]
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}/{name}"] = host_copy(value, staging, f"optimizer/{key}/{name}")
            else:
                scalars.setdefault(name, {})[key] = _Encoder(tensors).encode(value, f"scalar/{name}/{key}")
    return tensors, {"param_groups": groups, "scalar_state": scalars, "param_names": list(names)}


def snapshot(
    trainer_sd: dict,
    param_names: list[str],
    rng_of_ranks: list[Any],
    *,
    metrics: dict,
    is_best: bool,
    reason: str,
    config: Any,
    created: str,
    staging: dict[str, torch.Tensor] | None = None,
) -> Snapshot:
    """Copy the trainer's state to host memory and lay it out as checkpoint content.

    ``staging``: host buffers of the previous save to copy into (see :func:`host_copy`).
    """
    step, epoch = progress_of(trainer_sd)
    model = {k: host_copy(v, staging, f"model/{k}") for k, v in trainer_sd[MODEL_PART].items()}
    opt_tensors, opt_json = named_optimizer_state(trainer_sd[OPTIMIZER_PART], list(param_names), staging)
    tensors: dict[str, torch.Tensor] = {}
    enc = _Encoder(tensors)
    parts = {k: enc.encode(v, k) for k, v in trainer_sd.items() if k not in (MODEL_PART, OPTIMIZER_PART, RNG_PART)}
    rng = [enc.encode(r, f"rng/{rank}") for rank, r in enumerate(rng_of_ranks)]
    metrics = {str(k): float(v) if isinstance(v, (int, float, np.generic, torch.Tensor)) else v for k, v in (metrics or {}).items()}
    info = {
        "epoch": epoch,
        "created": created,
        "reason": reason,
        "is_best": bool(is_best),
        "metrics": metrics,
        "world_size": len(rng_of_ranks),
    }
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        **info,
        "versions": versions(),
        "config": config,
        "optimizer": opt_json,
        "trainer": parts,
        "rng": {"world_size": len(rng_of_ranks), "ranks": rng},
    }
    json.dumps(state, allow_nan=True)  # fail here (training thread), not in the writer, if not JSON-able
    return Snapshot(step=step, model=model, optimizer=opt_tensors, tensors=tensors, state=state, info=info)


# ------------------------------------------------------------------------------------------ loading
@dataclass
class Content:
    """A verified checkpoint, decoded (tensors on CPU)."""

    path: Path
    digest: str
    step: int
    state: dict[str, Any]  # state.json as written (encoded parts)
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]

    @property
    def epoch(self) -> Any:
        return self.state.get("epoch")

    def trainer_parts(self) -> dict[str, Any]:
        return _decode(self.state.get("trainer", {}), self.tensors, self.path / STATE_FILE)

    def rng_of_ranks(self) -> list[Any]:
        return [_decode(r, self.tensors, self.path / STATE_FILE) for r in self.state["rng"]["ranks"]]


def parse_tensors(path: Path, raw: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(raw)
    except Exception as exc:  # safetensors raises its own SafetensorError for malformed headers
        raise CorruptCheckpointError([Problem(path, f"is not a valid safetensors file ({exc})")]) from None


@dataclass
class RestoreNotes:
    """What restore_state had to adapt, for the log."""

    repaired: list[str] = field(default_factory=list)  # hyperparameters filled in
    rng: str = "own"  # "own" (same world size) or "derived" (world size changed)


def restore_state(
    content: Content, current_sd: dict, current_names: list[str], rank: int, world_size: int
) -> tuple[dict, RestoreNotes]:
    """The state dict to pass to ``trainer.load_state_dict`` on this rank, after validating everything.

    ``current_sd`` / ``current_names`` come from the freshly built trainer (model, optimizer with its
    configured hyperparameters). Mismatches raise CheckpointError naming the parameter.
    """
    where = content.path
    notes = RestoreNotes()
    check_model_keys(content.model, current_sd[MODEL_PART], str(where / MODEL_FILE))
    optimizer = _checked_optimizer(content, current_sd[OPTIMIZER_PART], list(current_names), current_sd[MODEL_PART], notes)
    sd: dict[str, Any] = {MODEL_PART: content.model, OPTIMIZER_PART: optimizer}
    parts = content.trainer_parts()
    for key in current_sd:
        if key in (MODEL_PART, OPTIMIZER_PART, RNG_PART):
            continue
        if key not in parts:
            raise CheckpointError(f"{where}: the checkpoint has no '{key}' state, which this trainer needs")
        sd[key] = parts[key]
    if RNG_PART in current_sd:
        ranks = content.rng_of_ranks()
        if len(ranks) == world_size:
            sd[RNG_PART] = ranks[rank]
        else:
            notes.rng = "derived"
            sd[RNG_PART] = derive_rng_state(ranks[0], f"{content.digest}/{world_size}/{rank}")
    return sd, notes


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_model_keys(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming every missing / extra / mis-shaped key (strict load)."""
    missing = [k for k in current if k not in saved]
    extra = sorted(k for k in saved if k not in current)
    shapes = [
        f"'{k}' is {list(_shape(saved[k]))} in the checkpoint but {list(_shape(current[k]))} in the model"
        for k in current
        if k in saved and _shape(saved[k]) != _shape(current[k])
    ]
    problems = []
    if missing:
        problems.append("missing parameter(s) " + ", ".join(f"'{k}'" for k in missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if extra:
        problems.append("unexpected parameter(s) " + ", ".join(f"'{k}'" for k in extra[:10]) + (" ..." if len(extra) > 10 else ""))
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: {'; '.join(problems)}. The model configuration differs from the "
            "one the checkpoint was trained with: use the same model config (see the checkpoint's state.json)"
        )


def _checked_optimizer(content: Content, current: dict, names: list[str], model_sd: dict, notes: RestoreNotes) -> dict:
    where = content.path / STATE_FILE
    saved = content.state["optimizer"]
    saved_groups = saved["param_groups"]
    cur_groups = current["param_groups"]
    if len(saved_groups) != len(cur_groups):
        raise CheckpointError(
            f"{where}: the checkpoint's optimizer has {len(saved_groups)} parameter group(s), the optimizer built "
            f"from the config has {len(cur_groups)}: the optimizer configuration changed; resume with the "
            "original config (or use --init-from to start a new run from these weights)"
        )
    index_of = {name: i for i, name in enumerate(names)}
    groups = []
    for g, (sg, cg) in enumerate(zip(saved_groups, cur_groups)):
        cur_names = [names[i] for i in cg["params"]]
        missing = [n for n in cur_names if n not in set(sg["params"])]
        extra = [n for n in sg["params"] if n not in set(cur_names)]
        if missing or extra:
            what = []
            if missing:
                what.append("parameter(s) not in the checkpoint: " + ", ".join(f"'{n}'" for n in missing[:10]))
            if extra:
                what.append("parameter(s) in the checkpoint but not in the optimizer: " + ", ".join(f"'{n}'" for n in extra[:10]))
            raise CheckpointError(f"{where}: optimizer parameter group {g} differs: {'; '.join(what)}")
        hyper = _decode(sg["hyperparameters"], content.optimizer, where)
        hyper = _repaired_hyperparameters(hyper, cg, g, notes)
        groups.append({**hyper, **{k: cg[k] for k in _GROUP_STRUCTURE_KEYS if k in cg}})
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in content.optimizer.items():
        if key.startswith("param_groups/"):
            continue
        skey, _, name = key.partition("/")
        if name not in index_of:
            raise CheckpointError(f"{content.path / OPTIMIZER_FILE}: optimizer state for unknown parameter '{name}'")
        param = model_sd.get(name)
        if param is not None and tensor.dim() > 0 and _shape(tensor) != _shape(param):
            raise CheckpointError(
                f"{content.path / OPTIMIZER_FILE}: optimizer state '{skey}' of parameter '{name}' has shape "
                f"{list(_shape(tensor))}, the parameter has {list(_shape(param))}"
            )
        state.setdefault(index_of[name], {})[skey] = tensor
    for name, scalars in saved.get("scalar_state", {}).items():
        if name not in index_of:
            raise CheckpointError(f"{where}: optimizer state for unknown parameter '{name}'")
        for skey, value in scalars.items():
            state.setdefault(index_of[name], {})[skey] = _decode(value, content.optimizer, where)
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def _repaired_hyperparameters(hyper: dict, current_group: dict, g: int, notes: RestoreNotes) -> dict:
    """Fill in hyperparameters the checkpoint lacks from the freshly built optimizer (with a note)."""
    hyper = dict(hyper)
    required = [k for k in current_group if k not in _GROUP_STRUCTURE_KEYS]
    for key in ("lr", "initial_lr"):
        if key not in required:
            required.append(key)
    repaired = []
    for key in required:
        if key in hyper:
            continue
        if key in current_group:
            hyper[key] = current_group[key]
        elif key == "initial_lr":  # no scheduler has set it yet: the configured starting lr
            hyper[key] = current_group.get("lr", hyper.get("lr"))
        else:
            continue
        repaired.append(f"'{key}'={hyper[key]!r}")
    if repaired:
        notes.repaired.append(f"param group {g}: {', '.join(repaired)}")
    for key, value in current_group.items():  # JSON lists back to tuples (betas) so state_dicts compare equal
        if isinstance(value, tuple) and isinstance(hyper.get(key), list):
            hyper[key] = tuple(hyper[key])
    return hyper


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
