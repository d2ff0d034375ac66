"""Import of a ClearerVoice-Studio training directory (their torch.save format, built here from a tiny model)."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from faultinject import RECIPE, make_data, overrides, train_inprocess
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.legacy import find_checkpoint, import_clearervoice
from steadyvoice.cli import main as cli
from steadyvoice.errors import CheckpointError

REFERENCE_ORDER = Path(__file__).parent / "data" / "reference" / "mossformer2_se_48k.state_dict_shapes.json"


def _official_order(keys: list[str]) -> list[str]:
    """Sort official keys in the order ClearerVoice's network lists them (from the reference key list)."""
    order = {k: i for i, k in enumerate(json.loads(REFERENCE_ORDER.read_text())["state_dict_shapes"])}
    return sorted(keys, key=lambda k: order[k])


def _clearervoice_checkpoint(path: Path, model_cfg, *, seed: int, epoch: int, step: int, drop_lr: bool) -> dict:
    """Write model.ckpt-E-S.pt as their solver does (DDP keys, shared rotary freqs, Adam by parameter index)."""
    from steadyvoice.models import build_model
    from steadyvoice.models.clearervoice import ours_to_official

    torch.manual_seed(seed)
    model = build_model(model_cfg)
    official = ours_to_official(model.state_dict(), model_cfg)
    keys = _official_order(list(official))
    shared = next(official[k] for k in keys if k.endswith("rotary_pos_emb.freqs"))
    sd = {f"module.{k}": (shared if k.endswith("rotary_pos_emb.freqs") else official[k].clone()) for k in keys}
    params, first_freqs = [], True  # model.parameters() order: no buffers, the shared parameter once
    for k in keys:
        if k.endswith("pos_enc.inv_freq") or (k.endswith("rotary_pos_emb.freqs") and not first_freqs):
            continue
        is_freqs = k.endswith("rotary_pos_emb.freqs")
        first_freqs = first_freqs and not is_freqs
        params.append(torch.nn.Parameter(sd[f"module.{k}"].clone(), requires_grad=not is_freqs))
    opt = torch.optim.Adam(params, lr=2.5e-4)
    for _ in range(3):
        for p in params:
            if p.requires_grad:
                p.grad = torch.randn_like(p)
        opt.step()
    osd = opt.state_dict()
    if drop_lr:
        del osd["param_groups"][0]["lr"]  # their issue #5 / PyTorch's KeyError: 'lr'
    torch.save({"model": sd, "optimizer": osd, "epoch": epoch, "step": step}, path)
    return {"model": model.state_dict(), "optimizer": osd, "params": params, "keys": keys}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def _model_cfg():
    from steadyvoice.train.config import load_train_config

    return load_train_config(RECIPE).model.resolve()


def test_import_resumes_with_mapped_state_and_repaired_lr(tmp_path, corpus, caplog):
    src = tmp_path / "clearervoice"
    src.mkdir()
    cfg = _model_cfg()
    _clearervoice_checkpoint(src / "model.ckpt-2-80.pt", cfg, seed=1, epoch=2, step=80, drop_lr=False)
    newest = _clearervoice_checkpoint(src / "model.ckpt-3-120.pt", cfg, seed=2, epoch=3, step=120, drop_lr=True)
    (src / "last_checkpoint").write_text("model.ckpt-3-120.pt\n")
    (src / "last_best_checkpoint").write_text("model.ckpt-2-80.pt\n")
    dest = tmp_path / "run"
    sets = overrides(corpus, max_steps=5)

    with caplog.at_level(logging.WARNING):
        code = cli(["ckpt", "import-clearervoice", str(src), str(dest), "--config", str(RECIPE),
                    *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    assert "lacked hyperparameters; repaired from the config: param group 0: 'lr'=0.001, 'initial_lr'=0.001" in caplog.text

    content = load_checkpoint(dest / "checkpoints" / "step-00000003")  # 3 Adam steps
    for name, tensor in newest["model"].items():
        assert torch.equal(content.tensors_of("model")[name], tensor), name  # mapped back exactly ("module." stripped)
    optimizer = content.part_state("optimizer")
    names = [n for g in optimizer["param_groups"] for n in g["params"]]
    index_of_key = {k: i for i, k in enumerate(k for k in newest["keys"] if not k.endswith("inv_freq"))}
    weight = "blocks.0.fsmn.in_proj.weight"  # a 1x1 conv of theirs: (out, in, 1) -> our Linear (out, in)
    their_key = "mossformer.mdl.intra_mdl.mossformerM.fsmn.0.conv1.0.weight"
    their_moment = newest["optimizer"]["state"][index_of_key[their_key]]["exp_avg"]
    assert their_moment.shape[-1] == 1 and weight in names
    assert torch.equal(optimizer["state"][weight]["exp_avg"], their_moment.squeeze(-1))
    assert float(optimizer["state"][weight]["step"]) == 3.0
    for group in optimizer["param_groups"]:
        assert group["lr"] == 0.001 and group["initial_lr"] == 0.001
    assert content.part_state("data") == {"epoch": 3, "consumed": 0, "num_examples": 8}
    assert content.part_state("progress")["step"] == 3 and content.part_state("progress")["micro_step"] == 120
    assert "model.ckpt-3-120.pt" in content.state["reason"]

    # `steadyvoice train --run-dir DEST` continues from it (same config, same code path as the CLI).
    assert train_inprocess(dest, sets).reason == "max_steps"
    assert load_checkpoint(dest / "checkpoints" / "step-00000005").part_state("data")["epoch"] >= 3


def test_halved_lr_is_kept_and_epoch_finished_moves_on(tmp_path, corpus):
    src = tmp_path / "clearervoice"
    src.mkdir()
    _clearervoice_checkpoint(src / "model.ckpt-4-50.pt", _model_cfg(), seed=3, epoch=4, step=50, drop_lr=False)
    # no pointer files at all: the newest model.ckpt-*.pt is used
    result = import_clearervoice(src, tmp_path / "run", config=RECIPE, overrides=overrides(corpus, 9),
                                 epoch_finished=True)
    assert result.source.name == "model.ckpt-4-50.pt" and result.epoch == 5
    assert result.repaired == ["param group 0: 'initial_lr'=0.001", "param group 1: 'initial_lr'=0.001"]
    content = load_checkpoint(result.checkpoint)
    assert content.part_state("schedule") == {"scale": 0.25}  # 2.5e-4 of the 1e-3 recipe lr
    assert all(g["lr"] == 2.5e-4 for g in content.part_state("optimizer")["param_groups"])


def test_only_last_best_pointer_is_used_not_a_silent_fresh_start(tmp_path):
    src = tmp_path / "clearervoice"
    src.mkdir()
    (src / "model.ckpt-1-10.pt").write_bytes(b"x")
    (src / "model.ckpt-5-99.pt").write_bytes(b"x")
    (src / "last_best_checkpoint").write_text("model.ckpt-1-10.pt")
    assert find_checkpoint(src).name == "model.ckpt-1-10.pt"
    (src / "last_checkpoint").write_text("model.ckpt-9-999.pt")  # names a missing file: ignored (warned)
    assert find_checkpoint(src).name == "model.ckpt-1-10.pt"
    (src / "last_best_checkpoint").unlink()
    assert find_checkpoint(src).name == "model.ckpt-5-99.pt"  # no usable pointer: the newest file
    with pytest.raises(CheckpointError, match="no ClearerVoice checkpoint"):
        find_checkpoint(tmp_path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_or_placeholder_files_are_refused(tmp_path, corpus):
    src = tmp_path / "clearervoice"
    src.mkdir()
    (src / "last_checkpoint").write_text("model.ckpt-1-10.pt")
    (src / "model.ckpt-1-10.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    with pytest.raises(CheckpointError, match="model.ckpt-1-10.pt: this is a Git-LFS pointer"):
        import_clearervoice(src, tmp_path / "run", config=RECIPE, overrides=overrides(corpus, 5))
    marker = tmp_path / "PWNED"
    with open(src / "model.ckpt-1-10.pt", "wb") as fh:
        pickle.dump({"model": _RunsCode(str(marker))}, fh)
    with pytest.raises(CheckpointError, match="model.ckpt-1-10.pt: refused"):
        import_clearervoice(src, tmp_path / "run", config=RECIPE, overrides=overrides(corpus, 5))
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_import_needs_training_data(tmp_path):
    src = tmp_path / "clearervoice"
    src.mkdir()
    _clearervoice_checkpoint(src / "model.ckpt-0-5.pt", _model_cfg(), seed=4, epoch=0, step=5, drop_lr=False)
    with pytest.raises(CheckpointError, match="needs the training data.*--pairs"):
        import_clearervoice(src, tmp_path / "run", config=RECIPE)
