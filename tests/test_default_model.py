"""The shipped default model: it loads by name, `enhance` uses it without flags, and on the bundled
example it keeps its golden quality (DeepFilterNet-style golden-metric test on a committed noisy file).

The golden figures were measured when the weights were exported; a change to the model code, the
front end, the inference path or the weights that moves them fails here.
"""

import json
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
    assert meta["format"] == "steadyvoice-model" and meta["config"]["sample_rate"] == 16000
    assert (weights / "recipe.yaml").is_file()  # the recipe that made it ships beside it


def test_cli_uses_the_default_model_and_matches_the_python_api(tmp_path, capsys):
    assert main(["enhance", str(NOISY), "-o", str(tmp_path)]) == 0
    out, sr = read_audio(tmp_path / NOISY.name)
    noisy, sr_in = read_audio(NOISY)
    assert sr == sr_in and out.shape == noisy.shape
    direct = Enhancer.from_pretrained("default")(noisy[:, 0], sr_in)
    np.testing.assert_allclose(out[:, 0], direct, atol=1.0 / 32768)  # the file is PCM_16


@pytest.fixture(scope="module")
def scores():
    clean, sr = read_audio(CLEAN)
    noisy, _ = read_audio(NOISY)
    enhanced = Enhancer.from_pretrained("default")(noisy[:, 0], sr)
    ref, noisy = clean[:, 0], noisy[:, 0]
    return {
        "noisy": {"si_sdr": si_sdr(noisy, ref), "pesq_wb": pesq_wb(noisy, ref, sr), "stoi": stoi(noisy, ref, sr)},
        "enhanced": {"si_sdr": si_sdr(enhanced, ref), "pesq_wb": pesq_wb(enhanced, ref, sr),
                     "stoi": stoi(enhanced, ref, sr)},
    }


@pytest.mark.parametrize("metric, tolerance", [("si_sdr", 0.05), ("pesq_wb", 0.02), ("stoi", 0.002)])
def test_golden_metrics_on_the_bundled_example(scores, metric, tolerance):
    assert scores["noisy"][metric] == pytest.approx(GOLDEN["noisy"][metric], abs=tolerance)
    assert scores["enhanced"][metric] == pytest.approx(GOLDEN["enhanced"][metric], abs=tolerance)


def test_the_default_model_improves_the_example(scores):
    assert scores["enhanced"]["si_sdr"] > scores["noisy"]["si_sdr"] + 3.0
    assert scores["enhanced"]["pesq_wb"] > scores["noisy"]["pesq_wb"] + 0.15
    assert scores["enhanced"]["stoi"] > scores["noisy"]["stoi"]
