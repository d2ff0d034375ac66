"""Front end and STFT: Kaldi fbank parity with ClearerVoice's pipeline, one-pass enhancement, shapes, gradients."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from steadyvoice.features import (
    cropped_length, enhance_waveform, fbank_features, frame_count, istft, one_pass, padded_length, stft,
)
from steadyvoice.models import build_model, get_config, load_state_dict_strict
from steadyvoice.models.clearervoice import config_from_constructor_args, official_to_ours

REF = Path(__file__).parent / "data" / "reference"
CFG = get_config("mossformer2-se-48k-small")


@pytest.fixture(scope="module")
def e2e():
    npz = np.load(REF / "mossformer2_se_small_e2e.npz")
    return {k: torch.from_numpy(npz[k]) for k in npz.files}


@pytest.fixture(scope="module")
def small_model():
    npz = np.load(REF / "mossformer2_se_small_parity.npz")
    meta = json.loads((REF / "mossformer2_se_small_parity.json").read_text())
    cfg = config_from_constructor_args(meta["masknet_constructor_args"])
    model = build_model(cfg)
    official = {k[len("param/"):]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("param/")}
    load_state_dict_strict(model, official_to_ours(official), where="parity npz")
    return model.eval()


class ConstantMask(nn.Module):
    """A 'network' whose mask is all ones: the pipeline must then give back its input."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, features):
        return features.new_ones(*features.shape[:2], self.cfg.n_freqs)


def test_fbank_matches_kaldi_pipeline(e2e):
    feats = fbank_features(e2e["input/waveform"], CFG)
    ref = e2e["dither0/features"]
    assert feats.shape == ref.shape == (1, 121, 180)
    err = (feats - ref).abs().max().item()
    assert err <= 1e-4, f"max abs error {err:.3g}"


def test_enhance_waveform_matches_clearervoice_decoder(e2e, small_model):
    with torch.no_grad():
        out = enhance_waveform(small_model, e2e["input/waveform"], CFG)
    ref = e2e["dither0/output_waveform"]
    assert out.shape == (1, 48000)
    err = (out[0] - ref).abs().max().item()
    assert err <= 1e-4, f"max abs error {err:.3g}"
    assert ref.abs().max() > 0.05  # the reference is not silence


def test_frame_count_and_short_inputs():
    assert frame_count(48000, CFG) == 121
    assert frame_count(1919, CFG) == 0
    assert frame_count(1920, CFG) == 1
    assert frame_count(1920 + 383, CFG) == 1
    assert fbank_features(torch.zeros(2, 1000), CFG).shape == (2, 0, 180)
    x = 0.1 * torch.randn(2, 5000)
    assert fbank_features(x, CFG).shape == (2, frame_count(5000, CFG), 180)
    assert stft(x, CFG).shape == (2, 961, frame_count(5000, CFG))


@pytest.mark.parametrize("n", [100, 1920, 4000, 48000 + 17])
def test_unit_mask_gives_back_the_input_for_any_length(n):
    torch.manual_seed(n)
    x = 0.1 * torch.randn(2, n, dtype=torch.float64)
    y = enhance_waveform(ConstantMask(CFG), x, CFG)
    assert y.shape == (2, n)
    torch.testing.assert_close(y, x, atol=1e-9, rtol=0)  # every sample, including the tail after the last hop


def test_stft_istft_round_trip():
    torch.manual_seed(0)
    x = torch.randn(3, 1920 + 384 * 9, dtype=torch.float64)
    y = istft(stft(x, CFG), CFG, length=x.shape[-1])
    torch.testing.assert_close(y, x, atol=1e-9, rtol=0)  # float64: the round trip itself is exact
    # float32 (what the model runs in): samples up to ~4 through a 1920-point FFT and back lose about
    # 5e-6, and how much depends on torch's FFT backend (MKL, pocketfft); 1e-4 still catches any window
    # or normalisation error, which are of order 1.
    y32 = istft(stft(x.float(), CFG), CFG, length=x.shape[-1])
    torch.testing.assert_close(y32, x.float(), atol=1e-4, rtol=0)


def test_batch_rows_are_independent_and_silence_hits_the_floor():
    torch.manual_seed(1)
    x = 0.2 * torch.randn(3, 6000)
    x[2] = 0.0
    batched = fbank_features(x, CFG)
    single = torch.cat([fbank_features(x[i:i + 1], CFG) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-5)
    floor = np.log(np.finfo(np.float32).eps)
    torch.testing.assert_close(batched[2, :, :60], torch.full((batched.shape[1], 60), floor), atol=1e-6, rtol=0)
    assert batched[2, :, 60:].abs().max() == 0  # constant log-mel: zero deltas


def test_deltas_of_a_ramp():
    # A linear ramp in the log-mel domain has slope 1 away from the edges, and replicate padding at the edges.
    from steadyvoice.features import _deltas

    ramp = torch.arange(10.0).view(1, 10, 1)
    d = _deltas(ramp)[0, :, 0]
    torch.testing.assert_close(d[2:-2], torch.ones(6))
    torch.testing.assert_close(d[:2], torch.tensor([0.5, 0.8]))  # t=0: (1*1 + 2*2)/10; t=1: (1*2 + 2*3)/10


def test_gradients_flow_to_the_waveform(small_model):
    x = (0.1 * torch.randn(2, 4000)).requires_grad_(True)
    feats = fbank_features(x, CFG)
    spec = stft(x, CFG)
    (feats.mean() + spec.abs().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_16k_signal_setup():
    cfg = get_config("mossformer2-se-16k-small")
    model = build_model(cfg).eval()
    x = 0.1 * torch.randn(2, 16000)
    assert fbank_features(x, cfg).shape == (2, frame_count(16000, cfg), 120)
    with torch.no_grad():
        assert enhance_waveform(model, x).shape == (2, 16000)


def test_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        fbank_features(torch.zeros(48000), CFG)


def test_one_pass_lengths_and_what_autocast_wraps():
    # padded_length rounds N up to win + k*hop (inference), cropped_length down (training): 1920 + 384 k here.
    assert [padded_length(n, CFG) for n in (1, 1920, 1921, 2304, 2305)] == [1920, 1920, 2304, 2304, 2688]
    assert [cropped_length(n, CFG) for n in (1920, 2303, 2304, 2305)] == [1920, 1920, 2304, 2304]
    with pytest.raises(ValueError, match="at least win_length=1920"):
        cropped_length(1919, CFG)
    entered = []

    class Recorder:  # stands in for torch.autocast: must be entered around the network call only
        def __enter__(self):
            entered.append("enter")

        def __exit__(self, *exc):
            entered.append("exit")

    class Model(ConstantMask):
        def forward(self, features):
            entered.append("model")
            return super().forward(features).half()  # as autocast would return it

    x = 0.1 * torch.randn(2, 2305)
    out = one_pass(Model(CFG), x, CFG, autocast=Recorder())
    assert entered == ["enter", "model", "exit"]
    assert out.mask.dtype == torch.float32 and out.mask.shape == (2, frame_count(2688, CFG), 961)
    assert out.noisy_spec.shape == (2, 961, frame_count(2688, CFG)) and out.enhanced.shape == (2, 2688)
    torch.testing.assert_close(out.enhanced[:, :2305], x, atol=1e-5, rtol=0)  # unit mask: the input back
    assert out.enhanced[:, 2305:].abs().max() < 1e-6  # ... then the zero padding
    torch.testing.assert_close(enhance_waveform(ConstantMask(CFG), x, CFG), out.enhanced[:, :2305], atol=0, rtol=0)
    cropped = x[:, :cropped_length(2305, CFG)]  # training: frame-aligned already, nothing is padded
    train = one_pass(ConstantMask(CFG), cropped, CFG, reconstruct=False)
    assert train.enhanced is None and train.noisy_spec.shape[-1] == frame_count(2304, CFG)
