"""Errors raised by the library.

Every error a user can cause is a :class:`SteadyVoiceError` whose message says what is wrong and how to
fix it. Library code raises; only :mod:`steadyvoice.cli` turns these into one-line messages and exit
codes (no traceback for user mistakes).
"""

from __future__ import annotations


class SteadyVoiceError(Exception):
    """Base class of every error meant for the user (bad input, bad config, bad checkpoint)."""


class ConfigError(SteadyVoiceError):
    """A configuration file or value is wrong (unknown key, bad type, bad value)."""


class AudioError(SteadyVoiceError):
    """An audio file cannot be read, written or processed."""


class ModelError(SteadyVoiceError):
    """A model cannot be built or its weights do not fit."""


class DataError(SteadyVoiceError):
    """Training or evaluation data is missing or unusable."""


class CheckpointError(SteadyVoiceError):
    """A checkpoint is missing, corrupt, incompatible or cannot be written."""
