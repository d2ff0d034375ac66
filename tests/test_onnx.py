"""ONNX export and the onnxruntime backend (steadyvoice.onnx_export, steadyvoice export onnx, enhance --backend onnx).

Every enhancement architecture's small test network is exported and run by onnxruntime against PyTorch at
lengths other than the traced one; the backend's graph cache follows its rule; a separation model, a missing
extra and a graph outside the tolerance are clear errors that leave nothing behind.
"""

import json

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from steadyvoice import onnx_export
from steadyvoice.cli import main
from steadyvoice.errors import ConfigError, ModelError, SteadyVoiceError
from steadyvoice.inference import Enhancer
from steadyvoice.models import (FRCRNConfig, FullBandConfig, MossFormer2SSConfig, MossFormerGANConfig, build_model,
                                save_pretrained)
from steadyvoice.pipelines import one_pass

from conftest import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The smallest networks of each enhancement architecture (export time grows with the number of layers).
TINY_FRCRN = FRCRNConfig(channels=8, se_reduction=4)
TINY_GAN = MossFormerGANConfig(channels=8, query_key_dim=16, rotary_dim=8, num_blocks=1, dense_depth=2)
TINY_SS = MossFormer2SSConfig(encoder_dim=32, model_dim=32, num_blocks=1, query_key_dim=16, rotary_dim=8,
                              fsmn_inner_dim=32, group_size=64)
TINY_FULLBAND = FullBandConfig(core=TINY, hidden=8, upper_bands=6, low_bands=4)
ARCHITECTURES = {"mossformer2-se": TINY, "frcrn-se": TINY_FRCRN, "mossformergan-se": TINY_GAN,
                 "fullband-se": TINY_FULLBAND}


def tone(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    return torch.from_numpy(wave.astype(np.float32))[None]  # (1, n)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, tmp_path_factory):
    """(cfg, model, path of its checked graph, the export's checks) for each enhancement architecture."""
    cfg = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    checks = onnx_export.export_model(model, cfg, path)
    return cfg, model, path, checks


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_export_checks_two_lengths_within_tolerance(exported):
    cfg, model, path, checks = exported
    assert len({c.samples for c in checks}) == 2
    for check in checks:
        assert check.peak > 0
        assert check.max_abs_error <= onnx_export.RELATIVE_TOLERANCE * check.peak
    graph = onnx.load(str(path))
    samples_axis = graph.graph.input[0].type.tensor_type.shape.dim[1]
    assert samples_axis.dim_param and not samples_axis.dim_value  # a named, dynamic length
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["steadyvoice.config"])["sample_rate"] == cfg.sample_rate


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
@pytest.mark.parametrize("samples", [300, 4001, 27_845])  # shorter than a frame, 0.25 s, 1.7 s (none traced)
def test_onnxruntime_pass_equals_torch(exported, samples):
    cfg, model, path, _ = exported
    wave = tone(samples, seed=samples)
    with torch.no_grad():
        want = one_pass(cfg)(model, wave, cfg)
    got = onnx_export.OnnxPass(path, cfg)(model, wave, cfg)
    assert got.shape == want.shape == wave.shape
    assert float((got - want).abs().max()) <= onnx_export.RELATIVE_TOLERANCE * float(want.abs().max())


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_graph_outside_tolerance_writes_nothing(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    monkeypatch.setattr(onnx_export, "RELATIVE_TOLERANCE", 0.0)  # no graph can be this exact
    with pytest.raises(ModelError, match="differs from PyTorch by .* nothing was written"):
        onnx_export.export_model(model, TINY, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []  # no graph, no temporary file


def test_separation_model_is_refused(tmp_path, capsys):
    model_dir = save_pretrained(build_model(TINY_SS), TINY_SS, tmp_path / "separation")
    out = tmp_path / "out.onnx"
    assert main(["export", "onnx", str(model_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert "mossformer2-ss is a separation model" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_extra_names_it(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "missing_modules", lambda names: ["onnxscript"])
    with pytest.raises(SteadyVoiceError, match=r"onnxscript.*pip install 'steadyvoice\[onnx\]'"):
        onnx_export.export_onnx(model_dir, tmp_path / "model.onnx")
    with pytest.raises(SteadyVoiceError, match=r"pip install 'steadyvoice\[onnx\]'"):
        Enhancer.from_pretrained(model_dir, backend="onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_backend_choice_is_checked():
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        onnx_export.check_backend("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        onnx_export.check_backend("onnx", torch.device("cuda"))
    onnx_export.check_backend("onnx", "cpu")


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_export_command_prints_errors(model_dir, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", str(model_dir), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    errors = [float(line.split("max abs error ")[1].split()[0]) for line in lines if "max abs error" in line]
    assert len(errors) == 2 and all(e >= 0 for e in errors)
    assert out.is_file() and f"wrote {out}" in lines[-1]


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_enhance_backend_onnx_equals_torch(model_dir, tmp_path, capsys):
    src = tmp_path / "in" / "noisy.wav"
    src.parent.mkdir()
    sf.write(src, tone(24_000, seed=1)[0].numpy(), 16000, subtype="FLOAT")
    results = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        assert main(["enhance", str(src), "-o", str(out), "--checkpoint", str(model_dir), "--backend", backend,
                     "--device", "auto"]) == 0
        results[backend], _ = sf.read(out / "noisy.wav", dtype="float32")
    assert "exporting" in capsys.readouterr().err  # the first onnx run exported, and said so
    assert (model_dir / onnx_export.ONNX_FILE).is_file()  # beside the weights: a writable user directory
    peak = np.abs(results["torch"]).max()
    assert np.abs(results["onnx"] - results["torch"]).max() <= onnx_export.RELATIVE_TOLERANCE * peak


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_backend_reuses_a_fresh_graph_and_replaces_a_stale_one(tmp_path):
    torch.manual_seed(1)
    model_dir = save_pretrained(build_model(TINY), TINY, tmp_path / "model")
    messages = []
    Enhancer.from_pretrained(model_dir, backend="onnx", on_export=messages.append)
    graph = model_dir / onnx_export.ONNX_FILE
    first = graph.stat().st_mtime_ns
    Enhancer.from_pretrained(model_dir, backend="onnx", on_export=messages.append)
    assert len(messages) == 1 and graph.stat().st_mtime_ns == first  # reused, not exported again

    torch.manual_seed(2)
    retrained = build_model(TINY).eval()
    save_pretrained(retrained, TINY, model_dir)  # new weights: the graph beside them is stale
    enhancer = Enhancer.from_pretrained(model_dir, backend="onnx", on_export=messages.append)
    assert len(messages) == 2
    wave = tone(8000, seed=3)
    with torch.no_grad():
        want = one_pass(TINY)(retrained, wave, TINY)
    got = torch.from_numpy(enhancer(wave[0].numpy(), 16000))
    assert float((got - want[0]).abs().max()) <= onnx_export.RELATIVE_TOLERANCE * float(want.abs().max())


@pytest.mark.slow  # exports a graph (seconds to tens of seconds)
def test_graph_of_someone_else_is_left_alone(tmp_path, steadyvoice_home):
    torch.manual_seed(3)
    model_dir = save_pretrained(build_model(TINY), TINY, tmp_path / "model")
    foreign = model_dir / onnx_export.ONNX_FILE
    foreign.write_bytes(b"not made by steadyvoice")
    Enhancer.from_pretrained(model_dir, backend="onnx")
    assert foreign.read_bytes() == b"not made by steadyvoice"
    cached = list((steadyvoice_home / "onnx").glob("*.onnx"))
    assert [p.stem for p in cached] == [onnx_export.source_fingerprint(model_dir)]


def test_shipped_models_are_never_written_into():
    from steadyvoice.catalog import SHIPPED_DIR

    shipped = SHIPPED_DIR / "default"
    assert not onnx_export._may_write_beside(shipped, shipped / onnx_export.ONNX_FILE)
