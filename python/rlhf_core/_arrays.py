"""The one numpy / torch interop policy of the package: how the kernels (:mod:`rlhf_core.ops`)
and the rollout buffer (:mod:`rlhf_core.buffer`) read an array argument.

**Strict by default (no silent copies).** A numpy array is borrowed as it is. A torch tensor is
borrowed through ``Tensor.numpy()`` (shared memory), detached first when it requires grad; it
must live on the CPU and have a dtype numpy holds, so a float16 / bfloat16 or a GPU tensor is a
``DtypeError`` that names the argument and says how to convert it. Anything else array-like
(lists, tuples, scalars) goes through ``np.asarray``. Making a non-contiguous input contiguous
and widening integer indices to int64 are the callers' documented conversions, not this
module's.

**Opt-in conversion** (``cast=True``, offered by :meth:`rlhf_core.buffer.RolloutBuffer.add`
and :meth:`~rlhf_core.buffer.RolloutBuffer.set_advantages`): float16 / bfloat16 values become
float32 (numpy has no bfloat16; float32 holds both exactly) and tensors on another device are
copied to the CPU. The kernels offer no such switch: their inputs are read in place.

torch stays optional: a tensor is recognised only when ``torch`` is already imported.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from rlhf_core.errors import DtypeError

__all__ = ["is_tensor", "tensor_to_numpy", "to_numpy"]

_HALF_TORCH = ("torch.float16", "torch.bfloat16")


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (False while torch has not been imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _opt_in(cast_hint: str | None) -> str:
    return f", or pass {cast_hint}" if cast_hint else ""


def tensor_to_numpy(
    x: Any, name: str, *, cast: bool = False, cast_hint: str | None = None
) -> np.ndarray:
    """A numpy view of the torch tensor ``x`` (no copy for a contiguous CPU tensor of a numpy
    dtype; a non-contiguous one is made contiguous, as ``Tensor.numpy`` needs).

    Args:
        x: the tensor; detached when it requires grad.
        name: the argument's name, for errors.
        cast: convert float16 / bfloat16 to float32 and copy another device's tensor to the
            CPU instead of raising.
        cast_hint: how the caller's user turns ``cast`` on (e.g. ``"cast=True"``), added to
            the error message; None when the caller offers no such switch.

    Raises:
        DtypeError: ``x`` is on a device other than the CPU, or has dtype float16 /
            bfloat16, and ``cast`` is False.
    """
    half = str(x.dtype) in _HALF_TORCH
    if not cast:
        if x.device.type != "cpu":
            raise DtypeError(
                f"{name} is on device {x.device}; rlhf_core takes CPU tensors "
                f"(move it with {name}.cpu(){_opt_in(cast_hint)})"
            )
        if half:
            raise DtypeError(
                f"{name} has dtype {x.dtype}; expected float32 or float64 "
                f"(convert with {name}.float(){_opt_in(cast_hint)})"
            )
    if x.requires_grad:
        x = x.detach()
    if cast:
        if half:
            x = x.float()  # on its device: a smaller transfer
        if x.device.type != "cpu":
            x = x.cpu()
    if not x.is_contiguous():
        x = x.contiguous()
    return x.numpy()


def to_numpy(
    x: Any, name: str, *, cast: bool = False, cast_hint: str | None = None
) -> np.ndarray:
    """``x`` as a numpy array under the package's policy: a tensor through
    :func:`tensor_to_numpy`, anything else through ``np.asarray`` (a numpy array is returned
    as it is). With ``cast``, a float16 numpy array becomes float32 as well."""
    if is_tensor(x):
        return tensor_to_numpy(x, name, cast=cast, cast_hint=cast_hint)
    a = np.asarray(x)
    if cast and a.dtype == np.float16:
        a = a.astype(np.float32)
    return a
