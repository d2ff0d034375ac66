"""The full-band architecture (fullband-se): its band split, its band matrices, its model-directory round trip,
the Enhancer at 44.1/48 kHz and at 16 kHz, and training parts that start from a model and stay frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steadyvoice import Enhancer
from steadyvoice.errors import ConfigError
from steadyvoice.models import build_model, get_config, load_pretrained, save_pretrained
from steadyvoice.models.fullband import band_edges, band_pooling, interpolation_matrix
from steadyvoice.pipelines.fullband_se import one_pass, upper_part

RATE = 48000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_config("fullband-se-48k-small")).eval()


def tone(freq: float, seconds: float = 1.0, rate: int = RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    return (0.1 * torch.sin(2 * torch.pi * freq * t))[None]  # (1, N)


def energy(x: torch.Tensor) -> float:
    return float(x[..., RATE // 10: -RATE // 10].square().sum())  # edges left out (resampler start-up)


def test_the_upper_part_holds_what_the_core_cannot_and_nothing_below():
    cfg = get_config("fullband-se-48k-small")
    assert energy(upper_part(tone(3000), cfg)) < 1e-6 * energy(tone(3000))  # the core's band: not in it (< -60 dB)
    high = tone(12000)
    assert energy(upper_part(high, cfg) - high) < 1e-6 * energy(high)  # above 8 kHz: all of it


def set_gains(model, value: float) -> None:
    with torch.no_grad():
        model.upper.out.weight.zero_()
        model.upper.out.bias.fill_(value)


def test_unit_gains_keep_the_noisy_upper_band_and_zero_gains_remove_it(model):
    cfg = model.cfg
    x = torch.randn(1, RATE) * 0.05
    with torch.no_grad():
        set_gains(model, 30.0)  # sigmoid(30) = 1 in float32
        kept = one_pass(model, x)
        set_gains(model, -30.0)
        removed = one_pass(model, x)
    torch.testing.assert_close(kept.enhanced, kept.low + upper_part(x, cfg), atol=1e-6, rtol=0)
    torch.testing.assert_close(removed.enhanced, removed.low, atol=1e-6, rtol=0)
    assert torch.equal(kept.low, removed.low)  # the core's path does not depend on the gains


def test_band_matrices_cover_every_bin_once_and_interpolate_to_one():
    cfg = get_config("fullband-se-48k")
    edges = band_edges(cfg.upper_from_hz, cfg.sample_rate / 2, cfg.upper_bands)
    pool = band_pooling(edges, cfg.sample_rate, cfg.n_freqs)  # (F, K)
    first = cfg.first_upper_bin + 1
    assert torch.equal(pool[first:].sum(1), torch.ones(cfg.n_freqs - first))  # each upper bin in one band
    assert pool[: first - 1].sum() == 0
    assert (pool.sum(0) > 0).all()  # no empty band
    spread = interpolation_matrix(edges, cfg.sample_rate, cfg.n_freqs, first)  # (K, F)
    torch.testing.assert_close(spread.sum(0), torch.ones(cfg.n_freqs))  # gains of 1 everywhere -> 1 per bin
    assert (spread >= 0).all()


def test_round_trip_through_a_model_directory(model, tmp_path):
    save_pretrained(model, model.cfg, tmp_path / "m")
    loaded, cfg = load_pretrained(tmp_path / "m")
    assert cfg == model.cfg
    x = torch.randn(1, RATE // 2) * 0.05
    with torch.no_grad():
        torch.testing.assert_close(one_pass(loaded, x).enhanced, one_pass(model, x).enhanced, atol=0, rtol=0)


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_the_enhancer_runs_a_full_band_model_at_any_rate(model, rate):
    noisy = np.random.default_rng(0).standard_normal((rate, 2)).astype(np.float32) * 0.05
    out = Enhancer(model, model.cfg)(noisy, rate)
    assert out.shape == noisy.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_a_frozen_core_stays_in_eval_mode(model):
    model.core.requires_grad_(False)
    try:
        model.train()
        assert model.upper.training and not model.core.training
        model.core.requires_grad_(True)
        model.train()
        assert model.core.training
    finally:
        model.core.requires_grad_(True)
        model.eval()


def trainer_for(tmp_path, init_parts: dict, freeze: list):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from faultinject import make_data

    from steadyvoice.distributed import DistContext
    from steadyvoice.train.config import load_train_config
    from steadyvoice.train.loop import Trainer, training_data

    clean, noise = make_data(tmp_path / "data", sample_rate=RATE)
    items = [f"data.clean=[{clean}]", f"data.noise=[{noise}]", f"model.freeze={freeze}",
             "data.crop_seconds=0.5", "data.valid_count=2"]
    items += [f"model.init_parts.{part}={source}" for part, source in init_parts.items()]
    cfg = load_train_config("fullband-tiny-cpu", items)
    return Trainer(cfg, training_data(cfg), DistContext(), run_dir=tmp_path / "run", console=False)


def test_a_part_starts_from_a_model_and_does_not_train(tmp_path):
    from steadyvoice.models import MossFormer2SE

    torch.manual_seed(1)
    cfg = get_config("fullband-se-48k-small")
    core = MossFormer2SE(cfg.core)
    save_pretrained(core, cfg.core, tmp_path / "core")
    trainer = trainer_for(tmp_path, {"core": tmp_path / "core"}, ["core"])
    for name, value in core.state_dict().items():
        assert torch.equal(trainer.model.core.state_dict()[name], value), name
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in trainer.model.upper.parameters()}  # the core's weights are not in it
    assert trainer.part_sources == {"core": str(tmp_path / "core")}


@pytest.mark.parametrize("init_parts, freeze, message", [
    ({"trunk": "default-v1"}, [], "model.init_parts.trunk: the model has no part 'trunk' (its parts: core, upper)"),
    ({}, ["core", "upper"], "model.freeze: core, upper leaves nothing to train"),
    ({"upper": "default-v1"}, [], "model.init_parts.upper: "),  # default-v1 is a whole MossFormer2-SE
])
def test_bad_parts_are_config_errors_that_name_the_key(tmp_path, init_parts, freeze, message):
    with pytest.raises(ConfigError) as info:
        trainer_for(tmp_path, init_parts, freeze)
    assert str(info.value).startswith(message)
