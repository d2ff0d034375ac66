"""The training recipes shipped inside the package (steadyvoice/recipes/*.yaml), found by name.

``--config tiny-cpu`` names the packaged recipe ``tiny-cpu.yaml``, so a non-editable install runs the
recipes from any directory. A path that exists always wins; a name that is neither an existing file nor a
packaged recipe is an error listing the packaged ones. (The repository's top-level ``recipes/`` is a
symlink to the same directory, so ``--config recipes/tiny-cpu.yaml`` works in a checkout.)
"""

from __future__ import annotations

from pathlib import Path

from steadyvoice.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SUFFIX = ".yaml"


def recipe_names() -> list[str]:
    """The packaged recipes, by name (file name without .yaml), sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in RECIPES_DIR.glob(f"*{SUFFIX}"))


def recipe_path(config: str | Path) -> Path:
    """The config file ``config`` names: an existing path as it is, else a packaged recipe by name."""
    path = Path(config)
    if path.exists():
        return path
    name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    if path.parent == Path(".") and name in recipe_names():
        return RECIPES_DIR / f"{name}{SUFFIX}"
    raise ConfigError(
        f"{config}: no such config file, nor a recipe shipped with SteadyVoice; the packaged recipes are "
        f"{', '.join(recipe_names())} (pass a name, e.g. --config tiny-cpu, or the path of a YAML file)"
    )
