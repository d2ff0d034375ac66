"""The shipped default model: it loads by name, `enhance` uses it without flags, and on the bundled
example it keeps its golden quality (DeepFilterNet-style golden-metric test on a committed noisy file).
The previous default stays available by name (default-v1).

The golden figures were measured when the weights were exported; a change to the model code, the
front end, the inference path or the weights that moves them fails here. Regenerate them with
``python tests/test_default_model.py > tests/data/example/golden.json`` when the shipped weights change.
(The full-band figures of the default: tests/test_fullband_default.py.)
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from steadyvoice import Enhancer
from steadyvoice.audio import read_audio
from steadyvoice.cli import main
from steadyvoice.eval import pesq_wb, si_sdr, stoi
from steadyvoice.inference import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
NOISY = ROOT / "examples" / "noisy_example.wav"
CLEAN = Path(__file__).parent / "data" / "example" / "clean_example.wav"
GOLDEN = json.loads((Path(__file__).parent / "data" / "example" / "golden.json").read_text())


def test_weights_ship_in_the_package_within_budget():
    weights = WEIGHTS_DIR / "default"
    size = sum(f.stat().st_size for f in weights.iterdir())
    assert size <= 20 * 2**20
    meta = json.loads((weights / "config.json").read_text())
    assert meta["format"] == "steadyvoice-model" and meta["architecture"] == "fullband-se"
    assert meta["config"]["sample_rate"] == 48000
    assert (weights / "recipe.yaml").is_file()  # the recipes that made it ship beside it
    assert (weights / "recipe-core.yaml").is_file() and (weights / "recipe-core-stage1.yaml").is_file()


def test_the_previous_default_stays_available_by_name():
    noisy, sr = read_audio(NOISY)
    v1 = Enhancer.from_pretrained("default-v1")
    assert v1.sample_rate == 16000 and type(v1.cfg).__name__ == "MossFormer2SEConfig"
    assert si_sdr(v1(noisy[:, 0], sr), read_audio(CLEAN)[0][:, 0]) > GOLDEN["noisy"]["si_sdr"] + 3.0


def test_cli_uses_the_default_model_and_matches_the_python_api(tmp_path, capsys):
    assert main(["enhance", str(NOISY), "-o", str(tmp_path)]) == 0
    out, sr = read_audio(tmp_path / NOISY.name)
    noisy, sr_in = read_audio(NOISY)
    assert sr == sr_in and out.shape == noisy.shape
    direct = Enhancer.from_pretrained("default")(noisy[:, 0], sr_in)
    np.testing.assert_allclose(out[:, 0], direct, atol=1.0 / 32768)  # the file is PCM_16


def measure() -> dict:
    clean, sr = read_audio(CLEAN)
    noisy, _ = read_audio(NOISY)
    enhanced = Enhancer.from_pretrained("default")(noisy[:, 0], sr)
    ref, noisy = clean[:, 0], noisy[:, 0]
    return {name: {"si_sdr": round(float(si_sdr(x, ref)), 4), "pesq_wb": round(float(pesq_wb(x, ref, sr)), 4),
                   "stoi": round(float(stoi(x, ref, sr)), 4)} for name, x in (("noisy", noisy), ("enhanced", enhanced))}


@pytest.fixture(scope="module")
def scores():
    return measure()


@pytest.mark.parametrize("metric, tolerance", [("si_sdr", 0.05), ("pesq_wb", 0.02), ("stoi", 0.002)])
def test_golden_metrics_on_the_bundled_example(scores, metric, tolerance):
    assert scores["noisy"][metric] == pytest.approx(GOLDEN["noisy"][metric], abs=tolerance)
    assert scores["enhanced"][metric] == pytest.approx(GOLDEN["enhanced"][metric], abs=tolerance)


def test_the_default_model_improves_the_example(scores):
    assert scores["enhanced"]["si_sdr"] > scores["noisy"]["si_sdr"] + 3.0
    assert scores["enhanced"]["pesq_wb"] > scores["noisy"]["pesq_wb"] + 0.15
    assert scores["enhanced"]["stoi"] > scores["noisy"]["stoi"]


if __name__ == "__main__":
    json.dump({**measure(), "model": sys.argv[1] if len(sys.argv) > 1 else "steadyvoice/weights/default"},
              sys.stdout, indent=1)
    print()
