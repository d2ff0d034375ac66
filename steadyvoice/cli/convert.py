"""``steadyvoice convert clearervoice SRC (DEST | --name NAME)``: official ClearerVoice checkpoint -> SteadyVoice
model dir.

Reads the ``.pt`` safely (no pickled code runs), infers the configuration from the tensor shapes, checks
every weight, and writes DEST/model.safetensors + DEST/config.json (with the source file's name and
SHA-256). A non-empty DEST that is not already a SteadyVoice model directory is left alone unless
``--overwrite`` is given. ``--name NAME`` instead of DEST installs the model as
``$STEADYVOICE_HOME/models/NAME`` (see :mod:`steadyvoice.catalog`), so that ``--model NAME`` finds it.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from steadyvoice.errors import CheckpointError


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert a checkpoint of another toolkit into a model directory",
                                   description="Convert a checkpoint of another toolkit into a SteadyVoice model "
                                               "directory (model.safetensors + config.json).")
    formats = parser.add_subparsers(dest="source_format", metavar="FORMAT")
    formats.required = True
    cv = formats.add_parser("clearervoice", help="ClearerVoice-Studio MossFormer2_SE .pt checkpoint",
                            description="Convert a ClearerVoice-Studio checkpoint (.pt; bare state_dict or "
                                        "{'model': ...}, with or without DDP 'module.' prefixes). The network is "
                                        "recognised from its keys and shapes.")
    cv.add_argument("src", type=Path, help="the official .pt file")
    cv.add_argument("dest", type=Path, nargs="?", help="output model directory (or give --name)")
    cv.add_argument("--name", metavar="NAME",
                    help="install as $STEADYVOICE_HOME/models/NAME instead of DEST, for --model NAME "
                         "(e.g. mossformer2-se-48k; steadyvoice models lists the installed ones)")
    cv.add_argument("--sample-rate", type=int, default=None,
                    help="sample rate the model was trained at (not stored in the weights; default: the official "
                         "model's, e.g. 48000 for MossFormer2_SE_48K)")
    cv.add_argument("--hop-length", type=int, default=None,
                    help="frame hop in samples (not stored in the weights; default: the official model's: "
                         "MossFormer2_SE win_length/5 (384 at 48 kHz), FRCRN 320, MossFormerGAN 100; "
                         "MossFormer2_SS: its encoder stride, 8)")
    cv.add_argument("--overwrite", action="store_true",
                    help="write into DEST even if it is a non-empty directory that is not a SteadyVoice model")
    cv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadyvoice.models import CONFIGS, architecture_of, count_parameters, save_pretrained
    from steadyvoice.models.clearervoice import load_official

    dest = _destination(args)
    _check_destination(dest, overwrite=args.overwrite)
    model, cfg = load_official(args.src, sample_rate=args.sample_rate, hop_length=args.hop_length)
    source = {
        "converted_from": "ClearerVoice-Studio",
        "file": args.src.name,
        "sha256": _sha256(args.src),
    }
    save_pretrained(model, cfg, dest, source=source)
    name = next((n for n, c in CONFIGS.items() if c == cfg), "custom")
    print(f"converted {args.src} -> {dest}: {architecture_of(cfg).name}, config {name} ({_summary(cfg)}), "
          f"{count_parameters(model):,} parameters")
    if args.name:
        print(f"use it as: --model {args.name}")
    return 0


def _destination(args: argparse.Namespace) -> Path:
    """DEST, or where a model called --name is installed; exactly one of the two."""
    if (args.dest is None) == (args.name is None):
        raise CheckpointError("give DEST (a model directory to write) or --name NAME (install into "
                              "$STEADYVOICE_HOME/models/NAME), not both and not neither")
    if args.name is None:
        return args.dest
    from steadyvoice.catalog import install_path

    return install_path(args.name)


def _check_destination(dest: Path, *, overwrite: bool) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise CheckpointError(f"{dest}: exists and is not a directory; choose another DEST")
    if overwrite or not any(dest.iterdir()):
        return
    from steadyvoice.errors import ModelError
    from steadyvoice.models import read_model_config

    try:
        read_model_config(dest)  # an existing model directory is simply replaced
    except ModelError:
        raise CheckpointError(f"{dest}: is a non-empty directory that is not a SteadyVoice model; choose an "
                              "empty or new DEST, or pass --overwrite to write into it anyway") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _summary(cfg) -> str:
    """The config fields worth a glance: rate, frame grid and the network's size fields that are set."""
    keys = ("sample_rate", "win_length", "hop_length", "n_mels", "model_dim", "num_blocks", "channels", "num_spks")
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in keys if hasattr(cfg, k))
