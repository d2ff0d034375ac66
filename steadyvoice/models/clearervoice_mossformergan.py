"""Official ClearerVoice MossFormerGAN_SE_16K checkpoints: key mapping and config inference.

Their generator checkpoint (``{'model': SyncANet state_dict, ...}`` or a bare state_dict, ``module.`` in
front when trained under DDP) holds keys such as ``dense_encoder.conv_1.0.weight`` and
``blocks.3.intra_mossformer.to_qk.mdl.1.weight``; their discriminator is saved to a separate file
(``{'discriminator': state_dict, 'optimizer_disc': ...}``). This module:

* recognises both (:func:`is_mossformergan`); a file holding only the discriminator is refused by
  :func:`load_mossformergan` with a message saying so (it is a training network, not an enhancer);
* maps every key to ours and back through one explicit table per configuration
  (:func:`generator_key_table`, :func:`discriminator_key_table`). The FSMN memory convolutions change
  from their 2-D ``(C, 1, K, 1)`` to our 1-D ``(C, 1, K)``; the 12 rotary ``freqs`` tables (one per
  MossFormer unit in theirs, one shared table in ours) are checked to equal ours, then dropped;
* infers the configuration from the tensor shapes (:func:`infer_generator_config`), so reduced variants
  (fewer channels or blocks) convert too.

Every problem is a :class:`~steadyvoice.errors.CheckpointError` naming the key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from steadyvoice.config import from_dict
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models.clearervoice import strip_wrapper_prefixes
from steadyvoice.models.mossformer2 import rotary_freqs
from steadyvoice.models.mossformer_gan import (MetricDiscriminator, MetricDiscriminatorConfig, MossFormerGANConfig,
                                               MossFormerGANGenerator)

__all__ = [
    "is_mossformergan",
    "load_mossformergan",
    "generator_key_table",
    "discriminator_key_table",
    "generator_official_to_ours",
    "generator_ours_to_official",
    "discriminator_official_to_ours",
    "discriminator_ours_to_official",
    "infer_generator_config",
    "infer_discriminator_config",
    "load_discriminator",
]

_SAME, _CONV2D_COLUMN, _FIXED = "same", "conv2d_column", "fixed"
_GENERATOR_ROOTS = {"dense_encoder", "blocks", "mask_decoder", "complex_decoder"}
_DISCRIMINATOR_ROOTS = {"cnn", "att", "pool", "sigmoid"}
Table = list[tuple[str, "str | None", str]]  # (their key, our key or None for a fixed table, kind)
StateDict = dict[str, torch.Tensor]


# ---- recognising ------------------------------------------------------------------------------------------


def is_mossformergan(sd: dict[str, torch.Tensor]) -> bool:
    """A MossFormerGAN_SE_16K generator (SyncANet) or discriminator state_dict (wrapper prefixes removed)."""
    roots = {k.split(".", 1)[0] for k in sd}
    if roots and roots <= _GENERATOR_ROOTS:
        return "dense_encoder.conv_1.0.weight" in sd
    if roots and roots <= _DISCRIMINATOR_ROOTS:
        return "cnn.conv1.weight" in sd and "sigmoid.slope" in sd
    return False


def _is_discriminator(sd: dict[str, torch.Tensor]) -> bool:
    return "cnn.conv1.weight" in sd and "dense_encoder.conv_1.0.weight" not in sd


# ---- key tables --------------------------------------------------------------------------------------------


def _ffconv(theirs: str, ours: str) -> Table:
    """Their FFConvM = Sequential(LayerNorm, Linear, SiLU, ConvModule, Dropout) -> our ConvFeedForward."""
    return (_wb(f"{theirs}.mdl.0", f"{ours}.norm") + _wb(f"{theirs}.mdl.1", f"{ours}.linear")
            + [(f"{theirs}.mdl.3.sequential.1.conv.weight", f"{ours}.dwconv.weight", _SAME)])


def _fsmn(theirs: str, ours: str) -> Table:
    """Their UniDeepFsmn (linear, project, 2-D depthwise conv1) -> our FSMNMemory (linear, project, conv)."""
    return [(f"{theirs}.linear.weight", f"{ours}.linear.weight", _SAME),
            (f"{theirs}.linear.bias", f"{ours}.linear.bias", _SAME),
            (f"{theirs}.project.weight", f"{ours}.project.weight", _SAME),
            (f"{theirs}.conv1.weight", f"{ours}.conv.weight", _CONV2D_COLUMN)]


def _same(theirs: str, ours: str, *names: str) -> Table:
    return [(f"{theirs}.{n}", f"{ours}.{n}", _SAME) for n in names]


def _wb(theirs: str, ours: str) -> Table:
    return _same(theirs, ours, "weight", "bias")


def _dense_block(theirs: str, ours: str, depth: int) -> Table:
    rows: Table = []
    for j in range(depth):
        t, o = f"{theirs}.", f"{ours}.layers.{j}."
        rows += _wb(f"{t}conv{j + 1}", f"{o}conv") + _wb(f"{t}norm{j + 1}", f"{o}norm")
        rows += _same(f"{t}prelu{j + 1}", f"{o}act", "weight") + _fsmn(f"{t}fsmn{j + 1}.fsmn", f"{o}fsmn.memory")
    return rows


def _axis_path(theirs: str, ours: str, side: str) -> Table:
    """The intra (frequency) or inter (time) half of their SyncANetBlock -> our AxisPath."""
    rows = _wb(f"{theirs}.Fconv", f"{ours}.unfold") if side == "intra" else []
    rows += _same(f"{theirs}.{side}_norm", f"{ours}.norm", "gamma", "beta")
    rows += _ffconv(f"{theirs}.{side}_to_u", f"{ours}.to_u") + _ffconv(f"{theirs}.{side}_to_v", f"{ours}.to_v")
    rows += _fsmn(f"{theirs}.{side}_rnn.0", f"{ours}.fsmn")
    moss, att = f"{theirs}.{side}_mossformer", f"{ours}.attention"
    rows.append((f"{moss}.rotary_pos_emb.freqs", None, _FIXED))
    for t, o in (("to_hidden", "hidden_proj"), ("to_qk", "qk_proj"), ("to_out", "out_proj")):
        rows += _ffconv(f"{moss}.{t}", f"{att}.{o}")
        if t == "to_qk":
            rows += _same(f"{moss}.qk_offset_scale", f"{att}.qk_offset_scale", "gamma", "beta")
    rows += _wb(f"{theirs}.{side}_linear", f"{ours}.fold")
    for pool in ("avg", "max"):
        for index in (0, 2):
            rows += _wb(f"{theirs}.{side}_se.{pool}_pool_layer.{index}", f"{ours}.se.{pool}_gate.{index}")
    return rows


def _conv_prelu_norm(theirs: str, ours: str) -> Table:
    return (_wb(f"{theirs}.0", f"{ours}.conv") + _same(f"{theirs}.1", f"{ours}.act", "weight")
            + _same(f"{theirs}.2", f"{ours}.norm", "gamma", "beta"))


def generator_key_table(cfg: MossFormerGANConfig) -> Table:
    """Every key of their SyncANet state_dict for ``cfg``, in their order, with our key and the conversion."""
    rows = (_wb("dense_encoder.conv_1.0", "encoder.in_conv") + _wb("dense_encoder.conv_1.1", "encoder.in_norm")
            + _same("dense_encoder.conv_1.2", "encoder.in_act", "weight")
            + _dense_block("dense_encoder.dilated_dense", "encoder.dense", cfg.dense_depth)
            + _wb("dense_encoder.conv_2.0", "encoder.down_conv") + _wb("dense_encoder.conv_2.1", "encoder.down_norm")
            + _same("dense_encoder.conv_2.2", "encoder.down_act", "weight"))
    for i in range(cfg.num_blocks):
        theirs, ours = f"blocks.{i}", f"blocks.{i}"
        rows += _axis_path(theirs, f"{ours}.freq_path", "intra") + _axis_path(theirs, f"{ours}.time_path", "inter")
        for h in range(cfg.attn_heads):
            for letter, name in (("Q", "queries"), ("K", "keys"), ("V", "values")):
                rows += _conv_prelu_norm(f"{theirs}.attn_conv_{letter}_{h}", f"{ours}.full_band.{name}.{h}")
        rows += _conv_prelu_norm(f"{theirs}.attn_concat_proj", f"{ours}.full_band.out")
    rows += (_dense_block("mask_decoder.dense_block", "mask_decoder.dense", cfg.dense_depth)
             + _wb("mask_decoder.sub_pixel.conv", "mask_decoder.upsample.conv")
             + _wb("mask_decoder.conv_1", "mask_decoder.conv") + _wb("mask_decoder.norm", "mask_decoder.norm")
             + _same("mask_decoder.prelu", "mask_decoder.act", "weight")
             + _wb("mask_decoder.final_conv", "mask_decoder.final_conv")
             + _same("mask_decoder.prelu_out", "mask_decoder.freq_act", "weight"))
    rows += (_dense_block("complex_decoder.dense_block", "complex_decoder.dense", cfg.dense_depth)
             + _wb("complex_decoder.sub_pixel.conv", "complex_decoder.upsample.conv")
             + _same("complex_decoder.prelu", "complex_decoder.act", "weight")
             + _wb("complex_decoder.norm", "complex_decoder.norm")
             + _wb("complex_decoder.conv", "complex_decoder.conv"))
    return rows


_BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _feed_forward(theirs: str, ours: str) -> Table:
    """Their Scale(0.5, PreNorm(LayerNorm, FeedForward(net = Linear, Swish, Dropout, Linear, Dropout)))."""
    return (_wb(f"{theirs}.fn.fn.net.0", f"{ours}.linear1") + _wb(f"{theirs}.fn.fn.net.3", f"{ours}.linear2")
            + _wb(f"{theirs}.fn.norm", f"{ours}.norm"))


def discriminator_key_table(cfg: MetricDiscriminatorConfig) -> Table:
    """Every key of their Discriminator state_dict for ``cfg``, in their order, with our key."""
    rows: Table = []
    for k in range(6):
        rows += _wb(f"cnn.conv{k + 1}", f"cnn.convs.{k}") + _same(f"cnn.bn{k + 1}", f"cnn.norms.{k}", *_BATCH_NORM)
    for b in range(cfg.conformer_blocks):
        t, o = f"att.{b}", f"conformer.{b}"
        rows += _feed_forward(f"{t}.ff1", f"{o}.ff1")
        rows += _same(f"{t}.attn.fn", f"{o}.attn", "to_q.weight", "to_kv.weight", "to_out.weight", "to_out.bias")
        rows += [(f"{t}.attn.fn.rel_pos_emb.weight", f"{o}.attn.rel_pos.weight", _SAME)]
        rows += _wb(f"{t}.attn.norm", f"{o}.attn_norm")
        rows += (_wb(f"{t}.conv.net.0", f"{o}.conv.norm") + _wb(f"{t}.conv.net.2", f"{o}.conv.pointwise_in")
                 + _wb(f"{t}.conv.net.4.conv", f"{o}.conv.depthwise")
                 + _same(f"{t}.conv.net.5", f"{o}.conv.batch_norm", *_BATCH_NORM)
                 + _wb(f"{t}.conv.net.7", f"{o}.conv.pointwise_out"))
        rows += _feed_forward(f"{t}.ff2", f"{o}.ff2")
        rows += _wb(f"{t}.post_norm", f"{o}.post_norm")
    rows += _wb("pool.linear1", "pool.hidden") + _wb("pool.linear2", "pool.score") + _wb("pool.linear3", "pool.out")
    rows += [("sigmoid.slope", "slope", _SAME)]
    return rows


# ---- mapping ------------------------------------------------------------------------------------------------


def _official_to_ours(sd: dict[str, torch.Tensor], table: Table, what: str) -> dict[str, tuple[str, torch.Tensor]]:
    """our key -> (their key, our tensor); every key of the table must be present and no other."""
    sd = strip_wrapper_prefixes(sd)
    known = {theirs for theirs, _, _ in table}
    extra = [k for k in sd if k not in known]
    if extra:
        raise CheckpointError(f"unexpected key '{extra[0]}'{_more(extra)}: not part of ClearerVoice's {what} of "
                              "this size")
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for theirs, ours, kind in table:
        if theirs not in sd:
            raise CheckpointError(f"key '{theirs}' is missing; the checkpoint is not a complete {what}")
        value = sd[theirs]
        if kind == _FIXED:
            _check_rotary_table(theirs, value)
            continue
        out[ours] = (theirs, _to_ours(theirs, value, kind))
    return out


def _ours_to_official(sd: StateDict, table: Table, what: str, rotary_dim: int = 0) -> StateDict:
    by_ours = {ours: (theirs, kind) for theirs, ours, kind in table if ours is not None}
    extra = [k for k in sd if k not in by_ours]
    if extra:
        raise CheckpointError(f"unexpected key '{extra[0]}'{_more(extra)}: not a SteadyVoice {what} weight")
    out: dict[str, torch.Tensor] = {}
    for theirs, ours, kind in table:  # their order
        if kind == _FIXED:
            out[theirs] = rotary_freqs(rotary_dim)
        elif ours not in sd:
            raise CheckpointError(f"weight '{ours}' is missing")
        else:
            out[theirs] = sd[ours] if kind == _SAME else sd[ours].unsqueeze(-1)
    return out


def generator_official_to_ours(sd: StateDict, cfg: MossFormerGANConfig | None = None) -> StateDict:
    """Their SyncANet state_dict -> ours (config inferred from the shapes unless given)."""
    cfg = cfg or infer_generator_config(sd)
    return {ours: v for ours, (_, v) in _official_to_ours(sd, generator_key_table(cfg), "generator").items()}


def generator_ours_to_official(sd: StateDict, cfg: MossFormerGANConfig) -> StateDict:
    """Our generator state_dict -> their SyncANet keys (with the rotary tables they store)."""
    return _ours_to_official(sd, generator_key_table(cfg), "MossFormerGAN generator", cfg.rotary_dim)


def discriminator_official_to_ours(sd: StateDict, cfg: MetricDiscriminatorConfig | None = None) -> StateDict:
    """Their Discriminator state_dict -> ours (config inferred from the shapes unless given)."""
    cfg = cfg or infer_discriminator_config(sd)
    table = discriminator_key_table(cfg)
    return {ours: v for ours, (_, v) in _official_to_ours(sd, table, "discriminator").items()}


def discriminator_ours_to_official(sd: StateDict, cfg: MetricDiscriminatorConfig) -> StateDict:
    """Our discriminator state_dict -> their Discriminator keys."""
    return _ours_to_official(sd, discriminator_key_table(cfg), "MossFormerGAN discriminator")


def _to_ours(key: str, value: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == _SAME:
        return value
    if value.dim() != 4 or value.shape[1] != 1 or value.shape[-1] != 1:
        raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}; expected (channels, 1, kernel, 1)")
    return value.squeeze(-1)


def _check_rotary_table(key: str, value: torch.Tensor) -> None:
    if value.dim() != 1 or value.numel() == 0:
        raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}; expected a 1-D frequency table")
    expected = rotary_freqs(2 * value.numel())
    if not torch.allclose(value.detach().float().cpu(), expected, rtol=1e-6, atol=0.0):
        diff = (value.detach().float().cpu() - expected).abs().max().item()
        raise CheckpointError(f"'{key}' differs from the standard rotary frequency table SteadyVoice computes (max "
                              f"difference {diff:.3g}); this checkpoint was not made by ClearerVoice's MossFormerGAN "
                              "code and cannot be imported faithfully")


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


# ---- configuration ------------------------------------------------------------------------------------------


def infer_generator_config(sd: dict[str, torch.Tensor], *, sample_rate: int = 16000,
                           hop_length: int | None = None) -> MossFormerGANConfig:
    """Generator config read from their tensor shapes.

    Inferred: n_fft (= win_length, from the per-bin mask slopes), channels, num_blocks, query_key_dim,
    rotary_dim, conv_kernel, fsmn_lorder, dense_depth, dense_fsmn_lorder, attn_heads, approx_qk_dim. Not in
    the weights, so given: ``sample_rate`` (16000) and ``hop_length`` (default n_fft / 4, their 400 / 100).
    """
    sd = strip_wrapper_prefixes(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"cannot infer the configuration: key '{key}' is missing; is this a ClearerVoice "
                                  "MossFormerGAN_SE_16K generator checkpoint?")
        return tuple(sd[key].shape)

    def count(pattern: str) -> int:
        found = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))})
        if not found or found != list(range(found[0], found[0] + len(found))):
            raise CheckpointError(f"cannot infer the configuration: indices found for '{pattern}' are {found}")
        return len(found)

    n_freqs = shape("mask_decoder.prelu_out.weight")[0]
    n_fft = 2 * (n_freqs - 1)
    channels = shape("dense_encoder.conv_1.0.weight")[0]
    moss = "blocks.0.intra_mossformer."
    freqs_key = moss + "rotary_pos_emb.freqs"
    qk_dim = shape(moss + "to_qk.mdl.1.weight")[0]
    encoded = (n_freqs + 1) // 2
    head_qk = shape("blocks.0.attn_conv_Q_0.0.weight")[0]
    values = dict(
        sample_rate=sample_rate, win_length=n_fft, hop_length=n_fft // 4 if hop_length is None else hop_length,
        n_fft=n_fft, channels=channels,
        num_blocks=count(r"blocks\.(\d+)\.Fconv\.weight"),
        query_key_dim=qk_dim,
        rotary_dim=2 * shape(freqs_key)[0] if freqs_key in sd else min(32, qk_dim),
        conv_kernel=shape(moss + "to_qk.mdl.3.sequential.1.conv.weight")[-1],
        fsmn_lorder=(shape("blocks.0.intra_rnn.0.conv1.weight")[2] + 1) // 2,
        dense_depth=count(r"dense_encoder\.dilated_dense\.conv(\d+)\.weight"),
        dense_fsmn_lorder=(shape("dense_encoder.dilated_dense.fsmn1.fsmn.conv1.weight")[2] + 1) // 2,
        attn_heads=count(r"blocks\.0\.attn_conv_Q_(\d+)\.0\.weight"),
        # Theirs derives E = ceil(512 / F'); a checkpoint with another E is described exactly by E * F'.
        approx_qk_dim=512 if math.ceil(512 / encoded) == head_qk else head_qk * encoded,
    )
    try:
        return from_dict(MossFormerGANConfig, values)
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint does not describe a valid MossFormerGAN generator: {exc}") from None


def infer_discriminator_config(sd: dict[str, torch.Tensor]) -> MetricDiscriminatorConfig:
    """Discriminator config read from their tensor shapes (CNN widths, Conformer blocks, widths and kernel, pool)."""
    sd = strip_wrapper_prefixes(sd)
    try:
        channels = tuple(int(sd[f"cnn.conv{k}.weight"].shape[0]) for k in (1, 2, 3))
        blocks = len({k.split(".")[1] for k in sd if k.startswith("att.")})
        widths = dict(pool_hidden=int(sd["pool.linear1.weight"].shape[0]))
        if blocks:  # the Conformer's widths and kernel (feature_dim = 6 * channels[2])
            dim, rel = 6 * channels[2], tuple(sd["att.0.attn.fn.rel_pos_emb.weight"].shape)
            widths.update(conv_kernel=int(sd["att.0.conv.net.4.conv.weight"].shape[-1]),
                          conv_expansion=int(sd["att.0.conv.net.4.conv.weight"].shape[0]) // dim,
                          ff_mult=int(sd["att.0.ff1.fn.fn.net.0.weight"].shape[0]) // dim,
                          conformer_heads=dim // rel[1], max_relative_position=(rel[0] - 1) // 2)
        return MetricDiscriminatorConfig(cnn_channels=channels, conformer_blocks=blocks, **widths)
    except KeyError as exc:
        raise CheckpointError(f"cannot infer the discriminator configuration: key {exc} is missing") from None
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint does not describe a valid MossFormerGAN discriminator: {exc}") from None


# ---- loading ------------------------------------------------------------------------------------------------


def load_mossformergan(sd: dict[str, torch.Tensor], path: Path, *, sample_rate: int | None, hop_length: int | None,
                       fmin: float) -> tuple[MossFormerGANGenerator, MossFormerGANConfig]:
    """Their generator state_dict -> (our generator, its config). ``fmin`` is unused (no mel front end)."""
    from steadyvoice.models import load_state_dict_strict  # the one strict loader

    sd = strip_wrapper_prefixes(sd)
    if _is_discriminator(sd):
        raise CheckpointError(f"{path}: holds the MossFormerGAN_SE_16K discriminator (a training-only network that "
                              "scores enhanced speech), not the generator that enhances; convert the generator "
                              "checkpoint instead (the model.ckpt-*.pt file, or the one named first in "
                              "last_best_checkpoint)")
    try:
        cfg = infer_generator_config(sd, sample_rate=sample_rate or 16000, hop_length=hop_length)
        mapped = _official_to_ours(sd, generator_key_table(cfg), "MossFormerGAN_SE_16K generator")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = MossFormerGANGenerator(cfg)
    ours = {k: value for k, (_, value) in mapped.items()}
    load_state_dict_strict(model, ours, where=str(path), error=CheckpointError,
                           describe=lambda k: f"'{mapped[k][0]}' (ours '{k}')" if k in mapped else f"'{k}'")
    return model, cfg


def load_discriminator(sd: StateDict, *,
                       where: str = "discriminator") -> tuple[MetricDiscriminator, MetricDiscriminatorConfig]:
    """Their Discriminator state_dict -> (our MetricDiscriminator, its config), every weight checked."""
    from steadyvoice.models import load_state_dict_strict

    cfg = infer_discriminator_config(sd)
    mapped = _official_to_ours(sd, discriminator_key_table(cfg), "MossFormerGAN_SE_16K discriminator")
    model = MetricDiscriminator(cfg)
    load_state_dict_strict(model, {k: v for k, (_, v) in mapped.items()}, where=where, error=CheckpointError,
                           describe=lambda k: f"'{mapped[k][0]}' (ours '{k}')" if k in mapped else f"'{k}'")
    return model, cfg
