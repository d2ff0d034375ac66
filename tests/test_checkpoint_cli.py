"""`steadyvoice ckpt list|verify|inspect|export` on a real (tiny) training run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from faultinject import make_data, overrides, train_inprocess
from steadyvoice.cli import main as cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_data(root / "data")
    run_dir = root / "run"
    # saves at 2 (periodic), 3 (validation, best) and 4 (end, = the end of epoch 0); keep_last=2 + best
    assert train_inprocess(run_dir, overrides(data, max_steps=4)).reason == "max_steps"
    return run_dir, data


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run[0], dest)
    return dest


def test_list(run, capsys):
    assert cli(["ckpt", "list", str(run[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "epoch", "created", "size", "status", "markers"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["3", "4"] and [r[1] for r in rows] == ["0", "1"]
    assert all(r[-2] == "valid" for r in rows[:1]) and rows[0][-1] == "best" and rows[1][-1] == "last"


def test_verify_ok_and_damaged(run, tmp_path, capsys):
    assert cli(["ckpt", "verify", str(run[0])]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 2
    damaged = _copy(run, tmp_path)
    target = damaged / "checkpoints" / "step-00000004" / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 1
    target.write_bytes(bytes(data))
    (damaged / "checkpoints" / "step-00000003" / "state.json").unlink()
    assert cli(["ckpt", "verify", str(damaged)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted([
        f"INVALID  {damaged / 'checkpoints' / 'step-00000003' / 'state.json'}: missing (listed in manifest.json): the file was deleted",
        f"INVALID  {target}: SHA-256 checksum mismatch: the file is damaged (bit flip, partial overwrite) or was replaced",
    ])
    assert cli(["ckpt", "verify", str(damaged / "checkpoints" / "step-00000004")]) == 1
    assert cli(["ckpt", "list", str(damaged)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_inspect_json_and_text(run, capsys):
    assert cli(["ckpt", "inspect", str(run[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 4 and info["epoch"] == 1 and info["valid"] is True and info["world_size"] == 1
    assert len(info["lr"]) == 2 and info["lr"][0] == info["param_groups"][0]["lr"] > 0
    assert info["param_groups"][0]["initial_lr"] == 1e-3
    assert set(info["metrics"]) >= {"train_loss", "valid_loss"} and info["reason"] == "end"
    assert info["versions"]["torch"] == torch.__version__
    assert info["sizes"]["model.safetensors"] > 0 and info["total_size"] == sum(info["sizes"].values())
    assert info["data"]["consumed"] == 0 and info["progress"]["step"] == 4
    assert cli(["ckpt", "inspect", str(run[0] / "checkpoints" / "step-00000003")]) == 0
    text = capsys.readouterr().out
    assert "step         3" in text and "group 0" in text and "group 1" in text and "versions" in text


def test_export_then_enhance(run, tmp_path, capsys):
    from steadyvoice.checkpoint.api import load_checkpoint
    from steadyvoice.models import load_pretrained

    out = tmp_path / "model"
    assert cli(["ckpt", "export", str(run[0]), str(out)]) == 0
    model, cfg = load_pretrained(out)
    trained = load_checkpoint(run[0] / "checkpoints" / "step-00000004").tensors_of("model")
    assert set(model.state_dict()) == set(trained)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    meta = json.loads((out / "config.json").read_text())
    assert meta["source"]["step"] == 4 and cfg.sample_rate == 16000 and cfg.model_dim == 32
    clean_dir = run[1][0]
    assert cli(["enhance", "--checkpoint", str(out), "-o", str(tmp_path / "enhanced"), str(clean_dir / "c0.wav")]) == 0
    assert (tmp_path / "enhanced" / "c0.wav").stat().st_size > 0


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    assert cli(["ckpt", "verify", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such checkpoint or run directory"
    (tmp_path / "empty").mkdir()
    assert cli(["ckpt", "inspect", str(tmp_path / "empty")]) == 2
    assert "neither a checkpoint directory" in capsys.readouterr().err


def test_load_weights_from_checkpoint_run_dir_or_exported_model(run, tmp_path):
    from steadyvoice.checkpoint import load_weights
    from steadyvoice.checkpoint.api import load_checkpoint
    from steadyvoice.errors import CheckpointError
    from steadyvoice.models import build_model, get_config
    from steadyvoice.train.config import load_train_config
    from faultinject import RECIPE

    cfg = load_train_config(RECIPE).model.resolve()
    newest = load_checkpoint(run[0] / "checkpoints" / "step-00000004").tensors_of("model")
    older = load_checkpoint(run[0] / "checkpoints" / "step-00000003").tensors_of("model")
    out = tmp_path / "exported"
    assert cli(["ckpt", "export", str(run[0] / "checkpoints" / "step-00000003"), str(out)]) == 0
    for path, expected, source in ((run[0], newest, "checkpoint"), (run[0] / "checkpoints" / "step-00000003", older, "checkpoint"),
                                   (out, older, "exported model")):
        model = build_model(cfg)
        assert load_weights(model, path).startswith(source)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    wrong = build_model(get_config("mossformer2-se-16k-small"))  # another network size: strict, names the key
    with pytest.raises(CheckpointError, match=r"model.safetensors: weight '[\w.]+' is missing \(and \d+ more\); the weights do not belong"):
        load_weights(wrong, run[0])
