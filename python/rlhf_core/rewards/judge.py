"""The AI judge (RLAIF): a causal LM asked which of two answers is better, in both orders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "JudgeLabeler", "sigmoid"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function, float64 (NaN stays NaN)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


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
        probs = sigmoid(logit)
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
