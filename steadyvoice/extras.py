"""Optional dependencies installed with pip extras, and the one-line error when one is missing.

Inference (``enhance``, ``separate``, ``convert``, ``ckpt`` list/verify/inspect/export) needs only the base
install. Training needs the ``train`` extra: tensorboard (the run's TensorBoard logs) and pyroomacoustics
(simulated rooms, imported by the training data pipeline and the corpus builder). Commands check before
any work, so a missing extra is one line saying what to install, not a traceback halfway through.
"""

from __future__ import annotations

import importlib.util

from steadyvoice.errors import SteadyVoiceError

TRAIN_MODULES = ("tensorboard", "pyroomacoustics")
INSTALL_TRAIN = "pip install 'steadyvoice[train]'"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` that cannot be imported here (found without importing them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def require_train_extra(command: str, modules: tuple[str, ...] = TRAIN_MODULES) -> None:
    """Raise a SteadyVoiceError (exit 2) naming what to install if ``command`` lacks a training dependency."""
    missing = missing_modules(modules)
    if missing:
        raise SteadyVoiceError(f"{command} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                               f"not installed (training dependencies): {INSTALL_TRAIN}")
