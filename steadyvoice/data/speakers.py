"""Who speaks in each clean file: separation training mixes two DIFFERENT speakers.

``data.speaker_from``:

* ``manifest``: the ``speaker`` field of a SteadyVoice corpus manifest (``steadyvoice corpus``), found as
  ``manifest.json`` in a parent directory of the file (up to four levels up); a file the manifest does
  not list is an error naming it.
* ``parent`` / ``grandparent``: the name of the file's directory, or of that directory's parent (the
  layouts of WSJ0 / VCTK-style ``speaker/file.wav`` and LibriSpeech-style ``speaker/chapter/file.wav``).
* ``auto`` (default): ``manifest`` when every file has one, else ``parent``.
"""

from __future__ import annotations

import json
from pathlib import Path

from steadyvoice.errors import DataError

SPEAKER_RULES = ("auto", "manifest", "parent", "grandparent")
_MANIFEST = "manifest.json"


def speakers_of(paths: list[str], rule: str = "auto") -> list[str]:
    """The speaker label of every path, by ``rule`` (see the module docstring)."""
    if rule not in SPEAKER_RULES:
        raise DataError(f"data.speaker_from={rule!r}: use one of {', '.join(SPEAKER_RULES)}")
    if rule in ("auto", "manifest"):
        found = _from_manifests(paths, required=rule == "manifest")
        if found is not None:
            return found
    level = 2 if rule == "grandparent" else 1
    return [Path(p).resolve().parents[level - 1].name for p in paths]


def _from_manifests(paths: list[str], required: bool) -> list[str] | None:
    cache: dict[Path, dict[str, str] | None] = {}
    out = []
    for p in paths:
        path = Path(p).resolve()
        speaker = None
        for root in list(path.parents)[:4]:
            table = cache.get(root, ...)
            if table is ...:
                table = cache[root] = _read_manifest(root / _MANIFEST)
            if table is not None:
                speaker = table.get(path.relative_to(root).as_posix())
                if speaker is None and required:
                    raise DataError(f"{p}: not listed in {root / _MANIFEST}, so its speaker is unknown "
                                    "(use data.speaker_from: parent or grandparent)")
                break
        if speaker is None:
            if required:
                raise DataError(f"{p}: no corpus manifest.json above it names its speaker (data.speaker_from: "
                                "manifest); use parent or grandparent")
            return None
        out.append(speaker)
    return out


def _read_manifest(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {r["path"]: str(r["speaker"]) for r in data.get("files", []) if r.get("speaker") is not None}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None  # not a corpus manifest: fall back to the directory rule
