"""Building a config: field defaults < a config file (TOML, YAML or JSON) < overrides typed on
a command line; other spellings of field names (aliases) mapped onto the fields."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from rlhf_core.config.coerce import from_mapping
from rlhf_core.config.fields import ConfigError, require_dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "apply_aliases",
    "load_config",
    "config_from_dict",
    "parse_overrides",
    "read_config_file",
]

T = TypeVar("T")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "c": 2} -> {"a": {"b": 1}, "c": 2} (later keys win)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _nest_any(data: Mapping[str, Any]) -> dict[str, Any]:
    """Expand the dotted keys of ``data`` (its top level only: values that are tables are kept
    as they are, so keys containing dots inside a ``dict`` field survive) and merge them with
    tables given under the same name."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out = _deep_merge(out, _nest({str(k): v}))
    return out


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "") -> T:
    """Build ``cls`` from a (possibly nested, possibly dotted-key) mapping.

    Missing fields take their defaults; ``source`` (e.g. a file name) prefixes error messages.
    """
    require_dataclass(cls)
    where = f"{source}: " if source else ""
    return from_mapping(cls, _nest_any(data), root=cls, prefix="", where=where)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Parse ``["--a.b", "1", "--flag", "c=2", "--d=x"]`` into ``{"a.b": "1", "flag": "true",
    "c": "2", "d": "x"}``. A ``--key`` followed by another ``--key`` (or nothing) means
    ``true``, so boolean switches can be written bare. Dashes in names become underscores."""
    items = list(overrides)
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        tok = str(items[i])
        if tok.startswith("--"):
            body = tok[2:]
            if not body:
                raise ConfigError("empty override '--'")
            if "=" in body:
                key, value = body.split("=", 1)
                i += 1
            elif i + 1 < len(items) and not str(items[i + 1]).startswith("--"):
                key, value = body, str(items[i + 1])
                i += 2
            else:
                key, value = body, "true"
                i += 1
        elif "=" in tok:
            key, value = tok.split("=", 1)
            i += 1
        else:
            raise ConfigError(f"cannot parse override {tok!r}: write 'key=value' or '--key value'")
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"override {tok!r} has an empty key")
        out[key] = value
    return out


def _read_toml(p: pathlib.Path) -> dict[str, Any]:
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


def _read_yaml(p: pathlib.Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc


def _read_json(p: pathlib.Path) -> Any:
    import json

    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: invalid JSON: {exc}") from exc


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a config file: YAML for ``.yaml`` / ``.yml``, JSON for ``.json``, TOML
    otherwise. YAML and JSON may write ``null`` for an option set to none."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = _read_yaml(p)
    elif suffix == ".json":
        data = _read_json(p)
    else:
        return _read_toml(p)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping of option names to values at the top level")
    return {str(k): v for k, v in data.items()}


def apply_aliases(
    data: Mapping[str, Any],
    aliases: Mapping[str, str],
    *,
    where: str = "",
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``data`` with every top-level key that is an alias (``aliases``: alias -> field name)
    renamed to its field. An alias given together with its field, or two aliases of one
    field, is an error (they are one option); a key of ``hints`` (a known name with no field
    of its own) is an error carrying that hint."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    prefix = f"{where}: " if where else ""
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        if hints and key in hints and key not in aliases:
            raise ConfigError(f"{prefix}{key!r} has no equivalent here: {hints[key]}")
        name = aliases.get(key, key)
        if name in given:
            raise ConfigError(
                f"{prefix}{given[name]!r} and {key!r} are the same option ({name!r}); give one"
            )
        given[name] = key
        out[name] = value
    return out


def load_config(
    cls: type[T],
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
    aliases: Mapping[str, str] | None = None,
    hints: Mapping[str, str] | None = None,
) -> T:
    """Build a validated ``cls`` from its defaults, a config file and overrides.

    Args:
        cls: a dataclass type whose fields carry ``metadata={"help": ...}``.
        toml_path: optional config file (:func:`read_config_file`: TOML, or YAML / JSON by
            suffix); its keys are field names (tables for nested dataclasses, or dotted keys).
        overrides: ``["--key", "value", "key=value", ...]`` strings, or a mapping of dotted
            names to values (strings are parsed, typed values checked).
        section: read only this top-level table of the file (e.g. ``"ppo"`` in a file with
            several configs); a missing section is an error.
        aliases: other names of fields (alias -> field), accepted in the file and the
            overrides (:func:`apply_aliases`: an alias with its field in one place is an
            error); ``hints``: names with no field, refused with the hint.

    Raises:
        ConfigError: unknown key (with the closest field suggested), a value of the wrong type,
            an unreadable file, or the dataclass's own validation failing.
    """
    require_dataclass(cls)
    merged: dict[str, Any] = {}
    source = ""
    if toml_path is not None:
        data = read_config_file(toml_path)
        source = str(toml_path)
        if section is not None:
            if section not in data or not isinstance(data[section], dict):
                raise ConfigError(f"{source}: no [{section}] table")
            data = data[section]
        if aliases or hints:
            data = apply_aliases(data, aliases or {}, where=source, hints=hints)
        merged = _nest_any(data)
        # check keys and types of the file alone first so that its errors name the file
        from_mapping(cls, merged, root=cls, prefix="", where=f"{source}: ", construct=False)
    if overrides:
        if isinstance(overrides, Mapping):
            flat: Mapping[str, Any] = {str(k).replace("-", "_"): v for k, v in overrides.items()}
        else:
            if isinstance(overrides, str):
                raise TypeError("overrides must be a list of strings or a mapping, not a str")
            flat = parse_overrides(overrides)
        if aliases or hints:
            flat = apply_aliases(flat, aliases or {}, where="overrides", hints=hints)
        merged = _deep_merge(merged, _nest_any(flat))
        source = f"{source} + overrides" if source else "overrides"
    return config_from_dict(cls, merged, source=source)
