"""Planning a corpus: every file to make, drawn from the seed in the main process.

Three stages: real-speech utterances (:func:`plan_real_speech`); TTS utterances filling what the real
speech left of each split's budget (:func:`plan_tts`); noise files, rooms and test mixtures
(:func:`plan_noise_rooms_mixes`). A job carries everything its worker needs (files, texts, renditions,
offsets, seeds), so the output does not depend on how many workers make it or in which order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steadyvoice import audio
from steadyvoice.corpus import tts
from steadyvoice.corpus.config import SPLITS, SYNTHETIC_NOISE, TTS_ENGINES, CorpusConfig
from steadyvoice.corpus.sources import Clip
from steadyvoice.errors import DataError

ENGINE_WEIGHTS = {"flite": 0.4, "festival": 0.3, "espeak-ng": 0.3}
SHORT_CLIP = 2.5  # real clips shorter than this (s) are joined with others of the same speaker


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class SpeechJob:
    split: str
    name: str  # file stem
    speaker: str
    clips: tuple[Clip, ...] = ()  # real speech: recordings joined with pauses
    pauses: tuple[float, ...] = ()  # seconds before each clip
    voice: tts.Voice | None = None  # TTS
    text: str = ""
    rendition: tts.Rendition | None = None
    estimate: float = 0.0  # planned duration (s)

    @property
    def path(self) -> str:
        return f"{self.split}/clean/{self.name}.wav"


@dataclass(frozen=True)
class NoiseJob:
    split: str
    name: str
    family: str  # a synthetic family, or "recording" / "scene" for real noise
    seed: tuple[int, ...]
    source: str = "synthetic"
    clips: tuple[Clip, ...] = ()
    offset: float = 0.0  # recording: start (s)
    gaps: tuple[float, ...] = ()  # scene: silence (s) before each clip
    talkers: tuple[str, ...] = ()  # babble: clean files (relative to OUT) of the same split
    talker_speakers: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.split}/noise/{self.name}.wav"


@dataclass(frozen=True)
class RirJob:
    split: str
    name: str
    seed: tuple[int, ...]

    @property
    def path(self) -> str:
        return f"{self.split}/rir/{self.name}.wav"


@dataclass(frozen=True)
class MixJob:
    name: str
    speaker: str
    source: str
    noise: str  # relative to OUT
    rir: str | None
    snr: float
    seed: tuple[int, ...]


@dataclass
class Plan:
    speech: list[SpeechJob] = field(default_factory=list)
    noise: list[NoiseJob] = field(default_factory=list)
    rirs: list[RirJob] = field(default_factory=list)
    mixes: list[MixJob] = field(default_factory=list)


# ---------------------------------------------------------------- planning


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def clip_seconds(clip: Clip) -> float:
    """Duration of a recording from its header (G.722 at 64 kbit/s: 8000 bytes per second)."""
    if clip.decoder == "g722":
        return clip.path.stat().st_size / 8000.0
    return audio.info(clip.path).duration


def plan_real_speech(cfg: CorpusConfig, clips: list[Clip], durations: dict[Path, float]) -> list[SpeechJob]:
    """Stage 1: the real-speech utterances of every split (up to cfg.real_speech_fraction of its budget)."""
    jobs: list[SpeechJob] = []
    for k, split in enumerate(SPLITS):
        budget = cfg.split_seconds()[split] * cfg.real_speech_fraction
        jobs += _plan_real_speech(split, [c for c in clips if c.split == split], durations, budget,
                                  _rng(cfg.seed, k, 1))
    return jobs


def plan_tts(cfg: CorpusConfig, made: list[dict], round_: int = 0) -> list[SpeechJob]:
    """Stage 2: TTS utterances filling what the speech made so far (``made``: its records) left of each budget.

    Durations are estimated from the text, so the build repeats this stage (``round_`` 1, 2) for what is
    still missing; a split within 1% of its budget gets nothing more.
    """
    engines = [s for s in cfg.speech if s in TTS_ENGINES]
    all_voices = tts.voices(engines)
    texts = tts.sentences()
    jobs: list[SpeechJob] = []
    for k, split in enumerate(SPLITS):
        done = [r for r in made if r["split"] == split]
        left = cfg.split_seconds()[split] - sum(r["duration"] for r in done)
        if left <= 0.01 * cfg.split_seconds()[split]:
            continue
        jobs += _plan_tts(split, [v for v in all_voices if v.split == split],
                          [t for t in texts if tts.sentence_split(t) == split], left, len(done),
                          _rng(cfg.seed, k, 6, round_))
    return jobs


def plan_noise_rooms_mixes(cfg: CorpusConfig, speech: list[SpeechJob], clips: list[Clip],
                           durations: dict[Path, float]) -> Plan:
    """Stage 3: noise files, rooms and test mixtures, once the speech of every split is known."""
    plan = Plan(speech=speech)
    for k, split in enumerate(SPLITS):
        budget = cfg.split_seconds()[split]
        n_noise = max(cfg.min_noise_files, math.ceil(cfg.noise_ratio * budget / cfg.noise_seconds))
        plan.noise += _plan_noise(cfg, split, [c for c in clips if c.split == split], durations,
                                  [j for j in speech if j.split == split], n_noise, _rng(cfg.seed, k, 2))
        n_rirs = max(cfg.min_rirs, round(cfg.rirs_per_hour * budget / 3600))
        plan.rirs += [RirJob(split, f"{i:04d}", (cfg.seed, k, 3, i)) for i in range(n_rirs)]
    plan.mixes = _plan_mixes(cfg, plan)
    return plan


def _slug(speaker: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in speaker.replace("/", "_"))


def _plan_real_speech(split: str, clips: list[Clip], durations: dict, budget: float,
                      rng: np.random.Generator) -> list[SpeechJob]:
    """Utterances of real speakers: long clips alone, short ones joined (3-6 s) with short pauses."""
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_speaker[c.speaker].append(c)
    groups: list[tuple[str, list[Clip], list[float]]] = []
    for speaker in sorted(by_speaker):
        pool = [by_speaker[speaker][i] for i in rng.permutation(len(by_speaker[speaker]))]
        current: list[Clip] = []
        pauses: list[float] = []
        target = rng.uniform(3.0, 6.0)
        for clip in pool:
            if durations[clip.path] >= SHORT_CLIP:
                groups.append((speaker, [clip], [0.0]))
                continue
            pauses.append(0.0 if not current else round(float(rng.uniform(0.15, 0.6)), 3))
            current.append(clip)
            if sum(durations[c.path] for c in current) + sum(pauses) >= target:
                groups.append((speaker, current, pauses))
                current, pauses, target = [], [], rng.uniform(3.0, 6.0)
        if current and groups and groups[-1][0] == speaker:  # a short leftover joins this speaker's last utterance
            _, last, last_pauses = groups[-1]
            last += current
            last_pauses += [round(float(rng.uniform(0.15, 0.6)), 3), *pauses[1:]]
        elif current:
            groups.append((speaker, current, pauses))
    jobs: list[SpeechJob] = []
    spent = 0.0
    for i in rng.permutation(len(groups)):
        if spent >= budget:
            break
        speaker, group, pauses = groups[i]
        estimate = sum(durations[c.path] for c in group) + sum(pauses)
        jobs.append(SpeechJob(split, f"{len(jobs):05d}_{_slug(speaker)}", speaker, clips=tuple(group),
                              pauses=tuple(pauses), estimate=estimate))
        spent += estimate
    return jobs


def _plan_tts(split: str, voices: list[tts.Voice], texts: list[str], budget: float, start: int,
              rng: np.random.Generator) -> list[SpeechJob]:
    if budget <= 0:
        return []
    if not voices or not texts:
        raise DataError(f"{split}: no text-to-speech voice or sentence for this split; "
                        "add a TTS engine (flite, festival, espeak-ng) to the speech sources")
    engines = sorted({v.engine for v in voices})
    weights = np.array([ENGINE_WEIGHTS[e] for e in engines])
    jobs: list[SpeechJob] = []
    spent = 0.0
    while spent < budget:
        engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
        candidates = [v for v in voices if v.engine == engine]
        voice = candidates[int(rng.integers(len(candidates)))]
        picks = rng.choice(len(texts), size=1 if rng.random() < 0.7 else 2, replace=False)
        text = " ".join(texts[int(i)] for i in picks)
        rendition = tts.draw_rendition(voice, rng)
        estimate = tts.estimate_seconds(text, rendition)
        jobs.append(SpeechJob(split, f"{start + len(jobs):05d}_{_slug(voice.speaker)}", voice.speaker,
                              voice=voice, text=text, rendition=rendition, estimate=estimate))
        spent += estimate
    return jobs


def _plan_noise(cfg: CorpusConfig, split: str, clips: list[Clip], durations: dict, speech: list[SpeechJob],
                count: int, rng: np.random.Generator) -> list[NoiseJob]:
    families = [f for f in cfg.noise if f in SYNTHETIC_NOISE]
    by_source: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_source[c.source].append(c)
    real_sources = sorted(by_source)
    if not families and not real_sources:
        raise DataError(f"{split}: none of the chosen noise sources has a file for this split; "
                        "add a synthetic family (white, pink, brown, hum, clicks, babble) to the noise sources")
    n_real = count if not families else (round(count * cfg.real_noise_fraction) if real_sources else 0)
    jobs: list[NoiseJob] = []
    order = [real_sources[i] for i in rng.permutation(len(real_sources))]
    for i in range(n_real):
        source = order[i % len(order)]
        jobs.append(_plan_real_noise(cfg, split, len(jobs), by_source[source], durations, rng))
    cycle = [families[i] for i in rng.permutation(len(families))]
    cycle += ["babble"] if "babble" in families else []  # babble twice per cycle: the most realistic family
    for i in range(count - n_real):
        family = cycle[i % len(cycle)]
        seed = (cfg.seed, SPLITS.index(split), 2, len(jobs))
        if family == "babble":
            jobs.append(_plan_babble(split, len(jobs), speech, seed, rng))
        else:
            jobs.append(NoiseJob(split, f"{len(jobs):04d}_{family}", family, seed))
    return jobs


def _plan_real_noise(cfg: CorpusConfig, split: str, index: int, clips: list[Clip], durations: dict,
                     rng: np.random.Generator) -> NoiseJob:
    """A stretch of one long recording, or a scene of short ones laid end to end with gaps."""
    seed = (cfg.seed, SPLITS.index(split), 2, index)
    source = clips[0].source
    long_ = [c for c in clips if durations[c.path] >= cfg.noise_seconds + 0.5]
    short = [c for c in clips if durations[c.path] < cfg.noise_seconds + 0.5]
    if long_ and (not short or rng.random() < 0.5):
        clip = long_[int(rng.integers(len(long_)))]
        offset = round(float(rng.uniform(0, durations[clip.path] - cfg.noise_seconds - 0.25)), 3)
        return NoiseJob(split, f"{index:04d}_{source}", "recording", seed, source, (clip,), offset=offset)
    events, gaps, filled = [], [], 0.0
    while filled < cfg.noise_seconds:
        clip = short[int(rng.integers(len(short)))]
        gap = round(float(rng.uniform(0.0, 1.0)), 3)
        events.append(clip)
        gaps.append(gap)
        filled += gap + durations[clip.path]
    return NoiseJob(split, f"{index:04d}_{source}", "scene", seed, source, tuple(events), gaps=tuple(gaps))


def _plan_babble(split: str, index: int, speech: list[SpeechJob], seed: tuple[int, ...],
                 rng: np.random.Generator) -> NoiseJob:
    """3-7 talkers from this split, one utterance each from as many different speakers as there are."""
    by_speaker: dict[str, list[SpeechJob]] = defaultdict(list)
    for job in speech:
        by_speaker[job.speaker].append(job)
    speakers = sorted(by_speaker)
    chosen = [speakers[i] for i in rng.permutation(len(speakers))][: int(rng.integers(3, 8))]
    talkers = [by_speaker[s][int(rng.integers(len(by_speaker[s])))] for s in chosen]
    return NoiseJob(split, f"{index:04d}_babble", "babble", seed, talkers=tuple(t.path for t in talkers),
                    talker_speakers=tuple(t.speaker for t in talkers))


def _plan_mixes(cfg: CorpusConfig, plan: Plan) -> list[MixJob]:
    """One mixture per test utterance: SNR from cfg.test_snrs, a test noise, a test room with cfg's probability."""
    rng = _rng(cfg.seed, 2, 4)
    noises = [n for n in plan.noise if n.split == "test"]
    rooms = [r for r in plan.rirs if r.split == "test"]
    mixes = []
    for i, job in enumerate(j for j in plan.speech if j.split == "test"):
        usable = [n for n in noises if job.speaker not in n.talker_speakers] or noises  # avoid own-voice babble
        chosen = usable[int(rng.integers(len(usable)))]
        room = rooms[int(rng.integers(len(rooms)))].path if rng.random() < cfg.test_reverb_prob else None
        snr = float(cfg.test_snrs[int(rng.integers(len(cfg.test_snrs)))])
        source = job.clips[0].source if job.clips else f"tts:{job.voice.engine}"
        mixes.append(MixJob(job.name, job.speaker, source, chosen.path, room, snr, (cfg.seed, 2, 5, i)))
    return mixes
