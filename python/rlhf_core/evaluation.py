"""Evaluate a policy: sample it on a prompt set, score the samples, measure its KL from a
reference; and the expected rewards of best-of-n selection.

This is library code: ``rlhf-core eval`` and the built-in demo (:mod:`rlhf_core.demo`) both use
it, and neither imports the other for it.

- :func:`evaluate_policy` returns a :class:`PolicyEval`: per sample, the prompt, the decoded
  completion, each reward source's score, and ``sum_t log pi(y_t) - log pi_ref(y_t)`` over the
  completion's tokens (through the kernels :func:`rlhf_core.ops.kl` and
  :func:`rlhf_core.ops.reduce_tokens`).
- :func:`best_of_n_curve` turns M scored samples per prompt into the proxy and gold reward of
  best-of-n for several n, with the analytic KL of :func:`best_of_n_kl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PolicyEval", "evaluate_policy", "sequence_kl", "best_of_n_kl", "best_of_n_curve"]


@dataclass
class PolicyEval:
    """Samples of a policy on a prompt set, their scores and their KL from a reference.

    Attributes:
        prompts: N prompt texts (prompt-major: ``num_samples`` rows per prompt).
        texts: N completions (decoded, special tokens skipped).
        scores: per reward source name, float64 (N,) raw scores (NaN = unscorable).
        kl: float64 (N,) ``sum_t log pi(y_t) - log pi_ref(y_t)`` over each completion's tokens
            (an unbiased sample of KL(pi || pi_ref) per completion, nats), or None without a
            reference.
        response_lengths: int64 (N,) completion lengths in tokens.
        truncated: bool (N,) completions that hit ``max_new_tokens`` without EOS.
        columns: the extra columns, one entry per row.
    """

    prompts: list[str]
    texts: list[str]
    scores: dict[str, np.ndarray]
    kl: np.ndarray | None
    response_lengths: np.ndarray
    truncated: np.ndarray
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def summary(self) -> dict[str, float]:
        """Means over the rows: ``reward/<source>`` (finite scores only),
        ``reward/<source>/frac_unscorable``, ``kl``, ``kl/std``, ``response_length/mean``,
        ``response_length/frac_truncated``, ``num_samples``."""
        out: dict[str, float] = {}
        for name, s in self.scores.items():
            ok = s[np.isfinite(s)]
            out[f"reward/{name}"] = float(ok.mean()) if ok.size else math.nan
            out[f"reward/{name}/frac_unscorable"] = float(np.mean(~np.isfinite(s)))
        if self.kl is not None:
            out["kl"] = float(self.kl.mean())
            out["kl/std"] = float(self.kl.std())
        out["response_length/mean"] = float(self.response_lengths.mean())
        out["response_length/frac_truncated"] = float(self.truncated.mean())
        out["num_samples"] = float(len(self))
        return out


def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scorers: Mapping[str, Callable[..., Any]],
    *,
    reference: Any = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    generation_backend: Any = "auto",
) -> PolicyEval:
    """Sample ``num_samples`` completions per prompt, score them, and measure the KL.

    Args:
        policy: an HF causal LM.
        tokenizer: its tokenizer.
        prompts: P prompt texts.
        scorers: reward sources by name: reward functions ``fn(prompts, completions,
            **columns)`` or :class:`~rlhf_core.rewards.RewardModelScorer` (scored on the
            sampled token ids, as the trainers do; a reward ensemble's members and
            disagreement come as ``<name>/member_<k>`` and ``<name>/std``).
        reference: a frozen reference model for the KL (None: no KL).
        columns: extra per-prompt columns (P entries each) for the reward functions.
        num_samples, max_new_tokens, temperature, top_p, top_k: sampling (temperature 0 is
            greedy); ``seed`` makes the samples reproducible.
        batch_size: rows per generate call and per logprob forward.
        generation_backend: ``"auto"``, ``"hf"``, ``"decode_loop"`` or a
            :class:`rlhf_core.generation.RolloutBackend` (a vLLM engine made with
            :func:`rlhf_core.generation.make_backend`), as in
            :func:`rlhf_core.generation.generate`.

    Returns:
        :class:`PolicyEval` with ``P * num_samples`` rows, prompt-major.
    """
    from rlhf_core.generation import generate
    from rlhf_core.rewards import RewardModelScorer, call_reward_function

    if not prompts:
        raise ValueError("prompts is empty")
    cols = {k: list(v) for k, v in (columns or {}).items()}
    for k, v in cols.items():
        if len(v) != len(prompts):
            raise ValueError(f"column {k!r} has {len(v)} entries, prompts has {len(prompts)}")
    comp = generate(
        policy,
        tokenizer,
        list(prompts),
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
        generation_backend=generation_backend,
    )
    rows = comp.group_ids
    row_prompts = [prompts[g] for g in rows]
    row_cols = {k: [v[g] for g in rows] for k, v in cols.items()}
    seqs = comp.sequences()
    scores: dict[str, np.ndarray] = {}
    for name, fn in scorers.items():
        if isinstance(fn, RewardModelScorer):
            main, extra = fn.score_ids_parts(seqs)
            scores[name] = np.asarray(main, dtype=np.float64)
            for sub, part in extra.items():  # an ensemble's members and disagreement
                scores[f"{name}/{sub}"] = np.asarray(part, dtype=np.float64)
        else:
            scores[name] = call_reward_function(fn, row_prompts, comp.texts, **row_cols)
    kl = None
    if reference is not None:
        starts = [len(p) for p in comp.prompt_ids]
        kl = sequence_kl(policy, reference, seqs, starts, tokenizer.pad_token_id, batch_size)
    return PolicyEval(
        prompts=row_prompts,
        texts=list(comp.texts),
        scores=scores,
        kl=kl,
        response_lengths=comp.response_lengths.astype(np.int64),
        truncated=np.asarray(comp.truncated, dtype=bool),
        columns=row_cols,
    )


def sequence_kl(
    policy: Any,
    reference: Any,
    sequences: Sequence[np.ndarray],
    completion_starts: Sequence[int],
    pad_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    """float64 (N,): ``sum_t log pi(y_t) - log pi_ref(y_t)`` over the completion tokens of each
    of N token sequences (prompt + completion; completion ``i`` starts at
    ``completion_starts[i]``), in batches of ``batch_size`` under ``torch.inference_mode``.

    The per-token difference is :func:`rlhf_core.ops.kl` (``"k1"``, no clamp) on the float64
    logprobs, summed per row by :func:`rlhf_core.ops.reduce_tokens` over the completion mask.
    ``policy`` is put in eval mode for the forwards and restored after.
    """
    import torch

    from rlhf_core import ops
    from rlhf_core.models import token_logprobs
    from rlhf_core.rollout.inputs import pad_sequences

    out = np.zeros(len(sequences), dtype=np.float64)
    device = next(iter(policy.parameters())).device
    was = policy.training
    policy.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(sequences), batch_size):
                part = sequences[s : s + batch_size]
                b = pad_sequences(
                    part, completion_starts[s : s + batch_size], pad_id, device=device
                )
                lp = token_logprobs(policy, b["input_ids"], b["attention_mask"])  # (b, T-1)
                rlp = token_logprobs(reference, b["input_ids"], b["attention_mask"])
                assert isinstance(lp, torch.Tensor) and isinstance(rlp, torch.Tensor)
                delta = ops.kl(lp.double().cpu(), rlp.double().cpu(), estimator="k1", clamp=None)
                out[s : s + len(part)] = ops.reduce_tokens(delta, b["loss_mask"].cpu()).numpy()
    finally:
        policy.train(was)
    return out


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats: the analytic value for sampling n
    completions and keeping the best (Stiennon et al. 2020, appendix; used by Gao et al.
    2022 for their best-of-n curves)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_curve(
    proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]
) -> list[tuple[int, float, float, float]]:
    """Expected proxy and gold reward of best-of-n selection by the proxy.

    Args:
        proxy, gold: float64 (P, M) scores of M samples for each of P prompts.
        ns: the n values (each at most M).

    For each n the M samples of a prompt are cut into ``M // n`` disjoint groups; in each group
    the sample with the highest proxy is kept, and proxy and gold are averaged over groups and
    prompts (an unbiased estimate, with less variance than one group). NaN proxy never wins.

    Returns:
        ``[(n, kl, proxy, gold)]`` with the analytic :func:`best_of_n_kl`.
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if proxy.shape != gold.shape or proxy.ndim != 2:
        raise ValueError(f"proxy {proxy.shape} and gold {gold.shape} must be equal (P, M) shapes")
    p, m = proxy.shape
    out = []
    for n in ns:
        if not 1 <= n <= m:
            raise ValueError(f"n={n} must be in [1, {m}] (the samples per prompt)")
        k = m // n
        px = proxy[:, : k * n].reshape(p, k, n)
        g = gold[:, : k * n].reshape(p, k, n)
        best = np.argmax(np.where(np.isfinite(px), px, -np.inf), axis=2)[..., None]  # (P, k, 1)
        out.append(
            (
                int(n),
                best_of_n_kl(n),
                float(np.take_along_axis(px, best, 2).mean()),
                float(np.nanmean(np.take_along_axis(g, best, 2))),
            )
        )
    return out
