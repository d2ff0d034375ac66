"""MossFormerGAN-SE inference path and its STFT helpers (ClearVoice's decode_one_audio_mossformergan_se_16k).

    wave (B, N) -> x * c, c = sqrt(N / sum x^2) -> pad to a hop multiple with the signal's own first samples
      -> STFT (n_fft 400, hop 100, periodic Hamming, center=True) -> |X|^0.3 e^{j angle X}: (B, 2, T, F)
      -> generator -> (est_real, est_imag) -> |.|^(1/0.3) with the same phase -> iSTFT -> / c -> cut to N

Training reuses :func:`stft`, :func:`istft`, :func:`compress`, :func:`decompress` and
:func:`normalisation_factor` (their training uses a symmetric window: ``periodic=False``, and an
epsilon in the factor).
"""

from __future__ import annotations

import contextlib

import torch

from steadyvoice.models.mossformer_gan import MossFormerGANConfig

__all__ = ["enhance_waveform", "stft", "istft", "compress", "decompress", "normalisation_factor", "pad_to_hops"]


def _window(cfg: MossFormerGANConfig, periodic: bool, like: torch.Tensor) -> torch.Tensor:
    return torch.hamming_window(cfg.win_length, periodic=periodic, dtype=like.real.dtype, device=like.device)


def stft(wave: torch.Tensor, cfg: MossFormerGANConfig, *, periodic: bool = True) -> torch.Tensor:
    """(B, L) -> complex (B, F, T), T = L // hop + 1 (center=True, reflect padding n_fft/2 each side)."""
    return torch.stft(wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window=_window(cfg, periodic, wave),
                      center=True, onesided=True, return_complex=True)


def istft(spec: torch.Tensor, cfg: MossFormerGANConfig, *, periodic: bool = True,
          length: int | None = None) -> torch.Tensor:
    """Complex (B, F, T) -> (B, (T-1) * hop) (or ``length`` samples), the inverse of :func:`stft`."""
    return torch.istft(spec, cfg.n_fft, cfg.hop_length, cfg.win_length, window=_window(cfg, periodic, spec),
                       center=True, onesided=True, length=length)


def compress(spec: torch.Tensor, power: float) -> torch.Tensor:
    """Complex (B, F, T) -> |X|^power with the phase of X, as (B, 2 (real, imag), T, F): the generator input."""
    mag = spec.abs() ** power
    phase = spec.angle()
    out = torch.stack((mag * torch.cos(phase), mag * torch.sin(phase)), dim=1)  # (B, 2, F, T)
    return out.transpose(2, 3).contiguous()  # (B, 2, T, F)


def decompress(real: torch.Tensor, imag: torch.Tensor, power: float) -> torch.Tensor:
    """Generator outputs (B, 1, T, F) each -> complex (B, F, T) with magnitude |.|^(1/power), the same phase."""
    compressed = torch.complex(real, imag)[:, 0].transpose(1, 2)  # (B, F, T)
    mag = compressed.abs() ** (1.0 / power)
    phase = compressed.angle()
    return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))


def normalisation_factor(wave: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """c = sqrt(N / (sum x^2 + eps)) per row: (B, N) -> (B, 1). Inference uses eps 0 (theirs), training 1e-6."""
    return torch.sqrt(wave.shape[-1] / (wave.square().sum(dim=-1, keepdim=True) + eps))


def pad_to_hops(wave: torch.Tensor, cfg: MossFormerGANConfig) -> torch.Tensor:
    """(B, N) -> (B, L): L = N rounded up to a hop multiple, filled with the signal's own first samples.

    Theirs appends ``x[:, :L - N]``. Below (n_fft/2 + 1) samples the reflect-padded STFT cannot run (theirs
    fails there), so L is also raised to the first hop multiple above n_fft/2, repeating the signal as needed.
    """
    N, hop = wave.shape[-1], cfg.hop_length
    shortest = (cfg.n_fft // 2 // hop + 1) * hop
    L = max(-(-N // hop) * hop, shortest)
    return wave.repeat(1, -(-L // N))[:, :L]  # x, then x[:L - N] (x again and again for very short inputs)


def enhance_waveform(model: torch.nn.Module, wave: torch.Tensor, cfg: MossFormerGANConfig, *,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """One pass of the generator over (B, N) samples at cfg.sample_rate -> enhanced (B, N); ``autocast``, if
    given, is entered around the generator only.

    An all-zero row (their c would be infinite and their output NaN) comes back as zeros.
    """
    if wave.dim() != 2 or wave.shape[-1] == 0:
        raise ValueError(f"enhance_waveform expects a waveform (batch, samples), got {tuple(wave.shape)}")
    N = wave.shape[-1]
    silent = wave.square().sum(dim=-1, keepdim=True) == 0  # (B, 1)
    c = normalisation_factor(torch.where(silent, torch.ones_like(wave), wave))  # (B, 1)
    x = pad_to_hops(wave, cfg) * c  # (B, L)
    spec = compress(stft(x, cfg), cfg.compress_power)  # (B, 2, T, F)
    with autocast or contextlib.nullcontext():
        est_real, est_imag = model(spec)  # (B, 1, T, F) each
    est_real, est_imag = est_real.to(spec.dtype), est_imag.to(spec.dtype)
    out = istft(decompress(est_real, est_imag, cfg.compress_power), cfg) / c  # (B, L)
    return out[:, :N].masked_fill(silent, 0.0)  # (B, N)
