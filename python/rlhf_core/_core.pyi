"""Type stub of the Rust extension ``rlhf_core._core`` (checked by ``mypy.stubtest`` in
``tests/test_stub.py``). Users call the typed wrappers in :mod:`rlhf_core.ops` and
:mod:`rlhf_core.buffer`; these low-level functions take numpy arrays only (C-contiguous;
float32 or float64 values, int64 offsets and ids) and return numpy arrays."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__version__: str
BUILD_PROFILE: str  # "release" or "debug"

# ---------------------------------------------------------------------------------------------
# Errors (one base class; each also subclasses the builtin it refines)
# ---------------------------------------------------------------------------------------------

class RlhfCoreError(Exception): ...
class ShapeError(RlhfCoreError, ValueError): ...
class DtypeError(RlhfCoreError, TypeError): ...
class OffsetsError(RlhfCoreError, ValueError): ...
class InvalidOptionError(RlhfCoreError, ValueError): ...
class CapacityError(RlhfCoreError, ValueError): ...
class FieldError(RlhfCoreError, KeyError): ...
class StateError(RlhfCoreError, ValueError): ...

# ---------------------------------------------------------------------------------------------
# Kernels (see rlhf_core.ops for the user-facing API and docs/kernels.md for semantics)
# ---------------------------------------------------------------------------------------------

_Float = npt.NDArray[np.floating[Any]]
_Mask = npt.NDArray[Any]
_Int64 = npt.NDArray[np.int64]

def gae(
    rewards: _Float,
    values: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    bootstrap: _Float | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    masked: str = "skip",
) -> tuple[_Float, _Float]: ...
def discounted_returns(
    rewards: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    gamma: float = 1.0,
    masked: str = "skip",
) -> _Float: ...
def group_advantages(
    scores: _Float,
    group_ids: _Int64 | None = None,
    group_size: int | None = None,
    baseline: str = "mean",
    scale: str = "group",
    ddof: int = 1,
    eps: float = 1e-6,
    singleton: str = "zero",
) -> tuple[_Float, tuple[int, int, int, int]]: ...
def masked_mean(
    x: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    axis: int | None = None,
) -> _Float: ...
def masked_var(
    x: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    axis: int | None = None,
    ddof: int = 1,
) -> _Float: ...
def masked_whiten(
    x: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    axis: int | None = None,
    shift_mean: bool = True,
    ddof: int = 1,
    eps: float = 1e-8,
) -> _Float: ...
def kl(
    logp: _Float,
    ref_logp: _Float,
    estimator: str = "k3",
    clamp: float | None = ...,
) -> _Float: ...
def shaped_rewards(
    scores: _Float,
    logp: _Float,
    ref_logp: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    beta: float = 0.0,
    estimator: str = "k1",
    clamp: float | None = ...,
) -> _Float: ...
def broadcast_to_tokens(
    seq_values: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
) -> _Float: ...
def reduce_tokens(
    x: _Float,
    mask: _Mask | None = None,
    offsets: _Int64 | None = None,
    how: str = "sum",
) -> _Float: ...
def set_parallelism(enabled: bool) -> None: ...
def get_parallelism() -> bool: ...
def _after_fork_in_child() -> None: ...

@final
class RunningMoments:
    def __new__(cls, ddof: int = 1) -> RunningMoments: ...
    def update(self, x: _Float, mask: _Mask | None = None) -> None: ...
    def merge(self, other: RunningMoments) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @property
    def var(self) -> float: ...
    @property
    def std(self) -> float: ...
    @property
    def ddof(self) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def __getstate__(self) -> dict[str, Any]: ...
    def __setstate__(self, state: dict[str, Any]) -> None: ...
    def __getnewargs__(self) -> tuple[int]: ...

# ---------------------------------------------------------------------------------------------
# Buffer and planning (rlhf_core.buffer): appended below by the buffer's section.
# ---------------------------------------------------------------------------------------------
