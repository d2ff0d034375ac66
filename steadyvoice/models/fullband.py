"""Full-band enhancement: a 16 kHz core network for 0-8 kHz plus learned gains for the band above it.

    noisy (B, N) at 48 kHz
      |--soxr down--> (B, N/3) at 16 kHz --core (MossFormer2-SE)--> enhanced low band --soxr up--> low (B, N)
      |--minus its own low band (down then up)--> upper part (B, N): what the core never sees
            --STFT--> (B, F, T) --x gains from UpperBandGains (per band, interpolated to bins)--> --iSTFT--> high
    enhanced = low + high

Why this design (measured; see recipes/default-v2.yaml): the speech above 8 kHz is a few per cent of its
energy, mostly fricatives and breath, and its noise is broadband. A per-band gain over time recovers it
from the noisy upper band with a network of a few ten thousand weights, while the core keeps the
quality it reached at 16 kHz, where PESQ, STOI and DNSMOS are measured. A whole 48 kHz MossFormer2 would
cost three times the frames per second of the core and could not be trained here on CPUs.

The split is complementary by construction: the upper part is the input minus its own down-and-up
resampled copy, so with unit gains and an identity core the output equals the input.

This file holds the config, the gain network and the composite module; the signal path (resampling,
STFT, band features) is :mod:`steadyvoice.pipelines.fullband_se`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from steadyvoice.models.mossformer2 import MossFormer2SE, MossFormer2SEConfig

__all__ = ["FullBandConfig", "UpperBandGains", "FullBandSE", "band_edges", "interpolation_matrix"]


def _core_default() -> MossFormer2SEConfig:
    # The shipped default-v1 core: 16 kHz MossFormer2-SE, model_dim 128, 4 blocks (recipes/default-16k*.yaml).
    return MossFormer2SEConfig(sample_rate=16000, win_length=512, hop_length=128, n_mels=40, model_dim=128,
                               num_blocks=4, query_key_dim=64, expansion_factor=2.0, fsmn_inner_dim=128,
                               group_size=128)


@dataclass(frozen=True)
class FullBandConfig:
    sample_rate: int = 48000
    win_length: int = 960  # upper-band STFT: 20 ms Hann window
    hop_length: int = 480  # 10 ms
    core: MossFormer2SEConfig = field(default_factory=_core_default)
    upper_from_hz: float = 7000.0  # lowest edge of the gain bands: below the core's 8 kHz Nyquist, where the
    #                                resampler's transition band leaves part of the signal to the upper path
    upper_bands: int = 24  # gain bands from upper_from_hz to the Nyquist frequency, log-spaced
    low_bands: int = 8  # band energies of the low band (noisy and enhanced) the gain network also sees
    low_from_hz: float = 100.0
    hidden: int = 64  # GRU width
    min_gain: float = 0.0  # lower bound of every gain (0: the band may be removed)
    follow_from_hz: float = 6000.0  # the core's own gain over [follow_from_hz, upper_from_hz + 500 Hz) is the
    #                                 prior of every upper-band gain (see UpperBandGains)

    def __post_init__(self) -> None:
        if self.core.sample_rate >= self.sample_rate:
            raise ValueError(f"core.sample_rate ({self.core.sample_rate}) must be below sample_rate "
                             f"({self.sample_rate}): the upper band is what lies between them")
        if not 0 < self.upper_from_hz < self.core.sample_rate / 2:
            raise ValueError(f"upper_from_hz={self.upper_from_hz} must lie in (0, {self.core.sample_rate / 2}) Hz")
        if not 0 < self.low_from_hz < self.core.sample_rate / 2:
            raise ValueError(f"low_from_hz={self.low_from_hz} must lie in (0, {self.core.sample_rate / 2}) Hz")
        if min(self.upper_bands, self.low_bands, self.hidden) < 1:
            raise ValueError("upper_bands, low_bands and hidden must be at least 1")
        if not 0 < self.hop_length <= self.win_length:
            raise ValueError(f"hop_length={self.hop_length} must be in (0, win_length={self.win_length}]")
        if not 0 < self.follow_from_hz < self.upper_from_hz:
            raise ValueError(f"follow_from_hz={self.follow_from_hz} must lie in (0, upper_from_hz={self.upper_from_hz})")
        if not 0.0 <= self.min_gain < 1.0:
            raise ValueError(f"min_gain={self.min_gain} must be in [0, 1)")

    @property
    def n_freqs(self) -> int:
        return self.win_length // 2 + 1

    @property
    def first_upper_bin(self) -> int:
        """The STFT bin holding upper_from_hz: where the gains start."""
        return math.floor(self.upper_from_hz / (self.sample_rate / 2) * (self.n_freqs - 1))

    @property
    def in_features(self) -> int:
        return self.upper_bands + 2 * self.low_bands


def band_edges(low_hz: float, high_hz: float, bands: int) -> torch.Tensor:
    """bands + 1 log-spaced edges from low_hz to high_hz."""
    return torch.logspace(math.log10(low_hz), math.log10(high_hz), bands + 1, dtype=torch.float64)


def band_pooling(edges: torch.Tensor, sample_rate: int, n_freqs: int) -> torch.Tensor:
    """(n_freqs, bands) 0/1 matrix: which STFT bins each band sums (a bin belongs to the band holding it)."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)
    inside = (freqs[:, None] >= edges[None, :-1]) & (freqs[:, None] < edges[None, 1:])  # (F, K)
    inside[-1, -1] |= bool(freqs[-1] >= edges[-1])  # the Nyquist bin closes the last band
    return inside.float()


def interpolation_matrix(edges: torch.Tensor, sample_rate: int, n_freqs: int, first_bin: int) -> torch.Tensor:
    """(bands, n_freqs) weights spreading one gain per band over the bins: linear between band centres (in
    log frequency), constant beyond the first and last centre; bins below ``first_bin`` get the first gain."""
    centres = (edges[:-1] * edges[1:]).sqrt().log()  # (K,) geometric centres, log Hz
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64).clamp(min=1.0).log()  # (F,)
    freqs[:first_bin] = centres[0]
    k = centres.numel()
    weights = torch.zeros(k, n_freqs, dtype=torch.float64)
    pos = torch.searchsorted(centres, freqs).clamp(1, max(k - 1, 1))  # right neighbour of each bin
    if k == 1:
        weights[0] = 1.0
        return weights.float()
    left, right = centres[pos - 1], centres[pos]
    t = ((freqs - left) / (right - left)).clamp(0.0, 1.0)  # (F,)
    cols = torch.arange(n_freqs)
    weights[pos - 1, cols] = 1 - t
    weights[pos, cols] += t
    return weights.float()


class UpperBandGains(nn.Module):
    """Band features (B, T, in_features) and the prior gain (B, T) -> one gain per upper band (B, T, K).

    The prior is the core's own gain at the top of its band (energy out / in, per frame): where the core
    found speech just below 8 kHz the band above likely holds some too. The network learns a correction
    to it in the log domain, per band: gain = clamp(prior * exp(correction), min_gain, 1). Linear -> ReLU ->
    GRU over time (causal) -> Linear; the last layer starts at zero, so an untrained network is the prior.
    A few ten thousand weights.
    """

    def __init__(self, cfg: FullBandConfig):
        super().__init__()
        self.cfg = cfg
        self.project = nn.Linear(cfg.in_features, cfg.hidden)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.upper_bands)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.project(features))  # (B, T, H)
        h, _ = self.gru(h)  # (B, T, H)
        correction = self.out(h)  # (B, T, K), log domain
        return (prior[..., None] * correction.exp()).clamp(self.cfg.min_gain, 1.0)


class FullBandSE(nn.Module):
    """The core network (``core``, a MossFormer2-SE at ``cfg.core.sample_rate``) and the upper-band gains
    (``upper``). The pipeline calls each; this module only holds them and the fixed band matrices.

    While the core's weights are frozen (training the upper band on a shipped core), the core stays in eval
    mode whatever ``train()`` is asked: its dropout would only add noise to a fixed network's output.
    """

    def __init__(self, cfg: FullBandConfig):
        super().__init__()
        self.cfg = cfg
        self.core = MossFormer2SE(cfg.core)
        self.upper = UpperBandGains(cfg)
        nyquist_core = cfg.core.sample_rate / 2
        upper = band_edges(cfg.upper_from_hz, cfg.sample_rate / 2, cfg.upper_bands)
        low = band_edges(cfg.low_from_hz, nyquist_core, cfg.low_bands)
        # Fixed (computed, not learned) matrices: not saved with the weights.
        self.register_buffer("upper_pool", band_pooling(upper, cfg.sample_rate, cfg.n_freqs), persistent=False)
        self.register_buffer("low_pool", band_pooling(low, cfg.sample_rate, cfg.n_freqs), persistent=False)
        self.register_buffer("spread", interpolation_matrix(upper, cfg.sample_rate, cfg.n_freqs, cfg.first_upper_bin),
                             persistent=False)
        top = torch.tensor([cfg.follow_from_hz, cfg.upper_from_hz + 500.0], dtype=torch.float64)
        self.register_buffer("prior_pool", band_pooling(top, cfg.sample_rate, cfg.n_freqs), persistent=False)

    def core_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.core.parameters())

    def train(self, mode: bool = True) -> FullBandSE:
        super().train(mode)
        if self.core_frozen():
            self.core.eval()
        return self

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Band features (B, T, in_features), prior gain (B, T) -> per-bin gains (B, T, n_freqs) of the upper part."""
        gains = self.upper(features, prior)  # (B, T, K)
        return gains @ self.spread  # (B, T, F)
