"""The stateful parts a trainer hands to the checkpoint layer, and the three kinds it stores specially.

A trainer registers its run state as a mapping of named parts (torchtitan's contract)::

    parts = {"model": ModelState(model), "optimizer": OptimizerState(optimizer, names),
             "schedule": schedule, "early_stopping": early, "data": position, "progress": progress,
             "rng": RNGState(device), "scaler": scaler}

Each part has ``state_dict()`` and ``load_state_dict(state)``. Parts are loaded in the mapping's order,
so a part that derives something from another (the LR schedule writes the optimizer's learning rates)
comes after it. A GAN adds a second model and a second optimizer under other names; nothing here
changes.

Three kinds are stored specially (:mod:`steadyvoice.checkpoint.state` lays them out):

* :class:`ModelState`: tensors, in ``<name>.safetensors``; loaded strictly (every key and shape).
* :class:`OptimizerState`: per-parameter state keyed by parameter NAME (so a reordered or changed
  parameter set is reported by name), in ``<name>.safetensors``; hyperparameters in state.json. The
  repair of a missing ``lr`` / ``initial_lr`` (ClearerVoice's ``KeyError: 'lr'``) lives here and
  nowhere else.
* :class:`RNGState`: this process's random generators, saved for every rank.

Every other part is JSON (with tensors and numpy arrays allowed as leaves).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from steadyvoice.errors import CheckpointError

log = logging.getLogger("steadyvoice.checkpoint")

_GROUP_STRUCTURE_KEYS = ("params", "param_names")  # per-group keys that are not hyperparameters
_REQUIRED_HYPERPARAMETERS = ("lr", "initial_lr")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


Parts = Mapping[str, Stateful]


class ModelState:
    """A module's parameters and buffers; loading checks every key and shape (nothing dropped silently)."""

    def __init__(self, module: torch.nn.Module):
        from steadyvoice.distributed import unwrap_model

        self.module = unwrap_model(module)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str = "the checkpoint") -> None:
        from steadyvoice.models import load_state_dict_strict

        load_state_dict_strict(self.module, state, where=where, error=CheckpointError)


class OptimizerState:
    """An optimizer's state keyed by parameter name instead of torch's position index.

    ``state_dict()`` -> ``{"param_groups": [{"params": [names], **hyperparameters}], "state": {name: {key:
    value}}}``; ``load_state_dict`` checks the groups and names against the live optimizer, fills in
    missing hyperparameters from it (the one place ``lr`` / ``initial_lr`` are repaired; each repair is
    logged and kept in :attr:`repaired`) and loads it in the live numbering.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param_names: list[str]):
        count = sum(len(g["params"]) for g in optimizer.param_groups)
        if count != len(param_names):
            raise CheckpointError(f"the optimizer has {count} parameters but {len(param_names)} names were given (trainer bug)")
        self.optimizer = optimizer
        self.names = list(param_names)  # in optimizer order (groups concatenated)
        self.repaired: list[str] = []  # what the last load had to fill in

    def state_dict(self) -> dict:
        osd = self.optimizer.state_dict()
        groups = [{**{k: v for k, v in g.items() if k not in _GROUP_STRUCTURE_KEYS},
                   "params": [self.names[i] for i in g["params"]]} for g in osd["param_groups"]]
        return {"param_groups": groups, "state": {self.names[i]: s for i, s in osd["state"].items()}}

    def load_state_dict(self, state: dict, where: str = "the checkpoint") -> None:
        self.optimizer.load_state_dict(self._indexed(state, where, keep_hyperparameters=False))

    def load_moments(self, state: dict, where: str = "the checkpoint") -> None:
        """Per-parameter state only (Adam moments); the live hyperparameters (lr) stay."""
        self.optimizer.load_state_dict(self._indexed(state, where, keep_hyperparameters=True))

    def _indexed(self, state: dict, where: str, keep_hyperparameters: bool) -> dict:
        live = self.optimizer.state_dict()
        saved_groups, live_groups = state["param_groups"], live["param_groups"]
        if len(saved_groups) != len(live_groups):
            raise CheckpointError(
                f"{where}: the checkpoint's optimizer has {len(saved_groups)} parameter group(s), the optimizer built "
                f"from the config has {len(live_groups)}: the optimizer configuration changed; resume with the "
                "original config (or use --init-from to start a new run from these weights)")
        index_of = {name: i for i, name in enumerate(self.names)}
        params = {name: p for name, p in zip(self.names, (p for g in self.optimizer.param_groups for p in g["params"]))}
        self.repaired = []
        groups = []
        for g, (sg, lg) in enumerate(zip(saved_groups, live_groups)):
            live_names = [self.names[i] for i in lg["params"]]
            missing = [n for n in live_names if n not in set(sg["params"])]
            extra = [n for n in sg["params"] if n not in set(live_names)]
            if missing or extra:
                what = []
                if missing:
                    what.append("parameter(s) not in the checkpoint: " + ", ".join(f"'{n}'" for n in missing[:10]))
                if extra:
                    what.append("parameter(s) in the checkpoint but not in the optimizer: " + ", ".join(f"'{n}'" for n in extra[:10]))
                raise CheckpointError(f"{where}: optimizer parameter group {g} differs: {'; '.join(what)}")
            hyper = {k: v for k, v in lg.items() if k not in _GROUP_STRUCTURE_KEYS}
            if not keep_hyperparameters:
                hyper = self._repaired({k: v for k, v in sg.items() if k not in _GROUP_STRUCTURE_KEYS}, lg, g, where)
            groups.append({**hyper, "params": lg["params"]})
        per_param: dict[int, dict[str, Any]] = {}
        for name, values in state["state"].items():
            if name not in index_of:
                raise CheckpointError(f"{where}: optimizer state for unknown parameter '{name}'")
            shape = tuple(params[name].shape)
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                    raise CheckpointError(f"{where}: optimizer state '{key}' of parameter '{name}' has shape "
                                          f"{list(value.shape)}, the parameter has {list(shape)}")
            per_param[index_of[name]] = dict(values)
        return {"state": dict(sorted(per_param.items())), "param_groups": groups}

    def _repaired(self, hyper: dict, live_group: dict, g: int, where: str) -> dict:
        """Fill in hyperparameters the checkpoint lacks from the freshly built optimizer (logged)."""
        hyper = dict(hyper)
        filled = []
        for key in [*(k for k in live_group if k not in _GROUP_STRUCTURE_KEYS), *_REQUIRED_HYPERPARAMETERS]:
            if key in hyper:
                continue
            if key == "lr" and "initial_lr" in live_group:  # the configured lr (a schedule then sets the current one)
                hyper[key] = live_group["initial_lr"]
            elif key in live_group:
                hyper[key] = live_group[key]
            elif key == "initial_lr":  # no schedule has set it yet: the configured starting lr
                hyper[key] = live_group.get("lr", hyper.get("lr"))
            else:
                continue
            filled.append(f"'{key}'={hyper[key]!r}")
        if filled:
            note = f"param group {g}: {', '.join(filled)}"
            self.repaired.append(note)
            log.warning("%s: the optimizer state lacked hyperparameters; repaired from the config: %s", where, note)
        for key, value in live_group.items():  # JSON lists back to tuples (betas) so state dicts compare equal
            if isinstance(value, tuple) and isinstance(hyper.get(key), list):
                hyper[key] = tuple(hyper[key])
        return hyper


class RNGState:
    """This process's global random generators: python, numpy (legacy), torch CPU and, on a GPU, CUDA."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda" and torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]  # JSON gives lists; random.setstate wants tuples
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
        np.random.set_state(_numpy_state(state["numpy"]))
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8), self.device)


def _numpy_state(state):
    if isinstance(state, dict):  # {"bit_generator": ...} forms are passed through
        return state
    name, keys, pos, has_gauss, cached = state
    return (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))


def kind_of(part: Stateful) -> str:
    """"model", "optimizer", "rng" or "json": how the checkpoint stores a part."""
    if isinstance(part, ModelState):
        return "model"
    if isinstance(part, OptimizerState):
        return "optimizer"
    if isinstance(part, RNGState):
        return "rng"
    return "json"
