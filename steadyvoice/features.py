"""Front end and STFT of MossFormer2 speech enhancement: waveform <-> network inputs and outputs.

* :func:`fbank_features`: Kaldi-compatible log-mel filterbank + deltas + delta-deltas, the network input.
  ClearerVoice computes it with ``torchaudio.compliance.kaldi.fbank`` on the waveform x 32768; torchaudio
  has no build for our torch here, so the same recipe is written with torch ops (framing with
  ``Tensor.unfold``, ``torch.fft.rfft``). Steps, all as Kaldi's defaults: snip_edges framing, per-frame DC
  removal, pre-emphasis 0.97 (first sample against itself), symmetric Hamming window, zero padding to the
  next power of two, power spectrum, triangular mel filters from ``fmin`` to Nyquist on Kaldi's mel
  scale (1127 ln(1 + f/700)), log with the float32-epsilon floor. No dither (Kaldi's dither=1.0 default,
  which ClearerVoice leaves on, makes outputs random; we keep the front end deterministic).
* :func:`stft` / :func:`istft`: ``torch.stft`` / ``torch.istft`` with n_fft = win_length, center=False,
  symmetric Hamming (ClearerVoice's mask is applied on exactly this STFT).
* :func:`one_pass`: noisy waveform -> features -> mask -> mask x STFT -> iSTFT, the one implementation
  used by inference (:func:`enhance_waveform`, ``steadyvoice.inference``) and by training (loss and
  validation in ``steadyvoice.train.loop``). It works at the frame-aligned length
  ``win_length + k * hop_length`` (k >= 0), where the frames tile the signal exactly:
  :func:`padded_length` (zero padding at the end, inference) or :func:`cropped_length` (cut, training).

Everything is batched (B, N), differentiable and runs on the input's device; filterbanks and windows are
cached per (configuration, device, dtype).
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from steadyvoice.models.mossformer2 import MossFormer2SEConfig

__all__ = ["fbank_features", "stft", "istft", "frame_count", "padded_length", "cropped_length", "one_pass",
           "OnePass", "enhance_waveform", "apply_mask", "PCM_SCALE"]

PCM_SCALE = 32768.0  # Kaldi features are computed on 16-bit sample values
PREEMPHASIS = 0.97
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi's floor before the log (also torchaudio's)
DELTA_WINDOW = 2  # +-2 frames: Kaldi/torchaudio delta window 5


def frame_count(num_samples: int, cfg: MossFormer2SEConfig) -> int:
    """Frames of an N-sample signal (snip_edges): 1 + (N - win_length) // hop_length, 0 if N < win_length."""
    if num_samples < cfg.win_length:
        return 0
    return 1 + (num_samples - cfg.win_length) // cfg.hop_length


def padded_length(num_samples: int, cfg: MossFormer2SEConfig) -> int:
    """The smallest frame-aligned length >= N: win_length + k * hop_length, k >= 0 (at least one window)."""
    frames = 1 + max(0, math.ceil((num_samples - cfg.win_length) / cfg.hop_length))
    return cfg.win_length + (frames - 1) * cfg.hop_length


def cropped_length(num_samples: int, cfg: MossFormer2SEConfig) -> int:
    """The largest frame-aligned length <= N: win_length + (frame_count(N) - 1) * hop_length."""
    frames = frame_count(num_samples, cfg)
    if frames == 0:
        raise ValueError(f"need at least win_length={cfg.win_length} samples, got {num_samples}")
    return cfg.win_length + (frames - 1) * cfg.hop_length


# ---- cached constants -----------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _window(win_length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hamming_window(win_length, periodic=False, dtype=dtype, device=device)  # Kaldi's "hamming"


@lru_cache(maxsize=32)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Kaldi's triangular mel filterbank, (n_fft/2 + 1, n_mels); the Nyquist bin gets weight 0 as in Kaldi."""

    def mel(f):
        return 1127.0 * torch.log1p(f / 700.0) if isinstance(f, torch.Tensor) else 1127.0 * math.log1p(f / 700.0)

    mel_low, mel_high = mel(fmin), mel(sample_rate / 2)
    delta = (mel_high - mel_low) / (n_mels + 1)
    edges = mel_low + delta * torch.arange(n_mels + 2, dtype=torch.float64)  # (n_mels + 2,)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1)
    bin_mel = mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))[None, :]  # (1, n_fft/2)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, n_fft/2)
    weights = F.pad(weights, (0, 1))  # (n_mels, n_fft/2 + 1)
    return weights.T.to(device=device, dtype=dtype).contiguous()


def _padded_fft_size(win_length: int) -> int:
    return 1 << (win_length - 1).bit_length()  # next power of two (Kaldi round_to_power_of_two)


# ---- features ---------------------------------------------------------------------------------------------


def fbank_features(wave: torch.Tensor, cfg: MossFormer2SEConfig) -> torch.Tensor:
    """wave (B, N) float in [-1, 1] -> features (B, T, 3*n_mels): log-mel, delta, delta-delta.

    T = frame_count(N, cfg); a signal shorter than one window gives T = 0.
    """
    _check_wave(wave)
    win, hop = cfg.win_length, cfg.hop_length
    B, N = wave.shape
    T = frame_count(N, cfg)
    if T == 0:
        return wave.new_zeros(B, 0, cfg.in_channels)
    frames = (wave * PCM_SCALE).unfold(-1, win, hop)  # (B, T, win)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC per frame
    previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)  # (B, T, win)
    frames = (frames - PREEMPHASIS * previous) * _window(win, wave.device, wave.dtype)  # (B, T, win)
    n_fft = _padded_fft_size(win)
    spec = torch.fft.rfft(frames, n=n_fft)  # (B, T, n_fft/2 + 1), zero padded
    power = spec.real.square() + spec.imag.square()  # (B, T, n_fft/2 + 1)
    filters = _mel_filters(cfg.sample_rate, n_fft, cfg.n_mels, float(cfg.fmin), wave.device, wave.dtype)
    logmel = torch.log(torch.clamp(power @ filters, min=LOG_FLOOR))  # (B, T, n_mels)
    delta = _deltas(logmel)  # (B, T, n_mels)
    return torch.cat((logmel, delta, _deltas(delta)), dim=-1)  # (B, T, 3*n_mels)


def _deltas(x: torch.Tensor) -> torch.Tensor:
    """Regression deltas over time (window 5, edge frames repeated), as torchaudio's compute_deltas.

    sum_{k=1..2} k (x[t+k] - x[t-k]) / (2 * (1 + 4)) for x (B, T, C).
    """
    n = DELTA_WINDOW
    padded = F.pad(x.transpose(1, 2), (n, n), mode="replicate")  # (B, C, T + 2n)
    T = x.shape[1]
    num = sum(k * (padded[..., n + k: n + k + T] - padded[..., n - k: n - k + T]) for k in range(1, n + 1))
    denom = n * (n + 1) * (2 * n + 1) / 3
    return (num / denom).transpose(1, 2)  # (B, T, C)


# ---- STFT -------------------------------------------------------------------------------------------------


def stft(wave: torch.Tensor, cfg: MossFormer2SEConfig) -> torch.Tensor:
    """wave (B, N) -> complex spectrum (B, win_length//2 + 1, T), T = frame_count(N, cfg)."""
    _check_wave(wave)
    if wave.shape[-1] < cfg.win_length:
        raise ValueError(f"stft needs at least win_length={cfg.win_length} samples, got {wave.shape[-1]}")
    return torch.stft(wave, n_fft=cfg.win_length, hop_length=cfg.hop_length, win_length=cfg.win_length,
                      window=_window(cfg.win_length, wave.device, wave.dtype), center=False, onesided=True,
                      return_complex=True)


def istft(spec: torch.Tensor, cfg: MossFormer2SEConfig, length: int) -> torch.Tensor:
    """complex spectrum (B, F, T) -> wave (B, length); samples after the last frame are zero."""
    window = _window(cfg.win_length, spec.device, spec.real.dtype)
    return torch.istft(spec, n_fft=cfg.win_length, hop_length=cfg.hop_length, win_length=cfg.win_length,
                       window=window, center=False, onesided=True, length=length)


def apply_mask(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real mask (B, T, F) from the model times the complex spectrum (B, F, T)."""
    return spec * mask.transpose(1, 2)


# ---- one pass ---------------------------------------------------------------------------------------------


class OnePass(NamedTuple):
    """What :func:`one_pass` computes; L = padded_length(N), T = frame_count(L), F = win_length//2 + 1."""

    mask: torch.Tensor  # (B, T, F) real, in the spectrum's precision
    noisy_spec: torch.Tensor  # (B, F, T) complex STFT of the padded input
    enhanced: torch.Tensor | None  # (B, L); None when reconstruct=False


def one_pass(model: torch.nn.Module, wave: torch.Tensor, cfg: MossFormer2SEConfig | None = None, *,
             autocast: contextlib.AbstractContextManager | None = None, reconstruct: bool = True) -> OnePass:
    """wave (B, N) -> mask, noisy spectrum and enhanced (B, L): the pipeline of inference and training.

    The input is zero-padded at the end to L = padded_length(N, cfg), the frame-aligned length, so that
    the frames cover every input sample; the enhanced waveform has those L samples (cut it to N, as
    :func:`enhance_waveform` does). Training crops its examples to cropped_length(N) first: then L = N
    and nothing is padded. ``autocast`` (e.g. ``torch.autocast(...)``) is entered around the network
    call only: features, STFT and iSTFT always run in the input's precision, and the mask is cast back to
    it. ``reconstruct=False`` skips the iSTFT (a loss on the spectrum alone). Gradients flow unless the
    caller uses ``torch.no_grad()``; the model's mode is left as it is.
    """
    cfg = cfg or model.cfg
    _check_wave(wave)
    length = padded_length(wave.shape[-1], cfg)
    x = F.pad(wave, (0, length - wave.shape[-1]))  # (B, L)
    feats = fbank_features(x, cfg)  # (B, T, 3*n_mels)
    spec = stft(x, cfg)  # (B, F, T)
    with autocast if autocast is not None else contextlib.nullcontext():
        mask = model(feats)  # (B, T, F)
    mask = mask.to(spec.real.dtype)  # autocast may have returned half precision
    enhanced = istft(apply_mask(spec, mask), cfg, length=length) if reconstruct else None  # (B, L)
    return OnePass(mask, spec, enhanced)


def enhance_waveform(model: torch.nn.Module, wave: torch.Tensor, cfg: MossFormer2SEConfig | None = None, *,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """wave (B, N) -> enhanced (B, N): :func:`one_pass` (``autocast`` around the network only), cut back to
    the input's N samples.

    Padding to whole frames means every input sample is reconstructed. ClearerVoice does not pad, which
    leaves the last (N - win_length) % hop_length samples at zero; for frame-aligned lengths both are the same.
    """
    return one_pass(model, wave, cfg, autocast=autocast).enhanced[:, : wave.shape[-1]]


def _check_wave(wave: torch.Tensor) -> None:
    if not isinstance(wave, torch.Tensor) or wave.dim() != 2:
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"expected a waveform batch of shape (batch, samples), got {shape}")
    if not wave.is_floating_point():
        raise ValueError(f"expected a floating-point waveform, got {wave.dtype}")
