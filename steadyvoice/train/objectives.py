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
from steadyvoice.train.losses import neg_si_snr, psm_mse


class Objective(Protocol):
    def __call__(self, net: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, *,
                 autocast: contextlib.AbstractContextManager, want_wave: bool = False) -> dict: ...


class MossFormer2SEObjective:
    """ClearerVoice's MossFormer2-SE loss: magnitude-weighted PSM MSE (+ optional negative SI-SNR).

    The batch is cut to the frame-aligned length n = cropped_length(N) (the frames cover every kept sample);
    the model runs in features.one_pass, as at inference.
    """

    def __init__(self, model_cfg: Any, loss: LossConfig):
        self.cfg, self.loss = model_cfg, loss

    def __call__(self, net, noisy, clean, *, autocast, want_wave=False) -> dict:
        from steadyvoice.features import cropped_length, one_pass, stft

        n = cropped_length(noisy.shape[-1], self.cfg)
        noisy, clean = noisy[:, :n], clean[:, :n]  # (B, n)
        reconstruct = bool(self.loss.si_snr_weight or want_wave)
        mask, noisy_spec, enhanced = one_pass(net, noisy, self.cfg, autocast=autocast, reconstruct=reconstruct)
        loss = torch.zeros(noisy.shape[0], device=noisy.device)
        if self.loss.psm_weight:
            loss = loss + self.loss.psm_weight * psm_mse(mask, noisy_spec, stft(clean, self.cfg), self.loss.psm_ratio)
        out = {}
        if reconstruct:  # enhanced: (B, n)
            if self.loss.si_snr_weight:
                loss = loss + self.loss.si_snr_weight * neg_si_snr(enhanced, clean)
            out["enhanced"], out["clean"] = enhanced, clean
        out["loss"] = loss
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


# architecture -> (objective class, the LossConfig fields it uses)
OBJECTIVES: dict[str, tuple[type, tuple[str, ...]]] = {
    "mossformer2-se": (MossFormer2SEObjective, ("psm_weight", "psm_ratio", "si_snr_weight")),
    "mossformer2-ss": (SeparationObjective, ()),
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
            raise ConfigError(f"loss.{key}: not a loss of {arch.name} models (it uses {', '.join(used)}); the recipe "
                              "mixes model families: remove the key or pick the matching model.name")
    return cls(model_cfg, loss)
