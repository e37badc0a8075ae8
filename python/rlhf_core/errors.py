"""The exception hierarchy of rlhf_core.

Every error raised by the Rust core is an instance of :class:`RlhfCoreError` and also of the
familiar builtin it refines, so ``except ValueError`` keeps working:

- :class:`ShapeError` (``ValueError``): array lengths or shapes disagree.
- :class:`DtypeError` (``TypeError``): unsupported element type.
- :class:`OffsetsError` (``ValueError``): ``offsets`` not a valid ragged layout.
- :class:`InvalidOptionError` (``ValueError``): option string or scalar out of range.
- :class:`CapacityError` (``ValueError``): a sequence does not fit a budget or pack row.
- :class:`FieldError` (``KeyError``): unknown, missing or conflicting named field.
- :class:`StateError` (``ValueError``): serialized state that cannot be restored.

Configuration dataclasses validate their fields with :func:`check_field`, whose message names
the field, the value it got and the fix.
"""

from typing import Any

from rlhf_core._core import (
    CapacityError,
    DtypeError,
    FieldError,
    InvalidOptionError,
    OffsetsError,
    RlhfCoreError,
    ShapeError,
    StateError,
)

__all__ = [
    "RlhfCoreError",
    "ShapeError",
    "DtypeError",
    "OffsetsError",
    "InvalidOptionError",
    "CapacityError",
    "FieldError",
    "StateError",
    "check_field",
]


def check_field(ok: bool, name: str, value: Any, fix: str) -> None:
    """Raise ``ValueError("<name>=<value!r>: <fix>")`` unless ``ok`` (config validation)."""
    if not ok:
        raise ValueError(f"{name}={value!r}: {fix}")
