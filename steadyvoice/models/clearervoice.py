"""Official ClearerVoice-Studio checkpoints: safe reading, key mapping, config inference.

ClearerVoice-Studio (github.com/modelscope/ClearerVoice-Studio, Apache-2.0) publishes MossFormer2_SE_48K
as a pickled ``.pt`` file: ``{'model': state_dict, ...}`` or a bare state_dict, keys relative to their
``TestNet`` (``mossformer.``...), with ``module.`` in front when it was trained under DDP. This module:

* reads such a file without running code (:func:`read_official_checkpoint`: ``torch.load`` with
  ``weights_only=True``, after refusing Git-LFS pointer files, their issue #82);
* removes wrapper prefixes in one place (:func:`strip_wrapper_prefixes`, the state-dict counterpart of
  :func:`steadyvoice.distributed.unwrap_model`);
* maps their keys to ours and back (:func:`official_to_ours` / :func:`ours_to_official`). Their 1x1
  convolutions become our Linear layers (weights ``(out, in, 1)`` <-> ``(out, in)``) and their 2-D FSMN
  memory convolution our 1-D one (``(C, 1, K, 1)`` <-> ``(C, 1, K)``). Two of their entries are fixed
  tables we compute instead of storing (the rotary ``freqs``, listed once per layer, and the position
  encoding's ``inv_freq``): on import they are checked to equal ours, otherwise the import fails;
* infers the configuration from tensor shapes (:func:`infer_config`), so reduced variants convert too;
* builds a ready model (:func:`load_official`).

Every problem is a :class:`~steadyvoice.errors.CheckpointError` naming the file or key.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steadyvoice.config import from_dict
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models.mossformer2 import MossFormer2SE, MossFormer2SEConfig, rotary_freqs, sinusoidal_inv_freq

__all__ = [
    "OFFICIAL_PREFIX",
    "read_official_checkpoint",
    "strip_wrapper_prefixes",
    "official_to_ours",
    "ours_to_official",
    "infer_config",
    "config_from_constructor_args",
    "load_official",
]

OFFICIAL_PREFIX = "mossformer."  # their TestNet holds MossFormer_MaskNet as .mossformer
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_LFS_MAGIC = b"version https://git-lfs"

# ---- key mapping table ----------------------------------------------------------------------------------
# (their key without "mossformer.", our key, how the tensor changes). "{i}" is a block index.
_SAME, _CONV1X1, _CONV2D_COLUMN, _FIXED = "same", "conv1x1", "conv2d_column", "fixed"

_THEIR_LAYER = "mdl.intra_mdl.mossformerM.layers.{i}."
_THEIR_FSMN = "mdl.intra_mdl.mossformerM.fsmn.{i}."
_FFCONV = [  # their FFConvM = Sequential(norm, Linear, SiLU, ConvModule, Dropout) -> our ConvFeedForward
    ("mdl.0.g", "norm.g"),
    ("mdl.0.weight", "norm.weight"),
    ("mdl.0.bias", "norm.bias"),
    ("mdl.1.weight", "linear.weight"),
    ("mdl.1.bias", "linear.bias"),
    ("mdl.3.sequential.1.conv.weight", "dwconv.weight"),
]


def _mapping_rules() -> list[tuple[str, str | None, str]]:
    rules = [
        ("norm.weight", "input_norm.weight", _SAME),
        ("norm.bias", "input_norm.bias", _SAME),
        ("conv1d_encoder.weight", "encoder.weight", _CONV1X1),
        ("pos_enc.scale", "position.scale", _SAME),
        ("pos_enc.inv_freq", None, _FIXED),
        (_THEIR_LAYER + "rotary_pos_emb.freqs", None, _FIXED),
        (_THEIR_LAYER + "qk_offset_scale.gamma", "blocks.{i}.attention.qk_offset_scale.gamma", _SAME),
        (_THEIR_LAYER + "qk_offset_scale.beta", "blocks.{i}.attention.qk_offset_scale.beta", _SAME),
    ]
    for theirs, ours in (("to_hidden", "hidden_proj"), ("to_qk", "qk_proj"), ("to_out", "out_proj")):
        for a, b in _FFCONV:
            rules.append((f"{_THEIR_LAYER}{theirs}.{a}", f"blocks.{{i}}.attention.{ours}.{b}", _SAME))
    fsmn = "blocks.{i}.fsmn."
    rules += [
        (_THEIR_FSMN + "conv1.0.weight", fsmn + "in_proj.weight", _CONV1X1),
        (_THEIR_FSMN + "conv1.0.bias", fsmn + "in_proj.bias", _SAME),
        (_THEIR_FSMN + "conv1.1.weight", fsmn + "in_act.weight", _SAME),
        (_THEIR_FSMN + "norm1.weight", fsmn + "norm1.weight", _SAME),
        (_THEIR_FSMN + "norm1.bias", fsmn + "norm1.bias", _SAME),
        (_THEIR_FSMN + "norm2.weight", fsmn + "norm2.weight", _SAME),
        (_THEIR_FSMN + "norm2.bias", fsmn + "norm2.bias", _SAME),
        (_THEIR_FSMN + "conv2.weight", fsmn + "out_proj.weight", _CONV1X1),
        (_THEIR_FSMN + "conv2.bias", fsmn + "out_proj.bias", _SAME),
        (_THEIR_FSMN + "gated_fsmn.fsmn.linear.weight", fsmn + "gated_fsmn.memory.linear.weight", _SAME),
        (_THEIR_FSMN + "gated_fsmn.fsmn.linear.bias", fsmn + "gated_fsmn.memory.linear.bias", _SAME),
        (_THEIR_FSMN + "gated_fsmn.fsmn.project.weight", fsmn + "gated_fsmn.memory.project.weight", _SAME),
        (_THEIR_FSMN + "gated_fsmn.fsmn.conv1.weight", fsmn + "gated_fsmn.memory.conv.weight", _CONV2D_COLUMN),
    ]
    for branch in ("to_u", "to_v"):
        for a, b in _FFCONV:
            rules.append((f"{_THEIR_FSMN}gated_fsmn.{branch}.{a}", f"{fsmn}gated_fsmn.{branch}.{b}", _SAME))
    rules += [
        ("mdl.intra_mdl.norm.weight", "blocks_norm.weight", _SAME),
        ("mdl.intra_mdl.norm.bias", "blocks_norm.bias", _SAME),
        ("mdl.intra_norm.weight", "skip_norm.weight", _SAME),
        ("mdl.intra_norm.bias", "skip_norm.bias", _SAME),
        ("conv1d_out.weight", "speaker_proj.weight", _CONV1X1),
        ("conv1d_out.bias", "speaker_proj.bias", _SAME),
        ("conv1_decoder.weight", "decoder.weight", _CONV1X1),
        ("prelu.weight", "prelu.weight", _SAME),
        ("output.0.weight", "out_tanh.weight", _CONV1X1),
        ("output.0.bias", "out_tanh.bias", _SAME),
        ("output_gate.0.weight", "out_gate.weight", _CONV1X1),
        ("output_gate.0.bias", "out_gate.bias", _SAME),
    ]
    return rules


def _template_regex(template: str) -> re.Pattern:
    """A key template with a layer index {i} (and a sub-layer index {j}) -> the regex that matches its keys."""
    pattern = re.escape(template)
    for name in ("i", "j"):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern)


_RULES = [(_template_regex(OFFICIAL_PREFIX + theirs), _template_regex(ours) if ours else None,
           OFFICIAL_PREFIX + theirs, ours, kind) for theirs, ours, kind in _mapping_rules()]


def _fill(template: str, match: re.Match, j_offset: int = 0) -> str:
    """The key ``template`` with the layer index {i} (and the sub-layer index {j}, shifted) of ``match``."""
    groups = match.groupdict()
    out = template.replace("{i}", groups["i"]) if "i" in groups else template
    return out.replace("{j}", str(int(groups["j"]) + j_offset)) if "j" in groups else out


# ---- reading ------------------------------------------------------------------------------------------


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official ``.pt`` -> its network state_dict (tensors on CPU), never running pickled code.

    Accepts ``{'model': state_dict, ...}`` (their training checkpoints) or a bare state_dict. Refuses a
    Git-LFS pointer, an empty/truncated/corrupt file and a pickle holding anything but tensors and plain
    containers (which could run code when loaded).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the path of the ClearerVoice .pt checkpoint file")
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); download the checkpoint again")
    if head.startswith(_LFS_MAGIC):
        raise CheckpointError(f"{path}: this is a Git-LFS pointer, not the weights: run `git lfs pull` in the "
                              "repository you cloned it from (or download the file itself)")
    _check_container(path, head)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; we explain instead
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {_describe_unpickling_refusal(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: the checkpoint is truncated or corrupt ({_first_line(exc)}); "
                              "download or copy it again") from None
    except Exception as exc:  # noqa: BLE001 - the safe unpickler fails on garbage with IndexError, KeyError, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: corrupt, or not a file written by "
                              f"torch.save ({type(exc).__name__}: {_first_line(exc)})") from None
    return _state_dict_of(obj, path)


_HEAD_BYTES = 512
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format (torch >= 1.6) is a zip archive
_LEGACY_TORCH_MAGIC = b"l\xfc\x9cF\xf9 j\xa8P\x19"  # older torch.save: a pickle that starts with this number
_OTHER_KINDS = [  # (leading bytes, what the file is): files users pass by mistake
    (b"RIFF", "a RIFF/WAV audio file"), (b"fLaC", "a FLAC audio file"), (b"OggS", "an Ogg audio file"),
    (b"ID3", "an MP3 audio file"), (b"\x1f\x8b", "a gzip archive"), (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy file"), (b"{", "a JSON file"),
]


def _check_container(path: Path, head: bytes) -> None:
    """Refuse, by its first bytes, a file that torch.save did not write, before torch.load meets it.

    torch.load's safe unpickler fails on such files with bare IndexError/KeyError/RuntimeError messages.
    """
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise CheckpointError(f"{path}: the checkpoint is truncated or corrupt (its zip archive is incomplete "
                                  "or damaged); download or copy it again") from None
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside); "
                                  "give the ClearerVoice .pt checkpoint file")
        return
    if head.startswith(b"\x80"):  # a pickle: the legacy torch.save format, or plain pickled Python objects
        if _LEGACY_TORCH_MAGIC in head[:32]:
            return
        raise CheckpointError(f"{path}: refused: a plain Python pickle, not a PyTorch checkpoint (torch.save's "
                              "magic number is missing); it is not loaded, as unpickling it could run code")
    kind = next((what for magic, what in _OTHER_KINDS if head.startswith(magic)), None)
    if kind is None and _looks_like_text(head):
        kind = "a text file"
    what = f"{kind}, not a PyTorch checkpoint" if kind else "not a PyTorch checkpoint"
    raise CheckpointError(f"{path}: {what} (neither a zip archive nor a pickle, the two formats of torch.save); "
                          "give the ClearerVoice .pt checkpoint file (e.g. last_best_checkpoint.pt)")


def _looks_like_text(head: bytes) -> bool:
    """The first bytes of a file decode as printable UTF-8 (a character cut at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _describe_unpickling_refusal(exc: pickle.UnpicklingError) -> str:
    """Say why torch's safe (weights-only) unpickler stopped, without its advice to disable it."""
    text = str(exc)
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return (f"refused: loading this file would call '{called.group(1)}', i.e. run code stored in it; "
                "only plain weight checkpoints (tensors, dicts, numbers) are accepted")
    if "weights only" in text.lower() or "weightsunpickler" in text.lower():
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = reason.group(1).strip() if reason else "unsupported content"
        return (f"refused: not a plain PyTorch weights file ({detail}); it is corrupt, or holds pickled Python "
                "objects that the safe loader does not accept")
    return f"not a readable PyTorch checkpoint, corrupt or not a .pt file ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    """First sentence of an exception message (torch appends long advice)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("discriminator"), dict):  # a GAN's discriminator file
        obj = obj["discriminator"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state_dict (or {{'model': state_dict}}), found "
                              f"{type(obj).__name__}{' (empty)' if isinstance(obj, dict) else ''}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  "this is not a network state_dict")
        out[key] = value
    return out


def strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (DDP / torch.compile) from every key.

    The state-dict twin of :func:`steadyvoice.distributed.unwrap_model`; no other code strips
    wrapper prefixes. Two keys that become equal are an error.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        bare = key
        while bare.startswith(WRAPPER_PREFIXES):
            bare = bare.split(".", 1)[1]
        if bare in out:
            raise CheckpointError(f"state_dict holds '{bare}' twice (with and without a wrapper prefix)")
        out[bare] = value
    return out


# ---- mapping ------------------------------------------------------------------------------------------


def official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ClearerVoice state_dict (``mossformer.``...) -> ours. Fixed tables are checked, then dropped."""
    return {ours: value for ours, (_, value) in _map_official(sd).items()}


def _map_official(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """our key -> (their key, our tensor)."""
    return map_official_keys(sd, _RULES, f"ClearerVoice's MossFormer2_SE network (keys start with '{OFFICIAL_PREFIX}')",
                             "a MossFormer2_SE_48K checkpoint")


def map_official_keys(sd: dict[str, torch.Tensor], rules: list, network: str, expected: str,
                      j_offset: int = 0) -> dict[str, tuple[str, torch.Tensor]]:
    """Their state_dict -> {our key: (their key, our tensor)} by ``rules`` (shared by the MossFormer2 families).

    Fixed tables (rotary frequencies, position tables) are checked against what we compute, then dropped;
    the rotary table must be the same width in every layer (theirs is one shared table). ``j_offset`` shifts
    a sub-layer index {j} (theirs may count from 1).
    """
    out: dict[str, tuple[str, torch.Tensor]] = {}
    rotary_widths: set[int] = set()
    for key, value in strip_wrapper_prefixes(sd).items():
        for their_re, _, _, ours, kind in rules:
            match = their_re.fullmatch(key)
            if match:
                break
        else:
            raise CheckpointError(f"unexpected key '{key}': not part of {network}; is this {expected}?")
        if kind == _FIXED:
            _check_fixed_table(key, value)
            if key.endswith("rotary_pos_emb.freqs"):
                rotary_widths.add(value.numel())
                if len(rotary_widths) > 1:  # theirs is one table shared by every layer
                    raise CheckpointError(f"'{key}' has {value.numel()} rotary frequencies, other layers "
                                          f"{min(rotary_widths - {value.numel()})}; the layers must share one table")
            continue
        if "j" in match.groupdict() and int(match.group("j")) + j_offset < 0:
            raise CheckpointError(f"unexpected key '{key}': their sub-layers are numbered from {-j_offset}")
        out[_fill(ours, match, j_offset)] = (key, _to_ours(key, value, kind))
    return out


def map_our_keys(sd: dict[str, torch.Tensor], rules: list, what: str, j_offset: int = 0) -> dict[str, torch.Tensor]:
    """Our state_dict -> theirs by ``rules`` (without the fixed tables, which the caller adds)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for _, our_re, theirs, _, kind in rules:
            match = our_re.fullmatch(key) if our_re is not None else None
            if match:
                break
        else:
            raise CheckpointError(f"unexpected key '{key}': not a SteadyVoice {what} weight")
        out[_fill(theirs, match, -j_offset)] = _to_official(value, kind)
    return out


def ours_to_official(sd: dict[str, torch.Tensor], cfg: MossFormer2SEConfig | None = None) -> dict[str, torch.Tensor]:
    """Our state_dict -> ClearerVoice's (``mossformer.``...), adding the fixed tables they store.

    ``cfg`` gives the rotary width; without it the official rule min(32, query_key_dim) is used.
    """
    out = map_our_keys(sd, _RULES, "MossFormer2SE")
    if "encoder.weight" not in sd or "blocks.0.attention.qk_proj.linear.weight" not in sd:
        raise CheckpointError("cannot add the fixed tables: 'encoder.weight' or "
                              "'blocks.0.attention.qk_proj.linear.weight' is missing")
    model_dim = sd["encoder.weight"].shape[0]
    qk_dim = sd["blocks.0.attention.qk_proj.linear.weight"].shape[0]
    rot_dim = cfg.rotary_dim if cfg is not None else min(32, qk_dim)
    freqs = rotary_freqs(rot_dim)
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for i in blocks:
        out[f"{OFFICIAL_PREFIX}{_THEIR_LAYER.format(i=i)}rotary_pos_emb.freqs"] = freqs.clone()
    if "position.scale" in sd:
        out[f"{OFFICIAL_PREFIX}pos_enc.inv_freq"] = sinusoidal_inv_freq(model_dim)
    return out


def _to_ours(key: str, value: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == _SAME:
        return value
    want = {_CONV1X1: (3, "(out, in, 1)"), _CONV2D_COLUMN: (4, "(channels, 1, kernel, 1)")}[kind]
    if value.dim() != want[0] or value.shape[-1] != 1:
        raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}; expected {want[1]}")
    return value.squeeze(-1)


def _to_official(value: torch.Tensor, kind: str) -> torch.Tensor:
    return value if kind == _SAME else value.unsqueeze(-1)


def _check_fixed_table(key: str, value: torch.Tensor) -> None:
    if value.dim() != 1 or value.numel() == 0:
        raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}; expected a 1-D frequency table")
    width = 2 * value.numel()
    expected = sinusoidal_inv_freq(width) if key.endswith("inv_freq") else rotary_freqs(width)
    if not torch.allclose(value.detach().float().cpu(), expected, rtol=1e-6, atol=0.0):
        diff = (value.detach().float().cpu() - expected).abs().max().item()
        raise CheckpointError(f"'{key}' differs from the standard frequency table SteadyVoice computes (max "
                              f"difference {diff:.3g}); this checkpoint was not made by ClearerVoice's "
                              "MossFormer2 code and cannot be imported faithfully")


# ---- configuration ------------------------------------------------------------------------------------

_CONSTRUCTOR_ARGS = {  # MossFormer_MaskNet's arguments -> defaults (None = required)
    "in_channels": None,
    "out_channels": None,
    "out_channels_final": None,
    "num_blocks": 24,
    "norm": "ln",
    "num_spks": 2,
    "skip_around_intra": True,
    "use_global_pos_enc": True,
    "max_length": 20000,
}


def config_from_constructor_args(args: dict, *, sample_rate: int = 48000, hop_length: int | None = None,
                                 fmin: float = 20.0) -> MossFormer2SEConfig:
    """Config for ``MossFormer_MaskNet(**args)`` (the dict ``masknet_constructor_args`` of their vectors).

    in_channels = 3*n_mels and out_channels_final = win_length/2 + 1 fix the signal setup;
    ``hop_length`` defaults to win_length/5 (their 40 ms window, 8 ms hop). Unknown arguments are errors.
    """
    unknown = sorted(set(args) - set(_CONSTRUCTOR_ARGS))
    if unknown:
        raise CheckpointError(f"unknown MossFormer_MaskNet argument(s) {', '.join(unknown)}; known: "
                              f"{', '.join(_CONSTRUCTOR_ARGS)}")
    merged = {k: args.get(k, default) for k, default in _CONSTRUCTOR_ARGS.items()}
    missing = [k for k, v in merged.items() if v is None]
    if missing:
        raise CheckpointError(f"MossFormer_MaskNet argument(s) {', '.join(missing)} missing")
    in_channels, out_final = merged["in_channels"], merged["out_channels_final"]
    if in_channels % 3:
        raise CheckpointError(f"in_channels={in_channels} is not 3 x n_mels (fbank + deltas + delta-deltas)")
    win_length = 2 * (out_final - 1)
    return _make_config(
        sample_rate=sample_rate, win_length=win_length, hop_length=_default_hop(win_length, hop_length), fmin=fmin,
        n_mels=in_channels // 3, model_dim=merged["out_channels"], num_blocks=merged["num_blocks"],
        norm=merged["norm"], num_spks=merged["num_spks"], skip_around_intra=merged["skip_around_intra"],
        use_global_pos_enc=merged["use_global_pos_enc"], max_length=merged["max_length"])


def infer_config(sd: dict[str, torch.Tensor], sample_rate: int = 48000, hop_length: int | None = None,
                 fmin: float = 20.0, **fixed: Any) -> MossFormer2SEConfig:
    """Config of an official state_dict, read from tensor shapes (so reduced variants convert too).

    Inferred: n_mels, win_length (from the mask width), model_dim, num_blocks, num_spks, query_key_dim,
    expansion_factor, rotary_dim, conv_kernel, fsmn_inner_dim, fsmn_lorder, norm_type, use_global_pos_enc.
    Not visible in weights, so given here (defaults = official): ``sample_rate``, ``hop_length``
    (win_length/5), ``fmin`` and, through ``fixed``, e.g. group_size, attn_dropout, causal, shift_tokens.
    """
    sd = strip_wrapper_prefixes(sd)
    p = OFFICIAL_PREFIX

    def shape(key: str) -> tuple[int, ...]:
        if p + key not in sd:
            raise CheckpointError(f"cannot infer the configuration: key '{p + key}' is missing; is this a "
                                  "ClearerVoice MossFormer2_SE checkpoint?")
        return tuple(sd[p + key].shape)

    in_channels = shape("norm.weight")[0]
    if in_channels % 3:
        raise CheckpointError(f"'{p}norm.weight' has {in_channels} channels, not 3 x n_mels")
    model_dim = shape("conv1d_encoder.weight")[0]
    n_freqs = shape("conv1_decoder.weight")[0]
    layer_re = re.compile(re.escape(p + "mdl.intra_mdl.mossformerM.layers.") + r"(\d+)\.")
    layers = sorted({int(m.group(1)) for k in sd if (m := layer_re.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"cannot infer the number of blocks: layer indices found are {layers}")
    layer, fsmn = _THEIR_LAYER.format(i=0), _THEIR_FSMN.format(i=0)
    qk_dim = shape(layer + "to_qk.mdl.1.weight")[0]
    freqs_key = p + layer + "rotary_pos_emb.freqs"
    win_length = 2 * (n_freqs - 1)
    inferred = dict(
        sample_rate=sample_rate, win_length=win_length, hop_length=_default_hop(win_length, hop_length), fmin=fmin,
        n_mels=in_channels // 3, model_dim=model_dim, num_blocks=len(layers),
        num_spks=shape("conv1d_out.weight")[0] // model_dim,
        query_key_dim=qk_dim,
        expansion_factor=shape(layer + "to_hidden.mdl.1.weight")[0] / model_dim,
        rotary_dim=2 * sd[freqs_key].numel() if freqs_key in sd else min(32, qk_dim),
        conv_kernel=shape(layer + "to_hidden.mdl.3.sequential.1.conv.weight")[-1],
        fsmn_inner_dim=shape(fsmn + "conv1.0.weight")[0],
        fsmn_lorder=(shape(fsmn + "gated_fsmn.fsmn.conv1.weight")[2] + 1) // 2,
        norm_type="scalenorm" if p + layer + "to_hidden.mdl.0.g" in sd else "layernorm",
        use_global_pos_enc=p + "pos_enc.scale" in sd,
    )
    clash = sorted(set(fixed) & set(inferred))
    if clash:
        raise CheckpointError(f"{', '.join(clash)} cannot be given: read from the checkpoint's tensor shapes")
    return _make_config(**inferred, **fixed)


def _default_hop(win_length: int, hop_length: int | None) -> int:
    """ClearerVoice frames at 40 ms with an 8 ms hop: hop = win_length / 5 unless given."""
    return win_length // 5 if hop_length is None else hop_length


def _make_config(**values: Any) -> MossFormer2SEConfig:
    try:
        return from_dict(MossFormer2SEConfig, values)
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint does not describe a valid MossFormer2SE configuration: {exc}") from None


# ---- loading ------------------------------------------------------------------------------------------


def load_official(path: str | Path, *, sample_rate: int | None = None, hop_length: int | None = None,
                  fmin: float = 20.0, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Official ``.pt`` of any known family -> (our model in eval mode, its config). Every weight must fit.

    The family is recognised from the checkpoint's keys and shapes (:data:`FAMILIES`); ``sample_rate`` /
    ``hop_length`` / ``fmin`` (not stored in the weights) default to the family's official values.
    """
    path = Path(path)
    sd = strip_wrapper_prefixes(read_official_checkpoint(path))
    family = identify(sd, path)
    options = {"sample_rate": sample_rate, "hop_length": hop_length, "fmin": fmin}
    model, cfg = _resolve(family.load)(sd, path, **options)
    return model.to(device).eval(), cfg


@dataclass(frozen=True)
class OfficialFamily:
    """A ClearerVoice network family: how to recognise its checkpoints and turn one into our model."""

    name: str  # their model name, e.g. "MossFormer2_SE_48K"
    architecture: str  # ours (steadyvoice.models.ARCHITECTURES)
    matches: str  # "module:function": (state_dict) -> bool
    load: str  # "module:function": (state_dict, path, *, sample_rate, hop_length, fmin) -> (model, cfg)


# Tried in order; each module holds that family's key mapping and config inference.
FAMILIES: list[OfficialFamily] = [
    OfficialFamily("MossFormer2_SE_48K", "mossformer2-se", "steadyvoice.models.clearervoice:is_mossformer2_se",
                   "steadyvoice.models.clearervoice:load_mossformer2_se"),
    OfficialFamily("FRCRN_SE_16K", "frcrn-se", "steadyvoice.models.clearervoice_frcrn:is_frcrn",
                   "steadyvoice.models.clearervoice_frcrn:load_frcrn"),
    OfficialFamily("MossFormer2_SS_16K", "mossformer2-ss",
                   "steadyvoice.models.clearervoice_mossformer2_ss:is_mossformer2_ss",
                   "steadyvoice.models.clearervoice_mossformer2_ss:load_mossformer2_ss"),
    OfficialFamily("MossFormerGAN_SE_16K", "mossformergan-se",
                   "steadyvoice.models.clearervoice_mossformergan:is_mossformergan",
                   "steadyvoice.models.clearervoice_mossformergan:load_mossformergan"),
]


def identify(sd: dict[str, torch.Tensor], path: Path) -> OfficialFamily:
    """The family whose checkpoints look like ``sd``; a CheckpointError naming what was found otherwise."""
    for family in FAMILIES:
        if _resolve(family.matches)(sd):
            return family
    prefixes = sorted({k.split(".", 1)[0] for k in sd})
    raise CheckpointError(
        f"{path}: not a network SteadyVoice knows: {len(sd)} tensors under {', '.join(prefixes[:6])}"
        f"{' ...' if len(prefixes) > 6 else ''} (first key '{next(iter(sd), '')}'); known ClearerVoice networks: "
        f"{', '.join(f.name for f in FAMILIES)}")


def _resolve(target: str) -> Callable:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def is_mossformer2_se(sd: dict[str, torch.Tensor]) -> bool:
    """MossFormer2_SE_48K: every key under ``mossformer.`` (their TestNet wrapper around the mask net)."""
    return bool(sd) and all(k.startswith("mossformer.") for k in sd)


def load_mossformer2_se(sd: dict[str, torch.Tensor], path: Path, *, sample_rate: int | None, hop_length: int | None,
                        fmin: float) -> tuple[MossFormer2SE, MossFormer2SEConfig]:
    from steadyvoice.models import load_state_dict_strict  # the one strict loader

    try:
        cfg = infer_config(sd, sample_rate=sample_rate or 48000, hop_length=hop_length, fmin=fmin)
        mapped = _map_official(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = MossFormer2SE(cfg)
    ours = {k: value for k, (_, value) in mapped.items()}
    load_state_dict_strict(model, ours, where=str(path), error=CheckpointError,
                           describe=lambda k: f"'{mapped[k][0]}' (ours '{k}')" if k in mapped else f"'{k}'")
    return model, cfg
