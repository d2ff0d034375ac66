"""The training loop: config errors, losses, determinism, exact in-memory resume, plateau rule, signals, CLI."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyvoice.checkpoint.checkpointer import RestoreInfo

from steadyvoice.audio import write_audio
from steadyvoice.data import build_training_data
from steadyvoice.errors import ConfigError, DataError, SteadyVoiceError
from steadyvoice.train.config import ScheduleConfig, TrainConfig, check_resume_config, load_train_config
from steadyvoice.train.loop import Progress, Trainer
from steadyvoice.train.losses import neg_si_snr, psm_mse, si_sdr
from steadyvoice.train.rundir import prepare_run_dir
from steadyvoice.train.schedule import EarlyStopping, LRSchedule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny-cpu.yaml"
SR = 16000


def make_corpus(root: Path, n_clean=6, n_noise=3, seconds=1.0) -> tuple[Path, Path]:
    """Harmonic 'speech' with a syllable-rate envelope and white noise."""
    rng = np.random.default_rng(0)
    (root / "clean").mkdir(parents=True)
    (root / "noise").mkdir(parents=True)
    for i in range(n_clean):
        t = np.arange(int(seconds * SR)) / SR
        f0 = rng.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
        x *= 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
        write_audio(root / "clean" / f"c{i}.wav", (0.1 * x).astype(np.float32), SR)
    for i in range(n_noise):
        write_audio(root / "noise" / f"n{i}.wav", (0.05 * rng.standard_normal(SR // 2)).astype(np.float32), SR)
    return root / "clean", root / "noise"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_config(corpus, *extra: str) -> TrainConfig:
    clean, noise = corpus
    return load_train_config(TINY, [
        f"data.clean=[{clean}]", f"data.noise=[{noise}]", "data.crop_seconds=0.5", "data.epoch_size=12",
        "data.valid_count=4", "train.batch_size=2", "train.num_workers=0", "train.log_every=1",
        "train.validate_every=0", "schedule.kind=constant", "schedule.warmup_steps=2", *extra])


def make_trainer(cfg: TrainConfig, run_dir: Path | None = None) -> Trainer:
    data = build_training_data(cfg.data, sample_rate=cfg.model.resolve().sample_rate, seed=cfg.train.seed,
                               valid_batch_size=cfg.train.valid_batch_size or cfg.train.batch_size)
    return Trainer(cfg, data, run_dir=run_dir)


def logged(run_dir: Path, event: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in logged(run_dir)}  # the last record of a step counts


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa["param_groups"] != sb["param_groups"] or sa["state"].keys() != sb["state"].keys():
        return False
    return all(same_tensors(sa["state"][i], sb["state"][i]) for i in sa["state"])


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("train.batch_size=0", r"train.batch_size=0: must be at least 1"),
    ("train.autocast=fp8", "train.autocast: 'fp8' is not one of"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("model.overrides.model_dimm=8", "unknown config key 'model.overrides.model_dimm'"),
    ("model.overrides.model_dim=-4", "model_dim must be a positive integer"),
    ("model.name=nonesuch", "model.name: unknown model config 'nonesuch'"),
    ("checkpoint.keep_last=1", "checkpoint.keep_last=1"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(SteadyVoiceError, match=match) as info:
        load_train_config(TINY, [override])
    assert str(info.value).startswith(f"--set {override}: ")  # the override is at fault, not the recipe
    assert "tiny-cpu.yaml" not in str(info.value)


def test_recipes_parse():
    official = load_train_config(ROOT / "recipes" / "mossformer2-se-48k.yaml")
    m = official.model.resolve()
    assert (m.sample_rate, m.model_dim, m.num_blocks) == (48000, 512, 24)
    assert (official.optim.lr, official.optim.weight_decay, official.optim.max_grad_norm) == (5e-4, 0.0, 10.0)
    assert (official.train.batch_size, official.train.accumulate, official.train.seed) == (4, 2, 777)
    assert (official.schedule.patience, official.schedule.stop_patience, official.data.crop_seconds) == (5, 10, 4.0)
    tiny = load_train_config(TINY).model.resolve()
    assert tiny.sample_rate == 16000 and tiny.model_dim <= 64
    stage1 = load_train_config(ROOT / "recipes" / "default-16k.yaml")
    stage2 = load_train_config(ROOT / "recipes" / "default-16k-finetune.yaml")
    assert stage1.model.resolve() == stage2.model.resolve()  # the fine-tune starts from stage 1's weights
    assert stage2.schedule.kind == "cosine"
    assert stage2.schedule.warmup_steps + stage2.schedule.decay_steps == stage2.train.max_steps


def test_resume_with_a_changed_config_names_the_keys(tmp_path, corpus):
    cfg = tiny_config(corpus)
    prepare_run_dir(tmp_path, cfg, restart=False)
    saved = (tmp_path / "config.yaml").read_text()
    assert prepare_run_dir(tmp_path, tiny_config(corpus, "train.max_steps=999", "checkpoint.save_every=7"),
                           restart=False) == ["checkpoint.save_every", "train.max_steps"]  # allowed
    with pytest.raises(ConfigError, match=r"changed: model.overrides.model_dim \(32 -> 48\), optim.lr"):
        check_resume_config(tmp_path / "config.yaml", tiny_config(corpus, "model.overrides.model_dim=48", "optim.lr=0.1"))
    prepare_run_dir(tmp_path, tiny_config(corpus, "optim.lr=0.1"), restart=True)  # --restart replaces it
    assert "lr: 0.1" in (tmp_path / "config.yaml").read_text() and saved != (tmp_path / "config.yaml").read_text()


# ------------------------------------------------------------------ losses


def test_psm_loss_matches_the_official_formula():
    g = torch.Generator().manual_seed(0)
    Y = torch.complex(torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g))  # (B, F, T)
    S = torch.complex(torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g))
    mask = torch.rand(2, 7, 5, generator=g)  # (B, T, F)
    # Written out element by element, as ClearerVoice's psm_loss (ratio "l2") computes it.
    expected = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for t in range(7):
            col = Y[b, :, t].abs()
            for f in range(5):
                y, s = Y[b, f, t], S[b, f, t]
                cos = (y.real * s.real + y.imag * s.imag) / ((y.abs() + 1e-6) * (s.abs() + 1e-6))
                target = min(max(float(s.abs() ** 2 / (y.abs() ** 2 + 1e-6) * cos), 0.0), 1.0)
                weight = float(y.abs() / (col.max() + 1e-6))
                expected[b] += 0.5 * weight * (float(mask[b, t, f]) - target) ** 2 / 7
    assert torch.allclose(psm_mse(mask, Y, S).double(), expected, rtol=1e-5)
    assert psm_mse(mask, Y, S).mean() > 0


def test_si_sdr_is_scale_invariant_and_knows_a_perfect_estimate():
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    noisy = x + 0.1 * torch.randn(3, 1000, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(si_sdr(3.0 * noisy, x), si_sdr(noisy, x), atol=1e-4)
    assert (si_sdr(x, x) > 60).all() and torch.allclose(neg_si_snr(noisy, x), -si_sdr(noisy, x))
    assert 15 < float(si_sdr(noisy, x).mean()) < 25  # 20 dB of white noise


def test_multi_resolution_stft_loss_is_zero_for_the_reference_and_grows_with_the_error():
    from steadyvoice.train.losses import multi_resolution_stft

    x = torch.randn(3, 16000, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(3, 16000, generator=torch.Generator().manual_seed(2))
    assert multi_resolution_stft(x, x).shape == (3,) and torch.all(multi_resolution_stft(x, x) == 0)
    small, large = multi_resolution_stft(x + 0.01 * noise, x), multi_resolution_stft(x + 0.3 * noise, x)
    assert (small > 0).all() and (large > small).all()
    quiet = x.clone()
    quiet[:, 8000:] = 0.0  # silence in the reference: residual noise there is what its log term sees
    tail = torch.zeros_like(x)
    tail[:, 8000:] = 1e-3 * noise[:, 8000:]
    assert (multi_resolution_stft(quiet + tail, quiet) > 0.5).all()  # -60 dB of noise in a pause is not free


# ------------------------------------------------------------------ schedule


def test_plateau_halves_every_group_and_keeps_counters():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.Adam([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 4e-3}])
    progress = Progress()
    sched = LRSchedule(opt, progress, warmup_steps=4)
    assert sched.lrs() == pytest.approx([2.5e-4, 1e-3])  # first warmup step
    for _ in range(4):
        progress.step += 1
        sched.apply()
    assert sched.lrs() == pytest.approx([1e-3, 4e-3])
    early = EarlyStopping(ScheduleConfig(kind="plateau", patience=2, stop_patience=5, factor=0.5))
    decisions = []
    for step, value in enumerate([1.0, 0.9, 0.95, 0.93, 0.92, 0.99, 0.98], start=1):
        d = early.update(value, step)
        decisions.append(d)
        if d.plateau:
            sched.decay(0.5)
    assert [d.improved for d in decisions[:2]] == [True, True]
    assert [d.plateau for d in decisions] == [False, False, False, True, False, True, False]
    assert decisions[-1].stop and early.stopped and "stop_patience" in early.reason
    assert early.bad == 5 and early.best == 0.9 and early.best_step == 2 and early.plateaus == 2
    assert sched.lrs() == pytest.approx([2.5e-4, 1e-3])  # both groups halved twice, not only the first
    # JSON state round trip
    again = EarlyStopping(early.cfg)
    again.load_state_dict(json.loads(json.dumps(early.state_dict())))
    assert again.state_dict() == early.state_dict()
    sched2 = LRSchedule(opt, progress, warmup_steps=4)
    sched2.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert sched.state_dict() == {"scale": 0.25}  # the step lives in the progress counter only
    assert sched2.lrs() == pytest.approx([2.5e-4, 1e-3])


def test_cosine_decays_every_group_after_the_warmup_and_resumes_from_its_step():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 2e-3}])
    progress = Progress()
    sched = LRSchedule(opt, progress, warmup_steps=2, decay_steps=4, min_lr_ratio=0.1)
    seen = [sched.lrs()[0]]
    for _ in range(8):
        progress.step += 1
        sched.apply()
        seen.append(sched.lrs()[0])
    # warmup 5e-4, 1e-3; then 1e-3 * (0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2) for k = 0..4; then the floor
    expected = [5e-4, 1e-3] + [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * k / 4))) for k in range(5)] + [1e-4] * 2
    assert seen == pytest.approx(expected)
    assert sched.lrs()[1] == pytest.approx(2e-4)  # the second group follows at its own lr
    again = LRSchedule(opt, Progress(step=4), warmup_steps=2, decay_steps=4, min_lr_ratio=0.1)
    for group in opt.param_groups:
        group["lr"] = 123.0  # whatever the optimizer holds, loading the state writes the scheduled LR
    again.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert again.lrs() == pytest.approx([expected[4], 2 * expected[4]])
    # cosine only tracks the best validation: no reload, no stop
    early = EarlyStopping(ScheduleConfig(kind="cosine", decay_steps=4, patience=1, stop_patience=1))
    assert early.update(1.0, 1).improved
    d = early.update(0.5, 2) if early.higher_is_better else early.update(2.0, 2)
    assert not (d.improved or d.plateau or d.stop)


def test_cosine_needs_decay_steps():
    with pytest.raises(ValueError, match="decay_steps"):
        ScheduleConfig(kind="cosine")


def test_max_halvings_stops_instead_of_halving_again():
    early = EarlyStopping(ScheduleConfig(kind="plateau", patience=1, stop_patience=10, max_halvings=1))
    assert early.update(1.0, 1).improved
    assert early.update(2.0, 2).plateau
    d = early.update(2.0, 3)
    assert d.stop and "max_halvings" in d.reason


# ------------------------------------------------------------------ training


def test_loss_decreases_on_a_tiny_overfit_run(tmp_path, corpus):
    cfg = tiny_config(corpus, "data.epoch_size=2", "data.snr_db=[5.0, 5.0]", "train.max_steps=30",
                      "optim.lr=0.003", "train.validate_every=1000")  # 2 examples seen again and again
    trainer = make_trainer(cfg, tmp_path)
    assert trainer.fit() == "max_steps"
    losses = [r["loss"] for r in logged(tmp_path)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    valid = logged(tmp_path, "valid")
    assert valid and np.isfinite(valid[-1]["valid_si_sdr"]) and valid[-1]["by_snr"]["5..10"]["count"] >= 1


def test_two_identical_runs_are_bit_identical_whatever_the_workers(tmp_path, corpus):
    cfg = tiny_config(corpus, "train.max_steps=5", "train.accumulate=2")
    a = make_trainer(cfg, tmp_path / "a")
    a.fit()
    b = make_trainer(tiny_config(corpus, "train.max_steps=5", "train.accumulate=2", "train.num_workers=2"), tmp_path / "b")
    b.fit()
    assert losses_by_step(tmp_path / "a") == losses_by_step(tmp_path / "b")
    assert len(losses_by_step(tmp_path / "a")) == 5
    assert same_tensors(a.model.state_dict(), b.model.state_dict())
    assert same_optimizer_state(a.optimizer, b.optimizer)
    c = make_trainer(tiny_config(corpus, "train.max_steps=5", "train.accumulate=2", "train.seed=778"), tmp_path / "c")
    c.fit()
    assert losses_by_step(tmp_path / "c") != losses_by_step(tmp_path / "a")  # the seed matters


def test_state_dict_round_trip_mid_epoch_continues_like_a_straight_run(tmp_path, corpus):
    # 12 examples, 2 x 2 accumulation = 4 per step: 3 steps per epoch. Stop after step 4 (inside epoch 1).
    common = ("train.accumulate=2", "train.validate_every=2", "schedule.kind=plateau", "schedule.patience=1",
              "schedule.min_delta=1000")  # every validation after the first is a plateau: reload + halve
    straight = make_trainer(tiny_config(corpus, "train.max_steps=7", *common), tmp_path / "straight")
    straight.fit()
    first = make_trainer(tiny_config(corpus, "train.max_steps=4", *common), tmp_path / "first")
    first.fit()
    assert (first.epoch, first.position.consumed) == (1, 4)
    state = copy.deepcopy(first.state_dict())
    second = make_trainer(tiny_config(corpus, "train.max_steps=7", *common, "train.seed=777"), tmp_path / "second")
    second.load_state_dict(state)
    second._memory_best = first._memory_best  # no Checkpointer: the best weights live in memory
    second.fit()
    resumed = {**losses_by_step(tmp_path / "first"), **losses_by_step(tmp_path / "second")}
    assert resumed == losses_by_step(tmp_path / "straight")
    assert same_tensors(straight.model.state_dict(), second.model.state_dict())
    assert same_optimizer_state(straight.optimizer, second.optimizer)
    assert straight.state_dict()["schedule"] == second.state_dict()["schedule"]
    assert straight.state_dict()["early_stopping"] == second.state_dict()["early_stopping"]
    assert straight.early.plateaus >= 2  # the comparison crossed LR halvings with best-weight reloads


def test_cosine_run_resumed_mid_decay_follows_the_same_lr_curve(tmp_path, corpus):
    common = ("schedule.kind=cosine", "schedule.warmup_steps=1", "schedule.decay_steps=5",
              "schedule.min_lr_ratio=0.1", "optim.name=adamw")
    straight = make_trainer(tiny_config(corpus, "train.max_steps=6", *common), tmp_path / "straight")
    straight.fit()
    first = make_trainer(tiny_config(corpus, "train.max_steps=3", *common), tmp_path / "first")
    first.fit()
    state = copy.deepcopy(first.state_dict())  # before another Trainer re-seeds the global RNGs
    second = make_trainer(tiny_config(corpus, "train.max_steps=6", *common), tmp_path / "second")
    second.load_state_dict(state)
    second.fit()
    resumed = {**losses_by_step(tmp_path / "first"), **losses_by_step(tmp_path / "second")}
    assert resumed == losses_by_step(tmp_path / "straight")
    assert same_tensors(straight.model.state_dict(), second.model.state_dict())
    lr = straight.config.optim.lr
    assert straight.schedule.lrs()[0] == pytest.approx(lr * 0.1)  # at the floor after warmup + decay
    assert second.schedule.lrs() == straight.schedule.lrs()


def test_plateau_reloads_best_weights_and_halves_every_group(tmp_path, corpus):
    cfg = tiny_config(corpus, "train.max_steps=50", "train.validate_every=1", "schedule.kind=plateau",
                      "schedule.patience=2", "schedule.stop_patience=4", "schedule.min_delta=1000",
                      "schedule.warmup_steps=0", "optim.weight_decay=0.01", "optim.name=adamw")
    trainer = make_trainer(cfg, tmp_path)
    reloads = []
    original = trainer._memory_best.load_best_weights

    def spy(parts):
        original(parts)
        reloads.append((trainer.step, {k: v.clone() for k, v in trainer.model.state_dict().items()}))

    trainer._memory_best.load_best_weights = spy
    assert trainer.fit() == "early_stop"
    valid = logged(tmp_path, "valid")
    assert [v["plateau"] for v in valid] == [False, False, True, False, False]
    assert valid[0]["improved"] and [v["bad_validations"] for v in valid] == [0, 1, 2, 3, 4]
    lr0 = cfg.optim.lr
    assert valid[1]["lr"] == [lr0, lr0] and valid[2]["lr"] == [lr0 / 2, lr0 / 2]  # every group
    assert trainer.step == 5 and [r["step"] for r in logged(tmp_path)] == [1, 2, 3, 4, 5]  # counters not rolled back
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01 and trainer.optimizer.param_groups[1]["weight_decay"] == 0
    step, weights = reloads[0]
    assert step == 3 and same_tensors(weights, trainer._memory_best.states["model"])  # the weights of step 1, the best


class RecordingCheckpointer:
    """Keeps saved states in memory and records every call the loop makes (the real one writes files)."""

    def __init__(self, signal_at_step: int | None = None):
        self.calls: list[tuple] = []
        self.saved: list[dict] = []
        self.signal_at_step = signal_at_step
        self.restored = None

    def restore(self, parts) -> bool:
        self.calls.append(("restore", parts["progress"].step))
        if self.saved:
            for name, part in parts.items():
                part.load_state_dict(copy.deepcopy(self.saved[-1][name]))
            step, epoch = parts["progress"].step, parts["data"].position.epoch
            self.restored = RestoreInfo(path=Path("memory"), step=step, epoch=epoch, digest="")
            return True
        return False

    def save(self, parts, *, step, epoch, metrics, is_best, reason):
        self.calls.append(("save", step, reason, is_best, sorted(metrics)))
        self.saved.append(copy.deepcopy({name: part.state_dict() for name, part in parts.items()}))
        if step == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while the loop runs; it finishes the next step

    def load_best_weights(self, parts) -> None:
        self.calls.append(("load_best_weights", parts["progress"].step))

    def close(self) -> None:
        self.calls.append(("close",))


def test_checkpointer_calls_and_stop_signal(tmp_path, corpus):
    cfg = tiny_config(corpus, "train.max_steps=9", "train.validate_every=4", "checkpoint.save_every=3",
                      "schedule.min_delta=1000")  # only the first validation counts as an improvement
    ckpt = RecordingCheckpointer(signal_at_step=3)
    previous = signal.getsignal(signal.SIGUSR1)
    trainer = make_trainer(cfg, tmp_path)
    assert trainer.fit(ckpt) == "signal"
    assert trainer.stop_signal == "SIGUSR1" and signal.getsignal(signal.SIGUSR1) == previous  # handler restored
    assert ckpt.calls == [
        ("restore", 0),
        ("save", 3, "periodic", False, ["train_loss"]),
        ("save", 4, "signal", True, ["train_loss", "valid_loss", "valid_si_sdr"]),  # step 4 validated, then saved
        ("close",),
    ]
    # Rerunning resumes from the saved state and finishes the run.
    ckpt.calls.clear()
    again = make_trainer(cfg, tmp_path)
    assert again.fit(ckpt) == "max_steps"
    assert ckpt.calls == [
        ("restore", 0),
        ("save", 6, "periodic", False, ["train_loss"]),
        ("save", 8, "validation", False, ["train_loss", "valid_loss", "valid_si_sdr"]),
        ("save", 9, "end", False, ["train_loss", "valid_loss", "valid_si_sdr"]),
        ("close",),
    ]
    assert again.step == 9 and [r["resumed"] for r in logged(tmp_path, "start")] == [False, True]
    assert make_trainer(cfg, tmp_path).fit(ckpt) == "finished"  # nothing left to do


def test_unusable_data_in_a_worker_stops_with_a_clear_error(tmp_path, corpus):
    clean, noise = make_corpus(tmp_path / "own")  # this test breaks its files
    trainer = make_trainer(tiny_config((clean, noise), "train.max_steps=4", "train.num_workers=1", "data.max_retries=1"))
    for f in trainer.data.train.clean:
        Path(f.path).write_bytes(b"RIFF broken after the start-up scan")
    with pytest.raises(DataError) as info:
        trainer.fit()
    assert str(info.value).startswith("example (0, ") and "no usable audio after 2 attempts" in str(info.value)
    assert "Traceback" not in str(info.value) and trainer._batches is None  # workers shut down


def test_bf16_autocast_and_si_snr_loss_train_on_cpu(tmp_path, corpus):
    trainer = make_trainer(tiny_config(corpus, "train.max_steps=3", "train.autocast=bf16", "loss.si_snr_weight=0.1"),
                           tmp_path)
    assert trainer.fit() == "max_steps"
    assert all(np.isfinite(r["loss"]) for r in logged(tmp_path)) and len(logged(tmp_path)) == 3
    with pytest.raises(ConfigError, match="train.autocast: fp16 needs a CUDA device"):
        make_trainer(tiny_config(corpus, "train.autocast=fp16"))


def test_the_multi_resolution_stft_term_trains_and_belongs_to_mossformer2_se(tmp_path, corpus):
    trainer = make_trainer(tiny_config(corpus, "train.max_steps=2", "loss.mrstft_weight=0.3"), tmp_path)
    assert trainer.fit() == "max_steps" and all(np.isfinite(r["loss"]) for r in logged(tmp_path))
    from steadyvoice.train.objectives import objective_for
    from steadyvoice.train.config import LossConfig
    from steadyvoice.models import get_config

    with pytest.raises(ConfigError, match="loss.mrstft_weight: not a loss of frcrn-se models"):
        objective_for(get_config("frcrn-se-16k-small"), LossConfig(psm_weight=1.0, mrstft_weight=0.3))


# ------------------------------------------------------------------ command line


def run_cli(*args: str) -> int:
    from steadyvoice.cli import main

    return main(["train", *args])


def test_cli_trains_resumes_and_refuses_bad_input(tmp_path, corpus, capsys):
    clean, noise = corpus
    common = ["--config", str(TINY), "--clean", str(clean), "--noise", str(noise), "--save-every", "2",
              "--set", "train.num_workers=0", "--set", "data.crop_seconds=0.5", "--set", "train.log_every=1",
              "--set", "data.valid_count=4", "--set", "train.validate_every=3", "--device", "cpu"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(*common, "--run-dir", str(straight), "--max-steps", "6") == 0
    assert run_cli(*common, "--run-dir", str(split), "--max-steps", "4") == 0
    capsys.readouterr()
    assert run_cli(*common, "--run-dir", str(split), "--max-steps", "6") == 0  # resumes at step 4
    assert f"resumed from {split / 'checkpoints' / 'step-00000004'} (step 4" in capsys.readouterr().err
    assert losses_by_step(split) == losses_by_step(straight) and len(losses_by_step(straight)) == 6
    assert [r["step"] for r in logged(split, "start")] == [0, 4]
    assert (straight / "config.yaml").is_file() and list((straight / "tensorboard").glob("events.out.tfevents.*"))
    record = logged(straight)[-1]
    assert {"loss", "lr", "grad_norm", "step_time", "samples_per_s", "skipped_files", "epoch"} <= set(record)
    assert len(record["lr"]) == 2
    capsys.readouterr()

    tuned = tmp_path / "tuned"
    assert run_cli(*common, "--run-dir", str(tuned), "--max-steps", "1", "--init-from", str(straight)) == 0
    start = logged(tuned, "start")[0]
    assert start["init_from"].endswith("step-00000006") and not start["resumed"]
    assert logged(tuned)[0]["loss"] != logged(straight)[0]["loss"]  # same first batch, other (trained) weights

    assert run_cli(*common, "--run-dir", str(split), "--set", "optim.lr=0.5") == 2
    assert "changed: optim.lr (0.001 -> 0.5)" in capsys.readouterr().err
    assert run_cli(*common, "--run-dir", str(tmp_path / "long"), "--set", "data.crop_seconds=3") == 2
    assert "crop 3 s is longer than every clean file" in capsys.readouterr().err
    assert run_cli(*common, "--run-dir", str(tmp_path / "typo"), "--set", "train.batchsize=3") == 2
    assert "unknown config key 'train.batchsize'" in capsys.readouterr().err
