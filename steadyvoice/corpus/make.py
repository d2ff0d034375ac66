"""Making the planned files (run in worker processes): speech, noise, RIRs and test mixtures.

Test mixtures follow the trainer's convention (:mod:`steadyvoice.data.mixing`): noisy = speech + noise
scaled to the drawn SNR (powers over the whole file); in a simulated room the speech is the
reverberant speech and the reference written to ``test/clean`` is the direct path plus 50 ms of early
reflections.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steadyvoice import audio
from steadyvoice.corpus import dsp, noise, rir, tools, tts
from steadyvoice.corpus.plan import MixJob, NoiseJob, RirJob, SpeechJob
from steadyvoice.corpus.sources import Clip
from steadyvoice.data.mixing import loop_to_length, power, reverberate, scale_noise_to_snr, split_rir

EARLY_MS = 50.0  # the test reference keeps the direct path and this much after it (as the trainer does)
MAX_PEAK = 0.99


@dataclass(frozen=True)
class Context:
    """What every worker needs besides its job."""

    root: Path  # the directory being built
    sample_rate: int
    noise_samples: int
    speech_level_dbfs: float
    speech_highpass_hz: float  # 0 = off
    rt60: tuple[float, float]


def _load_clip(clip: Clip, sample_rate: int) -> np.ndarray:
    if clip.decoder != "g722":
        return dsp.load_mono(clip.path, sample_rate)
    # G.722 is a raw codec stream that libsndfile cannot read: ffmpeg decodes it to a temporary wav.
    with tempfile.TemporaryDirectory(prefix="sv-g722-") as tmp:
        wav = Path(tmp) / "decoded.wav"
        tools.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "g722", "-i", str(clip.path),
                   "-ac", "1", "-c:a", "pcm_s16le", "-y", str(wav)], package="ffmpeg", timeout=120)
        return dsp.load_mono(wav, sample_rate)


def make_speech(job: SpeechJob, ctx: Context) -> dict:
    sr = ctx.sample_rate
    record = {"path": job.path, "split": job.split, "kind": "clean", "speaker": job.speaker}
    if job.clips:
        pieces = []
        for clip, pause in zip(job.clips, job.pauses, strict=True):
            pieces += [np.zeros(round(pause * sr), np.float32),
                       dsp.trim_silence(_load_clip(clip, sr), sr, margin=0.05)]
        x = np.concatenate(pieces)
        first = job.clips[0]
        native = 16000 if first.decoder == "g722" else audio.info(first.path).sample_rate
        record.update(source=first.source, package=first.package, package_version=first.version,
                      licence=first.licence, origin=[c.relpath for c in job.clips])
    else:
        voice = job.voice
        y, native = tts.synthesize(voice, job.text, job.rendition)
        x = audio.resample(y - np.float32(y.mean()), native, sr)
        record.update(source=f"tts:{voice.engine}", package=voice.package, licence=voice.licence, text=job.text,
                      tts={"engine": voice.engine, "voice": voice.name, "stretch": job.rendition.stretch,
                           "pitch": job.rendition.pitch, "sox_eq": " ".join(job.rendition.eq)})
    if ctx.speech_highpass_hz > 0:
        x = dsp.highpass(x, sr, ctx.speech_highpass_hz)
    x = dsp.trim_silence(x, sr, margin=0.15)
    x, level = dsp.set_active_level(x, sr, ctx.speech_level_dbfs)
    audio.write_audio(ctx.root / job.path, x, sr, subtype="PCM_16")
    record.update(duration=round(len(x) / sr, 4), sample_rate=sr, native_sample_rate=int(native),
                  active_level_dbfs=round(level, 2))
    return record


def make_noise(job: NoiseJob, ctx: Context) -> dict:
    sr, n = ctx.sample_rate, ctx.noise_samples
    rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
    record = {"path": job.path, "split": job.split, "kind": "noise", "family": job.family, "source": job.source}
    if job.family == "recording":
        clip = job.clips[0]
        full = dsp.load_mono(clip.path, sr)
        start = min(round(job.offset * sr), max(0, len(full) - n))
        x = noise.segment(np.pad(full, (0, max(0, start + n - len(full)))), n, start)
        record.update(offset=job.offset)
    elif job.family == "scene":
        events = [dsp.load_mono(c.path, sr) for c in job.clips]
        x = noise.scene(events, [round(g * sr) for g in job.gaps], n)
    elif job.family == "babble":
        talkers = [audio.read_audio(ctx.root / p)[0][:, 0] for p in job.talkers]
        x, facts = noise.babble(talkers, n, sr, rng)
        record.update(facts, talkers=list(job.talkers), talker_speakers=list(job.talker_speakers),
                      licence="as the talkers' files (see their entries)")
    else:
        x, facts = noise.synthetic(job.family, n, sr, rng)
        record.update(facts, licence="generated (no licence restriction)")
    if job.clips:
        first = job.clips[0]
        record.update(package=first.package, package_version=first.version, licence=first.licence,
                      origin=[c.relpath for c in job.clips])
    audio.write_audio(ctx.root / job.path, x, sr, subtype="PCM_16")
    record.update(duration=round(len(x) / sr, 4), sample_rate=sr)
    return record


def make_rir(job: RirJob, ctx: Context) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
    h, facts = rir.random_rir(rng, ctx.sample_rate, ctx.rt60)
    audio.write_audio(ctx.root / job.path, h, ctx.sample_rate, subtype="PCM_16")
    return {"path": job.path, "split": job.split, "kind": "rir", "source": "pyroomacoustics",
            "licence": "generated (no licence restriction)", "duration": round(len(h) / ctx.sample_rate, 4),
            "sample_rate": ctx.sample_rate, "room": facts}


def make_mixture(job: MixJob, ctx: Context) -> dict:
    """Mix one test utterance; rewrites test/clean/<name>.wav when it becomes the early-reverb reference."""
    sr = ctx.sample_rate
    rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
    clean_path = f"test/clean/{job.name}.wav"
    dry = audio.read_audio(ctx.root / clean_path)[0][:, 0]
    if job.rir is not None:
        full, early = split_rir(audio.read_audio(ctx.root / job.rir)[0][:, 0], sr, EARLY_MS)
        speech, target = reverberate(dry, full, early)
    else:
        speech, target = dry, dry
    noise_file = audio.read_audio(ctx.root / job.noise)[0][:, 0]
    noise_part, offset = loop_to_length(noise_file, len(dry), rng)
    scaled = scale_noise_to_snr(speech, noise_part, job.snr)
    gain = math.sqrt(power(scaled) / max(power(noise_part), 1e-20))
    noisy = speech + scaled
    peak = max(float(np.abs(noisy).max()), float(np.abs(target).max()))
    clip_scale = MAX_PEAK / peak if peak > MAX_PEAK else 1.0
    noisy_path = f"test/noisy/{job.name}.wav"
    audio.write_audio(ctx.root / noisy_path, noisy * np.float32(clip_scale), sr, subtype="PCM_16")
    if job.rir is not None or clip_scale != 1.0:
        audio.write_audio(ctx.root / clean_path, target * np.float32(clip_scale), sr, subtype="PCM_16")
    return {"name": job.name, "clean": clean_path, "noisy": noisy_path, "snr_db": job.snr, "noise": job.noise,
            "noise_offset": offset, "noise_gain": round(gain * clip_scale, 9), "rir": job.rir or "",
            "reverberant": int(job.rir is not None), "clip_scale": round(clip_scale, 9),
            "speaker": job.speaker, "source": job.source}
