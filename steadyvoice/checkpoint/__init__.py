"""Checkpoints that never lose a run: pickle-free, verified, atomic, exactly resumable.

Modules (read in this order): format (files, manifest, verification), store (atomic commit, retention,
clean-up), parts (the named stateful parts a trainer registers: model, optimizer by parameter name, RNG),
state (parts <-> files, host snapshot, RNG re-derivation), v1 (reading format version 1), writer
(background writer), api (reading, listing, inspection, weights-only loading, export), checkpointer (what
a trainer calls). The package knows nothing of training: it imports nothing from steadyvoice.train. The
ClearerVoice training-directory import, which needs both, is steadyvoice.legacy.

Imports are lazy so that ``steadyvoice.checkpoint.config`` (read by the training config) stays light.
"""

from __future__ import annotations

_EXPORTS = {
    "Checkpointer": "steadyvoice.checkpoint.checkpointer",
    "RestoreInfo": "steadyvoice.checkpoint.checkpointer",
    "CheckpointConfig": "steadyvoice.checkpoint.config",
    "load_checkpoint": "steadyvoice.checkpoint.api",
    "load_weights": "steadyvoice.checkpoint.api",
    "resolve_checkpoint": "steadyvoice.checkpoint.api",
    "verify_checkpoint": "steadyvoice.checkpoint.api",
    "list_checkpoints": "steadyvoice.checkpoint.api",
    "inspect_checkpoint": "steadyvoice.checkpoint.api",
    "export_checkpoint": "steadyvoice.checkpoint.api",
    "CorruptCheckpointError": "steadyvoice.checkpoint.format",
    "ModelState": "steadyvoice.checkpoint.parts",
    "OptimizerState": "steadyvoice.checkpoint.parts",
    "RNGState": "steadyvoice.checkpoint.parts",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steadyvoice.checkpoint' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
