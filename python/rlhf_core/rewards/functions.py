"""Calling reward functions: TRL's keyword contract, checked results, ``async def`` functions run
together, and errors that name the function and the sample.

**How a reward function is called.** By keyword, as TRL calls it::

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_metric=...,
       **columns)

* ``prompts``: one entry per completion, the prompt as the dataset holds it: a string, or a
  list of ``{"role", "content"}`` messages for a conversational prompt.
* ``completions``: the sampled texts; for a conversational prompt the completion is a
  conversation too, ``[{"role": "assistant", "content": text}]``.
* ``completion_ids``: the sampled token ids of each completion (a list of ints, the EOS token
  included when the completion stopped), when the caller has them (the trainers do).
* ``trainer_state``: a :class:`TrainerState` (``global_step``, ``max_steps``, ``epoch``) during
  training.
* ``log_metric(name, value)``: logs a number with the step's metrics (the trainers pass it).
* every extra column of the dataset (``solution=[...]``, ``answer=[...]``), one entry per
  completion.

A function receives the keywords it names, and all of them when it takes ``**kwargs``; one
that names a keyword nobody gives (without a default) is an error naming it. So
``f(completions, **kwargs)`` and ``f(completions, solution, **kwargs)`` (TRL's documented
forms) run unchanged. A function whose parameters do not include ``completions`` and that
takes two positional arguments is called the older way, ``fn(prompts, completions,
**keywords)``.

It returns one score per completion: a number, or ``None`` (or NaN) where it cannot score
that sample. An ``async def`` function (or one that returns an awaitable) is awaited; all
awaitables of one call of :func:`call_reward_functions` run concurrently
(``asyncio.gather``), sync functions one after another.

Errors are :class:`RewardFunctionError` (a ``ValueError``; :class:`RewardFunctionTypeError`,
also a ``TypeError``, for a wrong type): a function that raises (the message names the
first sample that raises on its own), a signature that cannot take the contract's keywords,
the wrong number of scores, or a score that is not a number (with its index).
"""

from __future__ import annotations

import asyncio
import inspect
import numbers
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "RESERVED_KEYWORDS",
    "RewardCall",
    "RewardFunction",
    "RewardFunctionError",
    "RewardFunctionTypeError",
    "TrainerState",
    "call_reward_function",
    "call_reward_functions",
    "check_reward_scores",
    "check_reward_signature",
    "reward_function_name",
]

#: the keywords reward functions get besides the dataset's columns (no column may use them)
RESERVED_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric")

#: how many samples are tried one by one to find the one a raising function fails on
_LOCATE_LIMIT = 64


@runtime_checkable
class RewardFunction(Protocol):
    """``fn(*, prompts, completions, **kwargs) -> list[float | None]`` (None = cannot score
    that sample); see the module docstring for every keyword."""

    def __call__(self, *args: Any, **kwargs: Any) -> Sequence[float | None]: ...


class RewardFunctionError(ValueError):
    """A reward function raised, cannot be called with the contract's keywords, or returned
    something that is not one score per completion; the message names the function (and the
    sample where there is one)."""


class RewardFunctionTypeError(RewardFunctionError, TypeError):
    """A reward function returned the wrong type (not a sequence, or an entry that is not a
    number or None)."""


@dataclass(frozen=True)
class TrainerState:
    """Where training is, handed to reward functions as ``trainer_state`` (the attributes of
    TRL's that reward functions read).

    Attributes:
        global_step: trainer steps completed before this one (0 during the first step).
        max_steps: the run's ``total_steps``.
        epoch: passes over the prompt set so far, counting this step's prompts (fractional).
    """

    global_step: int
    max_steps: int
    epoch: float


def reward_function_name(fn: Any) -> str:
    """A readable name for a reward function (its ``__name__``, else its class name)."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    func = getattr(fn, "func", None)  # functools.partial
    if func is not None:
        return reward_function_name(func)
    return type(fn).__name__


@dataclass
class RewardCall:
    """The arguments of one call of the reward functions: B completions and what goes with
    them. ``columns`` holds the dataset's extra columns (B entries each); ``completion_ids``,
    ``trainer_state`` and ``log_metric`` are only passed when given."""

    prompts: Sequence[Any]
    completions: Sequence[Any]
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    completion_ids: Sequence[Any] | None = None
    trainer_state: Any = None
    log_metric: Callable[[str, float], None] | None = None

    def __post_init__(self) -> None:
        n = len(self.completions)
        if len(self.prompts) != n:
            raise ValueError(f"prompts has {len(self.prompts)} entries, completions has {n}")
        if self.completion_ids is not None and len(self.completion_ids) != n:
            raise ValueError(
                f"completion_ids has {len(self.completion_ids)} entries, completions has {n}"
            )
        for key, col in self.columns.items():
            if key in RESERVED_KEYWORDS:
                raise ValueError(
                    f"column {key!r} has the name of a keyword every reward function gets "
                    f"({', '.join(RESERVED_KEYWORDS)}); rename the column"
                )
            if isinstance(col, (str, bytes)) or not hasattr(col, "__len__"):
                raise TypeError(
                    f"column {key!r} must be a sequence with one entry per completion, "
                    f"got {type(col).__name__}"
                )
            if len(col) != n:
                raise ValueError(f"column {key!r} has {len(col)} entries, completions has {n}")

    def __len__(self) -> int:
        return len(self.completions)

    def keywords(self) -> dict[str, Any]:
        """Every keyword a reward function may receive, as lists."""
        out: dict[str, Any] = {"prompts": list(self.prompts),
                               "completions": list(self.completions)}  # fmt: skip
        if self.completion_ids is not None:
            out["completion_ids"] = list(self.completion_ids)
        if self.trainer_state is not None:
            out["trainer_state"] = self.trainer_state
        if self.log_metric is not None:
            out["log_metric"] = self.log_metric
        out.update({k: list(v) for k, v in self.columns.items()})
        return out

    def sample(self, i: int) -> RewardCall:
        """The call for sample ``i`` alone (metrics it logs are dropped)."""
        one = slice(i, i + 1)
        return RewardCall(
            self.prompts[one],
            self.completions[one],
            {k: list(v)[one] for k, v in self.columns.items()},
            None if self.completion_ids is None else self.completion_ids[one],
            self.trainer_state,
            None if self.log_metric is None else (lambda name, value: None),
        )

    def describe(self, i: int) -> str:
        """Sample ``i`` in a few words: its prompt and completion, shortened."""
        return f"prompt {_short(self.prompts[i])}, completion {_short(self.completions[i])}"


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        value = value[-1].get("content", "")  # a conversation: its last message
    text = value if isinstance(value, str) else str(type(value).__name__)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --------------------------------------------------------------------------------------------
# binding the keywords to a signature

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _bind(fn: Any, call: RewardCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments ``fn`` is called with (see the module docstring)."""
    values = call.keywords()
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the older way
        rest = {k: v for k, v in values.items() if k not in ("prompts", "completions")}
        return (values["prompts"], values["completions"]), rest
    params = list(sig.parameters.values())
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in _NAMED]
    positional = [p for p in params if p.kind in _POSITIONAL]
    var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    name = reward_function_name(fn)
    if any(p.name == "completions" for p in named) or (takes_all and not positional):
        args: tuple[Any, ...] = ()
        required = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        if required:
            raise RewardFunctionError(
                f"reward function {name!r}{sig}: positional-only parameter "
                f"{required[0].name!r} cannot be given by keyword; reward functions are "
                "called by keyword (prompts=, completions=, ...)"
            )
        chosen = named
    elif len(positional) >= 2 or (var_positional and len(positional) <= 2):
        args = (values["prompts"], values["completions"])
        chosen = [p for p in positional[2:] if p.kind in _NAMED] + [
            p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        values = {k: v for k, v in values.items() if k not in ("prompts", "completions")}
    else:
        raise RewardFunctionError(
            f"reward function {name!r}{sig} cannot take a batch of completions: write it as "
            "f(completions, **kwargs), naming the keywords it uses (prompts, completions, "
            "completion_ids, trainer_state, log_metric or a dataset column), or as "
            "f(prompts, completions, **kwargs)"
        )
    kwargs: dict[str, Any] = {}
    for p in chosen:  # with **kwargs too: a named keyword nobody gives is an error here
        if p.name in values:
            kwargs[p.name] = values[p.name]
        elif p.default is inspect.Parameter.empty:
            raise RewardFunctionError(
                f"reward function {name!r} needs column {p.name!r}; columns given: "
                f"{sorted(call.columns)} (and the keywords "
                f"{', '.join(k for k in RESERVED_KEYWORDS if k in call.keywords())})"
            )
    return args, (values if takes_all else kwargs)


def check_reward_signature(fn: Any, columns: Sequence[str] = ()) -> None:
    """Raise the :class:`RewardFunctionError` that calling ``fn`` would, before any call: a
    signature that cannot take a batch, or a keyword it names that neither the contract (with
    ``completion_ids``, ``trainer_state`` and ``log_metric``, which the trainers always give)
    nor one of ``columns`` provides. The trainers check each function when they are built."""
    call = RewardCall(
        [""],
        [""],
        {c: [None] for c in columns if c not in RESERVED_KEYWORDS},
        completion_ids=[[]],
        trainer_state=TrainerState(0, 1, 0.0),
        log_metric=lambda name, value: None,
    )
    _bind(fn, call)


# --------------------------------------------------------------------------------------------
# checking what came back


def _is_number(v: Any) -> bool:
    """A real number: a Python / numpy scalar, or a 0-d array or tensor of one."""
    if isinstance(v, numbers.Real):
        return True
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in "biuf"
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 and not v.is_complex()
    return False


def check_reward_scores(out: Any, n: int, name: str) -> np.ndarray:
    """What the reward function ``name`` returned for ``n`` completions, checked: float64
    (n,), NaN where it returned ``None`` (or NaN: cannot score that sample).

    Accepted: a list, tuple or other sequence of ``n`` real numbers / ``None``, or a 1-d numpy
    array or torch tensor of ``n`` numbers. Anything else is an error naming the function:
    :class:`RewardFunctionTypeError` (a ``TypeError``) for a mapping (a dict's keys would be
    taken for the scores), a string, a set, an iterator, an array of non-numbers or a
    non-number entry (with its index); :class:`RewardFunctionError` (a ``ValueError``) for
    another length or shape. The one check of a reward function's result, whoever calls it."""
    what = f"reward function {name!r}"
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().double().numpy()
    if isinstance(out, np.ndarray):
        if out.ndim != 1 or out.shape[0] != n:
            raise RewardFunctionError(
                f"{what} returned an array of shape {out.shape}; expected ({n},), one score "
                "per completion"
            )
        if out.dtype.kind not in "biuf":
            raise RewardFunctionTypeError(
                f"{what} returned an array of dtype {out.dtype}; expected numbers"
            )
        return out.astype(np.float64)
    if isinstance(out, Mapping):
        raise RewardFunctionTypeError(
            f"{what} returned a {type(out).__name__}; it must return a list of {n} floats (or "
            "None), one per completion in their order (a dict's keys would be read as the "
            "scores)"
        )
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise RewardFunctionTypeError(
            f"{what} must return a list of {n} floats (or None), one per completion in their "
            f"order, got {type(out).__name__}"
        )
    if len(out) != n:
        raise RewardFunctionError(f"{what} returned {len(out)} scores for {n} completions")
    scores = np.empty(n, dtype=np.float64)
    for i, v in enumerate(out):
        if v is None:
            scores[i] = np.nan
        elif _is_number(v):
            scores[i] = float(v)
        else:
            raise RewardFunctionTypeError(
                f"{what} returned {type(v).__name__} at index {i}; expected a float or None"
            )
    return scores


# --------------------------------------------------------------------------------------------
# calling


def _run_together(awaitables: list[Awaitable[Any]]) -> list[Any]:
    """Await ``awaitables`` concurrently; results (or the exceptions raised) in order. Inside
    a running event loop (a notebook) they run on a loop of their own in a worker thread."""

    async def gather() -> list[Any]:
        return list(await asyncio.gather(*awaitables, return_exceptions=True))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def _call_once(fn: Any, call: RewardCall) -> Any:
    """``fn``'s result for ``call``, awaited when it is awaitable."""
    args, kwargs = _bind(fn, call)
    out = fn(*args, **kwargs)
    if inspect.isawaitable(out):
        out = _run_together([out])[0]
        if isinstance(out, BaseException):
            raise out
    return out


def _raised(fn: Any, call: RewardCall, exc: BaseException) -> RewardFunctionError:
    """The error for ``fn`` raising ``exc`` on ``call``, naming the first sample (of the first
    :data:`_LOCATE_LIMIT`) on which it raises alone."""
    name = reward_function_name(fn)
    where = f"on a batch of {len(call)} samples (none of the first {_LOCATE_LIMIT} raises alone)"
    for i in range(min(len(call), _LOCATE_LIMIT)):
        try:
            _call_once(fn, call.sample(i))
        except Exception:  # noqa: BLE001 - any failure locates the sample
            where = f"on sample {i} ({call.describe(i)})"
            break
    return RewardFunctionError(f"reward function {name!r} raised {type(exc).__name__}: {exc} "
                               f"{where}")  # fmt: skip


def call_reward_functions(fns: Sequence[Callable[..., Any]], call: RewardCall) -> list[np.ndarray]:
    """Each function's checked scores for ``call`` (float64 (B,), NaN = None), in order. Sync
    functions run one after another; the awaitables the others return run concurrently."""
    results: list[Any] = [None] * len(fns)
    pending: dict[int, Any] = {}
    try:
        for k, fn in enumerate(fns):
            args, kwargs = _bind(fn, call)
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                raise _raised(fn, call, exc) from exc
            if inspect.isawaitable(out):
                pending[k] = out
            else:
                results[k] = out
        if pending:
            done = _run_together(list(pending.values()))
            pending_keys = list(pending)
            pending = {}
            for k, out in zip(pending_keys, done, strict=True):
                if isinstance(out, Exception):
                    raise _raised(fns[k], call, out) from out
                if isinstance(out, BaseException):
                    raise out
                results[k] = out
    finally:
        for aw in pending.values():  # never awaited because an earlier function failed
            if inspect.iscoroutine(aw):
                aw.close()
    return [
        check_reward_scores(out, len(call), reward_function_name(fn))
        for fn, out in zip(fns, results, strict=True)
    ]


def call_reward_function(
    fn: Callable[..., Any],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    **columns: Any,
) -> np.ndarray:
    """Call one reward function on B completions (``columns``: the extra dataset columns, and
    ``completion_ids`` / ``trainer_state`` / ``log_metric`` when given) and check its result:
    float64 (B,) with NaN for ``None`` / NaN entries. Errors as in :func:`check_reward_scores`
    and :class:`RewardFunctionError`."""
    extra = {k: columns.pop(k) for k in ("completion_ids", "trainer_state", "log_metric")
             if k in columns}  # fmt: skip
    call = RewardCall(prompts, completions, columns, **extra)
    return call_reward_functions([fn], call)[0]
