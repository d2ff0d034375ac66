"""What a corpus build is asked to make. The manifest records it; the same request gives the same corpus."""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "valid", "test")

# Clean-speech sources: real recordings from Debian packages (see sources.py) and TTS engines (tts.py).
REAL_SPEECH = ("asterisk", "hedgewars", "kajongg", "ktuberling", "klettres", "codec2")
INTL_SPEECH = ("klettres-intl", "ktuberling-intl")  # other languages, train split only; not in the default set
TTS_ENGINES = ("flite", "festival", "espeak-ng")
# Noise: real recordings from Debian packages and synthetic families (noise.py).
REAL_NOISE = ("minetest", "lincity", "wesnoth", "etr", "freeciv", "hedgewars-sfx", "opsound")
SYNTHETIC_NOISE = ("white", "pink", "brown", "hum", "clicks", "babble")


@dataclass
class CorpusConfig:
    hours: float = 1.0  # approximate total clean speech over all splits
    seed: int = 0
    sample_rate: int = 16000
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, valid, test
    speech: list[str] = field(default_factory=lambda: [*REAL_SPEECH, *TTS_ENGINES])
    noise: list[str] = field(default_factory=lambda: [*REAL_NOISE, *SYNTHETIC_NOISE])
    real_speech_fraction: float = 0.6  # share of each split's speech taken from real recordings, when available
    speech_level_dbfs: float = -26.0  # active speech level of every clean file
    # Every clean file is high-passed here (0 = off): some real recordings carry rumble below the speech
    # band (up to 40% of a clip's energy under 50 Hz), which a clean reference must not ask a model to keep.
    speech_highpass_hz: float = 60.0
    noise_ratio: float = 0.5  # seconds of noise per second of clean speech, per split
    noise_seconds: float = 10.0  # length of every noise file
    real_noise_fraction: float = 0.6  # share of noise files cut from real recordings, when available
    min_noise_files: int = 6  # per split, so that small corpora still get every noise family
    rirs_per_hour: float = 300.0  # room impulse responses per hour of the split's speech
    min_rirs: int = 5  # per split
    rt60: tuple[float, float] = (0.2, 1.0)  # reverberation times of the random rooms (s)
    test_snrs: list[float] = field(default_factory=lambda: [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
    test_reverb_prob: float = 0.3  # share of test mixtures made in a simulated room

    def __post_init__(self) -> None:
        if not 0 < self.hours <= 1000:
            raise ValueError(f"hours={self.hours}: must be in (0, 1000]")
        if self.sample_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ValueError(f"sample_rate={self.sample_rate}: use 8000, 16000, 22050, 24000, 32000, 44100 or 48000")
        if any(f <= 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions={list(self.split_fractions)}: three positive numbers summing to 1")
        for name, allowed in (("speech", (*REAL_SPEECH, *INTL_SPEECH, *TTS_ENGINES)), ("noise", (*REAL_NOISE, *SYNTHETIC_NOISE))):
            chosen = getattr(self, name)
            unknown = [s for s in chosen if s not in allowed]
            if unknown:
                raise ValueError(f"{name}: unknown source {', '.join(unknown)}; choose from {', '.join(allowed)}")
            if not chosen:
                raise ValueError(f"{name}: choose at least one source from {', '.join(allowed)}")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"{name}: a source is listed twice")
        if not any(s in TTS_ENGINES for s in self.speech):
            # Real recordings alone cannot fill every split: some splits have few real speakers.
            raise ValueError(f"speech: include at least one TTS engine ({', '.join(TTS_ENGINES)})")
        for name in ("real_speech_fraction", "real_noise_fraction", "test_reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [0, 1]")
        if self.noise_ratio <= 0 or self.noise_seconds < 1.0:
            raise ValueError("noise_ratio must be positive and noise_seconds at least 1")
        if self.min_noise_files < 1 or self.min_rirs < 1 or self.rirs_per_hour < 0:
            raise ValueError("min_noise_files and min_rirs must be at least 1, rirs_per_hour not negative")
        if not 0.05 <= self.rt60[0] <= self.rt60[1] <= 3.0:
            raise ValueError(f"rt60={list(self.rt60)}: need 0.05 <= low <= high <= 3 seconds")
        if not self.test_snrs:
            raise ValueError("test_snrs: give at least one SNR")
        if not 0.0 <= self.speech_highpass_hz <= 200.0:
            raise ValueError(f"speech_highpass_hz={self.speech_highpass_hz}: must be in [0, 200] (0 = off)")
        if not -60.0 <= self.speech_level_dbfs <= -3.0:
            raise ValueError(f"speech_level_dbfs={self.speech_level_dbfs}: must be in [-60, -3]")

    def split_seconds(self) -> dict[str, float]:
        total = self.hours * 3600.0
        return {s: total * f for s, f in zip(SPLITS, self.split_fractions, strict=True)}
