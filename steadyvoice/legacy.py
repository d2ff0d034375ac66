"""Continue a ClearerVoice-Studio training run: import its newest checkpoint as a SteadyVoice run directory.

A ClearerVoice training directory holds ``model.ckpt-E-S.pt`` files (``torch.save({'model', 'optimizer',
'epoch', 'step'})``) and the text pointers ``last_checkpoint`` / ``last_best_checkpoint`` naming a file; a
GAN run (MossFormerGAN_SE_16K) also holds ``discriminator.ckpt-E-S.pt`` (``{'discriminator',
'optimizer_disc', 'epoch', 'step'}``, the pointers name it on their second line). :func:`import_clearervoice`
takes the newest checkpoint the pointers name (or, if they name nothing that exists, the newest
``model.ckpt-*.pt``), reads it without running pickled code
(:func:`steadyvoice.models.clearervoice.read_official_checkpoint`; then ``torch.load(weights_only=True)``
for the optimizer), recognises the network family from the weights
(:func:`steadyvoice.models.clearervoice.identify`: MossFormer2_SE, FRCRN_SE_16K or MossFormerGAN_SE_16K),
maps every weight to our names with that family's mapping, infers the network configuration from the
shapes, maps the Adam/AdamW state from their parameter ORDER to our parameter NAMES, and produces the state
of each named part of a fresh :class:`~steadyvoice.train.loop.Trainer` (model, optimizer, progress, data
position, schedule; for the GAN also discriminator, optimizer_d, schedule_d), loading it through the parts'
own ``load_state_dict`` (so a missing ``lr`` / ``initial_lr`` is repaired, with a warning, where every
checkpoint's is: :class:`~steadyvoice.checkpoint.parts.OptimizerState`). It then writes ``config.yaml`` and
saves one ordinary, verified checkpoint through :class:`~steadyvoice.checkpoint.Checkpointer`. This module
sits above both ``steadyvoice.checkpoint`` and ``steadyvoice.train``: it is the one place that uses both.

Semantics of their counters (their solver, ``train/speech_enhancement/solver.py``):

* ``epoch`` E is the 0-based index of the epoch that was running when the file was written. The solver
  saves both in the middle of epoch E (every ``checkpoint_save_freq`` batches) and at its end, and the two
  cannot be told apart from the file. On resume ClearerVoice itself restarts epoch E from its first
  batch. The import does the same by default (data position: epoch E, 0 examples consumed): no example is
  skipped, at worst part of an epoch is seen again. ``epoch_finished=True`` (``--epoch-finished``) says the
  file was written at the end of epoch E and continues with epoch E+1.
* ``step`` S counts their mini-batches (with gradient accumulation, several per optimizer step). Our step
  counts optimizer steps, so it is taken from Adam's own per-parameter ``step`` (S when there is no Adam
  state); S is kept as ``progress.micro_step``.
* Their best validation loss and patience counter are not saved: early stopping starts fresh (the first
  validation becomes the best; nothing is overwritten, every SteadyVoice save is a new directory). Their
  learning rate (halved by their plateau rule) is kept: the schedule's scale is set to lr / optim.lr
  (group 0's lr: their plateau rule halves group 0 only; for the discriminator lr / gan.lr).

Parameter order. Their optimizer state is indexed by position: torch numbers the parameters of
``param_groups`` consecutively, group after group, each group in the order it was given. Their
``train/speech_enhancement/train.py`` builds the optimizers as follows, and ``model.parameters()`` /
``named_parameters()`` is the state_dict order without buffers and without repeats of a tensor registered
under several names (counted at its first name):

* MossFormer2_SE_48K: ``Adam(model.parameters())``, one group. The rotary ``freqs`` is one parameter
  shared by every layer (listed once per layer in the state_dict), counted at its first key; in rotary
  versions where it is a buffer it is not counted at all. Buffer: ``pos_enc.inv_freq``.
* FRCRN_SE_16K: ``Adam(model.get_params(weight_decay))``; ``DCCRN.get_params`` walks
  ``named_parameters()`` and makes two groups: every name without the substring "bias" (weight decay), then
  every name with it (no decay). Their UNet registers each module twice (``encoder0`` / ``encoders.0``):
  both names map to one weight of ours, the first is the one ``named_parameters()`` yields. The conv-STFT
  kernels ``stft.weight`` / ``istft.weight`` are frozen parameters in group 0 (no Adam state; fixed tables
  we compute). Buffers: ``istft.window``, ``istft.enframe``, BatchNorm statistics.
* MossFormerGAN_SE_16K: generator ``AdamW(model.parameters())`` and discriminator
  ``AdamW(discriminator.parameters())``, one group each. The generator's 12 rotary ``freqs`` are separate
  frozen parameters (no Adam state; one fixed table of ours). The discriminator's buffers are its BatchNorm
  statistics.

The mapping is checked: their group sizes must be those of their training code for this network, and
every moment must have the size of its parameter (an error names both).

The discriminator of a GAN run is imported (weights and optimizer state: parts ``discriminator`` and
``optimizer_d``) from ``discriminator.ckpt-E-S.pt`` beside ``model.ckpt-E-S.pt``. If that file is missing
the import still goes on, with a warning: the generator is what the run is about, and the discriminator
learns again from a fresh start (gan section of the config). Their weight decay and betas are not carried
over: the optimizers use the config's (theirs never passes its configured decay to AdamW).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steadyvoice.checkpoint.api import CHECKPOINTS_DIR
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models import build_model
from steadyvoice.models import clearervoice as cv
from steadyvoice.models import clearervoice_frcrn as frcrn_cv
from steadyvoice.models import clearervoice_mossformergan as gan_cv
from steadyvoice.models.mossformer_gan import MetricDiscriminator

log = logging.getLogger("steadyvoice.checkpoint")

POINTER_FILES = ("last_checkpoint", "last_best_checkpoint")
CHECKPOINT_NAME = re.compile(r"^model\.ckpt-(\d+)-(\d+)\.pt$")
DISCRIMINATOR_NAME = "discriminator.ckpt-{epoch}-{step}.pt"  # their solver's name, beside model.ckpt-E-S.pt
_BATCH_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

StateDict = dict[str, torch.Tensor]


@dataclass
class ImportResult:
    source: Path  # the ClearerVoice file imported
    their_epoch: int
    their_step: int
    checkpoint: Path  # the SteadyVoice checkpoint written
    step: int  # optimizer steps
    epoch: int  # the epoch the continued run starts with
    config_path: Path
    repaired: list[str] = field(default_factory=list)
    family: str = "MossFormer2_SE_48K"  # their network (models.clearervoice.FAMILIES)
    discriminator: Path | None = None  # the discriminator file imported (GAN runs); None: started fresh


# ------------------------------------------------------------------------------------------ their networks
@dataclass(frozen=True)
class TheirNetwork:
    """One network as their training code builds and optimizes it (the per-family pieces of the import)."""

    what: str  # for messages
    buffers: tuple[str, ...]  # key suffixes of state_dict entries that are buffers, not parameters
    groups: Callable[[list[str]], list[list[str]]]  # their optimizer's param groups from the parameters() order
    names: Callable[[StateDict, Any], dict[str, str | None]]  # their key -> our name (None: a fixed table of ours)
    weights: Callable[[StateDict, Any], StateDict]  # their state_dict -> ours (every key checked)
    infer: Callable[[StateDict, Any], Any]  # (state_dict, config of the run) -> config read from the shapes
    inferred: tuple[str, ...]  # the config fields read from the shapes; every other one comes from the run's
    build: Callable[[Any], torch.nn.Module]  # our network of a config
    shared: str = ""  # key suffix of ONE parameter listed once per layer (MossFormer2's rotary freqs)


@dataclass(frozen=True)
class TrainingFamily:
    family: str  # models.clearervoice.FAMILIES name
    generator: TheirNetwork  # the network in model.ckpt-E-S.pt
    discriminator: TheirNetwork | None = None  # a GAN's, in discriminator.ckpt-E-S.pt


def _one_group(keys: list[str]) -> list[list[str]]:
    return [list(keys)]  # Adam(model.parameters()) / AdamW(...parameters())


def _weights_then_biases(keys: list[str]) -> list[list[str]]:
    """FRCRN's DCCRN.get_params: names without "bias" (weight decay), then names with it (none)."""
    return [[k for k in keys if "bias" not in k], [k for k in keys if "bias" in k]]


def _mossformer2_names(sd: StateDict, cfg: Any) -> dict[str, str | None]:
    out = {}
    for key, value in sd.items():
        mapped = cv.official_to_ours({key: value})  # checks a fixed table's values
        out[key] = next(iter(mapped)) if mapped else None  # None: rotary freqs / inv_freq, computed by us
    return out


def _frcrn_names(sd: StateDict, cfg: Any) -> dict[str, str | None]:
    # stft.* / istft.* hold only fixed tables (checked when the weights are mapped); both names of an aliased
    # module give the same name of ours
    return {k: None if k.startswith(("stft.", "istft.")) else frcrn_cv.official_key_to_ours(k)[0] for k in sd}


def _generator_names(sd: StateDict, cfg: Any) -> dict[str, str | None]:
    return {theirs: ours for theirs, ours, _ in gan_cv.generator_key_table(cfg)}


def _discriminator_names(sd: StateDict, cfg: Any) -> dict[str, str | None]:
    return {theirs: ours for theirs, ours, _ in gan_cv.discriminator_key_table(cfg)}


TRAINING_FAMILIES: dict[str, TrainingFamily] = {f.family: f for f in [
    TrainingFamily("MossFormer2_SE_48K", TheirNetwork(
        what="MossFormer2_SE network", buffers=("pos_enc.inv_freq",), groups=_one_group, names=_mossformer2_names,
        weights=lambda sd, cfg: cv.official_to_ours(sd),
        infer=lambda sd, base: cv.infer_config(sd, sample_rate=base.sample_rate, hop_length=base.hop_length,
                                               fmin=base.fmin),
        inferred=("n_mels", "win_length", "model_dim", "num_blocks", "num_spks", "query_key_dim",
                  "expansion_factor", "rotary_dim", "conv_kernel", "fsmn_inner_dim", "fsmn_lorder", "norm_type",
                  "use_global_pos_enc"),
        build=build_model, shared="rotary_pos_emb.freqs")),
    TrainingFamily("FRCRN_SE_16K", TheirNetwork(
        what="FRCRN_SE_16K network", buffers=("istft.window", "istft.enframe", *_BATCH_NORM_BUFFERS),
        groups=_weights_then_biases, names=_frcrn_names,
        weights=lambda sd, cfg: frcrn_cv.official_to_ours(sd),
        infer=lambda sd, base: frcrn_cv.infer_frcrn_config(sd, sample_rate=base.sample_rate,
                                                           hop_length=base.hop_length),
        inferred=("win_length", "fft_len", "channels", "se_reduction", "fsmn_order"), build=build_model)),
    TrainingFamily("MossFormerGAN_SE_16K", TheirNetwork(
        what="MossFormerGAN_SE_16K generator", buffers=(), groups=_one_group, names=_generator_names,
        weights=gan_cv.generator_official_to_ours,
        infer=lambda sd, base: gan_cv.infer_generator_config(sd, sample_rate=base.sample_rate,
                                                             hop_length=base.hop_length),
        inferred=("win_length", "n_fft", "channels", "num_blocks", "query_key_dim", "rotary_dim", "conv_kernel",
                  "fsmn_lorder", "dense_depth", "dense_fsmn_lorder", "attn_heads", "approx_qk_dim"),
        build=build_model),
        discriminator=TheirNetwork(
            what="MossFormerGAN_SE_16K discriminator", buffers=_BATCH_NORM_BUFFERS, groups=_one_group,
            names=_discriminator_names, weights=gan_cv.discriminator_official_to_ours,
            infer=lambda sd, base: gan_cv.infer_discriminator_config(sd),
            inferred=("cnn_channels", "conformer_blocks", "conformer_heads", "ff_mult", "conv_expansion",
                      "conv_kernel", "max_relative_position", "pool_hidden"),
            build=MetricDiscriminator)),
]}


@dataclass
class _Source:
    """One of their training files: network state_dict (wrapper prefixes removed), optimizer state, our config."""

    path: Path
    weights: StateDict
    optimizer: dict
    network: TheirNetwork
    config: Any = None  # our config of this network, once the run's config is known


# ------------------------------------------------------------------------------------------ finding
def _epoch_step(path: Path) -> tuple[int, int] | None:
    m = CHECKPOINT_NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_checkpoint(src_dir: Path) -> Path:
    """The newest checkpoint named by the pointer files, else the newest ``model.ckpt-E-S.pt``."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise CheckpointError(f"{src_dir}: not a directory; give the ClearerVoice checkpoint directory "
                              "(the one holding last_checkpoint and model.ckpt-*.pt)")
    named = []
    for pointer in POINTER_FILES:
        path = src_dir / pointer
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").split()
        target = src_dir / lines[0] if lines else None
        if target is not None and target.is_file():
            named.append(target)
        else:
            log.warning("%s names %r, which does not exist; looking at the other checkpoints", path, lines[0] if lines else "")
    if named:
        return max(named, key=lambda p: (_epoch_step(p) or (-1, -1), p.stat().st_mtime))
    files = [p for p in src_dir.iterdir() if _epoch_step(p) is not None]
    if not files:
        raise CheckpointError(f"{src_dir}: no ClearerVoice checkpoint (no last_checkpoint / last_best_checkpoint "
                              "pointer naming a file, no model.ckpt-E-S.pt)")
    return max(files, key=lambda p: _epoch_step(p))


def _read_training_checkpoint(path: Path, optimizer_key: str = "optimizer") -> tuple[StateDict, dict]:
    """(network state_dict, whole checkpoint dict) without running pickled code."""
    model_sd = cv.read_official_checkpoint(path)  # refuses Git-LFS pointers, code-running pickles, non-tensors
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            whole = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # read_official_checkpoint already explained unsafe/corrupt files
        raise CheckpointError(f"{path}: cannot read the training state ({exc})") from None
    if not isinstance(whole, dict) or not isinstance(whole.get(optimizer_key), dict):
        if optimizer_key != "optimizer":
            raise CheckpointError(f"{path}: holds no optimizer state ('{optimizer_key}'); move the file away to "
                                  "start the discriminator afresh")
        raise CheckpointError(f"{path}: holds no optimizer state: it is a weights-only file (use "
                              "`steadyvoice convert clearervoice` and --init-from to fine-tune from it)")
    return model_sd, whole


def _read_generator(path: Path) -> tuple[TrainingFamily, _Source, dict]:
    model_sd, whole = _read_training_checkpoint(path)
    model_sd = cv.strip_wrapper_prefixes(model_sd)
    family = cv.identify(model_sd, path).name
    if family not in TRAINING_FAMILIES:
        raise CheckpointError(f"{path}: a {family} checkpoint; importing its training directory is not supported "
                              f"(supported: {', '.join(TRAINING_FAMILIES)})")
    spec = TRAINING_FAMILIES[family]
    return spec, _Source(path, model_sd, whole["optimizer"], spec.generator), whole


def _read_discriminator(spec: TrainingFamily, model_path: Path) -> _Source | None:
    """Their discriminator.ckpt-E-S.pt beside model.ckpt-E-S.pt; None (warned) when there is none."""
    if spec.discriminator is None:
        return None
    epoch_step = _epoch_step(model_path)
    name = DISCRIMINATOR_NAME.format(epoch=epoch_step[0], step=epoch_step[1]) if epoch_step else "discriminator.ckpt"
    path = model_path.with_name(name)
    if epoch_step is None or not path.is_file():
        log.warning("%s: no %s beside it: the discriminator and its optimizer start afresh (the generator, its "
                    "optimizer and the counters are imported)", model_path, name)
        return None
    sd, whole = _read_training_checkpoint(path, "optimizer_disc")
    return _Source(path, cv.strip_wrapper_prefixes(sd), whole["optimizer_disc"], spec.discriminator)


# ------------------------------------------------------------------------------------------ mapping
def their_parameter_groups(network: TheirNetwork, sd: StateDict, cfg: Any, sizes: list[int] | None = None,
                           names: dict[str, str | None] | None = None) -> list[list[str]]:
    """Their state_dict keys (prefixes removed) as their optimizer's param groups, in its order.

    ``parameters()`` order is the state_dict order without buffers and without a second name of a tensor
    (a key whose name of ours was already listed). A ``shared`` parameter listed once per layer is counted
    at its first key; when ``sizes`` (their group sizes) are given and do not fit, the variant without it
    (a buffer in some versions) is tried. CheckpointError when no variant has ``sizes``. ``names``:
    ``network.names(sd, cfg)`` if the caller has it already.
    """
    names = network.names(sd, cfg) if names is None else names
    keys, seen = [], set()
    for key in sd:
        if key.endswith(network.buffers):
            continue
        ours = names.get(key)
        if ours is not None:
            if ours in seen:
                continue  # the second registration of one of their modules
            seen.add(ours)
        keys.append(key)
    candidates = [keys]
    if network.shared:
        first = next((k for k in keys if k.endswith(network.shared)), None)
        candidates = [[k for k in keys if not k.endswith(network.shared) or k == first],
                      [k for k in keys if not k.endswith(network.shared)]]
    groups = [network.groups(c) for c in candidates]
    if sizes is None:
        return groups[0]
    for g in groups:
        if [len(x) for x in g] == list(sizes):
            return g
    raise CheckpointError(
        f"the optimizer state has parameter groups of {list(sizes)} parameters but their training code gives the "
        f"{network.what} groups of {[len(x) for x in groups[0]]}: the checkpoint's optimizer does not belong to "
        f"its model (or the network is not ClearerVoice's {network.what})")


def map_optimizer_state(source: _Source, ours: StateDict) -> dict[str, dict[str, Any]]:
    """Their index-keyed Adam state -> {our parameter name: state}, moments reshaped like our weights."""
    osd, where = source.optimizer, source.path
    their_groups = osd.get("param_groups", [])
    names = source.network.names(source.weights, source.config)
    try:
        groups = their_parameter_groups(source.network, source.weights, source.config,
                                        [len(g.get("params", [])) for g in their_groups], names)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    keys = [k for g in groups for k in g]
    indices = [i for g in their_groups for i in g["params"]]
    by_name: dict[str, dict[str, Any]] = {}
    for key, index in zip(keys, indices):
        state, name = osd.get("state", {}).get(index), names[key]
        if name is None or not state:
            continue  # a frozen table we compute (their STFT kernels, rotary freqs), or never updated
        if name not in ours:
            raise CheckpointError(f"{where}: '{key}' maps to '{name}', which is not a weight of ours")
        target = ours[name]
        converted = {}
        for skey, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if value.numel() != target.numel():
                    raise CheckpointError(
                        f"{where}: optimizer state '{skey}' of parameter {index} ('{key}', ours '{name}') has "
                        f"{value.numel()} values but the parameter has {target.numel()}: the optimizer state does "
                        "not match the model's parameter order")
                value = value.reshape(target.shape).clone()
            converted[skey] = value
        by_name[name] = converted
    return by_name


def _their_config(source: _Source, base: Any) -> Any:
    """``base`` (the run's config of this network) with every field the shapes tell read from them.

    A field whose configured value gives the same shapes as the one read from them keeps the configured value
    (e.g. MossFormerGAN's approx_qk_dim 64 and 101 both give one channel per head at 101 bins), so that the
    recipe the run was imported with also resumes it.
    """
    network = source.network
    try:
        inferred = network.infer(source.weights, base)
        cfg = dataclasses.replace(base, **{f: getattr(inferred, f) for f in network.inferred})
    except CheckpointError as exc:
        raise CheckpointError(f"{source.path}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source.path}: the network read from the checkpoint does not fit the config: "
                              f"{exc}") from None
    shapes = None
    for name in network.inferred:
        if getattr(base, name) == getattr(cfg, name):
            continue
        try:
            trial = dataclasses.replace(cfg, **{name: getattr(base, name)})
            shapes = shapes or _shapes(network.build, cfg)
            if _shapes(network.build, trial) == shapes:
                cfg = trial
        except Exception:  # noqa: BLE001 - a configured value that does not even build: the inferred one stays
            continue
    return cfg


def _shapes(build: Callable[[Any], torch.nn.Module], cfg: Any) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only, no memory, no initialisation
        return {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}


def _overrides_from(named: Any, wanted: Any) -> dict[str, Any]:
    """The overrides that turn the named config ``named`` into ``wanted``."""
    from steadyvoice.config import to_dict

    base = to_dict(named)
    return {k: v for k, v in to_dict(wanted).items() if base[k] != v}


# ------------------------------------------------------------------------------------------ import
def import_clearervoice(src_dir: str | Path, dest_run_dir: str | Path, *, config: str | Path | None = None,
                        overrides: list[str] | None = None, sample_rate: int | None = None,
                        epoch_finished: bool = False) -> ImportResult:
    """Write ``dest_run_dir`` (config.yaml + one committed checkpoint) from a ClearerVoice training directory."""
    from steadyvoice.distributed import DistContext
    from steadyvoice.train.loop import Trainer, training_data
    from steadyvoice.train.rundir import RunDirLock, check_run_config, write_run_config

    dest = Path(dest_run_dir)
    if (dest / CHECKPOINTS_DIR).is_dir() and any((dest / CHECKPOINTS_DIR).iterdir()):
        raise CheckpointError(f"{dest}: already has checkpoints; import into a new run directory")
    path = find_checkpoint(Path(src_dir))
    spec, generator, whole = _read_generator(path)
    discriminator = _read_discriminator(spec, path)
    their_epoch, their_step = int(whole.get("epoch", 0) or 0), int(whole.get("step", 0) or 0)
    cfg, discriminator = _run_config(config, overrides, sample_rate, spec, generator, discriminator)
    if not (cfg.data.clean or cfg.data.pairs):
        raise CheckpointError(
            "the imported run needs the training data it will continue on: pass --pairs LIST (ClearerVoice's "
            ".scp lists work as they are), or --clean DIR --noise DIR, or --config FILE with a data section")

    with RunDirLock.acquire(dest):  # no trainer may use the run directory while it is written
        try:
            check_run_config(dest, cfg, restart=False)
        except ConfigError as exc:
            raise CheckpointError(f"{dest}: {exc}") from None
        trainer = Trainer(cfg, training_data(cfg), DistContext(), run_dir=dest)
        repaired = _load_parts(trainer, generator, discriminator, their_epoch, their_step, epoch_finished)
        try:  # only now that every part loaded
            write_run_config(dest, cfg)
        except ConfigError as exc:
            raise CheckpointError(f"{dest}: {exc}") from None
        imported = path.name + (f" + {discriminator.path.name}" if discriminator is not None else "")
        checkpoint = _save(dest, cfg, trainer, f"imported from ClearerVoice {spec.family} {imported} (epoch "
                                               f"{their_epoch}, step {their_step})")
    return ImportResult(source=path, their_epoch=their_epoch, their_step=their_step, checkpoint=checkpoint,
                        step=trainer.step, epoch=trainer.epoch, config_path=dest / "config.yaml", repaired=repaired,
                        family=spec.family, discriminator=discriminator.path if discriminator is not None else None)


def _run_config(config: str | Path | None, overrides: list[str] | None, sample_rate: int | None,
                spec: TrainingFamily, generator: _Source, discriminator: _Source | None) -> tuple[Any, _Source | None]:
    """The continued run's config and the discriminator to import (None: none, or the config trains none).

    The given config (or the defaults = the official MossFormer2 recipe), with every network dimension read
    from the checkpoint; what shapes cannot tell (rate, hop, fixed inner settings) comes from the config.
    Sets the ``config`` of both sources.
    """
    from steadyvoice.config import apply_overrides, from_dict
    from steadyvoice.models import architecture_of, get_config
    from steadyvoice.models.mossformer_gan import DISCRIMINATOR_CONFIGS
    from steadyvoice.train.config import ModelSection, TrainConfig, load_train_config

    if config is not None:
        cfg = load_train_config(config, overrides)
    else:
        cfg = from_dict(TrainConfig, apply_overrides({}, overrides or []))
    base = cfg.model.resolve()
    architecture = next(f.architecture for f in cv.FAMILIES if f.name == spec.family)
    if architecture_of(base).name != architecture:
        raise CheckpointError(
            f"{generator.path}: a {spec.family} training checkpoint, but the config trains "
            f"{architecture_of(base).name} (model.name {cfg.model.name}); give a {architecture} config with "
            "--config (a recipe of that family, e.g. from recipes/)")
    if sample_rate is not None:
        base = dataclasses.replace(base, sample_rate=sample_rate)
    generator.config = _their_config(generator, base)
    cfg = dataclasses.replace(cfg, model=ModelSection(
        name=cfg.model.name, overrides=_overrides_from(get_config(cfg.model.name), generator.config)))
    if cfg.model.resolve() != generator.config:  # a bug here, not a user error
        raise CheckpointError(f"{generator.path}: could not express the inferred network configuration in config.yaml")
    if discriminator is None:
        return cfg, None
    if cfg.loss.adversarial_weight <= 0:
        log.warning("%s: not imported: the config trains without a discriminator (loss.adversarial_weight 0)",
                    discriminator.path)
        return cfg, None
    discriminator.config = _their_config(discriminator, cfg.gan.resolve())
    named = DISCRIMINATOR_CONFIGS[cfg.gan.discriminator]
    cfg = dataclasses.replace(cfg, gan=dataclasses.replace(
        cfg.gan, overrides=_overrides_from(named, discriminator.config)))
    if cfg.gan.resolve() != discriminator.config:  # a bug here, not a user error
        raise CheckpointError(f"{discriminator.path}: could not express the discriminator's configuration in "
                              "config.yaml")
    return cfg, discriminator


def _load_network(parts: dict, model_part: str, optimizer_part: str, source: _Source) -> dict:
    """Their weights and optimizer state as the state of our parts; returns the optimizer state by name."""
    where = str(source.path)
    parts[model_part].load_state_dict(source.network.weights(source.weights, source.config), where=where)
    optimizer = parts[optimizer_part]
    state_by_name = map_optimizer_state(source, parts[model_part].state_dict())
    frozen = sorted(set(state_by_name) - set(optimizer.names))
    if frozen:  # e.g. FRCRN's modules their forward never uses: we freeze them (DDP may have given them moments)
        log.info("%s: %d parameter(s) with optimizer state are frozen here (not trained), their state is dropped: "
                 "%s", where, len(frozen), ", ".join(frozen[:5]) + (" ..." if len(frozen) > 5 else ""))
        state_by_name = {k: v for k, v in state_by_name.items() if k not in frozen}
    # Every group of ours takes their group 0's learning rate (their plateau rule halves group 0 only). A
    # missing lr / initial_lr is left out: the optimizer part repairs it from the config and says so.
    theirs = (source.optimizer.get("param_groups") or [{}])[0]
    lrs = sorted({float(g["lr"]) for g in source.optimizer.get("param_groups", []) if "lr" in g})
    if len(lrs) > 1:
        log.warning("%s: their parameter groups have learning rates %s (their plateau rule halves group 0 only); "
                    "the continued run uses group 0's for every group", where, lrs)
    live = optimizer.state_dict()["param_groups"]
    groups = [{**{k: v for k, v in g.items() if k not in ("lr", "initial_lr")},
               **{k: theirs[k] for k in ("lr", "initial_lr") if k in theirs}} for g in live]
    optimizer.load_state_dict({"param_groups": groups, "state": state_by_name}, where=where)
    return state_by_name


def _lr_scale(source: _Source, configured: float) -> float:
    """The schedule's scale that gives their learning rate (group 0's; the configured one if it is missing)."""
    theirs = (source.optimizer.get("param_groups") or [{}])[0]
    return (float(theirs["lr"]) if "lr" in theirs else configured) / configured


def _load_parts(trainer, generator: _Source, discriminator: _Source | None, their_epoch: int, their_step: int,
                epoch_finished: bool) -> list[str]:
    """Their networks, optimizers and counters as the state of ``trainer``'s parts; returns the lr repairs."""
    cfg, parts = trainer.config, trainer.parts
    state_by_name = _load_network(parts, "model", "optimizer", generator)
    repaired = list(parts["optimizer"].repaired)
    if discriminator is not None:
        _load_network(parts, "discriminator", "optimizer_d", discriminator)
        repaired += [f"discriminator {note}" for note in parts["optimizer_d"].repaired]
    opt_steps = [int(s["step"]) for s in state_by_name.values() if "step" in s]
    step = max(opt_steps) if opt_steps else their_step

    parts["progress"].load_state_dict({"step": step, "micro_step": their_step, "samples": 0})
    parts["data"].load_state_dict({"epoch": their_epoch + 1 if epoch_finished else their_epoch, "consumed": 0,
                                   "num_examples": len(trainer.data.train)})
    parts["schedule"].load_state_dict({"scale": _lr_scale(generator, cfg.optim.lr)})  # rewrites every group's lr
    if discriminator is not None:
        parts["schedule_d"].load_state_dict({"scale": _lr_scale(discriminator, cfg.gan.lr)})
    return repaired


def _save(dest: Path, cfg, trainer, reason: str) -> Path:
    """One ordinary, verified checkpoint of every part of ``trainer``."""
    from steadyvoice.checkpoint.checkpointer import Checkpointer
    from steadyvoice.distributed import DistContext

    checkpointer = Checkpointer(dest, cfg.checkpoint, DistContext())
    checkpointer.save(trainer.parts, step=trainer.step, epoch=trainer.epoch, metrics={}, is_best=False, reason=reason)
    checkpointer.close()
    return checkpointer.last_saved
