"""Configs as validated dataclasses: TOML / YAML / JSON files, ``key=value`` overrides and argparse
options.

The documented name (``docs/config.md``) of the generic dataclass ⇄ TOML ⇄ argparse machinery
that the CLI, the demo and user code share. The code lives in
:mod:`rlhf_core.cli.dataclass_args` (``fields``, ``coerce``, ``load``, ``options``,
``toml_out``); this module re-exports its public API unchanged.
"""

from __future__ import annotations

from rlhf_core.cli.dataclass_args import (
    ConfigError,
    add_dataclass_arguments,
    apply_aliases,
    config_from_dict,
    config_to_dict,
    dump_config,
    dumps_toml,
    field_docs,
    load_config,
    overrides_from_namespace,
    parse_overrides,
    read_config_file,
)

__all__ = [
    "ConfigError",
    "apply_aliases",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
    "add_dataclass_arguments",
    "overrides_from_namespace",
    "dump_config",
    "dumps_toml",
    "field_docs",
    "read_config_file",
]
