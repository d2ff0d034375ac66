"""Room impulse responses of random shoebox rooms (pyroomacoustics, image-source method).

The room drawing is the trainer's own (:func:`steadyvoice.data.mixing.simulate_rir`), so the stored
rooms and the rooms the trainer simulates on the fly come from the same ranges and code.
"""

from __future__ import annotations

import numpy as np

from steadyvoice.data.mixing import RoomConfig, simulate_rir

PEAK = 0.9  # stored RIRs are scaled to this peak (PCM_16 keeps ~90 dB of the decay)


def random_rir(rng: np.random.Generator, sample_rate: int, rt60: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """One RIR (float32, peak PEAK) and its parameters (room, rt60 asked and measured, positions)."""
    import pyroomacoustics as pra  # here: a training dependency (the `train` extra), not needed to import this module

    rir, facts = simulate_rir(rng, sample_rate, RoomConfig(rt60=rt60))
    measured = float(pra.experimental.measure_rt60(rir, fs=sample_rate))
    scale = PEAK / float(np.abs(rir).max())
    facts = {**facts, "rt60": round(facts["rt60"], 4), "rt60_measured": round(measured, 4),
             "scale": scale, "simulator": f"pyroomacoustics {pra.__version__} ShoeBox image-source"}
    return (rir * scale).astype(np.float32), facts
