"""FRCRN_SE_16K inference path: waveform (B, N) -> enhanced (B, N), as ClearerVoice's ClearVoice runs it.

Their path (``ClearVoice`` with ``decode_one_audio_frcrn_se_16k``, one pass for inputs up to 120 s)::

    x --audio_norm--> x * s (level -25 dBFS), scalar 1/(s + 1e-6)
      --zero padding (below)--> network (conv-STFT, two complex UNets, complex mask, conv-iSTFT)
      --cut to N--> times the scalar

``audio_norm`` (theirs, two stages): s1 = 10^(-25/20) / (rms(x) + 1e-6); then s2 = 10^(-25/20) / (rms of the
samples of x*s1 whose power exceeds the mean power + 1e-6); the input becomes x*s1*s2 and the output is
multiplied by 1/(s1*s2 + 1e-6). We compute it in float64, as ClearVoice does on audio files (it reads PCM
as float64); where no sample exceeds the mean power (silence, a constant) theirs gives NaN and we use the
overall power instead, so silence stays silence.

Zero padding, with their decode window w = 1 s and stride 0.75 w (16000 / 12000 samples at 16 kHz):
N < w -> w samples; w <= N < 1.75 w -> 1.75 w; longer -> N + w + ((N - w) mod 0.75 w) zeros appended unless
that remainder is 0. This matters: the network's squeeze-excitation gates average over the whole
spectrogram, padding included, so another padding gives another output (a 1 s input is run as 1.75 s,
e.g.). We pad exactly as they do, so our output equals theirs for every input length decoded in one pass.
Only where their frames stop short of N (N - 640 not a multiple of the 320-sample hop after their padding,
e.g. 27,841..27,999 samples) do we pad further to whole frames; theirs returns fewer than N samples there.

:class:`steadyvoice.Enhancer` calls this for inputs up to 20 s and in 10 s windows for longer ones (each
window normalised on its own); their decoder would run up to 120 s in one pass, in 1 s windows beyond.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from steadyvoice.models.frcrn import FRCRNConfig

__all__ = ["enhance_waveform", "audio_norm", "padded_length"]

TARGET_RMS = 10 ** (-25 / 20)  # -25 dBFS
NORM_EPS = 1e-6
DECODE_WINDOW_SECONDS = 1.0  # their decode_window
DECODE_STRIDE = 0.75  # their stride, as a fraction of the decode window


def audio_norm(wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ClearVoice's two-stage RMS normalisation of each row: wave (B, N) -> (normalised (B, N) in wave's
    dtype, scalar (B, 1) float64 that brings the output back to the input's level)."""
    x = wave.double()  # (B, N)
    s1 = TARGET_RMS / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + NORM_EPS)  # (B, 1)
    x = x * s1
    power = x.pow(2)  # (B, N)
    mean_power = power.mean(dim=-1, keepdim=True)  # (B, 1)
    loud = power > mean_power
    count = loud.sum(dim=-1, keepdim=True)
    loud_power = torch.where(count > 0, (power * loud).sum(dim=-1, keepdim=True) / count.clamp(min=1), mean_power)
    s2 = TARGET_RMS / (loud_power.sqrt() + NORM_EPS)  # (B, 1)
    return (x * s2).to(wave.dtype), 1.0 / (s1 * s2 + NORM_EPS)


def padded_length(n: int, cfg: FRCRNConfig) -> int:
    """Length the input is zero-padded to: ClearVoice's rule, then up to whole frames if their frames stop short."""
    window = round(DECODE_WINDOW_SECONDS * cfg.sample_rate)
    stride = int(window * DECODE_STRIDE)
    if n < window:
        length = window
    elif n < window + stride:
        length = window + stride
    else:
        length = n + (window + (n - window) % stride if (n - window) % stride else 0)
    whole_frames = cfg.win_length + -(-max(n - cfg.win_length, 0) // cfg.hop_length) * cfg.hop_length  # covers n
    return max(length, whole_frames)


def enhance_waveform(model: torch.nn.Module, wave: torch.Tensor, cfg: FRCRNConfig | None = None, *,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """wave (B, N) at the model's rate -> enhanced (B, N): normalise, pad, network (inside ``autocast``, if
    given), cut, rescale."""
    cfg = cfg or model.cfg
    if not isinstance(wave, torch.Tensor) or wave.dim() != 2 or not wave.is_floating_point():
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"expected a floating-point waveform batch of shape (batch, samples), got {shape}")
    n = wave.shape[-1]
    normed, scalar = audio_norm(wave)  # (B, N), (B, 1)
    x = F.pad(normed, (0, padded_length(n, cfg) - n))  # (B, L)
    with autocast or contextlib.nullcontext():
        _, enhanced, _ = model(x)  # (B, >= N)
    return (enhanced[:, :n] * scalar).to(wave.dtype)  # (B, N)
