"""On-the-fly mixing of clean speech and noise: pure functions of their inputs and a numpy Generator.

Nothing here reads files or touches a global random state; :mod:`steadyvoice.data.datasets` reads the
audio and passes a Generator seeded from (seed, epoch, index), which makes every example reproducible.
Signals are float32 1-D arrays at the model rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

# Mean power below which a crop counts as silent (about -100 dBFS): its SNR would be meaningless.
SILENT_POWER = 1e-10


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one Generator behind example ``index`` of ``epoch``: same inputs, same example, in any process."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def loop_to_length(x: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A ``length``-sample stretch of ``x`` repeated end to end, starting at a random offset -> (y, offset)."""
    reps = -(-(length + len(x)) // len(x))
    offset = int(rng.integers(0, len(x)))
    return np.tile(x, reps)[offset : offset + length], offset


def scale_noise_to_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that 10·log10(P(speech) / P(noise)) == snr_db (powers over the whole crop)."""
    p_speech, p_noise = power(speech), power(noise)
    scale = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (noise * scale).astype(np.float32)


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    return 10.0 * float(np.log10(power(speech) / max(power(noise), 1e-20)))


def apply_gain(noisy: np.ndarray, target: np.ndarray, gain_db: float, max_peak: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale the mixture and its target together by ``gain_db``, then down to ``max_peak`` if either clips.

    Returns (noisy, target, clip_scale); clip_scale is 1.0 when no protection was needed. Both signals get
    the same factor, so the SNR of the pair is unchanged.
    """
    g = 10.0 ** (gain_db / 20.0)
    peak = max(float(np.abs(noisy).max()), float(np.abs(target).max())) * g
    clip_scale = max_peak / peak if peak > max_peak else 1.0
    k = np.float32(g * clip_scale)
    return noisy * k, target * k, clip_scale


# ---------------------------------------------------------------- reverberation


@dataclass(frozen=True)
class RoomConfig:
    """Ranges random shoebox rooms are drawn from (see DataConfig.reverb_* for the user-facing names)."""

    rt60: tuple[float, float] = (0.2, 0.8)
    room_min: tuple[float, float, float] = (3.0, 3.0, 2.5)
    room_max: tuple[float, float, float] = (10.0, 10.0, 4.0)
    max_order: int = 50  # image-source order cap: higher gives longer tails in small rooms, at a cost
    early_ms: float = 50.0  # the target keeps the direct path and this much after it
    wall_margin: float = 0.5  # metres between a wall and the source or microphone
    min_distance: float = 0.5  # metres between source and microphone


def simulate_rir(rng: np.random.Generator, sample_rate: int, room: RoomConfig) -> tuple[np.ndarray, dict]:
    """A room impulse response of a random shoebox room (pyroomacoustics image-source method).

    Returns (rir float32, facts) with facts = room dimensions, rt60 asked, source/mic positions.
    """
    import pyroomacoustics as pra  # here: a training dependency (the `train` extra), not needed to import this module

    for _ in range(20):
        dims = rng.uniform(room.room_min, room.room_max)
        rt60 = float(rng.uniform(*room.rt60))
        lo = np.full(3, room.wall_margin)
        src = rng.uniform(lo, dims - room.wall_margin)
        mic = rng.uniform(lo, dims - room.wall_margin)
        if np.linalg.norm(src - mic) < room.min_distance:
            continue
        try:
            absorption, order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # rt60 impossible for this room (too large a room for so short an rt60)
            continue
        shoebox = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                              max_order=min(order, room.max_order))
        shoebox.add_source(src)
        shoebox.add_microphone(mic)
        shoebox.compute_rir()
        rir = np.asarray(shoebox.rir[0][0], dtype=np.float32)
        facts = {"room": [round(float(d), 3) for d in dims], "rt60": rt60,
                 "source": [round(float(v), 3) for v in src], "mic": [round(float(v), 3) for v in mic]}
        return rir, facts
    raise RuntimeError("could not draw a valid room in 20 attempts; check data.reverb_rt60 / reverb_room_*")


def split_rir(rir: np.ndarray, sample_rate: int, early_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """(full, early) impulse responses, both starting at the direct-path peak and scaled so it is 1.

    ``early`` is ``full`` cut ``early_ms`` after the direct peak: convolving the clean speech with it gives
    the training target (direct sound + early reflections, which listeners hear as part of the voice);
    the late tail is what the network learns to remove.
    """
    peak = int(np.argmax(np.abs(rir)))
    full = rir[peak:] / rir[peak]
    early = full[: round(early_ms * 1e-3 * sample_rate) + 1].copy()
    return full.astype(np.float32), early.astype(np.float32)


def reverberate(clean: np.ndarray, full: np.ndarray, early: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech for the mixture, early-reverberant target), both cut to len(clean)."""
    n = len(clean)
    reverberant = fftconvolve(clean, full)[:n].astype(np.float32)
    target = fftconvolve(clean, early)[:n].astype(np.float32)
    return reverberant, target
