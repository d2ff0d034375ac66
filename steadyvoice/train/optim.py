"""Optimizer parameter groups, the same rule for every network a trainer optimises (generator or discriminator)."""

from __future__ import annotations

import torch


def decay_groups(module: torch.nn.Module, weight_decay: float) -> tuple[list[dict], list[str]]:
    """Two groups: weight matrices and kernels (``weight_decay``) and 1-D parameters (biases, norm gains: none).

    Frozen parameters are left out. Returns (param groups, parameter names in optimizer order).
    """
    decay = [(n, p) for n, p in module.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [(n, p) for n, p in module.named_parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": [p for _, p in decay], "weight_decay": weight_decay, "name": "decay"},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0, "name": "no_decay"},
    ]
    return groups, [n for n, _ in decay] + [n for n, _ in no_decay]
