"""One way to load every command's typed config: YAML file, then `--set a.b=c` overrides.

Each package owns the pydantic model of its own config (``data_prep.config``,
``pipeline.config``); this module only resolves files and overrides into one of them and
turns validation failures into a single line that names the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from facetrain.data_prep.errors import describe_validation_error
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file, override or value that cannot be used; the message names the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], c) with `c` read as a YAML scalar (so 3, 0.1, true, [1, 2] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err.problem})") from err
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `tree` with each `a.b=c` override set.

    Missing sections are created; an integer part indexes a list (`loss.0.weight=0.5`).
    """
    result = _deep_copy(tree)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = result
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                part = _list_index(node, part, text, ".".join(path[:depth]))
            elif not isinstance(node, dict):
                where = ".".join(path[:depth])
                raise ConfigError(f"--set {text!r}: {where} is a {type(node).__name__}, not a section")
            elif not last and node.get(part) is None:
                node[part] = {}
            if last:
                node[part] = value
            else:
                node = node[part]
    return result


def _list_index(items: list[Any], part: str, text: str, where: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--set {text!r}: {where} is a list; expected an index, got {part!r}") from None
    if not -len(items) <= index < len(items):
        raise ConfigError(f"--set {text!r}: {where} has {len(items)} entries, no index {index}")
    return index


RECIPES_PACKAGE = "facetrain.configs"


def shipped_recipes() -> dict[str, Traversable]:
    """The recipes installed with facetrain (`configs/*.yaml`), by name without `.yaml`.

    Read through importlib.resources, so they are found in a wheel install as in a checkout.
    """
    folder = resources.files(RECIPES_PACKAGE)
    recipes = {
        entry.name.removesuffix(".yaml"): entry
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    }
    return dict(sorted(recipes.items()))


def find_recipe(name: str) -> Traversable:
    """The shipped recipe `name` (`cpu-asoftmax` or `cpu-asoftmax.yaml`), or ConfigError
    naming every shipped one."""
    recipes = shipped_recipes()
    recipe = recipes.get(name.removesuffix(".yaml"))
    if recipe is None:
        raise ConfigError(
            f"config {name}: not a file, nor a shipped recipe (shipped: {', '.join(recipes)})"
        )
    return recipe


def find_config(path: str | Path) -> Path | Traversable:
    """What `--config VALUE` reads: the file VALUE when there is one, else the shipped recipe
    of that name. A value naming a folder (`a/b.yaml`) is only ever a file."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 and path.name not in ("", ".", ".."):
        return find_recipe(path.name)
    raise ConfigError(f"config file {path}: not found")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in config file `path` (or in the shipped recipe of that name)."""
    source = find_config(path)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> M:
    """Resolve `base` <- YAML file <- overrides into `model`, or raise ConfigError naming the key."""
    tree = _deep_copy(dict(base or {}))
    if path is not None:
        tree = _deep_merge(tree, read_yaml(path))
    tree = apply_overrides(tree, overrides)
    return validate(model, tree, source=str(path) if path else "config")


def validate(model: type[M], tree: Mapping[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_validation_error(err)}") from err


def save_resolved(config: BaseModel, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (what every output directory keeps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _deep_copy(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(value) for value in tree]
    return tree
