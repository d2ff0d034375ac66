"""Build the training dataset and the validation set from the ``data:`` config: scan, check, construct."""

from __future__ import annotations

from dataclasses import dataclass

from steadyvoice.data.config import DataConfig
from steadyvoice.data.datasets import ExampleDataset, MixingDataset, PairDataset, SeparationDataset, ValidationSet
from steadyvoice.data.lists import collect_paths, read_pair_list, scan_files, scan_pairs
from steadyvoice.errors import DataError


@dataclass
class TrainingData:
    train: ExampleDataset
    valid: ValidationSet


def build_training_data(cfg: DataConfig, *, sample_rate: int, seed: int, valid_batch_size: int,
                        task: str = "enhancement", num_speakers: int = 2) -> TrainingData:
    """Scan every file named by ``cfg`` (errors before training) and build both datasets.

    ``task``: "enhancement" (clean + noise mixed, or pair lists) or "separation" (``num_speakers`` talkers
    of different speakers mixed from the clean files, noise optional).
    """
    valid_seconds = cfg.valid_seconds or cfg.crop_seconds
    if task == "separation":
        return _separation_data(cfg, sample_rate, seed, valid_batch_size, num_speakers, valid_seconds)
    if cfg.pairs:
        train_pairs = _pairs(cfg.pairs, cfg, sample_rate, cfg.crop_seconds)
        train = PairDataset(train_pairs, sample_rate=sample_rate, seed=seed, crop_seconds=cfg.crop_seconds,
                            length=cfg.epoch_size or len(train_pairs), max_retries=cfg.max_retries)
        valid_pairs = _pairs(cfg.valid_pairs, cfg, sample_rate, valid_seconds) if cfg.valid_pairs else (
            train_pairs if valid_seconds == cfg.crop_seconds else _pairs(cfg.pairs, cfg, sample_rate, valid_seconds))
        count = cfg.valid_count or len(valid_pairs)
        valid_ds = PairDataset(valid_pairs, sample_rate=sample_rate, seed=cfg.valid_seed, crop_seconds=valid_seconds,
                               length=count, max_retries=cfg.max_retries)
    else:
        if cfg.valid_pairs:
            raise DataError("data.valid_pairs needs data.pairs for training; use data.valid_clean/valid_noise instead")
        clean = _files(cfg.clean, "clean", cfg, sample_rate, cfg.crop_seconds)
        noise = _files(cfg.noise, "noise", cfg, sample_rate, 0.0)
        train = MixingDataset(clean, noise, cfg, sample_rate=sample_rate, seed=seed, crop_seconds=cfg.crop_seconds,
                              length=cfg.epoch_size or len(clean))
        v_clean = _files(cfg.valid_clean, "valid_clean", cfg, sample_rate, valid_seconds) if cfg.valid_clean else (
            clean if valid_seconds <= cfg.crop_seconds else _files(cfg.clean, "clean", cfg, sample_rate, valid_seconds))
        v_noise = _files(cfg.valid_noise, "valid_noise", cfg, sample_rate, 0.0) if cfg.valid_noise else noise
        count = cfg.valid_count or len(v_clean)
        valid_ds = MixingDataset(v_clean, v_noise, cfg, sample_rate=sample_rate, seed=cfg.valid_seed,
                                 crop_seconds=valid_seconds, length=count)
    return TrainingData(train, ValidationSet(valid_ds, count, valid_batch_size))


def _separation_data(cfg: DataConfig, sample_rate: int, seed: int, valid_batch_size: int, num_speakers: int,
                     valid_seconds: float) -> TrainingData:
    from steadyvoice.data.speakers import speakers_of

    if cfg.pairs or cfg.valid_pairs:
        raise DataError("data.pairs: separation mixes its talkers on the fly from data.clean; pair lists are for "
                        "enhancement")
    if not cfg.clean:
        raise DataError("data.clean: separation needs clean speech of several speakers (directories, files or lists)")

    def dataset(clean_src, noise_src, role, data_seed, seconds, length):
        clean = _files(clean_src, role, cfg, sample_rate, seconds)
        noise = _files(noise_src, "noise", cfg, sample_rate, 0.0) if noise_src else []
        return SeparationDataset(clean, speakers_of([f.path for f in clean], cfg.speaker_from), noise, cfg,
                                 sample_rate=sample_rate, seed=data_seed, crop_seconds=seconds,
                                 length=length(clean), num_speakers=num_speakers)

    train = dataset(cfg.clean, cfg.noise, "clean", seed, cfg.crop_seconds, lambda c: cfg.epoch_size or len(c))
    valid = dataset(cfg.valid_clean or cfg.clean, cfg.valid_noise or cfg.noise, "valid_clean" if cfg.valid_clean
                    else "clean", cfg.valid_seed, valid_seconds, lambda c: cfg.valid_count or len(c))
    return TrainingData(train, ValidationSet(valid, valid.length, valid_batch_size))


def _files(sources, role, cfg, sample_rate, min_seconds):
    return scan_files(collect_paths(sources, role), role=role, sample_rate=sample_rate, resample=cfg.resample,
                      min_seconds=min_seconds, check_samples=cfg.scan_samples)


def _pairs(sources, cfg, sample_rate, min_seconds):
    pairs = [p for src in sources for p in read_pair_list(src)]
    return scan_pairs(pairs, sample_rate=sample_rate, resample=cfg.resample, min_seconds=min_seconds,
                      check_samples=cfg.scan_samples)
