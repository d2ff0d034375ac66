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
        f"INVALID  {target}: XXH3-128 checksum mismatch: the file is damaged (bit flip, partial overwrite) or was replaced",
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


# ------------------------------------------------------------------------------ RUN_DIR/last, RUN_DIR/best
# The fixture's run keeps step 3 (its only improving validation: marked best) and step 4 (the newest).


def _manifest_metric(ckpt_dir, key="valid_loss"):
    return json.loads((ckpt_dir / "manifest.json").read_text())["info"]["metrics"][key]


def test_export_says_which_step_newest_or_best(run, tmp_path, capsys):
    from safetensors.torch import load_file

    from steadyvoice.checkpoint.api import load_checkpoint

    ckpts = run[0] / "checkpoints"
    cases = [([str(run[0])], 4, "step 4, the newest, valid_loss"),
             ([str(run[0] / "last")], 4, "step 4, the newest, valid_loss"),
             ([str(run[0]), "--best"], 3, f"step 3, the best: valid_loss {_manifest_metric(ckpts / 'step-00000003'):.4g})"),
             ([str(run[0] / "best")], 3, "step 3, the best: valid_loss"),
             ([str(ckpts / "best")], 3, "step 3, the best: valid_loss"),
             ([str(ckpts / "step-00000003")], 3, ", best so far)")]
    for i, (args, step, said) in enumerate(cases):
        out = tmp_path / f"model{i}"
        assert cli(["ckpt", "export", args[0], str(out), *args[1:]]) == 0, args
        printed = capsys.readouterr().out
        assert said in printed and f"exported {ckpts / f'step-{step:08d}'} " in printed, (args, printed)
        assert json.loads((out / "config.json").read_text())["source"]["step"] == step
        trained = load_checkpoint(ckpts / f"step-{step:08d}").tensors_of("model")
        assert all(torch.equal(load_file(out / "model.safetensors")[k], v) for k, v in trained.items())
    assert _manifest_metric(ckpts / "step-00000004") != _manifest_metric(ckpts / "step-00000003")


def test_best_and_last_in_verify_inspect_and_init_weights(run, capsys):
    from steadyvoice.checkpoint import load_weights, resolve_checkpoint
    from steadyvoice.checkpoint.api import load_checkpoint
    from steadyvoice.models import build_model
    from steadyvoice.train.config import load_train_config
    from faultinject import RECIPE

    ckpts = run[0] / "checkpoints"
    assert resolve_checkpoint(run[0] / "last") == resolve_checkpoint(run[0]) == ckpts / "step-00000004"
    assert resolve_checkpoint(run[0] / "best") == resolve_checkpoint(ckpts / "best") == ckpts / "step-00000003"
    assert cli(["ckpt", "verify", str(run[0] / "best")]) == 0
    assert capsys.readouterr().out.split() == ["ok", str(ckpts / "step-00000003")]
    assert cli(["ckpt", "inspect", str(run[0] / "best"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 3 and info["is_best"] is True
    model = build_model(load_train_config(RECIPE).model.resolve())
    assert load_weights(model, run[0] / "best") == f"checkpoint {ckpts / 'step-00000003'}"
    best = load_checkpoint(ckpts / "step-00000003").tensors_of("model")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_train_resume_from_run_best(run, tmp_path, capsys):
    from faultinject import RECIPE

    copy = _copy(run, tmp_path)
    sets = [a for s in overrides(run[1], max_steps=4) for a in ("--set", s)]
    code = cli(["train", "--config", str(RECIPE), "--run-dir", str(copy), *sets, "--resume-from", str(copy / "best")])
    assert code == 0
    assert f"resumed from {copy / 'checkpoints' / 'step-00000003'} (step 3" in capsys.readouterr().err
    aside = [p for p in copy.iterdir() if p.name.startswith("checkpoints.set-aside-")]
    assert len(aside) == 1 and [p.name for p in aside[0].iterdir()] == ["step-00000004"]  # moved, not deleted
    assert (copy / "checkpoints" / "step-00000004").is_dir()  # step 4 trained again from the best


def test_missing_or_damaged_best_is_a_clear_error(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    best = copy / "checkpoints" / "step-00000003"
    (best / "model.safetensors").write_bytes(b"damaged")
    assert cli(["ckpt", "export", str(copy), str(tmp_path / "out"), "--best"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {copy / 'best'} is {best}, which does not verify: {best / 'model.safetensors'}")
    assert cli(["ckpt", "verify", str(copy / "best")]) == 1  # reported like any damaged checkpoint
    assert f"INVALID  {best / 'model.safetensors'}" in capsys.readouterr().out
    shutil.rmtree(best)  # left: step 4, never an improving validation
    for args in (["ckpt", "export", str(copy), str(tmp_path / "out"), "--best"], ["ckpt", "inspect", str(copy / "best")]):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {copy / 'best'}: no checkpoint of this run is marked best") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert cli(["ckpt", "export", str(copy / "checkpoints" / "step-00000004"), str(tmp_path / "out"), "--best"]) == 2
    assert "--best picks the best checkpoint of a run directory" in capsys.readouterr().err
    assert cli(["ckpt", "export", str(tmp_path / "nope" / "best"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope' / 'best'}: no such run directory ({tmp_path / 'nope'}), so it has no best checkpoint"


def test_enhance_given_a_run_says_to_export_it(run, tmp_path, capsys):
    wav = str(run[1][0] / "c0.wav")
    for given, said in ((run[0], f"is a training run directory, not a model directory; make one from its best checkpoint "
                                 f"with `steadyvoice ckpt export {run[0]} OUT_DIR --best`"),
                        (run[0] / "best", f"names a training checkpoint, not a model directory; make one with "
                                          f"`steadyvoice ckpt export {run[0] / 'best'} OUT_DIR`")):
        assert cli(["enhance", "--checkpoint", str(given), "-o", str(tmp_path / "out"), wav]) == 2
        assert f"error: {given}: {said}" in capsys.readouterr().err
