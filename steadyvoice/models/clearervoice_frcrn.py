"""Official ClearerVoice-Studio FRCRN_SE_16K checkpoints: key mapping, config inference, loading.

Their network is ``FRCRN_SE_16K(args).model``, a ``DCCRN``; checkpoint keys are relative to it (``stft.``,
``istft.``, ``unet.``, ``unet2.``), after the ``{'model': ...}`` / ``module.`` unwrapping that
:func:`steadyvoice.models.clearervoice.read_official_checkpoint` and ``strip_wrapper_prefixes`` do. Three
things differ from our :class:`~steadyvoice.models.frcrn.FRCRN`:

* Their UNet registers every per-layer module twice, under a flat name and through a ModuleList
  (``encoder0.*`` and ``encoders.0.*``, ``se_layer_dec1.*`` and ``se_layers_dec.1.*``, ...), so their state_dict
  lists 1692 keys for 868 tensors. Both names map to one weight of ours; when both are present they must
  hold equal values, otherwise the import fails naming both keys. Either name alone is accepted.
* The conv-STFT kernels, the iSTFT window and its identity "enframe" matrix are fixed tables we compute
  (:func:`steadyvoice.models.frcrn.conv_stft_kernels`); on import they are checked to equal ours.
* Their FSMN memory is a 2-D convolution with kernel (order, 1); ours is 1-D: ``(C, 1, K, 1)`` <-> ``(C, 1, K)``.

The modules their forward never applies (``fsmn_enc0``, ``fsmn_dec6``, ``se_layer_dec5``, and the output
of ``se_layer_enc6``) exist in our network too, so every official weight is kept. Every problem is a
:class:`~steadyvoice.errors.CheckpointError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from steadyvoice.config import from_dict
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models.frcrn import FRCRN, FRCRNConfig, conv_stft_kernels

__all__ = ["is_frcrn", "load_frcrn", "official_key_to_ours", "official_to_ours", "infer_frcrn_config"]

_UNETS = {"unet": "unet1", "unet2": "unet2"}  # their DCCRN attribute -> ours
_FIXED = ("stft.weight", "istft.weight", "istft.window", "istft.enframe")
_SAME, _COLUMN = "same", "conv2d_column"  # how a tensor changes: not at all / (C, 1, K, 1) -> (C, 1, K)
_FIXED_ATOL = 1e-6  # the float32 roundings of one float64 computation differ by less than this

# ---- key mapping ----------------------------------------------------------------------------------------
# Their key inside one UNet -> ours; (?:a(\d+)|as\.(\d+)) accepts both registrations of a module.

_FSMN_LEAF = {"linear.weight": "hidden.weight", "linear.bias": "hidden.bias", "project.weight": "project.weight",
              "conv1.weight": "memory.weight"}
_FSMN_LEAVES = "|".join(re.escape(k) for k in _FSMN_LEAF)
_BN_LEAVES = "weight|bias|running_mean|running_var|num_batches_tracked"


def _index(m: re.Match) -> str:
    return m.group("a") or m.group("b")


_UNET_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(rf"fsmn\.fsmn_(?P<part>re|im)_L(?P<layer>[12])\.(?P<leaf>{_FSMN_LEAVES})"),
     lambda m: f"time_fsmn.layers.{int(m['layer']) - 1}.{m['part']}.{_FSMN_LEAF[m['leaf']]}"),
    (re.compile(rf"(?:fsmn_(?P<s1>enc|dec)(?P<a>\d+)|fsmn_(?P<s2>enc|dec)\.(?P<b>\d+))"
                rf"\.fsmn_(?P<part>re|im)_L1\.(?P<leaf>{_FSMN_LEAVES})"),
     lambda m: f"freq_fsmn_{m['s1'] or m['s2']}.{_index(m)}.{m['part']}.{_FSMN_LEAF[m['leaf']]}"),
    (re.compile(r"(?:encoder(?P<a>\d+)|encoders\.(?P<b>\d+))\.conv\.conv_(?P<part>re|im)\.(?P<leaf>weight|bias)"),
     lambda m: f"encoders.{_index(m)}.conv.{m['part']}.{m['leaf']}"),
    (re.compile(r"(?:decoder(?P<a>\d+)|decoders\.(?P<b>\d+))\.transconv\.tconv_(?P<part>re|im)"
                r"\.(?P<leaf>weight|bias)"),
     lambda m: f"decoders.{_index(m)}.conv.{m['part']}.{m['leaf']}"),
    (re.compile(rf"(?:(?P<s1>en|de)coder(?P<a>\d+)|(?P<s2>en|de)coders\.(?P<b>\d+))\.bn\.bn_(?P<part>re|im)"
                rf"\.(?P<leaf>{_BN_LEAVES})"),
     lambda m: f"{m['s1'] or m['s2']}coders.{_index(m)}.norm.{m['part']}.{m['leaf']}"),
    (re.compile(r"(?:se_layer_(?P<s1>enc|dec)(?P<a>\d+)|se_layers_(?P<s2>enc|dec)\.(?P<b>\d+))"
                r"\.fc_(?P<part>r|i)\.(?P<layer>[02])\.(?P<leaf>weight|bias)"),
     lambda m: (f"{'encoder' if (m['s1'] or m['s2']) == 'enc' else 'decoder'}_gates.{_index(m)}."
                f"{'re' if m['part'] == 'r' else 'im'}.{'reduce' if m['layer'] == '0' else 'expand'}.{m['leaf']}")),
    (re.compile(r"linear\.conv_(?P<part>re|im)\.(?P<leaf>weight|bias)"),
     lambda m: f"out_proj.{m['part']}.{m['leaf']}"),
]


def official_key_to_ours(key: str) -> tuple[str, str]:
    """Their key (wrapper prefixes removed) -> (our key, how the tensor changes). CheckpointError if unknown.

    The fixed tables (``stft.weight``, ``istft.*``) have no key of ours: use :func:`official_to_ours`.
    """
    unet, _, rest = key.partition(".")
    if unet in _UNETS:
        for pattern, ours in _UNET_RULES:
            m = pattern.fullmatch(rest)
            if m:
                kind = _COLUMN if rest.endswith("conv1.weight") else _SAME
                return f"{_UNETS[unet]}.{ours(m)}", kind
    raise CheckpointError(f"unexpected key '{key}': not part of ClearerVoice's FRCRN_SE_16K network (keys start "
                          f"with {', '.join(repr(p + '.') for p in ('stft', 'istft', *_UNETS))})")


def official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state_dict (wrapper prefixes removed) -> ours. Fixed tables are checked, then dropped."""
    return {ours: value for ours, (_, value) in _map_official(sd).items()}


def _map_official(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """our key -> (their first key, our tensor); aliases checked equal, fixed tables checked and dropped."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _FIXED:
            continue
        ours, kind = official_key_to_ours(key)
        tensor = _to_ours(key, value, kind)
        if ours in out:  # the second registration of one of their modules
            first, seen = out[ours]
            if seen.shape != tensor.shape or seen.dtype != tensor.dtype or not torch.equal(seen, tensor):
                raise CheckpointError(f"'{key}' and '{first}' are two names of one weight (their UNet registers "
                                      "each module twice) but hold different values; the checkpoint was edited "
                                      "or damaged")
            continue
        out[ours] = (key, tensor)
    _check_fixed_tables(sd)
    return out


def _to_ours(key: str, value: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == _SAME:
        return value
    if value.dim() != 4 or value.shape[1] != 1 or value.shape[-1] != 1:
        raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}; expected (channels, 1, order, 1)")
    return value.squeeze(-1)


def _check_fixed_tables(sd: dict[str, torch.Tensor]) -> None:
    """The saved conv-STFT kernels, window and enframe matrix must be the ones we compute."""
    if "stft.weight" not in sd:
        raise CheckpointError("key 'stft.weight' (the fixed conv-STFT kernel) is missing; is this a ClearerVoice "
                              "FRCRN_SE_16K checkpoint?")
    win_length, fft_len = _stft_sizes(sd)
    analysis, synthesis, window = conv_stft_kernels(win_length, fft_len)
    expected = {"stft.weight": analysis, "istft.weight": synthesis, "istft.window": window[None, :, None],
                "istft.enframe": torch.eye(win_length)[:, None, :]}
    for key, want in expected.items():
        if key not in sd:
            continue
        have = sd[key].detach().float().cpu()
        if have.shape != want.shape:
            raise CheckpointError(f"'{key}' has shape {tuple(have.shape)}; the fixed table SteadyVoice computes for "
                                  f"a {win_length}-sample window has shape {tuple(want.shape)}")
        diff = (have - want).abs().max().item()
        if not diff <= _FIXED_ATOL:
            raise CheckpointError(f"'{key}' differs from the fixed table SteadyVoice computes (max difference "
                                  f"{diff:.3g}); this checkpoint was not made by ClearerVoice's FRCRN code (another "
                                  "window or FFT size?) and cannot be imported faithfully")


def _stft_sizes(sd: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(win_length, fft_len) from the saved conv-STFT kernel (fft_len + 2, 1, win_length)."""
    shape = tuple(sd["stft.weight"].shape)
    if len(shape) != 3 or shape[1] != 1 or shape[0] < 4 or shape[0] % 2:
        raise CheckpointError(f"'stft.weight' has shape {shape}; expected (fft_len + 2, 1, win_length)")
    return shape[2], shape[0] - 2


# ---- configuration and loading ----------------------------------------------------------------------------


def infer_frcrn_config(sd: dict[str, torch.Tensor], *, sample_rate: int | None = None,
                       hop_length: int | None = None) -> FRCRNConfig:
    """Config of an official state_dict (wrapper prefixes removed), read from tensor shapes.

    Inferred: win_length and fft_len (conv-STFT kernel), channels, se_reduction, fsmn_order. Not stored in
    the weights: ``sample_rate`` (default 16000) and ``hop_length`` (default win_length / 2, theirs).
    """
    return _config_of(sd, _map_official(sd), sample_rate, hop_length)


def _config_of(sd: dict[str, torch.Tensor], mapped: dict[str, tuple[str, torch.Tensor]], sample_rate: int | None,
               hop_length: int | None) -> FRCRNConfig:
    win_length, fft_len = _stft_sizes(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in mapped:
            raise CheckpointError(f"cannot infer the configuration: the weight our '{key}' comes from is missing")
        return tuple(mapped[key][1].shape)

    channels = shape("unet1.encoders.0.conv.re.weight")[0]
    values = dict(sample_rate=16000 if sample_rate is None else sample_rate, win_length=win_length,
                  hop_length=win_length // 2 if hop_length is None else hop_length, fft_len=fft_len,
                  channels=channels, se_reduction=channels // shape("unet1.encoder_gates.0.re.reduce.weight")[0],
                  fsmn_order=shape("unet1.time_fsmn.layers.0.re.memory.weight")[-1])
    try:
        return from_dict(FRCRNConfig, values)
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint does not describe a valid FRCRN configuration: {exc}") from None


def is_frcrn(sd: dict[str, torch.Tensor]) -> bool:
    """FRCRN_SE_16K: keys under ``stft.``, ``istft.``, ``unet.`` and ``unet2.`` only, with the conv-STFT kernel."""
    tops = {k.split(".", 1)[0] for k in sd}
    return "stft.weight" in sd and {"unet", "unet2"} <= tops <= {"stft", "istft", "unet", "unet2"}


def load_frcrn(sd: dict[str, torch.Tensor], path: Path, *, sample_rate: int | None, hop_length: int | None,
               fmin: float) -> tuple[FRCRN, FRCRNConfig]:
    """Official state_dict (wrapper prefixes removed) -> (our FRCRN, its config). Every weight must fit.

    ``fmin`` (a mel front-end setting of other families) does not apply: FRCRN takes the waveform.
    """
    from steadyvoice.models import load_state_dict_strict  # the one strict loader

    try:
        mapped = _map_official(sd)
        cfg = _config_of(sd, mapped, sample_rate, hop_length)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = FRCRN(cfg)
    ours = {k: value for k, (_, value) in mapped.items()}
    load_state_dict_strict(model, ours, where=str(path), error=CheckpointError,
                           describe=lambda k: f"'{mapped[k][0]}' (ours '{k}')" if k in mapped else f"'{k}'")
    return model, cfg
