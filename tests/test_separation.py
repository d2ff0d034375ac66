"""MossFormer2-SS separation: network parity with ClearerVoice, official checkpoints, the ClearVoice decode path,
the Separator (levels, channels, long inputs with talkers kept in their files across window joins), bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from steadyvoice import Enhancer, Separator
from steadyvoice import separation as separation_module
from steadyvoice.cli import main
from steadyvoice.errors import AudioError, CheckpointError, ModelError
from steadyvoice.models import (ARCHITECTURES, MossFormer2SSConfig, build_model, count_parameters, get_config,
                                load_pretrained, read_model_config, save_pretrained)
from steadyvoice.models.clearervoice import identify
from steadyvoice.models.clearervoice_mossformer2_ss import infer_config, official_to_ours, ours_to_official
from steadyvoice.models.mossformer2 import rotary_freqs, sinusoidal_inv_freq
from steadyvoice.pipelines import PIPELINES, one_pass
from steadyvoice.pipelines.mossformer2_ss import audio_norm, separate_waveform
from steadyvoice.separation import best_permutation, talker_paths

REF = Path(__file__).parent / "data" / "reference"
SR = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parity():
    npz = np.load(REF / "mossformer2_ss_small_parity.npz")
    meta = json.loads((REF / "mossformer2_ss_small_parity.json").read_text())
    official = {k[len("param/"):]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("param/")}
    return official, {k: npz[k] for k in npz.files if not k.startswith("param/")}, meta


@pytest.fixture(scope="module")
def e2e():
    npz = np.load(REF / "mossformer2_ss_small_e2e.npz")
    return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def small_model(parity):
    official, _, _ = parity
    cfg = infer_config(official)
    model = build_model(cfg).eval()
    model.load_state_dict(official_to_ours(official), strict=True)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory, parity):
    """The parity weights saved as an official DDP checkpoint (their key names) and run through the real convert."""
    official, _, _ = parity
    root = tmp_path_factory.mktemp("ss")
    src = root / "last_best_checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 7, "step": 70}, src)
    dest = root / "mossformer2-ss-small"
    assert main(["convert", "clearervoice", str(src), str(dest)]) == 0
    return dest


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)))))


# ---- the network ----------------------------------------------------------------------------------------


def test_official_size_matches_their_state_dict():
    meta = json.loads((REF / "mossformer2_ss_16k.state_dict_shapes.json").read_text())
    shapes = meta["state_dict_shapes"]
    cfg = get_config("mossformer2-ss-16k")
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.num_spks) == (16000, 16, 8, 2)
    assert ARCHITECTURES["mossformer2-ss"].task == "separation"
    model = build_model(cfg)
    assert count_parameters(model) == meta["trainable_parameters"] == 55_735_394
    ours = model.state_dict()
    theirs = ours_to_official(ours, cfg)
    assert {k: list(v.shape) for k, v in theirs.items()} == shapes  # every official key and shape, nothing more
    # and back: config inference from shapes alone, every official tensor mapped onto one of ours
    fake = {k: torch.zeros(()).expand(*s) for k, s in shapes.items()}
    fake.update({k: rotary_freqs(2 * s[0]) for k, s in shapes.items() if k.endswith("rotary_pos_emb.freqs")})
    fake["mask_net.pos_enc.inv_freq"] = sinusoidal_inv_freq(cfg.model_dim)
    assert infer_config(fake) == cfg
    assert {k: tuple(v.shape) for k, v in official_to_ours(fake).items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert identify(fake, Path("x.pt")).name == "MossFormer2_SS_16K"


def test_network_reproduces_their_outputs(parity, small_model):
    official, arrays, meta = parity
    assert small_model.cfg == get_config("mossformer2-ss-16k-small")
    assert count_parameters(small_model) == meta["n_params_trainable"]
    x = torch.from_numpy(arrays["input/waveform"])
    with torch.no_grad():
        out = small_model(x)  # (B, S, N)
        w = torch.relu(small_model.encoder(x[:, None])).transpose(1, 2)
        masks = small_model.masks(w)  # (B, S, T, E)
    assert out.shape == (1, 2, 16000)
    np.testing.assert_allclose(w.transpose(1, 2).numpy(), arrays["intermediate/encoder_out"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(masks.permute(1, 0, 3, 2).numpy(), arrays["intermediate/masks"], rtol=0, atol=1e-5)
    for s in range(2):
        check = meta["float64_check"]["deviation"][f"output/spk{s + 1}"]["max_abs_diff"]
        deviation = np.abs(out[0, s].numpy() - arrays[f"output/spk{s + 1}"]).max()
        assert deviation <= 10 * check, (s, deviation, check)


def test_key_mapping_round_trips(parity, small_model):
    official, _, _ = parity
    back = ours_to_official(small_model.state_dict(), small_model.cfg)
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_foreign_or_damaged_official_keys_are_named(parity):
    official, _, _ = parity
    with pytest.raises(CheckpointError, match="unexpected key 'mask_net.extra.weight'"):
        official_to_ours({**official, "mask_net.extra.weight": torch.zeros(3)})
    bad = dict(official)
    bad["mask_net.pos_enc.inv_freq"] = bad["mask_net.pos_enc.inv_freq"] * 2
    with pytest.raises(CheckpointError, match="inv_freq"):
        official_to_ours(bad)


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_spks"):
        MossFormer2SSConfig(num_spks=1)
    with pytest.raises(ValueError, match="encoder_stride"):
        MossFormer2SSConfig(encoder_stride=32)


# ---- ClearVoice's decode path ---------------------------------------------------------------------------


def test_audio_norm_is_theirs(e2e):
    normed, gain = audio_norm(torch.from_numpy(e2e["input/waveform_raw"]))
    np.testing.assert_allclose(normed.numpy(), e2e["input/waveform"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(1 / gain.numpy(), e2e["input/audio_norm_scalar"], rtol=1e-5)
    silent, _ = audio_norm(torch.zeros(1, 100))  # theirs: NaN
    assert torch.equal(silent, torch.zeros(1, 100))


def test_convert_then_separator_reproduces_clearvoice(converted, e2e):
    """Their end-to-end vector: raw mixture -> audio_norm -> 2 s zero-padded pass -> RMS rescaling, through the
    real convert and the public API. The default levels differ from theirs by exactly the two documented
    factors (output RMS over the real samples, not the padded length; the input's level restored);
    levels="clearvoice" gives their output."""
    meta = json.loads((converted / "config.json").read_text())
    assert meta["architecture"] == "mossformer2-ss" and meta["source"]["converted_from"] == "ClearerVoice-Studio"
    assert read_model_config(converted) == get_config("mossformer2-ss-16k-small")
    raw = e2e["input/waveform_raw"][0]  # (16000,)
    ours = Separator.from_pretrained(converted)(raw, SR)
    assert ours.shape == (2, 16000) and ours.dtype == np.float32
    level = rms(raw) / rms(e2e["input/waveform"])  # their outputs stay at the normalised level
    for s in range(2):
        theirs = e2e[f"onepass/output_spk{s + 1}"]
        padded = e2e[f"onepass/decode_return_spk{s + 1}"]  # before their cut to N: RMS measured over 32000 samples
        expected = theirs * rms(padded) / rms(padded[:16000]) * level
        assert np.abs(ours[s] - expected).max() <= 1e-4 * np.abs(expected).max()
        assert rms(ours[s]) == pytest.approx(rms(raw), rel=1e-5)  # each talker at the mixture's level
    exact = Separator.from_pretrained(converted, levels="clearvoice")(raw, SR)
    for s in range(2):
        theirs = e2e[f"onepass/output_spk{s + 1}"]
        assert np.abs(exact[s] - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_clearvoice_levels_are_theirs(small_model, e2e):
    """levels="clearvoice" gives their decoder's output, batched; their outputs ignore the input's level."""
    assert PIPELINES["mossformer2-ss"] == "steadyvoice.pipelines.mossformer2_ss:separate_waveform"
    assert one_pass(small_model.cfg) is separate_waveform
    raw = torch.from_numpy(e2e["input/waveform_raw"])
    with torch.no_grad():
        batch = separate_waveform(small_model, torch.cat([raw, 0.1 * raw]), small_model.cfg, levels="clearvoice")
    assert batch.shape == (2, 2, 16000)
    for s in range(2):
        theirs = e2e[f"onepass/output_spk{s + 1}"]
        for item in range(2):
            assert np.abs(batch[item, s].numpy() - theirs).max() <= 1e-4 * np.abs(theirs).max()


# ---- the Separator: channels and long inputs ------------------------------------------------------------


def speechlike(n: int, f0: float, am_hz: float, rng, pauses=()) -> np.ndarray:
    t = np.arange(n) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12) if k * f0 < SR / 2)
    x = 0.1 * x * 0.5 * (1 + np.sin(2 * np.pi * am_hz * t))
    for a, b in pauses:  # silent stretches (seconds)
        x[int(a * SR):int(b * SR)] = 0.0
    return x.astype(np.float32)


class ShuffledOracle(nn.Module):
    """Stand-in network: returns the true talkers of the window it is given, in a random order each call.

    It finds which window (and channel) it sees by correlating its input with the known mixture.
    """

    def __init__(self, sources: np.ndarray, starts: list[int], window: int, seed: int = 0):
        super().__init__()
        self.sources = sources  # (S, C, N)
        self.mixture = sources.sum(0)  # (C, N)
        self.starts, self.window = starts, window
        self.rng = np.random.default_rng(seed)
        self.orders: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, L) -> (1, S, L)
        x = x[0].numpy().astype(np.float64)
        best, found = -np.inf, None
        for c in range(self.mixture.shape[0]):
            for start in self.starts:
                piece = self.mixture[c, start:start + self.window]
                score = np.dot(x[:piece.size], piece) / (np.linalg.norm(piece) * np.linalg.norm(x[:piece.size]) + 1e-12)
                if score > best:
                    best, found = score, (c, start)
        c, start = found
        talkers = self.sources[:, c, start:start + self.window]  # (S, <= W)
        order = list(self.rng.permutation(talkers.shape[0]))
        self.orders.append(order)
        out = np.zeros((talkers.shape[0], x.size), dtype=np.float32)
        out[:, :talkers.shape[1]] = talkers[order]
        return torch.from_numpy(out)[None]


def oracle_separator(sources: np.ndarray, seed: int = 0) -> tuple[Separator, ShuffledOracle]:
    cfg = get_config("mossformer2-ss-16k-small")
    probe = Separator(nn.Identity(), cfg)  # only for its window plan
    oracle = ShuffledOracle(sources, probe.plan.starts(sources.shape[-1]), probe.plan.window, seed)
    return Separator(oracle, cfg), oracle


def test_talkers_stay_in_their_file_across_window_joins():
    rng = np.random.default_rng(3)
    n = 20 * SR  # 7 windows of 4 s, joins every 3 s
    a = speechlike(n, 120.0, 3.0, rng, pauses=[(2.9, 4.2), (11.5, 12.3)])  # silent over whole overlaps
    b = speechlike(n, 210.0, 5.3, rng, pauses=[(5.8, 7.1), (14.0, 16.0)])
    sources = np.stack([a, b])[:, None]  # (S, C=1, N)
    separator, oracle = oracle_separator(sources)
    out = separator(a + b, SR)  # (2, N)
    assert len(oracle.orders) == separator.window_count(n, SR) == 7
    assert [0, 1] in oracle.orders and [1, 0] in oracle.orders  # the stand-in really swaps talkers
    order = best_permutation(sources[:, 0][None], out[None])
    for s in range(2):
        est = out[order[s]]
        gain = np.dot(est, sources[s, 0]) / np.dot(sources[s, 0], sources[s, 0])
        np.testing.assert_allclose(est, gain * sources[s, 0], rtol=0, atol=2e-5)  # the same talker, every sample

    # without the alignment the same stand-in puts talkers in the wrong file after some joins
    identity = lambda reference, candidate: list(range(candidate.shape[1]))  # noqa: E731
    unaligned, _ = oracle_separator(sources)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(separation_module, "best_permutation", identity)
        jumbled = unaligned(a + b, SR)
    assert min(np.abs(jumbled[o] - out[order[s]]).max() for s, o in [(0, 0), (0, 1)]) > 0.01


def test_stereo_talkers_are_aligned_across_channels_and_keep_their_panning():
    rng = np.random.default_rng(5)
    n = 10 * SR
    a = speechlike(n, 130.0, 2.5, rng)
    b = speechlike(n, 240.0, 4.0, rng, pauses=[(4.0, 6.0)])
    pan = np.array([[0.9, 0.3], [0.2, 0.8]], dtype=np.float32)  # talker x channel gains
    sources = np.stack([a, b])[:, None, :] * pan[:, :, None]  # (S, C, N)
    separator, oracle = oracle_separator(sources, seed=1)
    out = separator(sources.sum(0).T, SR)  # (N, 2) -> (2, N, 2)
    assert out.shape == (2, n, 2)
    assert len({tuple(o) for o in oracle.orders}) == 2  # channels and windows came back in both orders
    order = best_permutation(sources.transpose(1, 0, 2), out.transpose(2, 0, 1))
    for s in range(2):
        est = out[order[s]].T  # (C, N)
        gain = np.vdot(est, sources[s]) / np.vdot(sources[s], sources[s])  # one gain for both channels
        np.testing.assert_allclose(est, gain * sources[s], rtol=0, atol=2e-5)


def test_channels_share_levels_and_equal_channels_give_the_mono_result(small_model, e2e):
    raw = e2e["input/waveform_raw"][0]
    stereo = Separator(small_model, small_model.cfg, levels="clearvoice")(np.stack([raw, raw], axis=1), SR)
    assert stereo.shape == (2, 16000, 2)
    for s in range(2):  # each channel is their mono output
        theirs = e2e[f"onepass/output_spk{s + 1}"]
        for c in range(2):
            assert np.abs(stereo[s, :, c] - theirs).max() <= 1e-4 * np.abs(theirs).max()
    quiet = Separator(small_model, small_model.cfg)(np.stack([raw, 0.25 * raw], axis=1), SR)
    assert rms(quiet[:, :, 1]) == pytest.approx(0.25 * rms(quiet[:, :, 0]), rel=1e-3)  # the quieter channel stays so
    assert rms(quiet) == pytest.approx(rms(np.stack([raw, 0.25 * raw])), rel=1e-4)  # one gain per talker


def test_real_model_on_a_long_resampled_input(small_model):
    rng = np.random.default_rng(0)
    sr = 22050
    x = (0.05 * rng.standard_normal(int(6.5 * sr))).astype(np.float32)
    seen = []
    separator = Separator(small_model, small_model.cfg)
    out = separator(x, sr, progress=lambda done, total: seen.append((done, total)))
    assert out.shape == (2, *x.shape) and out.dtype == np.float32 and np.isfinite(out).all()
    assert separator.window_count(x.shape[0], sr) == 2 and seen == [(1, 2), (2, 2)]
    assert 0 < rms(out[0]) < rms(x) and 0 < rms(out[1]) < rms(x)  # mixture's level at 16 kHz (no band above 8 kHz)
    assert separator(np.zeros(8000, dtype=np.float32), SR).tolist() == np.zeros((2, 8000)).tolist()


# ---- bad input --------------------------------------------------------------------------------------------


def test_wrong_kind_of_model_or_speaker_count_is_refused(small_model, converted):
    se_cfg = get_config("mossformer2-se-16k-small")
    with pytest.raises(ModelError, match="enhancement model, not a separation model"):
        Separator(build_model(se_cfg), se_cfg)
    with pytest.raises(ModelError, match="separation model, not an enhancement model"):
        Enhancer(small_model, small_model.cfg)
    with pytest.raises(ModelError, match="separation model, not an enhancement model"):
        Enhancer.from_pretrained(converted)
    with pytest.raises(ModelError, match="separates 2 talkers but 3 were asked for"):
        Separator.from_pretrained(converted, speakers=3)
    assert Separator.from_pretrained(converted, speakers=2).speakers == 2
    for name, message in [("default", "is an enhancement model, not a separation model"),
                          ("mossformer2-ss-16k", "a network configuration without trained weights"),
                          ("no/such/dir", "known separation models.*separation-default")]:
        with pytest.raises(ModelError, match=message):
            Separator.from_pretrained(name)


def test_bad_arrays_are_refused(small_model):
    separator = Separator(small_model, small_model.cfg)
    with pytest.raises(AudioError, match="NaN"):
        separator(np.full(1000, np.nan, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="audio.T"):
        separator(np.zeros((2, 1000), dtype=np.float32), SR)
    with pytest.raises(AudioError, match="sample rate"):
        separator(np.zeros(1000, dtype=np.float32), 100)


def test_separated_model_dir_round_trip(tmp_path, small_model):
    save_pretrained(small_model, small_model.cfg, tmp_path / "m")
    model, cfg = load_pretrained(tmp_path / "m")
    assert cfg == small_model.cfg and isinstance(cfg, MossFormer2SSConfig)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), small_model.state_dict().values()))
    assert talker_paths(Path("o/sub/a.flac"), 2) == [Path("o/sub/a_s1.flac"), Path("o/sub/a_s2.flac")]
