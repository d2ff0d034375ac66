"""The device words (auto, cpu, cuda, cuda:N, mps) of enhance, separate, train and the Python API.

This machine has neither CUDA nor MPS: the resolution logic is checked by making torch report GPUs
(monkeypatched torch.cuda / torch.backends.mps queries); nothing is ever put on a faked device. The CLI tests
run the real commands on the CPU.
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as tdist
import yaml

from steadyvoice import Enhancer
from steadyvoice.cli import main
from steadyvoice.devices import DeviceChoice, available_devices, choose_device, is_device_word, resolve_device
from steadyvoice.distributed import init_distributed
from steadyvoice.errors import ConfigError, ModelError
from steadyvoice.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
REAL_ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def machine(monkeypatch):
    """Make torch report ``gpus`` CUDA devices (named GPU-<i>) and MPS or not."""

    def fake(gpus: int = 0, mps: bool = False, current: int = 0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"GPU-{current if i is None else i}")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return fake


# ---- auto ------------------------------------------------------------------------------------------------


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(gpus=2, mps=True, current=1)
    choice = choose_device("auto")
    assert choice.device == torch.device("cuda", 1) and str(choice) == "cuda:1 (auto: GPU-1)"
    machine(gpus=0, mps=True)
    choice = choose_device("auto")
    assert choice.device == torch.device("mps") and str(choice) == "mps (auto: Apple MPS, no CUDA)"
    machine(gpus=0, mps=False)
    choice = choose_device("auto")
    assert choice.device == torch.device("cpu") and str(choice) == "cpu (auto: no CUDA or MPS)"


def test_auto_and_cuda_under_torchrun_take_the_local_rank_gpu(machine):
    machine(gpus=4, mps=False, current=0)
    assert choose_device("auto", local_rank=3).device == torch.device("cuda", 3)
    assert choose_device("cuda", local_rank=2).device == torch.device("cuda", 2)
    assert choose_device("cuda:1", local_rank=2).device == torch.device("cuda", 1)  # named: as named
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 4 has no GPU of its own: this node has 4 CUDA device\(s\); "
                                          r"start at most 4 processes per node"):
        choose_device("auto", local_rank=4, error=ConfigError)


# ---- named devices -----------------------------------------------------------------------------------------


def test_named_devices_that_are_present(machine):
    machine(gpus=2, mps=True)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CUDA:1 ") == torch.device("cuda", 1)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert str(choose_device("cuda")) == "cuda:0" and choose_device("cuda").reason == ""
    assert str(DeviceChoice(torch.device("cpu"))) == "cpu"


def test_named_devices_that_are_missing_say_what_is_there(machine):
    machine(gpus=0, mps=True)
    with pytest.raises(ModelError, match=r"device 'cuda': CUDA is not available .*this machine has cpu, mps: use "
                                         r"one of them, or auto"):
        resolve_device("cuda")
    machine(gpus=2, mps=False)
    with pytest.raises(ModelError, match=r"device 'cuda:2': only 2 CUDA device\(s\) present; this machine has cpu, "
                                         r"cuda:0, cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r"device 'mps': Apple MPS is not available .*this machine has cpu, cuda:0, "
                                          r"cuda:1: use one of them, or auto"):
        resolve_device("mps", error=ConfigError)


@pytest.mark.parametrize("word", ["gpu", "cuda:x", "tpu", "", "cuda:-1"])
def test_unknown_words_are_refused(machine, word):
    machine(gpus=1, mps=True)
    with pytest.raises(ModelError, match=rf"unknown device '{word}'; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(word)
    assert not is_device_word(word)


def test_device_words_spelling():
    assert all(is_device_word(w) for w in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"))
    assert not any(is_device_word(w) for w in ("AUTO ", "mps:0", "cuda:", "meta", 0, None))
    with pytest.raises(ModelError, match="unsupported device 'meta'"):
        resolve_device("meta")


def test_there_is_one_mps_device(machine):
    machine(gpus=0, mps=True)
    assert resolve_device("mps:0") == torch.device("mps")
    with pytest.raises(ModelError, match="device 'mps:1': there is one MPS device; use mps"):
        resolve_device("mps:1")


# ---- Python API --------------------------------------------------------------------------------------------


@pytest.mark.skipif(REAL_ACCELERATOR, reason="checks what auto picks on a machine without CUDA or MPS")
def test_enhancer_takes_auto_and_refuses_an_absent_device(model_dir):
    assert Enhancer.from_pretrained(model_dir, device="auto").device == torch.device("cpu")
    assert Enhancer.from_pretrained(model_dir).device == torch.device("cpu")  # the API default stays cpu
    with pytest.raises(ModelError, match="Apple MPS is not available"):
        Enhancer.from_pretrained(model_dir, device="mps")


# ---- train: config and torchrun ----------------------------------------------------------------------------


def test_train_config_takes_the_same_words():
    from steadyvoice.config import from_dict

    for word in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert from_dict(RunConfig, {"device": word}, "train").device == word
    with pytest.raises(ConfigError, match=r"train.device='gpu': use auto, cpu, cuda, cuda:N or mps"):
        from_dict(RunConfig, {"device": "gpu"}, "train")


@pytest.fixture
def torchrun_env(monkeypatch):
    """A torchrun worker's environment (without its agent) and a process group that counts as joined."""

    def env(world: int, rank: int):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        monkeypatch.setattr(tdist, "is_initialized", lambda: True)
        chosen = []
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    return env


def test_ddp_gives_each_process_its_local_rank_gpu(machine, torchrun_env):
    machine(gpus=2, mps=False)
    chosen = torchrun_env(world=2, rank=1)
    for word in ("auto", "cuda"):
        ctx = init_distributed(word)
        assert (ctx.device, ctx.local_rank, ctx.world_size) == (torch.device("cuda", 1), 1, 2)
    assert chosen == [torch.device("cuda", 1)] * 2
    assert ctx.device_reason == "" and init_distributed("auto").device_reason == "auto: GPU-1"


def test_ddp_refuses_one_named_gpu_or_mps_for_all_processes(machine, torchrun_env):
    machine(gpus=2, mps=True)
    torchrun_env(world=2, rank=1)
    with pytest.raises(ConfigError, match="train.device 'cuda:0' names one GPU for 2 processes; use cuda or auto"):
        init_distributed("cuda:0")
    machine(gpus=0, mps=True)
    with pytest.raises(ConfigError, match="several processes cannot share Apple MPS"):
        init_distributed("mps")
    with pytest.raises(ConfigError, match="device 'cuda': CUDA is not available"):
        init_distributed("cuda")


def test_single_process_train_on_mps_or_a_named_gpu(machine, torchrun_env):
    machine(gpus=2, mps=True)
    torchrun_env(world=1, rank=0)
    assert init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert init_distributed("mps").device == torch.device("mps")


# ---- the commands ------------------------------------------------------------------------------------------


def wav(path: Path) -> Path:
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    return path


@pytest.mark.skipif(REAL_ACCELERATOR, reason="checks what auto picks on a machine without CUDA or MPS")
def test_enhance_says_which_device_it_picked(tmp_path, capsys, model_dir):
    noisy = wav(tmp_path / "a.wav")
    assert main(["enhance", str(noisy), "-o", str(tmp_path / "auto"), "--checkpoint", str(model_dir)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "device: cpu (auto: no CUDA or MPS)"
    assert main(["enhance", str(noisy), "-o", str(tmp_path / "cpu"), "--checkpoint", str(model_dir),
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "device: cpu"
    assert sf.read(tmp_path / "auto" / "a.wav")[0].tolist() == sf.read(tmp_path / "cpu" / "a.wav")[0].tolist()


@pytest.mark.skipif(REAL_ACCELERATOR, reason="checks the error for devices this machine lacks")
@pytest.mark.parametrize("command", ["enhance", "separate"])
def test_an_absent_device_stops_before_any_work(tmp_path, capsys, model_dir, command):
    noisy = wav(tmp_path / "a.wav")
    for device, message in [("mps", "device 'mps': Apple MPS is not available"),
                            ("cuda:1", "device 'cuda:1': CUDA is not available"),
                            ("gpu", "unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps")]:
        code = main([command, str(noisy), "-o", str(tmp_path / "out"), "--checkpoint", str(model_dir),
                     "--device", device])
        lines = capsys.readouterr().err.splitlines()
        assert code == 2 and lines == [f"error: {lines[0][len('error: '):]}"] and message in lines[0], lines
        assert "this machine has cpu" in lines[0] or device == "gpu"
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(REAL_ACCELERATOR, reason="checks the error for devices this machine lacks")
def test_train_refuses_an_absent_device_before_writing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["train", "--config", str(ROOT / "recipes" / "tiny-cpu.yaml"), "--run-dir", str(run_dir),
              "--clean", str(tmp_path), "--noise", str(tmp_path)]
    assert main([*common, "--device", "mps"]) == 2
    assert "error: device 'mps': Apple MPS is not available" in capsys.readouterr().err
    assert main([*common, "--device", "gpu"]) == 2
    assert "train.device='gpu': use auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.skipif(REAL_ACCELERATOR, reason="checks what auto picks on a machine without CUDA or MPS")
def test_train_says_which_device_it_picked(tmp_path, capsys):
    from faultinject import make_data

    clean, noise = make_data(tmp_path / "corpus", n_clean=4, n_noise=2)
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny-cpu.yaml").read_text())
    del recipe["train"]["device"]  # the recipe pins cpu (it is sized for one); the default is auto
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    code = main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"),
                 "--clean", str(clean), "--noise", str(noise), "--max-steps", "1",
                 "--set", "train.num_workers=0", "--set", "data.crop_seconds=0.25", "--set", "data.valid_count=2",
                 "--set", "data.epoch_size=4", "--set", "train.batch_size=2"])
    assert code == 0
    assert "device: cpu (auto: no CUDA or MPS)" in capsys.readouterr().err.splitlines()
