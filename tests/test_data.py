"""Training data: determinism, sharding, resume positions, mixing facts, reverberation, bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from torch.utils.data import DataLoader

from steadyvoice.audio import write_audio
from steadyvoice.config import from_dict
from steadyvoice.data import (
    DataConfig,
    ShardedBatchSampler,
    build_training_data,
    collate,
    epoch_permutation,
    usable_examples,
)
from steadyvoice.data.mixing import RoomConfig, example_rng, loop_to_length, reverberate, simulate_rir, split_rir
from steadyvoice.errors import ConfigError, DataError

SR = 16000


def speech_like(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope: enough structure to stand in for speech."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 250)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    return (0.1 * x * env).astype(np.float32)


def make_corpus(root: Path, n_clean=6, n_noise=3, clean_seconds=1.5, noise_seconds=0.7, sr=SR) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "clean" / "sub").mkdir(parents=True)
    (root / "noise").mkdir(parents=True)
    for i in range(n_clean):
        sub = "sub/" if i % 2 else ""  # directories are searched recursively
        write_audio(root / "clean" / f"{sub}c{i}.wav", speech_like(rng, clean_seconds, sr), sr)
    for i in range(n_noise):
        write_audio(root / "noise" / f"n{i}.wav", (0.05 * rng.standard_normal(int(noise_seconds * sr))).astype(np.float32), sr)
    return root / "clean", root / "noise"


def data_config(clean, noise, **kw) -> DataConfig:
    base = {"clean": [str(clean)], "noise": [str(noise)], "crop_seconds": 1.0, "valid_count": 5}
    base.update(kw)
    return from_dict(DataConfig, base)


@pytest.fixture()
def corpus(tmp_path):
    return make_corpus(tmp_path)


# ------------------------------------------------------------------ determinism


def test_example_is_a_pure_function_of_seed_epoch_index(corpus):
    cfg = data_config(*corpus)
    a = build_training_data(cfg, sample_rate=SR, seed=7, valid_batch_size=2).train
    b = build_training_data(cfg, sample_rate=SR, seed=7, valid_batch_size=2).train
    for key in [(0, 0), (0, 3), (2, 3), (5, 1)]:
        ea, eb = a[key], b[key]
        assert np.array_equal(ea["noisy"], eb["noisy"]) and np.array_equal(ea["clean"], eb["clean"])
        assert {k: ea[k] for k in ("snr_db", "gain_db", "noise_file", "clean_offset", "noise_offset")} == \
               {k: eb[k] for k in ("snr_db", "gain_db", "noise_file", "clean_offset", "noise_offset")}
    assert not np.array_equal(a[(0, 3)]["noisy"], a[(1, 3)]["noisy"])  # another epoch, another mix
    c = build_training_data(cfg, sample_rate=SR, seed=8, valid_batch_size=2).train
    assert not np.array_equal(a[(0, 3)]["noisy"], c[(0, 3)]["noisy"])  # another seed, another mix


def test_same_batches_with_any_number_of_workers(corpus):
    ds = build_training_data(data_config(*corpus), sample_rate=SR, seed=3, valid_batch_size=2).train

    def batches(workers):
        sampler = ShardedBatchSampler(len(ds), batch_size=2, rank=0, world_size=1, seed=3, epoch=1, start=0, stop=6)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(0))
        return list(loader)

    zero, two = batches(0), batches(2)  # workers are other processes
    assert len(zero) == 3
    for x, y in zip(zero, two):
        assert torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["clean"], y["clean"])
        assert torch.equal(x["snr_db"], y["snr_db"]) and x["noise_file"] == y["noise_file"]


def test_same_example_in_a_fresh_process(corpus):
    cfg = data_config(*corpus)
    ds = build_training_data(cfg, sample_rate=SR, seed=11, valid_batch_size=2).train
    here = ds[(4, 2)]["noisy"]
    code = (
        "import sys, numpy as np; from steadyvoice.config import from_dict; from steadyvoice.data import DataConfig, "
        "build_training_data\n"
        f"cfg = from_dict(DataConfig, {{'clean': [{str(corpus[0])!r}], 'noise': [{str(corpus[1])!r}], "
        "'crop_seconds': 1.0, 'valid_count': 5})\n"
        f"x = build_training_data(cfg, sample_rate={SR}, seed=11, valid_batch_size=2).train[(4, 2)]['noisy']\n"
        "sys.stdout.buffer.write(x.tobytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(out, dtype=np.float32), here)


# ------------------------------------------------------------------ sampler and data position


def rank_keys(n, batch, world, seed, epoch, start, stop):
    """Every rank's micro-batches, in step order: [[rank0 batch, rank1 batch, ...], ...]."""
    per_rank = [list(ShardedBatchSampler(n, batch_size=batch, rank=r, world_size=world, seed=seed, epoch=epoch,
                                         start=start, stop=stop)) for r in range(world)]
    return [list(step) for step in zip(*per_rank)]


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    n, batch, world = 30, 2, 3
    stop = usable_examples(n, 0, batch * world)
    steps = rank_keys(n, batch, world, seed=5, epoch=2, start=0, stop=stop)
    seen = [i for step in steps for b in step for (_, i) in b]
    assert len(seen) == len(set(seen)) == n  # disjoint and complete (30 is a multiple of the global batch 6)
    # Each global batch is batch*world consecutive entries of the epoch's permutation, split by rank.
    order = epoch_permutation(n, 5, 2)
    assert seen == [int(i) for i in order]
    assert all(e == 2 for step in steps for b in step for (e, _) in b)


def test_incomplete_last_global_step_is_dropped():
    assert usable_examples(10, 0, 4) == 8
    assert usable_examples(10, 4, 4) == 8
    assert usable_examples(10, 8, 4) == 8  # nothing left: the epoch is over
    assert usable_examples(10, 6, 3) == 9  # resumed with another global batch: counted from the position


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_with_another_world_size_covers_the_epoch_exactly(before, after):
    n, batch, seed, epoch = 24, 2, 9, 4
    steps_before = 8 // (batch * before)  # stop after 8 examples of the epoch
    first = rank_keys(n, batch, before, seed, epoch, 0, usable_examples(n, 0, batch * before))[:steps_before]
    consumed = steps_before * batch * before
    rest = rank_keys(n, batch, after, seed, epoch, consumed, usable_examples(n, consumed, batch * after))
    seen = Counter(i for part in (first, rest) for step in part for b in step for (_, i) in b)
    assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}  # none skipped, none repeated
    # The resumed part continues the same permutation from the saved position.
    order = [int(i) for i in epoch_permutation(n, seed, epoch)]
    assert [i for step in rest for b in step for (_, i) in b] == order[consumed:]


def test_resume_drops_only_the_incomplete_last_global_batch():
    n, batch = 24, 2
    consumed = 6  # e.g. 3 steps of one process; two processes then need 4 examples per step
    rest = rank_keys(n, batch, 2, 1, 0, consumed, usable_examples(n, consumed, batch * 2))
    seen = [i for step in rest for b in step for (_, i) in b]
    assert len(seen) == 16 and len(set(seen)) == 16  # 18 left: 4 full steps, the last 2 examples dropped
    assert seen == [int(i) for i in epoch_permutation(n, 1, 0)][6:22]


def test_sampler_refuses_a_position_that_is_not_whole_steps():
    with pytest.raises(ValueError, match="multiple of the global batch"):
        ShardedBatchSampler(10, batch_size=2, rank=0, world_size=2, seed=0, epoch=0, start=0, stop=6)


# ------------------------------------------------------------------ mixing facts


def test_mix_snr_equals_the_drawn_snr(corpus):
    cfg = data_config(*corpus, snr_db=[-5.0, 20.0], gain_db=[-6.0, 12.0], max_peak=0.5)
    ds = build_training_data(cfg, sample_rate=SR, seed=1, valid_batch_size=2).train
    clipped = 0
    for i in range(len(ds)):
        ex = ds[(0, i)]
        noise = ex["noisy"].astype(np.float64) - ex["clean"]
        measured = 10 * np.log10(np.mean(ex["clean"].astype(np.float64) ** 2) / np.mean(noise**2))
        assert measured == pytest.approx(ex["snr_db"], abs=0.02)
        assert -5.0 <= ex["snr_db"] <= 20.0 and -6.0 <= ex["gain_db"] <= 12.0
        assert max(np.abs(ex["noisy"]).max(), np.abs(ex["clean"]).max()) <= 0.5 + 1e-6  # clipping protection
        clipped += ex["clip_scale"] < 1.0
        assert ex["clean_file"].endswith(".wav") and ex["noise_file"].endswith(".wav") and not ex["reverb"]
    assert clipped > 0  # the protection was exercised


def test_noise_shorter_than_the_crop_is_looped(corpus):
    ds = build_training_data(data_config(*corpus), sample_rate=SR, seed=2, valid_batch_size=2).train
    ex = ds[(0, 0)]  # noise files are 0.7 s, the crop is 1 s
    assert ex["noisy"].shape == (SR,) and ex["noise_offset"] < int(0.7 * SR)
    x = np.arange(5, dtype=np.float32)
    y, offset = loop_to_length(x, 12, np.random.default_rng(0))
    assert np.array_equal(y, np.tile(x, 4)[offset:offset + 12])


def test_batch_carries_mixing_facts(corpus):
    ds = build_training_data(data_config(*corpus), sample_rate=SR, seed=2, valid_batch_size=2).train
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["noisy"].shape == (3, SR) and batch["clean"].dtype == torch.float32
    assert batch["snr_db"].shape == (3,) and batch["index"].tolist() == [0, 1, 2]
    assert len(batch["clean_file"]) == 3 and batch["skipped"] == []


# ------------------------------------------------------------------ reverberation


def test_reverberant_target_keeps_direct_path_and_early_reflections():
    room = RoomConfig(rt60=(0.5, 0.5), room_min=(5.0, 5.0, 3.0), room_max=(5.0, 5.0, 3.0), max_order=20)
    rir, facts = simulate_rir(example_rng(0, 0, 0), SR, room)
    rir2, _ = simulate_rir(example_rng(0, 0, 0), SR, room)
    assert np.array_equal(rir, rir2) and facts["rt60"] == 0.5
    full, early = split_rir(rir, SR, early_ms=50.0)
    assert full[0] == 1.0 and np.argmax(np.abs(full)) == 0  # starts at the direct peak
    assert len(early) == int(0.05 * SR) + 1 and np.array_equal(early, full[: len(early)])
    late_energy = float(np.sum(full[len(early):] ** 2))
    assert late_energy > 0.01 * float(np.sum(full**2))  # the tail that the target drops is substantial

    clean = speech_like(np.random.default_rng(1), 0.5)
    reverberant, target = reverberate(clean, full, early)
    assert np.allclose(target, fftconvolve(clean, early)[: len(clean)], atol=1e-5)
    late = fftconvolve(clean, np.concatenate([np.zeros(len(early)), full[len(early):]]))[: len(clean)]
    assert np.allclose(reverberant - target, late, atol=1e-4)  # the mixture has the late tail, the target not
    assert np.sum(late**2) > 1e-3 * np.sum(target**2)


def test_reverberant_examples_carry_their_room(corpus):
    cfg = data_config(*corpus, reverb_prob=1.0, reverb_rt60=[0.3, 0.4], reverb_max_order=10)
    ds = build_training_data(cfg, sample_rate=SR, seed=4, valid_batch_size=2).train
    ex = ds[(0, 1)]
    assert ex["reverb"] and 0.3 <= ex["rt60"] <= 0.4
    assert np.array_equal(ex["noisy"], ds[(0, 1)]["noisy"])


# ------------------------------------------------------------------ pair lists and resampling


def test_clearervoice_pair_list(tmp_path):
    rng = np.random.default_rng(3)
    lines = []
    for i in range(3):
        clean = speech_like(rng, 1.2)
        noisy = clean + (0.02 * rng.standard_normal(len(clean))).astype(np.float32)
        write_audio(tmp_path / f"noisy{i}.wav", noisy, SR)
        write_audio(tmp_path / f"clean{i}.wav", clean, SR)
        lines.append(f"noisy{i}.wav clean{i}.wav 1.2")
    (tmp_path / "train.scp").write_text("# noisy clean duration\n" + "\n".join(lines) + "\n")
    cfg = from_dict(DataConfig, {"pairs": [str(tmp_path / "train.scp")], "crop_seconds": 1.0, "valid_count": 0})
    data = build_training_data(cfg, sample_rate=SR, seed=0, valid_batch_size=2)
    ex = data.train[(0, 1)]
    assert ex["clean_file"].endswith("clean1.wav") and ex["noise_file"].endswith("noisy1.wav")
    assert ex["noisy"].shape == ex["clean"].shape == (SR,)
    noise = ex["noisy"].astype(np.float64) - ex["clean"]
    assert 10 * np.log10(np.mean(ex["clean"].astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(ex["snr_db"], abs=0.01)
    assert data.valid.count == 3  # valid_count 0 = every pair


def test_other_sample_rates_are_resampled_or_refused(tmp_path):
    clean, noise = make_corpus(tmp_path, n_clean=2, sr=8000)
    data = build_training_data(data_config(clean, noise), sample_rate=SR, seed=0, valid_batch_size=2)
    assert data.train[(0, 0)]["noisy"].shape == (SR,)
    with pytest.raises(DataError, match=r"(?s)not at the model rate 16000 Hz .*c0\.wav \(8000 Hz\)"):
        build_training_data(data_config(clean, noise, resample="error"), sample_rate=SR, seed=0, valid_batch_size=2)


# ------------------------------------------------------------------ bad input: errors before training


def test_missing_and_empty_sources(tmp_path, corpus):
    clean, noise = corpus
    with pytest.raises(DataError, match="no clean data given"):
        build_training_data(from_dict(DataConfig, {"noise": [str(noise)]}), sample_rate=SR, seed=0, valid_batch_size=2)
    with pytest.raises(DataError, match="no such noise file or directory"):
        build_training_data(data_config(clean, tmp_path / "nowhere"), sample_rate=SR, seed=0, valid_batch_size=2)
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    with pytest.raises(DataError, match="empty.txt: the clean list file is empty"):
        build_training_data(data_config(tmp_path / "empty.txt", noise), sample_rate=SR, seed=0, valid_batch_size=2)
    (tmp_path / "nodir").mkdir()
    with pytest.raises(DataError, match="holds no audio files"):
        build_training_data(data_config(tmp_path / "nodir", noise), sample_rate=SR, seed=0, valid_batch_size=2)


def test_unreadable_files_are_listed(corpus):
    clean, noise = corpus
    (clean / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (clean / "sub" / "zero.wav").write_bytes(b"")
    with pytest.raises(DataError) as info:
        build_training_data(data_config(clean, noise), sample_rate=SR, seed=0, valid_batch_size=2)
    msg = str(info.value)
    assert "2 clean file(s) cannot be used" in msg and "broken.wav" in msg and "zero.wav" in msg


def test_crop_longer_than_every_file(corpus):
    with pytest.raises(DataError, match=r"crop 4 s is longer than every clean file \(6 files\); longest is 1\.50 s"):
        build_training_data(data_config(*corpus, crop_seconds=4.0), sample_rate=SR, seed=0, valid_batch_size=2)


def test_files_shorter_than_the_crop_are_named_in_the_warning(corpus, caplog):
    clean, noise = corpus
    rng = np.random.default_rng(5)
    short = [clean / f"short{i:02d}.wav" for i in range(13)]
    for path in short:
        write_audio(path, speech_like(rng, 0.5), SR)
    with caplog.at_level(logging.WARNING, logger="steadyvoice"):
        build_training_data(data_config(clean, noise), sample_rate=SR, seed=0, valid_batch_size=2)
    [msg] = [r.getMessage() for r in caplog.records if "shorter than the 1 s crop" in r.getMessage()]
    assert "13 of 19 clean files" in msg
    named = [path for path in short if path.name in msg]
    assert short[0].name in msg and 3 <= len(named) < 13  # the first few by name ...
    assert f"and {13 - len(named)} more" in msg  # ... and how many more
    assert "c0.wav" not in msg  # files long enough are not named


def test_silent_files_are_refused(corpus):
    clean, noise = corpus
    write_audio(clean / "silence.wav", np.zeros(2 * SR, dtype=np.float32), SR)
    with pytest.raises(DataError, match=r"(?s)1 clean file\(s\) are silent.*silence\.wav"):
        build_training_data(data_config(clean, noise), sample_rate=SR, seed=0, valid_batch_size=2)


def test_malformed_pair_list(tmp_path):
    (tmp_path / "pairs.scp").write_text("a.wav\n")
    cfg = from_dict(DataConfig, {"pairs": [str(tmp_path / "pairs.scp")]})
    with pytest.raises(DataError, match=r"pairs\.scp, line 1: 1 field\(s\)"):
        build_training_data(cfg, sample_rate=SR, seed=0, valid_batch_size=2)


def test_a_bad_file_mid_run_is_skipped_and_counted(corpus, caplog):
    clean, noise = corpus
    ds = build_training_data(data_config(clean, noise), sample_rate=SR, seed=0, valid_batch_size=2).train
    broken = ds.clean[2].path
    Path(broken).write_bytes(b"RIFF garbage")  # breaks after the start-up scan
    with caplog.at_level(logging.WARNING, logger="steadyvoice"):
        ex = ds[(0, 2)]
        again = ds[(0, 2)]
    assert ex["skipped"] == [broken] and ex["clean_file"] != broken
    assert np.array_equal(ex["noisy"], again["noisy"])  # the replacement is deterministic too
    assert sum("skipping a bad file" in r.message for r in caplog.records) == 1  # warned once per file
    assert collate([ex, ds[(0, 3)]])["skipped"] == [broken]


def test_every_file_bad_is_an_error_not_a_hang(corpus):
    clean, noise = corpus
    ds = build_training_data(data_config(clean, noise, max_retries=2), sample_rate=SR, seed=0, valid_batch_size=2).train
    for f in ds.clean:
        Path(f.path).write_bytes(b"RIFF garbage")
    with pytest.raises(DataError, match=r"example \(0, 0\): no usable audio after 3 attempts"):
        ds[(0, 0)]


# ------------------------------------------------------------------ validation set and config


def test_validation_set_is_fixed_and_identical_for_any_world_size(corpus):
    cfg = data_config(*corpus, valid_count=5)
    valid = build_training_data(cfg, sample_rate=SR, seed=0, valid_batch_size=2).valid
    one = valid.batches(0, 1)
    two = valid.batches(0, 2) + valid.batches(1, 2)
    by_index = {int(i): n for b in one for i, n in zip(b["index"], b["noisy"])}
    assert sorted(by_index) == list(range(5))
    for b in two:
        for i, n in zip(b["index"], b["noisy"]):
            assert torch.equal(by_index[int(i)], n)
    other = build_training_data(cfg, sample_rate=SR, seed=123, valid_batch_size=2).valid  # training seed differs
    assert torch.equal(other.batches(0, 1)[0]["noisy"], one[0]["noisy"])  # valid_seed alone decides


@pytest.mark.parametrize("data,match", [
    ({"snr_dbb": [0, 5]}, "unknown config key 'data.snr_dbb'"),
    ({"snr_db": [10, 0]}, r"data.snr_db=\[10.0, 0.0\]: the low end is above the high end"),
    ({"reverb_prob": 2}, r"data.reverb_prob=2.0: must be in \[0, 1\]"),
    ({"resample": "sinc"}, "resample: 'sinc' is not one of 'soxr', 'error'"),
    ({"pairs": ["a.scp"], "clean": ["x"]}, "either data.pairs or data.clean"),
])
def test_data_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(DataConfig, data, "data")
