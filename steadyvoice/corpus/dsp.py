"""Small signal steps shared by the corpus builder: load as mono at a rate, high-pass, trim silence, set levels.

The level and trimming functions are hand-written on numpy because no installed library does them:
the speech level follows the idea of ITU-T P.56 (the level over *active* frames, so that pauses do
not lower it) in a simplified frame-based form, and the trimming keeps a short margin around the
frames that are within ``threshold_db`` of the loudest frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steadyvoice import audio

FRAME_SECONDS = 0.02
MAX_PEAK = 0.99


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read ``path``, average the channels, resample to ``sample_rate`` and remove DC -> float32 (N,)."""
    data, sr = audio.read_audio(path)
    x = data.mean(axis=1).astype(np.float32)
    x = audio.resample(x, sr, sample_rate)
    return (x - np.float32(x.mean())).astype(np.float32)


def highpass(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass (scipy), so speech is not shifted against its mixture."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, cutoff_hz, btype="highpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def frame_energies_db(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean-square energy (dB) of consecutive 20 ms frames; a final partial frame is dropped."""
    n = max(1, int(FRAME_SECONDS * sample_rate))
    frames = len(x) // n
    if frames == 0:
        return np.array([10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)])
    e = np.mean(np.square(x[: frames * n].astype(np.float64).reshape(frames, n)), axis=1)
    return 10 * np.log10(e + 1e-20)


def active_level_db(x: np.ndarray, sample_rate: int, floor_db: float = 35.0) -> float:
    """Level (dBFS, RMS) of the frames no more than ``floor_db`` below the loudest frame."""
    e = frame_energies_db(x, sample_rate)
    active = e[e >= e.max() - floor_db]
    return float(10 * np.log10(np.mean(10 ** (active / 10))))


def trim_silence(x: np.ndarray, sample_rate: int, threshold_db: float = 40.0, margin: float = 0.1) -> np.ndarray:
    """Cut leading/trailing stretches more than ``threshold_db`` below the loudest frame, keeping ``margin`` s."""
    e = frame_energies_db(x, sample_rate)
    loud = np.flatnonzero(e >= e.max() - threshold_db)
    n = max(1, int(FRAME_SECONDS * sample_rate))
    pad = int(margin * sample_rate)
    start = max(0, loud[0] * n - pad)
    end = min(len(x), (loud[-1] + 1) * n + pad)
    return x[start:end]


def set_active_level(x: np.ndarray, sample_rate: int, target_dbfs: float) -> tuple[np.ndarray, float]:
    """Scale ``x`` to an active level of ``target_dbfs`` (lower if the peak would pass MAX_PEAK).

    Returns (scaled signal, level reached in dBFS).
    """
    level = active_level_db(x, sample_rate)
    gain_db = target_dbfs - level
    peak = float(np.abs(x).max()) * 10 ** (gain_db / 20)
    if peak > MAX_PEAK:
        gain_db -= 20 * np.log10(peak / MAX_PEAK)
    return (x * np.float32(10 ** (gain_db / 20))).astype(np.float32), level + gain_db


def set_rms(x: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Scale ``x`` to an RMS of ``target_dbfs`` (lower if the peak would pass MAX_PEAK)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-12
    gain = 10 ** (target_dbfs / 20) / rms
    gain = min(gain, MAX_PEAK / (float(np.abs(x).max()) + 1e-12))
    return (x * np.float32(gain)).astype(np.float32)
