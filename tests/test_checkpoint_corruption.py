"""Corruption suite: every kind of damage is detected, named, and resume falls back to the previous checkpoint."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import re
import shutil

import pytest
import torch

from ckpt_toy import ToyTrainer, assert_same_state, seed_all
from faultinject import reseal
from steadyvoice.checkpoint import Checkpointer, verify_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import canonical_json, pretty_json
from steadyvoice.errors import CheckpointError

CFG = CheckpointConfig(keep_last=3, async_save=False)
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


class RunsCode:
    """Unpickling this would create the marker file (it must never happen)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run with checkpoints at steps 1 and 2, and the trainer state at step 1."""
    run = tmp_path_factory.mktemp("template")
    seed_all(0)
    trainer = ToyTrainer()
    ckpt = Checkpointer(run, CFG)
    trainer.train_step()
    trainer.save(ckpt, is_best=True, reason="periodic")
    state_at_1 = copy.deepcopy(trainer.state_dict())
    trainer.train_step()
    trainer.save(ckpt, reason="periodic")
    ckpt.close()
    return run, state_at_1


def _flip(path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def _rewrite_manifest(step_dir, change) -> None:
    """Edit manifest.json and recompute its digest (a 'consistent' forgery of the manifest itself)."""
    data = json.loads((step_dir / "manifest.json").read_text())
    change(data)
    body = {k: v for k, v in data.items() if k != "digest"}
    data["digest"] = hashlib.sha256(canonical_json(body)).hexdigest()
    (step_dir / "manifest.json").write_bytes(pretty_json(data))


def _edit_lr(step_dir) -> None:
    state = json.loads((step_dir / "state.json").read_text())
    assert state["parts"]["optimizer"]["param_groups"][0]["hyperparameters"]["lr"] == 0.01
    state["parts"]["optimizer"]["param_groups"][0]["hyperparameters"]["lr"] = 0.02  # same length: only the checksum tells
    (step_dir / "state.json").write_bytes(pretty_json(state))


def _flip_manifest_digit(step_dir) -> None:
    text = (step_dir / "manifest.json").read_text()
    i = text.index('"checksum": "') + len('"checksum": "')
    j = next(k for k in range(i, i + 32) if text[k] in "abcdef")
    (step_dir / "manifest.json").write_text(text[:j] + chr(ord(text[j]) ^ 1) + text[j + 1:])


CASES = {
    "bitflip-model": (lambda d: _flip(d / "model.safetensors"), "model.safetensors", "XXH3-128 checksum mismatch"),
    "bitflip-optimizer": (lambda d: _flip(d / "optimizer.safetensors"), "optimizer.safetensors", "XXH3-128 checksum mismatch"),
    "bitflip-rng-tensors": (lambda d: _flip(d / "state.safetensors", 100), "state.safetensors", "XXH3-128 checksum mismatch"),
    "bitflip-state-json": (lambda d: _flip(d / "state.json", 40), "state.json", "XXH3-128 checksum mismatch"),
    "bitflip-manifest": (_flip_manifest_digit, "manifest.json", "does not match its own digest"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
                  "model.safetensors", r"is truncated or was modified: 300 bytes, manifest.json says \d+"),
    "zero-length": (lambda d: (d / "optimizer.safetensors").write_bytes(b""), "optimizer.safetensors", r"is empty \(0 bytes\)"),
    "deleted": (lambda d: (d / "state.safetensors").unlink(), "state.safetensors", r"missing \(listed in manifest.json\)"),
    "missing-manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json", "missing: the save never completed"),
    "edited-state-json": (_edit_lr, "state.json", "XXH3-128 checksum mismatch"),
    "edited-manifest-json": (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace('"reason": "periodic"', '"reason": "edited"')),
                             "manifest.json", "does not match its own digest"),
    "broken-manifest-json": (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:-20]),
                             "manifest.json", r"is not valid JSON \(line \d+, column \d+"),
    "future-format-version": (lambda d: _rewrite_manifest(d, lambda m: m.update(format_version=99)),
                              "manifest.json", "format_version 99 is newer than this SteadyVoice understands"),
    "manifest-drops-a-file": (lambda d: _rewrite_manifest(d, lambda m: m["files"].pop("optimizer.safetensors")),
                              "manifest.json", "does not list optimizer.safetensors"),
    "git-lfs-pointer": (lambda d: (d / "model.safetensors").write_bytes(LFS_POINTER), "model.safetensors",
                        r"is a Git-LFS pointer, not the data: run `git lfs pull`"),
    "pickle-that-runs-code": (lambda d: (d / "optimizer.safetensors").write_bytes(pickle.dumps(RunsCode(str(d.parent.parent / "PWNED")), protocol=4)),
                              "optimizer.safetensors", "is a Python pickle, which SteadyVoice never loads"),
    "torch-save-zip": (lambda d: torch.save({"x": torch.zeros(3)}, d / "model.safetensors"), "model.safetensors",
                       r"is a zip archive \(torch.save / pickle format\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_detected_and_resume_falls_back(case, template, tmp_path, caplog):
    source, state_at_1 = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    newest = run / "checkpoints" / "step-00000002"
    damage, bad_file, message = CASES[case]
    damage(newest)

    reports = verify_checkpoint(run)
    assert [r.valid for r in reports] == [True, False]
    problems = [str(p) for p in reports[1].problems]
    assert len(problems) == 1 and problems[0].startswith(f"{newest / bad_file}: ")
    assert re.search(message, problems[0]), problems[0]

    seed_all(42)
    fresh = ToyTrainer(seed=9)
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        ckpt = Checkpointer(run, CFG)
        assert ckpt.restore(fresh.parts) is True
    assert ckpt.restored.step == 1 and ckpt.restored.skipped == problems
    assert f"checkpoint {newest} is not usable, trying an older one: {newest / bad_file}" in caplog.text
    assert_same_state(fresh.state_dict(), state_at_1)  # exactly the previous checkpoint's state, RNG included
    # The damaged checkpoint is moved out of the way (kept for inspection), so later saves are unambiguous.
    assert (ckpt.restored.set_aside / "step-00000002").is_dir() and not newest.exists()
    assert not (run / "PWNED").exists()  # the pickle never ran


def test_pickle_in_place_of_a_file_never_runs_even_when_inspected(template, tmp_path):
    from steadyvoice.checkpoint.api import inspect_checkpoint, list_checkpoints

    source, _ = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    marker = tmp_path / "PWNED"
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        (run / "checkpoints" / "step-00000002" / name).write_bytes(pickle.dumps(RunsCode(str(marker))))
    verify_checkpoint(run)
    list_checkpoints(run)
    inspect_checkpoint(run / "checkpoints" / "step-00000002")
    with pytest.raises(CheckpointError):
        Checkpointer(run, CFG, resume_from=run / "checkpoints" / "step-00000002").restore(ToyTrainer().parts)
    assert not marker.exists()


def test_every_checkpoint_damaged_is_an_error_never_a_fresh_start(template, tmp_path):
    source, _ = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    _flip(run / "checkpoints" / "step-00000001" / "model.safetensors")
    (run / "checkpoints" / "step-00000002" / "manifest.json").unlink()
    fresh = ToyTrainer(seed=9)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        Checkpointer(run, CFG).restore(fresh.parts)
    text = str(info.value)
    assert "checkpoints exist but none can be used" in text and "Refusing to start from scratch" in text
    assert "step-00000001/model.safetensors: XXH3-128 checksum mismatch" in text
    assert "step-00000002/manifest.json: missing" in text and "--restart" in text
    assert all(torch.equal(before[k], v) for k, v in fresh.model.state_dict().items())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]  # untouched


def test_a_lone_directory_without_manifest_is_not_a_fresh_start(tmp_path):
    (tmp_path / "checkpoints" / "step-00000007").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="step-00000007/manifest.json: missing"):
        Checkpointer(tmp_path, CFG).restore(ToyTrainer().parts)


def test_a_renamed_checkpoint_directory_is_detected(template, tmp_path):
    source, state_at_1 = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    os.rename(run / "checkpoints" / "step-00000001", run / "checkpoints" / "step-00000009")
    reports = verify_checkpoint(run)
    assert [r.valid for r in reports] == [True, False]  # intact files, but not the checkpoint of step 9
    assert verify_checkpoint(run / "checkpoints" / "step-00000009")[0].problems == reports[1].problems
    fresh = ToyTrainer(seed=9)
    ckpt = Checkpointer(run, CFG)
    assert ckpt.restore(fresh.parts) and ckpt.restored.step == 2  # the misnamed one is never taken for step 9
    assert ckpt.restored.skipped == [f"{run / 'checkpoints' / 'step-00000009' / 'manifest.json'}: says step 1 but the "
                                     "directory is named for step 9: the directory was renamed or copied; rename it back "
                                     "to step-00000001"]


# ------------------------------------------------------------------------------- verifying, but does not load
def _edit_state(step_dir, change) -> None:
    state = json.loads((step_dir / "state.json").read_text())
    change(state)
    (step_dir / "state.json").write_bytes(pretty_json(state))
    reseal(step_dir)


# (A schedule that disagrees with the saved learning rate: tests/test_run_state.py, with the real trainer.)
POST_LOAD_CASES = {
    "malformed-part-state": (lambda s: s["parts"]["counters"]["state"].pop("epoch"),
                             r"part 'counters'\): malformed state \(KeyError: 'epoch'\)"),
    "missing-part": (lambda s: s["parts"].pop("counters"), r"has no 'counters' state, which this trainer needs"),
    "foreign-part": (lambda s: s["parts"].update(discriminator=s["parts"]["counters"]),
                     r"holds state this trainer does not have: 'discriminator'"),
}


@pytest.mark.parametrize("case", list(POST_LOAD_CASES))
def test_a_verifying_checkpoint_that_fails_to_load_falls_back(case, template, tmp_path, caplog):
    source, state_at_1 = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    newest = run / "checkpoints" / "step-00000002"
    change, message = POST_LOAD_CASES[case]
    _edit_state(newest, change)
    assert all(r.valid for r in verify_checkpoint(run))  # every checksum fits: only loading can tell

    seed_all(42)
    fresh = ToyTrainer(seed=9)
    with caplog.at_level(logging.WARNING, logger="steadyvoice.checkpoint"):
        ckpt = Checkpointer(run, CFG)
        assert ckpt.restore(fresh.parts) is True
    assert ckpt.restored.step == 1 and len(ckpt.restored.skipped) == 1
    assert re.search(message, ckpt.restored.skipped[0]) and str(newest) in ckpt.restored.skipped[0]
    assert f"checkpoint {newest} is not usable, trying an older one" in caplog.text
    assert_same_state(fresh.state_dict(), state_at_1)  # exactly step 1: the failed load left nothing behind
    assert (ckpt.restored.set_aside / "step-00000002" / "manifest.json").exists()  # moved aside, not deleted


def test_a_verifying_checkpoint_that_fails_to_load_and_no_older_one_is_an_error(template, tmp_path):
    source, _ = template
    run = tmp_path / "run"
    shutil.copytree(source, run)
    for step_dir in sorted((run / "checkpoints").iterdir()):
        _edit_state(step_dir, POST_LOAD_CASES["malformed-part-state"][0])
    with pytest.raises(CheckpointError, match=r"none can be used .*KeyError: 'epoch'.*Refusing to start from scratch"):
        Checkpointer(run, CFG).restore(ToyTrainer(seed=9).parts)
    target = run / "checkpoints" / "step-00000001"
    with pytest.raises(CheckpointError, match=r"--resume-from .*step-00000001: the checkpoint cannot be used: .*KeyError"):
        Checkpointer(run, CFG, resume_from=target).restore(ToyTrainer(seed=9).parts)
