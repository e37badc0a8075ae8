"""One rule for bool arrays across the bindings: a numpy bool array holding a byte other than
0 or 1 (a bool view of other data) is refused with a DtypeError naming the argument — by the
kernels' masks as by the buffer's fields (tests/test_buffer.py covers the buffer side)."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_core import _core, ops
from rlhf_core.errors import DtypeError

B, T = 3, 4
x = np.arange(B * T, dtype=np.float32).reshape(B, T)
good = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], np.uint8)
bad = good.copy()
bad[1, 1] = 2  # "true" by any reading of bytes, but not a boolean
bad_bool = bad.view(bool)
scores = np.ones(B, np.float32)

CALLS = {
    "gae": lambda m: _core.gae(x, x, m),
    "discounted_returns": lambda m: _core.discounted_returns(x, m),
    "masked_mean": lambda m: _core.masked_mean(x, m),
    "masked_var": lambda m: _core.masked_var(x, m, axis=-1),
    "masked_whiten": lambda m: _core.masked_whiten(x, m),
    "shaped_rewards": lambda m: _core.shaped_rewards(scores, x, x, m, beta=0.1),
    "broadcast_to_tokens": lambda m: _core.broadcast_to_tokens(scores, m),
    "reduce_tokens": lambda m: _core.reduce_tokens(x, m),
    "RunningMoments.update": lambda m: running_state(m),
}


def running_state(m: np.ndarray) -> np.ndarray:
    r = _core.RunningMoments()
    r.update(x, m)
    return np.array([r.count, r.mean, r.var])


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_bool_view_holding_byte_2_is_refused_with_the_argument_named(name):
    with pytest.raises(DtypeError, match=r"^mask is a bool array holding the byte value 2"):
        CALLS[name](bad_bool)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_same_bytes_as_uint8_or_as_true_booleans_are_accepted(name):
    as_bool = good.astype(bool)
    a, b = CALLS[name](as_bool), CALLS[name](good)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_the_ops_wrappers_refuse_it_too():
    with pytest.raises(DtypeError, match="mask"):
        ops.masked_mean(x, bad_bool)
    big = np.ones((256, 1024), np.uint8)
    big[-1, -1] = 7  # found at the end of a mask large enough to be checked in parallel
    with pytest.raises(DtypeError, match="byte value 7"):
        ops.masked_whiten(np.zeros((256, 1024), np.float32), big.view(bool))
