"""Training losses and the validation metric. Every function returns one value per example, shape (B,).

- :func:`psm_mse`: ClearerVoice-Studio's loss for MossFormer2_SE_48K, a phase-sensitive-mask MSE weighted
  by the noisy magnitude. Their formula (train/speech_enhancement/losses, ``psm_loss``), re-derived here:
  target mask M = |S|^2/|Y|^2 * cos(angle(Y) - angle(S)) ("l2" ratio, their default; "l1" uses |S|/|Y|),
  clamped to [0, 1]; weight w = |Y| / max over frequency of |Y| (per frame); loss = 0.5 * sum over
  (t, f) of w * (mask - M)^2, divided by the number of frames (their division by B*T is our batch mean).
- :func:`neg_si_snr`: minus the scale-invariant SNR (dB) of a waveform against its reference.
- :func:`si_sdr`: the same quantity as a metric (higher is better), used for validation.
- :func:`multi_resolution_stft`: spectral convergence + L1 of log magnitudes at several STFT sizes (Yamamoto
  et al., Parallel WaveGAN, 2020); the log term weighs quiet time-frequency cells as much as loud ones, so
  residual noise in pauses and between harmonics costs what it sounds like.
- :func:`pit_si_sdr`: separation: the SI-SDR of every estimate against every talker, and the talker order
  (permutation) that maximises the mean, per example (utterance-level PIT; S! orders, S is 2 or 3).
"""

from __future__ import annotations

import itertools

import torch

EPS = 1e-6  # the official code's EPS for the PSM target and weights
SI_EPS = 1e-8


def psm_mse(mask: torch.Tensor, noisy_spec: torch.Tensor, clean_spec: torch.Tensor, ratio: str = "l2") -> torch.Tensor:
    """Magnitude-weighted phase-sensitive-mask MSE.

    mask: predicted real mask (B, T, F); noisy_spec, clean_spec: complex STFTs (B, F, T). Returns (B,).
    """
    noisy_abs = noisy_spec.abs()  # (B, F, T)
    clean_abs = clean_spec.abs()
    # cos of the phase difference, computed from unit phasors like the official code
    cos = (noisy_spec.real * clean_spec.real + noisy_spec.imag * clean_spec.imag) / (
        (noisy_abs + EPS) * (clean_abs + EPS))
    if ratio == "l2":
        target = clean_abs**2 / (noisy_abs**2 + EPS) * cos
    elif ratio == "l1":
        target = clean_abs / (noisy_abs + EPS) * cos
    else:
        raise ValueError(f"unknown PSM ratio {ratio!r}; use 'l2' or 'l1'")
    target = target.clamp(0.0, 1.0).transpose(1, 2)  # (B, T, F)
    weight = noisy_abs / (noisy_abs.amax(dim=1, keepdim=True) + EPS)  # per-frame max over frequency
    weight = weight.transpose(1, 2)  # (B, T, F)
    err = (mask.float() - target) ** 2 * weight
    return 0.5 * err.sum(dim=(1, 2)) / mask.shape[1]


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB of (B, N) waveforms against their references -> (B,)."""
    estimate = estimate.float() - estimate.float().mean(dim=-1, keepdim=True)
    reference = reference.float() - reference.float().mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + SI_EPS)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10(target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + SI_EPS) + SI_EPS)


def neg_si_snr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Loss form of SI-SNR (lower is better) -> (B,)."""
    return -si_sdr(estimate, reference)


# (n_fft, hop) of multi_resolution_stft at 16 kHz: 16, 32 and 64 ms Hann windows, 75 % overlap.
MRSTFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


def multi_resolution_stft(estimate: torch.Tensor, reference: torch.Tensor,
                          resolutions: tuple[tuple[int, int], ...] = MRSTFT_RESOLUTIONS) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + mean |log|X| - log|S||, per example -> (B,).

    Written here rather than taken from auraloss: its losses reduce over the batch, and every loss of this
    trainer is per example (the trainer averages, and validation reports per example).
    """
    total = torch.zeros(estimate.shape[0], device=estimate.device)
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=estimate.device)
        est, ref = (torch.stft(w.float(), n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
                    for w in (estimate, reference))  # (B, F, T)
        convergence = (est - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp(min=1e-7)
        log_l1 = (est.log() - ref.log()).abs().flatten(1).mean(dim=1)
        total = total + convergence + log_l1
    return total / len(resolutions)


def pit_si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """estimate, reference (B, S, N) -> (mean SI-SDR over talkers under the best order (B,), that order (B, S)).

    ``order[b, s]`` is the estimate that matches talker s. Ties go to the first order in
    itertools.permutations order (deterministic).
    """
    B, S, N = estimate.shape
    pair = si_sdr(estimate[:, :, None, :].expand(B, S, S, N).reshape(-1, N),
                  reference[:, None, :, :].expand(B, S, S, N).reshape(-1, N)).view(B, S, S)  # [b, est, talker]
    orders = torch.tensor(list(itertools.permutations(range(S))), device=estimate.device)  # (P, S)
    talkers = torch.arange(S, device=estimate.device)
    scores = pair[:, orders, talkers].mean(-1)  # (B, P): order p gives talker s the estimate orders[p, s]
    best = scores.argmax(dim=1)
    return scores.gather(1, best[:, None])[:, 0], orders[best]
