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
- :class:`AllocationError` (``MemoryError``): an array too large to allocate, named by the
  argument whose size asked for it (``reserve(sequences=2**62)``,
  ``to_padded(pad_to_multiple_of=2**40)``, ``balanced_partition(k=2**50)``).

Configuration dataclasses validate their fields with :func:`check_field`, whose message names
the field, the value it got and the fix.
"""

from typing import Any

from rlhf_core._core import (
    AllocationError,
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
    "AllocationError",
    "check_field",
]


def check_field(ok: bool, name: str, value: Any, fix: str) -> None:
    """Raise ``ValueError("<name>=<value!r>: <fix>")`` unless ``ok`` (config validation)."""
    if not ok:
        raise ValueError(f"{name}={value!r}: {fix}")
