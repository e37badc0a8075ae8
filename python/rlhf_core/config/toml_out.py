"""A resolved config back out: a plain nested dict, TOML text, a ``config.toml`` file.

The writing itself lives in :mod:`rlhf_core._io` (the trainers write their run folder's
``config.toml`` with it too); this module gives it the config API's names and errors.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from rlhf_core import _io
from rlhf_core._io import atomic_write_text
from rlhf_core.config.fields import ConfigError

__all__ = ["config_to_dict", "dumps_toml", "dump_config"]


def config_to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict of a config instance (tuples as lists, paths as strings)."""
    return _io.dataclass_to_dict(obj)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a nested mapping to TOML text. Scalars and arrays come first, then one
    ``[table]`` per nested mapping. ``None`` values (TOML has no null) are written as
    ``key = "none"``, which :func:`~rlhf_core.config.load_config` reads back as
    ``None`` for an optional field: a config written here reads back equal. A ``None`` inside
    a list, or a value TOML cannot hold, is a :class:`ConfigError` naming the key."""
    try:
        return _io.dumps_toml(data)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def dump_config(
    obj: Any, path: str | os.PathLike[str], *, header: str | None = None
) -> pathlib.Path:
    """Write the resolved config ``obj`` (a dataclass instance, or a mapping) as TOML to
    ``path``, creating parent folders (replaced atomically). The file reads back with
    :func:`~rlhf_core.config.load_config` into an equal object. Returns the path."""
    data = config_to_dict(obj) if not isinstance(obj, Mapping) else dict(obj)
    text = dumps_toml(data)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return atomic_write_text(path, text)
