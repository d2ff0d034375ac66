"""Real recordings from Debian packages: which packages, which files, whose voice, which split.

A data package is used where it is installed; otherwise ``apt-get download`` fetches its .deb into a
cache directory and ``dpkg-deb -x`` unpacks it there (no root needed, nothing installed system-wide:
some of these packages belong to games with large dependency trees). The package version is recorded.

Speech: English recordings, and (sources ``*-intl``, opt-in with ``--speech``, all in the train split)
recordings in other languages by other speakers; no clip from a PyPI package is used (the project's
held-out evaluation draws on such material). Each real speaker is assigned to one split in
``SPEECH_SOURCES`` below, by hand and independently of the seed, so that splits never share a voice:
a source with a single speaker (e.g. the Asterisk prompts, one speaker) goes wholly into one split.

Noise: sound effects and ambiences chosen by file name so that nothing contains speech (voice packs,
shouts, screams, crowds, schools and markets are left out). Each noise *file* goes to one split, by a
fixed hash of its path (independent of the seed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steadyvoice.corpus import tools
from steadyvoice.corpus.config import SPLITS
from steadyvoice.errors import DataError

log = logging.getLogger("steadyvoice")


@dataclass(frozen=True)
class SpeechSource:
    """Speech in a Debian package: speakers (each with its split) and the files of each."""

    name: str
    package: str
    licence: str
    speakers: dict[str, str]  # speaker -> split
    patterns: dict[str, tuple[str, ...]]  # speaker -> globs relative to the package root
    exclude: str = r"(?!)"  # regex on the file name (stem) of clips to leave out; default matches nothing
    decoder: str = "soundfile"  # or "g722" (ffmpeg)


@dataclass(frozen=True)
class NoiseSource:
    """Noise recordings in a Debian package: globs of candidate files and a regex choosing among them."""

    name: str
    package: str
    licence: str
    patterns: tuple[str, ...]
    include: str = r".*"  # regex on the file stem
    exclude: str = r"(?!)"


_ALLISON = "usr/share/asterisk/sounds/en_US_f_Allison"
_HW = "usr/share/games/hedgewars/Data/Sounds"
_KAJONGG = "usr/share/kajongg/voices"
_KLETTRES_INTL = ("ar", "cs", "da", "de", "es", "fr", "he", "hu", "it", "lt", "ml", "nb", "nds", "nl", "pt_BR", "ru",
                  "tn", "uk")
_KTUBERLING_INTL = ("ca", "da", "de", "el", "gl", "lt", "ru", "sl", "uk", "wa")  # the 44.1 kHz ones (others: 8 kHz)

SPEECH_SOURCES: dict[str, SpeechSource] = {s.name: s for s in (
    SpeechSource(
        "asterisk", "asterisk-core-sounds-en-g722", "CC-BY-SA-3.0 (Allison Smith)",
        speakers={"allison": "train"},
        patterns={"allison": tuple(f"{_ALLISON}/{d}*.g722" for d in
                                   ("", "digits/", "letters/", "phonetic/", "dictate/", "followme/"))},
        exclude=r"^(beep|beeperr|ascending-2tone|descending-2tone|tt-monkeys)$",  # tones and monkeys
        decoder="g722",
    ),
    SpeechSource(
        # English voice packs of the game (others are Russian, Ukrainian, Polish, Spanish; Robot is
        # vocoded and Singer sings). Non-word vocalisations (grunts, laughs, coughs) are left out.
        "hedgewars", "hedgewars-data", "GFDL-1.3 (Hedgewars sounds)",
        speakers={"Default": "train", "Classic": "train", "Pirate": "train", "Mobster": "train",
                  "HillBilly": "valid", "British": "test", "Surfer": "test"},
        patterns={p: (f"{_HW}/voices/{p}/*.ogg",) for p in
                  ("Default", "Classic", "Pirate", "Mobster", "HillBilly", "British", "Surfer")},
        exclude=r"^(Firepunch\d*|Jump\d*|Laugh|Ooff\d*|Ow\d*|Poison\w*|Hmm|Nooo|Ouch)$",
    ),
    SpeechSource(
        # Mah Jongg calls in English by four speakers (the de/ voices are German).
        "kajongg", "kajongg", "GPL-2+ (Wolfgang Rohdewald)",
        speakers={"male1": "train", "female1": "train", "male2": "valid", "female2": "test"},
        patterns={v: (f"{_KAJONGG}/{v}/*.ogg",) for v in ("male1", "female1", "male2", "female2")},
    ),
    SpeechSource(
        "ktuberling", "ktuberling-data", "GPL-2+ (KDE)",
        speakers={"en": "train"},
        patterns={"en": ("usr/share/ktuberling/sounds/en/*.ogg",)},
    ),
    SpeechSource(
        # Letters and syllables spoken by a US and a British English speaker.
        "klettres", "klettres-data", "GPL-2+ (KDE)",
        speakers={"en": "valid", "en_GB": "test"},
        patterns={"en": ("usr/share/klettres/en/alpha/*.ogg", "usr/share/klettres/en/syllab/*.ogg"),
                  "en_GB": ("usr/share/klettres/en_GB/alpha/*.ogg", "usr/share/klettres/en_GB/syllab/*.ogg")},
    ),
    # Other languages (44.1 kHz recordings; one speaker per language as far as known), for training only: the
    # held-out splits stay English. The English voices of the same packages are the sources above.
    SpeechSource(
        "klettres-intl", "klettres-data", "GPL-2+ (KDE)",
        speakers={lang: "train" for lang in _KLETTRES_INTL},
        patterns={lang: (f"usr/share/klettres/{lang}/alpha/*.ogg", f"usr/share/klettres/{lang}/syllab/*.ogg")
                  for lang in _KLETTRES_INTL},
    ),
    SpeechSource(
        "ktuberling-intl", "ktuberling-data", "GPL-2+ (KDE)",
        speakers={lang: "train" for lang in _KTUBERLING_INTL},
        patterns={lang: (f"usr/share/ktuberling/sounds/{lang}/*.ogg",) for lang in _KTUBERLING_INTL},
    ),
    SpeechSource(
        # Clean speech-codec test sentences (8 kHz, one 16 kHz), one speaker per file as far as known;
        # the off-air radio recordings and the coded versions (m2400, f2400) are left out.
        "codec2", "codec2-examples", "LGPL-2.1 (David Rowe)",
        speakers={s: "test" for s in ("hts1a", "hts2a", "morig", "forig", "cross", "big_dog", "wia_16kHz")},
        patterns={s: (f"usr/share/codec2/wav/{s}.wav",) for s in
                  ("hts1a", "hts2a", "morig", "forig", "cross", "big_dog", "wia_16kHz")},
    ),
)}

_LINCITY_OK = (r"^(Blacksmith|Build|CoalMine|DirtTrack|Farm|Fire|Green|Harbor|IndustryHigh|IndustryLight|Mill|"
               r"OreMine|OrganicFarm|ParklandLake|ParklandPlane|Pottery|PowerCoal|PowerLine|RailTrain|Raze|"
               r"Recycle|Rocket|Substation|Tip|Trafic|Water|WindMill)")
_WESNOTH_OK = (r"^(birds|campfire|morning|night|ship|axe|bow|club|crossbow|dagger-swish|explosion|fire|fist|"
               r"flail|gunshot|hatchet|horse-canter|mace|rumble|spear|sword|sling|staff|throw|torch|water-blast|"
               r"thunderstick|cave-in|open-chest|net|fuse|knife|pincers|claws|bat-flapping|entangle)")
_HW_SFX_OK = (r"^(airmine_impact|baseballbat|bee|beewater|blowtorch|bump|drillgun|egg|explosion|firepunch_hit|"
              r"flamethrower|graveimpact|grenadeimpact|gun|hammer|ice_beam|jetpackboost|knife_impact|landgun|"
              r"melonimpact|mineimpact|minetick|minigun|molotov|mortar|parachute|pickhammer|plane|planewater|"
              r"rcplane|ropeshot|shotgunfire|shotgunreload|shutterclick|sniperreload|splash|steam|steps|ufo|"
              r"whipcrack|Droplet\d)$")

NOISE_SOURCES: dict[str, NoiseSource] = {s.name: s for s in (
    NoiseSource("minetest", "minetest-data", "CC-BY-SA-3.0 / CC-BY-3.0 (Minetest Game sounds)",
                ("usr/share/games/minetest/games/minetest_game/mods/*/sounds/*.ogg",),
                exclude=r"^player_damage"),
    NoiseSource("lincity", "lincity-ng-data", "GPL-2+ (LinCity-NG)",
                ("usr/share/games/lincity-ng/sounds/*.wav",), include=_LINCITY_OK),
    NoiseSource("wesnoth", "wesnoth-1.16-data", "GPL-2+ (Battle for Wesnoth)",
                ("usr/share/games/wesnoth/1.16/data/core/sounds/ambient/*.ogg",
                 "usr/share/games/wesnoth/1.16/data/core/sounds/*.ogg",
                 "usr/share/games/wesnoth/1.16/data/core/sounds/*.wav"),
                include=_WESNOTH_OK, exclude=r"(die|hit|miss|wardrums)"),
    NoiseSource("etr", "extremetuxracer-data", "GPL-2+ (Extreme Tux Racer)",
                ("usr/share/games/etr/sounds/*.wav",), include=r"(_slide|tree_hit)$"),
    NoiseSource("freeciv", "freeciv-data", "GPL-2+ (Freeciv)",
                ("usr/share/games/freeciv/stdsounds/*.ogg",)),
    NoiseSource("hedgewars-sfx", "hedgewars-data", "GFDL-1.3 / CC-BY-SA-3.0 (Hedgewars sounds)",
                (f"{_HW}/*.ogg",), include=_HW_SFX_OK),
    NoiseSource("opsound", "asterisk-moh-opsound-wav", "CC-BY-SA-3.0 (opsound.org music on hold)",
                ("usr/share/asterisk/moh/*.wav",)),
)}


# ---------------------------------------------------------------- files found in a package


@dataclass(frozen=True)
class Clip:
    """One real recording: where it is and what it is."""

    path: Path  # absolute
    relpath: str  # inside the package
    source: str
    package: str
    version: str
    licence: str
    speaker: str | None  # speech only: "<source>/<speaker>"
    split: str
    decoder: str = "soundfile"


@dataclass
class PackageRoot:
    package: str
    version: str
    root: Path  # "/" when installed, else the unpacked cache directory


def split_of_path(relpath: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Fixed split of a noise file: a hash of its path inside the package, not the seed."""
    bucket = int(hashlib.sha1(relpath.encode()).hexdigest()[:8], 16) / 2**32
    if bucket < fractions[0]:
        return "train"
    return "valid" if bucket < fractions[0] + fractions[1] else "test"


def _glob(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(found)


def speech_clips(source: SpeechSource, pkg: PackageRoot) -> list[Clip]:
    """Every clip of ``source`` with its speaker and split; an empty speaker is an error (package changed)."""
    skip = re.compile(source.exclude)
    clips = []
    for speaker, split in source.speakers.items():
        paths = [p for p in _glob(pkg.root, source.patterns[speaker]) if not skip.search(p.stem)]
        if not paths:
            raise DataError(f"{source.package} {pkg.version}: no recordings of speaker {speaker!r} under "
                            f"{pkg.root} ({', '.join(source.patterns[speaker])}); the package layout changed, "
                            f"or leave '{source.name}' out of the speech sources")
        for p in paths:
            clips.append(Clip(p, str(p.relative_to(pkg.root)), source.name, source.package, pkg.version,
                              source.licence, f"{source.name}/{speaker}", split, source.decoder))
    return clips


def noise_clips(source: NoiseSource, pkg: PackageRoot) -> list[Clip]:
    """Every noise file of ``source`` with its (fixed) split."""
    keep, skip = re.compile(source.include), re.compile(source.exclude)
    paths = [p for p in _glob(pkg.root, source.patterns) if keep.search(p.stem) and not skip.search(p.stem)]
    if not paths:
        raise DataError(f"{source.package} {pkg.version}: no noise recordings under {pkg.root} "
                        f"({', '.join(source.patterns)}); leave '{source.name}' out of the noise sources")
    clips = []
    for p in paths:
        rel = str(p.relative_to(pkg.root))
        clips.append(Clip(p, rel, source.name, source.package, pkg.version, source.licence, None, split_of_path(rel)))
    return clips


# ---------------------------------------------------------------- fetching packages


def required_tools(speech: list[str], noise: list[str]) -> list[tools.Requirement]:
    """Programs needed to fetch and decode the chosen real sources."""
    reqs: list[tools.Requirement] = []
    if any(s in SPEECH_SOURCES for s in speech) or any(n in NOISE_SOURCES for n in noise):
        reqs.extend(tools.APT_TOOLS)
    if any(SPEECH_SOURCES[s].decoder == "g722" for s in speech if s in SPEECH_SOURCES):
        reqs.append(tools.Requirement("ffmpeg", program="ffmpeg"))
    return reqs


def packages_for(speech: list[str], noise: list[str]) -> list[str]:
    names = [SPEECH_SOURCES[s].package for s in speech if s in SPEECH_SOURCES]
    names += [NOISE_SOURCES[n].package for n in noise if n in NOISE_SOURCES]
    return sorted(set(names))


@dataclass
class PackageCache:
    """Unpacked Debian data packages under ``directory/<package>/<version>/``."""

    directory: Path
    update: bool = False  # run `apt-get update` (root) once if apt does not know a package
    fetched: dict[str, PackageRoot] = field(default_factory=dict)

    def get(self, package: str) -> PackageRoot:
        if package not in self.fetched:
            self.fetched[package] = self._fetch(package)
        return self.fetched[package]

    def _fetch(self, package: str) -> PackageRoot:
        installed = tools.package_version(package)
        if installed is not None:
            return PackageRoot(package, installed, Path("/"))
        version = self._candidate(package)
        target = self.directory / package / version.replace(":", "%3a")
        if (target / ".complete").exists():
            return PackageRoot(package, version, target)
        log.info("fetching Debian package %s %s", package, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=target.parent) as tmp:
            tools.run(["apt-get", "download", f"{package}={version}"], package="apt", cwd=tmp, timeout=1800)
            debs = sorted(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise DataError(f"apt-get download {package}: expected one .deb, found {len(debs)}")
            unpacked = Path(tmp) / "root"
            tools.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], package="dpkg", timeout=600)
            (unpacked / ".complete").write_text(f"{package} {version}\n")
            if target.exists():  # an incomplete earlier attempt
                shutil.rmtree(target)
            unpacked.rename(target)
        return PackageRoot(package, version, target)

    def _candidate(self, package: str) -> str:
        proc = tools.run(["apt-cache", "policy", package], package="apt", timeout=120)
        match = re.search(r"Candidate:\s*(\S+)", proc.stdout.decode())
        if match and match.group(1) != "(none)":
            return match.group(1)
        if self.update and os.geteuid() == 0:
            self.update = False  # once
            log.info("apt does not know %s; running apt-get update", package)
            tools.run(["apt-get", "update"], package="apt", timeout=600)
            return self._candidate(package)
        cached = sorted(p.name for p in (self.directory / package).glob("*") if (p / ".complete").exists()) \
            if (self.directory / package).is_dir() else []
        if len(cached) == 1:
            return cached[0].replace("%3a", ":")
        raise DataError(f"Debian package {package} is unknown to apt; run `apt-get update` as root (or rerun "
                        "with --install as root), or leave its source out")


def assert_splits(clips: list[Clip]) -> None:
    """Each speaker in exactly one split (guards the tables above against editing mistakes)."""
    seen: dict[str, str] = {}
    for c in clips:
        if c.speaker is None:
            continue
        if seen.setdefault(c.speaker, c.split) != c.split:
            raise DataError(f"speaker {c.speaker} is assigned to both {seen[c.speaker]} and {c.split}")
        if c.split not in SPLITS:
            raise DataError(f"speaker {c.speaker}: unknown split {c.split!r}")
