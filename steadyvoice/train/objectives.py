"""What each architecture is trained to minimise: one objective per enhancement architecture.

An objective maps a batch to a loss per example::

    objective(net, noisy (B, N), clean (B, N), *, autocast, want_wave) -> {"loss": (B,),
                                                                           "enhanced": (B, n), "clean": (B, n)}

``enhanced`` / ``clean`` (the waveforms the loss saw, cut to the length n the model covers) are returned
when ``want_wave`` (validation scores them) or when the loss needs them anyway. ``autocast`` is a context
manager entered around the network call only. The model runs through the same path as at inference
(:mod:`steadyvoice.features` / :mod:`steadyvoice.pipelines`), so training and inference cannot drift apart.

:func:`objective_for` picks the objective of the configured architecture and refuses loss settings that
belong to another family (naming the key).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch

from steadyvoice.errors import ConfigError
from steadyvoice.train.config import LossConfig
from steadyvoice.train.losses import multi_resolution_stft, neg_si_snr, psm_mse


class Objective(Protocol):
    def __call__(self, net: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, *,
                 autocast: contextlib.AbstractContextManager, want_wave: bool = False) -> dict: ...


class MossFormer2SEObjective:
    """ClearerVoice's MossFormer2-SE loss: magnitude-weighted PSM MSE (+ optional negative SI-SNR).

    The batch is cut to the frame-aligned length n = cropped_length(N) (the frames cover every kept sample);
    the model runs in features.one_pass, as at inference.
    """

    def __init__(self, model_cfg: Any, loss: LossConfig):
        if loss.psm_weight + loss.si_snr_weight + loss.mrstft_weight == 0:
            raise ConfigError("loss.psm_weight, loss.si_snr_weight and loss.mrstft_weight are all 0: nothing to "
                              "train on")
        self.cfg, self.loss = model_cfg, loss

    def __call__(self, net, noisy, clean, *, autocast, want_wave=False) -> dict:
        from steadyvoice.features import cropped_length, one_pass, stft

        n = cropped_length(noisy.shape[-1], self.cfg)
        noisy, clean = noisy[:, :n], clean[:, :n]  # (B, n)
        reconstruct = bool(self.loss.si_snr_weight or self.loss.mrstft_weight or want_wave)
        mask, noisy_spec, enhanced = one_pass(net, noisy, self.cfg, autocast=autocast, reconstruct=reconstruct)
        loss = torch.zeros(noisy.shape[0], device=noisy.device)
        if self.loss.psm_weight:
            loss = loss + self.loss.psm_weight * psm_mse(mask, noisy_spec, stft(clean, self.cfg), self.loss.psm_ratio)
        out = {}
        if reconstruct:  # enhanced: (B, n)
            if self.loss.si_snr_weight:
                loss = loss + self.loss.si_snr_weight * neg_si_snr(enhanced, clean)
            if self.loss.mrstft_weight:
                loss = loss + self.loss.mrstft_weight * multi_resolution_stft(enhanced, clean)
            out["enhanced"], out["clean"] = enhanced, clean
        out["loss"] = loss
        return out


class FRCRNObjective:
    """FRCRN's recipe: negative SI-SNR of the waveform + complex-mask MSE (real and imaginary parts).

    What their recipe means, not what their code does (reference README, "Faults"): the target mask
    S * conj(Y) / |Y|^2 is computed on the network's own conv-STFT (theirs uses another window), clamped to
    the mask's range [-2, 2] (theirs maps values above 2 to 1), and gradients are clipped once per optimizer
    step (theirs after every micro-batch). The MSE is scaled by fft_len as theirs. The network runs on the
    crop as it is (our data is already level-normalised with a random gain; their loader normalises noisy and
    clean to -25 dBFS separately).
    """

    def __init__(self, model_cfg: Any, loss: LossConfig):
        if loss.si_snr_weight + loss.mask_weight == 0:
            raise ConfigError("loss.si_snr_weight and loss.mask_weight are both 0: nothing to train on")
        self.cfg, self.loss = model_cfg, loss

    def __call__(self, net, noisy, clean, *, autocast, want_wave=False) -> dict:
        from steadyvoice.distributed import unwrap_model

        with autocast:
            _, est_wave, est_mask = net(noisy)  # (B, L), (B, 2F, T)
        est_wave, est_mask = est_wave.float(), est_mask.float()
        n = min(est_wave.shape[-1], noisy.shape[-1])
        loss = torch.zeros(noisy.shape[0], device=noisy.device)
        if self.loss.si_snr_weight:
            loss = loss + self.loss.si_snr_weight * neg_si_snr(est_wave[:, :n], clean[:, :n])
        if self.loss.mask_weight:
            with torch.no_grad():
                stft = unwrap_model(net).stft
                target = complex_ratio_mask(stft(clean), stft(noisy)).clamp(-2.0, 2.0)  # (B, 2F, T)
            mse = (est_mask - target).square().mean(dim=(1, 2))
            loss = loss + self.loss.mask_weight * self.cfg.fft_len * mse
        out = {"loss": loss}
        if want_wave:
            out["enhanced"], out["clean"] = est_wave[:, :n].detach(), clean[:, :n]
        return out


def complex_ratio_mask(clean_spec: torch.Tensor, noisy_spec: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """S * conj(Y) / |Y|^2 for spectra laid out (B, 2F, T) as real bins then imaginary bins -> same layout."""
    sr, si = clean_spec.chunk(2, dim=1)
    yr, yi = noisy_spec.chunk(2, dim=1)
    power = yr.square() + yi.square() + eps
    return torch.cat(((sr * yr + si * yi) / power, (si * yr - sr * yi) / power), dim=1)


class MossFormerGANObjective:
    """The MossFormerGAN-SE generator's reconstruction loss, in the compressed STFT domain of its decoder.

    L = ri_weight * (MSE(real) + MSE(imag)) + mag_weight * MSE(|.|) + time_weight * L1(waveform); the
    adversarial term (adversarial_weight * (D(clean, estimate) - 1)^2) is added by the GAN trainer
    (steadyvoice.train.gan), which also gets what its discriminator needs (``out["gan"]``). Differences from
    their code (reference README, "Faults"): the time loss uses the estimate's own real and imaginary parts
    and the same centred STFT/iSTFT (theirs mixes the clean real part in and is 200 samples off), and
    training uses the periodic window of inference (theirs a symmetric one).
    """

    def __init__(self, model_cfg: Any, loss: LossConfig):
        if loss.ri_weight + loss.mag_weight + loss.time_weight == 0:
            raise ConfigError("loss.ri_weight, loss.mag_weight and loss.time_weight are all 0: nothing to train on")
        self.cfg, self.loss = model_cfg, loss

    def __call__(self, net, noisy, clean, *, autocast, want_wave=False) -> dict:
        from steadyvoice.pipelines.mossformergan_se import compress, decompress, istft, normalisation_factor, stft

        cfg, w = self.cfg, self.loss
        n = noisy.shape[-1] - noisy.shape[-1] % cfg.hop_length  # whole hops: the iSTFT gives n samples back
        noisy, clean = noisy[:, :n], clean[:, :n]
        c = normalisation_factor(noisy, eps=1e-6)  # (B, 1), as their training
        x, target = noisy * c, clean * c
        with torch.no_grad():
            noisy_in = compress(stft(x, cfg), cfg.compress_power)  # (B, 2, T, F)
            clean_ri = compress(stft(target, cfg), cfg.compress_power)
        with autocast:
            est_real, est_imag = net(noisy_in)  # (B, 1, T, F) each
        est_real, est_imag = est_real.float(), est_imag.float()
        est_mag = torch.sqrt(est_real.square() + est_imag.square() + 1e-12)  # (B, 1, T, F)
        clean_mag = torch.sqrt(clean_ri[:, :1].square() + clean_ri[:, 1:].square() + 1e-12)
        per_example = (1, 2, 3)
        loss = w.ri_weight * ((est_real - clean_ri[:, :1]).square().mean(per_example)
                              + (est_imag - clean_ri[:, 1:]).square().mean(per_example))
        loss = loss + w.mag_weight * (est_mag - clean_mag).square().mean(per_example)
        est_wave = istft(decompress(est_real, est_imag, cfg.compress_power), cfg, length=n)  # (B, n), scaled by c
        loss = loss + w.time_weight * (est_wave - target).abs().mean(-1)
        out = {"loss": loss, "gan": {"clean_mag": clean_mag, "est_mag": est_mag,
                                      "est_wave": (est_wave / c).detach(), "clean_wave": clean}}
        if want_wave:
            out["enhanced"], out["clean"] = (est_wave / c).detach(), clean
        return out


class SeparationObjective:
    """Permutation-invariant negative SI-SNR (utterance-level PIT), ClearerVoice's MossFormer2-SS loss.

    The network runs on the mixture as it is (the data is already level-normalised); validation also
    reports SI-SDR improvement over the unprocessed mixture.
    """

    def __init__(self, model_cfg: Any, loss: LossConfig):
        self.cfg = model_cfg

    def __call__(self, net, mixture, sources, *, autocast, want_wave=False) -> dict:
        from steadyvoice.train.losses import pit_si_sdr, si_sdr

        with autocast:
            estimate = net(mixture)  # (B, S, N)
        estimate = estimate.float()
        score, order = pit_si_sdr(estimate, sources)  # (B,), (B, S)
        out = {"loss": -score}
        if want_wave:
            B, S, N = sources.shape
            aligned = estimate.gather(1, order[:, :, None].expand(B, S, N))  # (B, S, N) in talker order
            unprocessed = si_sdr(mixture[:, None].expand(B, S, N).reshape(-1, N), sources.reshape(-1, N)).view(B, S)
            out.update(si_sdr=score.detach(), si_sdri=score.detach() - unprocessed.mean(1),
                       enhanced=aligned.detach(), clean=sources)
        return out


class FullBandObjective:
    """Upper-band gains of a full-band model, over the bins the gains cover: ``mag_weight`` x the MSE of
    power-law compressed magnitudes (|X|^0.3, as DeepFilterNet's spectral loss) between the gained noisy upper
    part X and the clean upper part S, plus ``upper_mse_weight`` x sum |X - S|^2 / sum |Y|^2 (Y: the noisy
    upper part), an inverse band SNR. The core runs as at inference (frozen: without autograd)."""

    COMPRESS = 0.3

    def __init__(self, model_cfg: Any, loss: LossConfig):
        if loss.mag_weight == 0:
            raise ConfigError("loss.mag_weight is 0: the full-band model trains its upper band on it; set it > 0")
        self.cfg, self.loss = model_cfg, loss

    def __call__(self, net, noisy, clean, *, autocast, want_wave=False) -> dict:
        from steadyvoice.pipelines.fullband_se import one_pass, stft, upper_part

        with autocast:
            result = one_pass(net, noisy, self.cfg)
        band = slice(self.cfg.first_upper_bin, None)
        noisy_band = result.upper_spec[:, band]  # (B, F', T)
        estimate = noisy_band * result.gains.transpose(1, 2)[:, band]
        target = stft(upper_part(clean, self.cfg), self.cfg)[:, band]
        c = self.COMPRESS
        compressed = (estimate.abs().clamp(min=1e-12).pow(c) - target.abs().clamp(min=1e-12).pow(c)).square()
        loss = self.loss.mag_weight * compressed.mean(dim=(1, 2))
        if self.loss.upper_mse_weight:
            power = (estimate - target).abs().square().sum(dim=(1, 2))
            loss = loss + self.loss.upper_mse_weight * power / noisy_band.abs().square().sum(dim=(1, 2)).clamp(min=1e-10)
        out = {"loss": loss}
        if want_wave:
            out["enhanced"], out["clean"] = result.enhanced.detach(), clean
        return out


# architecture -> (objective class, the LossConfig fields it uses)
OBJECTIVES: dict[str, tuple[type, tuple[str, ...]]] = {
    "mossformer2-se": (MossFormer2SEObjective, ("psm_weight", "psm_ratio", "si_snr_weight", "mrstft_weight")),
    "frcrn-se": (FRCRNObjective, ("si_snr_weight", "mask_weight")),
    "mossformergan-se": (MossFormerGANObjective, ("ri_weight", "mag_weight", "time_weight", "adversarial_weight")),
    "mossformer2-ss": (SeparationObjective, ()),
    "fullband-se": (FullBandObjective, ("mag_weight", "upper_mse_weight")),
}


def objective_for(model_cfg: Any, loss: LossConfig) -> Objective:
    """The objective of ``model_cfg``'s architecture; ConfigError naming a loss key of another family."""
    from steadyvoice.models import architecture_of

    arch = architecture_of(model_cfg)
    if arch.name not in OBJECTIVES:
        raise ConfigError(f"model.name: {arch.name} models cannot be trained by this trainer yet "
                          f"(trainable: {', '.join(OBJECTIVES)})")
    cls, used = OBJECTIVES[arch.name]
    defaults = LossConfig.__dataclass_fields__
    for key, field in defaults.items():
        if key not in used and getattr(loss, key) != field.default:
            raise ConfigError(f"loss.{key}: not a loss of {arch.name} models (it uses {', '.join(used) or 'no loss keys'}); "
                              "the recipe mixes model families: remove the key or pick the matching model.name")
    return cls(model_cfg, loss)


def check_gan_section(model_cfg: Any, loss: LossConfig, gan: Any) -> None:
    """A ``gan:`` section only goes with a GAN-trained model: anything set in it otherwise is an error."""
    from steadyvoice.models import architecture_of

    if architecture_of(model_cfg).name == "mossformergan-se" and loss.adversarial_weight > 0:
        gan.resolve()  # the discriminator config must be valid (names gan.overrides.<key>)
        return
    for key, field in type(gan).__dataclass_fields__.items():
        default = field.default_factory() if callable(field.default_factory) else field.default
        if getattr(gan, key) != default:
            raise ConfigError(f"gan.{key}: the gan section is for MossFormerGAN models trained with "
                              "loss.adversarial_weight > 0; this recipe trains "
                              f"{architecture_of(model_cfg).name}: remove the section or pick the matching model.name")
