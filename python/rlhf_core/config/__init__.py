"""Configs as validated dataclasses: TOML / YAML / JSON files, ``key=value`` overrides and argparse
options.

Every config in rlhf_core is a plain :func:`dataclasses.dataclass` whose fields carry
``metadata={"help": "..."}`` and whose ``__post_init__`` raises ``ValueError`` naming the field,
its value and the fix. This package is generic over such classes:

- :func:`load_config` builds an instance from defaults, an optional config file (TOML, or YAML
  / JSON by suffix: :func:`read_config_file`) and overrides, with optional aliases of field
  names (:func:`apply_aliases`) (``load.py``; the per-type conversion is ``coerce.py``).
- :func:`add_dataclass_arguments` adds one ``--field`` option per field (dotted names for
  nested dataclasses, e.g. ``--optim.lr``) whose help documents the field, its type and default;
  :func:`overrides_from_namespace` turns the parsed options back into overrides
  (``options.py``).
- :func:`dump_config` writes the resolved config as TOML that :func:`load_config` reads back
  (``toml_out.py``).
- :func:`field_docs` lists the fields with their types, defaults and help (``fields.py``).

Type coercion follows the field annotations: ``int``, ``float``, ``bool``, ``str``,
``pathlib.Path``, ``Optional[X]`` / ``X | None``, ``Literal[...]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses. Strings (from the command
line) are parsed; typed TOML values are checked. Unknown keys are errors naming the key and the
closest field. All errors here are :class:`ConfigError` (a ``ValueError``).

Precedence, lowest first: field defaults < TOML file < overrides.

The CLI (:mod:`rlhf_core.cli`), the demo and user code share it; it imports nothing of the
package but :mod:`rlhf_core._io`, so any layer may use it (``docs/config.md``).
"""

from __future__ import annotations

from rlhf_core.config.fields import BOOL_WORDS, ConfigError, field_docs
from rlhf_core.config.load import (
    apply_aliases,
    config_from_dict,
    load_config,
    parse_overrides,
    read_config_file,
)
from rlhf_core.config.options import add_dataclass_arguments, overrides_from_namespace
from rlhf_core.config.toml_out import config_to_dict, dump_config, dumps_toml

__all__ = [
    "ConfigError",
    "BOOL_WORDS",
    "apply_aliases",
    "read_config_file",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
    "add_dataclass_arguments",
    "overrides_from_namespace",
    "dump_config",
    "dumps_toml",
    "field_docs",
]
