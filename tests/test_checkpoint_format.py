"""Checkpoint format: bit-identical round trips, optimizer state by name, validated loads, RNG."""

from __future__ import annotations

import copy
import json
import logging
import random

import numpy as np
import pytest
import torch
import xxhash
from safetensors.torch import load_file

from ckpt_toy import ToyTrainer, assert_same_state, seed_all
from steadyvoice.checkpoint import Checkpointer
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import FORMAT_VERSION, read_manifest, verify_dir
from steadyvoice.checkpoint.state import _decode, _Encoder, derive_rng_state
from steadyvoice.errors import CheckpointError

SYNC = CheckpointConfig(keep_last=3, async_save=False)


def _trained(steps: int, seed: int = 0, **kw) -> ToyTrainer:
    seed_all(seed)
    trainer = ToyTrainer(**kw)
    for _ in range(steps):
        trainer.train_step()
    return trainer


def _frozen(sd: dict) -> dict:
    return copy.deepcopy(sd)


def test_round_trip_is_bit_identical(tmp_path):
    trainer = _trained(5)
    expected = _frozen(trainer.state_dict())
    ckpt = Checkpointer(tmp_path, SYNC)
    trainer.save(ckpt, metrics={"valid_loss": 0.25}, is_best=True, reason="validation")
    ckpt.close()

    seed_all(99)  # a different process state: fresh model, other RNG positions
    fresh = ToyTrainer(seed=7)
    assert Checkpointer(tmp_path, SYNC).restore(fresh.parts) is True
    assert_same_state(fresh.state_dict(), expected)  # model, optimizer (incl. betas tuples), schedule, RNG, counters


def test_resumed_training_continues_exactly(tmp_path):
    straight = _trained(0)
    losses = [straight.train_step() for _ in range(10)]

    first = _trained(0)
    head = [first.train_step() for _ in range(4)]
    ckpt = Checkpointer(tmp_path, SYNC)
    first.save(ckpt, reason="periodic")
    ckpt.close()
    seed_all(1234)
    resumed = ToyTrainer(seed=5)
    assert Checkpointer(tmp_path, SYNC).restore(resumed.parts)
    tail = [resumed.train_step() for _ in range(6)]
    assert head + tail == losses  # exact float equality, StepLR halvings at steps 3, 6, 9 included
    assert_same_state(resumed.state_dict(), straight.state_dict())


def test_layout_optimizer_by_name_and_json_state(tmp_path):
    trainer = _trained(3)
    ckpt = Checkpointer(tmp_path, SYNC)
    trainer.save(ckpt, metrics={"valid_loss": 1.5}, is_best=False, reason="periodic")
    step_dir = tmp_path / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "state.json", "state.safetensors"]

    opt = load_file(step_dir / "optimizer.safetensors")
    names = trainer.param_names()
    assert set(opt) == {f"{k}/{n}" for n in names for k in ("step", "exp_avg", "exp_avg_sq")}
    live = trainer.optimizer.state_dict()["state"]
    for i, name in enumerate(names):
        assert torch.equal(opt[f"exp_avg/{name}"], live[i]["exp_avg"])
        assert opt[f"step/{name}"].dim() == 0 and float(opt[f"step/{name}"]) == 3.0

    state = json.loads((step_dir / "state.json").read_text())
    assert state["format_version"] == FORMAT_VERSION and state["step"] == 3 and state["world_size"] == 1
    assert set(state["parts"]) == {"model", "optimizer", "schedule", "counters", "rng"}
    assert state["parts"]["model"] == {"kind": "model", "file": "model.safetensors"}
    groups = state["parts"]["optimizer"]["param_groups"]
    assert [g["params"] for g in groups] == [["0.weight", "3.weight"], ["0.bias", "1.weight", "1.bias", "3.bias"]]
    for g, weight_decay in zip(groups, (0.01, 0.0)):
        hp = g["hyperparameters"]
        assert hp["lr"] == 0.005 and hp["initial_lr"] == 0.01 and hp["weight_decay"] == weight_decay
        assert {"eps", "betas", "amsgrad", "maximize"} <= set(hp)
    assert state["parts"]["schedule"]["state"]["last_epoch"] == 3
    assert state["parts"]["counters"]["state"] == {"step": 3, "epoch": 0, "consumed": 24, "best": None}
    assert set(state["versions"]) == {"steadyvoice", "torch", "numpy", "safetensors", "python"}
    assert state["metrics"] == {"valid_loss": 1.5} and state["reason"] == "periodic"
    assert len(state["parts"]["rng"]["ranks"]) == 1

    manifest = read_manifest(step_dir)
    assert set(manifest.files) == {"model.safetensors", "optimizer.safetensors", "state.json", "state.safetensors"}
    for name, entry in manifest.files.items():
        data = (step_dir / name).read_bytes()
        assert len(data) == entry.size and entry.algorithm == "xxh3_128"
        assert entry.checksum == xxhash.xxh3_128(data).hexdigest()  # the bytes on disk, hashed independently
    assert verify_dir(step_dir).valid
    for path in step_dir.iterdir():  # no pickle anywhere: safetensors or JSON only
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"


def test_encoder_round_trips_tagged_values():
    tensors: dict = {}
    value = {
        "tuple": (1, (2.5, None), "x"),
        "ints": {3: "three", 4: [1, 2]},
        "array": np.arange(5, dtype=np.uint32),
        "np_scalar": np.float32(1.25),
        "tensor": torch.tensor([1.0, float("nan")]),
        "special": [float("inf"), -0.0],
        "bytes": b"\x00\xff",
        "__dunder": 1,
    }
    encoded = _Encoder(tensors).encode(value, "root")
    decoded = _decode(json.loads(json.dumps(encoded)), tensors, None)
    assert decoded["tuple"] == (1, (2.5, None), "x") and isinstance(decoded["tuple"][1], tuple)
    assert decoded["ints"] == {3: "three", 4: [1, 2]}
    assert decoded["array"].dtype == np.uint32 and decoded["array"].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(decoded["np_scalar"], np.float32) and decoded["np_scalar"] == 1.25
    assert torch.equal(decoded["tensor"].view(torch.int32), value["tensor"].view(torch.int32))
    assert decoded["special"][0] == float("inf") and str(decoded["special"][1]) == "-0.0"
    assert decoded["bytes"] == b"\x00\xff" and decoded["__dunder"] == 1


def test_unsupported_state_value_is_named(tmp_path):
    trainer = _trained(1)
    trainer.parts["schedule"] = type("Odd", (), {"state_dict": lambda self: {"fn": object()}})()
    with pytest.raises(CheckpointError, match="schedule/fn.*object"):
        trainer.save(Checkpointer(tmp_path, SYNC))


# ------------------------------------------------------------------------------- validated loads
def _save_without(tmp_path, keys: tuple[str, ...]) -> None:
    """A checkpoint whose optimizer param_groups lack ``keys`` (ClearerVoice's KeyError: 'lr' case)."""
    trainer = _trained(4)
    part = trainer.parts["optimizer"]
    original = part.state_dict

    def state_dict():
        sd = original()
        for group in sd["param_groups"]:
            for key in keys:
                group.pop(key)
        return sd

    part.state_dict = state_dict
    ckpt = Checkpointer(tmp_path, SYNC)
    trainer.save(ckpt)


def test_missing_lr_and_initial_lr_are_repaired_with_a_warning(tmp_path, caplog):
    _save_without(tmp_path, ("lr", "initial_lr", "eps"))
    fresh = ToyTrainer(lr=0.02)
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        ckpt = Checkpointer(tmp_path, SYNC)
        assert ckpt.restore(fresh.parts)
    text = caplog.text
    assert "'lr'=0.02" in text and "'initial_lr'=0.02" in text and "'eps'=1e-08" in text and "param group 1" in text
    assert ckpt.restored.repaired and all("'lr'" in r for r in ckpt.restored.repaired)
    for group in fresh.optimizer.param_groups:
        assert group["lr"] == 0.02 and group["initial_lr"] == 0.02 and group["eps"] == 1e-8
    fresh.train_step()  # no KeyError: 'lr' in step() or the scheduler
    # A scheduler built with last_epoch != -1 needs initial_lr in every group: fails without, works now.
    bare = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(KeyError, match="initial_lr"):
        torch.optim.lr_scheduler.StepLR(bare, step_size=3, last_epoch=4)
    torch.optim.lr_scheduler.StepLR(fresh.optimizer, step_size=3, gamma=0.5, last_epoch=fresh.step)


def test_group_count_mismatch_is_an_error(tmp_path):
    _trained(2).save(Checkpointer(tmp_path, SYNC))
    with pytest.raises(CheckpointError, match=r"2 parameter group\(s\).*has 1.*optimizer configuration changed"):
        Checkpointer(tmp_path, SYNC).restore(ToyTrainer(groups=1).parts)


def test_extra_and_missing_parameters_are_named(tmp_path):
    _trained(2).save(Checkpointer(tmp_path, SYNC))
    bigger = ToyTrainer(model=torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"weight '4.weight' is missing \(and 1 more\)"):
        Checkpointer(tmp_path, SYNC).restore(bigger.parts)
    smaller = ToyTrainer(model=torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Tanh()))
    with pytest.raises(CheckpointError, match=r"unexpected weight '3\.(weight|bias)' \(and 1 more\)"):
        Checkpointer(tmp_path, SYNC).restore(smaller.parts)


def test_shape_mismatch_is_named(tmp_path):
    _trained(2).save(Checkpointer(tmp_path, SYNC))
    with pytest.raises(CheckpointError, match=r"weight '0.weight' has shape \(8, 4\) but the model expects \(16, 4\)"):
        Checkpointer(tmp_path, SYNC).restore(ToyTrainer(hidden=16).parts)


def test_parameter_moved_between_groups_is_named(tmp_path):
    _trained(2).save(Checkpointer(tmp_path, SYNC))
    moved = ToyTrainer()
    groups = moved.optimizer.param_groups
    groups[0]["params"].append(groups[1]["params"].pop(0))  # '0.bias' now in group 0
    moved._names = moved._names[:2] + [moved._names[2]] + moved._names[3:]
    with pytest.raises(CheckpointError, match=r"group 0 differs: parameter\(s\) not in the checkpoint: '0.bias'"):
        Checkpointer(tmp_path, SYNC).restore(moved.parts)


def test_a_part_changing_lr_while_loading_is_caught(tmp_path):
    _trained(4).save(Checkpointer(tmp_path, SYNC))  # lr halved once by StepLR
    bad = ToyTrainer()

    class Recreated:  # the classic bug: a scheduler built anew after the optimizer was loaded
        def state_dict(self):
            return bad.schedule.state_dict()

        def load_state_dict(self, state):
            bad.schedule = torch.optim.lr_scheduler.StepLR(bad.optimizer, step_size=3, gamma=0.5)
            for group in bad.optimizer.param_groups:
                group["lr"] = group["initial_lr"]

    bad.parts["schedule"] = Recreated()
    with pytest.raises(CheckpointError, match=r"param group 0 of 'optimizer' has lr=0.01 but the checkpoint saved lr=0.005"):
        Checkpointer(tmp_path, SYNC).restore(bad.parts)


# ------------------------------------------------------------------------------- RNG with another world size
def test_rng_is_rederived_deterministically_for_a_new_world_size(tmp_path):
    trainer = _trained(2)
    trainer.save(Checkpointer(tmp_path, SYNC))
    content = load_checkpoint(tmp_path / "checkpoints" / "step-00000002")
    saved = content.part_state("rng")
    a = derive_rng_state(saved, f"{content.digest}/2/0")
    b = derive_rng_state(saved, f"{content.digest}/2/1")
    again = derive_rng_state(saved, f"{content.digest}/2/0")
    assert_same_state(a, again)
    assert a["python"] != b["python"] and not torch.equal(a["torch"], b["torch"])
    assert not np.array_equal(a["numpy"][1], b["numpy"][1])
    random.setstate(a["python"])
    np.random.set_state(a["numpy"])
    torch.set_rng_state(a["torch"])  # every derived state is accepted by its generator


# ------------------------------------------------------------------------------- the package's boundary
def test_the_checkpoint_package_imports_nothing_from_training():
    """steadyvoice.checkpoint knows nothing of training: not at module level, not inside a function."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import steadyvoice.checkpoint as package

    offenders = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "steadyvoice.train" or n.startswith("steadyvoice.train.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, steadyvoice.checkpoint as c\n"
         "[getattr(c, n) for n in c.__all__]\n"
         "import steadyvoice.checkpoint.v1\n"
         "print(sorted(m for m in sys.modules if m.startswith('steadyvoice.train')))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
