"""Full-band inference path (architecture ``fullband-se``): waveform (B, N) at 48 kHz -> enhanced (B, N).

    noisy --soxr--> 16 kHz --core pass (steadyvoice.features, as MossFormer2-SE alone)--> --soxr--> low
    noisy - (noisy --soxr--> 16 kHz --soxr--> 48 kHz) = upper part
    upper part --STFT--> x gains(band features) --iSTFT--> high;         enhanced = low + high

Band features per STFT frame, log10 of band energies: the upper part in ``upper_bands`` bands (what is to
be cleaned), the noisy and the core-enhanced low band in ``low_bands`` bands each (where the speech is and
what the core took away as noise there).

Resampling runs in soxr on the CPU (the project's resampler, the same as around every model): the core
and the resampled signals carry no gradient, only the gains do, so training the upper band needs nothing
differentiable there. While the core's weights are frozen its pass runs without autograd.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import numpy as np
import torch

from steadyvoice import audio as audio_io
from steadyvoice.models.fullband import FullBandConfig

__all__ = ["enhance_waveform", "one_pass", "FullBandPass", "upper_part", "stft", "istft"]

LOG_FLOOR = 1e-10  # band energy floor before the log (-100 dB)


class FullBandPass(NamedTuple):
    gains: torch.Tensor  # (B, T, F) per-bin gains of the upper part
    upper_spec: torch.Tensor  # (B, F, T) complex STFT of the noisy upper part
    low: torch.Tensor  # (B, N) enhanced low band at the model's rate
    enhanced: torch.Tensor  # (B, N)


def _resample_rows(wave: torch.Tensor, sr_in: int, sr_out: int, length: int) -> torch.Tensor:
    """(B, n) -> (B, length) with soxr, row by row, on the CPU and back to wave's device and dtype."""
    rows = wave.detach().float().cpu().numpy()
    out = np.stack([audio_io.resample_to_length(r, sr_in, sr_out, length) for r in rows])
    return torch.from_numpy(out).to(device=wave.device, dtype=wave.dtype)


def upper_part(wave: torch.Tensor, cfg: FullBandConfig) -> torch.Tensor:
    """(B, N) at cfg.sample_rate -> what lies above the core's band: wave minus its down-and-up copy."""
    n, core_rate = wave.shape[-1], cfg.core.sample_rate
    low_rate = _resample_rows(wave, cfg.sample_rate, core_rate, core_length(n, cfg))
    return wave - _resample_rows(low_rate, core_rate, cfg.sample_rate, n)


def core_length(n: int, cfg: FullBandConfig) -> int:
    """Samples at the core's rate for n at the model's rate (soxr's output length)."""
    return round(n * cfg.core.sample_rate / cfg.sample_rate)


def _window(cfg: FullBandConfig, wave: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(cfg.win_length, device=wave.device, dtype=wave.dtype)


def stft(wave: torch.Tensor, cfg: FullBandConfig) -> torch.Tensor:
    """(B, N) -> complex (B, F, T), centred frames (T = N // hop + 1)."""
    return torch.stft(wave, cfg.win_length, cfg.hop_length, window=_window(cfg, wave), center=True,
                      return_complex=True)


def istft(spec: torch.Tensor, cfg: FullBandConfig, length: int) -> torch.Tensor:
    return torch.istft(spec, cfg.win_length, cfg.hop_length, window=_window(cfg, spec.real), center=True,
                       length=length)


def _log_bands(spec: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """complex (B, F, T) and a (F, K) pooling matrix -> log10 band energies (B, T, K), per bin."""
    power = spec.real.square() + spec.imag.square()  # (B, F, T)
    energy = power.transpose(1, 2) @ pool / pool.sum(0).clamp(min=1)  # (B, T, K) mean power per bin
    return torch.log10(energy + LOG_FLOOR)


def one_pass(model, wave: torch.Tensor, cfg: FullBandConfig | None = None, *, core_pass=None,
             autocast: contextlib.AbstractContextManager | None = None) -> FullBandPass:
    """wave (B, N) at cfg.sample_rate -> gains, the upper part's spectrum, the low band and the output.

    ``core_pass(core, wave (B, n), core_cfg) -> (B, n)`` runs the core (default: steadyvoice.features, the
    MossFormer2-SE path; the ONNX backend passes its graph's). ``autocast`` is entered around the core's
    network (nearly all of the work) through that default path; the upper-band gains stay in the input's
    precision."""
    from steadyvoice.distributed import unwrap_model
    from steadyvoice.features import enhance_waveform

    net, model = model, unwrap_model(model)  # the call goes through ``net`` (DDP in training)
    cfg = cfg or model.cfg
    if autocast is not None:
        if core_pass is not None:
            raise ValueError("one_pass: autocast applies to the default core pass only, not to a given core_pass")
        core_pass = functools.partial(enhance_waveform, autocast=autocast)
    core_pass = core_pass or enhance_waveform
    n, core_rate = wave.shape[-1], cfg.core.sample_rate
    if n < cfg.win_length:  # shorter than one upper-band window: zero-padded to one, cut back
        padded = one_pass(net, torch.nn.functional.pad(wave, (0, cfg.win_length - n)), cfg, core_pass=core_pass)
        return FullBandPass(padded.gains, padded.upper_spec, padded.low[:, :n], padded.enhanced[:, :n])

    at_core = _resample_rows(wave, cfg.sample_rate, core_rate, core_length(n, cfg))  # (B, n / 3)
    with torch.no_grad() if model.core_frozen() else contextlib.nullcontext():
        core_out = core_pass(model.core, at_core, cfg.core)  # (B, n / 3)
    low = _resample_rows(core_out, core_rate, cfg.sample_rate, n)  # (B, N)
    noisy_low = _resample_rows(at_core, core_rate, cfg.sample_rate, n)  # (B, N)
    upper_spec = stft(wave - noisy_low, cfg)  # (B, F, T)
    noisy_low_spec, low_spec = stft(noisy_low, cfg), stft(low, cfg)
    features = torch.cat([_log_bands(upper_spec, model.upper_pool),
                          _log_bands(noisy_low_spec, model.low_pool),
                          _log_bands(low_spec, model.low_pool)], dim=-1)  # (B, T, K + 2 L)
    # The core's gain at the top of its band, per frame (B, T): sqrt(energy out / energy in), at most 1.
    prior = (10 ** (_log_bands(low_spec, model.prior_pool) - _log_bands(noisy_low_spec, model.prior_pool)))[..., 0]
    gains = net(features / 5.0 + 1.0, prior.sqrt().clamp(max=1.0))  # (B, T, F); log10 energies lie in about -10..0
    high = istft(upper_spec * gains.transpose(1, 2), cfg, length=n)  # (B, N)
    return FullBandPass(gains, upper_spec, low, low + high)


def enhance_waveform(model, wave: torch.Tensor, cfg: FullBandConfig | None = None, *, core_pass=None,
                     autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """wave (B, N) at the model's rate -> enhanced (B, N)."""
    return one_pass(model, wave, cfg, core_pass=core_pass, autocast=autocast).enhanced
