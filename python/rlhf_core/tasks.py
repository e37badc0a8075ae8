"""The demo's synthetic world: a tiny language with a hidden gold reward, and arithmetic.

Everything is deterministic from a seed and uses only lowercase letters, digits, space and
``.:+-=`` (all in the built-in character-level tokenizer).

**The synthetic language.** Prompts ask about an animal (``"tell me about the cat:"``);
completions are one or more short sentences from a small grammar
(``" the cat is happy. it sleeps at home."``). :func:`sft_corpus` samples prompt-completion
pairs from the grammar for supervised training; :func:`prompt_set` samples prompts for RL.

:func:`gold_reward` is the hidden "true" preference (a :class:`~rlhf_core.rewards.RewardFunction`,
``fn(prompts, completions, **columns) -> list[float]``). It is a sum of readable parts (see
:func:`gold_components`):

=================  =====================================================================
``topic``          +1.0 if the completion names the prompt's animal, -1.0 if it does not
``ending``         +0.5 if the text ends with a full stop, -0.5 if it trails off
``positive``       +0.4 per positive adjective **up to 2**, -0.3 per one beyond 3 (gushing)
``negative``       -0.5 per negative adjective
``very``           +0.3 for one "very", **-0.6 for each further one**
``length``         +0.4 per sentence **up to 3**, -0.6 per sentence beyond 3
``repetition``     -0.8 per sentence repeating an earlier one
``off_topic``      -0.3 per sentence about another animal
``unknown_words``  -0.2 per word outside the vocabulary (at most -2.0 in total)
=================  =====================================================================

The bold parts are where over-optimisation comes from: in samples of a model trained on
:func:`sft_corpus`, more sentences, more positive words and a "very" all go with higher gold
reward, so a reward model fitted to gold-labelled pairs learns "longer, more positive, more
very is better". Pushed beyond what the data showed (5 sentences, "very very very"), the proxy
keeps rising while the gold reward falls: the Goodhart curve of Gao et al. 2022.

**Arithmetic** (verifiable reward): prompts ``"12+7="`` with an ``answer`` column ``"19"``;
:func:`arithmetic_reward` is 1.0 for an exact answer and 0.0 otherwise.
:func:`arithmetic_sft_corpus` gives a warm-up corpus whose answers are wrong at a set rate, so
that an SFT model starts imperfect and RL with the exact reward has room to improve it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "SUBJECTS",
    "POSITIVE",
    "NEGATIVE",
    "NEUTRAL",
    "VOCABULARY",
    "PROMPT_TEMPLATES",
    "CHARSET",
    "make_prompt",
    "prompt_subject",
    "sample_completion",
    "sft_corpus",
    "prompt_set",
    "gold_components",
    "gold_reward",
    "bradley_terry_ceiling",
    "arithmetic_dataset",
    "arithmetic_sft_corpus",
    "arithmetic_reward",
]

SUBJECTS: tuple[str, ...] = (
    "cat",
    "dog",
    "bird",
    "fish",
    "horse",
    "cow",
    "frog",
    "bee",
    "fox",
    "owl",
)
POSITIVE: tuple[str, ...] = ("happy", "kind", "calm", "bright", "good")
NEGATIVE: tuple[str, ...] = ("sad", "bad", "angry", "ugly")
NEUTRAL: tuple[str, ...] = ("big", "small", "brown", "old")
VERBS: tuple[str, ...] = ("runs", "sleeps", "eats", "plays", "sits")
PLACES: tuple[str, ...] = ("in the park", "at home", "by the tree", "on the hill")
PROMPT_TEMPLATES: tuple[str, ...] = (
    "tell me about the {s}:",
    "describe the {s}:",
    "write about the {s}:",
)
#: Every character the synthetic tasks produce.
CHARSET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 .:+-=")

_FUNCTION_WORDS = ("the", "is", "it", "i", "like", "very", "in", "at", "by", "on")
VOCABULARY: frozenset[str] = frozenset(
    SUBJECTS
    + POSITIVE
    + NEGATIVE
    + NEUTRAL
    + VERBS
    + _FUNCTION_WORDS
    + tuple(w for p in PLACES for w in p.split())
)

_SUBJECT_RE = re.compile(r"the ([a-z]+):\s*$")
_WORD_RE = re.compile(r"[a-z]+|\d+")


def make_prompt(subject: str, template: int = 0) -> str:
    """The prompt asking about ``subject`` with template ``template`` (index into
    :data:`PROMPT_TEMPLATES`)."""
    if subject not in SUBJECTS:
        raise ValueError(f"subject must be one of {SUBJECTS}, got {subject!r}")
    return PROMPT_TEMPLATES[template].format(s=subject)


def prompt_subject(prompt: str) -> str | None:
    """The animal a prompt asks about, or None when the prompt is not one of ours. The prompt
    may be wrapped (e.g. by a chat template); the last ``"the <animal>:"`` counts."""
    text = prompt.rstrip()
    for marker in ("<|assistant|>", "assistant:"):
        if text.endswith(marker):
            text = text[: -len(marker)].rstrip()
    m = _SUBJECT_RE.search(text)
    if m is None:
        m2 = list(re.finditer(r"the ([a-z]+):", text))
        if not m2:
            return None
        word = m2[-1].group(1)
    else:
        word = m.group(1)
    return word if word in SUBJECTS else None


def _adjective(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(POSITIVE)
    if r < 0.75:
        return rng.choice(NEUTRAL)
    return rng.choice(NEGATIVE)


def _sentence(rng: random.Random, subject: str, first: bool) -> str:
    very = "very " if rng.random() < 0.15 else ""
    r = rng.random()
    if first:
        if r < 0.08:  # off-topic opening
            other = rng.choice([s for s in SUBJECTS if s != subject])
            return f"the {other} is {_adjective(rng)}"
        if r < 0.15:  # vague opening that does not name the animal
            return f"it is {very}{_adjective(rng)}"
        if r < 0.6:
            return f"the {subject} is {very}{_adjective(rng)}"
        if r < 0.9:
            return f"the {subject} {rng.choice(VERBS)} {rng.choice(PLACES)}"
        return f"i like the {subject}"
    if r < 0.35:
        return f"it is {very}{_adjective(rng)}"
    if r < 0.65:
        return f"it {rng.choice(VERBS)} {rng.choice(PLACES)}"
    if r < 0.85:
        return f"the {subject} is {very}{_adjective(rng)}"
    if r < 0.93:
        other = rng.choice([s for s in SUBJECTS if s != subject])
        return f"the {other} is {_adjective(rng)}"
    return f"i like the {subject}"


def sample_completion(rng: random.Random, subject: str) -> str:
    """One completion from the grammar for ``subject``: 1-4 sentences (weights .3/.35/.3/.05),
    sometimes repeating a sentence (p=.1 per sentence after the first) and sometimes trailing
    off without the final full stop (p=.15). Starts with a space."""
    n = rng.choices((1, 2, 3, 4), weights=(0.3, 0.35, 0.3, 0.05))[0]
    sentences: list[str] = []
    for i in range(n):
        if i > 0 and rng.random() < 0.1:
            sentences.append(rng.choice(sentences))
        else:
            sentences.append(_sentence(rng, subject, first=i == 0))
    text = " " + ". ".join(sentences) + "."
    if rng.random() < 0.15:
        text = text[:-1]
    return text


def sft_corpus(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` prompt-completion pairs ``{"prompt", "completion"}`` sampled from the grammar
    (TRL's prompt-completion format), deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"sft-{seed}")
    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        prompt = make_prompt(subject, rng.randrange(len(PROMPT_TEMPLATES)))
        out.append({"prompt": prompt, "completion": sample_completion(rng, subject)})
    return out


def prompt_set(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts (random animal and template), deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"prompts-{seed}")
    return [
        make_prompt(rng.choice(SUBJECTS), rng.randrange(len(PROMPT_TEMPLATES))) for _ in range(n)
    ]


def gold_components(prompt: str, completion: str) -> dict[str, float] | None:
    """The parts of the gold reward of one completion (see the module docstring); their sum is
    :func:`gold_reward`. None when the prompt names no known animal (unscorable)."""
    subject = prompt_subject(prompt)
    if subject is None:
        return None
    text = completion.strip()
    words = _WORD_RE.findall(text)
    if not words:
        return {"empty": -2.0}
    pieces = text.split(".")
    tail = pieces[-1].strip()
    sentences = [" ".join(_WORD_RE.findall(p)) for p in pieces[:-1]]
    sentences = [s for s in sentences if s]
    n_very = words.count("very")
    n_pos = sum(w in POSITIVE for w in words)
    n_neg = sum(w in NEGATIVE for w in words)
    n_sent = len(sentences)
    seen: set[str] = set()
    repeats = 0
    off_topic = 0
    for s in sentences:
        if s in seen:
            repeats += 1
        seen.add(s)
        sw = s.split()
        if any(w in SUBJECTS and w != subject for w in sw) and subject not in sw:
            off_topic += 1
    unknown = sum(w not in VOCABULARY for w in words)
    parts = {
        "topic": 1.0 if subject in words else -1.0,
        "ending": 0.5 if (text.endswith(".") and not tail) else -0.5,
        "positive": 0.4 * min(n_pos, 2) - 0.3 * max(0, n_pos - 3),
        "negative": -0.5 * n_neg,
        "very": 0.3 * min(n_very, 1) - 0.6 * max(0, n_very - 1),
        "length": 0.4 * min(n_sent, 3) - 0.6 * max(0, n_sent - 3),
        "repetition": -0.8 * repeats,
        "off_topic": -0.3 * off_topic,
        "unknown_words": -min(0.2 * unknown, 2.0),
    }
    return {k: v + 0.0 for k, v in parts.items()}  # + 0.0 turns -0.0 into 0.0


def gold_reward(
    prompts: Sequence[str], completions: Sequence[str], **columns: Any
) -> list[float | None]:
    """The hidden gold reward: ``sum(gold_components(p, c).values())`` for each pair; None
    (unscorable) for a prompt that names no known animal. Extra columns are ignored."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"prompts has {len(prompts)} entries, completions {len(completions)}; they must match"
        )
    out: list[float | None] = []
    for p, c in zip(prompts, completions, strict=True):
        parts = gold_components(p, c)
        out.append(None if parts is None else float(sum(parts.values())))
    return out


def bradley_terry_ceiling(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    beta: float = 1.0,
) -> float:
    """The best expected accuracy any reward model can reach on pairs labelled with
    Bradley-Terry noise ``P(a > b) = sigmoid(beta * (s_a - s_b))``: the mean over pairs of
    ``max(p, 1 - p)`` (predicting the more likely label). Pairs with NaN scores are left out."""
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} must be equal 1-D shapes")
    d = beta * (a - b)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    p = 0.5 * (1.0 + np.tanh(0.5 * np.abs(d)))
    return float(p.mean())


# --------------------------------------------------------------------------------------------
# arithmetic


def _arith_problem(rng: random.Random, max_operand: int, ops: str) -> tuple[str, int]:
    a = rng.randint(0, max_operand)
    b = rng.randint(0, max_operand)
    op = rng.choice(ops)
    if op == "-" and b > a:
        a, b = b, a  # keep answers non-negative
    value = a + b if op == "+" else a - b
    return f"{a}{op}{b}=", value


def _check_arith_args(n: int, max_operand: int, ops: str) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    if not ops or any(o not in "+-" for o in ops):
        raise ValueError(f"ops must be a non-empty string of '+' and '-', got {ops!r}")


def arithmetic_dataset(
    n: int, seed: int = 0, max_operand: int = 20, ops: str = "+"
) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt": "12+7=", "answer": "19"}`` with operands in
    ``[0, max_operand]``; ``ops`` any of ``"+"``, ``"-"`` (subtraction keeps results >= 0).
    Deterministic in ``seed``."""
    _check_arith_args(n, max_operand, ops)
    rng = random.Random(f"arith-{seed}")
    out = []
    for _ in range(n):
        prompt, value = _arith_problem(rng, max_operand, ops)
        out.append({"prompt": prompt, "answer": str(value)})
    return out


def arithmetic_sft_corpus(
    n: int, seed: int = 0, max_operand: int = 20, ops: str = "+", error_rate: float = 0.3
) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt", "completion", "answer"}`` where the completion is the right
    answer, except with probability ``error_rate`` when it is off by 1 to 3. Training on it
    gives a model that is right part of the time: the starting point for RL with
    :func:`arithmetic_reward`."""
    _check_arith_args(n, max_operand, ops)
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    rng = random.Random(f"arith-sft-{seed}")
    out = []
    for _ in range(n):
        prompt, value = _arith_problem(rng, max_operand, ops)
        shown = value
        if rng.random() < error_rate:
            delta = rng.choice((-3, -2, -1, 1, 2, 3))
            shown = value + delta if value + delta >= 0 else value - delta
        out.append({"prompt": prompt, "completion": str(shown), "answer": str(value)})
    return out


def arithmetic_reward(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **columns: Any
) -> list[float | None]:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer;
    else 0.0 (``"19"`` scores, ``"19 "`` scores, ``"19."`` and ``"190"`` do not). A row whose
    answer is None is unscorable (None)."""
    if not (len(prompts) == len(completions) == len(answer)):
        raise ValueError(
            f"prompts, completions, answer have {len(prompts)}, {len(completions)}, "
            f"{len(answer)} entries; they must match"
        )
    return [
        None if a is None else (1.0 if c.strip() == str(a).strip() else 0.0)
        for c, a in zip(completions, answer, strict=True)
    ]
