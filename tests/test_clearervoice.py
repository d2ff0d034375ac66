"""Official checkpoint import (`steadyvoice convert clearervoice`), key mapping, and the model directory format."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from steadyvoice.cli import main
from steadyvoice.errors import CheckpointError, ModelError
from steadyvoice.models import build_model, get_config, load_model, load_pretrained, save_pretrained
from steadyvoice.models.clearervoice import (config_from_constructor_args, infer_config, official_to_ours,
                                             ours_to_official, read_official_checkpoint, strip_wrapper_prefixes)
from steadyvoice.models.mossformer2 import rotary_freqs, sinusoidal_inv_freq

REF = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="module")
def parity():
    npz = np.load(REF / "mossformer2_se_small_parity.npz")
    official = {k[len("param/"):]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("param/")}
    return official, torch.from_numpy(npz["input/features"]), torch.from_numpy(npz["output/mask"])


@pytest.fixture(scope="module")
def official_48k_shapes():
    return json.loads((REF / "mossformer2_se_48k.state_dict_shapes.json").read_text())["state_dict_shapes"]


def fake_official_48k(shapes: dict) -> dict[str, torch.Tensor]:
    """The 929 official keys with cheap tensors (real values only for the fixed frequency tables)."""
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("rotary_pos_emb.freqs"):
            sd[key] = rotary_freqs(2 * shape[0])
        elif key.endswith("pos_enc.inv_freq"):
            sd[key] = sinusoidal_inv_freq(2 * shape[0])
        else:  # a distinct value per key, broadcast without allocating the full tensor
            sd[key] = torch.full((1,) * len(shape), float(len(sd))).expand(*shape)
    return sd


def convert(capsys, src: Path, dest: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["convert", "clearervoice", str(src), str(dest), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def mask_of(model, features):
    with torch.no_grad():
        return model(features)


# ---- convert CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["bare", "model_dict", "ddp_prefixed"])
def test_convert_round_trip_reproduces_the_official_mask(tmp_path, capsys, parity, layout):
    official, features, mask = parity
    src = tmp_path / "last_best_checkpoint.pt"
    if layout == "bare":
        torch.save(official, src)
    elif layout == "model_dict":
        torch.save({"model": official, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "step": 99}, src)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 3}, src)
    dest = tmp_path / "model"
    code, out, err = convert(capsys, src, dest)
    assert code == 0, err
    assert "mossformer2-se-48k-small" in out and "807,474 parameters" in out
    model, cfg = load_pretrained(dest)
    assert cfg == get_config("mossformer2-se-48k-small")
    assert (mask_of(model, features) - mask).abs().max().item() <= 1e-4
    meta = json.loads((dest / "config.json").read_text())
    assert (meta["format"], meta["format_version"], meta["architecture"]) == ("steadyvoice-model", 1, "mossformer2-se")
    assert meta["source"] == {"converted_from": "ClearerVoice-Studio", "file": src.name,
                              "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}


def test_convert_destination_rules(tmp_path, capsys, parity):
    src = tmp_path / "ckpt.pt"
    torch.save(parity[0], src)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    code, _, err = convert(capsys, src, busy)
    assert code == 2 and "not a SteadyVoice model" in err and "--overwrite" in err
    assert not (busy / "model.safetensors").exists()
    code, _, _ = convert(capsys, src, busy, "--overwrite")
    assert code == 0 and (busy / "notes.txt").read_text() == "keep me"
    code, _, err = convert(capsys, src, busy)  # now a model directory: converting again replaces it
    assert code == 0, err
    assert load_model(busy)[1].model_dim == 64


def _refused(tmp_path, capsys, src: Path) -> str:
    code, out, err = convert(capsys, src, tmp_path / "never")
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "never").exists()
    return err


def test_git_lfs_pointer_is_refused(tmp_path, capsys):
    src = tmp_path / "last_best_checkpoint.pt"
    src.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2149\nsize 221123456\n")
    assert "Git-LFS pointer, not the weights: run `git lfs pull`" in _refused(tmp_path, capsys, src)


def test_truncated_checkpoint_is_refused(tmp_path, capsys, parity):
    full = tmp_path / "full.pt"
    torch.save(parity[0], full)
    src = tmp_path / "cut.pt"
    src.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated or corrupt" in _refused(tmp_path, capsys, src)


class RunsCode:
    """Unpickling this would call exec(); a safe loader must refuse before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, capsys, parity):
    marker = tmp_path / "code_ran"
    src = tmp_path / "evil.pt"
    torch.save({"model": {**parity[0], "mossformer.norm.weight": RunsCode(marker)}}, src)
    err = _refused(tmp_path, capsys, src)
    assert "would call 'exec'" in err and "run code" in err
    assert not marker.exists()


def test_missing_and_empty_sources(tmp_path, capsys):
    assert "no such file" in _refused(tmp_path, capsys, tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in _refused(tmp_path, capsys, tmp_path / "empty.pt")


def test_not_a_state_dict(tmp_path):
    src = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], src)
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        read_official_checkpoint(src)


# ---- key mapping and config inference -------------------------------------------------------------------


def test_key_mapping_is_a_bijection_over_the_official_keys(official_48k_shapes):
    theirs = fake_official_48k(official_48k_shapes)
    ours = official_to_ours(theirs)
    assert len(ours) == 929 - 24 - 1  # fixed tables (rotary per layer, inv_freq) are computed, not stored
    with torch.device("meta"):
        model = build_model(get_config("mossformer2-se-48k"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in model.state_dict().items()}
    back = ours_to_official(ours)
    assert set(back) == set(theirs)
    for key, value in theirs.items():  # each key carries its own value: the first element identifies it
        assert back[key].shape == value.shape and back[key][(0,) * value.dim()] == value[(0,) * value.dim()], key
        if value.dim() == 1 and value.numel() < 300:
            assert torch.equal(back[key], value), key
    again = official_to_ours(back)
    assert again.keys() == ours.keys()
    assert all(again[k].shape == v.shape and again[k][(0,) * v.dim()] == v[(0,) * v.dim()] for k, v in ours.items())


def test_config_is_inferred_from_shapes(official_48k_shapes, parity):
    assert infer_config(fake_official_48k(official_48k_shapes)) == get_config("mossformer2-se-48k")
    assert infer_config(parity[0]) == get_config("mossformer2-se-48k-small")
    cfg16 = infer_config(parity[0], sample_rate=16000, hop_length=480, fmin=40.0)
    assert (cfg16.sample_rate, cfg16.win_length, cfg16.hop_length, cfg16.fmin) == (16000, 1920, 480, 40.0)
    with pytest.raises(CheckpointError, match="model_dim cannot be given"):
        infer_config(parity[0], model_dim=32)


def test_constructor_args():
    args = {"in_channels": 180, "out_channels": 64, "out_channels_final": 961, "num_blocks": 2}
    assert config_from_constructor_args(args) == get_config("mossformer2-se-48k-small")
    with pytest.raises(CheckpointError, match="unknown MossFormer_MaskNet argument.*dropout"):
        config_from_constructor_args({**args, "dropout": 0.2})
    with pytest.raises(CheckpointError, match="out_channels_final missing"):
        config_from_constructor_args({"in_channels": 180, "out_channels": 64})


def test_wrapper_prefixes_are_stripped_once_everywhere():
    t = torch.zeros(1)
    assert list(strip_wrapper_prefixes({"module._orig_mod.a.b": t, "c": t})) == ["a.b", "c"]
    with pytest.raises(CheckpointError, match="'a' twice"):
        strip_wrapper_prefixes({"module.a": t, "a": t})


def test_wrong_fixed_table_or_unknown_key_is_refused(parity):
    official = dict(parity[0])
    key = "mossformer.mdl.intra_mdl.mossformerM.layers.1.rotary_pos_emb.freqs"
    with pytest.raises(CheckpointError, match=f"'{key}' differs from the standard frequency table"):
        official_to_ours({**official, key: official[key] * 1.01})
    with pytest.raises(CheckpointError, match="unexpected key 'mossformer.extra.weight'"):
        official_to_ours({**official, "mossformer.extra.weight": torch.zeros(1)})


def test_mis_shaped_official_weight_names_both_keys_and_shapes(tmp_path, capsys, parity):
    official = dict(parity[0])
    key = "mossformer.mdl.intra_mdl.mossformerM.fsmn.1.norm2.weight"
    official[key] = torch.zeros(255)
    src = tmp_path / "bad.pt"
    torch.save(official, src)
    err = _refused(tmp_path, capsys, src)
    assert f"'{key}' (ours 'blocks.1.fsmn.norm2.weight') has shape (255,) but the model expects (256,)" in err


# ---- model directory format -------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = get_config("mossformer2-se-16k-small")
    model = build_model(cfg).eval()
    save_pretrained(model, cfg, tmp_path / "m", source={"kind": "test"})
    return model, cfg, tmp_path / "m"


def test_save_load_round_trip_gives_identical_outputs(saved):
    model, cfg, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded, loaded_cfg = load_pretrained(directory)
    assert loaded_cfg == cfg and not loaded.training
    x = torch.randn(2, 37, cfg.in_channels)
    assert torch.equal(mask_of(model, x), mask_of(loaded, x))
    assert load_pretrained(directory / "config.json")[1] == cfg  # a file inside the directory works too


def _rewrite_weights(directory: Path, change) -> None:
    sd = load_file(str(directory / "model.safetensors"))
    change(sd)
    save_file(sd, str(directory / "model.safetensors"))


def test_strict_loading_names_the_key(saved):
    _, _, directory = saved
    key = "blocks.0.attention.qk_proj.linear.weight"
    _rewrite_weights(directory, lambda sd: sd.pop(key))
    with pytest.raises(ModelError, match=f"weight '{key}' is missing"):
        load_pretrained(directory)
    _rewrite_weights(directory, lambda sd: sd.update({key: torch.zeros(128, 64), "extra.bias": torch.zeros(3)}))
    with pytest.raises(ModelError, match="unexpected weight 'extra.bias'"):
        load_pretrained(directory)
    _rewrite_weights(directory, lambda sd: (sd.pop("extra.bias"), sd.update({key: torch.zeros(64, 64)})))
    with pytest.raises(ModelError, match=rf"weight '{key}' has shape \(64, 64\) but the model expects \(128, 64\)"):
        load_pretrained(directory)


def test_damaged_model_directories_are_clear_errors(saved, tmp_path):
    _, _, directory = saved
    with pytest.raises(ModelError, match="no such model directory"):
        load_pretrained(tmp_path / "nowhere")
    config = directory / "config.json"
    good = config.read_text()
    meta = json.loads(good)
    config.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(ModelError, match="unsupported format_version 2"):
        load_pretrained(directory)
    config.write_text(json.dumps({**meta, "config": {**meta["config"], "model_dims": 3}}))
    with pytest.raises(ModelError, match="unknown config key 'config.model_dims'"):
        load_pretrained(directory)
    config.write_text(good[:-20])
    with pytest.raises(ModelError, match="not valid JSON"):
        load_pretrained(directory)
    config.write_text(good)
    (directory / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match="damaged weights file"):
        load_pretrained(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        load_pretrained(directory)
    config.unlink()
    with pytest.raises(ModelError, match="no config.json"):
        load_pretrained(directory)
