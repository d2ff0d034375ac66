"""The shipped separation model: it loads by name, `separate` uses it without flags, and on the bundled
two-talker example (real recordings of unseen speakers) it keeps its golden SI-SDR figures.

The golden figures were measured when the weights were exported; a change to the model code, the
separation path or the weights that moves them fails here. To regenerate them after shipping new weights:
``python tests/test_default_separation.py > tests/data/separation_example/golden.json``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from steadyvoice import Separator
from steadyvoice.audio import read_audio
from steadyvoice.catalog import SHIPPED_DIR
from steadyvoice.cli import main
from steadyvoice.eval.separation import pit_si_sdr
from steadyvoice.eval import si_sdr
from steadyvoice.separation import DEFAULT_SEPARATION_MODEL

EXAMPLE = Path(__file__).parent / "data" / "separation_example"
GOLDEN_FILE = EXAMPLE / "golden.json"


def measure() -> dict:
    mixture, sr = read_audio(EXAMPLE / "mixture.flac")  # (N, 1)
    talkers = np.stack([read_audio(EXAMPLE / f"talker{k}.flac")[0][:, 0] for k in (1, 2)])  # (2, N)
    separated = Separator.from_pretrained()(mixture[:, 0], sr)  # (2, N)
    scores, _ = pit_si_sdr(separated, talkers)
    baseline = np.array([si_sdr(mixture[:, 0], t) for t in talkers])
    return {"mixture_si_sdr": [round(float(v), 4) for v in baseline],
            "separated_si_sdr": [round(float(v), 4) for v in scores]}


def test_weights_ship_in_the_package_within_budget():
    weights = SHIPPED_DIR / DEFAULT_SEPARATION_MODEL
    assert sum(f.stat().st_size for f in weights.iterdir()) <= 20 * 2**20
    meta = json.loads((weights / "config.json").read_text())
    assert meta["architecture"] == "mossformer2-ss" and meta["config"]["sample_rate"] == 16000
    assert (weights / "recipe.yaml").is_file()  # the recipe that made it ships beside it


def test_separate_uses_the_shipped_model_and_matches_the_python_api(tmp_path, capsys):
    assert main(["separate", str(EXAMPLE / "mixture.flac"), "-o", str(tmp_path)]) == 0
    mixture, sr = read_audio(EXAMPLE / "mixture.flac")
    direct = Separator.from_pretrained(DEFAULT_SEPARATION_MODEL)(mixture[:, 0], sr)
    for k in (1, 2):
        out, out_sr = read_audio(tmp_path / f"mixture_s{k}.flac")
        assert out_sr == sr and out.shape == mixture.shape
        expected = np.clip(direct[k - 1], -1.0, 1.0)  # the file is PCM_16: full scale at most
        np.testing.assert_allclose(out[:, 0], expected, atol=1.0 / 32768)


@pytest.fixture(scope="module")
def scores():
    return measure()


def test_golden_figures_on_the_bundled_example(scores):
    golden = json.loads(GOLDEN_FILE.read_text())
    np.testing.assert_allclose(scores["mixture_si_sdr"], golden["mixture_si_sdr"], atol=0.01)
    np.testing.assert_allclose(scores["separated_si_sdr"], golden["separated_si_sdr"], atol=0.05)


def test_the_shipped_model_separates_the_example(scores):
    improvement = np.array(scores["separated_si_sdr"]) - np.array(scores["mixture_si_sdr"])
    assert (improvement > 3.0).all(), improvement


if __name__ == "__main__":
    json.dump(measure(), sys.stdout, indent=2)
    print()
