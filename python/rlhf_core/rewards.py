"""Reward sources: user reward functions, reward-model scoring, verifiable answers, AI judges.

**The reward-function signature.** A reward function is any callable

.. code-block:: python

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

that returns one score per completion; ``None`` (or NaN) means *unscorable* and becomes NaN.
``columns`` are the extra dataset columns of the batch (``answer=[...]`` etc.), one entry per
completion. A function may name the columns it needs as parameters (``answer``) instead of
taking ``**columns``; it then receives only those (a missing one is an error naming it).

* :func:`call_reward_function` calls one function and checks what it returned
  (:func:`check_reward_scores`: a sequence of numbers / None of the right length, else an
  error naming the function); :func:`check_scorable_step` is the rule for a training step
  whose samples are all unscorable (an error unless allowed).
* :func:`combine_rewards` weights several together: float64 (B,) with NaN where any function
  of non-zero weight returned None, plus the per-function arrays for logging. A weight-0
  source is tracked (logged), never added to the total.
* :class:`RewardModelScorer` makes a :class:`rlhf_core.models.RewardModel` a reward function.
* :func:`exact_match_reward` (with :func:`extract_answer`) is the verifiable reward.
* :class:`JudgeLabeler` asks a causal LM which of two answers is better (RLAIF), reading the
  next-token logits of "A" and "B" in both orders to cancel position bias.
* :func:`label_pairs` turns pairs of completions into ``{prompt, chosen, rejected}`` preference
  rows with any judge, deterministically or with Bradley-Terry noise.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "JudgeLabeler",
    "RewardFunction",
    "RewardModelScorer",
    "UnscorableStepError",
    "call_reward_function",
    "check_reward_scores",
    "check_scorable_step",
    "combine_rewards",
    "exact_match_reward",
    "extract_answer",
    "label_pairs",
    "reward_function_name",
]


logger = logging.getLogger("rlhf_core.rewards")


@runtime_checkable
class RewardFunction(Protocol):
    """``fn(prompts, completions, **columns) -> list[float | None]`` (None = unscorable)."""

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> Sequence[float | None]: ...


def reward_function_name(fn: Any) -> str:
    """A readable name for a reward function (its ``__name__``, else its class name)."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    func = getattr(fn, "func", None)  # functools.partial
    if func is not None:
        return reward_function_name(func)
    return type(fn).__name__


def _check_columns(n: int, prompts: Sequence[str], columns: Mapping[str, Any]) -> None:
    if len(prompts) != n:
        raise ValueError(f"prompts has {len(prompts)} entries, completions has {n}")
    for key, col in columns.items():
        if isinstance(col, (str, bytes)) or not hasattr(col, "__len__"):
            raise TypeError(
                f"column {key!r} must be a sequence with one entry per completion, "
                f"got {type(col).__name__}"
            )
        if len(col) != n:
            raise ValueError(f"column {key!r} has {len(col)} entries, completions has {n}")


def _accepted_columns(fn: Any, columns: Mapping[str, Any]) -> dict[str, Any]:
    """The columns ``fn`` accepts: all of them if it takes ``**kwargs``, else the named ones."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(columns)
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(columns)
    named = params[2:] if len(params) >= 2 else []
    out: dict[str, Any] = {}
    for p in named:
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            continue
        if p.name in columns:
            out[p.name] = columns[p.name]
        elif p.default is inspect.Parameter.empty:
            raise ValueError(
                f"reward function {reward_function_name(fn)!r} needs column {p.name!r}; "
                f"columns given: {sorted(columns)}"
            )
    return out


def call_reward_function(
    fn: Callable[..., Any], prompts: Sequence[str], completions: Sequence[str], **columns: Any
) -> np.ndarray:
    """Call one reward function and check its result.

    Returns float64 (B,) with NaN for ``None`` / NaN entries. Raises ``ValueError`` naming the
    function when it returns the wrong number of scores, and ``TypeError`` naming the function,
    the index and the type when an entry is not a real number or None.
    """
    n = len(completions)
    _check_columns(n, prompts, columns)
    out = fn(list(prompts), list(completions), **_accepted_columns(fn, columns))
    return check_reward_scores(out, n, reward_function_name(fn))


def check_reward_scores(out: Any, n: int, name: str) -> np.ndarray:
    """What the reward function ``name`` returned for ``n`` completions, checked: float64
    (n,), NaN where it returned ``None`` (or NaN: unscorable).

    Accepted: a list, tuple or other sequence of ``n`` real numbers / ``None``, or a 1-d numpy
    array or torch tensor of ``n`` numbers. Anything else is an error naming the function:
    ``TypeError`` for a mapping (a dict's keys would be taken for the scores), a string, a set,
    an iterator or a non-number entry (with its index); ``ValueError`` for another length or
    shape. The one check of a reward function's result, whoever calls it."""
    what = f"reward function {name!r}"
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().double().numpy()
    if isinstance(out, np.ndarray):
        if out.ndim != 1 or out.shape[0] != n:
            raise ValueError(f"{what} returned an array of shape {out.shape}; expected ({n},), "
                             "one score per completion")  # fmt: skip
        if out.dtype.kind not in "biuf":
            raise TypeError(f"{what} returned an array of dtype {out.dtype}; expected numbers")
        return out.astype(np.float64)
    if isinstance(out, Mapping):
        raise TypeError(f"{what} returned a {type(out).__name__}; it must return a list of {n} "
                        "floats (or None), one per completion in their order (a dict's keys "
                        "would be read as the scores)")  # fmt: skip
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise TypeError(f"{what} must return a list of {n} floats (or None), one per "
                        f"completion, got {type(out).__name__}")  # fmt: skip
    if len(out) != n:
        raise ValueError(f"{what} returned {len(out)} scores for {n} completions")
    scores = np.empty(n, dtype=np.float64)
    for i, v in enumerate(out):
        if v is None:
            scores[i] = np.nan
        elif isinstance(v, numbers.Real) or (isinstance(v, np.ndarray) and v.ndim == 0
                                             and v.dtype.kind in "biuf"):  # fmt: skip
            scores[i] = float(v)
        else:
            raise TypeError(
                f"{what} returned {type(v).__name__} at index {i}; expected a float or None"
            )
    return scores


class UnscorableStepError(ValueError):
    """Every sample of a training step is unscorable (each got ``None`` / NaN from a reward
    source of non-zero weight): the step would train on zero advantages."""


def check_scorable_step(
    num_samples: int,
    num_unscorable: int,
    by_source: Mapping[str, int],
    *,
    allow: bool,
    step: int | None = None,
) -> None:
    """The all-unscorable rule of a training step: when all ``num_samples`` samples (over every
    process) are unscorable, :class:`UnscorableStepError` naming the sources and how many
    ``None`` / NaN each gave (``by_source``), or with ``allow`` a warning with those counts
    (the step then trains on zero advantages). Fewer unscorable samples are fine (they are
    counted in ``reward/frac_unscorable``)."""
    if num_samples == 0 or num_unscorable < num_samples:
        return
    where = f"step {step}: " if step is not None else ""
    detail = ", ".join(f"{k!r} gave None/NaN for {c}" for k, c in by_source.items() if c)
    msg = (
        f"{where}all {num_samples} samples are unscorable ({detail or 'no source scored any'}); "
        "the step would train on zero advantages"
    )
    if not allow:
        raise UnscorableStepError(
            f"{msg}. Check the reward function(s) (e.g. a missing dataset column), or set "
            "allow_unscorable_steps = true (--allow_unscorable_steps) to train on with a warning"
        )
    logger.warning("%s (allow_unscorable_steps is on)", msg)


def combine_rewards(
    funcs: Callable[..., Any] | Sequence[Callable[..., Any]],
    weights: Sequence[float] | None,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    return_components: bool = False,
    sequences: Sequence[Sequence[int] | np.ndarray] | None = None,
    model_context: Callable[[], AbstractContextManager[Any]] | None = None,
    **columns: Any,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of several reward sources: the one place scores are combined (trainers,
    ``rlhf-core label`` and ``eval``).

    Args:
        funcs: one reward function or a sequence of them (:class:`RewardFunction`, a
            :class:`RewardModelScorer` among them).
        weights: one finite weight per function; None means all 1.0.
        prompts, completions: B strings each.
        return_components: also return ``{name: float64 (B,)}`` with each function's raw
            (unweighted) scores, for logging. Repeated names get a suffix ``_1``, ``_2``, ...
            A scorer scored on token ids adds what its ``score_ids_parts`` returns besides the
            score as ``name/<part>`` (a reward ensemble: ``name/member_<k>``, ``name/std``);
            those are logged only, never added to the total.
        sequences: the B token-id sequences (prompt + completion, int (L_i,) each) that were
            sampled; when given, a :class:`RewardModelScorer` scores these exact tokens
            (:meth:`RewardModelScorer.score_ids`) instead of re-encoding the texts.
        model_context: a context entered around each reward-model forward (a trainer passes
            its bf16 autocast); reward functions run outside it.
        columns: extra per-completion columns passed to the functions.

    The weight-0 rule: a source of weight 0 is **tracked, not optimised**. It is called and its
    raw scores are in the components (e.g. a gold reward watched while a proxy is optimised),
    but it never enters the total, so its None / NaN cannot make a sample unscorable.

    Returns:
        float64 (B,) ``sum over k with weights[k] != 0 of weights[k] * scores_k``; NaN where
        any source of non-zero weight returned None (a sample one judge cannot score is not
        silently scored by the others). Trainers give NaN-scored samples zero advantage and
        count them.
    """
    fn_list = [funcs] if callable(funcs) else list(funcs)
    if not fn_list:
        raise ValueError("funcs is empty; pass at least one reward function")
    if weights is None:
        w = [1.0] * len(fn_list)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(fn_list):
            raise ValueError(f"weights has {len(w)} entries, funcs has {len(fn_list)}")
        bad = [x for x in w if not math.isfinite(x)]
        if bad:
            raise ValueError(f"weights must be finite, got {w}")
    if sequences is not None and len(sequences) != len(completions):
        raise ValueError(
            f"sequences has {len(sequences)} entries, completions has {len(completions)}"
        )
    total = np.zeros(len(completions), dtype=np.float64)
    parts: dict[str, np.ndarray] = {}
    for fn, wk in zip(fn_list, w, strict=True):
        extra: dict[str, np.ndarray] = {}
        if sequences is not None and isinstance(fn, RewardModelScorer):
            with model_context() if model_context is not None else nullcontext():
                s, extra = fn.score_ids_parts(sequences)  # the exact sampled tokens
        else:
            s = call_reward_function(fn, prompts, completions, **columns)
        if wk != 0:  # weight 0: tracked (in the components), never in the total
            total += wk * s  # NaN propagates
        base = reward_function_name(fn)
        key, k = base, 0
        while key in parts:
            k += 1
            key = f"{base}_{k}"
        parts[key] = s
        for sub, v in extra.items():  # e.g. an ensemble's members and disagreement
            parts[f"{key}/{sub}"] = v
    return (total, parts) if return_components else total


# --------------------------------------------------------------------------------------------
# Verifiable rewards
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*([^\n]*)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The final answer in a completion.

    Tried in order: the last ``\\boxed{...}``; the text after the last ``####``; the text after
    the last ``answer:`` / ``answer is`` / ``answer =``; the last number in the text; finally
    the first line of the text. Returns it stripped (may be ``""``).
    """
    for pat in (_BOXED, _HASHES, _ANSWER_IS):
        hits = pat.findall(text)
        if hits:
            return str(hits[-1]).strip()
    nums = _NUMBER.findall(text)
    if nums:
        return str(nums[-1])
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _normalise(s: str) -> str:
    s = s.strip().lower().rstrip(".").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1].strip()
    return " ".join(s.split())


def _as_number(s: str) -> float | None:
    t = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", t):
        return None
    return float(t)


def _answers_match(predicted: str, expected: str) -> bool:
    p, e = _normalise(predicted), _normalise(expected)
    if p == e:
        return True
    pn = _as_number(p)
    if pn is None:
        # "19 apples" vs "19": compare the answer's leading number
        m = _NUMBER.match(p)
        pn = _as_number(m.group(0)) if m else None
    en = _as_number(e)
    return pn is not None and en is not None and pn == en


def exact_match_reward(
    prompts: list[str], completions: list[str], answer: Sequence[Any]
) -> list[float | None]:
    """1.0 when the final answer of a completion equals the ``answer`` column, else 0.0.

    The final answer comes from :func:`extract_answer`; both sides are lower-cased, stripped of
    a trailing period and of surrounding ``$``, and numbers compare by value (``"19.0"`` equals
    ``"19"``, ``"1,000"`` equals ``"1000"``). A completion without a recognisable answer scores
    0.0; a row whose ``answer`` is None is unscorable (None).
    """
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        if a is None:
            out.append(None)
            continue
        out.append(1.0 if _answers_match(extract_answer(c), str(a)) else 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Reward model scoring
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function (NaN stays NaN)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class RewardModelScorer:
    """A reward model as a reward function: ``scorer(prompts, completions, **columns)``.

    Each (prompt, completion) is encoded with
    :func:`rlhf_core.models.encode_prompt_completion` (prompt with special tokens, completion
    without, then EOS when ``add_eos``), the same encoding reward-model training uses. Rows
    are sorted by length into batches of ``batch_size`` (right-padded) and scored under
    ``torch.inference_mode``; sequences longer than ``max_length`` keep their last
    ``max_length`` tokens (the reward is read at the end). Returns a list of B floats.

    :meth:`score_ids` scores token ids directly (what PPO holds after generation).
    ``name`` is what logs call its scores (``reward/<name>``); e.g. ``"check_model"`` for a
    held-out check model tracked beside the optimised one.
    """

    __name__ = "reward_model"

    def __init__(
        self,
        reward_model: torch.nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        add_eos: bool = True,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        if name is not None:
            if not name or "/" in name:
                raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
            self.__name__ = name
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.add_eos = add_eos

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> list[float | None]:
        from rlhf_core.models import encode_prompt_completion

        _check_columns(len(completions), prompts, {})
        seqs = [
            encode_prompt_completion(self.tokenizer, p, c, add_eos=self.add_eos)[0]
            for p, c in zip(prompts, completions, strict=True)
        ]
        return [float(x) for x in self.score_ids(seqs)]

    def score_ids(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        """Scores of token-id sequences (prompt + response, no padding): float64 (B,)."""
        return self.raw_scores(sequences)

    def score_ids_parts(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`score_ids` and the named per-sequence parts logged beside it (none for one
        reward model; an ensemble's members and disagreement for
        :class:`~rlhf_core.reward_ensemble.RewardEnsembleScorer`)."""
        return self.score_ids(sequences), {}

    def raw_scores(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        """What the model returns for token-id sequences, in float64: (B,) for a reward
        model, (B, K) for a model with K outputs (a reward ensemble)."""
        rows = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        for i, r in enumerate(rows):
            if r.size == 0:
                raise ValueError(f"sequences[{i}] is empty")
        if self.max_length is not None:
            rows = [r[-self.max_length :] for r in rows]
        model = self.reward_model
        device = _device_of(model)
        order = np.argsort([len(r) for r in rows], kind="stable")
        out: np.ndarray | None = None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(rows), self.batch_size):
                    idx = order[s : s + self.batch_size]
                    width = max(len(rows[i]) for i in idx)
                    ids = torch.full((len(idx), width), int(pad), dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for j, i in enumerate(idx):
                        ids[j, : len(rows[i])] = torch.from_numpy(rows[i])
                        mask[j, : len(rows[i])] = 1
                    scores = model(ids.to(device), mask.to(device))  # (b,) or (b, K)
                    got = scores.double().cpu().numpy()
                    if out is None:
                        out = np.empty((len(rows), *got.shape[1:]), dtype=np.float64)
                    out[idx] = got
        finally:
            model.train(was_training)
        return out if out is not None else np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# AI judge (RLAIF)
# --------------------------------------------------------------------------------------------

DEFAULT_JUDGE_TEMPLATE = (
    "Which answer to the question is better?\n"
    "Question: {prompt}\n"
    "Answer A: {answer_a}\n"
    "Answer B: {answer_b}\n"
    "The better answer is "
)


class JudgeLabeler:
    """Pairwise AI judge: a causal LM asked which of two answers is better (RLAIF).

    For each (prompt, a, b) the ``template`` (fields ``{prompt}``, ``{answer_a}``,
    ``{answer_b}``) is filled twice, once with ``a`` shown as answer A and once with ``a`` shown
    as answer B. In each order the judge's preference logit is the difference of its
    next-token logits for the two choice tokens (``"A"``, ``"B"``). The position-debiased
    logit is the mean of the two orders, ``((l_A - l_B)[a first] - (l_A - l_B)[b first]) / 2``,
    and ``P(a better than b) = sigmoid(logit)``. A judge that always prefers the first slot
    gets probability 0.5. The position bias itself is reported by :meth:`preference_probs`
    with ``return_details=True``.

    Each choice must encode to exactly one token (checked at construction).
    """

    __name__ = "judge"

    def __init__(
        self,
        judge_model: torch.nn.Module,
        tokenizer: Any,
        *,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        choices: tuple[str, str] = ("A", "B"),
        batch_size: int = 16,
    ) -> None:
        for field in ("{prompt}", "{answer_a}", "{answer_b}"):
            if field not in template:
                raise ValueError(f"template must contain the field {field}; got {template!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"choices must be two different strings, got {choices!r}")
        ids = []
        for c in choices:
            enc = tokenizer(c, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise ValueError(
                    f"choice {c!r} encodes to {len(enc)} tokens {enc}; each choice must be "
                    "exactly one token for this tokenizer"
                )
            ids.append(int(enc[0]))
        self.judge_model = judge_model
        self.tokenizer = tokenizer
        self.template = template
        self.choices = tuple(choices)
        self.choice_ids = (ids[0], ids[1])
        self.batch_size = int(batch_size)

    def _logit_diffs(self, texts: list[str]) -> np.ndarray:
        """float64 (N,) ``logit[choice A] - logit[choice B]`` at the next token of each text."""
        model = self.judge_model
        device = _device_of(model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        enc = [list(self.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
        out = np.empty(len(enc), dtype=np.float64)
        a, b = self.choice_ids
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(enc), self.batch_size):
                    chunk = enc[s : s + self.batch_size]
                    width = max(len(x) for x in chunk)
                    ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for j, x in enumerate(chunk):  # left padding: the next token is at -1
                        ids[j, width - len(x) :] = torch.tensor(x)
                        mask[j, width - len(x) :] = 1
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    kwargs = {
                        "input_ids": ids.to(device),
                        "attention_mask": mask.to(device),
                        "position_ids": pos.to(device),
                        "use_cache": False,
                    }
                    try:
                        logits = model(**kwargs, logits_to_keep=1).logits[:, -1]
                    except TypeError:  # models without logits_to_keep
                        logits = model(**kwargs).logits[:, -1]
                    logits = logits.float()  # (b, V)
                    out[s : s + len(chunk)] = (logits[:, a] - logits[:, b]).double().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def preference_probs(
        self,
        prompts: Sequence[str],
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        *,
        return_details: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """float64 (B,) probability that ``answers_a[i]`` is better than ``answers_b[i]``.

        With ``return_details`` also a dict of float64 (B,) arrays: ``logit_ab`` (a shown
        first), ``logit_ba`` (b shown first, logit that the first slot wins) and
        ``position_bias = (logit_ab + logit_ba) / 2`` (how much the judge favours slot A).
        """
        n = len(prompts)
        if len(answers_a) != n or len(answers_b) != n:
            raise ValueError(
                f"prompts, answers_a, answers_b have {n}, {len(answers_a)}, {len(answers_b)} "
                "entries; they must match"
            )
        t = self.template
        ab = [
            t.format(prompt=p, answer_a=x, answer_b=y)
            for p, x, y in zip(prompts, answers_a, answers_b, strict=True)
        ]
        ba = [
            t.format(prompt=p, answer_a=y, answer_b=x)
            for p, x, y in zip(prompts, answers_a, answers_b, strict=True)
        ]
        d = self._logit_diffs(ab + ba)
        d_ab, d_ba = d[:n], d[n:]
        logit = 0.5 * (d_ab - d_ba)
        probs = _sigmoid(logit)
        if return_details:
            return probs, {
                "logit_ab": d_ab,
                "logit_ba": d_ba,
                "position_bias": 0.5 * (d_ab + d_ba),
            }
        return probs

    def __call__(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> np.ndarray:
        """Same as :meth:`preference_probs`."""
        out = self.preference_probs(prompts, answers_a, answers_b)
        assert isinstance(out, np.ndarray)
        return out


def label_pairs(
    prompts: Sequence[str],
    completions_a: Sequence[str],
    completions_b: Sequence[str],
    judge: Any,
    *,
    sample: bool = False,
    beta: float = 1.0,
    seed: int | None = None,
    **columns: Any,
) -> list[dict[str, Any]]:
    """Label pairs of completions as preference rows ``{prompt, chosen, rejected}``.

    ``judge`` is either

    * a pairwise judge (:class:`JudgeLabeler`, or anything with ``preference_probs(prompts,
      a, b)``): ``p = P(a better)`` as it returns; or
    * a scoring judge: a reward function (:class:`RewardFunction`, e.g. a
      :class:`RewardModelScorer`, :func:`exact_match_reward` or a hidden gold reward), called
      on ``completions_a`` and ``completions_b`` with the same ``columns``; then
      ``p = sigmoid(beta * (r_a - r_b))`` (Bradley-Terry).

    With ``sample=False`` the better side by ``p`` is chosen and ties (``p == 0.5``) are
    dropped. With ``sample=True`` the label is drawn: ``a`` is chosen with probability ``p``
    (Bradley-Terry label noise), using ``numpy.random.default_rng(seed)`` and one uniform draw
    per pair, so the same seed gives the same labels. Pairs with an unscorable (NaN) score or
    probability are dropped.

    Returns a list of dicts with keys ``prompt``, ``chosen``, ``rejected``, ``p_chosen`` (the
    judged probability that ``chosen`` is better), ``index`` (the pair's position in the
    inputs) and, for scoring judges, ``chosen_score`` and ``rejected_score``.
    """
    n = len(prompts)
    if len(completions_a) != n or len(completions_b) != n:
        raise ValueError(
            f"prompts, completions_a, completions_b have {n}, {len(completions_a)}, "
            f"{len(completions_b)} entries; they must match"
        )
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    r_a = r_b = None
    if hasattr(judge, "preference_probs"):
        p = np.asarray(judge.preference_probs(prompts, completions_a, completions_b), np.float64)
        if p.shape != (n,):
            raise ValueError(f"judge.preference_probs returned shape {p.shape}, expected ({n},)")
    elif callable(judge):
        r_a = call_reward_function(judge, prompts, completions_a, **columns)
        r_b = call_reward_function(judge, prompts, completions_b, **columns)
        p = _sigmoid(beta * (r_a - r_b))
    else:
        raise TypeError(
            f"judge must be a reward function or have preference_probs(), got {type(judge).__name__}"
        )
    u = np.random.default_rng(seed).random(n) if sample else None
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if not np.isfinite(p[i]):
            continue
        if u is not None:
            a_wins = bool(u[i] < p[i])
        else:
            if p[i] == 0.5:
                continue
            a_wins = bool(p[i] > 0.5)
        chosen, rejected = (
            (completions_a[i], completions_b[i]) if a_wins else (completions_b[i], completions_a[i])
        )
        row: dict[str, Any] = {
            "prompt": prompts[i],
            "chosen": chosen,
            "rejected": rejected,
            "p_chosen": float(p[i] if a_wins else 1.0 - p[i]),
            "index": i,
        }
        if r_a is not None and r_b is not None:
            row["chosen_score"] = float(r_a[i] if a_wins else r_b[i])
            row["rejected_score"] = float(r_b[i] if a_wins else r_a[i])
        rows.append(row)
    return rows
