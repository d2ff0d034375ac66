"""DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS: reference-free quality scores.

The ONNX models are Microsoft's DNSMOS models as shipped inside the ``speechmos`` PyPI package
(``speechmos/dnsmos_models/`` and ``speechmos/pdnsmos_models/``); nothing is downloaded. They run through
onnxruntime. The pre-processing follows ``speechmos/dnsmos.py`` (itself Microsoft's ``dnsmos_local.py``):

- audio at 16 kHz (we resample with soxr), mono, clipped to [-1, 1];
- clips shorter than 9.01 s are repeated (concatenated with themselves) until they are long enough;
- segments of 9.01 s (144160 samples) start every second, ``floor(seconds) - 9`` of them (at least one);
  the P.835 model takes the raw segment, the P.808 model a 120-band log-mel spectrogram of the segment
  without its last 160 samples;
- raw P.835 outputs are mapped to MOS by the third-order (personalized) or second-order polynomials;
- the clip's scores are the means over segments.

Scores equal speechmos 0.0.1.1 (with librosa 0.11) to within 3e-7 for clips up to 16 s. Two
deliberate differences:
- segment bounds are integers. speechmos computes ``int((idx + 9.01) * 16000)`` in floating point,
  which for some segments (idx 7-23, 119-121, ...: clips longer than 16 s) comes out one sample short,
  and it then silently skips those segments (a 25 s clip differs by up to 0.03 MOS).
- speechmos gets the mel spectrogram from librosa. librosa (with numba, llvmlite and scikit-learn) is a
  large dependency for one 120x161 matrix, so :func:`mel_spectrogram_db` computes the same thing
  (librosa >= 0.10 defaults: periodic Hann window, centred frames with zero padding, Slaney mel scale
  and area normalisation, ``power_to_db(ref=max, amin=1e-10, top_db=80)``) in numpy; it matches
  librosa 0.11 to 3e-7 on the model input.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from steadyvoice.audio import resample
from steadyvoice.errors import AudioError, ModelError

__all__ = ["DNSMOS", "SAMPLE_RATE", "model_dir", "shared_dnsmos", "mel_spectrogram_db"]

SAMPLE_RATE = 16000
SEGMENT = 144160  # 9.01 s at 16 kHz: the P.835 model's input length
HOP = SAMPLE_RATE  # a new segment every second
P808_FRAME, P808_HOP, P808_MELS = 320, 160, 120

# Raw P.835 model output -> MOS (numpy.poly1d coefficients, highest power first), from speechmos/DNSMOS.
_POLY = {
    False: {  # dnsmos_models/sig_bak_ovr.onnx
        "sig": (-0.08397278, 1.22083953, 0.0052439),
        "bak": (-0.13166888, 1.60915514, -0.39604546),
        "ovrl": (-0.06766283, 1.11546468, 0.04602535),
    },
    True: {  # pdnsmos_models/sig_bak_ovr.onnx (personalized: interfering talkers count as noise)
        "sig": (-0.01019296, 0.02751166, 1.19576786, -0.24348726),
        "bak": (-0.04976499, 0.44276479, -0.1644611, 0.96883132),
        "ovrl": (-0.00533021, 0.005101, 1.18058466, -0.11236046),
    },
}


def model_dir() -> Path:
    """The directory of the installed ``speechmos`` package, which holds the ONNX models."""
    try:
        import speechmos
    except ImportError:
        raise ModelError(
            "DNSMOS needs the ONNX models shipped by the 'speechmos' package: pip install speechmos "
            "(or pip install 'steadyvoice[eval]')"
        ) from None
    return Path(speechmos.__file__).resolve().parent


class DNSMOS:
    """Callable DNSMOS scorer: ``DNSMOS()(audio, sr) -> {"sig", "bak", "ovrl", "p808"}``.

    The two onnxruntime sessions are created once, in the constructor; reuse one instance for many
    files (:func:`shared_dnsmos` keeps one per process). ``num_threads`` sets onnxruntime's intra-op
    threads (None: onnxruntime's default, all cores; 1 in parallel workers).
    """

    def __init__(self, personalized: bool = False, num_threads: int | None = None,
                 models: str | Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("DNSMOS needs onnxruntime: pip install onnxruntime") from None
        root = Path(models) if models is not None else model_dir()
        primary = root / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        p808 = root / "dnsmos_models" / "model_v8.onnx"
        for path in (primary, p808):
            if not path.is_file():
                raise ModelError(f"{path}: DNSMOS model file missing; reinstall speechmos")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.personalized = personalized
        self._primary = ort.InferenceSession(str(primary), sess_options=options, providers=providers)
        self._p808 = ort.InferenceSession(str(p808), sess_options=options, providers=providers)
        self._poly = {k: np.poly1d(c) for k, c in _POLY[personalized].items()}

    def __call__(self, audio: np.ndarray, sr: int) -> dict[str, float]:
        """Score mono ``audio`` (N,) at rate ``sr``; returns MOS values on the 1-5 scale."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise AudioError(f"DNSMOS scores one channel at a time; got an array of shape {audio.shape}")
        if audio.size == 0:
            raise AudioError("DNSMOS: empty signal")
        audio = np.clip(resample(audio, sr, SAMPLE_RATE), -1.0, 1.0)
        while audio.shape[0] < SEGMENT:  # short clips are repeated, as in speechmos
            audio = np.concatenate([audio, audio])
        # As many segments as speechmos takes: int(floor(len / 16000) - 9.01) + 1.
        n_segments = max(1, audio.shape[0] // HOP - 9)
        raw, p808 = [], []
        for start in range(0, n_segments * HOP, HOP):  # one segment at a time: bounded memory
            segment = audio[start:start + SEGMENT]  # (144160,)
            mel = mel_spectrogram_db(segment[:-P808_HOP])  # (900, 120)
            raw.append(self._primary.run(None, {"input_1": segment[None]})[0][0])  # (3,): sig, bak, ovrl
            p808.append(self._p808.run(None, {"input_1": mel[None]})[0][0, 0])
        raw = np.asarray(raw, dtype=np.float64)  # (S, 3)
        return {
            "sig": float(np.mean(self._poly["sig"](raw[:, 0]))),
            "bak": float(np.mean(self._poly["bak"](raw[:, 1]))),
            "ovrl": float(np.mean(self._poly["ovrl"](raw[:, 2]))),
            "p808": float(np.mean(p808)),
        }


_SHARED: dict[tuple[bool, int | None], DNSMOS] = {}


def shared_dnsmos(personalized: bool = False, num_threads: int | None = None) -> DNSMOS:
    """One :class:`DNSMOS` per process and setting, created on first use (sessions are not per file)."""
    key = (personalized, num_threads)
    if key not in _SHARED:
        _SHARED[key] = DNSMOS(personalized=personalized, num_threads=num_threads)
    return _SHARED[key]


def mel_spectrogram_db(audio: np.ndarray) -> np.ndarray:
    """(N,) 16 kHz audio -> (frames, 120) scaled log-mel spectrogram, the P.808 model's input.

    Equals speechmos' ``(librosa.power_to_db(melspectrogram(y, sr=16000, n_fft=321, hop_length=160,
    n_mels=120), ref=np.max) + 40) / 40`` transposed (see the module docstring for why not librosa).
    """
    n_fft = P808_FRAME + 1  # 321, as in speechmos
    x = np.pad(np.asarray(audio, dtype=np.float64), n_fft // 2)  # centred frames, zero padding
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::P808_HOP]  # (T, 321)
    power = np.abs(np.fft.rfft(frames * _hann(n_fft), axis=-1)) ** 2  # (T, 161)
    mel = power @ _mel_filters(SAMPLE_RATE, n_fft, P808_MELS).T  # (T, 120)
    amin, top_db = 1e-10, 80.0
    db = 10.0 * np.log10(np.maximum(mel, amin)) - 10.0 * np.log10(max(amin, mel.max()))
    db = np.maximum(db, db.max() - top_db)
    return ((db + 40.0) / 40.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), librosa's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = f / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=None)
def _mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular Slaney-normalised filters from 0 Hz to sr/2 (librosa.filters.mel)."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # (F,)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))  # (M+2,)
    widths = np.diff(mel_freqs)  # (M+1,)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]  # (M+2, F)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (M, F)
    return weights * (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
