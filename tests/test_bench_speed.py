"""bench/enhance.py and bench/train.py cover every model family, and a families-suite case runs for each task.

No timing is asserted here: the benchmarks measure (and print ratios against a baseline of the same run).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steadyvoice.inference import _model_dir_for
from steadyvoice.models import ARCHITECTURES, CONFIGS, architecture_of, build_model, count_parameters, read_model_config

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_enhance_families_cover_every_architecture_with_the_shipped_model_as_baseline():
    enhance = _load("enhance")
    assert enhance.FAMILIES[0] == enhance.SHIPPED_DEFAULT
    configs = [CONFIGS[f] if f in CONFIGS else read_model_config(_model_dir_for(f)) for f in enhance.FAMILIES]
    assert {architecture_of(cfg).name for cfg in configs} == set(ARCHITECTURES)


def test_train_tiny_recipes_cover_every_architecture():
    train = _load("train")
    names = []
    for recipe, batch, _noise, steps in train.TINY:
        data = yaml.safe_load((BENCH.parent / "recipes" / f"{recipe}.yaml").read_text())
        assert batch == data["train"]["batch_size"] and steps > 5  # the recipe's batch; steps beyond the warm-up
        names.append(architecture_of(CONFIGS[data["model"]["name"]]).name)
    assert sorted(names) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("family, windows", [("default", 1), ("mossformer2-ss-16k-small", 1)])
def test_families_worker_runs_enhancer_and_separator(family, windows):
    proc = subprocess.run([sys.executable, str(BENCH / "enhance.py"), "--worker", family, "1.5", "enhancer",
                           "--repeat", "1", "--threads", "1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = CONFIGS[family] if family in CONFIGS else read_model_config(_model_dir_for(family))
    model = build_model(cfg)
    assert result["parameters"] == count_parameters(model)
    assert result["weights_mb"] == pytest.approx(sum(t.nbytes for t in model.state_dict().values()) / 2**20)
    assert result["windows"] == windows and result["threads"] == 1 and result["seconds"] == 1.5
    assert result["weights"].startswith("trained" if family == "default" else "random")


def test_bfloat16_method_reports_its_distance_from_float32():
    proc = subprocess.run([sys.executable, str(BENCH / "enhance.py"), "--worker", "mossformer2-se-16k-small", "1.5",
                           "enhancer-bf16", "--repeat", "1", "--threads", "1"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["method"] == "enhancer-bf16" and 30.0 < result["diff_db"] < 100.0
