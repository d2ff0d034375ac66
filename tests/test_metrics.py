"""Metrics on arrays: SI-SDR properties, PESQ/STOI/ESTOI/composite sanity, DNSMOS, score_pair."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

from steadyvoice.errors import AudioError, ConfigError
from steadyvoice.eval import dnsmos as dnsmos_mod
from steadyvoice.eval import metrics as M
from steadyvoice.eval.dnsmos import DNSMOS, mel_spectrogram_db, shared_dnsmos
from steadyvoice.eval.metrics import (
    composite, estoi, metric_columns, parse_metrics, pesq_nb, pesq_wb, score_pair, si_sdr, stoi,
)

SR = 16000


def speech_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Voiced speech stand-in: a gliding harmonic source through changing vowel formants, in syllables."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = sum(np.sin(k * phase) / k for k in range(1, 50))  # harmonics up to about 7 kHz
    envelope = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 0.7
    vowels = [(700, 1200, 2600), (300, 2300, 3000), (500, 900, 2400), (400, 1900, 2550)]
    out = np.zeros(n)
    block = int(0.3 * sr)
    for start in range(0, n, block):
        seg = source[start:start + block]
        for fc, bw in zip(vowels[rng.integers(len(vowels))], (80, 100, 120)):
            r = np.exp(-np.pi * bw / sr)
            out[start:start + block] += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], seg)
    breath = 0.02 * rng.standard_normal(n)  # aspiration: some energy up to 8 kHz
    out = (out + breath) * envelope + 3e-4 * rng.standard_normal(n)  # and a quiet floor in the pauses
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def add_noise(clean: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.shape[0])
    noise *= np.linalg.norm(clean) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
    return (clean + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speech_like(3.0)


# --- SI-SDR ---------------------------------------------------------------------------------------

def test_si_sdr_is_scale_invariant(clean):
    # Scaled and shifted copies are made in float64: `3.7 * est` on the float32 array would round every
    # sample (relative 6e-8) and move the result by about 1e-9 dB, a sum of rounding errors that depends
    # on the numpy build's sin/lfilter. In float64 the only error left is the metric's own (about 1e-14 dB;
    # BLAS dot products may sum in another order, so no exact equality).
    ref = clean.astype(np.float64)
    est = add_noise(clean, 5.0).astype(np.float64)
    base = si_sdr(est, ref)
    assert si_sdr(3.7 * est, ref) == pytest.approx(base, abs=1e-9)
    assert si_sdr(est, 0.2 * ref) == pytest.approx(base, abs=1e-9)
    assert si_sdr(est + 0.5, ref) == pytest.approx(base, abs=1e-9)  # zero-mean: a DC offset is ignored


def test_si_sdr_of_identical_signals_is_very_large_but_finite(clean):
    value = si_sdr(clean, clean)
    assert 150.0 < value <= 200.0


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 25.0])
@pytest.mark.parametrize("gain", [1.0, -0.5])
def test_si_sdr_equals_the_snr_of_an_orthogonal_mixture(clean, snr_db, gain):
    ref = clean.astype(np.float64) - clean.mean()
    noise = np.random.default_rng(3).standard_normal(ref.shape[0])
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref  # orthogonal to the reference: the projection is exact
    noise *= np.linalg.norm(gain * ref) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
    # est = gain * ref + noise: target = gain * ref, so SI-SDR = 10 log10(|gain ref|^2 / |noise|^2) = snr_db
    assert si_sdr(gain * ref + noise, ref) == pytest.approx(snr_db, abs=1e-6)


def test_si_sdr_of_independent_noise_is_close_to_the_snr(clean):
    assert si_sdr(add_noise(clean, 10.0), clean) == pytest.approx(10.0, abs=0.2)


def test_si_sdr_refuses_silence_and_length_mismatch(clean):
    with pytest.raises(AudioError, match="reference is silent"):
        si_sdr(clean, np.zeros_like(clean))
    with pytest.raises(AudioError, match="signal to judge is silent"):
        si_sdr(np.zeros_like(clean), clean)
    with pytest.raises(AudioError, match="differ in length: 48000 and 47999"):
        si_sdr(clean, clean[:-1])


# --- PESQ, STOI, ESTOI, composite -----------------------------------------------------------------

def test_clean_against_itself_scores_near_the_top(clean):
    assert pesq_wb(clean, clean, SR) > 4.5
    assert pesq_nb(clean, clean, SR) > 4.4
    assert stoi(clean, clean, SR) > 0.999
    assert estoi(clean, clean, SR) > 0.999
    c = composite(clean, clean, SR)
    assert (c["csig"], c["cbak"], c["covl"]) == (5.0, 5.0, 5.0)
    assert c["llr"] == pytest.approx(0.0, abs=1e-9) and c["wss"] == pytest.approx(0.0, abs=1e-9)


def test_every_intrusive_metric_rises_with_the_snr(clean):
    scores = []
    for snr in (0.0, 15.0, 30.0):  # wide steps: wide-band PESQ is harsh on white noise
        noisy = add_noise(clean, snr)
        c = composite(noisy, clean, SR)
        scores.append([pesq_wb(noisy, clean, SR), pesq_nb(noisy, clean, SR), stoi(noisy, clean, SR),
                       estoi(noisy, clean, SR), si_sdr(noisy, clean), c["csig"], c["cbak"], c["covl"]])
    low, mid, high = np.array(scores)
    assert (low < mid).all() and (mid < high).all(), scores


def test_pesq_resamples_and_checks_the_rate(clean):
    noisy = add_noise(clean, 10.0)
    from steadyvoice.audio import resample

    at_48k = pesq_wb(resample(noisy, SR, 48000), resample(clean, SR, 48000), 48000)
    assert at_48k == pytest.approx(pesq_wb(noisy, clean, SR), abs=0.1)
    with pytest.raises(AudioError, match="16 kHz or more, not 8000 Hz"):
        pesq_wb(noisy[::2], clean[::2], 8000)


def test_undefined_pesq_and_stoi_raise_clear_errors(clean):
    with pytest.raises(AudioError, match="reference is silent"):
        pesq_wb(clean, np.zeros_like(clean), SR)
    with pytest.raises(AudioError, match="at least 0.25 s"):
        pesq_nb(clean[:1600], clean[:1600], SR)
    with pytest.raises(AudioError, match="at least 0.4 s of speech"):
        stoi(clean[:3000], clean[:3000], SR)  # pystoi would return 1e-5 with a warning


def test_composite_uses_the_published_coefficients(clean):
    noisy = add_noise(clean, 15.0)
    base = composite(noisy, clean, SR)
    shifted = composite(noisy, clean, SR, pesq_wb_score=base["pesq_wb"] + 0.5)
    assert base["pesq_wb"] == pytest.approx(pesq_wb(noisy, clean, SR))
    assert 1.0 < base["csig"] < 4.5 and 1.0 < shifted["csig"] < 5.0  # unclipped, so the slopes show
    assert shifted["csig"] - base["csig"] == pytest.approx(0.603 * 0.5)
    assert shifted["cbak"] - base["cbak"] == pytest.approx(0.478 * 0.5)
    assert shifted["covl"] - base["covl"] == pytest.approx(0.805 * 0.5)


def test_lpc_solves_the_normal_equations():
    frames = np.random.default_rng(0).standard_normal((5, 480))
    r, a = M._lpc(frames, 16)
    for f in range(5):
        expected = solve_toeplitz(r[f, :16], r[f, 1:17])  # R a = r
        np.testing.assert_allclose(-a[f, 1:], expected, rtol=1e-8, atol=1e-10)
        assert a[f, 0] == 1.0


def _nearest_peak_loops(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """composite.m's peak search, loop for loop (0-based)."""
    out = np.zeros_like(slope)
    num_crit = energy.shape[1]
    for f in range(slope.shape[0]):
        for i in range(num_crit - 1):
            n = i
            if slope[f, i] > 0:
                while n < num_crit - 1 and slope[f, n] > 0:
                    n += 1
                out[f, i] = energy[f, n - 1]
            else:
                while n >= 0 and slope[f, n] <= 0:
                    n -= 1
                out[f, i] = energy[f, n + 1]
    return out


def test_vectorised_peak_search_matches_the_reference_loops():
    energy = np.random.default_rng(1).normal(size=(40, 25)).cumsum(axis=1)
    energy[:3] = np.linspace(0, 1, 25)  # monotonic rows: the searches run off either end
    energy[3:6] = np.linspace(1, 0, 25)
    slope = np.diff(energy, axis=1)
    np.testing.assert_array_equal(M._nearest_peak(energy, slope), _nearest_peak_loops(energy, slope))


# --- DNSMOS ---------------------------------------------------------------------------------------

@pytest.fixture
def counting_sessions(monkeypatch):
    """Count onnxruntime.InferenceSession constructions and runs; start without a shared DNSMOS."""
    import onnxruntime

    real = onnxruntime.InferenceSession
    counts = {"created": 0, "runs": 0}

    class CountingSession:
        def __init__(self, *args, **kwargs):
            counts["created"] += 1
            self._inner = real(*args, **kwargs)

        def run(self, *args, **kwargs):
            counts["runs"] += 1
            return self._inner.run(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    monkeypatch.setattr(dnsmos_mod, "_SHARED", {})
    return counts


@pytest.fixture(scope="module")
def short_clip() -> np.ndarray:
    return speech_like(4.6, seed=4)  # repeated once to 9.2 s: one DNSMOS segment, the cheapest call


def test_dnsmos_scores_speech_above_white_noise_in_range(short_clip, counting_sessions):
    model = DNSMOS()
    speech = model(short_clip, SR)
    noise = model(0.1 * np.random.default_rng(0).standard_normal(short_clip.shape[0]), SR)
    for scores in (speech, noise):
        assert set(scores) == {"sig", "bak", "ovrl", "p808"}
        assert all(1.0 <= v <= 5.0 for v in scores.values()), scores
    assert speech["bak"] > noise["bak"] + 1.0, (speech, noise)
    assert speech["ovrl"] > noise["ovrl"], (speech, noise)
    assert counting_sessions["created"] == 2  # primary + P.808, once for both calls


def test_dnsmos_segments_follow_speechmos(counting_sessions):
    model = DNSMOS()
    audio = speech_like(11.5, seed=2)
    model(audio, SR)
    # speechmos takes int(floor(11.5) - 9.01) + 1 = 2 segments, two model runs each
    assert counting_sessions["runs"] == 2 * 2
    model(audio[: int(SR * 5.5)], SR)  # 5.5 s is repeated to 11 s: 11 - 9 = 2 segments
    assert counting_sessions["runs"] == 2 * 2 + 2 * 2
    assert counting_sessions["created"] == 2


def test_dnsmos_resamples_other_rates(short_clip):
    from steadyvoice.audio import resample

    model = shared_dnsmos()
    at_16k = model(short_clip, SR)
    at_44k = model(resample(short_clip, SR, 44100), 44100)
    for key in at_16k:
        assert at_44k[key] == pytest.approx(at_16k[key], abs=0.05)
    assert shared_dnsmos() is model


def test_mel_input_is_normalised_like_power_to_db():
    mel = mel_spectrogram_db(speech_like(9.01)[:144000])
    assert mel.shape == (900, 120)  # what model_v8.onnx takes
    assert mel.max() == pytest.approx(1.0)  # (0 dB relative to the maximum + 40) / 40
    assert mel.min() >= -1.0 - 1e-6  # top_db = 80 below the maximum


# --- names and pairs ------------------------------------------------------------------------------

def test_parse_metrics_accepts_commas_and_refuses_unknown_names():
    assert parse_metrics(["pesq_wb,stoi", "si_sdr", "STOI"]) == ["pesq_wb", "stoi", "si_sdr"]
    assert metric_columns(["dnsmos", "composite"]) == [
        "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "csig", "cbak", "covl"]
    with pytest.raises(ConfigError, match="unknown metric 'pesq'.*pesq_wb, pesq_nb"):
        parse_metrics(["pesq"])


def test_score_pair_averages_channels(clean):
    other = speech_like(3.0, seed=5)
    ref = np.stack([clean, other], axis=1)  # (N, 2)
    est = np.stack([add_noise(clean, 5.0), add_noise(other, 15.0)], axis=1)
    scores = score_pair(est, ref, SR, ["si_sdr", "stoi"])
    assert scores["si_sdr"] == pytest.approx((si_sdr(est[:, 0], clean) + si_sdr(est[:, 1], other)) / 2)
    assert scores["stoi"] == pytest.approx((stoi(est[:, 0], clean, SR) + stoi(est[:, 1], other, SR)) / 2)


def test_score_pair_names_the_failing_metric_and_channel(clean):
    ref = np.stack([clean, np.zeros_like(clean)], axis=1)
    with pytest.raises(AudioError, match=r"reference is silent.*\(channel 1\)"):
        score_pair(ref + 0.01, ref, SR, ["si_sdr"])
    with pytest.raises(AudioError, match="^pesq_nb: PESQ \\(nb\\) needs at least 0.25 s"):
        score_pair(clean[:1000], clean[:1000], SR, ["si_sdr", "pesq_nb"])
