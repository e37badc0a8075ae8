"""Best-of-N rejection sampling with supervised fine-tuning on the winners.

Each step: sample N completions for each of ``rollout_batch_size / N`` prompts, score them
with the reward sources, keep the highest-scoring completion of each prompt (ties: the first
sample; unscorable samples never win; a prompt whose best is below ``min_reward`` contributes
nothing), and take ``sft_epochs`` SFT steps on the kept (prompt, completion) pairs. This is the
rejection-sampling baseline of the RLHF literature (Llama 2, Gao et al. 2022's best-of-n),
iterated: the policy is re-sampled after every update.

Logged per step besides the rollout metrics: ``best_of_n/selected_reward`` (mean score of the
winners), ``best_of_n/reward_gain`` (winners minus all samples), ``best_of_n/num_selected``,
and the SFT loss of the update. With ``track_kl`` the KL of the samples to the reference is
logged as ``kl`` (nats per sequence), the x-axis of over-optimisation curves.

Several processes: each rank samples and selects within its own prompts (a group never spans
ranks); the SFT update normalises by the token count of all ranks' winners and the selection
metrics are computed from every rank's scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_core import losses as L
from rlhf_core.errors import check_field
from rlhf_core.rollout import Rollout, gather, pad_sequences, rollout_metrics
from rlhf_core.trainers.config import RolloutConfig
from rlhf_core.trainers.sampling import RolloutTrainer
from rlhf_core.trainers.sft import sft_step
from rlhf_core.trainers.step import StepAverage

__all__ = ["BestOfNConfig", "BestOfNTrainer", "select_best"]


@dataclass
class BestOfNConfig(RolloutConfig):
    """Config of :class:`BestOfNTrainer` (``num_samples`` is N)."""

    num_samples: int = field(default=4, metadata={"help": "N: completions sampled per prompt"})
    sft_epochs: int = field(
        default=1,
        metadata={"help": "optimizer steps per rollout, each over all selected completions"},
    )
    aggregation: str = field(
        default="token-mean",
        metadata={"help": f"SFT loss aggregation, one of {', '.join(L.AGGREGATIONS)}"},
    )
    min_reward: float | None = field(
        default=None,
        metadata={"help": "keep a prompt's best completion only if it scores at least this"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            self.num_samples >= 2,
            "num_samples",
            self.num_samples,
            "best-of-N needs N >= 2 samples per prompt to choose from",
        )
        check_field(self.sft_epochs >= 1, "sft_epochs", self.sft_epochs, "expected >= 1")
        check_field(
            self.aggregation in L.AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"unknown loss aggregation; expected one of {L.AGGREGATIONS}",
        )


def select_best(
    scores: np.ndarray, group_ids: np.ndarray, min_reward: float | None = None
) -> np.ndarray:
    """Row index of the best-scoring member of each group (ascending group id), skipping
    groups whose scores are all NaN or whose best is below ``min_reward``. Ties go to the
    first row. Returns int64 (K,)."""
    out: list[int] = []
    for g in np.unique(group_ids):
        rows = np.flatnonzero(group_ids == g)
        s = scores[rows]
        ok = np.isfinite(s)
        if not ok.any():
            continue
        best = rows[np.flatnonzero(ok)[np.argmax(s[ok])]]
        if min_reward is not None and scores[best] < min_reward:
            continue
        out.append(int(best))
    return np.asarray(out, dtype=np.int64)


class BestOfNTrainer(RolloutTrainer):
    """Iterated best-of-N: sample, score, keep the best per prompt, SFT on it.

    Arguments as :class:`~rlhf_core.trainers.sampling.RolloutTrainer` (``eval_dataset``,
    ``callbacks`` included); logged samples carry ``selected`` instead of an advantage.
    """

    name = "best_of_n"
    config: BestOfNConfig
    #: rows of the latest rollout kept for the SFT update (int64)
    selected: np.ndarray = np.zeros(0, dtype=np.int64)

    def local_sample_rows(self) -> list[dict[str, Any]]:
        """The rows of the latest rollout, each with ``selected``: whether it won its group
        (no advantage: best-of-N has none)."""
        rows = super().local_sample_rows()
        won = {int(i) for i in self.selected}
        for i, r in enumerate(rows):
            r["selected"] = i in won
        return rows

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        roll = self.collect(step, forward=cfg.track_kl)
        with self.timer.phase("bookkeeping"):
            metrics = rollout_metrics(roll, self.dist)
            metrics.update(self.engine_metrics(roll))
            best = select_best(roll.scores, roll.group_ids, cfg.min_reward)
            self.selected = best
            sel = gather(roll.scores[best], self.dist)  # the winners of every rank
            metrics["best_of_n/num_selected"] = float(len(sel))
            if len(sel):
                metrics["best_of_n/selected_reward"] = float(sel.mean())
                all_scores = gather(roll.scores, self.dist)
                metrics["best_of_n/reward_gain"] = float(sel.mean() - np.nanmean(all_scores))
        with self.timer.phase("training"):
            if len(sel):  # the same decision on every rank
                metrics.update(self._update(roll, best))
            self.step_schedulers()
        return metrics

    def _update(self, roll: Rollout, best: np.ndarray) -> dict[str, float]:
        """``sft_epochs`` SFT steps on the winners, their metrics averaged."""
        cfg = self.config
        pad = self.tokenizer.pad_token_id
        seqs = roll.sequences()
        batch = pad_sequences([seqs[i] for i in best], [len(roll.prompt_ids[i]) for i in best],
                              pad, device=self.device)  # fmt: skip
        filler = None
        if self.dist.is_distributed:
            # ranks select different numbers of winners; one with fewer micro-batches runs
            # this one-row batch with a zero loss to keep the collectives in step
            filler = pad_sequences(seqs[:1], [len(roll.prompt_ids[0])], pad, device=self.device)
        average = StepAverage()
        for _ in range(cfg.sft_epochs):
            average.add(
                sft_step(self, batch, micro_batch_size=cfg.micro_batch_size,
                         aggregation=cfg.aggregation, max_len=cfg.max_new_tokens, filler=filler)
            )  # fmt: skip
        return average.result()
