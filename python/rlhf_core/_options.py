"""Scalar options, checked once: the one validation of integer, real, string and boolean
arguments that the kernels (:mod:`rlhf_core.ops`) and the rollout buffer and planners
(:mod:`rlhf_core.buffer`) share, so an option means the same thing wherever it is passed.

Nothing is coerced: a ``bool`` is not an integer, a float is not an integer (``1.9`` is not
``1``), a string is not a number (``"0.5"`` is not ``0.5``). Integers must fit the Rust core's
types: int64 for signed options, ``[0, 2**63)`` for sizes and counts, ``[0, 2**64)`` for seeds
and epochs. Every refusal is an :class:`~rlhf_core.errors.InvalidOptionError` naming the
argument, the value and its type; ranges that depend on the option (``ddof`` 0 or 1, ``gamma``
in ``[0, 1]``) are the core's to check.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from rlhf_core.errors import InvalidOptionError

__all__ = [
    "INT64_MAX",
    "bool_option",
    "int_option",
    "positive_option",
    "real_option",
    "seed_option",
    "size_option",
    "str_option",
    "uint64_option",
]

INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _desc(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _integer(v: Any, name: str, lo: int, hi: int, in_range: str, optional: bool) -> Any:
    """``v`` as an int in ``[lo, hi]``; ``in_range`` says so in the error."""
    if v is None and optional:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        none = " or None" if optional else ""
        raise InvalidOptionError(f"{name} must be an integer{none}, got {_desc(v)}")
    i = int(v)
    if not lo <= i <= hi:
        raise InvalidOptionError(f"{name} must be {in_range}, got {i}")
    return i


def int_option(v: Any, name: str, *, optional: bool = False) -> Any:
    """An integer option that fits int64 (Python or numpy integer; ``bool`` refused)."""
    in_range = "an integer from -2**63 to 2**63 - 1 (int64)"
    return _integer(v, name, _INT64_MIN, INT64_MAX, in_range, optional)


def size_option(v: Any, name: str, *, optional: bool = False) -> Any:
    """A size or count: an integer in ``[0, 2**63)``."""
    return _integer(v, name, 0, INT64_MAX, "an integer in [0, 2**63)", optional)


def positive_option(name: str, value: Any) -> int:
    """A size that must be at least 1: an integer in ``[1, 2**63)``."""
    out: int = _integer(value, name, 1, INT64_MAX, "a positive integer below 2**63", False)
    return out


def uint64_option(v: Any, name: str) -> int:
    """An integer in ``[0, 2**64)`` (seeds, epochs)."""
    out: int = _integer(v, name, 0, _UINT64_MAX, "an integer in [0, 2**64)", False)
    return out


def seed_option(seed: Any) -> int:
    """A shuffle seed: an integer in ``[0, 2**64)``."""
    return uint64_option(seed, "seed")


def real_option(v: Any, name: str, *, optional: bool = False) -> Any:
    """A real option (int or float, Python or numpy; ``bool`` and strings refused)."""
    if v is None and optional:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        none = " or None" if optional else ""
        raise InvalidOptionError(f"{name} must be a real number{none}, got {_desc(v)}")
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range
        raise InvalidOptionError(f"{name} is too large for a float64, got {v}") from None


def str_option(v: Any, name: str, *, optional: bool = False) -> Any:
    """A string option (the core checks it against its allowed set)."""
    if v is None and optional:
        return None
    if not isinstance(v, str):
        none = " or None" if optional else ""
        raise InvalidOptionError(f"{name} must be a string{none}, got {_desc(v)}")
    return v


def bool_option(v: Any, name: str) -> bool:
    """``True`` or ``False`` (Python or numpy bool; 0 / 1 refused)."""
    if not isinstance(v, (bool, np.bool_)):
        raise InvalidOptionError(f"{name} must be True or False, got {_desc(v)}")
    return bool(v)
