"""What a non-editable install needs: packaged recipes found by name, package data covering every data file,
and inference that runs without the training-only dependencies (the `train` extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steadyvoice.errors import ConfigError
from steadyvoice.train.config import load_train_config
from steadyvoice.train.recipes import RECIPES_DIR, recipe_names, recipe_path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "steadyvoice"


def test_every_packaged_recipe_resolves_by_name_and_parses():
    names = recipe_names()
    assert "tiny-cpu" in names and "mossformer2-se-48k" in names
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == names
    for name in names:
        assert recipe_path(name) == recipe_path(f"{name}.yaml") == RECIPES_DIR / f"{name}.yaml"
        load_train_config(name)  # every shipped recipe is a valid config
    assert (REPO / "recipes").resolve() == RECIPES_DIR  # the checkout's recipes/ is the packaged directory


def test_an_existing_path_wins_and_an_unknown_name_lists_the_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny-cpu").write_text("model: {name: mossformer2-se-16k-small}\n")
    assert recipe_path("tiny-cpu") == Path("tiny-cpu")
    assert load_train_config("tiny-cpu").train.max_steps == 0 and load_train_config("tiny-cpu.yaml").train.max_steps == 300
    for wrong in ("tiny", "elsewhere/tiny-cpu.yaml"):
        with pytest.raises(ConfigError, match=rf"^{wrong}: no such config file, nor a recipe shipped with "
                                              rf"SteadyVoice; the packaged recipes are default-16k, .*tiny-cpu \("):
            recipe_path(wrong)


def test_package_data_covers_every_data_file():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["steadyvoice"]
    covered = {p for pattern in globs for p in PACKAGE.glob(pattern) if p.is_file()}
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")}
    assert data - covered == set()
    assert PACKAGE / "recipes" / "tiny-cpu.yaml" in covered and PACKAGE / "weights" / "default" / "model.safetensors" in covered


# Run in a fresh interpreter where the training-only modules cannot be imported (as after `pip install .`).
WITHOUT_TRAIN_EXTRA = """
import json, sys
for name in ("tensorboard", "pyroomacoustics"):
    sys.modules[name] = None  # `import name` now fails as if it were not installed
from steadyvoice.cli import main

out = {"enhance": main(["enhance", sys.argv[1], "-o", sys.argv[2]])}
out["training_modules"] = sorted(m for m in sys.modules if m.startswith(("steadyvoice.train", "steadyvoice.data"))
                                 or (m.split(".")[0] in ("tensorboard", "pyroomacoustics") and sys.modules[m] is not None))
try:
    main(["--help"])  # imports every subcommand's module
except SystemExit as exc:
    out["help"] = exc.code
out["train"] = main(["train", "--config", "tiny-cpu", "--run-dir", sys.argv[3]])
out["corpus"] = main(["corpus", sys.argv[3] + "-corpus"])
print(json.dumps(out))
"""


def test_inference_runs_without_the_train_extra_and_training_says_what_to_install(tmp_path):
    example = REPO / "examples" / "noisy_example.wav"
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, str(example), str(tmp_path / "out"),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out == {"help": 0, "enhance": 0, "training_modules": [], "train": 2, "corpus": 2}
    assert (tmp_path / "out" / "noisy_example.wav").stat().st_size > 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: steadyvoice train needs tensorboard and pyroomacoustics, which are not installed (training "
        "dependencies): pip install 'steadyvoice[train]'",
        "error: steadyvoice corpus needs pyroomacoustics, which is not installed (training dependencies): "
        "pip install 'steadyvoice[train]'",
    ]
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
