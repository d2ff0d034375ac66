"""Models: architectures, named configurations, construction, and the inference-model directory format.

An architecture (:data:`ARCHITECTURES`) ties a config dataclass to its network class and says what it does
(``task``: "enhancement" or "separation"); its waveform-in, waveform-out inference path lives in
:mod:`steadyvoice.pipelines`. Every config dataclass is frozen and has ``sample_rate``, ``win_length`` and
``hop_length`` (the analysis frame grid long inputs are windowed on).

An exported (inference) model is a directory::

    model_dir/model.safetensors   every weight, keyed by our module names
    model_dir/config.json         {"format": "steadyvoice-model", "format_version": 1,
                                   "architecture": "mossformer2-se", "config": {...}, "source": {...}}

:func:`save_pretrained` writes both files atomically (weights first, config.json last);
:func:`load_pretrained` refuses anything that does not fit exactly (a missing, extra or mis-shaped weight
is a :class:`~steadyvoice.errors.ModelError` naming the key). Official ClearerVoice ``.pt`` checkpoints
are imported by :mod:`steadyvoice.models.clearervoice` (``steadyvoice convert clearervoice``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from steadyvoice.config import from_dict, to_dict
from steadyvoice.errors import ConfigError, ModelError
from steadyvoice.fileio import atomic_write_path, atomic_write_text, fsync_dir
from steadyvoice.models.frcrn import FRCRN, FRCRNConfig
from steadyvoice.models.fullband import FullBandConfig, FullBandSE
from steadyvoice.models.mossformer2 import MossFormer2SE, MossFormer2SEConfig
from steadyvoice.models.mossformer2_ss import MossFormer2SS, MossFormer2SSConfig
from steadyvoice.models.mossformer_gan import MossFormerGANConfig, MossFormerGANGenerator

__all__ = [
    "MossFormer2SEConfig",
    "MossFormer2SE",
    "FRCRNConfig",
    "FRCRN",
    "MossFormer2SSConfig",
    "MossFormer2SS",
    "MossFormerGANConfig",
    "MossFormerGANGenerator",
    "FullBandConfig",
    "FullBandSE",
    "CONFIGS",
    "get_config",
    "build_model",
    "save_pretrained",
    "load_pretrained",
    "load_model",
    "count_parameters",
    "load_state_dict_strict",
    "resolve_config",
    "is_model_dir",
    "read_pretrained_weights",
    "read_model_config",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "ARCHITECTURE",
    "ARCHITECTURES",
    "Architecture",
    "architecture_of",
]

MODEL_FORMAT = "steadyvoice-model"
MODEL_FORMAT_VERSION = 1
ARCHITECTURE = "mossformer2-se"  # the architecture of models written before there were several


@dataclass(frozen=True)
class Architecture:
    """A network family: its config dataclass, its nn.Module (built as ``model_class(cfg)``) and its task."""

    name: str  # config.json "architecture"
    task: str  # "enhancement" (noisy -> clean) or "separation" (mixture -> one signal per speaker)
    config_class: type
    model_class: type
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    "mossformer2-se": Architecture("mossformer2-se", "enhancement", MossFormer2SEConfig, MossFormer2SE,
                                   "MossFormer2 mask on a log-mel front end (ClearerVoice MossFormer2_SE_48K)"),
    "frcrn-se": Architecture("frcrn-se", "enhancement", FRCRNConfig, FRCRN,
                             "two cascaded complex UNets, complex mask on a conv-STFT (ClearerVoice FRCRN_SE_16K)"),
    "mossformer2-ss": Architecture("mossformer2-ss", "separation", MossFormer2SSConfig, MossFormer2SS,
                                   "MossFormer2 masks on a learned conv encoder, one output per talker "
                                   "(ClearerVoice MossFormer2_SS_16K)"),
    "mossformergan-se": Architecture("mossformergan-se", "enhancement", MossFormerGANConfig, MossFormerGANGenerator,
                                     "MossFormer time-frequency generator, magnitude mask + complex residual on a "
                                     "compressed STFT (ClearerVoice MossFormerGAN_SE_16K)"),
    "fullband-se": Architecture("fullband-se", "enhancement", FullBandConfig, FullBandSE,
                                "16 kHz MossFormer2-SE core for 0-8 kHz + learned gains for the band above "
                                "(SteadyVoice default-v2)"),
}


def architecture_of(cfg: Any) -> Architecture:
    """The architecture whose config dataclass ``cfg`` is (ModelError otherwise)."""
    for arch in ARCHITECTURES.values():
        if type(cfg) is arch.config_class:
            return arch
    raise ModelError(f"{type(cfg).__name__} is not the config of a known architecture "
                     f"({', '.join(ARCHITECTURES)})")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE)  # what a model directory holds

CONFIGS: dict[str, Any] = {
    # ClearerVoice-Studio's MossFormer2_SE_48K (55,262,154 trainable parameters + 16 fixed rotary frequencies).
    "mossformer2-se-48k": MossFormer2SEConfig(),
    # The reduced configuration of the parity vectors: same signal setup, model_dim 64, 2 blocks (0.8 M).
    "mossformer2-se-48k-small": MossFormer2SEConfig(model_dim=64, num_blocks=2),
    # A 16 kHz variant of the same small size (32 ms window, 8 ms hop, 40 mel bins) for quick experiments.
    "mossformer2-se-16k-small": MossFormer2SEConfig(sample_rate=16000, win_length=512, hop_length=128, n_mels=40,
                                                    model_dim=64, num_blocks=2),
    # ClearerVoice-Studio's FRCRN_SE_16K (13,141,844 trainable parameters; the conv-STFT kernels are computed),
    # and the reduced width of its parity vectors (channels 32 instead of 128; 0.86 M).
    "frcrn-se-16k": FRCRNConfig(),
    "frcrn-se-16k-small": FRCRNConfig(channels=32),
    # ClearerVoice-Studio's MossFormer2_SS_16K, two talkers (55,735,394 trainable parameters + 16 fixed rotary
    # frequencies), and the reduced configuration of its parity vectors (dims 64, 2 blocks).
    "mossformer2-ss-16k": MossFormer2SSConfig(),
    "mossformer2-ss-16k-small": MossFormer2SSConfig(encoder_dim=64, model_dim=64, num_blocks=2),
    # ClearerVoice-Studio's MossFormerGAN_SE_16K generator (3,128,447 trainable parameters + 12 x 16 fixed rotary
    # frequencies), and the reduced width of its parity vectors (16 channels, query_key_dim 32; 0.35 M). Their
    # training discriminator: steadyvoice.models.mossformer_gan.DISCRIMINATOR_CONFIGS.
    "mossformergan-se-16k": MossFormerGANConfig(),
    "mossformergan-se-16k-small": MossFormerGANConfig(channels=16, query_key_dim=32),
    # Full band at 48 kHz: the default-v1 core (16 kHz MossFormer2-SE, 128 wide, 4 blocks) and upper-band gains,
    # and a small core for tests and quick experiments.
    "fullband-se-48k": FullBandConfig(),
    "fullband-se-48k-small": FullBandConfig(core=MossFormer2SEConfig(
        sample_rate=16000, win_length=512, hop_length=128, n_mels=40, model_dim=64, num_blocks=2), hidden=32),
}


def get_config(name: str) -> Any:
    """The named configuration (configs are frozen, so the registry entry itself is returned)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ModelError(f"unknown model config {name!r}; valid names: {', '.join(CONFIGS)}") from None


def resolve_config(name: str, overrides: dict | None = None, path: str = "model.overrides") -> Any:
    """The named configuration with ``overrides`` applied (strict: an unknown field is a ConfigError naming
    ``path.<field>``); what a training config's ``model: {name, overrides}`` section describes."""
    base = get_config(name)
    return from_dict(type(base), {**to_dict(base), **(overrides or {})}, path=path)


def build_model(cfg: Any) -> nn.Module:
    """A freshly initialised model for ``cfg`` (a config of any architecture, or a registry name)."""
    if isinstance(cfg, str):
        cfg = get_config(cfg)
    return architecture_of(cfg).model_class(cfg)


def _build_for_loading(cfg: Any) -> nn.Module:
    """The model for ``cfg`` with every parameter on the meta device: no random initialisation and no
    parameter memory (official-size MossFormer2-SE: 0.4 s, and a peak of 270 MB instead of 670 MB once
    loaded), for weights about to be assigned by ``load_state_dict_strict(..., assign=True)``. Buffers
    (fixed tables that no weights file holds, normalisation statistics) are built for real, so only what
    loading replaces is skipped."""

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        return None if param is None else nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(to_meta)
    try:
        return build_model(cfg)
    finally:
        handle.remove()


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter values (shared parameters once; fixed tables are buffers, not counted)."""
    return sum(p.numel() for p in _unwrap(model).parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    from steadyvoice.distributed import unwrap_model  # the one place DDP / compile wrappers are removed

    return unwrap_model(model)


# ---- strict weight loading ----------------------------------------------------------------------------


def load_state_dict_strict(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    *,
    where: str,
    error: type[Exception] = ModelError,
    describe: Callable[[str], str] | None = None,
    assign: bool = False,
) -> None:
    """Load ``sd`` into ``model`` only if every key and shape fits; otherwise raise ``error`` naming the key.

    ``describe(key)`` renders a key for messages (e.g. with the official name next to ours).
    Floating-point tensors of another precision are converted to the model's dtype. ``assign=True`` makes
    the tensors of ``sd`` the model's own (no copy; the model may then be built on the meta device).
    """
    name = describe or (lambda k: f"'{k}'")
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    hint = "the weights do not belong to this model configuration"
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise error(f"{where}: weight {name(missing[0])} is missing{more}; {hint}")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise error(f"{where}: unexpected weight {name(extra[0])}{more}; {hint}")
    converted = {}
    for key, want in expected.items():
        have = sd[key]
        if tuple(have.shape) != tuple(want.shape):
            raise error(f"{where}: weight {name(key)} has shape {tuple(have.shape)} but the model expects "
                        f"{tuple(want.shape)}; {hint}")
        if have.is_floating_point() and want.is_floating_point():
            converted[key] = have.to(want.dtype)  # another precision of the same values
        elif have.dtype == want.dtype:
            converted[key] = have  # integer / boolean buffers (counters, masks) load as they are
        else:
            raise error(f"{where}: weight {name(key)} has dtype {have.dtype}; the model expects {want.dtype}")
    model.load_state_dict(converted, strict=True, assign=assign)


# ---- the model directory format -----------------------------------------------------------------------


def save_pretrained(model: nn.Module, cfg: Any, out_dir: str | Path,
                    source: dict | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` atomically; returns ``out_dir``.

    ``source`` says where the weights come from (e.g. the converted file and its SHA-256, or a training
    run); it must be JSON-serialisable. config.json is replaced last, so a directory whose config.json
    exists holds complete weights.
    """
    from safetensors.torch import save_file

    model = _unwrap(model)
    arch = architecture_of(cfg)
    if getattr(model, "cfg", cfg) != cfg:
        raise ModelError("save_pretrained: cfg differs from the configuration the model was built with")
    out_dir = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": arch.name,
        "config": to_dict(cfg),
        "source": dict(source or {}),
    }
    try:
        text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ModelError(f"save_pretrained: source is not JSON-serialisable ({exc})") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{out_dir}: cannot create the model directory ({exc.strerror or exc})") from None
    weights, config = out_dir / WEIGHTS_FILE, out_dir / CONFIG_FILE
    with _model_file_error(weights):
        atomic_write_path(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    with _model_file_error(config):
        atomic_write_text(config, text)
    with contextlib.suppress(OSError):  # best effort, as before: both files are already fsync'ed
        fsync_dir(out_dir)
    return out_dir


@contextlib.contextmanager
def _model_file_error(path: Path) -> Iterator[None]:
    """OSError while writing ``path`` -> ModelError naming it."""
    try:
        yield
    except OSError as exc:
        raise ModelError(f"{path}: cannot write ({exc.strerror or exc})") from None


def read_model_config(path: str | Path) -> Any:
    """The configuration stored in a model directory's config.json (validated)."""
    directory = _model_dir(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{directory}: not a SteadyVoice model directory (no {CONFIG_FILE}); export a trained "
                         "model or convert an official one with `steadyvoice convert clearervoice SRC DEST`")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is damaged, "
                         "export or convert the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{config_path}: not a SteadyVoice model config (format {found!r}, expected "
                         f"{MODEL_FORMAT!r})")
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelError(f"{config_path}: unsupported format_version {version!r}; this SteadyVoice reads version "
                         f"{MODEL_FORMAT_VERSION} (a newer model needs a newer steadyvoice)")
    arch = ARCHITECTURES.get(meta.get("architecture"))
    if arch is None:
        raise ModelError(f"{config_path}: unknown architecture {meta.get('architecture')!r}; this SteadyVoice knows "
                         f"{', '.join(ARCHITECTURES)} (a newer model needs a newer steadyvoice)")
    try:
        return from_dict(arch.config_class, meta.get("config"), "config")
    except ConfigError as exc:
        raise ModelError(f"{config_path}: {exc}") from None


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a model directory (config.json + model.safetensors)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_pretrained_weights(path: str | Path, error: type[Exception] = ModelError) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a model directory's weights file (CPU) and that file's path."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = _model_dir(path)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise error(f"{directory}: {WEIGHTS_FILE} is missing (config.json alone is not a model)")
    try:
        return load_file(str(weights_path), device="cpu"), weights_path
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{weights_path}: unreadable or damaged weights file ({exc})") from None


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Model directory (or a file inside it) -> (model in eval mode on ``device``, config)."""
    cfg = read_model_config(path)
    sd, weights_path = read_pretrained_weights(path)
    model = _build_for_loading(cfg)
    load_state_dict_strict(model, sd, where=str(weights_path), assign=True)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a module computed a buffer from an uninitialised parameter: a bug in that module
        raise ModelError(f"{weights_path}: {left[0]!r} was not loaded (built on the meta device); "
                         "please report this with the model's config.json")
    return model.to(device).eval(), cfg


load_model = load_pretrained  # the name exported as steadyvoice.load_model


def _model_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        return path.parent
    if not path.exists():
        raise ModelError(f"{path}: no such model directory")
    if not path.is_dir():
        raise ModelError(f"{path}: not a model directory (expected a directory holding {WEIGHTS_FILE} and "
                         f"{CONFIG_FILE}); for an official .pt use `steadyvoice convert clearervoice`")
    return path
