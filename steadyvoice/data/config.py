"""The ``data:`` section of a training config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    # Training input: clean speech + noise mixed on the fly, or ClearerVoice pair lists (not both).
    # Each entry is a directory (searched recursively), an audio file, or a list file (one path per line).
    clean: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)  # lines "noisy_path clean_path [duration]"
    # Validation input, same forms; empty = mix the validation set from the training files (with valid_seed).
    valid_clean: list[str] = field(default_factory=list)
    valid_noise: list[str] = field(default_factory=list)
    valid_pairs: list[str] = field(default_factory=list)

    crop_seconds: float = 4.0  # training example length
    epoch_size: int = 0  # examples per epoch; 0 = one per clean file (or per pair)
    snr_db: tuple[float, float] = (-5.0, 20.0)  # SNR drawn uniformly in this range
    speech_level_db: float = -25.0  # speech is first normalised to this RMS level (dBFS) ...
    gain_db: tuple[float, float] = (-10.0, 10.0)  # ... then mixture and target get a random gain in this range
    max_peak: float = 0.99  # clipping protection: mixture and target scaled down together above this peak

    # Separation (models whose task is separation): talkers of different speakers, mixed on the fly from
    # data.clean; noise (data.noise, optional) at snr_db against their sum.
    level_diff_db: tuple[float, float] = (-5.0, 5.0)  # level of talker 2 (and 3, ...) relative to talker 1
    speaker_from: Literal["auto", "manifest", "parent", "grandparent"] = "auto"  # see steadyvoice.data.speakers

    reverb_prob: float = 0.0  # probability of simulating a room (pyroomacoustics) for an example
    reverb_rt60: tuple[float, float] = (0.2, 0.8)
    reverb_room_min: tuple[float, float, float] = (3.0, 3.0, 2.5)
    reverb_room_max: tuple[float, float, float] = (10.0, 10.0, 4.0)
    reverb_max_order: int = 50
    reverb_early_ms: float = 50.0  # the target keeps the direct path and this many ms after it

    resample: Literal["soxr", "error"] = "soxr"  # files at another rate: resample with soxr, or refuse
    scan_samples: bool = True  # read every file once at start to find silent/corrupt files (slow on huge corpora)
    max_retries: int = 5  # a bad file mid-run is skipped and another drawn, at most this many times per example

    valid_count: int = 64  # validation examples (pair lists: 0 = every pair)
    valid_seconds: float = 0.0  # validation example length; 0 = crop_seconds
    valid_seed: int = 20250101  # the validation set is a pure function of this seed
    snr_buckets: list[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0])  # edges for per-SNR losses

    def __post_init__(self) -> None:
        if self.pairs and (self.clean or self.noise):
            raise ValueError("give either data.pairs or data.clean + data.noise, not both")
        if self.crop_seconds <= 0:
            raise ValueError(f"data.crop_seconds={self.crop_seconds}: must be positive")
        if self.valid_seconds < 0:
            raise ValueError(f"data.valid_seconds={self.valid_seconds}: must be 0 (= crop) or positive")
        for name in ("snr_db", "gain_db", "reverb_rt60", "level_diff_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"data.{name}={[lo, hi]}: the low end is above the high end")
        if self.reverb_rt60[0] <= 0:
            raise ValueError(f"data.reverb_rt60={list(self.reverb_rt60)}: must be positive")
        if any(a > b for a, b in zip(self.reverb_room_min, self.reverb_room_max)):
            raise ValueError("data.reverb_room_min must not exceed data.reverb_room_max")
        if min(self.reverb_room_min) < 1.0:
            raise ValueError(f"data.reverb_room_min={list(self.reverb_room_min)}: rooms must be at least 1 m")
        if not 0.0 <= self.reverb_prob <= 1.0:
            raise ValueError(f"data.reverb_prob={self.reverb_prob}: must be in [0, 1]")
        if not 0.0 < self.max_peak <= 1.0:
            raise ValueError(f"data.max_peak={self.max_peak}: must be in (0, 1]")
        if self.epoch_size < 0 or self.valid_count < 0 or self.max_retries < 0:
            raise ValueError("data.epoch_size, data.valid_count and data.max_retries must not be negative")
        if self.reverb_max_order < 0 or self.reverb_early_ms < 0:
            raise ValueError("data.reverb_max_order and data.reverb_early_ms must not be negative")
        if list(self.snr_buckets) != sorted(self.snr_buckets):
            raise ValueError(f"data.snr_buckets={self.snr_buckets}: edges must be increasing")
