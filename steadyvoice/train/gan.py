"""The metric discriminator of GAN training (MossFormerGAN-SE, after MetricGAN / CMGAN).

The discriminator D sees two compressed magnitude spectrograms (clean, other) and learns to predict the
normalised wide-band PESQ of ``other`` against ``clean``: 1 for (clean, clean), q = (PESQ - 1) / 3.5 for
(clean, estimate). The generator gets ``adversarial_weight * (D(clean, estimate) - 1)^2`` added to its
loss, pushing its estimates towards what D rates as perfect.

One optimizer step of the trainer with a discriminator::

    for each micro-batch:  generator loss + adversarial term (D frozen)  -> backward into G only
                           PESQ of (clean, estimate) submitted to the worker pool  (runs while G trains)
    G step (clip, optimizer)
    D step: wait for the PESQ targets; if any failed (silence, too short) on any rank, skip D's step (their
            rule) and count it; else L_D = (D(c, c) - 1)^2 + (D(c, est) - q)^2 per micro-batch -> clip -> step

What differs from their code, on purpose (reference README, "Faults"): the generator's backward does not
leak into D's gradients (D is frozen while the generator's loss is computed, and its gradients are zeroed
before its own step); the configured weight decay is used; L_D is always back-propagated; D's two pairs go
through D in one batch (DDP needs one forward per backward; BatchNorm sees both pairs together).

PESQ is deterministic and each target depends only on its own (clean, estimate) pair, so computing them in
other processes changes nothing in the results: resume stays exact. The pool is created on first use and
shut down by :meth:`MetricGAN.close`.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from steadyvoice.checkpoint.parts import ModelState, OptimizerState
from steadyvoice.distributed import DistContext, wrap_model
from steadyvoice.train.config import TrainConfig
from steadyvoice.train.optim import decay_groups
from steadyvoice.train.schedule import LRSchedule, StepCounter

log = logging.getLogger("steadyvoice")


def pesq_target(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """(PESQ-WB - 1) / 3.5 in [0, 1], or NaN when PESQ cannot score the pair (silence, too short)."""
    from pesq import pesq

    try:
        score = pesq(sample_rate, reference.astype(np.float64), estimate.astype(np.float64), "wb")
    except Exception:  # the pesq package raises its own errors (NoUtterancesError, BufferTooShortError, ...)
        return math.nan
    return (float(score) - 1.0) / 3.5


class MetricGAN:
    """The discriminator, its optimizer and LR schedule (named parts of the run), and the PESQ pool."""

    def __init__(self, cfg: TrainConfig, sample_rate: int, progress: StepCounter, dist: DistContext):
        from steadyvoice.models.mossformer_gan import MetricDiscriminator

        self.cfg = cfg.gan
        self.sample_rate = sample_rate
        self.dist = dist
        self.disc = MetricDiscriminator(cfg.gan.resolve()).to(dist.device)
        self.net = wrap_model(self.disc, dist)  # DDP when W > 1: D's gradients are averaged over ranks
        groups, self.names = decay_groups(self.disc, self.cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas), foreach=False)
        cosine = cfg.schedule.kind == "cosine"
        self.schedule = LRSchedule(self.optimizer, progress, cfg.schedule.warmup_steps,
                                   decay_steps=cfg.schedule.decay_steps if cosine else 0,
                                   min_lr_ratio=cfg.schedule.min_lr_ratio)
        self._pool: ProcessPoolExecutor | None = None

    def parts(self) -> dict[str, Any]:
        """Named parts for the checkpoint, in load order (the schedule after its optimizer)."""
        return {"discriminator": ModelState(self.disc), "optimizer_d": OptimizerState(self.optimizer, self.names),
                "schedule_d": self.schedule}

    # ------------------------------------------------------------------ generator side
    def adversarial(self, gan: dict) -> torch.Tensor:
        """(D(clean, estimate) - 1)^2 per example, with D frozen: gradients reach the generator only."""
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            score = self.disc(gan["clean_mag"], gan["est_mag"])  # (B, 1)
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        return (score[:, 0] - 1.0).square()

    def submit(self, gan: dict) -> dict:
        """Start the PESQ targets of a micro-batch; keep what D's step needs (detached)."""
        clean = gan["clean_wave"].detach().cpu().numpy()
        est = gan["est_wave"].detach().cpu().numpy()
        if self.cfg.pesq_workers:
            if self._pool is None:
                from steadyvoice.train.loop import quiet_child

                self._pool = ProcessPoolExecutor(self.cfg.pesq_workers, initializer=quiet_child)
            targets: list = [self._pool.submit(pesq_target, c, e, self.sample_rate) for c, e in zip(clean, est)]
        else:
            targets = [pesq_target(c, e, self.sample_rate) for c, e in zip(clean, est)]
        return {"clean_mag": gan["clean_mag"].detach(), "est_mag": gan["est_mag"].detach(), "targets": targets}

    # ------------------------------------------------------------------ discriminator step
    def step(self, pending: list[dict]) -> dict:
        """D's optimizer step over the micro-batches of one trainer step. Returns facts for the log."""
        targets = [[t.result() if isinstance(t, Future) else t for t in p["targets"]] for p in pending]
        mine = sum(1 for ts in targets for t in ts if math.isnan(t))
        failed = int(self.dist.all_reduce_sum(torch.tensor([float(mine)]))[0])  # over every rank
        if failed:  # every rank skips together (DDP would wait for the others)
            self.optimizer.zero_grad(set_to_none=True)
            return {"d_skipped": 1, "pesq_failures": failed, "d_loss": math.nan}
        self.optimizer.zero_grad(set_to_none=True)  # nothing of the generator's backward is kept
        total = torch.zeros((), dtype=torch.float64)
        for p, ts in zip(pending, targets):
            q = torch.tensor(ts, dtype=torch.float32, device=p["est_mag"].device)  # (B,)
            B = q.shape[0]
            ref = torch.cat((p["clean_mag"], p["clean_mag"]))  # (2B, 1, T, F): (clean, clean) then (clean, est)
            other = torch.cat((p["clean_mag"], p["est_mag"]))
            score = self.net(ref, other)[:, 0]  # (2B,)
            loss = (score[:B] - 1.0).square() + (score[B:] - q).square()  # (B,)
            (loss.mean() / len(pending)).backward()
            total += loss.detach().double().sum().cpu()
        max_norm = self.cfg.max_grad_norm or math.inf
        torch.nn.utils.clip_grad_norm_(list(self.disc.parameters()), max_norm, foreach=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        count = sum(len(ts) for ts in targets)
        return {"d_skipped": 0, "pesq_failures": 0, "d_loss": float(total) / max(count, 1)}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
