"""Separation training data: talkers of different speakers, a pure function of (seed, epoch, index)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from steadyvoice.config import from_dict
from steadyvoice.data import DataConfig, build_training_data, collate
from steadyvoice.data.mixing import power
from steadyvoice.data.speakers import speakers_of
from steadyvoice.errors import ConfigError, DataError
from steadyvoice.train.config import LossConfig
from steadyvoice.train.losses import pit_si_sdr, si_sdr

SR = 16000


def _talkers(root, speakers=("ann", "bob", "cy"), per_speaker=3, seconds=1.0):
    """speaker/<file>.wav: a tone per file (frequency by speaker and file)."""
    t = np.arange(int(SR * seconds)) / SR
    for s, who in enumerate(speakers):
        (root / who).mkdir(parents=True, exist_ok=True)
        for i in range(per_speaker):
            f0 = 150.0 + 60.0 * s + 7.0 * i
            x = 0.1 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
            sf.write(root / who / f"{who}{i}.wav", x.astype(np.float32), SR)
    return root


def _config(root, **extra):
    return from_dict(DataConfig, {"clean": [str(root)], "crop_seconds": 0.5, "valid_count": 4, "gain_db": [0.0, 0.0],
                                  "level_diff_db": [-5.0, 5.0], **extra})


def test_two_talkers_of_different_speakers_at_the_drawn_level(tmp_path):
    root = _talkers(tmp_path / "speech")
    data = build_training_data(_config(root), sample_rate=SR, seed=3, valid_batch_size=2, task="separation")
    ds = data.train
    assert len(ds) == 9
    for index in range(9):
        ex = ds[(0, index)]
        assert ex["noisy"].shape == (8000,) and ex["clean"].shape == (2, 8000)
        files = ex["clean_file"].split("|")
        who = [f.split("/")[-2] for f in files]
        assert who[0] != who[1]  # never the same speaker twice
        assert np.allclose(ex["noisy"], ex["clean"].sum(0), atol=1e-6)  # no noise, no room: the sum
        level = 10 * math.log10(power(ex["clean"][1]) / power(ex["clean"][0]))
        assert level == pytest.approx(ex["level_diff_db"], abs=0.01) and -5 <= ex["level_diff_db"] <= 5
        assert ex["snr_db"] == math.inf
    again = build_training_data(_config(root), sample_rate=SR, seed=3, valid_batch_size=2, task="separation").train
    assert np.array_equal(again[(2, 5)]["clean"], ds[(2, 5)]["clean"])  # a pure function of the key
    assert not np.array_equal(ds[(1, 5)]["clean"], ds[(2, 5)]["clean"])  # another epoch, another example
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["noisy"].shape == (3, 8000) and batch["clean"].shape == (3, 2, 8000)


def test_noise_is_added_at_the_drawn_snr(tmp_path):
    root = _talkers(tmp_path / "speech")
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "n.wav", (0.05 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32), SR)
    cfg = _config(root, noise=[str(noise)], snr_db=[10.0, 10.0])
    ex = build_training_data(cfg, sample_rate=SR, seed=1, valid_batch_size=2, task="separation").train[(0, 0)]
    residual = ex["noisy"] - ex["clean"].sum(0)
    assert 10 * math.log10(power(ex["clean"].sum(0)) / power(residual)) == pytest.approx(10.0, abs=0.01)


def test_speakers_from_a_corpus_manifest_or_directories(tmp_path):
    root = _talkers(tmp_path / "corpus" / "train" / "clean", speakers=("d1", "d2"), per_speaker=2)
    files = sorted(str(p) for p in root.rglob("*.wav"))
    assert speakers_of(files, "parent") == ["d1", "d1", "d2", "d2"]
    assert speakers_of(files, "grandparent") == ["clean"] * 4
    records = [{"path": f"train/clean/{p.split('/')[-2]}/{p.split('/')[-1]}", "speaker": f"spk-{i % 2}"}
               for i, p in enumerate(files)]
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps({"files": records}))
    assert speakers_of(files, "auto") == ["spk-0", "spk-1", "spk-0", "spk-1"]  # the manifest wins
    with pytest.raises(DataError, match="not listed in"):
        speakers_of(files + [str(tmp_path / "corpus" / "other.wav")], "manifest")


def test_one_speaker_is_not_enough(tmp_path):
    root = _talkers(tmp_path / "speech", speakers=("solo",))
    with pytest.raises(DataError, match="at least 2 different speakers; the files give 1 \\(solo\\)"):
        build_training_data(_config(root), sample_rate=SR, seed=0, valid_batch_size=2, task="separation")


def test_pit_finds_the_talker_order(tmp_path):
    torch.manual_seed(0)
    ref = torch.randn(4, 2, 2000)
    est = ref.flip(1) + 0.05 * torch.randn(4, 2, 2000)
    est[0] = ref[0] + 0.05 * torch.randn(2, 2000)
    score, order = pit_si_sdr(est, ref)
    assert order.tolist() == [[0, 1], [1, 0], [1, 0], [1, 0]]
    expected = torch.stack([si_sdr(est[b, order[b]], ref[b]).mean() for b in range(4)])
    assert torch.allclose(score, expected)


def test_a_loss_of_another_family_is_an_error_naming_the_key():
    from steadyvoice.models import get_config
    from steadyvoice.train.objectives import objective_for

    objective_for(get_config("mossformer2-se-16k-small"), LossConfig(si_snr_weight=0.5))
    with pytest.raises(ConfigError, match="loss.si_snr_weight: not a loss of mossformer2-ss"):
        objective_for(get_config("mossformer2-ss-16k-small"), LossConfig(si_snr_weight=0.5))


def test_a_gan_section_with_another_family_is_an_error_naming_the_key():
    from steadyvoice.models import get_config
    from steadyvoice.train.config import GANConfig
    from steadyvoice.train.objectives import check_gan_section

    check_gan_section(get_config("mossformer2-se-16k-small"), LossConfig(), GANConfig())  # untouched: fine
    with pytest.raises(ConfigError, match="gan.lr: the gan section is for MossFormerGAN models"):
        check_gan_section(get_config("frcrn-se-16k-small"), LossConfig(si_snr_weight=1.0), GANConfig(lr=0.1))
    with pytest.raises(ConfigError, match="gan.overrides.bogus"):
        check_gan_section(get_config("mossformergan-se-16k-small"), LossConfig(ri_weight=1.0, adversarial_weight=0.05),
                          GANConfig(overrides={"bogus": 1}))
