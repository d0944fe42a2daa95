"""A run's config from its sources: a preset, then a TOML file, then `--set key=value` overrides; and
what `--resume` lets them change in a saved run's config.

Strings from the command line (and string values in a TOML file, for keys that are not strings) are
parsed into the type of the key's current value (`parse_value`); the result is validated whole by
`RunConfig.update`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from baseforge.config import (
    MODEL_KEYS,
    RENAMED,
    TRAIN_KEYS,
    RunConfig,
    unknown_key,
    with_new_names,
)
from baseforge.errors import ConfigError, UserError
from baseforge.presets import preset_config

DEFAULT_PRESET = "cpu-small"  # a config that names no preset (no --preset, none in its TOML) starts here

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_value(key: str, raw: str, current):
    """Parse a --set string into the type of the key's current value."""
    kind = type(current)
    low = raw.strip().lower()
    if key in ("micro_batch", "compile") and low == "auto":
        return "auto"
    if key == "compile":
        current = False  # a bool from here on
    if key == "vocab_size" and low in ("none", "data", "auto"):
        return None
    try:
        if isinstance(current, bool):
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int) or current is None or key == "micro_batch":
            number = float(raw)  # accepts 1e6 and 1_000_000 as well as 1000000
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"config: {key} = {raw!r} is not a valid {kind.__name__}") from None
    return raw


def parse_overrides(overrides) -> dict:
    """`--set key=value` strings as {key: raw value}, keys checked."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in MODEL_KEYS and key not in TRAIN_KEYS and key not in RENAMED:
            raise unknown_key(key)
        parsed[key] = raw
    return with_new_names(parsed)


RECIPES = Path(__file__).parent / "recipes"  # recipe files shipped with the package


def load_toml(path: Path | str) -> dict:
    """A TOML config file; a name that is not a file here is looked up among the shipped recipes
    (`--config seed-3090`, or `--config recipes/seed-3090.toml` outside a clone)."""
    path = Path(path)
    if not path.is_file():
        shipped = RECIPES / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.toml")))
            raise UserError(f"config file {path} not found (shipped recipes: {names})")
        path = shipped
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def toml_data(toml_path: Path | str) -> list[str]:
    """A recipe's `data = "DIR"` or `data = ["DIR:WEIGHT", ...]`: --data's syntax, [] when absent."""
    value = load_toml(toml_path).get("data", [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise UserError(f"config file {toml_path}: data must be a data dir or a list of DIR:WEIGHT strings")
    return values


def resolve_config(
    preset: str | None, toml_path: Path | str | None = None, overrides: list[str] | tuple = ()
) -> RunConfig:
    """Preset, then TOML file (flat keys or [model]/[train] tables; may name a `preset`), then --set."""
    table = load_toml(toml_path) if toml_path else {}
    table.pop("data", None)  # the run's data, not its config (toml_data)
    name = preset or table.pop("preset", None) or DEFAULT_PRESET
    table.pop("preset", None)
    config = preset_config(name)
    flat = {}
    for key, value in table.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    values = {}
    for key, value in with_new_names(flat).items():
        current = config.get(key) if key in MODEL_KEYS or key in TRAIN_KEYS else None
        if isinstance(value, str) and not isinstance(current, str):
            value = parse_value(key, value, current)
        values[key] = value
    values.update(_typed_overrides(config, overrides))
    config.update(values)
    return config


def _typed_overrides(config: RunConfig, overrides) -> dict:
    return {key: parse_value(key, raw, config.get(key)) for key, raw in parse_overrides(overrides).items()}


def apply_overrides(config: RunConfig, overrides, model_keys: bool = True) -> None:
    """Apply `--set key=value` strings together, then validate the result."""
    values = _typed_overrides(config, overrides)
    for key, value in values.items():
        if key in MODEL_KEYS and not model_keys and value != config.get(key):
            raise UserError(f"--set {key}: the model's shape cannot change on --resume")
    config.update(values)


def config_changes(
    saved: RunConfig, wanted: RunConfig, allowed: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """'key old -> new' for every key `wanted` changes in `saved`, except `allowed` train keys.

    A vocab_size left open (None) in `wanted` matches whatever the saved run took from its data.
    """
    changes = []
    for key in [*MODEL_KEYS, *TRAIN_KEYS]:
        old, new = saved.get(key), wanted.get(key)
        if key == "vocab_size" and new is None:
            continue
        if old != new and not (key in allowed and key in TRAIN_KEYS):
            changes.append(f"{key} {old!r} -> {new!r}")
    return changes


def resume_config(saved: RunConfig, preset: str | None, toml_path, overrides) -> RunConfig:
    """The config to resume with: the saved one, with `--set` train keys applied.

    `--preset` / `--config` / `--set` that equal the saved run are accepted (re-running the original
    command with --resume works); anything that would really change the model, or a train key
    that only a preset or file implies, is refused naming each key.
    """
    explicit = set(parse_overrides(overrides))
    if preset or toml_path:
        # Keys the run resolved from its data (vocabulary, document token) compare as resolved.
        wanted = resolve_config(preset or saved.preset, toml_path, overrides)
        wanted = wanted.with_vocab(saved.model.known_vocab_size, saved.model.doc_token)
        changes = config_changes(saved, wanted, allowed=explicit)
        if changes:
            raise UserError(
                f"--resume keeps the run's saved config, but the flags would change: {'; '.join(changes)}. "
                "Drop those flags, or change train keys with --set"
            )
    apply_overrides(saved, overrides, model_keys=False)
    return saved
