"""Strict config parsing: unknown keys, bad types and missing fields are errors naming the key path."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from steadyvoice.config import apply_overrides, from_dict, from_yaml, to_dict
from steadyvoice.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    name: Literal["adam", "adamw"] = "adam"

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive")


@dataclass
class Run:
    steps: int
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    note: Optional[str] = None


def test_round_trip():
    run = from_dict(Run, {"steps": 3, "optim": {"lr": 2e-4, "betas": [0.8, 0.9]}, "tags": ["a"]})
    assert run == Run(steps=3, optim=Optim(lr=2e-4, betas=(0.8, 0.9)), tags=["a"])
    assert from_dict(Run, to_dict(run)) == run


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"'optim\.lrr'.*valid keys here: betas, lr, name"):
        from_dict(Run, {"steps": 1, "optim": {"lrr": 1.0}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "ten"}, r"steps: expected an integer, got 'ten'"),
        ({"steps": 1.5}, r"steps: expected an integer"),
        ({"steps": True}, r"steps: expected an integer"),
        ({"steps": 1, "optim": {"name": "sgd"}}, r"optim.name: 'sgd' is not one of 'adam', 'adamw'"),
        ({"steps": 1, "optim": {"betas": [0.9]}}, r"optim.betas: expected 2 items"),
        ({"steps": 1, "optim": {"lr": -1}}, r"optim.lr=-1.0 must be positive"),
        ({}, r"missing required config key 'steps'"),
        ({"steps": 1, "optim": 3}, r"optim: expected a mapping"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_yaml_scientific_notation_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 5e-4\n")  # YAML 1.1 reads 5e-4 as a string
    run = from_yaml(Run, path, overrides=["optim.name=adamw", "steps=7", "note=hello world"])
    assert run.optim.lr == pytest.approx(5e-4)
    assert run.optim.name == "adamw" and run.steps == 7 and run.note == "hello world"


def test_yaml_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        from_yaml(Run, missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        from_yaml(Run, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("steps: 1\nstesp: 2\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'stesp'"):
        from_yaml(Run, typo)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="'steps' is not a section"):
        apply_overrides({"steps": 1}, ["steps.x=1"])


# ------------------------------------------------------------------ training config: --set is blamed, not the recipe

RECIPE = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"^--set optim\.lrr=1: unknown config key 'optim\.lrr'; valid keys here: .*\blr\b"),
        ("bogus.x=1", r"^--set bogus\.x=1: unknown config key 'bogus'"),
        ("optim.lr=abc", r"^--set optim\.lr=abc: optim\.lr: expected a number, got 'abc'"),
        ("model.overrides.model_dimm=3", r"^--set model\.overrides\.model_dimm=3: unknown config key"),
        ("model.name=nope", r"^--set model\.name=nope: model\.name: unknown model config 'nope'"),
        ("train.seed.x=1", r"^--set: override 'train\.seed\.x=1': 'seed' is not a section"),
    ],
)
def test_a_typo_in_set_is_blamed_on_the_override_not_the_recipe(override, message):
    from steadyvoice.train.config import load_train_config

    with pytest.raises(ConfigError, match=message) as info:
        load_train_config(RECIPE, ["train.seed=3", override, "train.max_steps=5"])
    assert "tiny-cpu.yaml" not in str(info.value)


def test_a_typo_in_the_recipe_is_still_blamed_on_the_recipe(tmp_path):
    from steadyvoice.train.config import load_train_config

    recipe = tmp_path / "typo.yaml"
    recipe.write_text(RECIPE.read_text().replace("optim:\n", "optim:\n  lrr: 1.0\n", 1))
    assert "lrr" in recipe.read_text()
    for overrides in ([], ["optim.lr=0.01", "train.seed=3"]):  # an override of the same section is not blamed
        with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'optim\.lrr'"):
            load_train_config(recipe, overrides)
