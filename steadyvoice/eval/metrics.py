"""Speech-quality metrics on arrays: PESQ, STOI, ESTOI, SI-SDR, composite CSIG/CBAK/COVL, DNSMOS.

Every function takes the signal to judge first and the reference (clean) signal second,
``(estimate, reference)`` as in torchmetrics and ``steadyvoice.train.losses``: 1-D float arrays of the
same length at sample rate ``sr``. Where a metric is defined at a fixed rate, the
signals are resampled with soxr: wide-band PESQ and the composite measures at 16 kHz, narrow-band PESQ
at 8 kHz, DNSMOS at 16 kHz; pystoi resamples to 10 kHz itself. A metric that is undefined for the
input (silent signal, too short, no speech found) raises :class:`~steadyvoice.errors.AudioError`
saying why; callers that know the file name prefix it.

:func:`score_pair` computes a set of named metrics for a (possibly multi-channel) pair. Multi-channel
audio is scored channel by channel and the per-channel scores are averaged.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from steadyvoice.audio import resample
from steadyvoice.errors import AudioError, ConfigError
from steadyvoice.eval.dnsmos import shared_dnsmos

__all__ = [
    "METRICS", "metric_columns", "parse_metrics", "score_pair",
    "si_sdr", "pesq_wb", "pesq_nb", "stoi", "estoi", "composite",
]

# Metric name (as given on the command line) -> the result columns it produces, in order.
METRICS: dict[str, tuple[str, ...]] = {
    "pesq_wb": ("pesq_wb",),
    "pesq_nb": ("pesq_nb",),
    "stoi": ("stoi",),
    "estoi": ("estoi",),
    "si_sdr": ("si_sdr",),
    "dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"),
    "composite": ("csig", "cbak", "covl"),
}
REFERENCE_FREE = frozenset({"dnsmos"})  # metrics that only look at the judged signal


def parse_metrics(names: Iterable[str]) -> list[str]:
    """Validate metric names (also accepts comma-separated items); keeps the order, drops repeats."""
    out: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in METRICS:
                raise ConfigError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}")
            if name not in out:
                out.append(name)
    if not out:
        raise ConfigError(f"no metric given; choose from {', '.join(METRICS)}")
    return out


def metric_columns(metrics: Iterable[str]) -> list[str]:
    """Result columns of ``metrics`` in order, e.g. ['pesq_wb', 'dnsmos_sig', ...]."""
    return [column for name in metrics for column in METRICS[name]]


# --------------------------------------------------------------------------------------------------
# SI-SDR


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., ICASSP 2019), zero-mean signals.

    Hand-written: it is three lines of linear algebra. The ratio is bounded to +-200 dB (identical or
    orthogonal signals) so that means and JSON stay finite.
    """
    est, ref = _pair(estimate, reference)
    ref = ref - ref.mean()
    est = est - est.mean()
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise AudioError("SI-SDR is undefined: the reference is silent (constant)")
    est_energy = float(est @ est)
    if est_energy == 0.0:
        raise AudioError("SI-SDR is undefined: the signal to judge is silent (constant)")
    target = (float(est @ ref) / ref_energy) * ref  # projection of est on ref
    noise = est - target
    floor = 1e-20 * est_energy  # target and noise energies add up to est_energy
    return float(10.0 * np.log10((target @ target + floor) / (noise @ noise + floor)))


# --------------------------------------------------------------------------------------------------
# PESQ (ITU-T P.862 / P.862.2 through the `pesq` package)


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (P.862.2 MOS-LQO, 1.04-4.64) at 16 kHz. Needs audio sampled at 16 kHz or more."""
    if sr < 16000:
        raise AudioError(f"wide-band PESQ needs audio sampled at 16 kHz or more, not {sr} Hz; use pesq_nb")
    return _pesq(estimate, reference, sr, 16000, "wb")


def pesq_nb(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Narrow-band PESQ (P.862 with the P.862.1 MOS-LQO mapping) at 8 kHz."""
    if sr < 8000:
        raise AudioError(f"narrow-band PESQ needs audio sampled at 8 kHz or more, not {sr} Hz")
    return _pesq(estimate, reference, sr, 8000, "nb")


def _pesq(estimate: np.ndarray, reference: np.ndarray, sr: int, rate: int, mode: str) -> float:
    import pesq as pesq_lib

    est, ref = _pair(estimate, reference)
    ref = resample(ref.astype(np.float32), sr, rate)
    est = resample(est.astype(np.float32), sr, rate)
    name = f"PESQ ({mode})"
    if not np.any(ref):
        raise AudioError(f"{name} is undefined: the reference is silent")
    if not np.any(est):
        raise AudioError(f"{name} is undefined: the signal to judge is silent")
    try:
        return float(pesq_lib.pesq(rate, ref, est, mode))  # the pesq package takes the reference first
    except pesq_lib.NoUtterancesError:
        raise AudioError(f"{name} found no speech in the reference or in the signal to judge") from None
    except pesq_lib.BufferTooShortError:
        raise AudioError(f"{name} needs at least 0.25 s of audio") from None
    except pesq_lib.PesqError as exc:
        raise AudioError(f"{name} failed: {_text(exc)}") from None


# --------------------------------------------------------------------------------------------------
# STOI / ESTOI (pystoi, which resamples to 10 kHz itself)


def stoi(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), 0-1."""
    return _stoi(estimate, reference, sr, extended=False)


def estoi(estimate: np.ndarray, reference: np.ndarray, sr: int) -> float:
    """Extended STOI (Jensen & Taal 2016), for modulated maskers; roughly 0-1."""
    return _stoi(estimate, reference, sr, extended=True)


def _stoi(estimate: np.ndarray, reference: np.ndarray, sr: int, extended: bool) -> float:
    from pystoi import stoi as pystoi_stoi

    est, ref = _pair(estimate, reference)
    name = "ESTOI" if extended else "STOI"
    if not np.any(ref):
        raise AudioError(f"{name} is undefined: the reference is silent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(ref, est, sr, extended=extended))  # pystoi takes the reference first
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        # pystoi returns 1e-5 with a warning; that number would silently drag means down.
        raise AudioError(f"{name} needs at least 0.4 s of speech in the reference (after removing silence)")
    return value


# --------------------------------------------------------------------------------------------------
# Composite measures (Hu & Loizou 2008)
#
# Hand-written: no PyPI package provides them in a usable state (checked: pysepm is not on PyPI; its
# fork pysepm-evo 0.1.1 is GPL, needs numba, no longer imports with current scipy and its composite()
# raises NameError; oqmscore 0.1 needs librosa and resamples the wrong signal; speech-metrics and
# sep-eval have no composite). This follows Loizou's composite.m (the MATLAB reference of "Speech
# Enhancement: Theory and Practice", with Pellom & Hansen's WSS/LLR/segSNR) frame for frame, vectorised
# over frames; on our test signals WSS, LLR and segSNR agree with pysepm-evo's to 1e-4. PESQ is the
# wide-band P.862.2 score and the measures are computed at 16 kHz, as in the usual VoiceBank-DEMAND
# evaluations. Ratings are clipped to the 1-5 scale.

COMPOSITE_RATE = 16000
_ALPHA = 0.95  # WSS and LLR average the best 95 % of frames
_CRIT_CENTER = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128, 1020.38,
    1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17,
    3597.63])
_CRIT_BANDWIDTH = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914,
    140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465,
    346.136])


def composite(estimate: np.ndarray, reference: np.ndarray, sr: int, *, pesq_wb_score: float | None = None) -> dict:
    """CSIG (signal distortion), CBAK (background intrusiveness), COVL (overall quality), each 1-5.

    ``pesq_wb_score``: the wide-band PESQ of this pair if already computed (saves the second run).
    The result also holds the parts: ``llr``, ``wss``, ``segsnr`` and ``pesq_wb``.
    """
    if sr < COMPOSITE_RATE:
        raise AudioError(f"the composite measures need audio sampled at 16 kHz or more, not {sr} Hz")
    est, ref = _pair(estimate, reference)
    if pesq_wb_score is None:
        pesq_wb_score = pesq_wb(est, ref, sr)
    x = resample(ref.astype(np.float32), sr, COMPOSITE_RATE).astype(np.float64) + np.finfo(float).eps
    y = resample(est.astype(np.float32), sr, COMPOSITE_RATE).astype(np.float64) + np.finfo(float).eps
    xf, yf = _frames(x, COMPOSITE_RATE), _frames(y, COMPOSITE_RATE)  # (F, win) each
    wss = _trimmed_mean(_wss(xf, yf, COMPOSITE_RATE))
    llr = _trimmed_mean(_llr(xf, yf, COMPOSITE_RATE))
    segsnr = float(np.mean(_segsnr(xf, yf)))
    if not np.isfinite([wss, llr, segsnr]).all():
        raise AudioError("the composite measures are undefined for these signals (digital silence)")
    p = float(pesq_wb_score)
    csig = 3.093 - 1.029 * llr + 0.603 * p - 0.009 * wss
    cbak = 1.634 + 0.478 * p - 0.007 * wss + 0.063 * segsnr
    covl = 1.594 + 0.805 * p - 0.512 * llr - 0.007 * wss
    return {
        "csig": float(np.clip(csig, 1.0, 5.0)),
        "cbak": float(np.clip(cbak, 1.0, 5.0)),
        "covl": float(np.clip(covl, 1.0, 5.0)),
        "llr": llr, "wss": wss, "segsnr": segsnr, "pesq_wb": p,
    }


def _frames(x: np.ndarray, sr: int) -> np.ndarray:
    """30 ms frames, 75 % overlap, Hanning-windowed, as composite.m: (F, win)."""
    win = int(round(0.03 * sr))
    skip = win // 4
    n_frames = int(np.floor(x.shape[0] / skip - win / skip))  # MATLAB `for k = 1:num_frames`
    if n_frames < 2:
        raise AudioError("the composite measures need at least 60 ms of audio")
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, win + 1) / (win + 1)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::skip][:n_frames]
    return frames * window


def _trimmed_mean(values: np.ndarray) -> float:
    keep = int(np.floor(values.shape[0] * _ALPHA + 0.5))  # MATLAB round()
    return float(np.mean(np.sort(values)[:keep]))


def _segsnr(xf: np.ndarray, yf: np.ndarray) -> np.ndarray:
    """Per-frame SNR in dB clamped to [-10, 35] (F,)."""
    eps = np.finfo(float).eps
    signal = np.sum(xf**2, axis=1)
    noise = np.sum((xf - yf) ** 2, axis=1)
    return np.clip(10.0 * np.log10(signal / (noise + eps) + eps), -10.0, 35.0)


def _wss(xf: np.ndarray, yf: np.ndarray, sr: int) -> np.ndarray:
    """Klatt's weighted spectral slope distance per frame (F,), 25 critical bands up to 4 kHz."""
    win = xf.shape[1]
    n_fft = int(2 ** np.ceil(np.log2(2 * win)))
    half = n_fft // 2
    bins = np.arange(half)
    f0 = np.floor(_CRIT_CENTER / (sr / 2) * half)  # (25,)
    bw = _CRIT_BANDWIDTH / (sr / 2) * half
    norm = np.log(_CRIT_BANDWIDTH[0]) - np.log(_CRIT_BANDWIDTH)
    filters = np.exp(-11.0 * ((bins[None, :] - f0[:, None]) / bw[:, None]) ** 2 + norm[:, None])  # (25, half)
    filters *= filters > np.exp(-30.0 / (2.0 * 2.303))  # cut below -30 dB

    def band_db(frames: np.ndarray) -> np.ndarray:  # (F, win) -> (F, 25)
        power = np.abs(np.fft.rfft(frames, n_fft, axis=1)[:, :half]) ** 2
        return 10.0 * np.log10(np.maximum(power @ filters.T, 1e-10))

    ex, ey = band_db(xf), band_db(yf)
    sx, sy = np.diff(ex, axis=1), np.diff(ey, axis=1)  # spectral slopes (F, 24)
    kmax, klocmax = 20.0, 1.0

    def weights(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
        w_max = kmax / (kmax + energy.max(axis=1, keepdims=True) - energy[:, :-1])
        w_loc = klocmax / (klocmax + _nearest_peak(energy, slope) - energy[:, :-1])
        return w_max * w_loc

    w = (weights(ex, sx) + weights(ey, sy)) / 2.0
    return np.sum(w * (sx - sy) ** 2, axis=1) / np.sum(w, axis=1)


def _nearest_peak(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Energy of the spectral peak nearest each band, searching up a rising and down a falling slope.

    Mirrors composite.m's loops exactly (including taking ``energy(n-1)`` on the way up): band i with a
    positive slope takes energy[n-1] for the first n >= i whose slope is <= 0 (n = 24 if none); band i
    with a non-positive slope takes energy[n+1] for the last n <= i whose slope is > 0 (n = -1 if none).
    """
    n_frames, n_slopes = slope.shape  # (F, 24)
    rows = np.arange(n_frames)
    up_stop = np.empty((n_frames, n_slopes), dtype=int)
    nxt = np.full(n_frames, n_slopes)
    for k in range(n_slopes - 1, -1, -1):
        nxt = np.where(slope[:, k] <= 0, k, nxt)
        up_stop[:, k] = nxt
    down_stop = np.empty((n_frames, n_slopes), dtype=int)
    prev = np.full(n_frames, -1)
    for k in range(n_slopes):
        prev = np.where(slope[:, k] > 0, k, prev)
        down_stop[:, k] = prev
    index = np.where(slope > 0, up_stop - 1, down_stop + 1)
    return energy[rows[:, None], index]


def _llr(xf: np.ndarray, yf: np.ndarray, sr: int) -> np.ndarray:
    """Log-likelihood ratio of LPC models per frame (F,); order 10 below 10 kHz, 16 above."""
    order = 10 if sr < 10000 else 16
    r_x, a_x = _lpc(xf, order)
    _, a_y = _lpc(yf, order)
    lags = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])
    toeplitz = r_x[:, lags]  # (F, P+1, P+1) autocorrelation matrix of the clean frame
    numerator = np.einsum("fi,fij,fj->f", a_y, toeplitz, a_y)
    denominator = np.einsum("fi,fij,fj->f", a_x, toeplitz, a_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(numerator / denominator)


def _lpc(frames: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation (F, P+1) and LPC polynomial [1, -a1, ..., -aP] (F, P+1) by Levinson-Durbin."""
    n = frames.shape[1]
    r = np.stack([np.sum(frames[:, : n - k] * frames[:, k:], axis=1) for k in range(order + 1)], axis=1)
    a = np.zeros((frames.shape[0], order))
    err = r[:, 0].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(order):
            acc = np.sum(a[:, :i] * r[:, i:0:-1], axis=1)
            k = (r[:, i + 1] - acc) / err
            a_prev = a[:, :i].copy()
            a[:, i] = k
            a[:, :i] = a_prev - k[:, None] * a_prev[:, ::-1]
            err = (1.0 - k * k) * err
    return r, np.concatenate([np.ones((frames.shape[0], 1)), -a], axis=1)


# --------------------------------------------------------------------------------------------------
# All metrics of a pair


def score_pair(
    estimate: np.ndarray,
    reference: np.ndarray | None,
    sr: int,
    metrics: Iterable[str] = tuple(METRICS),
    *,
    dnsmos=None,
    est_name: str = "estimate",
) -> dict[str, float]:
    """Score ``estimate`` against ``reference`` (same shape, (N,) or (N, C), rate ``sr``) -> {column: value}.

    Each channel is scored on its own and the scores are averaged over channels. ``dnsmos``: a
    :class:`~steadyvoice.eval.dnsmos.DNSMOS` to use (default: the process-wide one). ``reference`` may
    be None when only reference-free metrics (dnsmos) are asked for. ``est_name`` names the judged
    signal in error messages ("estimate", "noisy").
    """
    metrics = parse_metrics(metrics)
    intrusive = [m for m in metrics if m not in REFERENCE_FREE]
    est = _channels(estimate)
    if intrusive:
        if reference is None:
            raise AudioError(f"{', '.join(intrusive)} need a reference signal")
        ref = _channels(reference)
        if ref.shape != est.shape:
            raise AudioError(f"reference shape {ref.shape} and {est_name} shape {est.shape} differ")
        for c in range(ref.shape[1]):
            where = f" (channel {c})" if ref.shape[1] > 1 else ""
            if not np.any(ref[:, c]):
                raise AudioError(f"the reference is silent (all samples zero){where}: "
                                 f"{', '.join(intrusive)} are undefined")
    for c in range(est.shape[1]):
        where = f" (channel {c})" if est.shape[1] > 1 else ""
        if not np.any(est[:, c]):
            raise AudioError(f"the {est_name} is silent (all samples zero){where}; nothing to score")
    if "dnsmos" in metrics and dnsmos is None:
        dnsmos = shared_dnsmos()

    per_channel: list[dict[str, float]] = []
    for c in range(est.shape[1]):
        r = ref[:, c] if intrusive else None
        e = est[:, c]
        out: dict[str, float] = {}
        for name in metrics:
            try:
                values = _one_metric(name, e, r, sr, dnsmos, out)
            except AudioError as exc:
                raise AudioError(f"{name}: {exc}") from None
            bad = [key for key, value in values.items() if not np.isfinite(value)]
            if bad:  # never let a NaN into means, CSV or JSON
                raise AudioError(f"{name}: {', '.join(bad)} came out as {values[bad[0]]}; cannot score this pair")
            out.update(values)
        per_channel.append(out)
    return {key: float(np.mean([ch[key] for ch in per_channel])) for key in per_channel[0]}


def _one_metric(name: str, est, ref, sr: int, dnsmos, done: dict) -> dict[str, float]:
    if name == "pesq_wb":
        return {"pesq_wb": pesq_wb(est, ref, sr)}
    if name == "pesq_nb":
        return {"pesq_nb": pesq_nb(est, ref, sr)}
    if name == "stoi":
        return {"stoi": stoi(est, ref, sr)}
    if name == "estoi":
        return {"estoi": estoi(est, ref, sr)}
    if name == "si_sdr":
        return {"si_sdr": si_sdr(est, ref)}
    if name == "composite":
        c = composite(est, ref, sr, pesq_wb_score=done.get("pesq_wb"))
        return {"csig": c["csig"], "cbak": c["cbak"], "covl": c["covl"]}
    if name == "dnsmos":
        d = dnsmos(est, sr)
        return {"dnsmos_sig": d["sig"], "dnsmos_bak": d["bak"], "dnsmos_ovrl": d["ovrl"], "dnsmos_p808": d["p808"]}
    raise ConfigError(f"unknown metric '{name}'")  # parse_metrics prevents this


# --------------------------------------------------------------------------------------------------
# helpers


def _pair(estimate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, reference) as float64 1-D arrays of the same, non-zero length."""
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1:
        raise AudioError(f"expected two 1-D signals, got shapes {est.shape} and {ref.shape}")
    if est.shape != ref.shape:
        raise AudioError(f"the signals differ in length: {est.shape[0]} and {ref.shape[0]} samples")
    if est.shape[0] == 0:
        raise AudioError("empty signals")
    return est, ref


def _channels(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise AudioError(f"expected audio of shape (N,) or (N, C), got {x.shape}")
    return x


def _text(exc: Exception) -> str:
    msg = exc.args[0] if exc.args else ""
    if isinstance(msg, bytes):
        msg = msg.decode(errors="replace")
    return str(msg) or type(exc).__name__
