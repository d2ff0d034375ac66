"""bench/separation.py on a tiny synthetic corpus (3 test speakers) with a tiny random-weight separation model.

The model is a TEST FIXTURE: it only exercises the pipeline (plan -> render -> separate -> score -> report);
its figures mean nothing. What is checked: mixtures are a pure function of the seed, pair two different
speakers of the manifest, overlap and level as constructed; scoring resolves the talker order; the report
has every bucket.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from steadyvoice.audio import write_audio
from steadyvoice.models import build_model, get_config, save_pretrained

SR = 16000
# speaker, source, seconds of each of its test files (speaker "x" is in the train split: never used)
SPEAKERS = [("hedgewars/A", "hedgewars", (0.7, 1.3)), ("kajongg/B", "kajongg", (0.5,)),
            ("espeak-ng/C", "tts:espeak-ng", (0.9, 0.6))]
SECONDS = 1.0


def _load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "separation.py"
    spec = importlib.util.spec_from_file_location("bench_separation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def voice(seconds: float, f0: float) -> np.ndarray:
    """Harmonics of f0 with a syllable-rate envelope that never reaches zero."""
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 + 15 * np.sin(2 * np.pi * 0.7 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    records, n = [], 0
    for s, (speaker, source, lengths) in enumerate(SPEAKERS + [("hedgewars/X", "hedgewars", (1.0,))]):
        split = "train" if speaker.endswith("X") else "test"
        for seconds in lengths:
            path = f"{split}/clean/{n:05d}_{speaker.replace('/', '_')}.wav"
            write_audio(root / path, voice(seconds, 100.0 + 45 * s), SR)
            records.append({"path": path, "split": split, "kind": "clean", "speaker": speaker, "source": source,
                            "duration": seconds, "sample_rate": SR})
            n += 1
    (root / "manifest.json").write_text(json.dumps({"format": "steadyvoice-corpus", "files": records}))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    cfg = dataclasses.replace(get_config("mossformer2-ss-16k-small"), encoder_dim=16, model_dim=16, num_blocks=1,
                              query_key_dim=8, rotary_dim=4, fsmn_inner_dim=16, expansion_factor=1.0)
    directory = tmp_path_factory.mktemp("model") / "tiny-ss"
    save_pretrained(build_model(cfg), cfg, directory)
    return directory


def plan(corpus: Path, count: int, seed: int):
    files, sr = bench.test_speech(corpus)
    return bench.plan_mixtures(files, sr, count, seed, SECONDS, 5.0), bench.AudioCache(corpus, sr)


def test_same_seed_same_mixtures_and_count_gives_a_prefix(corpus):
    specs, audio = plan(corpus, 12, seed=3)
    again, audio_again = plan(corpus, 12, seed=3)
    assert specs == again
    for a, b in zip(specs, again):
        for x, y in zip(bench.render(a, audio), bench.render(b, audio_again)):
            np.testing.assert_array_equal(x, y)
    assert plan(corpus, 5, seed=3)[0] == specs[:5]
    other = plan(corpus, 12, seed=4)[0]
    assert [s.talkers for s in other] != [s.talkers for s in specs]
    assert [(s.overlap_target, s.kind) for s in other] == [(s.overlap_target, s.kind) for s in specs]  # the design


def test_mixtures_are_as_constructed(corpus):
    files, _ = bench.test_speech(corpus)
    assert {f.speaker for f in files} == {s for s, _, _ in SPEAKERS}  # the train split is never read
    speaker_of = {f.path: f.speaker for f in files}
    real = {s: not src.startswith("tts:") for s, src, _ in SPEAKERS}
    specs, audio = plan(corpus, 27, seed=0)
    frames = round(SECONDS * SR)
    assert bench.available_kinds(files) == ["real+real", "real+tts"]  # one TTS speaker: no TTS + TTS pair
    for i, spec in enumerate(specs):
        one, two = spec.talkers
        assert one.speaker != two.speaker
        for t in spec.talkers:
            assert {speaker_of[p] for p in t.files} == {t.speaker}
            assert t.real == real[t.speaker]
        assert spec.kind == ("real+real", "real+tts")[(i // 9) % 2]
        assert (one.real, two.real) in ({"real+real": [(True, True)]}.get(spec.kind) or [(True, False), (False, True)])
        # overlap: talker 1 from the start, talker 2 to the end, overlapping by r of the mixture
        assert spec.overlap_target == bench.OVERLAPS[i % 3]
        assert one.start == 0 and two.start + two.length == frames and one.length == two.length
        assert one.length + two.length - frames == pytest.approx(spec.overlap_target * frames, abs=1)
        assert spec.overlap == pytest.approx(spec.overlap_target, abs=1 / frames)
        # level difference in its bucket, and as rendered
        low, high = bench.level_buckets(5.0)[(i // 3) % 3]
        assert low <= abs(spec.level_diff_db) <= high
        mixture, refs = bench.render(spec, audio)
        assert mixture.shape == (frames,) and refs.shape == (2, frames)
        np.testing.assert_allclose(mixture, refs.sum(0), atol=1e-6)
        for k, t in enumerate(spec.talkers):
            inside = refs[k, t.start : t.start + t.length]
            assert not refs[k, : t.start].any() and not refs[k, t.start + t.length :].any()
            assert np.abs(inside[:80]).max() > 0 and np.abs(inside[-80:]).max() > 0  # speech up to both ends
        rms = [math.sqrt(np.mean(refs[k, t.start : t.start + t.length].astype(np.float64) ** 2))
               for k, t in enumerate(spec.talkers)]
        assert 20 * math.log10(rms[1] / rms[0]) == pytest.approx(spec.level_diff_db, abs=1e-3)
    assert {round(s.overlap_target, 3) for s in specs} == {1.0, 0.667, 0.333}
    assert any(len(t.files) > 1 for s in specs for t in s.talkers)  # short speakers: files joined
    assert any(s.level_diff_db > 0 for s in specs) and any(s.level_diff_db < 0 for s in specs)


def test_scoring_resolves_the_talker_order(corpus):
    specs, audio = plan(corpus, 1, seed=0)
    mixture, refs = bench.render(specs[0], audio)
    scores = bench.score_mixture(mixture, refs, refs[::-1].copy())  # outputs in the other order
    assert scores["order"] == [1, 0]
    assert min(scores["si_sdr_talkers"]) > 100  # each output is its talker
    assert scores["si_sdri"] == pytest.approx(scores["si_sdr"] - scores["mixture_si_sdr"])
    level = specs[0].level_diff_db  # the louder talker is the clearer one in the mixture
    assert (scores["mixture_si_sdr_talkers"][1] > scores["mixture_si_sdr_talkers"][0]) == (level > 0)


def test_report_has_every_bucket(corpus, model, tmp_path, capsys):
    out_json, out_csv = tmp_path / "sep.json", tmp_path / "sep.csv"
    code = bench.main(["--corpus", str(corpus), "--model", str(model), "--count", "12", "--seconds", str(SECONDS),
                       "--seed", "1", "--json", str(out_json), "--csv", str(out_csv)])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    groups = {g["key"]: g for g in report["groups"]}
    assert list(groups) == ["all", "overlap_100", "overlap_67", "overlap_33", "level_0", "level_1", "level_2",
                            "real_real", "real_tts", "louder", "quieter"]
    assert groups["all"]["mixtures"] == 12
    assert [groups[f"overlap_{p}"]["mixtures"] for p in (100, 67, 33)] == [4, 4, 4]
    assert [groups[f"level_{k}"]["mixtures"] for k in range(3)] == [6, 3, 3]  # (i // 3) % 3: 0,0,0,1,1,1,2,2,2,0,0,0
    assert groups["real_real"]["mixtures"] == 9 and groups["real_tts"]["mixtures"] == 3
    for g in groups.values():
        assert g["si_sdri"]["mean"] == pytest.approx(g["si_sdr"]["mean"] - g["mixture_si_sdr"]["mean"], abs=1e-9)
    assert groups["louder"]["mixture_si_sdr"]["mean"] > groups["quieter"]["mixture_si_sdr"]["mean"]
    assert report["rtf"]["rtf_wall"] > 0 and report["rtf"]["audio_seconds"] == pytest.approx(12 * SECONDS)
    for g in report["groups"]:
        assert f"| {g['label']} |" in printed or f"| **{g['label']}** |" in printed
    assert "Real-time factor on one core" in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == [f"mix{i:04d}" for i in range(12)]
    assert all(r["status"] == "ok" and r["speaker_1"] != r["speaker_2"] for r in rows)
