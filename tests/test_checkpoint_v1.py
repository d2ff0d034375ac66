"""Checkpoints of format version 1 (before named parts) still load and resume exactly.

``tests/data/checkpoint_v1/step-00000010`` was written by the release before named parts (see ORIGIN.md
there): step 10 of the fault-injection recipe, after a plateau (LR halved). Today's code must read it into
its parts with each fact once, and a run resumed from it must continue exactly like today's code resuming
its own checkpoint of the same run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faultinject import compare_runs, make_data, overrides, train_inprocess
from steadyvoice.checkpoint import inspect_checkpoint, verify_checkpoint
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.models.mossformer2 import textbook_ops

V1 = Path(__file__).resolve().parent / "data" / "checkpoint_v1" / "step-00000010"
KEEP_ALL = ["checkpoint.save_every=1", "checkpoint.keep_last=100"]
# The continuation's next plateau (step 12) stops the run instead of reloading the best checkpoint (step 3),
# which the fixture does not ship.
FOR_LOOP_ADAM = ["optim.fused=false"]  # the Adam implementation of the code that wrote the fixture
THEN = KEEP_ALL + FOR_LOOP_ADAM + ["schedule.max_halvings=1"]


def test_v1_checkpoint_reads_into_named_parts():
    assert all(r.valid for r in verify_checkpoint(V1))
    content = load_checkpoint(V1)
    assert content.step == 10 and content.epoch == 2
    assert set(content.parts) == {"model", "optimizer", "progress", "data", "schedule", "early_stopping", "scaler", "rng"}
    # Each fact once: the step in progress only, the epoch in the data position only, decays in early stopping.
    assert content.part_state("schedule") == {"scale": 0.5}
    assert content.part_state("data") == {"epoch": 2, "consumed": 4, "num_examples": 8}
    assert content.part_state("progress") == {"step": 10, "micro_step": 10, "samples": 20, "skipped_files": 0,
                                              "nonfinite_steps": 0}
    assert content.part_state("early_stopping")["plateaus"] == 1 and "monitor" not in content.part_state("early_stopping")
    optimizer = content.part_state("optimizer")
    assert [g["lr"] for g in optimizer["param_groups"]] == [5e-4, 5e-4]
    moments = load_file(V1 / "optimizer.safetensors")
    some = next(iter(optimizer["state"]))
    assert torch.equal(optimizer["state"][some]["exp_avg"], moments[f"exp_avg/{some}"])
    info = inspect_checkpoint(V1)
    assert info["lr"] == [5e-4, 5e-4] and info["schedule"] == {"scale": 0.5}


@pytest.mark.slow
def test_resuming_a_v1_checkpoint_continues_exactly(tmp_path):
    data = make_data(tmp_path / "data")
    # Today's code: the same run to step 10, then resumed to 12 from its own (version 2) checkpoint. To step 10
    # with the model's textbook formulations and the for-loop Adam: the arithmetic of the code that wrote the
    # fixture (the fast ones compute the same to float rounding, not to the bit). The Adam implementation is
    # saved with the optimizer's state, so both continuations use the for-loop one.
    ours = tmp_path / "ours"
    with textbook_ops():
        assert train_inprocess(ours, overrides(data, 10, KEEP_ALL + FOR_LOOP_ADAM)).reason == "max_steps"
    ours10 = ours / "checkpoints" / "step-00000010"
    for name in ("model.safetensors", "optimizer.safetensors"):  # the code before and after computes the same
        a, b = load_file(ours10 / name), load_file(V1 / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert train_inprocess(ours, overrides(data, 12, THEN)).trainer.step == 12
    # The version-1 checkpoint, resumed by today's code with the same command.
    theirs = tmp_path / "theirs"
    shutil.copytree(V1, theirs / "checkpoints" / V1.name)
    run = train_inprocess(theirs, overrides(data, 12, THEN))
    assert run.trainer.step == 12 and run.checkpointer.restored.path.name == V1.name
    # Training (weights, optimizer, RNG, data position, every later step) matches to the bit. The one value
    # that may not: the best validation loss, which the v1 run computed before the resume with the code of its
    # time, whose no-grad attention summed in another order (the same loss to float32 rounding).
    best = {name: _early_stopping(run_dir) for name, run_dir in (("ours", ours), ("theirs", theirs))}
    assert best["ours"].pop("best") == pytest.approx(best["theirs"].pop("best"), rel=1e-6)
    assert best["ours"] == best["theirs"]
    _align_best(theirs, ours)
    assert compare_runs(ours, theirs, log_steps_after=10) == []


def _early_stopping(run_dir: Path) -> dict:
    import json

    final = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return json.loads((final / "state.json").read_text())["parts"]["early_stopping"]["state"]


def _align_best(source: Path, target: Path) -> None:
    """Give ``target``'s final state.json and log the best validation loss of ``source`` (compared above)."""
    import json

    value = _early_stopping(source)["best"]
    final = sorted((target / "checkpoints").glob("step-*"))[-1]
    state = json.loads((final / "state.json").read_text())
    state["parts"]["early_stopping"]["state"]["best"] = value
    (final / "state.json").write_text(json.dumps(state))
    log = target / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for record in lines:
        if record.get("event") == "valid" and "best" in record and record["step"] > 10:
            record["best"] = value
    log.write_text("".join(json.dumps(record) + "\n" for record in lines))
