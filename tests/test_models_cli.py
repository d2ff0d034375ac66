"""Models by name: `convert clearervoice SRC --name NAME` installs into $STEADYVOICE_HOME/models, `--model NAME`
finds it, `steadyvoice models` lists shipped and user models, unknown names list the known ones; `--version`.

Every test runs with an empty $STEADYVOICE_HOME of its own (conftest.steadyvoice_home). The installed models
are the committed reduced ClearerVoice reference checkpoints (tests/data/reference), saved as official .pt
files and converted by the real command.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from steadyvoice import __version__, catalog
from steadyvoice.cli import main
from steadyvoice.models import load_pretrained

REF = Path(__file__).parent / "data" / "reference"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_ACCELERATOR = not torch.cuda.is_available() and not torch.backends.mps.is_available()


def official_pt(npz_name: str, path: Path) -> Path:
    """The reference network's weights saved under the official key names, as ClearerVoice's training saves them."""
    npz = np.load(REF / npz_name)
    torch.save({"model": {k[len("param/"):]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("param/")}},
               path)
    return path


@pytest.fixture(scope="module")
def se_pt(tmp_path_factory):
    return official_pt("mossformer2_se_small_parity.npz", tmp_path_factory.mktemp("se") / "last_best_checkpoint.pt")


@pytest.fixture(scope="module")
def ss_pt(tmp_path_factory):
    return official_pt("mossformer2_ss_small_parity.npz", tmp_path_factory.mktemp("ss") / "last_best_checkpoint.pt")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def noisy_wav(path: Path, rate: int = 48000, seconds: float = 0.5) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, 0.1 * rng.standard_normal(int(rate * seconds)).astype(np.float32), rate, subtype="PCM_16")
    return path


# ---- install by name, then use by name ---------------------------------------------------------------------


def test_convert_by_name_then_enhance_by_name(tmp_path, capsys, se_pt, steadyvoice_home):
    code, out, err = run(capsys, "convert", "clearervoice", se_pt, "--name", "mossformer2-se-48k")
    assert code == 0, err
    installed = steadyvoice_home / "models" / "mossformer2-se-48k"
    assert sorted(p.name for p in installed.iterdir()) == ["config.json", "model.safetensors"]
    assert "use it as: --model mossformer2-se-48k" in out

    noisy = noisy_wav(tmp_path / "noisy.wav")
    code, _, err = run(capsys, "enhance", noisy, "-o", tmp_path / "by-name", "--model", "mossformer2-se-48k")
    assert code == 0, err
    code, _, err = run(capsys, "enhance", noisy, "-o", tmp_path / "by-dir", "--checkpoint", installed)
    assert code == 0, err
    by_name, by_dir = sf.read(tmp_path / "by-name" / "noisy.wav"), sf.read(tmp_path / "by-dir" / "noisy.wav")
    assert by_name[1] == 48000 and by_name[0].shape == (24000,)
    assert np.array_equal(by_name[0], by_dir[0])  # the name means exactly that directory
    assert not np.array_equal(by_name[0], sf.read(noisy)[0])  # and the model did something


def test_separation_model_by_name_and_task_mismatches(tmp_path, capsys, se_pt, ss_pt):
    assert run(capsys, "convert", "clearervoice", ss_pt, "--name", "ss-small")[0] == 0
    assert run(capsys, "convert", "clearervoice", se_pt, "--name", "se-small")[0] == 0
    mixture = noisy_wav(tmp_path / "mix.wav", rate=16000)
    code, _, err = run(capsys, "separate", mixture, "-o", tmp_path / "sep", "--model", "ss-small")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == ["mix_s1.wav", "mix_s2.wav"]

    code, _, err = run(capsys, "separate", mixture, "-o", tmp_path / "sep2", "--model", "se-small")
    assert code == 2 and len(errors(err)) == 1
    assert "model 'se-small' (user, " in err and "is an enhancement model, not a separation model" in err
    code, _, err = run(capsys, "enhance", mixture, "-o", tmp_path / "enh", "--model", "ss-small")
    assert code == 2 and "model 'ss-small' (user, " in err and "is a separation model, not an enhancement model" in err
    # an unknown name given to separate lists the separation models only
    code, _, err = run(capsys, "separate", mixture, "-o", tmp_path / "sep3", "--model", "ss-smal")
    assert code == 2 and len(errors(err)) == 1
    assert "ss-smal: no such model directory or model name; known separation models" in err
    assert "ss-small (separation, user)" in err and "se-small" not in err
    assert not (tmp_path / "sep2").exists() or not list((tmp_path / "sep2").iterdir())


def test_unknown_name_lists_the_known_ones(tmp_path, capsys, se_pt):
    noisy = noisy_wav(tmp_path / "noisy.wav", rate=16000)
    code, _, err = run(capsys, "enhance", noisy, "-o", tmp_path / "out", "--model", "mossformer2-se-48")
    assert code == 2 and len(errors(err)) == 1
    assert "mossformer2-se-48: no such model directory or model name; known enhancement models (`steadyvoice " \
           "models`): default (enhancement, shipped), default-v1 (enhancement, shipped);" in err  # the shipped separation model is not listed here
    assert "convert clearervoice SRC --name NAME" in err  # and how to add one
    assert not list((tmp_path / "out").iterdir())

    assert run(capsys, "convert", "clearervoice", se_pt, "--name", "mine")[0] == 0
    code, _, err = run(capsys, "enhance", noisy, "-o", tmp_path / "out", "--model", "mossformer2-se-48")
    assert code == 2 and "default (enhancement, shipped), default-v1 (enhancement, shipped), mine (enhancement, user)" in err
    # a registry config name without weights says how to give it weights under that name
    code, _, err = run(capsys, "enhance", noisy, "-o", tmp_path / "out", "--model", "frcrn-se-16k")
    assert code == 2 and "is a network configuration without trained weights" in err
    assert "steadyvoice convert clearervoice OFFICIAL.pt --name frcrn-se-16k" in err


def test_convert_destination_or_name_is_checked(tmp_path, capsys, se_pt, steadyvoice_home):
    for args, message in [
        ((), "give DEST (a model directory to write) or --name NAME"),
        ((tmp_path / "d", "--name", "x"), "not both and not neither"),
        (("--name", "../escape"), "model name '../escape': use letters, digits"),
        (("--name", "default"), "model name 'default' is taken by a shipped model"),
    ]:
        code, _, err = run(capsys, "convert", "clearervoice", se_pt, *args)
        assert code == 2 and len(errors(err)) == 1 and message in err, (args, err)
    assert not (steadyvoice_home / "models").exists() and not (tmp_path / "d").exists()


# ---- steadyvoice models ------------------------------------------------------------------------------------


def test_models_lists_shipped_and_user_models(capsys, se_pt, ss_pt, steadyvoice_home):
    assert run(capsys, "convert", "clearervoice", se_pt, "--name", "se-small")[0] == 0
    assert run(capsys, "convert", "clearervoice", ss_pt, "--name", "ss-small")[0] == 0
    (steadyvoice_home / "models" / "broken").mkdir()
    (steadyvoice_home / "models" / "broken" / "config.json").write_text("{not json")

    code, out, err = run(capsys, "models", "--json")
    assert code == 0
    listed = {m["name"]: m for m in json.loads(out)["models"]}
    assert json.loads(out)["user_models_dir"] == str(steadyvoice_home / "models")
    assert list(listed) == ["default", "default-v1", "separation-default", "broken", "se-small", "ss-small"]  # shipped first
    for name, task, rate in [("default", "enhancement", 48000), ("default-v1", "enhancement", 16000),
                             ("se-small", "enhancement", 48000),
                             ("ss-small", "separation", 16000)]:
        info = listed[name]
        directory = Path(info["path"])
        model, cfg = load_pretrained(directory)  # the independent count: the loaded state dict
        assert (info["task"], info["sample_rate"], info["problem"]) == (task, rate, None)
        assert info["parameters"] == sum(t.numel() for t in model.state_dict().values())
        assert info["size_bytes"] == sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert listed["default"]["origin"] == "shipped" and listed["se-small"]["origin"] == "user"
    assert listed["se-small"]["path"] == str(steadyvoice_home / "models" / "se-small")
    assert listed["broken"]["task"] is None and "not valid JSON" in listed["broken"]["problem"]

    code, out, err = run(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"your models go in {steadyvoice_home / 'models'} (set STEADYVOICE_HOME to move them)"
    assert lines[1].split() == ["NAME", "TASK", "ARCHITECTURE", "RATE", "PARAMS", "SIZE", "WHERE"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    params = listed["ss-small"]["parameters"]
    assert rows["ss-small"][:5] == ["ss-small", "separation", "mossformer2-ss", "16", "kHz"]
    assert rows["ss-small"][5:7] == [f"{params / 1e6:.2f}", "M"]
    assert rows["ss-small"][-1] == str(steadyvoice_home / "models" / "ss-small")
    assert rows["default"][-1] == str(catalog.SHIPPED_DIR / "default")
    assert rows["broken"][1] == "(unusable)" and "not valid JSON" in err


def test_a_user_model_cannot_replace_a_shipped_one(capsys, se_pt, steadyvoice_home):
    assert run(capsys, "convert", "clearervoice", se_pt, steadyvoice_home / "models" / "default")[0] == 0
    assert catalog.find("default").path == catalog.SHIPPED_DIR / "default"
    code, out, err = run(capsys, "models", "--json")
    hidden = [m for m in json.loads(out)["models"] if m["hidden"]]
    assert [(m["name"], m["origin"]) for m in hidden] == [("default", "user")]
    code, out, err = run(capsys, "models")
    assert "default (hidden)" in out and "hidden by the shipped model of the same name" in err


def test_home_defaults_to_the_per_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("STEADYVOICE_HOME", str(tmp_path / "explicit"))
    assert catalog.user_models_dir() == tmp_path / "explicit" / "models"
    monkeypatch.delenv("STEADYVOICE_HOME")
    if sys.platform.startswith("linux"):  # platformdirs follows the XDG base directory spec there
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert catalog.home() == tmp_path / "xdg" / "steadyvoice"
        monkeypatch.delenv("XDG_DATA_HOME")
        assert catalog.home() == Path.home() / ".local" / "share" / "steadyvoice"


# ---- --version -----------------------------------------------------------------------------------------------


def test_version_prints_steadyvoice_torch_and_the_auto_device():
    proc = subprocess.run([sys.executable, "-m", "steadyvoice", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == f"steadyvoice {__version__}"
    assert lines[1].startswith(f"torch {torch.__version__} (python ")
    assert lines[2].startswith("device: ") and len(lines) == 3
    if NO_ACCELERATOR:
        assert lines[2] == "device: cpu (auto: no CUDA or MPS)"


def test_damaged_weights_are_listed_as_unusable(capsys, se_pt, steadyvoice_home):
    assert run(capsys, "convert", "clearervoice", se_pt, "--name", "cut")[0] == 0
    weights = steadyvoice_home / "models" / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the header survives, the tensors do not
    code, out, err = run(capsys, "models", "--json")
    (info,) = [m for m in json.loads(out)["models"] if m["name"] == "cut"]
    assert code == 0 and info["parameters"] is None and "unreadable or damaged weights file" in info["problem"]


def test_path_or_name_takes_paths_as_they_are_and_looks_up_bare_names(tmp_path, monkeypatch):
    from steadyvoice.errors import ModelError

    monkeypatch.chdir(tmp_path)
    assert catalog.path_or_name("default-v1") == catalog.SHIPPED_DIR / "default-v1"
    (tmp_path / "default-v1").mkdir()  # a directory of that name here wins over the model's name
    assert catalog.path_or_name("default-v1") == Path("default-v1")
    assert catalog.path_or_name("runs/x/best") == Path("runs/x/best")  # a path, existing or not
    with pytest.raises(ModelError, match="no-such-model: no such model directory or model name"):
        catalog.path_or_name("no-such-model", how_to="pass a directory")
