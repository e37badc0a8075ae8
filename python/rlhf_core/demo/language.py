"""How the demo measures a policy of the synthetic language at one evaluation point.

The evaluation set is fixed: every subject of :mod:`rlhf_core.tasks` with every prompt
template, ``eval_samples`` completions each at temperature 1, always with the same seed. A
record holds the mean proxy score (the reward model; for an ensemble its members' mean), the
mean gold reward, the mean ``sum_t log pi - log pi_ref`` over completions (KL from the SFT
reference, nats), the mean length, the share truncated, and the first sample of three fixed
prompts (the report's before/after samples). With a proxy ensemble it also holds each member's
mean score and the disagreement (the mean over samples of the std across members); with a
check model, the check model's mean score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_core.demo.pipeline import Run
from rlhf_core.evaluation import evaluate_policy

__all__ = ["LanguageEval", "eval_prompts", "say_curve"]


def eval_prompts() -> list[str]:
    """The fixed evaluation prompts: each subject with each template, subject-major."""
    from rlhf_core import tasks

    return [
        tasks.make_prompt(s, t) for s in tasks.SUBJECTS for t in range(len(tasks.PROMPT_TEMPLATES))
    ]


class LanguageEval:
    """Evaluate policies of the synthetic language against the proxy and the gold reward.

    Args:
        run: the demo run (config and tokenizer).
        scorer: the proxy, a :class:`~rlhf_core.rewards.RewardModelScorer` (or a
            :class:`~rlhf_core.rewards.ensemble.RewardEnsembleScorer`).
        reference: the frozen SFT policy the KL is measured from.
        check: the check model's scorer, or None.

    Attributes:
        prompts: the P fixed evaluation prompts (:func:`eval_prompts`).
        shown: indices into ``prompts`` of the three prompts whose samples the report shows
            (three subjects, three templates).
        seed: the sampling seed of every evaluation (best-of-N uses ``seed + 1``).
    """

    def __init__(self, run: Run, scorer: Any, reference: Any, check: Any = None) -> None:
        self.run = run
        self.scorer = scorer
        self.reference = reference
        self.check = check
        self.prompts = eval_prompts()
        self.seed = run.eval_seed
        step = len(self.prompts) // 3 + 1
        self.shown = [0, step, 2 * step]

    def scorers(self) -> dict[str, Any]:
        """The reward sources of an evaluation: ``proxy``, ``gold`` (and ``check``)."""
        from rlhf_core import tasks

        out = {"proxy": self.scorer, "gold": tasks.gold_reward}
        if self.check is not None:
            out["check"] = self.check
        return out

    def __call__(self, policy: Any, step: int) -> dict[str, Any]:
        """The record of ``policy`` at training step ``step``: ``step``, ``proxy``, ``gold``,
        ``kl``, ``response_length``, ``frac_truncated`` and ``samples`` (prompt, text, gold,
        proxy of the first sample of each shown prompt); with an ensemble ``members`` (each
        member's mean) and ``disagreement``; with a check model ``check``; ``proxy_sd`` and
        ``check_sd``: the std over samples of the proxy's and the check's scores."""
        cfg = self.run.cfg
        n = cfg.eval_samples
        ev = evaluate_policy(
            policy,
            self.run.tok,
            self.prompts,
            self.scorers(),
            reference=self.reference,
            num_samples=n,
            max_new_tokens=cfg.max_new_tokens,
            seed=self.seed,
        )
        s = ev.summary()
        picks = [i * n for i in self.shown]  # rows are prompt-major: n per prompt
        extra: dict[str, Any] = {"proxy_sd": float(np.nanstd(ev.scores["proxy"]))}
        k = sum(1 for name in ev.scores if name.startswith("proxy/member_"))
        if k:
            extra["members"] = [s[f"reward/proxy/member_{j}"] for j in range(k)]
            extra["disagreement"] = s["reward/proxy/std"]
        if "check" in ev.scores:
            extra["check"] = s["reward/check"]
            extra["check_sd"] = float(np.nanstd(ev.scores["check"]))
        return {
            "step": int(step),
            "proxy": s["reward/proxy"],
            "gold": s["reward/gold"],
            "kl": s["kl"],
            "response_length": s["response_length/mean"],
            "frac_truncated": s["response_length/frac_truncated"],
            **extra,
            "samples": [
                {
                    "prompt": ev.prompts[i],
                    "text": ev.texts[i],
                    "gold": float(ev.scores["gold"][i]),
                    "proxy": float(ev.scores["proxy"][i]),
                }
                for i in picks
            ],
        }


def say_curve(run: Run, records: Sequence[Mapping[str, Any]]) -> None:
    """One console line for a method's evaluations: start, gold peak and end."""
    first, last = records[0], records[-1]
    peak = max(records, key=lambda r: r["gold"])
    run.say(
        f"  step {first['step']}: proxy {first['proxy']:.3f}, gold {first['gold']:.3f}; "
        f"gold peak at step {peak['step']} ({peak['gold']:.3f}); step {last['step']}: "
        f"proxy {last['proxy']:.3f}, gold {last['gold']:.3f}, "
        f"sqrt(KL) {math.sqrt(max(last['kl'], 0.0)):.2f}"
    )
