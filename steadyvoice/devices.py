"""The one device resolver: the words ``enhance``, ``separate``, ``train`` and the Python API accept.

    auto     CUDA if present (the current GPU, or the process's LOCAL_RANK GPU under torchrun), else Apple
             MPS, else the CPU
    cpu      the CPU
    cuda     the current CUDA GPU (under torchrun: GPU LOCAL_RANK)
    cuda:N   CUDA GPU N
    mps      Apple's Metal GPU (torch.backends.mps)

An explicit device that is not present is an error saying which devices are. :func:`choose_device`
also says why ``auto`` picked what it picked, for the one line the commands print at start
(``device: cpu (auto: no CUDA or MPS)``).

torch is imported only when a device is resolved: the command line shows :data:`DEVICE_HELP` and a config
checks the spelling of a device word (:func:`is_device_word`) without loading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steadyvoice.errors import ModelError, SteadyVoiceError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_HELP", "DEVICE_WORDS", "DeviceChoice", "available_devices", "choose_device", "is_device_word",
           "resolve_device"]

DEVICE_WORDS = "auto, cpu, cuda, cuda:N or mps"
DEVICE_HELP = "auto (the default: CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"
_WORD = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def is_device_word(text: str) -> bool:
    """Whether ``text`` is one of the device words (spelling only; whether the device is here is not checked)."""
    return isinstance(text, str) and _WORD.fullmatch(text) is not None


@dataclass(frozen=True)
class DeviceChoice:
    """A resolved device and, for ``auto``, why it was picked."""

    device: torch.device
    reason: str = ""  # e.g. "auto: no CUDA or MPS"; empty when the device was named

    def __str__(self) -> str:
        """``cuda:0 (auto: NVIDIA A100)``, ``cpu (auto: no CUDA or MPS)``, ``mps``."""
        return f"{_name(self.device)} ({self.reason})" if self.reason else _name(self.device)


def available_devices() -> list[str]:
    """The devices present: ``cpu``, then ``cuda:0`` ... ``cuda:N-1``, then ``mps``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def choose_device(word: str | torch.device, *, local_rank: int | None = None,
                  error: type[SteadyVoiceError] = ModelError) -> DeviceChoice:
    """Resolve a device word (see the module docstring) to a present device, or raise ``error``.

    ``local_rank``: this process's GPU under torchrun; ``cuda`` and ``auto`` then mean ``cuda:local_rank``.
    """
    import torch

    if isinstance(word, torch.device):
        word = str(word)
    if not isinstance(word, str):
        raise error(f"device must be a string ({DEVICE_WORDS}), got {type(word).__name__}")
    text = word.strip().lower()
    if text == "auto":
        return _auto(local_rank, error)
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise error(f"unknown device {word!r}; use {DEVICE_WORDS}") from None
    if device.type == "cpu":
        return DeviceChoice(torch.device("cpu"))
    if device.type == "cuda":
        return DeviceChoice(_cuda(word, device.index, local_rank, error))
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise error(f"device {word!r}: Apple MPS is not available (it needs a Mac with Apple silicon or an "
                        f"AMD GPU and a torch built with MPS); {_present()}")
        if device.index not in (None, 0):
            raise error(f"device {word!r}: there is one MPS device; use mps")
        return DeviceChoice(torch.device("mps"))
    raise error(f"unsupported device {word!r}; use {DEVICE_WORDS}")


def resolve_device(word: str | torch.device, *, error: type[SteadyVoiceError] = ModelError) -> torch.device:
    """:func:`choose_device` without the reason: the torch.device to put the model on."""
    return choose_device(word, error=error).device


def _auto(local_rank: int | None, error) -> DeviceChoice:
    import torch

    if torch.cuda.is_available():
        index = _rank_gpu(local_rank, error) if local_rank is not None else torch.cuda.current_device()
        return DeviceChoice(torch.device("cuda", index), f"auto: {_gpu_name(index)}")
    if torch.backends.mps.is_available():
        return DeviceChoice(torch.device("mps"), "auto: Apple MPS, no CUDA")
    return DeviceChoice(torch.device("cpu"), "auto: no CUDA or MPS")


def _cuda(word: str, index: int | None, local_rank: int | None, error) -> torch.device:
    import torch

    if not torch.cuda.is_available():
        raise error(f"device {word!r}: CUDA is not available (no NVIDIA GPU, or a CPU-only torch); {_present()}")
    if index is None:
        return torch.device("cuda", _rank_gpu(local_rank, error)) if local_rank is not None else torch.device("cuda")
    if index >= torch.cuda.device_count():
        raise error(f"device {word!r}: only {torch.cuda.device_count()} CUDA device(s) present; {_present()}")
    return torch.device("cuda", index)


def _rank_gpu(local_rank: int, error) -> int:
    """The GPU of torchrun's process ``local_rank`` (one GPU per process on each node)."""
    import torch

    count = torch.cuda.device_count()
    if not 0 <= local_rank < count:
        raise error(f"LOCAL_RANK {local_rank} has no GPU of its own: this node has {count} CUDA device(s); start "
                    f"at most {count} processes per node (torchrun --nproc_per_node={count})")
    return local_rank


def _present() -> str:
    return f"this machine has {', '.join(available_devices())}: use one of them, or auto"


def _gpu_name(index: int) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(index)
    except (RuntimeError, AssertionError):  # a GPU that vanished between the check and the query
        return "CUDA"


def _name(device: torch.device) -> str:
    """``cuda`` without an index is shown as the GPU it means (cuda:<current>)."""
    import torch

    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)
