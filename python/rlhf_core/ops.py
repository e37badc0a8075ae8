"""Advantage and statistics kernels: numpy arrays or torch CPU tensors in, the same kind out.

Every kernel runs in the Rust core (``rlhf_core._core``) with the GIL released, accumulates
statistics in float64, and accepts two layouts:

- **padded**: ``(B, T)`` right-padded arrays plus an optional ``mask`` of the same shape
  (bool, uint8, int8, int32, int64, float32 or float64; an entry is valid when it is ``True``,
  a nonzero integer, or a float ``> 0``). Without a mask every slot is valid.
- **ragged**: 1-D arrays holding all sequences back to back plus ``offsets`` (int64, ``N + 1``
  entries, ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(values)``); sequence ``i``
  is ``values[offsets[i]:offsets[i + 1]]``. A 1-D mask of the same length is optional.

A 1-D array without ``offsets`` is one sequence. Float inputs must be float32 or float64 and
all float inputs of one call share a dtype; outputs have that dtype.

**Kind and copies.** The output kind follows the first array argument: a torch tensor in
gives a torch tensor out (``torch.from_numpy`` of the Rust-allocated result, no copy), a numpy
array gives numpy. Tensors must live on the CPU; tensors requiring grad are detached (outputs
carry no autograd history). Inputs are borrowed, not copied, except in two documented cases:
a non-contiguous input is first made contiguous (``np.ascontiguousarray`` /
``Tensor.contiguous``), and integer ``offsets`` / ``group_ids`` of another integer dtype are
cast to int64. Masked and padding slots of every per-token output are exactly 0, whatever the
inputs held there (NaN and inf included).

**Errors** are typed (:mod:`rlhf_core.errors`): ``ShapeError``, ``DtypeError``,
``OffsetsError``, ``InvalidOptionError``; each names the argument and what was expected.

See ``docs/kernels.md`` for the exact semantics and which framework each default matches.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from rlhf_core import _core
from rlhf_core.errors import DtypeError

__all__ = [
    "gae",
    "discounted_returns",
]

ArrayLike = Any  # numpy.ndarray or torch.Tensor (kept loose so torch stays optional)

_HALF_TORCH = ("torch.float16", "torch.bfloat16")


def _tensor_to_numpy(x: Any, name: str) -> np.ndarray:
    if x.device.type != "cpu":
        raise DtypeError(
            f"{name} is on device {x.device}; rlhf_core kernels take CPU tensors "
            f"(move it with {name}.cpu())"
        )
    if str(x.dtype) in _HALF_TORCH:
        raise DtypeError(
            f"{name} has dtype {x.dtype}; expected float32 or float64 "
            f"(convert with {name}.float())"
        )
    if x.requires_grad:
        x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    return x.numpy()


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _arr(x: Any, name: str) -> Any:
    """Borrow ``x`` as a C-contiguous numpy array (no copy unless non-contiguous)."""
    if type(x) is np.ndarray:
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    if x is None:
        return None
    if _is_tensor(x):
        return _tensor_to_numpy(x, name)
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x)
    if isinstance(x, (list, tuple)):
        return np.ascontiguousarray(x)
    raise DtypeError(
        f"{name} must be a numpy array or a torch CPU tensor, got {type(x).__name__}"
    )


def _index(x: Any, name: str) -> Any:
    """Integer index arrays (offsets, group ids) as int64; other integer dtypes are cast."""
    a = _arr(x, name)
    if a is None or a.dtype == np.int64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    raise DtypeError(f"{name} has dtype {a.dtype}; expected an integer dtype (int64)")


def _out(a: np.ndarray, torch_out: bool) -> Any:
    if torch_out:
        import torch

        return torch.from_numpy(a)
    return a


# ---------------------------------------------------------------------------------------------
# GAE and returns
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: ArrayLike,
    values: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    masked: str = "skip",
    bootstrap: ArrayLike | None = None,
) -> tuple[Any, Any]:
    """Generalised advantage estimation: ``(advantages, returns)``.

    Args:
        rewards: float32/float64 ``(B, T)`` padded, or ``(N_tok,)`` ragged with ``offsets``.
            Per-token rewards (e.g. the score on the last token plus KL penalties).
        values: same shape and dtype as ``rewards``: the value model's ``V_t``.
        mask: optional, same shape as ``rewards``; which tokens are actions.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        gamma: discount in [0, 1].
        lam: GAE λ in [0, 1].
        masked: what masked tokens *inside* a sequence mean. ``"skip"`` (default, verl):
            ``V_next`` and ``A_next`` carry across them unchanged (multi-turn observation
            tokens). ``"zero"`` (OpenRLHF): zero-reward, zero-value steps.
        bootstrap: optional ``(B,)`` (one per sequence, same dtype): the value after the last
            valid token, for truncated sequences (0 for terminated ones). Default 0.

    Per sequence, in reverse from its last valid token: ``δ_t = r_t + γ·V_next − V_t``,
    ``A_t = δ_t + γλ·A_next``; ``returns = A + V``. Computed in float64.

    Returns:
        ``(advantages, returns)``, each the shape, dtype and kind of ``rewards``; masked and
        padding slots are 0. Not whitened: see :func:`masked_whiten`.
    """
    r = _arr(rewards, "rewards")
    adv, ret = _core.gae(
        r,
        _arr(values, "values"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _arr(bootstrap, "bootstrap"),
        gamma,
        lam,
        masked,
    )
    t = _is_tensor(rewards)
    return _out(adv, t), _out(ret, t)


def discounted_returns(
    rewards: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    gamma: float = 1.0,
    masked: str = "skip",
) -> Any:
    """Discounted reward-to-go ``G_t = r_t + γ·G_{t+1}`` per sequence (REINFORCE++, ReMax).

    Args:
        rewards: float32/float64 ``(B, T)`` padded, or ``(N_tok,)`` ragged with ``offsets``.
        mask: optional, same shape as ``rewards``.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        gamma: discount in [0, 1].
        masked: ``"skip"`` (default): masked tokens inside a sequence are passed over without
            discounting; ``"zero"``: they are zero-reward steps (discounted by γ).

    The return resets at every sequence end. Returns an array of the shape, dtype and kind of
    ``rewards`` with masked and padding slots 0.
    """
    r = _arr(rewards, "rewards")
    out = _core.discounted_returns(
        r, _arr(mask, "mask"), _index(offsets, "offsets"), gamma, masked
    )
    return _out(out, _is_tensor(rewards))
