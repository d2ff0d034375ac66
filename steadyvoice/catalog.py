"""Model directories by name: the shipped ones and the user's.

    shipped   steadyvoice/weights/<name>/                   (installed with the package: "default")
    user      $STEADYVOICE_HOME/models/<name>/              (e.g. `steadyvoice convert clearervoice SRC --name NAME`)

``STEADYVOICE_HOME`` defaults to the per-user data directory of the platform, found by platformdirs
(``~/.local/share/steadyvoice`` on Linux, or ``$XDG_DATA_HOME/steadyvoice``; ``~/Library/Application
Support/steadyvoice`` on macOS; ``%LOCALAPPDATA%\\steadyvoice`` on Windows). A name is looked up among the
shipped models first, so ``default`` always means the shipped default model; a user directory with a
shipped model's name is listed as hidden.

:func:`describe` reads what ``steadyvoice models`` shows from config.json and the safetensors header (tensor
shapes), without loading any weights.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from steadyvoice.errors import ModelError

__all__ = ["HOME_ENV", "SHIPPED_DIR", "ModelEntry", "ModelInfo", "home", "user_models_dir", "entries", "find",
           "lookup", "install_path", "describe", "check_name"]

HOME_ENV = "STEADYVOICE_HOME"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED, USER = "shipped", "user"
# A model name is one path component that a shell and every file system take as it is.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class ModelEntry:
    """A model directory known by name."""

    name: str
    path: Path
    origin: str  # SHIPPED or USER
    hidden: bool = False  # a user directory named like a shipped model (the shipped one is used)


@dataclass(frozen=True)
class ModelInfo:
    """What ``steadyvoice models`` shows of one entry (fields are None when ``problem`` says why)."""

    name: str
    origin: str
    path: Path
    hidden: bool
    architecture: str | None
    task: str | None  # "enhancement" or "separation"
    sample_rate: int | None
    parameters: int | None  # values stored in model.safetensors (from its header's tensor shapes)
    size_bytes: int  # all files of the directory
    problem: str | None  # why the directory is not a usable model


# ---------------------------------------------------------------------------------------------------
# Where models live
# ---------------------------------------------------------------------------------------------------


def home() -> Path:
    """$STEADYVOICE_HOME, or the per-user data directory of the platform."""
    value = os.environ.get(HOME_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    import platformdirs  # the platform conventions (XDG on Linux, macOS, Windows) are its whole job

    return platformdirs.user_data_path("steadyvoice", appauthor=False)


def user_models_dir() -> Path:
    return home() / "models"


def check_name(name: str) -> str:
    """``name`` if it can name a model directory, else a ModelError."""
    if not _NAME.fullmatch(name):
        raise ModelError(f"model name {name!r}: use letters, digits and . _ + - (starting with a letter or digit), "
                         "e.g. mossformer2-se-48k")
    return name


def entries() -> list[ModelEntry]:
    """Every model directory known by name: the shipped ones, then the user's, each sorted by name."""
    shipped = [ModelEntry(p.name, p, SHIPPED) for p in _subdirectories(SHIPPED_DIR)]
    taken = {e.name for e in shipped}
    user = [ModelEntry(p.name, p, USER, hidden=p.name in taken) for p in _subdirectories(user_models_dir())]
    return shipped + user


def _subdirectories(root: Path) -> list[Path]:
    try:
        children = sorted(root.iterdir())
    except OSError:  # not there (no user models yet) or unreadable: no models from it
        return []
    return [p for p in children if p.is_dir() and _NAME.fullmatch(p.name)]


def find(name: str) -> ModelEntry | None:
    """The entry that ``name`` means (a shipped model before a user one), or None."""
    return next((e for e in entries() if e.name == name and not e.hidden), None)


# ---------------------------------------------------------------------------------------------------
# Name -> directory
# ---------------------------------------------------------------------------------------------------


def path_or_name(text: str | Path, *, how_to: str = "") -> Path:
    """``text`` as a path when it exists or has a directory part (``runs/x/best`` names a checkpoint of a run
    without existing as such); otherwise a model's name, looked up (ModelError when unknown)."""
    path = Path(text)
    if path.exists() or len(path.parts) != 1:
        return path
    return lookup(str(text), how_to=how_to)


def lookup(name: str, *, task: str | None = None, how_to: str = "") -> Path:
    """The model directory called ``name``, or a ModelError listing the known names (of ``task``, if given).

    ``how_to``: what the caller's user can do instead (appended to the messages).
    """
    entry = find(name)
    if entry is not None:
        if entry.origin == SHIPPED and not _is_model_dir(entry.path):
            raise ModelError(f"model '{name}': its weights are missing from this installation ({entry.path}); "
                             f"reinstall SteadyVoice, or {how_to}")
        if task is not None:
            found = task_of(entry.path)
            if found is not None and found != task:
                raise ModelError(f"model '{name}' ({entry.origin}, {entry.path}) is {_a(found)} model, not "
                                 f"{_a(task)} model; {how_to}")
        return entry.path
    if name == "default":  # the shipped default whose directory is gone altogether
        raise ModelError(f"model 'default': its weights are missing from this installation "
                         f"({SHIPPED_DIR / name}); reinstall SteadyVoice, or {how_to}")
    from steadyvoice.models import CONFIGS

    if name in CONFIGS:
        raise ModelError(f"model '{name}' is a network configuration without trained weights; give it weights "
                         f"under that name with `steadyvoice convert clearervoice OFFICIAL.pt --name {name}` "
                         f"(installs into {user_models_dir()}), or {how_to}")
    raise ModelError(f"{name}: no such model directory or model name; {_known(task)}; {how_to}")


def _known(task: str | None) -> str:
    """'known models: default (enhancement, shipped), ...' or what is known when none is of ``task``."""
    listed = []
    for entry in entries():
        if entry.hidden:
            continue
        found = task_of(entry.path)
        if task is None or found == task:
            listed.append(f"{entry.name} ({found or 'unreadable'}, {entry.origin})")
    kind = f"{task} models" if task else "models"
    if not listed:
        return f"no {kind} are installed (yours go in {user_models_dir()}, set by ${HOME_ENV})"
    return f"known {kind} (`steadyvoice models`): {', '.join(listed)}"


def _a(task: str) -> str:
    return f"an {task}" if task[0] in "aeiou" else f"a {task}"


def install_path(name: str) -> Path:
    """Where a user model called ``name`` goes; refuses a bad name or the name of a shipped model."""
    check_name(name)
    if (SHIPPED_DIR / name).is_dir():
        raise ModelError(f"model name {name!r} is taken by a shipped model; choose another name")
    return user_models_dir() / name


# ---------------------------------------------------------------------------------------------------
# What a directory holds (no weights loaded)
# ---------------------------------------------------------------------------------------------------


def describe(entry: ModelEntry) -> ModelInfo:
    """Architecture, task, sample rate, parameter count and size of ``entry``; ``problem`` if it is unusable."""
    from steadyvoice.models import WEIGHTS_FILE, architecture_of, read_model_config

    arch = task = rate = params = problem = None
    try:
        cfg = read_model_config(entry.path)
        arch, task, rate = architecture_of(cfg).name, architecture_of(cfg).task, int(cfg.sample_rate)
        params = _stored_values(entry.path / WEIGHTS_FILE)
    except ModelError as exc:
        problem = str(exc)
    return ModelInfo(entry.name, entry.origin, entry.path, entry.hidden, arch, task, rate, params,
                     _size(entry.path), problem)


def _stored_values(weights: Path) -> int:
    """Number of values in a safetensors file, from the tensor shapes of its header (no data is read)."""
    from safetensors import SafetensorError, safe_open

    if not weights.is_file():
        raise ModelError(f"{weights}: missing (config.json alone is not a model)")
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            return sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: unreadable or damaged weights file ({exc})") from None


def task_of(path: Path) -> str | None:
    """'enhancement' or 'separation': the task of the model directory's architecture (None if unreadable)."""
    from steadyvoice.models import architecture_of, read_model_config

    try:
        return architecture_of(read_model_config(path)).task
    except ModelError:
        return None


def _is_model_dir(path: Path) -> bool:
    from steadyvoice.models import is_model_dir

    return is_model_dir(path)


def _size(path: Path) -> int:
    total = 0
    for child in path.rglob("*"):
        try:
            if child.is_file():
                total += child.stat().st_size
        except OSError:
            continue
    return total
