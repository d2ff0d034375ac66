"""The training config: one typed dataclass per section, parsed strictly from YAML.

```yaml
model: {name: mossformer2-se-48k, overrides: {model_dim: 64}}   # a registry name + field overrides
data: {...}                                                      # steadyvoice.data.config.DataConfig
optim: {name: adam, lr: 5.0e-4, ...}
schedule: {kind: plateau, patience: 5, ...}
loss: {psm_weight: 1.0, si_snr_weight: 0.0}
train: {batch_size: 4, accumulate: 2, ...}
checkpoint: {save_every: 1000, ...}                              # steadyvoice.checkpoint.config.CheckpointConfig
```
Unknown keys and bad values are ConfigErrors naming the key path. The resolved config is written to
``run_dir/config.yaml``; resuming with a different one is refused unless only the keys in
:data:`MAY_CHANGE_ON_RESUME` differ.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.config import apply_overrides, from_dict, load_yaml_file, to_dict
from steadyvoice.data.config import DataConfig
from steadyvoice.errors import ConfigError
from steadyvoice.train.recipes import recipe_path

# Keys that may differ between the config in the run directory and the one a resumed run is started
# with: they change what happens from now on, never the meaning of what was already trained. Every key
# of the sections in MAY_CHANGE_SECTIONS may change too. Everything else (model, data, optimizer, loss,
# batch, seed, ...) must stay as it was.
MAY_CHANGE_ON_RESUME = (
    "train.max_steps", "train.max_epochs", "train.log_every", "train.validate_every", "train.num_workers",
    "train.device", "schedule.stop_patience", "schedule.max_halvings",
)
MAY_CHANGE_SECTIONS = ("checkpoint",)


@dataclass
class ModelSection:
    name: str = "mossformer2-se-48k"  # a named config of steadyvoice.models
    overrides: dict[str, Any] = field(default_factory=dict)  # MossFormer2SEConfig fields to change
    # Submodule -> exported model (a name `steadyvoice models` lists, or a directory) whose weights that part
    # starts from, e.g. {core: default-v1}; strict (every key and shape must fit). A resumed run restores its
    # own weights over them.
    init_parts: dict[str, str] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)  # submodules whose weights do not train, e.g. [core]

    def resolve(self):
        """The MossFormer2SEConfig this section describes (ConfigError naming model.overrides.<key>)."""
        from steadyvoice.errors import ModelError
        from steadyvoice.models import resolve_config  # lazy: the config module must not import torch

        try:
            return resolve_config(self.name, self.overrides, path="model.overrides")
        except ModelError as exc:
            raise ConfigError(f"model.name: {exc}") from None


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # applied to weight matrices only; biases and norm gains use 0
    max_grad_norm: float = 10.0  # gradient clipping; 0 = off
    # torch's fused Adam/AdamW kernel where it has one (CPU, CUDA): the for-loop update to float rounding, 3x
    # faster on CPU. false: the for-loop implementation (earlier releases' arithmetic to the bit). The choice is
    # saved with the optimizer's state: a resumed run keeps the one it started with.
    fused: bool = True

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr}: must be positive")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas={list(self.betas)}: each must be in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("optim.eps must be positive; optim.weight_decay and optim.max_grad_norm not negative")


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0  # linear warmup from lr/warmup_steps to lr
    # plateau: reload best + halve, early stopping; cosine: after the warmup the LR follows half a cosine
    # from lr down to lr * min_lr_ratio over decay_steps optimizer steps, then stays there; constant: lr.
    # cosine and constant only track the best validation (no reload, no early stop).
    kind: Literal["constant", "plateau", "cosine"] = "plateau"
    monitor: Literal["loss", "si_sdr"] = "loss"  # validation metric (loss: lower is better; si_sdr: higher)
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    patience: int = 5  # validations without improvement before "reload best weights and halve the LR"
    factor: float = 0.5  # LR multiplier at each plateau
    stop_patience: int = 10  # validations without improvement before stopping
    max_halvings: int = 0  # stop instead of a further halving past this many; 0 = no limit
    decay_steps: int = 0  # cosine: steps from the end of the warmup to the floor (fixed for the run's life)
    min_lr_ratio: float = 0.0  # cosine: the floor as a fraction of lr

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.patience < 1 or self.stop_patience < 1 or self.max_halvings < 0:
            raise ValueError("schedule.warmup_steps/max_halvings must be >= 0; schedule.patience/stop_patience >= 1")
        if self.kind == "cosine" and self.decay_steps < 1:
            raise ValueError(f"schedule.decay_steps={self.decay_steps}: kind cosine needs the number of optimizer "
                             "steps to decay over (e.g. train.max_steps minus schedule.warmup_steps)")
        if self.decay_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("schedule.decay_steps must be >= 0 and schedule.min_lr_ratio in [0, 1]")
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"schedule.factor={self.factor}: must be in (0, 1)")
        if self.min_delta < 0:
            raise ValueError(f"schedule.min_delta={self.min_delta}: must not be negative")


@dataclass
class LossConfig:
    """Loss terms and weights. Each model family uses its own keys (steadyvoice.train.objectives); a key of
    another family set away from its default is an error naming it."""

    # MossFormer2-SE (and FRCRN: si_snr_weight)
    psm_weight: float = 1.0  # official loss: magnitude-weighted phase-sensitive-mask MSE
    psm_ratio: Literal["l2", "l1"] = "l2"  # the official code's default is l2 (|S|^2/|Y|^2 * cos)
    si_snr_weight: float = 0.0  # negative SI-SNR of the resynthesised waveform
    mrstft_weight: float = 0.0  # MossFormer2-SE: multi-resolution STFT loss of the waveform (losses.multi_resolution_stft)
    # FRCRN: complex-mask MSE (real and imaginary parts)
    mask_weight: float = 0.0
    # MossFormerGAN-SE generator: compressed-spectrum MSE of real+imag parts, of magnitudes, L1 of the waveform,
    # and the metric discriminator's (D(clean, estimate) - 1)^2. Full-band (fullband-se): mag_weight weighs the
    # compressed-magnitude MSE of the upper band, and upper_mse_weight its complex-spectrum error over the noisy
    # band's energy (an inverse band SNR, which the compressed term alone under-weighs in loud frames).
    ri_weight: float = 0.0
    mag_weight: float = 0.0
    time_weight: float = 0.0
    adversarial_weight: float = 0.0
    upper_mse_weight: float = 0.0

    def __post_init__(self) -> None:
        for key in ("psm_weight", "si_snr_weight", "mrstft_weight", "mask_weight", "ri_weight", "mag_weight", "time_weight",
                    "adversarial_weight", "upper_mse_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"loss.{key}={getattr(self, key)}: must not be negative")


@dataclass
class GANConfig:
    """The metric discriminator of GAN training (MossFormerGAN-SE): it learns to predict normalised PESQ."""

    discriminator: str = "mossformergan-se-16k"  # a named discriminator config (steadyvoice.models.mossformer_gan)
    overrides: dict[str, Any] = field(default_factory=dict)  # MetricDiscriminatorConfig fields to change
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5  # theirs: configured 1e-5, but never passed (AdamW's 0.01 applied); we pass it
    max_grad_norm: float = 10.0
    pesq_workers: int = 2  # processes computing PESQ targets while the generator trains

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("gan.lr must be positive, gan.weight_decay and gan.max_grad_norm not negative")
        if self.pesq_workers < 0:
            raise ValueError(f"gan.pesq_workers={self.pesq_workers}: must be 0 (in the training process) or more")

    def resolve(self):
        """The MetricDiscriminatorConfig this section describes (ConfigError naming gan.overrides.<key>)."""
        from steadyvoice.models.mossformer_gan import DISCRIMINATOR_CONFIGS

        if self.discriminator not in DISCRIMINATOR_CONFIGS:
            raise ConfigError(f"gan.discriminator: unknown {self.discriminator!r}; valid: {', '.join(DISCRIMINATOR_CONFIGS)}")
        base = DISCRIMINATOR_CONFIGS[self.discriminator]
        return from_dict(type(base), {**to_dict(base), **self.overrides}, path="gan.overrides")


@dataclass
class RunConfig:
    batch_size: int = 4  # per process
    accumulate: int = 1  # micro-batches per optimizer step
    max_steps: int = 0  # optimizer steps; 0 = no limit
    max_epochs: int = 100
    validate_every: int = 0  # optimizer steps between validations; 0 = at the end of every epoch
    valid_batch_size: int = 0  # 0 = batch_size
    log_every: int = 10
    num_workers: int = 2  # DataLoader worker processes (results do not depend on it)
    autocast: Literal["none", "bf16", "fp16"] = "none"  # fp16 (with GradScaler) needs CUDA
    seed: int = 777
    device: str = "auto"  # auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps: steadyvoice.devices

    def __post_init__(self) -> None:
        from steadyvoice.devices import DEVICE_WORDS, is_device_word

        if not is_device_word(self.device):
            raise ValueError(f"train.device={self.device!r}: use {DEVICE_WORDS}")
        for name in ("batch_size", "accumulate", "max_epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)}: must be at least 1")
        for name in ("max_steps", "validate_every", "valid_batch_size", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)}: must not be negative")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gan: GANConfig = field(default_factory=GANConfig)  # used by GAN-trained models only
    train: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Parse a YAML config (a file, or the name of a packaged recipe) with ``section.key=value`` overrides;
    also checks the model section resolves.

    An error caused by an override (a typo in ``--set optim.lrr=1``) names that override, not the file.
    """
    overrides = list(overrides or [])
    path = recipe_path(path)  # an existing file, or a recipe shipped in the package by name ("tiny-cpu")
    recipe = load_yaml_file(path)  # errors name the file
    try:
        apply_overrides(recipe, overrides)
    except ConfigError as exc:  # "override 'a.b=1': 'a' is not a section"
        raise ConfigError(f"--set: {exc}") from None
    try:
        return _parse_train_config(recipe, overrides)
    except ConfigError as exc:
        culprit = _override_to_blame(recipe, overrides, str(exc))
        raise ConfigError(f"{f'--set {culprit}' if culprit else path}: {exc}") from None


def _parse_train_config(recipe: dict, overrides: list[str]) -> TrainConfig:
    cfg = from_dict(TrainConfig, apply_overrides(recipe, overrides))
    cfg.model.resolve()
    return cfg


def _override_to_blame(recipe: dict, overrides: list[str], message: str) -> str | None:
    """The override behind a ConfigError: the message names its key (or the section around it) and the
    config parses, or fails otherwise, without it. None: the recipe itself is at fault."""
    named = set(re.findall(r"'([\w.-]+)'", message)) | set(re.findall(r"^([\w.-]+):", message))
    for i, item in enumerate(overrides):
        key = item.split("=", 1)[0].strip()
        if not any(key == n or key.startswith(n + ".") or n.startswith(key + ".") for n in named):
            continue
        try:
            _parse_train_config(recipe, overrides[:i] + overrides[i + 1:])
        except ConfigError as exc:
            if str(exc) == message:
                continue
        return item
    return None


def config_to_yaml_dict(cfg: TrainConfig) -> dict:
    """Plain data for config.yaml (JSON round trip so tuples become lists exactly as YAML reads them back)."""
    return json.loads(json.dumps(to_dict(cfg)))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Key paths whose values differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_keys(a, b, path + "."))
        elif a != b:
            out.append(path)
    return out


def check_resume_config(run_config_path: Path, cfg: TrainConfig) -> list[str]:
    """Compare ``cfg`` with the config saved in a run directory.

    Returns the allowed keys that changed (for a log line); raises ConfigError naming every other one.
    """
    old = load_yaml_file(run_config_path)
    diffs = changed_keys(old, config_to_yaml_dict(cfg))
    allowed = [k for k in diffs if k in MAY_CHANGE_ON_RESUME or k.split(".", 1)[0] in MAY_CHANGE_SECTIONS]
    refused = [k for k in diffs if k not in allowed]
    if refused:
        details = ", ".join(f"{k} ({_get(old, k)!r} -> {_get(config_to_yaml_dict(cfg), k)!r})" for k in refused)
        raise ConfigError(
            f"{run_config_path}: this run was started with a different config; changed: {details}. "
            "Resume with the original settings, start a new run directory, or pass --restart to start over "
            f"(keys that may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)}, checkpoint.*)"
        )
    return allowed


def _get(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d
