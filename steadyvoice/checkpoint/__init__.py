"""Checkpoints that never lose a run: pickle-free, verified, atomic, exactly resumable.

Modules (read in this order): :mod:`~steadyvoice.checkpoint.format` (files, manifest, verification),
:mod:`~steadyvoice.checkpoint.store` (atomic commit, retention, clean-up), :mod:`~steadyvoice.checkpoint.state`
(trainer state <-> files, optimizer by parameter name, validated restore, RNG),
:mod:`~steadyvoice.checkpoint.writer` (background writer), :mod:`~steadyvoice.checkpoint.api` (reading,
listing, inspection, weights-only loading, export), :mod:`~steadyvoice.checkpoint.checkpointer` (what the
trainer calls), :mod:`~steadyvoice.checkpoint.legacy` (ClearerVoice training directories).

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
    "import_clearervoice": "steadyvoice.checkpoint.legacy",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steadyvoice.checkpoint' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
