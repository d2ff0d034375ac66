"""`steadyvoice score` and score_directories: matching, parallel scoring, outputs, per-file errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steadyvoice.audio import resample, write_audio
from steadyvoice.cli import main
from steadyvoice.eval import dnsmos as dnsmos_mod
from steadyvoice.eval.metrics import metric_columns, si_sdr
from steadyvoice.eval.score import score_directories, summarize

SR = 16000
FILES = ["a.wav", "b.wav", "sub/c.wav"]


def voice(seconds: float, seed: int) -> np.ndarray:
    """A vowel-like harmonic signal with a 4 Hz syllable envelope (enough for PESQ/STOI/SI-SDR to react)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 110 + 20 * seed + 25 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    harmonics = sum(np.sin(k * phase) * np.exp(-k / 8) for k in range(1, 40))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    x = (harmonics + 0.01 * rng.standard_normal(t.shape[0])) * envelope + 3e-4 * rng.standard_normal(t.shape[0])
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def noise_like(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    n = np.random.default_rng(seed).standard_normal(x.shape[0])
    return (n * np.linalg.norm(x) / np.linalg.norm(n) / 10 ** (snr_db / 20)).astype(np.float32)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """ref/, est/ (10.5 dB better than noisy) and noisy/ with 3 files, one in a subdirectory."""
    root = tmp_path_factory.mktemp("score")
    for i, name in enumerate(FILES):
        clean = voice(2.5, seed=i)
        noise = noise_like(clean, 0.0, seed=10 + i)
        write_audio(root / "ref" / name, clean, SR)
        write_audio(root / "noisy" / name, clean + noise, SR)
        write_audio(root / "est" / name, clean + 0.3 * noise, SR)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_writes_csv_json_png_and_table(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dnsmos_mod, "_SHARED", {})
    out = tmp_path / "out"
    metrics = ["pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "dnsmos", "composite"]
    rc = main(["score", "--reference", str(tree / "ref"), "--estimate", str(tree / "est"),
               "--noisy", str(tree / "noisy"), "--metrics", ",".join(metrics), "--csv", str(out / "s.csv"),
               "--json", str(out / "s.json"), "--plot", str(out / "s.png"), "--jobs", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    columns = metric_columns(metrics)

    rows = read_csv(out / "s.csv")
    assert list(rows[0]) == (["file", "status", "sample_rate", "seconds"] + columns
                             + [f"noisy_{c}" for c in columns] + ["notes", "error"])
    assert [r["file"] for r in rows] == FILES  # sorted, nested path kept
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    for r in rows:  # the estimate holds 0.3 times the noisy input's noise: 10.5 dB better
        assert float(r["si_sdr"]) == pytest.approx(float(r["noisy_si_sdr"]) - 20 * np.log10(0.3), abs=0.3)
        assert float(r["stoi"]) > float(r["noisy_stoi"])
        assert float(r["pesq_wb"]) > float(r["noisy_pesq_wb"])
        assert 1.0 <= float(r["dnsmos_ovrl"]) <= 5.0

    summary = json.loads((out / "s.json").read_text())
    assert summary["files"] == {"total": 3, "scored": 3, "failed": 0}
    assert summary["columns"] == columns
    for c in columns:
        est, noisy, gain = summary["estimate"][c], summary["noisy"][c], summary["improvement"][c]
        assert est["count"] == noisy["count"] == gain["count"] == 3
        assert est["mean"] == pytest.approx(np.mean([float(r[c]) for r in rows]), abs=1e-4)
        assert gain["mean"] == pytest.approx(est["mean"] - noisy["mean"])
    for c in ("si_sdr", "pesq_wb", "pesq_nb", "stoi", "estoi", "csig", "covl"):
        assert summary["improvement"][c]["mean"] > 0, c

    png = (out / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = captured.out.splitlines()
    assert table[0].split() == ["metric", "estimate", "noisy", "improvement", "files"]
    si_line = next(line for line in table if line.startswith("si_sdr "))
    assert f"{summary['improvement']['si_sdr']['mean']:+.3f}" in si_line
    assert "3 of 3 files scored" in captured.out

    # The same scores in one process, in the same order: parallelism changes nothing.
    serial = score_directories(tree / "ref", tree / "est", tree / "noisy", ["si_sdr", "stoi"], jobs=1)
    assert [r["file"] for r in serial.rows] == FILES
    for row, line in zip(serial.rows, rows):
        assert f"{row['estimate']['si_sdr']:.4f}" == line["si_sdr"]
        assert f"{row['noisy']['stoi']:.4f}" == line["noisy_stoi"]


def test_dnsmos_sessions_are_created_once_per_process(tree, monkeypatch):
    import onnxruntime

    real = onnxruntime.InferenceSession
    created = []

    def counting(*args, **kwargs):
        created.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    monkeypatch.setattr(dnsmos_mod, "_SHARED", {})
    result = score_directories(tree / "ref", tree / "est", tree / "noisy", ["dnsmos"], jobs=1)
    assert result.summary["files"]["scored"] == 3  # 6 signals scored ...
    assert sorted(Path(p).name for p in created) == ["model_v8.onnx", "sig_bak_ovr.onnx"]  # ... 2 sessions


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> Path:
    """One good pair and one of every per-file problem."""
    root = tmp_path_factory.mktemp("bad")
    ref, est = root / "ref", root / "est"
    x = voice(2.0, seed=1)
    y = x + noise_like(x, 15.0, seed=2)
    write_audio(ref / "good.wav", x, SR)
    write_audio(est / "good.flac", y, SR)  # another extension matches too
    write_audio(ref / "no_estimate.wav", x, SR)
    write_audio(est / "deep" / "no_reference.wav", y, SR)
    write_audio(ref / "silent.wav", np.zeros_like(x), SR)
    write_audio(est / "silent.wav", y, SR)
    write_audio(ref / "too_long.wav", x, SR)
    write_audio(est / "too_long.wav", np.concatenate([y, y[: SR // 2]]), SR)
    write_audio(ref / "slightly_short.wav", x, SR)
    write_audio(est / "slightly_short.wav", y[:-80], SR)
    write_audio(ref / "rate.wav", x, SR)
    write_audio(est / "rate.wav", resample(y, SR, 48000), 48000)
    write_audio(ref / "unreadable.wav", x, SR)
    (est / "unreadable.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    write_audio(ref / "stereo.wav", np.stack([x, x], axis=1), SR)
    write_audio(est / "stereo.wav", y, SR)
    write_audio(ref / "twice.wav", x, SR)
    write_audio(est / "twice.wav", y, SR)
    write_audio(est / "twice.flac", y, SR)
    return root


def test_each_bad_file_gets_its_own_message_and_the_rest_is_scored(bad_tree, tmp_path, capsys):
    ref, est = bad_tree / "ref", bad_tree / "est"
    rc = main(["score", "--reference", str(ref), "--estimate", str(est), "--metrics", "si_sdr", "stoi",
               "--csv", str(tmp_path / "s.csv"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    expected = [
        f"error: {ref / 'no_estimate.wav'}: no estimate file of the same name in {est}",
        f"error: {est / 'deep' / 'no_reference.wav'}: no reference file of the same name in {ref}",
        f"error: {ref / 'silent.wav'}: the reference is silent (all samples are zero); si_sdr, stoi are undefined",
        f"error: {est / 'too_long.wav'}: 2.500 s long, 0.500 s (8000 samples) longer than the reference",
        f"error: {est / 'unreadable.wav'}: not a readable audio file",
        f"error: {est / 'stereo.wav'}: has 1 channel(s) but the reference {ref / 'stereo.wav'} has 2",
        f"error: {est}: twice.flac, twice.wav all match 'twice.wav'; keep one estimate file per name",
        "note: rate.wav: estimate is 48000 Hz, the reference 16000 Hz: resampled the estimate to 16000 Hz",
        "note: slightly_short.wav: lengths differ (reference 32000, estimate 31920 samples): trimmed to 31920",
    ]
    for message in expected:
        assert message in err, f"missing {message!r} in:\n{err}"
    assert "Traceback" not in err

    rows = {r["file"]: r for r in read_csv(tmp_path / "s.csv")}
    assert {f for f, r in rows.items() if r["status"] == "ok"} == {"good.wav", "slightly_short.wav", "rate.wav"}
    assert len(rows) == 10
    assert float(rows["rate.wav"]["si_sdr"]) == pytest.approx(float(rows["good.wav"]["si_sdr"]), abs=0.5)
    assert "resampled" in rows["rate.wav"]["notes"]
    assert rows["silent.wav"]["si_sdr"] == "" and "silent" in rows["silent.wav"]["error"]


def test_a_missing_noisy_file_fails_only_its_row(tree, tmp_path):
    noisy = tmp_path / "noisy"
    for name in FILES[:2]:
        (noisy / name).parent.mkdir(parents=True, exist_ok=True)
        (noisy / name).write_bytes((tree / "noisy" / name).read_bytes())
    result = score_directories(tree / "ref", tree / "est", noisy, ["si_sdr"], jobs=1)
    assert [r["status"] for r in result.rows] == ["ok", "ok", "error"]
    assert result.rows[2]["error"] == f"{tree / 'ref' / 'sub' / 'c.wav'}: no noisy file of the same name in {noisy}"
    assert result.summary["improvement"]["si_sdr"]["count"] == 2


def test_length_tolerance_is_adjustable(bad_tree):
    result = score_directories(bad_tree / "ref", bad_tree / "est", None, ["si_sdr"], jobs=1, length_tolerance=0.6)
    row = next(r for r in result.rows if r["file"] == "too_long.wav")
    assert row["status"] == "ok" and "trimmed to 32000 samples" in row["notes"][0]


def test_on_row_sees_every_row_in_order(bad_tree):
    seen = []
    result = score_directories(bad_tree / "ref", bad_tree / "est", None, ["si_sdr"], jobs=2, on_row=seen.append)
    assert [r["file"] for r in seen] == [r["file"] for r in result.rows] == sorted(r["file"] for r in seen)


def test_multichannel_files_average_the_channel_scores(tmp_path):
    x0, x1 = voice(1.5, seed=3), voice(1.5, seed=4)
    y0, y1 = x0 + noise_like(x0, 5.0, 1), x1 + noise_like(x1, 20.0, 2)
    write_audio(tmp_path / "ref" / "st.wav", np.stack([x0, x1], axis=1), SR, subtype="FLOAT")
    write_audio(tmp_path / "est" / "st.wav", np.stack([y0, y1], axis=1), SR, subtype="FLOAT")
    result = score_directories(tmp_path / "ref", tmp_path / "est", None, ["si_sdr"], jobs=1)
    expected = (si_sdr(y0, x0) + si_sdr(y1, x1)) / 2
    assert result.rows[0]["estimate"]["si_sdr"] == pytest.approx(expected, abs=1e-4)


def test_summary_statistics():
    rows = [
        {"file": "a", "status": "ok", "estimate": {"m": 3.0}, "noisy": {"m": 1.0}},
        {"file": "b", "status": "ok", "estimate": {"m": 5.0}, "noisy": {"m": 2.0}},
        {"file": "c", "status": "error", "error": "c: broken", "notes": []},
    ]
    s = summarize(rows, ["m"], has_noisy=True)
    assert s["files"] == {"total": 3, "scored": 2, "failed": 1}
    assert s["estimate"]["m"] == {"mean": 4.0, "std": pytest.approx(np.std([3.0, 5.0], ddof=1)), "count": 2}
    assert s["improvement"]["m"]["mean"] == pytest.approx(2.5)  # mean of (3-1, 5-2)
    assert s["failures"] == [{"file": "c", "error": "c: broken"}]


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "pesq_wb,mosnet"], "unknown metric 'mosnet'"),
    (["--plot", "scores.jpg"], "give a file name ending in .png"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_usage_errors_exit_2(tree, capsys, extra, message):
    rc = main(["score", "--reference", str(tree / "ref"), "--estimate", str(tree / "est"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_and_empty_directories_exit_2(tree, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["score", "--reference", str(tree / "ref"), "--estimate", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: the estimate directory holds no audio files" in capsys.readouterr().err
    assert main(["score", "--reference", str(tmp_path / "nope"), "--estimate", str(tree / "est")]) == 2
    assert f"{tmp_path / 'nope'}: reference directory not found" in capsys.readouterr().err


def test_subprocess_run_has_no_traceback(bad_tree):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "steadyvoice", "score", "--reference", str(bad_tree / "ref"),
         "--estimate", str(bad_tree / "est"), "--metrics", "si_sdr", "--jobs", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.count("error: ") == 7
    assert "3 of 10 files scored, 7 failed" in proc.stdout
