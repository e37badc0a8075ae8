"""Hypothesis strategies and comparison helpers shared by the kernel tests (``tests/test_ops_*``).

A :class:`TokenCase` is a random batch of sequences in one of the three layouts the kernels
accept (padded ``(B, T)``, ragged 1-D + offsets, a single 1-D sequence), with an optional mask
of a random dtype (holes inside sequences included) and NaN / inf planted in masked slots so
tests can check that masked outputs stay exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

FLOAT_DTYPES = (np.float32, np.float64)
MASK_DTYPES = (None, np.bool_, np.uint8, np.int64, np.float32, np.float64)


@dataclass
class TokenCase:
    layout: str  # "padded" | "ragged" | "single"
    dtype: Any
    shape: tuple[int, ...]
    valid: np.ndarray  # bool, shape `shape`
    mask: np.ndarray | None
    offsets: np.ndarray | None
    rng: np.random.Generator
    n_rows: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def values(self, name: str, scale: float = 1.0, poison: bool = True) -> np.ndarray:
        """A float array of ``shape``; masked slots hold NaN / inf when ``poison``."""
        x = (self.rng.standard_normal(self.shape) * scale).astype(self.dtype)
        if poison and self.mask is not None:
            bad = ~self.valid
            junk = self.rng.choice(np.array([np.nan, np.inf, -np.inf, 1e30]), size=self.shape)
            x[bad] = junk[bad].astype(self.dtype)
        self.arrays[name] = x
        return x

    def per_row(self, name: str, scale: float = 1.0) -> np.ndarray:
        x = (self.rng.standard_normal(self.n_rows) * scale).astype(self.dtype)
        self.arrays[name] = x
        return x

    @property
    def kw(self) -> dict[str, Any]:
        """``mask`` / ``offsets`` keyword arguments for a kernel call."""
        out: dict[str, Any] = {}
        if self.offsets is not None:
            out["offsets"] = self.offsets
        return out

    def row_slices(self) -> list[Any]:
        if self.layout == "padded":
            return [(i, slice(None)) for i in range(self.n_rows)]
        if self.layout == "single":
            return [slice(None)]
        assert self.offsets is not None
        return [slice(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


@st.composite
def token_cases(
    draw: st.DrawFn,
    max_rows: int = 6,
    max_len: int = 12,
    layouts: tuple[str, ...] = ("padded", "ragged", "single"),
    mask_dtypes: tuple[Any, ...] = MASK_DTYPES,
    holes: bool = True,
    dtypes: tuple[Any, ...] = FLOAT_DTYPES,
) -> TokenCase:
    layout = draw(st.sampled_from(layouts))
    dtype = draw(st.sampled_from(dtypes))
    mask_dtype = draw(st.sampled_from(mask_dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_rows = 1 if layout == "single" else draw(st.integers(0, max_rows))
    lengths = draw(st.lists(st.integers(0, max_len), min_size=n_rows, max_size=n_rows))
    hole_p = draw(st.sampled_from([0.0, 0.2, 0.6])) if holes else 0.0
    offsets = None
    if layout == "padded":
        t = draw(st.integers(max(lengths, default=0), max(lengths, default=0) + 3))
        shape: tuple[int, ...] = (n_rows, t)
        valid = np.arange(t)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]
        if mask_dtype is None:
            valid = np.ones(shape, dtype=bool)
    else:
        total = int(sum(lengths))
        shape = (total,)
        if layout == "ragged":
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        valid = np.ones(shape, dtype=bool)
    if mask_dtype is not None and hole_p > 0:
        valid = valid & (rng.random(shape) >= hole_p)
    mask = None if mask_dtype is None else valid.astype(mask_dtype)
    if mask is not None and mask.dtype.kind == "f":
        # float masks: any value > 0 is valid, <= 0 (and NaN) is masked
        mask = np.where(valid, rng.choice([1.0, 0.5, 2.0], size=shape), 0.0).astype(mask_dtype)
    return TokenCase(layout, dtype, shape, valid, mask, offsets, rng, n_rows)


def tol(dtype: Any) -> dict[str, float]:
    return {"rtol": 2e-6, "atol": 2e-6} if np.dtype(dtype) == np.float32 else {
        "rtol": 1e-11,
        "atol": 1e-11,
    }


def assert_close(
    out: Any, ref: np.ndarray, dtype: Any, scale: float | None = None, rtol: float | None = None
) -> None:
    """``out`` (kernel, input dtype) against ``ref`` (float64), relative to ``scale``."""
    out = np.asarray(out)
    assert out.dtype == np.dtype(dtype), (out.dtype, dtype)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    t = tol(dtype)
    if rtol is not None:
        t = {"rtol": rtol, "atol": rtol}
    if scale is None:
        finite = ref[np.isfinite(ref)]
        scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(
        out.astype(np.float64), ref, rtol=t["rtol"], atol=t["atol"] * max(1.0, scale)
    )


def assert_masked_zero(out: Any, valid: np.ndarray) -> None:
    out = np.asarray(out)
    assert np.all(out[~valid] == 0), "masked / padding slots must be exactly 0"
    assert not np.any(np.isnan(out[~valid]))
