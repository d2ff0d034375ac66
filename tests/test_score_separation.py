"""`steadyvoice score --separation`: permutation-resolved SI-SDR per talker, SI-SDRi, grouping, errors."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from steadyvoice.audio import read_audio, write_audio
from steadyvoice.cli import main
from steadyvoice.eval import separation as sep
from steadyvoice.eval.metrics import si_sdr, stoi
from steadyvoice.eval.separation import best_order, pit_si_sdr, score_separation

SR = 16000


def voice(seconds: float, seed: int) -> np.ndarray:
    """A harmonic talker stand-in: its own pitch and syllable rhythm per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 100 + 37 * seed + 20 * np.sin(2 * np.pi * (0.4 + 0.1 * seed) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    harmonics = sum(np.sin(k * phase) * np.exp(-k / 8) for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * (3 + 0.7 * seed) * t + seed), 0, None)
    x = harmonics * envelope + 1e-3 * rng.standard_normal(t.shape[0])
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def leak(x: np.ndarray, other: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """An imperfect separation of x: some of the other talker and a little noise."""
    n = np.random.default_rng(seed).standard_normal(x.shape[0]).astype(np.float32)
    return (x + amount * other + 0.01 * n).astype(np.float32)


def read(path: Path) -> np.ndarray:
    return read_audio(path)[0][:, 0].astype(np.float64)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---- PIT on arrays ---------------------------------------------------------------------------------------


def test_pit_resolves_the_order_and_scores_like_si_sdr():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((4, 4000))
    true = np.array([2, 0, 3, 1])  # estimate true[s] holds talker s
    ests = np.empty_like(refs)
    for s in range(4):
        ests[true[s]] = refs[s] + (0.1 + 0.1 * s) * rng.standard_normal(4000) + 0.05 * refs[(s + 1) % 4]
    scores, order = pit_si_sdr(ests, refs)
    assert order.tolist() == true.tolist()
    assert scores == pytest.approx([si_sdr(ests[true[s]], refs[s]) for s in range(4)], abs=1e-12)
    # Multi-channel (S, N, C): the channel mean of SI-SDR, the same order.
    stereo_scores, stereo_order = pit_si_sdr(np.stack([ests, ests[:, ::-1]], -1), np.stack([refs, refs[:, ::-1]], -1))
    assert stereo_order.tolist() == true.tolist()
    assert stereo_scores[0] == pytest.approx((si_sdr(ests[2], refs[0]) + si_sdr(ests[2][::-1], refs[0][::-1])) / 2)


def test_best_order_is_the_exhaustive_maximum_of_the_mean(monkeypatch):
    rng = np.random.default_rng(1)
    for talkers in (1, 2, 3, 4):
        for _ in range(20):
            m = rng.normal(size=(talkers, talkers))
            brute = max(itertools.permutations(range(talkers)),
                        key=lambda o: np.mean([m[o[s], s] for s in range(talkers)]))
            assert best_order(m).tolist() == list(brute)
    assert best_order(np.zeros((3, 3))).tolist() == [0, 1, 2]  # ties: the first order, as in training
    monkeypatch.setattr(sep, "EXHAUSTIVE_MAX_TALKERS", 1)  # the assignment solver finds the same optimum
    for _ in range(20):
        m = rng.normal(size=(4, 4))
        exhaustive = list(max(itertools.permutations(range(4)), key=lambda o: sum(m[o[s], s] for s in range(4))))
        assert best_order(m).tolist() == exhaustive


def test_pit_refuses_mismatched_shapes():
    with pytest.raises(Exception, match=r"same shape"):
        pit_si_sdr(np.ones((2, 100)), np.ones((3, 100)))


# ---- directories -----------------------------------------------------------------------------------------

# mixture -> (talker seeds, the estimate file number holding each reference talker)
GROUPS = {
    "m1": ((1, 2), (2, 1)),             # swapped
    "sub/m2": ((3, 4), (1, 2)),         # in order
    "m3": ((5, 6, 7), (3, 1, 2)),       # three talkers, rotated
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sep")
    for g, (group, (seeds, where)) in enumerate(GROUPS.items()):
        talkers = [voice(1.2, seed) for seed in seeds]
        mixture = sum(talkers)
        write_audio(root / "mix" / f"{group}.wav", mixture, SR, subtype="FLOAT")
        for s, x in enumerate(talkers):
            write_audio(root / "ref" / f"{group}_s{s + 1}.wav", x, SR, subtype="FLOAT")
            other = talkers[(s + 1) % len(talkers)]
            ext = "flac" if group == "sub/m2" and s == 0 else "wav"  # any audio extension matches
            write_audio(root / "est" / f"{group}_s{where[s]}.{ext}", leak(x, other, 0.1 + 0.05 * s, 10 * g + s),
                        SR, subtype="FLOAT" if ext == "wav" else None)
    return root


def expected(root: Path, group: str) -> dict:
    """Direct computation from the files: per reference talker, its estimate's and the mixture's SI-SDR."""
    seeds, where = GROUPS[group]
    mix = read(root / "mix" / f"{group}.wav")
    out = {"est": [], "mix": [], "stoi": []}
    for s in range(len(seeds)):
        ref = read(root / "ref" / f"{group}_s{s + 1}.wav")
        est_path = next((root / "est").glob(f"{group}_s{where[s]}.*"))
        est = read(est_path)
        out["est"].append(si_sdr(est, ref))
        out["mix"].append(si_sdr(mix, ref))
        out["stoi"].append(stoi(est, ref, SR))
    return out


def test_cli_scores_separated_talkers(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["score", "--separation", "--reference", str(tree / "ref"), "--estimate", str(tree / "est"),
               "--mixture", str(tree / "mix"), "--metrics", "stoi", "--csv", str(out / "s.csv"),
               "--json", str(out / "s.json"), "--plot", str(out / "s.png"), "--jobs", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "error" not in captured.err

    rows = read_csv(out / "s.csv")
    per_talker = [f"s{k}_{c}" for k in (1, 2, 3) for c in ("si_sdr", "stoi", "si_sdri")]
    assert list(rows[0]) == (["file", "status", "sample_rate", "seconds", "talkers", "order", "si_sdr", "stoi",
                              "mixture_si_sdr", "mixture_stoi", "si_sdri"] + per_talker + ["notes", "error"])
    assert [r["file"] for r in rows] == ["m1.wav", "m3.wav", "sub/m2.wav"]  # sorted, named like the mixture
    by_file = {r["file"].rsplit(".", 1)[0]: r for r in rows}
    assert by_file["m1"]["order"] == "s2 s1"  # reference s1 is in estimate _s2: the permutation is resolved
    assert by_file["sub/m2"]["order"] == "s1 s2"
    assert by_file["m3"]["order"] == "s3 s1 s2"
    all_est, all_gain = [], []
    for group, row in by_file.items():
        want = expected(tree, group)
        talkers = len(GROUPS[group][0])
        assert row["status"] == "ok" and row["talkers"] == str(talkers) and row["sample_rate"] == str(SR)
        for s in range(talkers):
            assert float(row[f"s{s + 1}_si_sdr"]) == pytest.approx(want["est"][s], abs=1e-4)
            assert float(row[f"s{s + 1}_si_sdri"]) == pytest.approx(want["est"][s] - want["mix"][s], abs=1e-4)
            assert float(row[f"s{s + 1}_stoi"]) == pytest.approx(want["stoi"][s], abs=1e-4)
            assert float(row[f"s{s + 1}_si_sdri"]) > 5  # the estimates are far better than the mixture
        assert float(row["si_sdr"]) == pytest.approx(np.mean(want["est"]), abs=1e-4)
        assert float(row["mixture_si_sdr"]) == pytest.approx(np.mean(want["mix"]), abs=1e-4)
        assert float(row["si_sdri"]) == pytest.approx(np.mean(want["est"]) - np.mean(want["mix"]), abs=1e-4)
        if talkers == 2:
            assert row["s3_si_sdr"] == row["s3_si_sdri"] == ""
        all_est.append(np.mean(want["est"]))
        all_gain.append(np.mean(want["est"]) - np.mean(want["mix"]))

    summary = json.loads((out / "s.json").read_text())
    assert summary["task"] == "separation"
    assert summary["mixtures"] == {"total": 3, "scored": 3, "failed": 0}
    assert summary["talkers"] == 7
    assert summary["columns"] == ["si_sdr", "stoi"]
    assert summary["estimate"]["si_sdr"]["mean"] == pytest.approx(np.mean(all_est), abs=1e-6)
    assert summary["estimate"]["si_sdr"]["std"] == pytest.approx(np.std(all_est, ddof=1), abs=1e-6)
    assert summary["estimate"]["si_sdr"]["count"] == 3
    assert summary["si_sdri"]["mean"] == pytest.approx(np.mean(all_gain), abs=1e-6)
    assert summary["improvement"]["si_sdr"] == summary["si_sdri"]
    assert summary["per_talker"]["estimate"]["si_sdr"]["count"] == 7
    assert summary["failures"] == []

    table = captured.out.splitlines()
    assert table[0].split() == ["metric", "estimate", "mixture", "improvement", "mixtures"]
    assert f"{summary['si_sdri']['mean']:+.3f}" in next(line for line in table if line.startswith("si_sdr "))
    assert any(line.startswith("SI-SDRi") for line in table)
    assert "3 of 3 mixtures scored (7 talkers)" in captured.out
    assert (out / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_mixture_and_in_worker_processes(tree):
    serial = score_separation(tree / "ref", tree / "est", None, jobs=1)
    assert serial.columns == ["si_sdr"] and not serial.has_mixture
    assert "mixture" not in serial.summary and "si_sdri" not in serial.summary
    row = next(r for r in serial.rows if r["file"] == "m1.wav")
    want = expected(tree, "m1")
    assert row["order"] == ["s2", "s1"]
    assert [t["estimate"]["si_sdr"] for t in row["per_talker"]] == pytest.approx(want["est"], abs=1e-9)
    assert [t["estimate_file"] for t in row["per_talker"]] == ["m1_s2.wav", "m1_s1.wav"]
    parallel = score_separation(tree / "ref", tree / "est", None, jobs=2)
    assert [(r["file"], r["order"], r["estimate"]) for r in parallel.rows] == \
           [(r["file"], r["order"], r["estimate"]) for r in serial.rows]


# ---- per-mixture errors and exit codes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> Path:
    """One good mixture and one of every per-mixture problem."""
    root = tmp_path_factory.mktemp("sepbad")
    ref, est, mix = root / "ref", root / "est", root / "mix"
    a, b = voice(1.0, 1), voice(1.0, 2)

    def group(name, refs=(a, b), ests=None, mixture=True):
        for s, x in enumerate(refs):
            write_audio(ref / f"{name}_s{s + 1}.wav", x, SR)
        for s, x in enumerate(ests if ests is not None else [leak(b, a, 0.1, 1), leak(a, b, 0.1, 2)]):
            if x is not None:
                write_audio(est / f"{name}_s{s + 1}.wav", x, SR)
        if mixture:
            write_audio(mix / f"{name}.wav", a + b, SR)

    group("good")
    group("short", ests=[leak(b, a, 0.1, 1)[:-80], leak(a, b, 0.1, 2)[:-80]])  # within the tolerance: a note
    group("gap", ests=[None, leak(a, b, 0.1, 2)])  # estimate _s1 missing
    group("three", ests=[leak(b, a, 0.1, 1), leak(a, b, 0.1, 2), a])  # 3 estimates for 2 talkers
    group("long", ests=[leak(b, a, 0.1, 1), np.concatenate([a, a[: SR // 2]])])
    group("broken")
    (est / "broken_s2.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    group("nomix", mixture=False)
    group("silent", refs=(a, np.zeros_like(b)))
    group("noest", ests=[None, None])
    write_audio(est / "stray.wav", a, SR)  # not a talker file
    return root


def test_each_bad_mixture_gets_its_own_error_line(bad_tree, tmp_path, capsys):
    ref, est, mix = bad_tree / "ref", bad_tree / "est", bad_tree / "mix"
    rc = main(["score", "--separation", "--reference", str(ref), "--estimate", str(est), "--mixture", str(mix),
               "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    expected_lines = [
        f"error: {est / 'gap_s1'}: missing estimate talker file (the estimate files of 'gap' are gap_s2.wav;",
        f"error: {est / 'three_s1.wav'}: 'three' has 3 estimate talker file(s) (three_s1.wav, three_s2.wav, "
        f"three_s3.wav) but 2 reference talker file(s) in {ref} (three_s1.wav, three_s2.wav)",
        f"error: {est / 'long_s2.wav'}: 1.500 s long, 0.500 s (8000 samples) longer than the reference "
        f"{ref / 'long_s1.wav'}",
        f"error: {est / 'broken_s2.wav'}: not a readable audio file",
        f"error: {ref / 'nomix_s1.wav'}: no mixture file nomix.* in {mix}",
        f"error: {ref / 'silent_s2.wav'}: the reference is silent (all samples are zero); SI-SDR is undefined",
        f"error: {ref / 'noest_s1.wav'}: no estimate talker files noest_s1, noest_s2, ... in {est}",
        f"error: {est / 'stray.wav'}: not a talker file",
        "note: short.wav: lengths differ (15920 to 16000 samples): trimmed to 15920 samples",
    ]
    for line in expected_lines:
        assert line in err, f"missing {line!r} in:\n{err}"
    assert err.count("error: ") == 8 and "Traceback" not in err

    rows = {r["file"]: r for r in read_csv(tmp_path / "s.csv")}
    assert {f for f, r in rows.items() if r["status"] == "ok"} == {"good.wav", "short.wav"}
    assert len(rows) == 10
    assert rows["good.wav"]["order"] == "s2 s1" and float(rows["good.wav"]["si_sdri"]) > 5
    assert rows["long.wav"]["si_sdr"] == "" and "longer than the reference" in rows["long.wav"]["error"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mixtures"] == {"total": 10, "scored": 2, "failed": 8}
    assert {f["file"] for f in summary["failures"]} == set(rows) - {"good.wav", "short.wav"}


def test_all_scored_is_exit_0_and_length_tolerance_applies(bad_tree):
    result = score_separation(bad_tree / "ref", bad_tree / "est", None, jobs=1, length_tolerance=0.6)
    row = next(r for r in result.rows if r["file"] == "long.wav")
    assert row["status"] == "ok" and "trimmed to 16000 samples" in row["notes"][0]
    ref, est = bad_tree / "ref", bad_tree / "est"
    tmp = bad_tree / "only_good"
    for d, src in (("ref", ref), ("est", est)):
        for s in (1, 2):
            (tmp / d).mkdir(parents=True, exist_ok=True)
            (tmp / d / f"good_s{s}.wav").write_bytes((src / f"good_s{s}.wav").read_bytes())
    assert main(["score", "--separation", "--reference", str(tmp / "ref"), "--estimate", str(tmp / "est"),
                 "--jobs", "1"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "stoi,mosnet"], "unknown metric 'mosnet'"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--mixture", "/nonexistent/mix"], "/nonexistent/mix: mixture directory not found"),
])
def test_usage_errors_exit_2(tree, capsys, extra, message):
    rc = main(["score", "--separation", "--reference", str(tree / "ref"), "--estimate", str(tree / "est"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
