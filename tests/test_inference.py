"""Enhancer: shapes/rates/channels, determinism, long-input windows, input checks, finding a model, parity.

The model used here is a TEST FIXTURE: a tiny MossFormer2-SE with random weights saved with save_pretrained
into a temporary directory. It is never a default; it only exercises the plumbing.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyvoice import Enhancer
from steadyvoice.errors import AudioError, ConfigError, ModelError
from steadyvoice.inference import WindowPlan, crossfade_weights, overlap_add, plan_windows

from conftest import TINY  # the tiny fixture network; model_dir and one_torch_thread are conftest fixtures

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIRS = [REPO / "tests" / "data" / "reference", REPO.parent / "shared" / "reference" / "clearervoice"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def enhancer(model_dir):
    return Enhancer.from_pretrained(model_dir)


def noisy_speechlike(seconds: float, sr: int, channels: int = 0, seed: int = 0) -> np.ndarray:
    """Harmonic tone with slow amplitude modulation plus white noise: (N,) or (N, channels)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    columns = [0.1 * voice + 0.03 * rng.standard_normal(n) for _ in range(max(channels, 1))]
    x = np.stack(columns, axis=1).astype(np.float32)
    return x if channels else x[:, 0]


# ---------------------------------------------------------------------------------------------------
# Windows and overlap-add, without a model
# ---------------------------------------------------------------------------------------------------


def test_plan_tiles_frames_exactly_and_keeps_the_frame_grid():
    plan = plan_windows(48000, 1920, 384)
    assert (plan.window - 1920) % 384 == 0 and plan.stride % 384 == 0
    assert abs(plan.window - 10 * 48000) <= 384 and plan.margin == 24000
    assert plan.crossfade >= 48000


def test_windows_cover_the_signal_with_equal_lengths():
    plan = WindowPlan(window=1000, stride=700, margin=50)
    for length in (1, 999, 1000, 1001, 1700, 1701, 12345):
        starts = plan.starts(length)
        assert starts[0] == 0 and starts[-1] + plan.window >= length
        assert len(starts) == 1 or starts[-2] + plan.window < length  # no window more than needed
        assert all(b - a == plan.stride for a, b in zip(starts, starts[1:]))


def test_crossfade_weights_sum_to_one_everywhere():
    plan = WindowPlan(window=1000, stride=700, margin=50)
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    # Identity "model": the blended output is the input iff the weights sum to one at every sample.
    y = overlap_add(x, plan, lambda w: w)
    np.testing.assert_allclose(y, x, atol=1e-6)
    w = crossfade_weights(plan, first=False, last=False)
    assert np.all(w[: plan.margin] == 0) and np.all(w[-plan.margin :] == 0)
    assert np.all(w[300 - plan.margin : plan.stride + plan.margin] == 1)


def test_joins_are_smooth_ramps_not_steps():
    plan = WindowPlan(window=1000, stride=700, margin=50)
    calls = []

    def constant_per_window(piece):  # window k outputs the constant k: the worst case for a seam
        calls.append(len(piece))
        return np.full_like(piece, float(len(calls) - 1))

    y = overlap_add(np.zeros(3000, np.float32), plan, constant_per_window)
    assert calls == [1000] * 4
    steepest = np.pi / (2 * plan.crossfade)  # max slope of sin^2 over the crossfade for a unit change
    assert np.max(np.abs(np.diff(y))) <= steepest * 1.001
    # Away from joins each window's own value is kept exactly.
    assert y[200] == 0 and y[1000] == 1 and y[1700] == 2 and y[2900] == 3


def test_bad_window_settings_are_config_errors():
    with pytest.raises(ConfigError, match="crossfade"):
        plan_windows(16000, 512, 128, window_seconds=1.0, margin_seconds=0.5, crossfade_seconds=0.5)


# ---------------------------------------------------------------------------------------------------
# Enhancer on arrays
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [0, 2])
def test_shape_dtype_rate_and_length_are_kept(enhancer, sr, channels):
    x = noisy_speechlike(0.7037, sr, channels)  # lengths that do not resample to whole numbers
    y = enhancer(x.astype(np.float64), sr)
    assert y.shape == x.shape and y.dtype == np.float64  # the input's dtype
    assert np.isfinite(y).all() and np.std(y) > 0
    assert not np.allclose(y, x)  # it did something


def test_channels_are_enhanced_independently_and_deterministically(enhancer):
    x = noisy_speechlike(1.0, 16000, channels=2, seed=3)
    x[:, 1] *= 0.5
    stereo = enhancer(x, 16000)
    left = enhancer(np.ascontiguousarray(x[:, 0]), 16000)
    right = enhancer(np.ascontiguousarray(x[:, 1]), 16000)
    np.testing.assert_array_equal(stereo[:, 0], left)
    np.testing.assert_array_equal(stereo[:, 1], right)
    np.testing.assert_array_equal(enhancer(x, 16000), stereo)  # same input, identical output


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_output_is_time_aligned_at_the_input_rate(sr):
    """With a near-constant mask (about 0.5) the output is half the input: no delay, no rate mix-up."""
    t = np.arange(int(0.8 * sr)) / sr
    x = (0.2 * sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 7))).astype(np.float32)  # < 1 kHz
    y = Enhancer(LocalMaskNet(TINY), TINY)(x, sr)
    inner = slice(sr // 10, -sr // 10)
    gain = np.dot(y[inner], x[inner]) / np.dot(x[inner], x[inner])
    assert 0.4 < gain < 0.6
    assert np.max(np.abs(y[inner] - gain * x[inner])) < 0.02 * np.max(np.abs(x))


def test_very_short_input_is_padded_to_one_frame(enhancer):
    y = enhancer(noisy_speechlike(0.005, 16000), 16000)  # 80 samples < one 512-sample frame
    assert y.shape == (80,) and np.isfinite(y).all()


class LocalMaskNet(torch.nn.Module):
    """A mask estimator that sees only +-1 frame of features (+-2 more through the deltas).

    With such a model the windowed output must equal the one-pass output wherever the windows'
    margins cover that context, which checks the window grid, padding and overlap-add exactly.
    """

    def __init__(self, cfg):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv1d(3 * cfg.n_mels, cfg.win_length // 2 + 1, kernel_size=3, padding=1)

    def forward(self, features):  # (B, T, 3*n_mels) -> (B, T, F)
        return torch.sigmoid(self.conv(features.transpose(1, 2)) * 0.01).transpose(1, 2)


WINDOWS = dict(one_pass_max_seconds=2.0, window_seconds=3.0, margin_seconds=0.25, crossfade_seconds=0.25)


def test_windowed_equals_one_pass_for_a_model_with_local_context():
    x = noisy_speechlike(13.3, 16000, seed=4)
    model = LocalMaskNet(TINY)
    windowed = Enhancer(model, TINY, **WINDOWS)(x, 16000)
    one_pass = Enhancer(model, TINY, one_pass_max_seconds=60.0)(x, 16000)
    end = len(x) - 16000 // 10  # the last 0.1 s differs: the last window runs into zero padding
    np.testing.assert_allclose(windowed[:end], one_pass[:end], atol=2e-6)
    assert not np.allclose(windowed, x, atol=1e-3)


@pytest.fixture(scope="module")
def long_run(model_dir):
    """A 24 s stationary low-frequency input enhanced by the MossFormer2 fixture in 3 s windows."""
    t = np.arange(24 * 16000) / 16000
    x = (0.1 * sum(np.sin(2 * np.pi * 110 * k * t + k) / k for k in range(1, 5))).astype(np.float32)
    windowed = Enhancer.from_pretrained(model_dir, **WINDOWS)
    progress = []
    y = windowed(x, 16000, progress=lambda done, total: progress.append((done, total)))
    return x, y, windowed.plan, progress


def test_windows_report_progress(long_run):
    x, _, plan, progress = long_run
    total = len(plan.starts(len(x)))
    assert progress == [(k, total) for k in range(1, total + 1)] and total == 11


def test_windowed_output_has_no_seams(long_run):
    """Joins are no rougher than the rest of the output.

    A random-weight MossFormer2 depends strongly on absolute position, so neighbouring windows estimate
    quite different signals (closeness to one pass is checked above with a local-context model). The
    input holds only low frequencies, so the output (mask x input spectrum) is smooth and its second
    difference is small; a step where one window's estimate switches to the next one's shows up there.
    (Hard cuts at the middle of each overlap give up to 3.7x the roughness of the kept parts here.)
    """
    x, y, plan, _ = long_run
    roughness = np.abs(np.diff(y, 2))  # (N-2,)
    near_join = np.zeros(len(roughness), bool)
    joins = plan.starts(len(x))[1:]
    for start in joins:
        near_join[start - 200 : start + plan.window - plan.stride + 200] = True
    kept = ~near_join
    kept[:16000] = kept[-16000:] = False  # the signal's own edges
    worst_join = max(roughness[start - 200 : start + plan.window - plan.stride + 200].max() for start in joins)
    assert worst_join <= roughness[kept].max()


def test_model_memory_is_bounded_by_one_window(enhancer):
    frames_seen = []
    hook = enhancer.model.register_forward_pre_hook(lambda m, args: frames_seen.append(args[0].shape[1]))
    try:
        maxima = {}
        for minutes in (1, 10):
            frames_seen.clear()
            x = np.zeros(int(minutes * 60 * 16000), np.float32)  # silence: the model cost is the same
            x[::97] = 0.01
            y = enhancer(x, 16000)
            assert y.shape == x.shape and np.isfinite(y).all()
            maxima[minutes] = max(frames_seen)
            assert len(frames_seen) == enhancer.window_count(len(x), 16000)
    finally:
        hook.remove()
    assert maxima[1] == maxima[10] == 1 + (enhancer.plan.window - TINY.win_length) // TINY.hop_length


@pytest.mark.parametrize(
    "audio, sr, message",
    [
        (np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, "audio: 100 samples are NaN or infinite"),
        (np.array([0.1, -np.inf] * 50, np.float32), 16000, "50 samples are NaN or infinite"),
        (np.zeros(0, np.float32), 16000, "the audio is empty"),
        (np.zeros((10, 2, 2, 2), np.float32), 16000, r"expected a time-last shape \(samples,\)"),
        (np.zeros((2, 16000), np.float32), 16000, r"reads as 2 frames of 16000 channels.*audio\.T.*batch=True"),
        (np.zeros((1000, 40), np.float32), 16000, "40 channels is more than the 32 supported"),
        (np.zeros(1000, np.int16), 16000, "must be floating point"),
        (np.zeros(1000, np.float32), 1000, "sample rate 1000 Hz is not supported"),
        (np.zeros(1000, np.float32), 16000.0, "sample rate must be an integer"),
        ([0.0] * 1000, 16000, "expected a numpy array"),
    ],
)
def test_bad_arrays_are_audio_errors(enhancer, audio, sr, message):
    with pytest.raises(AudioError, match=message):
        enhancer(audio, sr)


# ---------------------------------------------------------------------------------------------------
# Finding a model
# ---------------------------------------------------------------------------------------------------


def test_default_and_config_names_without_weights_say_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setattr("steadyvoice.catalog.SHIPPED_DIR", tmp_path / "weights")  # an installation without them
    with pytest.raises(ModelError, match="'default': its weights are missing from this installation.*reinstall "
                                         "SteadyVoice.*steadyvoice convert clearervoice"):
        Enhancer.from_pretrained("default")
    with pytest.raises(ModelError, match="'mossformer2-se-48k' is a network configuration without trained weights"):
        Enhancer.from_pretrained("mossformer2-se-48k")
    with pytest.raises(ModelError, match="nope: no such model directory or model name"):
        Enhancer.from_pretrained("nope")


def test_wrong_kinds_of_model_path(tmp_path):
    pt = tmp_path / "MossFormer2_SE_48K.pt"
    pt.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"is a file, not a model directory; convert .*convert clearervoice"):
        Enhancer.from_pretrained(pt)
    step = tmp_path / "step-00000100"
    step.mkdir()
    (step / "manifest.json").write_text("{}")
    with pytest.raises(ModelError, match="is a training checkpoint.*ckpt export"):
        Enhancer.from_pretrained(step)
    with pytest.raises(ModelError, match=r"not a model directory \(missing model.safetensors, config.json\)"):
        Enhancer.from_pretrained(tmp_path)


def test_model_dir_round_trip_gives_identical_output(model_dir, enhancer):
    x = noisy_speechlike(0.5, 16000)
    again = Enhancer.from_pretrained(model_dir / "model.safetensors")
    np.testing.assert_array_equal(again(x, 16000), enhancer(x, 16000))
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["source"]["kind"].startswith("test fixture")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_cuda_is_a_clear_error(model_dir):
    with pytest.raises(ModelError, match="CUDA is not available .*this machine has cpu: use one of them, or auto"):
        Enhancer.from_pretrained(model_dir, device="cuda")
    with pytest.raises(ModelError, match="unknown device 'gpu'"):
        Enhancer.from_pretrained(model_dir, device="gpu")


# ---------------------------------------------------------------------------------------------------
# Parity with ClearerVoice through the public path: .pt -> convert -> Enhancer
# ---------------------------------------------------------------------------------------------------


def _reference(name: str) -> Path:
    for directory in REFERENCE_DIRS:
        if (directory / name).is_file():
            return directory / name
    pytest.skip(f"{name} not found in {', '.join(map(str, REFERENCE_DIRS))}")


def test_public_path_reproduces_official_e2e_output(tmp_path, capsys):
    from steadyvoice.cli import main

    weights = np.load(_reference("mossformer2_se_small_parity.npz"))
    e2e = np.load(_reference("mossformer2_se_small_e2e.npz"))
    state_dict = {k[len("param/"):]: torch.from_numpy(weights[k]) for k in weights.files if k.startswith("param/")}
    src = tmp_path / "official.pt"
    torch.save({"model": state_dict}, src)  # the layout of an official ClearerVoice checkpoint
    dest = tmp_path / "converted"
    assert main(["convert", "clearervoice", str(src), str(dest)]) == 0, capsys.readouterr().err

    wave = e2e["input/waveform"][0]  # (48000,) float32 at 48 kHz
    out = Enhancer.from_pretrained(dest)(wave, 48000)
    expected = e2e["dither0/output_waveform"]
    err = float(np.max(np.abs(out - expected)))
    print(f"public-path parity: max abs err {err:.3g}")
    assert out.shape == expected.shape and err <= 1e-4
