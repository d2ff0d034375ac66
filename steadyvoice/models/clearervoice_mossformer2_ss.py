"""Official ClearerVoice-Studio MossFormer2_SS_16K checkpoints: recognition, key mapping, config inference.

Their checkpoint holds the state_dict of their ``MossFormer`` (keys under ``enc.``, ``mask_net.`` and
``dec.``; ``module.`` in front when trained under DDP), as ``{'model': state_dict}`` or bare. Safe reading
and wrapper-prefix removal are those of :mod:`steadyvoice.models.clearervoice`, which lists this family in
its ``FAMILIES``; this module holds what is particular to the separation network:

* :func:`is_mossformer2_ss`: the family test (an ``enc.conv1d`` encoder in front of a ``mask_net``);
* :func:`official_to_ours` / :func:`ours_to_official`: the key mapping. Their 1x1 convolutions become our
  Linear layers (``(out, in, 1)`` <-> ``(out, in)``) and the 2-D convolutions of their dilated dense memory
  (``(C, i+1, K, 1)``) our 1-D ones; their fixed tables (the rotary ``freqs`` listed once per layer, the
  position encoding's ``inv_freq``) are checked to equal ours and not stored;
* :func:`infer_config`: the configuration read from tensor shapes, so reduced variants convert too;
* :func:`load_mossformer2_ss`: the ready model (every weight must fit).

Every problem is a :class:`~steadyvoice.errors.CheckpointError` naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from steadyvoice.config import from_dict
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models.clearervoice import (_CONV1X1, _CONV2D_COLUMN, _FFCONV, _FIXED, _SAME, _template_regex,
                                             map_official_keys, map_our_keys, strip_wrapper_prefixes)
from steadyvoice.models.mossformer2 import rotary_freqs, sinusoidal_inv_freq
from steadyvoice.models.mossformer2_ss import MossFormer2SS, MossFormer2SSConfig

__all__ = ["is_mossformer2_ss", "official_to_ours", "ours_to_official", "infer_config", "load_mossformer2_ss"]

OFFICIAL_SAMPLE_RATE = 16000

# ---- key mapping table ----------------------------------------------------------------------------------
# (their key, our key, how the tensor changes). "{i}" is a block index; "{j}" a layer of the dilated dense
# memory, counted from 1 in theirs (conv1, conv2, ...) and from 0 in ours (convs.0, convs.1, ...).
_LAYER = "mask_net.mdl.intra_mdl.mossformerM.layers.{i}."
_FSMN = "mask_net.mdl.intra_mdl.mossformerM.fsmn.{i}."
_MEMORY = _FSMN + "gated_fsmn.fsmn."


def _mapping_rules() -> list[tuple[str, str | None, str]]:
    rules = [
        ("enc.conv1d.weight", "encoder.weight", _SAME),
        ("mask_net.norm.weight", "input_norm.weight", _SAME),
        ("mask_net.norm.bias", "input_norm.bias", _SAME),
        ("mask_net.conv1d_encoder.weight", "input_proj.weight", _CONV1X1),
        ("mask_net.pos_enc.scale", "position.scale", _SAME),
        ("mask_net.pos_enc.inv_freq", None, _FIXED),
        (_LAYER + "rotary_pos_emb.freqs", None, _FIXED),
        (_LAYER + "qk_offset_scale.gamma", "blocks.{i}.attention.qk_offset_scale.gamma", _SAME),
        (_LAYER + "qk_offset_scale.beta", "blocks.{i}.attention.qk_offset_scale.beta", _SAME),
    ]
    for theirs, ours in (("to_hidden", "hidden_proj"), ("to_qk", "qk_proj"), ("to_out", "out_proj")):
        rules += [(f"{_LAYER}{theirs}.{a}", f"blocks.{{i}}.attention.{ours}.{b}", _SAME) for a, b in _FFCONV]
    block, memory = "blocks.{i}.fsmn.", "blocks.{i}.fsmn.gated_fsmn.memory."
    rules += [
        (_FSMN + "conv1.0.weight", block + "in_proj.weight", _CONV1X1),
        (_FSMN + "conv1.0.bias", block + "in_proj.bias", _SAME),
        (_FSMN + "conv1.1.weight", block + "in_act.weight", _SAME),
        (_FSMN + "norm1.weight", block + "norm1.weight", _SAME),
        (_FSMN + "norm1.bias", block + "norm1.bias", _SAME),
        (_FSMN + "norm2.weight", block + "norm2.weight", _SAME),
        (_FSMN + "norm2.bias", block + "norm2.bias", _SAME),
        (_FSMN + "conv2.weight", block + "out_proj.weight", _CONV1X1),
        (_FSMN + "conv2.bias", block + "out_proj.bias", _SAME),
        (_MEMORY + "linear.weight", memory + "linear.weight", _SAME),
        (_MEMORY + "linear.bias", memory + "linear.bias", _SAME),
        (_MEMORY + "project.weight", memory + "project.weight", _SAME),
        (_MEMORY + "conv.conv{j}.weight", memory + "convs.{j}.weight", _CONV2D_COLUMN),
        (_MEMORY + "conv.norm{j}.weight", memory + "norms.{j}.weight", _SAME),
        (_MEMORY + "conv.norm{j}.bias", memory + "norms.{j}.bias", _SAME),
        (_MEMORY + "conv.prelu{j}.weight", memory + "acts.{j}.weight", _SAME),
    ]
    for branch in ("to_u", "to_v"):
        rules += [(f"{_FSMN}gated_fsmn.{branch}.{a}", f"{block}gated_fsmn.{branch}.{b}", _SAME) for a, b in _FFCONV]
    rules += [
        ("mask_net.mdl.intra_mdl.norm.weight", "blocks_norm.weight", _SAME),
        ("mask_net.mdl.intra_mdl.norm.bias", "blocks_norm.bias", _SAME),
        ("mask_net.mdl.intra_norm.weight", "skip_norm.weight", _SAME),
        ("mask_net.mdl.intra_norm.bias", "skip_norm.bias", _SAME),
        ("mask_net.prelu.weight", "prelu.weight", _SAME),
        ("mask_net.conv1d_out.weight", "speaker_proj.weight", _CONV1X1),
        ("mask_net.conv1d_out.bias", "speaker_proj.bias", _SAME),
        ("mask_net.output.0.weight", "out_tanh.weight", _CONV1X1),
        ("mask_net.output.0.bias", "out_tanh.bias", _SAME),
        ("mask_net.output_gate.0.weight", "out_gate.weight", _CONV1X1),
        ("mask_net.output_gate.0.bias", "out_gate.bias", _SAME),
        ("mask_net.conv1_decoder.weight", "mask_proj.weight", _CONV1X1),
        ("dec.weight", "decoder.weight", _SAME),
    ]
    return rules


_RULES = [(_template_regex(theirs), _template_regex(ours) if ours else None, theirs, ours, kind)
          for theirs, ours, kind in _mapping_rules()]


# ---- recognition and mapping ----------------------------------------------------------------------------


def is_mossformer2_ss(sd: dict[str, torch.Tensor]) -> bool:
    """MossFormer2_SS_16K: a waveform encoder ``enc.conv1d`` and every other key under ``mask_net.`` / ``dec.``."""
    return "enc.conv1d.weight" in sd and all(k.startswith(("enc.", "mask_net.", "dec.")) for k in sd)


def official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state_dict -> ours. Fixed tables are checked, then dropped."""
    return {ours: value for ours, (_, value) in _map_official(sd).items()}


def _map_official(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """our key -> (their key, our tensor); their memory layers count from 1, ours from 0."""
    return map_official_keys(sd, _RULES, "ClearerVoice's MossFormer2_SS network", "a MossFormer2_SS_16K checkpoint",
                             j_offset=-1)


def ours_to_official(sd: dict[str, torch.Tensor], cfg: MossFormer2SSConfig) -> dict[str, torch.Tensor]:
    """Our state_dict -> theirs (``enc.``, ``mask_net.``, ``dec.``), adding the fixed tables they store."""
    out = map_our_keys(sd, _RULES, "MossFormer2SS", j_offset=-1)
    for i in range(cfg.num_blocks):
        out[_LAYER.format(i=i) + "rotary_pos_emb.freqs"] = rotary_freqs(cfg.rotary_dim)
    if cfg.use_global_pos_enc:
        out["mask_net.pos_enc.inv_freq"] = sinusoidal_inv_freq(cfg.model_dim)
    return out


# ---- configuration ------------------------------------------------------------------------------------


def infer_config(sd: dict[str, torch.Tensor], sample_rate: int = OFFICIAL_SAMPLE_RATE, hop_length: int | None = None,
                 **fixed: Any) -> MossFormer2SSConfig:
    """Config of an official state_dict, read from tensor shapes (so reduced variants convert too).

    Inferred: encoder_kernel, encoder_dim, model_dim, num_blocks, num_spks, query_key_dim, expansion_factor,
    rotary_dim, conv_kernel, fsmn_inner_dim, fsmn_lorder, fsmn_depth, norm_type, use_global_pos_enc. Not
    visible in weights, so given here (defaults = official): ``sample_rate`` (16000), ``hop_length`` = the
    encoder stride (theirs is always encoder_kernel // 2) and, through ``fixed``, e.g. group_size, causal.
    """
    sd = strip_wrapper_prefixes(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"cannot infer the configuration: key '{key}' is missing; is this a "
                                  "ClearerVoice MossFormer2_SS_16K checkpoint?")
        return tuple(sd[key].shape)

    encoder_dim, _, kernel = shape("enc.conv1d.weight")
    model_dim = shape("mask_net.conv1d_encoder.weight")[0]
    layer_re = re.compile(re.escape("mask_net.mdl.intra_mdl.mossformerM.layers.") + r"(\d+)\.")
    layers = sorted({int(m.group(1)) for k in sd if (m := layer_re.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"cannot infer the number of blocks: layer indices found are {layers}")
    layer, fsmn, memory = _LAYER.format(i=0), _FSMN.format(i=0), _MEMORY.format(i=0)
    depth_re = re.compile(re.escape(memory + "conv.conv") + r"(\d+)\.weight")
    depth = sorted(int(m.group(1)) for k in sd if (m := depth_re.fullmatch(k)))
    if not depth or depth != list(range(1, len(depth) + 1)):
        raise CheckpointError(f"cannot infer the depth of the dilated memory: layers found are {depth}")
    qk_dim = shape(layer + "to_qk.mdl.1.weight")[0]
    freqs_key = layer + "rotary_pos_emb.freqs"
    inferred = dict(
        sample_rate=sample_rate, encoder_kernel=kernel,
        encoder_stride=kernel // 2 if hop_length is None else hop_length,
        encoder_dim=encoder_dim, model_dim=model_dim, num_blocks=len(layers),
        num_spks=shape("mask_net.conv1d_out.weight")[0] // model_dim,
        query_key_dim=qk_dim,
        expansion_factor=shape(layer + "to_hidden.mdl.1.weight")[0] / model_dim,
        rotary_dim=2 * sd[freqs_key].numel() if freqs_key in sd else min(32, qk_dim),
        conv_kernel=shape(layer + "to_hidden.mdl.3.sequential.1.conv.weight")[-1],
        fsmn_inner_dim=shape(fsmn + "conv1.0.weight")[0],
        fsmn_lorder=(shape(memory + "conv.conv1.weight")[2] + 1) // 2,
        fsmn_depth=len(depth),
        norm_type="scalenorm" if layer + "to_hidden.mdl.0.g" in sd else "layernorm",
        use_global_pos_enc="mask_net.pos_enc.scale" in sd,
    )
    clash = sorted(set(fixed) & set(inferred))
    if clash:
        raise CheckpointError(f"{', '.join(clash)} cannot be given: read from the checkpoint's tensor shapes")
    try:
        return from_dict(MossFormer2SSConfig, {**inferred, **fixed})
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint does not describe a valid MossFormer2SS configuration: {exc}") from None


# ---- loading ------------------------------------------------------------------------------------------


def load_mossformer2_ss(sd: dict[str, torch.Tensor], path: Path, *, sample_rate: int | None,
                        hop_length: int | None, fmin: float) -> tuple[MossFormer2SS, MossFormer2SSConfig]:
    """Their state_dict -> (our model, its config); ``fmin`` (a front-end setting) does not apply here."""
    from steadyvoice.models import load_state_dict_strict  # the one strict loader

    del fmin  # the separation network has no mel front end
    try:
        cfg = infer_config(sd, sample_rate=sample_rate or OFFICIAL_SAMPLE_RATE, hop_length=hop_length)
        mapped = _map_official(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = MossFormer2SS(cfg)
    ours = {k: value for k, (_, value) in mapped.items()}
    load_state_dict_strict(model, ours, where=str(path), error=CheckpointError,
                           describe=lambda k: f"'{mapped[k][0]}' (ours '{k}')" if k in mapped else f"'{k}'")
    return model, cfg
