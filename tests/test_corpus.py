"""Tests of `steadyvoice corpus`: noise generators, levels, split tables, mixing, tool checks, tiny builds.

The tiny builds need Debian's espeak-ng, flite, festival (+ festvox-kallpc16k, festvox-kdlpc16k,
festvox-us-slt-hts) and sox; when one is missing they fail and name the apt-get command. The test of
the Debian data-package path downloads the small `kajongg` package (about 5 MB) with apt-get.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

from steadyvoice import audio
from steadyvoice.cli import main
from steadyvoice.config import from_dict
from steadyvoice.corpus import CorpusConfig, build_corpus, dsp, noise, sources, tools, tts
from steadyvoice.corpus.config import SPLITS
from steadyvoice.corpus.make import Context, make_mixture
from steadyvoice.corpus.plan import MixJob
from steadyvoice.errors import ConfigError, DataError

SR = 16000
TTS_ONLY = ["flite", "festival", "espeak-ng"]
SYNTH_NOISE = ["white", "pink", "brown", "hum", "clicks", "babble"]


# ---------------------------------------------------------------- pure python: noise and levels


def _slope_db_per_octave(x: np.ndarray, lo: float = 100.0, hi: float = 4000.0) -> float:
    f, p = welch(x, SR, nperseg=8192)
    keep = (f >= lo) & (f <= hi)
    return float(np.polyfit(np.log2(f[keep]), 10 * np.log10(p[keep]), 1)[0])


@pytest.mark.parametrize("exponent, slope", [(0.0, 0.0), (1.0, -3.01), (2.0, -6.02)])
def test_coloured_noise_spectral_slope(exponent, slope):
    x = noise.coloured(SR * 20, SR, exponent, np.random.default_rng(0))
    assert _slope_db_per_octave(x) == pytest.approx(slope, abs=0.3)


def test_colour_families_keep_their_slope_and_level():
    for family, slope in (("pink", -3.01), ("brown", -6.02)):
        for seed in range(4):  # some draws add a slow level modulation; the slope must survive it
            x, facts = noise.synthetic(family, SR * 10, SR, np.random.default_rng(seed))
            assert _slope_db_per_octave(x) == pytest.approx(slope, abs=0.5), (family, seed, facts)
            assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-30.0, abs=0.1)
            assert np.abs(x).max() <= dsp.MAX_PEAK


def test_hum_is_harmonic_at_mains_frequency():
    for seed in range(3):
        x, facts = noise.hum(SR * 4, SR, np.random.default_rng(seed))
        f, p = welch(x, SR, nperseg=SR)  # 1 Hz bins
        assert min(abs(facts["f0"] - 50.0), abs(facts["f0"] - 60.0)) < 0.31
        peak = f[np.argmax(p[:100])]
        assert abs(peak - facts["f0"]) <= 1.0
        second = p[round(2 * facts["f0"])]
        floor = np.median(p)
        assert second > 100 * floor  # the second harmonic stands far above the hiss


def test_clicks_are_impulsive():
    x, facts = noise.clicks(SR * 5, SR, np.random.default_rng(3))
    kurtosis = np.mean(x.astype(np.float64) ** 4) / np.mean(x.astype(np.float64) ** 2) ** 2
    assert facts["events"] > 0
    assert kurtosis > 10  # Gaussian noise has 3


def test_active_level_ignores_pauses():
    rng = np.random.default_rng(0)
    burst = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    short = np.concatenate([burst, np.zeros(SR // 2, np.float32), burst])
    long_ = np.concatenate([burst, np.zeros(SR * 4, np.float32), burst])
    assert dsp.active_level_db(short, SR) == pytest.approx(dsp.active_level_db(long_, SR), abs=0.05)
    y, level = dsp.set_active_level(long_, SR, -26.0)
    assert level == pytest.approx(-26.0)
    assert dsp.active_level_db(y, SR) == pytest.approx(-26.0, abs=0.05)


def test_set_active_level_respects_peak():
    x = np.zeros(SR, np.float32)
    x[100] = 1.0  # one spike: reaching -3 dBFS active level would clip
    y, level = dsp.set_active_level(x, SR, -3.0)
    assert np.abs(y).max() == pytest.approx(dsp.MAX_PEAK, rel=1e-6)
    assert level < -3.0


def test_trim_silence_keeps_margin():
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    x = np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(2 * SR, np.float32)])
    y = dsp.trim_silence(x, SR, margin=0.1)
    assert len(y) == pytest.approx(SR + 2 * 0.1 * SR, abs=0.02 * SR)


def test_highpass_removes_rumble_and_keeps_the_speech_band_in_place():
    t = np.arange(2 * SR) / SR
    speech_band = np.sin(2 * np.pi * 300 * t)
    x = (0.3 * speech_band + 0.5 * np.sin(2 * np.pi * 20 * t) + 0.1).astype(np.float32)  # + rumble + DC
    y = dsp.highpass(x, SR, 60.0)
    core = slice(SR // 2, 3 * SR // 2)  # away from the edges
    residual = y[core] - 0.3 * speech_band[core]
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.sqrt(np.mean(residual ** 2)) < 0.01  # rumble and DC gone, 300 Hz untouched and not delayed


# ---------------------------------------------------------------- pure python: config and split tables


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'hour'"):
        from_dict(CorpusConfig, {"hour": 1})
    with pytest.raises(ConfigError, match="hours"):
        from_dict(CorpusConfig, {"hours": -1})
    with pytest.raises(ConfigError, match="unknown source nope"):
        from_dict(CorpusConfig, {"speech": ["flite", "nope"]})
    with pytest.raises(ConfigError, match="TTS engine"):
        from_dict(CorpusConfig, {"speech": ["asterisk"]})


def test_real_speakers_each_in_one_split_and_every_split_has_some():
    splits = defaultdict(set)
    for src in sources.SPEECH_SOURCES.values():
        assert set(src.speakers) == set(src.patterns), src.name
        for speaker, split in src.speakers.items():
            splits[split].add(f"{src.name}/{speaker}")
    assert set(splits) == set(SPLITS)
    assert not (splits["train"] & splits["valid"]) and not (splits["train"] & splits["test"])
    assert not (splits["valid"] & splits["test"])


def test_tts_speakers_disjoint_and_same_person_same_split():
    voices = tts.voices(TTS_ONLY)
    split_of = {}
    for v in voices:
        assert split_of.setdefault(v.speaker, v.split) == v.split
    # espeak-ng: a variant (the timbre) never appears in two splits, whatever the accent
    variant_splits = defaultdict(set)
    for v in voices:
        if v.engine == "espeak-ng":
            variant_splits[v.name.split("+")[1]].add(v.split)
    assert all(len(s) == 1 for s in variant_splits.values())
    # the same recorded person behind two engines stays in one split
    assert split_of["flite/kal16"] == split_of["festival/kal_diphone"]
    assert split_of["flite/slt"] == split_of["festival/cmu_us_slt_arctic_hts"]
    assert {v.split for v in voices} == set(SPLITS)


def test_sentences_split_by_text():
    texts = tts.sentences()
    assert len(texts) == len(set(texts)) >= 300
    counts = {s: sum(tts.sentence_split(t) == s for t in texts) for s in SPLITS}
    assert counts["train"] > counts["valid"] >= 20 and counts["test"] >= 20
    assert all(t.isascii() for t in texts)


def test_noise_file_split_is_a_fixed_hash():
    assert sources.split_of_path("a/b.ogg") == sources.split_of_path("a/b.ogg")
    counts = defaultdict(int)
    for i in range(2000):
        counts[sources.split_of_path(f"sounds/{i}.ogg")] += 1
    assert 0.75 < counts["train"] / 2000 < 0.85 and counts["valid"] > 120 and counts["test"] > 120


# ---------------------------------------------------------------- pure python: test mixtures


def _loop(x: np.ndarray, offset: int, n: int) -> np.ndarray:
    return np.tile(x, -(-(n + len(x)) // len(x)))[offset:offset + n]


def _check_mixture(root: Path, row: dict) -> None:
    """noisy = speech + gain * noise[offset:], with 10 log10 P(speech)/P(gain * noise) = snr."""
    noisy = audio.read_audio(root / row["noisy"])[0][:, 0].astype(np.float64)
    clean = audio.read_audio(root / row["clean"])[0][:, 0].astype(np.float64)
    noise_file = audio.read_audio(root / row["noise"])[0][:, 0].astype(np.float64)
    assert len(noisy) == len(clean)
    noise_part = float(row["noise_gain"]) * _loop(noise_file, int(row["noise_offset"]), len(noisy))
    speech = noisy - noise_part
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise_part**2))
    assert snr == pytest.approx(float(row["snr_db"]), abs=0.05)
    if not int(row["reverberant"]):  # then the reference is the speech itself
        assert np.max(np.abs(speech - clean)) < 2.0 / 32768
    else:  # the reference (direct + early) correlates with, but differs from, the reverberant speech
        assert np.corrcoef(speech, clean)[0, 1] > 0.3
        assert np.max(np.abs(speech - clean)) > 1e-3


@pytest.mark.parametrize("with_room", [False, True])
def test_make_mixture_matches_recorded_snr(tmp_path, with_room):
    rng = np.random.default_rng(1)
    t = np.arange(3 * SR) / SR
    dry = (0.05 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio.write_audio(tmp_path / "test/clean/u.wav", dry, SR, subtype="PCM_16")
    x, _ = noise.synthetic("pink", 2 * SR, SR, rng)  # shorter than the speech: it loops
    audio.write_audio(tmp_path / "test/noise/n.wav", x, SR, subtype="PCM_16")
    room = None
    if with_room:
        from steadyvoice.corpus.rir import random_rir

        h, facts = random_rir(rng, SR, (0.3, 0.5))
        assert 0.1 < facts["rt60_measured"] < 1.0
        audio.write_audio(tmp_path / "test/rir/r.wav", h, SR, subtype="PCM_16")
        room = "test/rir/r.wav"
    ctx = Context(tmp_path, SR, 10 * SR, -26.0, 60.0, (0.2, 1.0))
    row = make_mixture(MixJob("u", "s", "x", "test/noise/n.wav", room, 5.0, (0, 1)), ctx)
    assert row["reverberant"] == int(with_room)
    _check_mixture(tmp_path, row)


# ---------------------------------------------------------------- missing tools


def test_missing_tools_give_the_apt_get_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(DataError) as err:
        tools.check(tts.required_tools(["flite", "espeak-ng"]), install=False)
    message = str(err.value)
    assert "flite (Debian package flite)" in message and "espeak-ng (Debian package espeak-ng)" in message
    assert "apt-get install -y --no-install-recommends espeak-ng flite sox" in message
    with pytest.raises(DataError, match=r"^sox not found: apt-get install sox$"):
        tools.run(["sox", "--version"], package="sox")


def test_cli_reports_missing_tool_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    code = main(["corpus", str(tmp_path / "out"), "--hours", "0.01", "--speech", "flite", "--noise", "white"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: missing ") and "flite (Debian package flite)" in err
    assert "apt-get install -y --no-install-recommends flite sox" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# ---------------------------------------------------------------- tiny builds with the real TTS engines


def _require_tts_tools():
    absent = tools.missing(tts.required_tools(TTS_ONLY))
    if absent:
        pkgs = " ".join(sorted({r.package for r in absent}))
        pytest.fail(f"these tests need Debian's TTS tools: apt-get install {pkgs}")


TINY = {"hours": 0.006, "speech": TTS_ONLY, "noise": SYNTH_NOISE, "min_rirs": 2, "min_noise_files": 4,
        "noise_seconds": 3.0, "test_reverb_prob": 0.5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The same tiny corpus built twice (API with 2 workers, CLI-equivalent with 1), and one with another seed."""
    _require_tts_tools()
    base = tmp_path_factory.mktemp("corpus")
    a = build_corpus(CorpusConfig(seed=7, **TINY), base / "a", workers=2, progress=False)
    b = build_corpus(CorpusConfig(seed=7, **TINY), base / "b", workers=1, progress=False)
    c = build_corpus(CorpusConfig(seed=8, **TINY), base / "c", workers=2, progress=False)
    return a, b, c


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_files(tiny):
    a, b, c = tiny
    fa, fb, fc = _files(a.out_dir), _files(b.out_dir), _files(c.out_dir)
    assert fa == fb  # every byte, manifest included, whatever the number of workers
    wavs_a = {k: v for k, v in fa.items() if k.endswith(".wav")}
    wavs_c = {k: v for k, v in fc.items() if k.endswith(".wav")}
    assert len(wavs_a) > 20
    assert sum(1 for k in wavs_a if wavs_c.get(k) == wavs_a[k]) == 0  # no file the same


def test_speakers_disjoint_across_splits(tiny):
    manifest = tiny[0].manifest
    speakers = defaultdict(set)
    for r in manifest["files"]:
        if r["kind"] == "clean":
            speakers[r["split"]].add(r["speaker"])
    assert all(speakers[s] for s in SPLITS)
    assert not (speakers["train"] & speakers["valid"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["valid"] & speakers["test"])
    for r in manifest["files"]:
        if r["kind"] == "noise" and r["family"] == "babble":  # babble only from its own split's voices
            assert set(r["talker_speakers"]) <= speakers[r["split"]]


def test_manifest_lists_every_file_with_its_facts(tiny):
    root, manifest = tiny[0].out_dir, tiny[0].manifest
    assert json.loads((root / "manifest.json").read_text()) == manifest
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.wav")}
    listed = {r["path"] for r in manifest["files"]}
    assert on_disk == listed
    for r in manifest["files"]:
        for key in ("split", "kind", "source", "licence", "duration", "sample_rate"):
            assert r.get(key) not in (None, ""), (r["path"], key)
        info = audio.info(root / r["path"])
        assert (info.sample_rate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert info.duration == pytest.approx(r["duration"], abs=1e-3)
        if r["kind"] in ("clean", "noisy"):
            assert r["speaker"]
        if r["kind"] == "clean":
            assert r["tts"]["engine"] in TTS_ONLY and r["text"]
            if not r.get("reverberant"):
                assert dsp.active_level_db(audio.read_audio(root / r["path"])[0][:, 0], SR) == \
                    pytest.approx(-26.0, abs=0.3)
    for split in SPLITS:
        for kind in ("clean", "noise", "rir"):
            names = (root / split / f"{kind}.txt").read_text().split()
            assert sorted(names) == sorted(p.split("/", 1)[1] for p in listed if p.startswith(f"{split}/{kind}/"))
    assert manifest["versions"]["debian"]["flite"] and manifest["versions"]["python"]["numpy"]
    assert manifest["request"]["config"]["seed"] == 7


def test_test_set_noisy_is_clean_plus_noise_at_recorded_snr(tiny):
    root = tiny[0].out_dir
    with open(root / "test" / "mixtures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["name"] + ".wav" for r in rows} == set(os.listdir(root / "test" / "noisy"))
    assert set(os.listdir(root / "test" / "noisy")) == set(os.listdir(root / "test" / "clean"))
    for row in rows:
        assert float(row["snr_db"]) in CorpusConfig().test_snrs
        assert row["noise"].startswith("test/noise/") and (not row["rir"] or row["rir"].startswith("test/rir/"))
        _check_mixture(root, row)


def test_rerun_is_a_noop_and_other_arguments_are_refused(tiny, capsys):
    a = tiny[0]
    before = _files(a.out_dir)
    again = build_corpus(CorpusConfig(seed=7, **TINY), a.out_dir, progress=False)
    assert again.already_built and _files(a.out_dir) == before
    with pytest.raises(DataError, match=r"other arguments \(.*seed 7 -> 9"):
        build_corpus(CorpusConfig(seed=9, **TINY), a.out_dir, progress=False)


def test_cli_builds_and_then_does_nothing(tmp_path, capsys):
    _require_tts_tools()
    out = tmp_path / "cli"
    args = ["corpus", str(out), "--hours", "0.004", "--seed", "3", "--speech", *TTS_ONLY, "--noise", "white",
            "babble", "--quiet", "--workers", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"built {out}" in printed and "train:" in printed and "test :" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"].startswith(f"steadyvoice corpus {out} --hours 0.004 --seed 3")
    assert not (tmp_path / "cli.partial").exists()
    assert main(args) == 0
    assert "already built with these arguments; nothing to do" in capsys.readouterr().out


def test_cli_rejects_a_bad_request(tmp_path, capsys):
    assert main(["corpus", str(tmp_path / "x"), "--hours", "0"]) == 2
    assert "hours=0.0: must be in (0, 1000]" in capsys.readouterr().err


# ---------------------------------------------------------------- the Debian data-package path


def test_fetches_a_debian_data_package_and_assigns_speakers(tmp_path):
    absent = tools.missing(list(tools.APT_TOOLS))
    if absent:
        pytest.fail("needs apt-get and dpkg-deb (a Debian system)")
    cache = sources.PackageCache(tmp_path / "cache")
    src = sources.SPEECH_SOURCES["kajongg"]
    pkg = cache.get(src.package)  # installed, or downloaded with apt-get and unpacked
    assert pkg.version
    clips = sources.speech_clips(src, pkg)
    by_speaker = defaultdict(list)
    for clip in clips:
        by_speaker[clip.speaker].append(clip)
        assert "/de/" not in clip.relpath  # the German voices are left out
    assert set(by_speaker) == {f"kajongg/{s}" for s in src.speakers}
    assert all(len(v) >= 30 for v in by_speaker.values())
    sources.assert_splits(clips)
    x = dsp.load_mono(clips[0].path, SR)
    assert len(x) > SR // 4 and np.abs(x).max() > 0.01
