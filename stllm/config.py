"""YAML file + `key=value` overrides -> a typed dataclass instance (unknown keys are errors naming the valid ones).

Schemas are plain dataclasses owned by the module that uses them (stllm.train.config, stllm.eval.config,
stllm.data.config); this module only loads, validates, merges and saves them (DESIGN decision 4).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


def _field_types(cls: type) -> dict[str, Any]:
    """Dataclass field name -> resolved type (works with `from __future__ import annotations` string types)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _valid_keys(schema: type, dotted: str) -> list[str]:
    cls: Any = schema
    for part in [p for p in dotted.split(".")[:-1] if p]:
        types = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in types or not dataclasses.is_dataclass(types[part]):
            return []
        cls = types[part]
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _explain(schema: type, key: str, source: str) -> ConfigError:
    valid = _valid_keys(schema, key)
    last = key.split(".")[-1]
    close = difflib.get_close_matches(last, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{hint}; valid keys here: {', '.join(valid) or '(none)'}")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """['a.b=1', 'c=[1,2]'] -> {'a.b': 1, 'c': [1, 2]} (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Dataclass defaults <- YAML at `path` <- `key=value` overrides; returns a `schema` instance.

    Nested dataclass fields are addressed with dots (`model.video_input=mean`). A YAML may name a parent
    file with a top-level `_base_: other.yaml` (relative to itself), merged first.
    """
    base = OmegaConf.structured(schema)
    if path is not None:
        base = OmegaConf.merge(base, _load_yaml_chain(schema, Path(path)))
    for key, value in parse_overrides(overrides).items():
        try:
            OmegaConf.update(base, key, value, merge=True, force_add=False)
            # OmegaConf.update on a struct config raises for unknown keys; double check the path exists
            OmegaConf.select(base, key, throw_on_missing=True)
        except (ConfigKeyError, AttributeError, KeyError) as err:
            raise _explain(schema, key, "command-line override") from err
        except ValidationError as err:
            raise ConfigError(f"command-line override {key}={value!r}: {err.msg}") from err
    obj = OmegaConf.to_object(base)
    return obj  # type: ignore[return-value]


def _load_yaml_chain(schema: type, path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parent = data.pop("_base_", None)
    merged = OmegaConf.structured(schema)
    if parent:
        merged = OmegaConf.merge(merged, _load_yaml_chain(schema, path.parent / parent))
    try:
        return OmegaConf.merge(merged, OmegaConf.create(data))
    except ConfigKeyError as err:
        raise _explain(schema, str(err.full_key), str(path)) from err
    except ValidationError as err:
        raise ConfigError(f"{path}: {err.full_key}: {err.msg}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) dataclass instance -> plain dict, for saving beside checkpoints and results."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
