"""Reading checkpoints of format version 1 (SteadyVoice 0.1 before named parts).

Version 1 wrote the same files as version 2 (``model.safetensors``, ``optimizer.safetensors``,
``state.safetensors``, ``state.json``, ``manifest.json``) but its state.json held one fixed trainer layout:
``optimizer`` (param groups by parameter name), ``trainer`` (``schedule``, ``early_stopping``, ``data``,
``progress``, ``scaler``) and ``rng`` (every rank's). Some facts were stored twice there (the epoch in
``progress`` and ``data``, the step in ``schedule`` and ``progress``, plateau decays in ``schedule`` and
``early_stopping``, the seed and schedule settings that the config already holds). :func:`upgrade`
rewrites such a state.json into the named-parts layout, keeping each fact once; the tensors keep their
keys, so nothing else changes. This module is the only place that knows the old layout.
"""

from __future__ import annotations

from typing import Any

# Keys of version 1's trainer parts that the current parts no longer store (each is stored elsewhere).
_DROPPED = {
    "schedule": ("step", "decays", "warmup_steps", "decay_steps", "min_lr_ratio"),  # progress / early stopping / config
    "progress": ("epoch",),  # the data position holds the epoch
    "data": ("seed",),  # the config holds the seed
    "early_stopping": ("monitor",),  # the config holds the monitored metric
}


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 state.json in the current layout (``parts``), in load order."""
    trainer = dict(state.get("trainer") or {})
    parts: dict[str, Any] = {
        "model": {"kind": "model", "file": "model.safetensors"},
        "optimizer": {"kind": "optimizer", "file": "optimizer.safetensors",
                      "param_groups": state["optimizer"]["param_groups"],
                      "scalar_state": state["optimizer"].get("scalar_state", {})},
    }
    for name in ("progress", "data", "schedule", "early_stopping", "scaler"):
        if name in trainer:
            value = trainer.pop(name)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in _DROPPED.get(name, ())}
            parts[name] = {"kind": "json", "state": value}
    for name, value in trainer.items():  # anything else a version-1 trainer stored
        parts[name] = {"kind": "json", "state": value}
    parts["rng"] = {"kind": "rng", **state["rng"]}
    out = {k: v for k, v in state.items() if k not in ("optimizer", "trainer", "rng")}
    out["parts"] = parts
    return out
