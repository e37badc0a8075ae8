"""One argparse option per field of a config dataclass, and back to overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Literal

from rlhf_core.config.fields import (
    all_keys,
    default_of,
    init_fields,
    is_dataclass_type,
    require_dataclass,
    strip_optional,
    type_hints,
    type_name,
)

__all__ = ["add_dataclass_arguments", "overrides_from_namespace"]


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    prefix: str = "",
    group_title: str | None = None,
) -> None:
    """Add one ``--name`` option per field of ``cls`` (``--nested.name`` for nested
    dataclasses; ``--some-name`` is accepted as well as ``--some_name``).

    Options are parsed as strings and default to "not given" (``argparse.SUPPRESS``), so only
    what the user typed ends up in the namespace; pass it through
    :func:`overrides_from_namespace` and :func:`~rlhf_core.config.load_config` to
    coerce and validate. Each help line states the field's help text, type and default.
    Boolean fields may be given bare (``--flag`` means true); list fields take one word
    (``a,b``, ``"[1, 2]"``) or several (``--report_to wandb trackio``).
    """
    require_dataclass(cls)
    title = group_title or f"{cls.__name__} options"
    group = parser.add_argument_group(title) if hasattr(parser, "add_argument_group") else parser
    hints = type_hints(cls)
    for f in init_fields(cls):
        tp = hints.get(f.name, Any)
        inner, _ = strip_optional(tp)
        dotted = prefix + f.name
        if is_dataclass_type(inner):
            add_dataclass_arguments(
                parser, inner, prefix=dotted + ".", group_title=f"{dotted} ({inner.__name__})"
            )
            continue
        default = default_of(f)
        default_txt = "required" if default is dataclasses.MISSING else f"default: {_fmt(default)}"
        text = str(f.metadata.get("help", "")).strip()
        help_txt = f"{text} [{type_name(tp)}; {default_txt}]".strip().replace("%", "%%")
        names = [f"--{dotted}"]
        if "_" in dotted:
            names.append("--" + dotted.replace("_", "-"))
        kwargs: dict[str, Any] = {
            "dest": dotted,
            "default": argparse.SUPPRESS,
            "help": help_txt,
            "metavar": _metavar(inner),
        }
        if inner is bool:
            kwargs.update(nargs="?", const="true")
        elif typing.get_origin(inner) in (list, tuple):
            # --report_to wandb trackio, as well as wandb,trackio
            kwargs.update(nargs="+", metavar="ITEM")
        group.add_argument(*names, **kwargs)


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if tp is bool:
        return "BOOL"
    if tp is int:
        return "INT"
    if tp is float:
        return "FLOAT"
    if origin in (list, tuple):
        return "LIST"
    if origin is dict:
        return "TABLE"
    return "VALUE"


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type(v).__name__ + "()"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def overrides_from_namespace(namespace: argparse.Namespace, cls: type) -> dict[str, str]:
    """The dotted-name overrides the user gave, from a namespace parsed by a parser that
    :func:`add_dataclass_arguments` filled for ``cls`` (other attributes are ignored)."""
    keys = set(all_keys(cls))
    out: dict[str, str] = {}
    for k, v in vars(namespace).items():
        if k not in keys:
            continue
        if isinstance(v, list):  # a list option (nargs="+"): one word is parsed as before
            v = v[0] if len(v) == 1 else json.dumps(v)
        out[k] = v
    return out
