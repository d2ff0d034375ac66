"""The corpus's description: manifest.json, list files, rirs.csv and mixtures.csv."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

from steadyvoice.corpus import sources, tools, tts
from steadyvoice.corpus.config import SPLITS, TTS_ENGINES, CorpusConfig
from steadyvoice.fileio import atomic_write_text

FORMAT = "steadyvoice-corpus"
FORMAT_VERSION = 1


def apply_mixes(records: list[dict], mixes: list[dict], sample_rate: int) -> None:
    """Note in the clean entries what the mixing did; add the noisy files."""
    by_path = {r["path"]: r for r in records}
    for m in mixes:
        clean = by_path[m["clean"]]
        clean["reverberant"] = bool(m["reverberant"])
        if m["rir"]:
            clean["rir"] = m["rir"]
        records.append({**{k: clean[k] for k in ("split", "speaker", "source", "licence", "duration")},
                        "path": m["noisy"], "kind": "noisy", "sample_rate": sample_rate, "clean": m["clean"],
                        "noise": m["noise"], "snr_db": m["snr_db"], "rir": m["rir"] or None})


def manifest_of(cfg: CorpusConfig, request: dict, records: list[dict], cache: sources.PackageCache,
              command: list[str] | None) -> dict:
    engines = [s for s in cfg.speech if s in TTS_ENGINES]
    debian = {name: root.version for name, root in sorted(cache.fetched.items())}
    debian.update(tts.engine_versions(engines))
    if any(s in sources.SPEECH_SOURCES and sources.SPEECH_SOURCES[s].decoder == "g722" for s in cfg.speech):
        debian["ffmpeg"] = tools.package_version("ffmpeg")
    summary = {}
    for split in SPLITS:
        clean = [r for r in records if r["split"] == split and r["kind"] == "clean"]
        noises = [r for r in records if r["split"] == split and r["kind"] == "noise"]
        real = [r for r in clean if not r["source"].startswith("tts:")]
        summary[split] = {
            "clean_files": len(clean),
            "clean_hours": round(sum(r["duration"] for r in clean) / 3600, 4),
            "real_speech_hours": round(sum(r["duration"] for r in real) / 3600, 4),
            "speakers": sorted({r["speaker"] for r in clean}),
            "sources": dict(sorted(Counter(r["source"] for r in clean).items())),
            "noise_files": len(noises),
            "noise_families": dict(sorted(Counter(r["family"] for r in noises).items())),
            "noise_sources": dict(sorted(Counter(r["source"] for r in noises).items())),
            "rirs": sum(1 for r in records if r["split"] == split and r["kind"] == "rir"),
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "request": request,
        "command": " ".join(command) if command else None,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "versions": {"debian": debian, "python": _python_versions()},
        "summary": summary,
        "files": sorted(records, key=lambda r: r["path"]),
    }


def _python_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("steadyvoice", "numpy", "scipy", "soxr", "soundfile", "pyroomacoustics"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    out["python"] = sys.version.split()[0]
    return out


def write_lists(root: Path, records: list[dict], mixes: list[dict]) -> None:
    for split in SPLITS:
        for kind in ("clean", "noise", "rir", "noisy"):
            paths = sorted(r["path"] for r in records if r["split"] == split and r["kind"] == kind)
            if paths:
                _write_text(root / split / f"{kind}.txt", "".join(p.split("/", 1)[1] + "\n" for p in paths))
        rooms = sorted((r for r in records if r["split"] == split and r["kind"] == "rir"), key=lambda r: r["path"])
        _write_csv(root / split / "rirs.csv", ["file", "room", "rt60", "rt60_measured", "source", "mic"],
                   [[r["path"].split("/", 1)[1], _xyz(r["room"]["room"]), r["room"]["rt60"],
                     r["room"]["rt60_measured"], _xyz(r["room"]["source"]), _xyz(r["room"]["mic"])] for r in rooms])
    columns = ["name", "clean", "noisy", "snr_db", "noise", "noise_offset", "noise_gain", "rir", "reverberant",
               "clip_scale", "speaker", "source"]
    _write_csv(root / "test" / "mixtures.csv", columns, [[m[c] for c in columns] for m in mixes])


def _xyz(values: list[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
