"""YAML file + `key=value` overrides -> a typed dataclass instance (unknown keys are errors naming the valid ones).

Schemas are plain dataclasses owned by the module that uses them (stllm.train.config, stllm.eval.config,
stllm.data.config); this module only loads, validates, merges and saves them (docs/design.md decision 4).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from stllm.errors import StllmError

T = TypeVar("T")


class ConfigError(StllmError, ValueError):
    """A config file or override that does not fit its schema."""


def _field_types(cls: type) -> dict[str, Any]:
    """Dataclass field name -> resolved type (works with `from __future__ import annotations` string types)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _valid_keys(schema: type, dotted: str) -> list[str]:
    cls: Any = schema
    for part in [p for p in dotted.split(".")[:-1] if p]:
        types = _field_types(cls) if isinstance(cls, type) and dataclasses.is_dataclass(cls) else {}
        if part not in types or not dataclasses.is_dataclass(types[part]):
            return []
        cls = types[part]
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _explain(schema: type, key: str, source: str) -> ConfigError:
    import sys  # local: only this function may change in this module

    valid = _valid_keys(schema, key)
    where = ""
    # OmegaConf drops the path of a key inside a list entry (tasks: [{name: .., jsn: ..}] reports just 'jsn'); the
    # error being handled names the schema that owns the key, so its fields are the valid keys to list
    owner = getattr(sys.exc_info()[1], "object_type", None)
    if isinstance(owner, type) and dataclasses.is_dataclass(owner):
        valid = [f.name for f in dataclasses.fields(owner)]
        if owner is not schema and "." not in key:
            where = f" in a {owner.__name__} entry"
    last = key.split(".")[-1]
    close = difflib.get_close_matches(last, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{where}{hint}; valid keys here: {', '.join(valid) or '(none)'}")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """['a.b=1', 'c=[1,2]'] -> {'a.b': 1, 'c': [1, 2]} (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def load_config(
    schema: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = (), section: str | None = None
) -> T:
    """Dataclass defaults <- YAML at `path` <- `key=value` overrides; returns a `schema` instance.

    Nested dataclass fields are addressed with dots (`model.video_input=mean`). A YAML may name a parent
    file with a top-level `_base_: other.yaml` (relative to itself), merged first. With `section`, a YAML whose
    top level holds that section as a mapping contributes only it (a training config's `data:`), and
    overrides may carry the section prefix (`data.data_root=...`).
    """
    base = OmegaConf.structured(schema)
    source = str(path) if path is not None else "defaults"
    if path is not None:
        data = read_yaml(Path(path))
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        base = _merge(base, data, schema, source)
    for key, value in parse_overrides(overrides).items():
        if section is not None and key.startswith(section + "."):
            key = key[len(section) + 1 :]
        try:
            OmegaConf.update(base, key, value, merge=True, force_add=False)
            # OmegaConf.update on a struct config raises for unknown keys; double check the path exists
            OmegaConf.select(base, key, throw_on_missing=True)
        except (ConfigKeyError, AttributeError, KeyError) as err:
            raise _explain(schema, key, "command-line override") from err
        except ValidationError as err:
            raise ConfigError(f"command-line override {key}={value!r}: {err.msg}") from err
    try:
        obj = OmegaConf.to_object(base)
    except ValidationError as err:
        raise ConfigError(f"{source}: {err.full_key}: {err.msg}") from err
    return obj  # type: ignore[return-value]


def _merge(base: Any, data: dict[str, Any], schema: type, source: str) -> Any:
    try:
        return OmegaConf.merge(base, OmegaConf.create(data))
    except ConfigKeyError as err:
        raise _explain(schema, str(err.full_key), source) from err
    except ValidationError as err:
        raise ConfigError(f"{source}: {err.full_key}: {err.msg}") from err


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its `_base_` parents merged in (parent first), as a plain dict.

    Every problem is a ConfigError naming the file: not found, not UTF-8, not YAML, not a mapping, a `_base_`
    chain that includes itself.
    """
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: the _base_ chain includes itself ({chain})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parent = data.pop("_base_", None)
    if not parent:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: _base_ must be a file name, got {parent!r}")
    merged = OmegaConf.merge(
        OmegaConf.create(read_yaml(path.parent / parent, (*_seen, resolved))), OmegaConf.create(data)
    )
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) dataclass instance -> plain dict, for saving beside checkpoints and results."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
