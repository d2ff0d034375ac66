"""Text-to-speech voices from Debian's flite, festival and espeak-ng, randomised in pitch, rate and EQ.

A *speaker* is one voice of one engine (espeak-ng: voice + variant). Voices that share a human source
share a split: flite ``kal16`` and festival ``kal_diphone`` are both Kevin Lenzo, flite ``slt`` and
festival ``cmu_us_slt_arctic_hts`` both SLT, so both pairs are train-only. Pitch and rate use each
engine's own controls (no resynthesis artefacts); the equalisation is a random sox chain of
high-pass, peaking and shelving filters, run with ``-R`` (repeatable) and float output (no dither).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from steadyvoice import audio
from steadyvoice.corpus import tools
from steadyvoice.errors import DataError


@dataclass(frozen=True)
class Voice:
    engine: str  # flite | festival | espeak-ng
    name: str  # engine's voice name (espeak-ng: "<voice>+<variant>")
    split: str
    package: str  # Debian package holding the voice
    licence: str
    f0: float | None = None  # mean F0 (Hz) the engine lets us move, None = pitch not controllable

    @property
    def speaker(self) -> str:
        return f"{self.engine}/{self.name}"


_FLITE_LICENCE = "BSD-style (CMU flite)"
_FESTVOX_LICENCE = "BSD-style (festvox / CSTR Edinburgh)"
_ESPEAK_LICENCE = "GPL-3+ (espeak-ng)"

# espeak-ng English voices (accents) and the variants that sound like a person (robotic, whispering and
# croaking variants are left out). A speaker is voice + variant; each variant belongs to one split.
ESPEAK_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp",
                  "en-029", "en-us-nyc")
ESPEAK_VARIANTS_VALID = ("f2", "m4", "Andy", "belinda", "quincy")
ESPEAK_VARIANTS_TEST = ("f4", "m6", "Alicia", "john", "steph")
ESPEAK_VARIANTS_TRAIN = ("m1", "m2", "m3", "m5", "m7", "f1", "f3", "f5", "adam", "Alex", "Andrea", "Annie",
                         "aunty", "benjamin", "boris", "caleb", "david", "ed", "edward", "Gene", "grandma",
                         "grandpa", "iven", "Lee", "linda", "max", "Michael", "Mike", "norbert", "paul", "rob",
                         "robert", "shelby", "travis", "victor", "zac")


def voices(engines: list[str]) -> list[Voice]:
    """Every TTS speaker of the chosen engines, with its split."""
    out: list[Voice] = []
    if "flite" in engines:
        # kal (8 kHz) is left out: kal16 is the same voice at 16 kHz. awb_time only says the time.
        out += [Voice("flite", "kal16", "train", "flite", _FLITE_LICENCE, 90.0),
                Voice("flite", "slt", "train", "flite", _FLITE_LICENCE, 170.0),
                Voice("flite", "awb", "train", "flite", _FLITE_LICENCE, 130.0),
                Voice("flite", "rms", "valid", "flite", _FLITE_LICENCE, None)]  # rms ignores the f0 setting
    if "festival" in engines:
        out += [Voice("festival", "kal_diphone", "train", "festvox-kallpc16k", _FESTVOX_LICENCE, 105.0),
                Voice("festival", "ked_diphone", "train", "festvox-kdlpc16k", _FESTVOX_LICENCE, 105.0),
                Voice("festival", "cmu_us_slt_arctic_hts", "train", "festvox-us-slt-hts", _FESTVOX_LICENCE, None)]
    if "espeak-ng" in engines:
        for split, variants in (("train", ESPEAK_VARIANTS_TRAIN), ("valid", ESPEAK_VARIANTS_VALID),
                                ("test", ESPEAK_VARIANTS_TEST)):
            for variant in variants:
                for accent in ESPEAK_ACCENTS:
                    out.append(Voice("espeak-ng", f"{accent}+{variant}", split, "espeak-ng-data", _ESPEAK_LICENCE))
    return out


_FESTIVAL_VOICE_DIRS = {
    "festvox-kallpc16k": "/usr/share/festival/voices/english/kal_diphone",
    "festvox-kdlpc16k": "/usr/share/festival/voices/english/ked_diphone",
    "festvox-us-slt-hts": "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
}


def required_tools(engines: list[str]) -> list[tools.Requirement]:
    reqs = [tools.Requirement("sox", program="sox")]
    if "flite" in engines:
        reqs.append(tools.Requirement("flite", program="flite"))
    if "festival" in engines:
        reqs.append(tools.Requirement("festival", program="text2wave"))
        reqs += [tools.Requirement(pkg, path=path) for pkg, path in _FESTIVAL_VOICE_DIRS.items()]
    if "espeak-ng" in engines:
        reqs.append(tools.Requirement("espeak-ng", program="espeak-ng"))
    return reqs


# ---------------------------------------------------------------- texts


def sentences() -> list[str]:
    """The committed English sentences (texts/sentences_en.txt)."""
    text = resources.files("steadyvoice.corpus").joinpath("texts/sentences_en.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def sentence_split(sentence: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Fixed split of a sentence (hash of its text), so no sentence is spoken in two splits."""
    bucket = int(hashlib.sha1(sentence.encode()).hexdigest()[:8], 16) / 2**32
    if bucket < fractions[0]:
        return "train"
    return "valid" if bucket < fractions[0] + fractions[1] else "test"


# ---------------------------------------------------------------- random rendition


@dataclass(frozen=True)
class Rendition:
    """How one utterance is spoken: rate (duration factor), pitch and the sox equaliser chain."""

    stretch: float  # >1 = slower
    pitch: float  # F0 factor (flite/festival) or espeak-ng -p value (0-99)
    eq: tuple[str, ...]  # sox effect arguments


def draw_rendition(voice: Voice, rng: np.random.Generator) -> Rendition:
    stretch = float(rng.uniform(0.85, 1.2))
    if voice.engine == "espeak-ng":
        pitch = float(rng.integers(25, 76))
    else:
        pitch = float(math.exp(rng.uniform(-0.2, 0.2)))
    eq: list[str] = []
    if rng.random() < 0.5:
        eq += ["highpass", f"{rng.uniform(60, 200):.0f}"]
    for _ in range(int(rng.integers(1, 4))):
        freq = math.exp(rng.uniform(math.log(150), math.log(6000)))
        eq += ["equalizer", f"{freq:.0f}", f"{rng.uniform(0.7, 2.0):.2f}q", f"{rng.uniform(-8, 8):.1f}"]
    eq += ["bass", f"{rng.uniform(-5, 5):.1f}", "treble", f"{rng.uniform(-6, 4):.1f}"]
    return Rendition(round(stretch, 3), round(pitch, 3), tuple(eq))


def estimate_seconds(text: str, rendition: Rendition) -> float:
    """Rough spoken duration used to plan how many utterances fill a budget (about 17.5 characters/s)."""
    return len(text) / 17.5 * rendition.stretch + 0.3


# ---------------------------------------------------------------- synthesis


def synthesize(voice: Voice, text: str, rendition: Rendition) -> tuple[np.ndarray, int]:
    """Speak ``text`` -> (float32 mono samples, sample rate), equalised."""
    with tempfile.TemporaryDirectory(prefix="sv-tts-") as tmp:
        raw, eqd, txt = Path(tmp, "raw.wav"), Path(tmp, "eq.wav"), Path(tmp, "text.txt")
        txt.write_text(text + "\n", encoding="utf-8")
        tools.run(_command(voice, rendition, txt, raw), package=voice.package if voice.engine != "festival"
                  else "festival", timeout=120)
        if not raw.exists() or raw.stat().st_size <= 44:
            raise DataError(f"{voice.engine} ({voice.name}) wrote no audio for {text!r}")
        tools.run(["sox", "-R", "-D", "-G", str(raw), "-e", "floating-point", "-b", "32", str(eqd),
                   *rendition.eq], package="sox", timeout=120)
        data, sr = audio.read_audio(eqd)
    return data[:, 0], sr


def _command(voice: Voice, r: Rendition, text_file: Path, out: Path) -> list[str]:
    if voice.engine == "espeak-ng":
        wpm = round(175 / r.stretch)
        return ["espeak-ng", "-v", voice.name, "-p", str(int(r.pitch)), "-s", str(wpm), "-w", str(out),
                "-f", str(text_file)]
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={r.stretch}"]
        if voice.f0 is not None:
            cmd += ["--setf", f"int_f0_target_mean={voice.f0 * r.pitch:.1f}"]
        return cmd + ["-f", str(text_file), "-o", str(out)]
    if voice.engine == "festival":
        evals = [f"(voice_{voice.name})"]
        if voice.f0 is None:  # HTS voice: its own speed control, no pitch control
            speed = f"(list \"-r\" {1 / r.stretch:.3f})"
            evals.append(f"(set! hts_engine_params (append hts_engine_params (list {speed})))")
        else:
            evals.append(f"(Parameter.set 'Duration_Stretch {r.stretch})")
            evals.append(f"(set! int_lr_params (cons (list 'target_f0_mean {voice.f0 * r.pitch:.1f}) "
                         "(cdr int_lr_params)))")
        cmd = ["text2wave"]
        for e in evals:
            cmd += ["-eval", e]
        return cmd + [str(text_file), "-o", str(out)]
    raise DataError(f"unknown TTS engine {voice.engine!r}")


def engine_versions(engines: list[str]) -> dict[str, str | None]:
    """Debian package versions of the engines and voices (for the manifest)."""
    pkgs = {"sox"}
    for v in voices(engines):
        pkgs.add(v.package)
    if "flite" in engines:
        pkgs.add("libflite1")
    if "festival" in engines:
        pkgs.add("festival")
    if "espeak-ng" in engines:
        pkgs.update({"espeak-ng", "libespeak-ng1"})
    return {p: tools.package_version(p) for p in sorted(pkgs)}
