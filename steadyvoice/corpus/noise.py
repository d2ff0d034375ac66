"""Noise: synthetic families (white, pink, brown, hum, clicks, babble) and scenes cut from real recordings.

Every generator is a pure function of its arguments and a numpy Generator, returning float32 (N,) at
an RMS of about -30 dBFS (the trainer rescales noise to the SNR it draws, so only the shape matters).
The coloured-noise, hum and click generators are hand-written: each is a few lines of numpy, and no
installed library makes them (scipy has no coloured-noise generator).
"""

from __future__ import annotations

import numpy as np

from steadyvoice.corpus import dsp

NOISE_RMS_DBFS = -30.0
COLOUR_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


def coloured(n: int, sample_rate: int, exponent: float, rng: np.random.Generator, *,
             corner_hz: float = 20.0) -> np.ndarray:
    """Gaussian noise whose power spectral density falls as 1/f**exponent above ``corner_hz``.

    Pink (1) falls 3 dB per octave, brown (2) 6 dB per octave. Below ``corner_hz`` the spectrum is flat,
    so brown noise does not drift like a random walk.
    """
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum *= np.maximum(freqs, corner_hz) ** (-exponent / 2.0)  # amplitude ~ f**(-exponent/2)
    return np.fft.irfft(spectrum, n).astype(np.float32)


def slow_envelope(n: int, sample_rate: int, rng: np.random.Generator, depth_db: float) -> np.ndarray:
    """A random gain curve wandering over ``depth_db`` at 0.1-2 Hz (makes stationary noise less so)."""
    points = max(2, int(n / sample_rate * rng.uniform(0.1, 2.0)) + 2)
    db = rng.uniform(-depth_db, 0.0, points)
    curve = np.interp(np.linspace(0, points - 1, n), np.arange(points), db)
    return (10 ** (curve / 20)).astype(np.float32)


def colour_noise(family: str, n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    x = coloured(n, sample_rate, COLOUR_EXPONENT[family], rng)
    facts: dict = {"exponent": COLOUR_EXPONENT[family]}
    if rng.random() < 0.5:
        depth = float(rng.uniform(3, 15))
        x = x * slow_envelope(n, sample_rate, rng, depth)
        facts["modulation_db"] = round(depth, 2)
    return dsp.set_rms(x, NOISE_RMS_DBFS), facts


def hum(n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Mains hum: a 50 or 60 Hz fundamental with decaying harmonics, slight drift, and a faint hiss."""
    f0 = float(rng.choice([50.0, 60.0]) * (1 + rng.uniform(-0.005, 0.005)))
    harmonics = int(rng.integers(4, 25))
    decay = float(rng.uniform(0.5, 1.5))
    odd_boost = float(rng.uniform(1.0, 3.0))  # transformer buzz is rich in odd harmonics
    t = np.arange(n) / sample_rate
    drift = 1 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * f0 * np.cumsum(drift) / sample_rate
    x = np.zeros(n)
    for k in range(1, harmonics + 1):
        if k * f0 >= sample_rate / 2:
            break
        amp = k ** (-decay) * (odd_boost if k % 2 else 1.0)
        x += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    x = x / np.sqrt(np.mean(x**2)) + 10 ** (-rng.uniform(25, 45) / 20) * rng.standard_normal(n)
    facts = {"f0": round(f0, 3), "harmonics": harmonics, "decay": round(decay, 3), "odd_boost": round(odd_boost, 3)}
    return dsp.set_rms(x.astype(np.float32), NOISE_RMS_DBFS), facts


def clicks(n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Clicks and crackle: Poisson-timed short decaying bursts of random size over a faint pink bed."""
    rate = float(np.exp(rng.uniform(np.log(1.0), np.log(40.0))))  # events per second
    count = int(rng.poisson(rate * n / sample_rate))
    x = coloured(n, sample_rate, 1.0, rng) * 10 ** (-rng.uniform(30, 50) / 20) / 0.05
    for _ in range(count):
        length = max(2, int(sample_rate * rng.uniform(0.0003, 0.004)))
        start = int(rng.integers(0, max(1, n - length)))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
        x[start:start + length] += 10 ** (-rng.uniform(0, 30) / 20) * burst
    facts = {"rate_per_s": round(rate, 3), "events": count}
    return dsp.set_rms(x.astype(np.float32), NOISE_RMS_DBFS), facts


def babble(utterances: list[np.ndarray], n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Several talkers at once: each utterance looped from a random offset, at random levels within 6 dB."""
    x = np.zeros(n, dtype=np.float64)
    gains = []
    for u in utterances:
        reps = -(-(n + len(u)) // len(u))
        offset = int(rng.integers(0, len(u)))
        g = float(rng.uniform(-6, 0))
        gains.append(round(g, 2))
        x += 10 ** (g / 20) * np.tile(u, reps)[offset:offset + n] / (np.sqrt(np.mean(u.astype(np.float64) ** 2)) + 1e-9)
    return dsp.set_rms(x.astype(np.float32), NOISE_RMS_DBFS), {"talkers": len(utterances), "gains_db": gains}


def synthetic(family: str, n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One synthetic noise of ``family`` (white, pink, brown, hum, clicks) -> (samples, facts)."""
    if family in COLOUR_EXPONENT:
        return colour_noise(family, n, sample_rate, rng)
    if family == "hum":
        return hum(n, sample_rate, rng)
    if family == "clicks":
        return clicks(n, sample_rate, rng)
    raise ValueError(f"unknown synthetic noise family {family!r}")


def segment(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    """``n`` samples of a long recording from ``offset``."""
    return dsp.set_rms(x[offset:offset + n], NOISE_RMS_DBFS)


def scene(events: list[np.ndarray], gaps: list[int], n: int) -> np.ndarray:
    """Short recordings laid end to end with the given gaps (samples) before each, cut or padded to ``n``."""
    x = np.zeros(n, dtype=np.float32)
    pos = 0
    for event, gap in zip(events, gaps, strict=True):
        pos += gap
        if pos >= n:
            break
        take = min(len(event), n - pos)
        x[pos:pos + take] += event[:take] / (np.abs(event).max() + 1e-9)
        pos += take
    return dsp.set_rms(x, NOISE_RMS_DBFS)
