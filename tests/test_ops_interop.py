"""numpy / torch interop of every kernel: same kind and dtype out as in, inputs borrowed (the
core sees views of the caller's memory), outputs handed to torch without a copy."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_core import _core, ops

torch = pytest.importorskip("torch")

B, T = 6, 9


def _batch(dtype):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(B, T, generator=g, dtype=dtype)
    v = torch.randn(B, T, generator=g, dtype=dtype)
    mask = torch.arange(T)[None, :] < torch.tensor([9, 3, 0, 5, 7, 1])[:, None]
    s = torch.randn(B, generator=g, dtype=dtype)
    return r, v, mask, s


CALLS = {
    "gae": lambda r, v, m, s: ops.gae(r, v, m, gamma=0.9, lam=0.9),
    "discounted_returns": lambda r, v, m, s: ops.discounted_returns(r, m, gamma=0.9),
    "group_advantages": lambda r, v, m, s: ops.group_advantages(s, group_size=3),
    "masked_mean": lambda r, v, m, s: ops.masked_mean(r, m, axis=-1),
    "masked_var": lambda r, v, m, s: ops.masked_var(r, m, axis=-1),
    "masked_whiten": lambda r, v, m, s: ops.masked_whiten(r, m),
    "kl": lambda r, v, m, s: ops.kl(r, v),
    "shaped_rewards": lambda r, v, m, s: ops.shaped_rewards(s, r, v, m, beta=0.1),
    "broadcast_to_tokens": lambda r, v, m, s: ops.broadcast_to_tokens(s, m),
    "reduce_tokens": lambda r, v, m, s: ops.reduce_tokens(r, m, how="mean"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_torch_in_torch_out_zero_copy(name, dtype, monkeypatch):
    r, v, m, s = _batch(dtype)
    inputs = [r.numpy(), v.numpy(), m.numpy(), s.numpy()]
    seen: list = []
    real = getattr(_core, name)

    def spy(*args):
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        # every array the core receives is a view of one of the caller's tensors
        # (bool masks are reinterpreted as bytes in the core, still without a copy)
        for a in arrays:
            assert any(np.shares_memory(a, x) for x in inputs), (name, a.dtype, a.shape)
        out = real(*args)
        seen.extend(out if isinstance(out, tuple) else [out])
        return out

    monkeypatch.setattr(_core, name, spy)
    out = CALLS[name](r, v, m, s)
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert isinstance(o, torch.Tensor), name
        assert o.dtype == dtype, (name, o.dtype)
        # the tensor wraps the array the core returned: same memory, no copy
        assert any(isinstance(x, np.ndarray) and np.shares_memory(o.numpy(), x) for x in seen)
    # the numpy path gives the same values
    np_out = CALLS[name](*[x.numpy() for x in (r, v, m, s)])
    np_outs = np_out if isinstance(np_out, tuple) else (np_out,)
    for o, n in zip(outs, np_outs, strict=True):
        assert isinstance(n, np.ndarray)
        np.testing.assert_array_equal(o.numpy(), n)


def test_numpy_scalars_for_whole_batch_statistics():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    mean = ops.masked_mean(x)
    assert isinstance(mean, np.float32) and mean == 2.5
    var = ops.masked_var(x.astype(np.float64), ddof=0)
    assert isinstance(var, np.float64) and var == pytest.approx(np.var(np.arange(6)))
