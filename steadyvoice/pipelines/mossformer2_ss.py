"""MossFormer2-SS inference path: ClearVoice's decode of MossFormer2_SS_16K, for one pass.

    mixture (B, N) --audio_norm--> normalised (-25 dBFS) --zero-pad to >= 2 s--> network --> (B, S, L)
      --each talker scaled to the mixture's RMS--> cut to N --> sources (B, S, N)

What ClearVoice does (``decode_one_audio_mossformer2_ss_16k`` after ``audio_norm``), and what we keep:

* ``audio_norm``: two-stage RMS normalisation of the mixture to -25 dBFS (the second stage measures only
  the samples louder than the mean power). Kept: the network is not scale-invariant and was run this way.
  An all-zero (or constant) input, where theirs divides by zero and returns NaN, stays as it is here.
* Inputs shorter than 2 s are zero-padded to 2 s before the network. Kept: the network's instance norms
  and global attention see the padded length, so its output depends on it (the parity vector needs it).
* Each talker's output is rescaled to the RMS of the (normalised) mixture. Their two faults are fixed by
  default (``levels="input"``), and reproduced by ``levels="clearvoice"``:

  - they measure the output RMS over the padded length, so inputs under 2 s come out louder by about
    sqrt(padded / N) (x1.41 for 1 s); ours measures it over the N real samples;
  - their list branch never undoes ``audio_norm``, so every output sits at the normalised level whatever
    the input's; ours scales each talker to the RMS of the mixture as given (so quiet recordings give quiet
    talkers, and level ratios between files survive).

  With ``levels="clearvoice"`` the output equals theirs (tests/test_separation.py checks both modes
  against their end-to-end vector; the default differs from it by exactly these two factors).

A recording's channels (``wave`` (B, C, N)) share one normalisation gain and one output gain per talker,
so the level differences between channels survive. Long inputs: :class:`steadyvoice.separation.Separator`
passes ``decode``, which runs the network on overlapping windows and keeps the talker order from window to
window; the levels are still set once, over the whole signal (their segmented decoder does the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["separate_waveform", "audio_norm", "network_pass", "match_levels", "min_pass_length", "LEVELS"]

TARGET_LEVEL = 10 ** (-25 / 20)  # audio_norm's target RMS (-25 dBFS)
EPS = 1e-6  # audio_norm's guard, as theirs
MIN_PASS_SECONDS = 2.0  # ClearVoice's decode_window: shorter inputs are zero-padded to it
LEVELS = ("input", "clearvoice")

# passes(wave (b, M)) -> (b, S, L >= M): the network on each row, zero-padded as ClearVoice pads.
Passes = Callable[[torch.Tensor], torch.Tensor]
# decode(passes, normalised (B, [C,] N)) -> raw talkers (B, S, [C,] L >= N), in one talker order per recording.
Decode = Callable[[Passes, torch.Tensor], torch.Tensor]


def separate_waveform(model: torch.nn.Module, wave: torch.Tensor, cfg: Any, *, decode: Decode | None = None,
                      levels: str = "input", autocast: contextlib.AbstractContextManager | None = None
                      ) -> torch.Tensor:
    """Mixtures (B, N) -> talkers (B, S, N); or recordings (B, C, N) -> (B, S, C, N).

    ``decode`` replaces the single network pass (see the module docstring); without it, one pass over the
    whole input (each channel on its own; channel alignment is the caller's ``decode``'s job). ``autocast``,
    if given, is entered around each network pass only (normalisation and levels stay in the input's dtype).
    """
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {', '.join(LEVELS)}, got {levels!r}")
    if wave.dim() not in (2, 3):
        raise ValueError(f"expected a waveform (batch, samples) or (batch, channels, samples), got {tuple(wave.shape)}")
    normed, _ = audio_norm(wave)  # (B, [C,] N)

    def passes(x: torch.Tensor) -> torch.Tensor:
        with autocast or contextlib.nullcontext():
            raw = network_pass(model, x, cfg)  # (b, S, L)
        return raw.to(x.dtype)

    raw = (decode or _one_pass)(passes, normed)  # (B, S, [C,] L)
    reference = wave if levels == "input" else normed
    return match_levels(raw, reference, over_padding=levels == "clearvoice")


def audio_norm(wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ClearVoice's ``audio_norm`` on each item of ``wave`` (B, ...) -> (normalised, same shape; gain (B,)).

    scale to RMS -25 dBFS, then rescale so that the samples louder than the mean power have RMS -25 dBFS.
    Computed in float64, as theirs (numpy on float64 samples).
    """
    x = wave.flatten(1).double()  # (B, K)
    rms = x.pow(2).mean(1).sqrt()  # (B,)
    first = TARGET_LEVEL / (rms + EPS)
    power = (x * first[:, None]).pow(2)  # (B, K)
    loud = power > power.mean(1, keepdim=True)
    count = loud.sum(1)
    loud_rms = ((power * loud).sum(1) / count.clamp(min=1)).sqrt()
    # theirs: NaN when no sample is louder than the mean (silence, a constant); we keep the first stage
    second = torch.where(count > 0, TARGET_LEVEL / (loud_rms + EPS), torch.ones_like(loud_rms))
    gain = first * second  # (B,)
    normed = (x * gain[:, None]).view(wave.shape).to(wave.dtype)
    return normed, gain


def min_pass_length(cfg: Any) -> int:
    """Inputs shorter than this (2 s at the model's rate) are zero-padded to it before the network."""
    return round(MIN_PASS_SECONDS * cfg.sample_rate)


def network_pass(model: torch.nn.Module, wave: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The network on ``wave`` (B, M), zero-padded to at least 2 s as ClearVoice does -> (B, S, max(M, 2 s))."""
    pad = max(0, min_pass_length(cfg) - wave.shape[-1])
    return model(F.pad(wave, (0, pad)))  # (B, S, L)


def _one_pass(passes: Passes, normed: torch.Tensor) -> torch.Tensor:
    """One network pass per row (channels stacked into the batch): (B, [C,] N) -> (B, S, [C,] L)."""
    if normed.dim() == 2:
        return passes(normed)
    B, C, N = normed.shape
    raw = passes(normed.reshape(B * C, N))  # (B*C, S, L)
    return raw.view(B, C, *raw.shape[1:]).transpose(1, 2)  # (B, S, C, L)


def match_levels(raw: torch.Tensor, reference: torch.Tensor, *, over_padding: bool = False) -> torch.Tensor:
    """Scale each talker of ``raw`` (B, S, [C,] L >= N) to the RMS of ``reference`` (B, [C,] N), cut to N.

    One gain per talker, measured over all channels: over the first N samples, or over all L
    (``over_padding``, ClearVoice's measure). A silent talker output stays silent.
    """
    N = reference.shape[-1]
    if raw.shape[-1] < N:
        raise ValueError(f"the separated signals have {raw.shape[-1]} samples, fewer than the input's {N}")
    target = reference.double().flatten(1).pow(2).mean(1).sqrt()  # (B,)
    measured = raw if over_padding else raw[..., :N]
    out_rms = measured.double().flatten(2).pow(2).mean(2).sqrt()  # (B, S)
    gain = torch.where(out_rms > 0, target[:, None] / out_rms.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.zeros_like(out_rms))  # (B, S)
    gain = gain.view(*gain.shape, *([1] * (raw.dim() - 2))).to(raw.dtype)
    return raw[..., :N] * gain  # (B, S, [C,] N)
