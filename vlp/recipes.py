"""Find, list, load and merge recipes.

A recipe is a LightningCLI config (``seed_everything``, ``trainer``, ``model``,
``data``) plus two keys of its own:

- ``description``: one line, shown by ``vlp recipes``;
- ``extends``: a recipe name or a path (relative to this file) to start from.

Extending merges dictionaries key by key; a list replaces the list; a node whose
``class_path`` changes replaces the node (its old ``init_args`` would not fit).
omegaconf interpolation (``${model.image_tower.init_args.embed_dim}``) is resolved
after merging, so it sees the whole recipe.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlp.errors import VLPError

OWN_KEYS = ("description", "extends")


def recipes_root() -> Path:
    """The shipped recipes (``recipes/`` of the source tree, ``vlp/_recipes`` when installed)."""
    return Path(str(resources.files("vlp._recipes")))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_root().glob("*.yaml"))


def find_recipe(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A path for a shipped recipe name or a YAML path; unknown names list close ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_absolute() and base_dir is not None and (base_dir / path).is_file():
            path = base_dir / path
        if not path.is_file():
            raise VLPError(f"recipe file not found: {name_or_path}")
        return path
    path = recipes_root() / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, recipe_names(), n=4, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else f"; known: {', '.join(recipe_names())}"
        raise VLPError(f"unknown recipe '{name_or_path}'{hint} (or give a path to a YAML file)")
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VLPError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise VLPError(f"recipe {path} must be a mapping, got {type(spec).__name__}")
    return spec


def merge(base: Any, over: Any) -> Any:
    """Recursive merge of ``over`` onto ``base`` (rules in the module docstring)."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    if "class_path" in over and over.get("class_path") != base.get("class_path"):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if key in base else value
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        chain = " -> ".join(str(p.name) for p in (*seen, path.resolve()))
        raise VLPError(f"recipe extends itself: {chain}")
    spec = _read(path)
    parent = spec.get("extends")
    if parent is None:
        return spec
    base = _load_raw(find_recipe(str(parent), path.parent), (*seen, path.resolve()))
    return merge(base, spec)


def apply_overrides(spec: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set dotted keys that exist in ``spec`` (``init_args`` may be left out, as on the
    command line), so that interpolations see command-line values. Keys the recipe
    does not hold are left to the CLI, which checks them."""
    for dotted, value in overrides.items():
        node, parts = spec, dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                break
            if part not in node and isinstance(node.get("init_args"), dict):
                node = node["init_args"]
            if part not in node:
                break
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merged, resolved LightningCLI config of a recipe (without its own keys).

    ``overrides``: dotted keys to set before interpolations are resolved.
    """
    path = find_recipe(name_or_path)
    spec = {k: v for k, v in _load_raw(path).items() if k not in OWN_KEYS}
    apply_overrides(spec, overrides or {})
    try:
        return OmegaConf.to_container(OmegaConf.create(spec), resolve=True)
    except OmegaConfBaseException as e:
        raise VLPError(f"recipe {name_or_path}: {str(e).splitlines()[0]}") from None


def describe(name: str) -> str:
    return str(_read(find_recipe(name)).get("description", "")).strip()


def list_recipes() -> list[tuple[str, str]]:
    return [(name, describe(name)) for name in recipe_names()]
