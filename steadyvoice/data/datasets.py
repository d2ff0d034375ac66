"""Datasets: every example is a pure function of (seed, epoch, index).

A dataset item is addressed by the key ``(epoch, index)`` (what :class:`~steadyvoice.data.sampler.
ShardedBatchSampler` yields), never by hidden per-worker state, so the same key gives the same example
in the main process or any DataLoader worker, with any number of workers or training processes.

An example is a dict: ``noisy``/``clean`` float32 (N,) at the model rate plus its mixing facts (SNR,
gain, files, offsets, reverberation) so that losses can be broken down by SNR. For separation
(:class:`SeparationDataset`) ``noisy`` is the mixture (N,) and ``clean`` the talkers (S, N). :func:`collate`
stacks them into a batch: ``noisy`` (B, N) and ``clean`` (B, N) or (B, S, N) tensors, numeric facts as
(B,) tensors, the rest as lists.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from steadyvoice import audio
from steadyvoice.data.config import DataConfig
from steadyvoice.data.lists import AudioFile, AudioPair
from steadyvoice.data.mixing import (
    SILENT_POWER,
    RoomConfig,
    apply_gain,
    example_rng,
    loop_to_length,
    power,
    reverberate,
    scale_noise_to_snr,
    simulate_rir,
    snr_db,
    split_rir,
)
from steadyvoice.errors import AudioError, DataError

log = logging.getLogger("steadyvoice")

# Facts carried next to the signals; numeric ones become (B,) tensors in a batch.
NUMERIC_FACTS = ("epoch", "index", "snr_db", "gain_db", "clip_scale", "reverb", "rt60", "clean_offset", "noise_offset",
                 "level_diff_db")
TEXT_FACTS = ("clean_file", "noise_file")


class ExampleDataset(Dataset):
    """Base of the training datasets: items keyed by (epoch, index); crops at the model rate; bad-file skipping."""

    def __init__(self, sample_rate: int, crop_samples: int, seed: int, length: int, max_retries: int):
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.seed = seed
        self.length = length
        self.max_retries = max_retries
        self._warned: set[str] = set()  # per process: warn once per bad file

    def __len__(self) -> int:
        return self.length

    def _read(self, f: AudioFile, start: int, frames: int) -> np.ndarray:
        """Mono float32 samples [start, start+frames) of ``f`` at the file's rate."""
        data, _ = audio.read_audio(f.path, start=start, frames=frames)
        if data.shape[0] < min(frames, f.frames - start):
            raise AudioError(f"{f.path}: file is shorter than its header says")
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]

    def _file_frames_for(self, f: AudioFile, n: int) -> int:
        """File-rate frames that resample to at least ``n`` model-rate samples."""
        return math.ceil(n * f.sample_rate / self.sample_rate)

    def _crop(self, f: AudioFile, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A random ``n``-sample crop of a file at least that long -> (samples, offset in file frames)."""
        need = self._file_frames_for(f, n)
        offset = int(rng.integers(0, max(f.frames - need, 0) + 1))  # a rounding-short file is zero-padded below
        x = self._read(f, offset, need)
        return audio.resample_to_length(x, f.sample_rate, self.sample_rate, n), offset

    def _skip(self, path: str, exc: Exception, key: tuple[int, int]) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("skipping a bad file in example %s: %s", key, exc)

    def _give_up(self, key: tuple[int, int], problems: list[str]) -> DataError:
        return DataError(
            f"example {key}: no usable audio after {self.max_retries + 1} attempts: " + "; ".join(problems[-3:])
        )


class MixingDataset(ExampleDataset):
    """Clean speech + noise, mixed on the fly; example (epoch, index) uses clean file ``index % len(clean)``."""

    def __init__(self, clean: list[AudioFile], noise: list[AudioFile], cfg: DataConfig, *, sample_rate: int,
                 seed: int, crop_seconds: float, length: int):
        if not clean or not noise:
            raise DataError("mixing needs at least one clean and one noise file")
        super().__init__(sample_rate, round(crop_seconds * sample_rate), seed, length, cfg.max_retries)
        self.clean = clean
        self.noise = noise
        self.cfg = cfg
        self.room = RoomConfig(rt60=tuple(cfg.reverb_rt60), room_min=tuple(cfg.reverb_room_min),
                               room_max=tuple(cfg.reverb_room_max), max_order=cfg.reverb_max_order,
                               early_ms=cfg.reverb_early_ms)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = example_rng(self.seed, epoch, index)
        cfg, n = self.cfg, self.crop_samples
        # The draws that define the example come first, in a fixed order.
        snr = float(rng.uniform(*cfg.snr_db))
        gain = float(rng.uniform(*cfg.gain_db))
        use_reverb = bool(rng.random() < cfg.reverb_prob)
        skipped: list[str] = []
        problems: list[str] = []

        clean, clean_file, clean_offset = self._draw_audible(
            self.clean[index % len(self.clean)], self.clean, self._crop, n, rng, key, skipped, problems)
        noise, noise_file, noise_offset = self._draw_audible(
            self.noise[int(rng.integers(len(self.noise)))], self.noise, self._noise, n, rng, key, skipped, problems)

        # Normalise the speech level so that gain_db means the same thing for every file.
        clean = clean * np.float32(10.0 ** (cfg.speech_level_db / 20.0) / math.sqrt(power(clean)))
        rt60 = 0.0
        if use_reverb:
            rir, room_facts = simulate_rir(rng, self.sample_rate, self.room)
            full, early = split_rir(rir, self.sample_rate, self.room.early_ms)
            speech, target = reverberate(clean, full, early)
            rt60 = room_facts["rt60"]
        else:
            speech, target = clean, clean
        noisy = speech + scale_noise_to_snr(speech, noise, snr)
        noisy, target, clip_scale = apply_gain(noisy, target, gain, cfg.max_peak)
        return {
            "noisy": noisy.astype(np.float32), "clean": target.astype(np.float32),
            "epoch": epoch, "index": index, "snr_db": snr, "gain_db": gain, "clip_scale": clip_scale,
            "reverb": use_reverb, "rt60": rt60,
            "clean_file": clean_file.path, "clean_offset": clean_offset,
            "noise_file": noise_file.path, "noise_offset": noise_offset, "skipped": skipped, "level_diff_db": 0.0,
        }

    def _draw_audible(self, first: AudioFile, files: list[AudioFile], read, n: int, rng: np.random.Generator,
                      key: tuple[int, int], skipped: list[str], problems: list[str]):
        """``read(file, n, rng)`` from ``first``; an unreadable file or a silent crop is skipped and another file
        drawn from ``files``, at most max_retries times. Returns (samples, file, offset)."""
        f = first
        for _ in range(self.max_retries + 1):
            try:
                x, offset = read(f, n, rng)
            except AudioError as exc:
                self._skip(f.path, exc, key)
                skipped.append(f.path)
                problems.append(str(exc))
            else:
                if power(x) > SILENT_POWER:
                    return x, f, offset
                problems.append(f"{f.path}: silent crop at frame {offset}")
            f = files[int(rng.integers(len(files)))]
        raise self._give_up(key, problems)

    def _noise(self, f: AudioFile, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """``n`` samples of noise: a random crop, or the whole file looped when it is shorter."""
        if f.frames >= self._file_frames_for(f, n):
            return self._crop(f, n, rng)
        x = audio.resample(self._read(f, 0, f.frames), f.sample_rate, self.sample_rate)
        return loop_to_length(x, n, rng)


class SeparationDataset(MixingDataset):
    """Talkers mixed on the fly for separation; example (epoch, index) starts from clean file ``index % len``.

    Talker 1 is that file; talker k > 1 is a file of another speaker (no speaker twice in a mixture, see
    :mod:`steadyvoice.data.speakers`), at ``level_diff_db`` (drawn) relative to talker 1. Each talker's
    speech is first normalised to ``speech_level_db``; with ``reverb_prob`` every talker gets its own room
    (the target keeps its direct path and early reflections, as for enhancement); with noise files, noise
    at ``snr_db`` against the talkers' sum. ``clean`` is (S, N), in talker order (the loss is
    permutation-invariant).
    """

    def __init__(self, clean: list[AudioFile], speakers: list[str], noise: list[AudioFile], cfg: DataConfig, *,
                 sample_rate: int, seed: int, crop_seconds: float, length: int, num_speakers: int):
        ExampleDataset.__init__(self, sample_rate, round(crop_seconds * sample_rate), seed, length, cfg.max_retries)
        self.clean, self.noise, self.cfg, self.num_speakers = clean, noise, cfg, num_speakers
        self.room = RoomConfig(rt60=tuple(cfg.reverb_rt60), room_min=tuple(cfg.reverb_room_min),
                               room_max=tuple(cfg.reverb_room_max), max_order=cfg.reverb_max_order,
                               early_ms=cfg.reverb_early_ms)
        self.speaker = speakers  # per clean file
        self.by_speaker: dict[str, list[AudioFile]] = {}
        for f, who in zip(clean, speakers):
            self.by_speaker.setdefault(who, []).append(f)
        self.speaker_names = sorted(self.by_speaker)
        if len(self.speaker_names) < num_speakers:
            raise DataError(f"separation of {num_speakers} talkers needs clean speech of at least {num_speakers} "
                            f"different speakers; the files give {len(self.speaker_names)} "
                            f"({', '.join(self.speaker_names[:5])}); see data.speaker_from")

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = example_rng(self.seed, epoch, index)
        cfg, n = self.cfg, self.crop_samples
        # The draws that define the example come first, in a fixed order.
        levels = [0.0] + [float(rng.uniform(*cfg.level_diff_db)) for _ in range(self.num_speakers - 1)]
        snr = float(rng.uniform(*cfg.snr_db))
        gain = float(rng.uniform(*cfg.gain_db))
        use_reverb = bool(rng.random() < cfg.reverb_prob)
        skipped: list[str] = []
        problems: list[str] = []

        first = self.clean[index % len(self.clean)]
        chosen = [self.speaker[index % len(self.clean)]]
        sources, files, offsets = [], [], []
        for k in range(self.num_speakers):
            if k == 0:
                f, pool = first, self.by_speaker[chosen[0]]
            else:
                others = [s for s in self.speaker_names if s not in chosen]
                chosen.append(others[int(rng.integers(len(others)))])
                pool = self.by_speaker[chosen[-1]]
                f = pool[int(rng.integers(len(pool)))]
            x, f, offset = self._draw_audible(f, pool, self._crop, n, rng, key, skipped, problems)
            x = x * np.float32(10.0 ** ((cfg.speech_level_db + levels[k]) / 20.0) / math.sqrt(power(x)))
            sources.append(x)
            files.append(f.path)
            offsets.append(offset)

        speech, targets, rt60 = [], [], 0.0
        for x in sources:
            if use_reverb:
                rir, room_facts = simulate_rir(rng, self.sample_rate, self.room)
                full, early = split_rir(rir, self.sample_rate, self.room.early_ms)
                wet, target = reverberate(x, full, early)
                rt60 = max(rt60, room_facts["rt60"])
            else:
                wet, target = x, x
            speech.append(wet)
            targets.append(target)
        mixture = np.sum(speech, axis=0)
        noise_file, noise_offset = "", 0
        if self.noise:
            noise, nf, noise_offset = self._draw_audible(
                self.noise[int(rng.integers(len(self.noise)))], self.noise, self._noise, n, rng, key, skipped, problems)
            mixture = mixture + scale_noise_to_snr(mixture, noise, snr)
            noise_file = nf.path
        else:
            snr = math.inf  # no noise
        mixture, target, clip_scale = apply_gain(mixture, np.stack(targets), gain, cfg.max_peak)
        return {
            "noisy": mixture.astype(np.float32), "clean": target.astype(np.float32),  # (N,), (S, N)
            "epoch": epoch, "index": index, "snr_db": snr, "gain_db": gain, "clip_scale": clip_scale,
            "reverb": use_reverb, "rt60": rt60, "level_diff_db": levels[1] if len(levels) > 1 else 0.0,
            "clean_file": "|".join(files), "clean_offset": offsets[0],
            "noise_file": noise_file, "noise_offset": noise_offset, "skipped": skipped,
        }


class PairDataset(ExampleDataset):
    """ClearerVoice static pairs: a random aligned crop of noisy and clean; example uses pair ``index % len``."""

    def __init__(self, pairs: list[AudioPair], *, sample_rate: int, seed: int, crop_seconds: float, length: int,
                 max_retries: int):
        if not pairs:
            raise DataError("the pair list holds no usable pairs")
        super().__init__(sample_rate, round(crop_seconds * sample_rate), seed, length, max_retries)
        self.pairs = pairs

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = example_rng(self.seed, epoch, index)
        n = self.crop_samples
        pair = self.pairs[index % len(self.pairs)]
        skipped: list[str] = []
        problems: list[str] = []
        for _ in range(self.max_retries + 1):
            sr = pair.noisy.sample_rate
            need = self._file_frames_for(pair.noisy, n)
            offset = int(rng.integers(0, max(pair.frames - need, 0) + 1))
            try:
                noisy = audio.resample_to_length(self._read(pair.noisy, offset, need), sr, self.sample_rate, n)
                clean = audio.resample_to_length(self._read(pair.clean, offset, need), sr, self.sample_rate, n)
            except AudioError as exc:
                bad = pair.noisy.path if pair.noisy.path in str(exc) else pair.clean.path
                self._skip(bad, exc, key)
                skipped.append(bad)
                problems.append(str(exc))
                pair = self.pairs[int(rng.integers(len(self.pairs)))]
                continue
            return {
                "noisy": noisy, "clean": clean, "epoch": epoch, "index": index,
                "snr_db": snr_db(clean, noisy - clean), "gain_db": 0.0, "clip_scale": 1.0,
                "reverb": False, "rt60": 0.0,
                "clean_file": pair.clean.path, "clean_offset": offset,
                "noise_file": pair.noisy.path, "noise_offset": offset, "skipped": skipped, "level_diff_db": 0.0,
            }
        raise self._give_up(key, problems)


def collate(examples: list[dict]) -> dict:
    """Stack examples into a batch: signals (B, N), numeric facts (B,), file names as lists."""
    batch = {
        "noisy": torch.from_numpy(np.stack([e["noisy"] for e in examples])),  # (B, N)
        "clean": torch.from_numpy(np.stack([e["clean"] for e in examples])),  # (B, N)
    }
    for k in NUMERIC_FACTS:
        batch[k] = torch.tensor([e[k] for e in examples], dtype=torch.float64)
    for k in TEXT_FACTS:
        batch[k] = [e[k] for e in examples]
    batch["skipped"] = [p for e in examples for p in e["skipped"]]
    return batch


class ValidationSet:
    """A fixed validation set: example i is ``dataset[(0, i)]`` of a dataset seeded with its own seed.

    It is cut into chunks of ``batch_size`` consecutive examples; rank r evaluates chunks r, r+W, ... so
    every example is computed in the same batch whatever the world size (identical numbers). Each rank
    mixes its chunks once and keeps them in memory.
    """

    def __init__(self, dataset: Dataset, count: int, batch_size: int):
        if count < 1:
            raise DataError("the validation set is empty; set data.valid_count to at least 1")
        self.dataset = dataset
        self.count = count
        self.batch_size = batch_size
        self._cache: dict[tuple[int, int], list[dict]] = {}

    def chunks(self, rank: int, world_size: int) -> list[range]:
        starts = range(0, self.count, self.batch_size)
        return [range(s, min(s + self.batch_size, self.count)) for k, s in enumerate(starts) if k % world_size == rank]

    def batches(self, rank: int, world_size: int) -> list[dict]:
        key = (rank, world_size)
        if key not in self._cache:
            self._cache = {key: [collate([self.dataset[(0, i)] for i in chunk]) for chunk in self.chunks(rank, world_size)]}
        return self._cache[key]
