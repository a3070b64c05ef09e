"""Find, list, load and merge recipes, and take a recipe's options off `vlp fit`'s command line.

A recipe is a LightningCLI config (``seed_everything``, ``trainer``, ``model``,
``data``) plus two keys of its own:

- ``description``: one line, shown by ``vlp recipes``;
- ``extends``: a recipe name or a path (relative to this file) to start from;
- ``vars``: named values that the recipe refers to with ``${vars.NAME}``, each one
  overridable on the command line as ``--vars.NAME VALUE`` (a value of the default's
  type; an unknown name is an error). They expose settings that a dotted key cannot
  reach, such as one callback's argument in the ``trainer.callbacks`` list::

      vars: {ckpt_every_n_steps: 100}
      trainer:
        callbacks:
          - class_path: vlp.callbacks.StepCheckpoint
            init_args: {every_n_steps: "${vars.ckpt_every_n_steps}"}

Extending merges dictionaries key by key (``vars`` too); a list replaces the list; a
node whose ``class_path`` changes replaces the node (its old ``init_args`` would not
fit); ``null`` in place of a part (a node with a ``class_path``) removes it, e.g. CLIPPO's
``model: {towers: {text: null}}`` drops the text tower of the recipe it extends. omegaconf interpolation (``${model.towers.image.init_args.embed_dim}``,
``${vars.NAME}``) is resolved after merging and after the command-line values, so it
sees the whole recipe.
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

OWN_KEYS = ("description", "extends", "vars")


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
        mark = getattr(e, "problem_mark", None)  # 0-based
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise VLPError(f"recipe {where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
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
        if value is None and isinstance(base.get(key), dict) and "class_path" in base[key]:
            out.pop(key)  # a part removed (a tower of the parent recipe)
            continue
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


def _vars_of(raw: dict[str, Any], name_or_path: str) -> dict[str, Any]:
    found = raw.get("vars") or {}
    if not isinstance(found, dict) or not all(isinstance(k, str) for k in found):
        raise VLPError(f"recipe {name_or_path}: vars must be a mapping of names to values")
    return found


def recipe_vars(name_or_path: str) -> dict[str, Any]:
    """The recipe's ``vars`` with their defaults (merged through ``extends``, not resolved)."""
    return dict(_vars_of(_load_raw(find_recipe(name_or_path)), name_or_path))


def _typed(name: str, default: Any, given: Any) -> Any:
    """A command-line value for var ``name``, of the type of its default. A string is read
    as YAML unless the default is a plain string; a default that is None or an
    interpolation takes any value."""
    untyped = default is None or (isinstance(default, str) and "${" in default)
    if isinstance(given, str) and not (isinstance(default, str) and not untyped):
        try:
            given = yaml.safe_load(given)
        except yaml.YAMLError:
            pass
    if untyped:
        return given
    kinds = [(bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
             (list, "a list"), (dict, "a mapping")]
    kind, what = next(((k, w) for k, w in kinds if isinstance(default, k)), (type(default), type(default).__name__))
    if kind is float and isinstance(given, int) and not isinstance(given, bool):
        given = float(given)
    if not isinstance(given, kind) or (kind is int and isinstance(given, bool)):
        raise VLPError(f"--vars.{name} {given!r}: expected {what} (the recipe's default is {default!r})")
    return given


def set_vars(defaults: dict[str, Any], given: dict[str, Any], name_or_path: str) -> dict[str, Any]:
    """``defaults`` with the command-line ``given`` values (checked by name and type)."""
    out = dict(defaults)
    for name, value in given.items():
        if name not in defaults:
            known = f"its vars: {', '.join(defaults)}" if defaults else "it has no vars"
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise VLPError(f"--vars.{name}: recipe {name_or_path} has no var '{name}'{hint} ({known})")
        out[name] = _typed(name, defaults[name], value)
    return out


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None,
                var_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merged, resolved LightningCLI config of a recipe (without its own keys).

    ``overrides``: dotted keys to set before interpolations are resolved.
    ``var_values``: values for the recipe's vars (``--vars.NAME VALUE``), checked by name and type.
    """
    path = find_recipe(name_or_path)
    raw = _load_raw(path)
    spec = {k: v for k, v in raw.items() if k not in OWN_KEYS}
    spec["vars"] = set_vars(_vars_of(raw, name_or_path), var_values or {}, name_or_path)
    apply_overrides(spec, overrides or {})
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(spec), resolve=True)
    except OmegaConfBaseException as e:
        raise VLPError(f"recipe {name_or_path}: {str(e).splitlines()[0]}") from None
    resolved.pop("vars")
    return resolved


def describe(name: str) -> str:
    return str(_read(find_recipe(name)).get("description", "")).strip()


def list_recipes() -> list[tuple[str, str]]:
    return [(name, describe(name)) for name in recipe_names()]


# The recipe's options on the command line of `vlp fit` (vlp.fit_cli): --recipe, --vars.NAME VALUE,
# and the dotted options whose values the recipe's interpolations see.


def take_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--recipe NAME|PATH`` / ``--recipe=...`` out of the command line: (the recipe or None, the rest)."""
    rest, recipe = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--recipe":
            recipe = next(it, None)
            if recipe is None:
                raise VLPError("--recipe needs a name or a YAML path (see `vlp recipes`)")
        elif arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return recipe, rest


def take_vars(args: list[str], recipe: str | None) -> tuple[dict[str, str], list[str]]:
    """``--vars.NAME VALUE`` / ``--vars.NAME=VALUE`` out of the command line (raw strings)."""
    given, rest = {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg.split("=", 1)[0]
        i += 1
        if key != "--vars" and not key.startswith("--vars."):
            rest.append(arg)
            continue
        name = key[len("--vars."):]
        if not name:
            raise VLPError("give the recipe's vars one at a time: --vars.NAME VALUE")
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif i < len(args) and not args[i].startswith("--"):
            value, i = args[i], i + 1
        else:
            raise VLPError(f"{key} needs a value")
        given[name] = value
    if given and recipe is None:
        raise VLPError(f"--vars.{next(iter(given))}: vars belong to a recipe; give --recipe NAME")
    return given, rest


def _dotted_overrides(args: list[str]) -> dict:
    """``--a.b value`` / ``--a.b=value`` pairs of the command line, values parsed as YAML."""
    out = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            continue
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
        else:
            continue
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def _list_on_path(config: dict, key: str) -> tuple[str, list] | None:
    """The list that the dotted ``key`` goes into before its last part (``init_args`` may be
    left out, as on the command line), with its dotted path; None if it goes into none."""
    parts, node = key.split("."), config
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
        if isinstance(node, list):
            return ".".join(parts[: i + 1]), node
    return None


def check_list_overrides(config: dict, args: list[str], var_names: list[str]) -> None:
    """A dotted option that goes into a list of several entries (``--trainer.callbacks.init_args.X``
    with two callbacks) would change only the last entry (jsonargparse's rule): refuse it."""
    seen: dict[str, object] = {}  # the options given so far: a whole list replaces the recipe's
    for j, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep and j + 1 < len(args) and not args[j + 1].startswith("--"):
            value = args[j + 1]
        # `--trainer.callbacks.help CLASS` is jsonargparse's help for a class, not a value
        found = None if key.endswith(".help") else _list_on_path(config, key)
        if found is not None and f"{found[0]}+" not in seen:  # `+` appends: meant for the last entry
            path, entries = found
            if isinstance(seen.get(path), list):
                entries = seen[path]
            if len(entries) > 1:
                names = [str(e.get("class_path", "?")).rsplit(".", 1)[-1] if isinstance(e, dict) else repr(e)
                         for e in entries]
                via = (f"the recipe's vars (--vars.NAME VALUE; its vars: {', '.join(var_names)})"
                       if var_names else "a recipe of your own with vars (see vlp/recipes.py)")
                raise VLPError(f"--{key} is ambiguous: {path} holds {len(entries)} entries ({', '.join(names)}) "
                               f"and it would change only the last; use {via}, or give the whole list "
                               f"--{path} '[...]' (see --print_config)")
        try:
            seen[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            seen[key] = value


def recipe_config(recipe: str, args: list[str], var_values: dict[str, str]) -> dict:
    """The merged recipe with the command line's values that interpolations need; list-entry
    options are checked. With ``--help``, the recipe's vars are printed before Lightning's help."""
    config = load_recipe(recipe, _dotted_overrides(args), var_values)
    defaults = recipe_vars(recipe)
    check_list_overrides(config, args, list(defaults))
    if "-h" in args or "--help" in args:
        listed = ", ".join(f"--vars.{k} (default {v})" for k, v in defaults.items()) or "none"
        print(f"recipe {recipe}: the options below override its values (shown as defaults); its vars: {listed}\n")
    return config


def recipe_id(recipe: str | None) -> str | None:
    """How checkpoints name the run's recipe: a shipped recipe by its name, a file by its
    absolute path (two files with the same stem are different recipes)."""
    if recipe is None:
        return None
    path = find_recipe(recipe).resolve()
    return path.stem if path.parent == recipes_root().resolve() else str(path)
