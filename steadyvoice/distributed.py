"""Everything distributed lives here: torchrun environment, process group, DDP wrapping, collectives.

SteadyVoice uses ``torchrun`` as its launcher and elastic restarter (no home-made launcher): a plain
``steadyvoice train`` is a world of one; ``torchrun --nproc_per_node=N -m steadyvoice train ...`` sets
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR and this module joins the process group (gloo on CPU, NCCL on
GPU). Other modules only see a :class:`DistContext`.

Process lifetime: torch elastic starts each worker in a session of its own, so killing torchrun's process
group (even with SIGKILL) leaves the workers running, training and committing checkpoints beside a rerun.
:func:`init_distributed` therefore starts :func:`watch_agent` in every torchrun worker: when the agent that
started it is gone, the worker gets SIGTERM (finish the step, save, exit) and, if it is still alive a few
seconds later, SIGKILL. DataLoader workers call :func:`die_with_parent` so that they never outlive the
trainer that forked them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from steadyvoice.errors import ConfigError, SteadyVoiceError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    device_reason: str = ""  # why ``auto`` picked ``device`` (steadyvoice.devices.DeviceChoice.reason)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # ---- collectives (no-ops in a world of one) ----
    def barrier(self) -> None:
        if self.is_distributed:
            tdist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (small picklable objects only: messages, digests)."""
        if not self.is_distributed:
            return obj
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a float64 tensor (returns a new tensor)."""
        values = values.detach().to(torch.float64).clone()
        if self.is_distributed:
            reduce_dev = self.device if self.device.type == "cuda" else torch.device("cpu")
            values = values.to(reduce_dev)
            tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
            values = values.cpu()
        return values

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result to every rank.

        A SteadyVoiceError raised by ``fn`` is raised on every rank, so no rank waits forever for a rank
        that failed (a user error found on rank 0, e.g. an unreadable file, stops the whole job cleanly).
        """
        if not self.is_distributed:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except SteadyVoiceError as exc:
                error = exc
        result, error = self.broadcast_object((result, error))
        if error is not None:
            raise error
        return result

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (used to stop all ranks together)."""
        if not self.is_distributed:
            return flag
        t = self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0]))
        return bool(t.item() > 0)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment, or return a world of one.

    ``device``: a word of :mod:`steadyvoice.devices` (auto, cpu, cuda, cuda:N, mps). Under torchrun, ``cuda``
    and ``auto`` mean this process's GPU, ``cuda:LOCAL_RANK``; naming one GPU (cuda:N) or MPS for several
    processes is refused (every process would share it; NCCL is CUDA-only and gloo cannot reduce MPS tensors).
    """
    from steadyvoice.devices import choose_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    choice = choose_device(device, local_rank=local_rank, error=ConfigError)
    dev = choice.device
    if world_size > 1 and dev.type == "cuda" and dev.index != local_rank:
        raise ConfigError(f"train.device {device!r} names one GPU for {world_size} processes; use cuda or auto "
                          "(each torchrun process takes the GPU of its LOCAL_RANK)")
    if world_size > 1 and dev.type == "mps":
        raise ConfigError(f"train.device {device!r}: several processes cannot share Apple MPS (no process-group "
                          "backend reduces MPS tensors); train on one process, or use cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: never outlive its agent
        watch_agent()
    if world_size > 1 and not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                       device_reason=choice.reason)


def shutdown_distributed() -> None:
    """Leave the process group together: a rank that tears gloo down while another still talks to it can
    abort at exit ("terminate called without an active exception"), so all ranks meet at a barrier first."""
    if tdist.is_available() and tdist.is_initialized():
        try:
            tdist.barrier()
        except RuntimeError:  # another rank already failed; its error is the one to report
            pass
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP-wrap ``model`` when the world is larger than one (the model must already be on ctx.device)."""
    if not ctx.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / torch.compile wrappers: the one place wrapper prefixes are removed."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


# ------------------------------------------------------------------------------------------ process lifetime
AGENT_GRACE_SECONDS = 5.0  # after SIGTERM, how long a worker whose agent died may take to save and exit
_watching = False


def watch_agent(interval: float = 0.5, grace: float = AGENT_GRACE_SECONDS) -> None:
    """Stop this process when its parent (the torchrun agent) dies: SIGTERM, then SIGKILL after ``grace`` s.

    A daemon thread polls ``os.getppid()`` (the parent-death signal of prctl would follow the agent's
    *thread*, not its process, and exists on Linux only). SIGTERM lets the trainer finish its step and save,
    like any preemption; SIGKILL follows if that cannot complete (a peer rank already gone).
    """
    global _watching
    if _watching:
        return
    _watching = True
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(interval)
        print(f"steadyvoice: the torchrun agent (pid {agent}) is gone; stopping worker {os.getpid()}",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="steadyvoice-agent-watchdog", daemon=True).start()


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that forked it exits (Linux; no-op elsewhere).

    For DataLoader workers: they ignore stop signals (the trainer saves first), so a trainer killed with
    SIGKILL would otherwise leave them waiting on its queues until DataLoader's own 5-second watchdog.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: DataLoader's watchdog still ends the worker
        return
