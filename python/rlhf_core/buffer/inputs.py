"""Input conversion of the rollout buffer: the accepted forms of a per-token field (lists of
1-D arrays, :class:`Ragged`, :class:`Padded`, a padded array with a shared mask), per-sequence
arrays and lengths, each checked with an error that names the field (scalar options are
checked by :mod:`rlhf_core._options`, shared with the kernels).

Arrays are read under the package's one interop policy (:mod:`rlhf_core._arrays`): strict by
default, with the explicit ``cast=True`` of :meth:`RolloutBuffer.add` /
:meth:`RolloutBuffer.set_advantages` for float16 / bfloat16 values and tensors on another
device. Beyond that policy the buffer widens unusual integer types to int64 (the core stores
int32 and int64) and turns 0/1 masks of any numeric dtype into bool.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from rlhf_core._arrays import is_tensor, to_numpy
from rlhf_core._options import INT64_MAX
from rlhf_core.errors import DtypeError, OffsetsError, ShapeError

__all__ = [
    "CAST_HINT",
    "ID_DTYPES",
    "Padded",
    "Ragged",
    "field_to_numpy",
    "index_array",
    "sequence_input",
    "token_input",
]

ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_STORABLE = {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64, np.bool_)}
_MASK_OK = {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64, np.bool_)}

#: How a user of :meth:`RolloutBuffer.add` turns the opt-in conversion on (named in errors).
CAST_HINT = "cast=True"


class Ragged(NamedTuple):
    """A per-token input in the native ragged layout: ``values`` 1-D (every sequence
    concatenated) and ``offsets`` int ``(B + 1,)`` with ``offsets[0] == 0``; sequence ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``."""

    values: Any
    offsets: Any


class Padded(NamedTuple):
    """A per-token input padded to ``(B, T)`` with its own ``mask`` of the same shape (each row
    one contiguous run of ones: left or right padding)."""

    values: Any
    mask: Any


def field_to_numpy(x: Any, name: str, *, cast: bool = False) -> np.ndarray:
    """A field of :meth:`RolloutBuffer.add` as numpy (:func:`rlhf_core._arrays.to_numpy`; its
    errors name ``cast=True`` as the way to convert)."""
    return to_numpy(x, name, cast=cast, cast_hint=CAST_HINT)


def _storable(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` itself when the core stores its dtype; other integer types widened to int64 (a
    documented, lossless conversion); anything else a ``DtypeError``."""
    if a.dtype in _STORABLE:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    fix = " (or pass cast=True to convert float16 to float32)" if a.dtype == np.float16 else ""
    raise DtypeError(
        f"{name} has dtype {a.dtype}; expected int32, int64, float32, float64 or bool{fix}"
    )


def _as_bool_mask(a: np.ndarray, name: str) -> np.ndarray:
    """A 0/1 array of any numeric dtype as bool; other values are an error."""
    if a.dtype == np.bool_:
        return a
    bad = (a != 0) & (a != 1)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise DtypeError(f"{name} must hold only 0/1 (or be bool); position {where} holds {a[tuple(where)]}")
    return a.astype(np.bool_)


def _mask_dtype(m: np.ndarray) -> np.ndarray:
    if m.dtype in _MASK_OK:
        return m
    if m.dtype.kind in "iu":
        return m.astype(np.int64)
    if m.dtype.kind == "f":
        return m.astype(np.float64)
    raise DtypeError(f"masks must be bool, integer or float, got {m.dtype}")


def token_input(
    name: str, value: Any, shared_mask: Any, *, bool_field: bool = False, cast: bool = False
) -> tuple[str, Any, Any]:
    """One per-token input as ``("ragged", values, lengths)``, ``("pieces", [one 1-D array per
    sequence], None)`` or ``("padded", values, mask)``.

    Accepted forms: a list/tuple of 1-D arrays or tensors (one per sequence); :class:`Ragged`
    (flat values + offsets); :class:`Padded` (2-D values + mask); or a 2-D ``(B, T)`` array with
    ``shared_mask``. ``cast``: the opt-in conversion of :mod:`rlhf_core._arrays` (float16 /
    bfloat16 to float32, other devices to the CPU) for the values.
    """

    def arr(x: Any, what: str = name) -> np.ndarray:
        return field_to_numpy(x, what, cast=cast)

    fix = (lambda a: _as_bool_mask(a, name)) if bool_field else (lambda a: _storable(a, name))
    if isinstance(value, Ragged):
        values, offsets = arr(value.values), arr(value.offsets)
        if values.ndim != 1 or offsets.ndim != 1:
            raise ShapeError(
                f"{name}: Ragged needs 1-D values and offsets, got shapes {values.shape} and "
                f"{offsets.shape}"
            )
        if offsets.dtype.kind not in "iu":
            raise DtypeError(f"{name}: offsets must be integers, got {offsets.dtype}")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets.size == 0 or offsets[0] != 0:
            raise OffsetsError(f"{name}: offsets must start at 0 and have B + 1 entries")
        lengths = np.diff(offsets)
        if (lengths < 0).any():
            i = int(np.argmax(lengths < 0))
            raise OffsetsError(f"{name}: offsets decrease at index {i + 1}")
        return ("ragged", np.ascontiguousarray(fix(values)), lengths)
    if isinstance(value, Padded):
        values, mask = arr(value.values), arr(value.mask)
        if values.ndim != 2 or mask.shape != values.shape:
            raise ShapeError(
                f"{name}: Padded needs 2-D values and a mask of the same shape, got "
                f"{values.shape} and {mask.shape}"
            )
        return ("padded", np.ascontiguousarray(fix(values)), np.ascontiguousarray(_mask_dtype(mask)))
    if isinstance(value, (list, tuple)):
        if not value:
            return ("pieces", [], None)
        if not cast and all(type(v) is np.ndarray for v in value):
            arrays = list(value)  # the common case: no per-element conversion
        else:
            arrays = [arr(v) for v in value]
            # An empty Python list has no dtype of its own (numpy says float64): it takes the
            # dtype of the other sequences (int64 when all are empty).
            loose = {
                i for i, (v, a) in enumerate(zip(value, arrays, strict=True))
                if a.size == 0 and not isinstance(v, np.ndarray) and not is_tensor(v)
            }
            if loose:
                typed = [a.dtype for i, a in enumerate(arrays) if i not in loose]
                dt = typed[0] if typed else np.dtype(np.int64)
                for i in loose:
                    arrays[i] = np.zeros(0, dtype=dt)
        if any(a.ndim != 1 for a in arrays):
            i = next(i for i, a in enumerate(arrays) if a.ndim != 1)
            raise ShapeError(f"{name}: sequence {i} has shape {arrays[i].shape}; expected a 1-D array")
        first_dt = arrays[0].dtype
        if any(a.dtype != first_dt for a in arrays):
            i = next(i for i, a in enumerate(arrays) if a.dtype != first_dt)
            raise DtypeError(
                f"{name}: sequence {i} has dtype {arrays[i].dtype}, sequence 0 has "
                f"{first_dt}; every sequence of a field must have the same dtype"
            )
        if bool_field or first_dt not in _STORABLE:
            arrays = [fix(a) for a in arrays]
        if not all(a.flags.c_contiguous for a in arrays):
            arrays = [np.ascontiguousarray(a) for a in arrays]
        # One slice per sequence goes straight into the Rust column (no concatenation).
        return ("pieces", arrays, None)
    a = arr(value)
    if a.ndim == 2:
        if shared_mask is None:
            raise ShapeError(
                f"{name} is padded (B, T) = {a.shape}; pass a mask of the same shape (the "
                f"shared prompt_mask / response_mask, or Padded({name}, mask))"
            )
        m = arr(shared_mask, "mask")
        if m.shape != a.shape:
            raise ShapeError(f"{name} has shape {a.shape} but its mask has shape {m.shape}")
        return ("padded", np.ascontiguousarray(fix(a)), np.ascontiguousarray(_mask_dtype(m)))
    raise ShapeError(
        f"{name} has shape {a.shape}; give a list of 1-D arrays (one per sequence), "
        f"Ragged(values, offsets), or a padded (B, T) array with a mask"
    )


def sequence_input(name: str, value: Any, *, cast: bool = False) -> np.ndarray:
    """One per-sequence input as a contiguous 1-D array of a storable dtype."""
    if name == "scores" and isinstance(value, (list, tuple)):
        value = [np.nan if v is None else v for v in value]
    a = field_to_numpy(value, name, cast=cast)
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D with one value per sequence, got shape {a.shape}")
    if name == "scores" and a.dtype.kind in "iub":
        a = a.astype(np.float64)
    if name == "truncated":
        a = _as_bool_mask(a, name)
    if name == "group_ids" and a.dtype.kind not in "iu":
        raise DtypeError(f"group_ids must be integers, got {a.dtype}; map other ids to ints first")
    return np.ascontiguousarray(_storable(a, name))


def index_array(lengths: Any, name: str = "lengths") -> np.ndarray:
    """Integer ``lengths`` (or indices) as contiguous int64 ``(n,)``; an error naming ``name``
    for another shape or dtype."""
    a = to_numpy(lengths, name)
    if a.size == 0 and isinstance(lengths, (list, tuple)):
        a = np.zeros(0, dtype=np.int64)  # an empty Python list has no dtype of its own
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise DtypeError(f"{name} must be integers, got {a.dtype}")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > INT64_MAX:
        i = int(np.argmax(a > INT64_MAX))
        raise ShapeError(f"{name}[{i}] is {int(a[i])}, beyond int64 (at most 2**63 - 1)")
    return np.ascontiguousarray(a, dtype=np.int64)
