"""Each architecture's whole inference path, for one pass over a waveform at the model's sample rate.

    enhancement:  fn(model, wave (B, N), cfg, *, autocast=None) -> enhanced (B, N)
                  (autocast: a context such as torch.autocast(...), entered around the network only)
    separation:   fn(model, wave (B, N), cfg, *, decode=None, levels="input", autocast=None) -> sources (B, S, N)
                  (decode: how the network covers a long input, see steadyvoice.separation)

A pipeline does everything between the raw waveform and the network and back (front end, STFT, masks,
the input normalisation and output rescaling the official decoder applies), so that converting an official
ClearerVoice checkpoint and running it reproduces their decoder's output. Long inputs are cut into
overlapping windows around these functions by :mod:`steadyvoice.inference`; the same functions serve
training (one implementation of each path). Modules: ``steadyvoice.features`` (MossFormer2-SE) and one
module per other architecture in this package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from steadyvoice.errors import ModelError

# architecture name -> "module:function"
PIPELINES: dict[str, str] = {
    "mossformer2-se": "steadyvoice.features:enhance_waveform",
    "frcrn-se": "steadyvoice.pipelines.frcrn_se:enhance_waveform",
    "mossformer2-ss": "steadyvoice.pipelines.mossformer2_ss:separate_waveform",
    "mossformergan-se": "steadyvoice.pipelines.mossformergan_se:enhance_waveform",
    "fullband-se": "steadyvoice.pipelines.fullband_se:enhance_waveform",
}


def one_pass(cfg: Any) -> Callable[[torch.nn.Module, torch.Tensor, Any], torch.Tensor]:
    """The one-pass inference function of ``cfg``'s architecture."""
    from steadyvoice.models import architecture_of

    arch = architecture_of(cfg)
    target = PIPELINES.get(arch.name)
    if target is None:
        raise ModelError(f"architecture {arch.name!r} has no inference pipeline")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
