"""Build a corpus: plan every file from the seed, make them in a process pool, mix the test set, write the manifest.

Layout of OUT_DIR (every wav mono PCM_16 at the requested rate):

    train/clean/*.wav  train/noise/*.wav  train/rir/*.wav   + train/{clean,noise,rir}.txt, train/rirs.csv
    valid/...          (same)
    test/clean/*.wav   test/noisy/*.wav (same names)  test/noise/*.wav  test/rir/*.wav
                       + test/{clean,noisy,noise,rir}.txt, test/rirs.csv, test/mixtures.csv
    manifest.json      every file (split, kind, speaker, source, package, licence, duration, rate) + versions

List files hold paths relative to their own directory (``clean/00001_x.wav``). The plan is drawn from
``seed`` in the main process (:mod:`~steadyvoice.corpus.plan`), the files are made in a process pool
(:mod:`~steadyvoice.corpus.make`), and the manifest is written last (:mod:`~steadyvoice.corpus.manifest`).
The build happens in ``OUT_DIR.partial`` and is renamed into place when complete. Rerunning with the
same request on a finished corpus does nothing; another request on it is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from steadyvoice.config import to_dict
from steadyvoice.corpus import sources, tools, tts
from steadyvoice.corpus.config import TTS_ENGINES, CorpusConfig
from steadyvoice.corpus.make import Context, make_mixture, make_noise, make_rir, make_speech
from steadyvoice.corpus.manifest import FORMAT, FORMAT_VERSION, apply_mixes, manifest_of, write_json, write_lists
from steadyvoice.corpus.plan import SpeechJob, clip_seconds, plan_noise_rooms_mixes, plan_real_speech, plan_tts
from steadyvoice.corpus.sources import Clip
from steadyvoice.errors import DataError

log = logging.getLogger("steadyvoice")

PARTIAL_MARKER = ".steadyvoice-corpus-partial"


@dataclass
class BuildResult:
    out_dir: Path
    already_built: bool
    manifest: dict


def build_corpus(
    cfg: CorpusConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    install: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> BuildResult:
    """Build the corpus described by ``cfg`` into ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    request = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_dict(cfg)}
    existing = _finished_manifest(out)
    if existing is not None:
        if existing.get("request") == request:
            return BuildResult(out, True, existing)
        raise DataError(f"{out} already holds a corpus built with other arguments "
                        f"({_differences(existing.get('request', {}), request)}); "
                        "choose another directory or delete it first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a finished corpus; choose another directory or delete it")

    tools.check(_requirements(cfg), install=install)
    cache = sources.PackageCache(Path(cache_dir) if cache_dir else default_cache_dir(), update=install)
    speech_clips, noise_clips = _real_clips(cfg, cache)

    partial_dir = _fresh_partial(out)
    ctx = Context(partial_dir, cfg.sample_rate, round(cfg.noise_seconds * cfg.sample_rate),
                  cfg.speech_level_dbfs, cfg.speech_highpass_hz, tuple(cfg.rt60))
    workers = max(1, workers or os.cpu_count() or 1)
    durations = {c.path: clip_seconds(c) for c in speech_clips + noise_clips}

    real = plan_real_speech(cfg, speech_clips, durations)
    records = _run(partial(make_speech, ctx=ctx), real, workers, "real speech", progress)
    synthetic: list[SpeechJob] = []
    for round_ in range(3):
        more = plan_tts(cfg, records, round_)
        records += _run(partial(make_speech, ctx=ctx), more, workers, "text-to-speech", progress)
        synthetic += more
    plan = plan_noise_rooms_mixes(cfg, real + synthetic, noise_clips, durations)
    records += _run(partial(make_noise, ctx=ctx), plan.noise, workers, "noise", progress)
    records += _run(partial(make_rir, ctx=ctx), plan.rirs, workers, "room impulse responses", progress)
    mixes = _run(partial(make_mixture, ctx=ctx), plan.mixes, workers, "test mixtures", progress)
    apply_mixes(records, mixes, cfg.sample_rate)

    manifest = manifest_of(cfg, request, records, cache, command)
    write_lists(partial_dir, records, mixes)
    write_json(partial_dir / "manifest.json", manifest)
    (partial_dir / PARTIAL_MARKER).unlink()
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(partial_dir, out)
    return BuildResult(out, False, manifest)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steadyvoice" / "debian"


def _requirements(cfg: CorpusConfig) -> list[tools.Requirement]:
    engines = [s for s in cfg.speech if s in TTS_ENGINES]
    return tts.required_tools(engines) + sources.required_tools(cfg.speech, cfg.noise)


def _real_clips(cfg: CorpusConfig, cache: sources.PackageCache) -> tuple[list[Clip], list[Clip]]:
    speech: list[Clip] = []
    for name in cfg.speech:
        if name in sources.SPEECH_SOURCES:
            src = sources.SPEECH_SOURCES[name]
            speech += sources.speech_clips(src, cache.get(src.package))
    sources.assert_splits(speech)
    noise_: list[Clip] = []
    for name in cfg.noise:
        if name in sources.NOISE_SOURCES:
            src = sources.NOISE_SOURCES[name]
            noise_ += sources.noise_clips(src, cache.get(src.package))
    return speech, noise_


def _finished_manifest(out: Path) -> dict | None:
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable corpus manifest ({exc}); delete {out} and rebuild") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{path} is not a steadyvoice corpus manifest; choose another directory")
    return data


def _differences(old: dict, new: dict) -> str:
    a, b = old.get("config", {}), new.get("config", {})
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "format version"


def _fresh_partial(out: Path) -> Path:
    partial_dir = out.with_name(out.name + ".partial")
    if partial_dir.exists():
        if not (partial_dir / PARTIAL_MARKER).exists():
            raise DataError(f"{partial_dir} exists but was not made by `steadyvoice corpus`; move it away")
        log.info("removing the unfinished build %s", partial_dir)
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True)
    (partial_dir / PARTIAL_MARKER).write_text("unfinished steadyvoice corpus build\n")
    return partial_dir


def _run(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not progress, file=sys.stderr)
    results = []
    try:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                results.append(fn(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(fn, jobs, chunksize=1):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results
