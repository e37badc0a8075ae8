"""Reward-model training from preference pairs (Bradley–Terry).

Each step draws ``batch_size`` pairs (seeded, resumable order); chosen and rejected sequences
of a micro-batch go through the reward model in one forward, and the loss is
:func:`rlhf_core.losses.bradley_terry_loss` (optional per-pair margin, optional reward
centring) normalised by the pair count of the whole batch. A held-out split is evaluated every
``eval_every`` steps and at the end: ``eval/accuracy`` (fraction of pairs ranked right, ties
½) and ``eval/margin`` (mean r_chosen − r_rejected).

**Ensembles.** A model that returns K scores per sequence (a
:class:`~rlhf_core.models.RewardEnsemble`: K heads on one body) trains all K members jointly:
with ``ensemble_bootstrap`` (the default) member k sees each training pair as many times as
it appears in its own bootstrap resample of the pairs (:func:`bootstrap_counts`, drawn once
from the seed), otherwise every member sees every pair and they differ only by their heads'
initialisation. The loss is the mean over members of each member's Bradley–Terry loss, so
the shared body's gradient is the sum of the members' gradients divided by K (the clipping
threshold ``max_grad_norm`` means what it means for one model). Held-out metrics are those of
the members' mean score, plus ``member_accuracy`` (the members' mean accuracy) and
``margin_std`` (the mean over held-out pairs of the std across members of r_c − r_r). At the
end of training each member is centred (:meth:`RewardTrainer.center_members`).

**A check model.** :func:`split_check_pairs` splits the pairs into a part for the proxy and a
disjoint part for an independent check model (train a second reward model on it); the RL
trainers log the check model's reward beside the proxy's when it is given as a reward source
of weight 0 (``rlhf-core reward --check_fraction``, ``--check_model`` of the RL commands).

The step over pairs, the held-out split and the several-process rules are
:class:`~rlhf_core.trainers.pairwise.PairTrainer`'s, shared with DPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core.errors import check_field
from rlhf_core.trainers.config import TrainerConfig
from rlhf_core.trainers.pairwise import (  # noqa: F401 - EncodedPairs, encode_pairs: old home
    EncodedPairs,
    Pair,
    PairTrainer,
    encode_pairs,
    eval_parts,
    split_held_out,
)

__all__ = ["RewardConfig", "RewardTrainer", "bootstrap_counts", "split_check_pairs"]


@dataclass
class RewardConfig(TrainerConfig):
    """Config of :class:`RewardTrainer`."""

    batch_size: int = field(default=16, metadata={"help": "preference pairs per optimizer step"})
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "pairs per forward pass; none = batch_size"}
    )
    center_coef: float = field(
        default=0.0,
        metadata={"help": "reward-centring coefficient: + c·mean((r_c + r_r)^2) (TRL: 0.01)"},
    )
    use_margin: bool = field(
        default=False,
        metadata={"help": "subtract each pair's 'margin' column inside the sigmoid (Llama 2)"},
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "held-out share of the pairs when no eval pairs are given (0 = none)"},
    )
    eval_every: int = field(
        default=0, metadata={"help": "evaluate every this many steps (0 = only at the end)"}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "pairs per evaluation forward"})
    max_length: int | None = field(
        default=None, metadata={"help": "truncate each sequence to this many tokens"}
    )
    ensemble_bootstrap: bool = field(
        default=True,
        metadata={
            "help": "a reward ensemble (K >= 2 members): each member trains on its own "
            "bootstrap resample of the pairs; false = every member on every pair (members "
            "differ by their heads' seeds only)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(self.batch_size >= 1, "batch_size", self.batch_size, "expected >= 1")
        check_field(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "micro_batch_size",
            self.micro_batch_size,
            "expected >= 1 or none",
        )
        check_field(
            self.center_coef >= 0, "center_coef", self.center_coef, "expected >= 0 (e.g. 0.01)"
        )
        check_field(
            0 <= self.eval_fraction < 1,
            "eval_fraction",
            self.eval_fraction,
            "expected in [0, 1)",
        )
        check_field(self.eval_every >= 0, "eval_every", self.eval_every, "expected >= 0")
        check_field(
            self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "expected >= 1"
        )
        check_field(
            self.max_length is None or self.max_length >= 2,
            "max_length",
            self.max_length,
            "expected >= 2 or none",
        )


class RewardTrainer(PairTrainer):
    """Train a :class:`~rlhf_core.models.RewardModel` on preference pairs.

    Args:
        config: :class:`RewardConfig`.
        reward_model: a ``RewardModel`` (``forward(input_ids, attention_mask) -> (B,)``).
            With ``lora_r > 0`` it gets LoRA adapters in place
            (:func:`rlhf_core.models.apply_reward_lora`: the body's adapters and the score
            head train; :func:`rlhf_core.models.peft_model_of` gives the peft model to save).
        tokenizer: the tokenizer of its body.
        pairs: ``(prompt, chosen, rejected)`` tuples or mappings with those keys (and
            ``margin`` when ``use_margin``).
        eval_pairs: held-out pairs; default: ``eval_fraction`` of ``pairs`` is held out.
        callbacks: :class:`rlhf_core.trainers.callbacks.TrainerCallback` instances.
    """

    name = "reward"
    checkpoint_key = "reward_model"
    config: RewardConfig

    def __init__(
        self,
        config: RewardConfig,
        reward_model: nn.Module,
        tokenizer: Any,
        pairs: Sequence[Pair],
        eval_pairs: Sequence[Pair] | None = None,
        *,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(config, callbacks=callbacks)
        if len(pairs) == 0:
            raise ValueError("pairs is empty: reward training needs at least one pair")
        self.check_divisible("batch_size", config.batch_size)
        # with lora_r > 0: adapters on the body, the score head trained in full
        reward_model = self.apply_lora(reward_model, pad_token_id=tokenizer.pad_token_id)
        #: K of a reward ensemble (a model with ``num_members``); None for one reward model
        self.num_members: int | None = getattr(reward_model, "num_members", None)
        self.model = self.wrap_trained(reward_model)
        self.setup_pairs(self.model, tokenizer, pairs, eval_pairs)
        k = self.num_members
        if k is not None:
            n = len(self.train_pairs)
            self.train_pairs.weights = (
                bootstrap_counts(n, k, config.seed).T
                if k >= 2 and config.ensemble_bootstrap
                else np.ones((n, k), dtype=np.int64)
            )  # (n, K)

    def train_step(self, step: int) -> dict[str, float]:
        """One step over pairs; an ensemble's last step also centres its members
        (:meth:`center_members`) before the final checkpoint."""
        metrics = super().train_step(step)
        if self.num_members is not None and step + 1 == self.config.total_steps:
            with self.timer.phase("evaluation"):
                self.center_members()
        return metrics

    @torch.no_grad()
    def center_members(self, max_pairs: int = 1024) -> np.ndarray:
        """Shift each member of a reward ensemble so that its mean score over (up to
        ``max_pairs`` of) the training pairs, chosen and rejected sequences alike, is 0, and
        return the shifts (K,). A Bradley–Terry reward is fixed only up to a constant; without
        this the members' spread on a sequence would mostly be their constants. Every rank
        scores the same pairs (the same shifts everywhere)."""
        if self.num_members is None:
            raise ValueError("center_members applies to a reward ensemble (K heads)")
        model = D.unwrap_model(self.model)
        was = model.training
        model.eval()
        pairs = self.train_pairs.subset(np.arange(min(max_pairs, len(self.train_pairs))))
        total = torch.zeros(self.num_members, dtype=torch.float64)
        try:
            bs = self.config.eval_batch_size
            for s in range(0, len(pairs), bs):
                rc, rr = self._forward_pairs(
                    pairs.subset(np.arange(s, min(s + bs, len(pairs)))), model
                )
                total += (rc.sum(0) + rr.sum(0)).double().cpu()
        finally:
            model.train(was)
        shift = total / (2 * len(pairs))
        offsets: torch.Tensor = model.offsets  # type: ignore[assignment]
        offsets.add_(shift.to(device=offsets.device, dtype=offsets.dtype))
        return shift.numpy()

    def _forward_pairs(
        self, pairs: EncodedPairs, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (P,), (P,) of chosen and rejected, in one forward of 2P rows."""
        batch = self.padded(pairs)
        with self.autocast():
            r = (self.model if model is None else model)(
                batch["input_ids"], batch["attention_mask"]
            )  # (2P,)
        r = r.float()
        p = len(pairs)
        return r[:p], r[p:]

    def pair_loss(self, part: EncodedPairs, num_pairs: int) -> L.LossOutput:
        """Bradley–Terry loss of a micro-batch (with its margins when ``use_margin``); for an
        ensemble the mean over members of each member's loss on its resample."""
        rc, rr = self._forward_pairs(part)
        margin = (
            torch.as_tensor(part.margin, dtype=rc.dtype, device=rc.device)
            if self.config.use_margin
            else None
        )
        if rc.dim() == 1:
            return L.bradley_terry_loss(
                rc, rr, margin=margin, center_coef=self.config.center_coef, num_pairs=num_pairs
            )
        if part.weights is None:
            raise ValueError("an ensemble's pairs carry no member weights (EncodedPairs.weights)")
        k = rc.shape[1]
        counts = torch.as_tensor(part.weights, device=rc.device)  # (P, K)
        rows = torch.arange(rc.shape[0], device=rc.device)
        total: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        for j in range(k):
            # member j's share of the batch: each pair repeated as often as its resample has it
            idx = torch.repeat_interleave(rows, counts[:, j])
            out = L.bradley_terry_loss(
                rc[idx, j],
                rr[idx, j],
                margin=None if margin is None else margin[idx],
                center_coef=self.config.center_coef,
                num_pairs=num_pairs,
            )
            total = out.loss / k if total is None else total + out.loss / k
            L.merge_metrics(metrics, {m: v / k for m, v in out.metrics.items()})
        assert total is not None
        return L.LossOutput(total, metrics)

    @torch.no_grad()
    def evaluate(self, pairs: EncodedPairs | None = None) -> dict[str, float]:
        """Accuracy, mean margin and loss of the reward model on held-out pairs (default: the
        trainer's eval split)."""
        pairs = pairs if pairs is not None else self.eval_pairs
        if pairs is None or len(pairs) == 0:
            raise ValueError("no evaluation pairs: pass eval_pairs or set eval_fraction > 0")
        was = self.model.training
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        try:
            # no gradient: the DDP wrapper (whose forward is a collective) is not needed
            model = D.unwrap_model(self.model)
            for part, real in eval_parts(self, pairs, self.config.eval_batch_size):
                rc, rr = self._forward_pairs(part, model)
                if real:
                    L.merge_metrics(totals, _eval_metrics(rc, rr, len(pairs)))
        finally:
            self.model.train(was)
        summed = D.all_reduce_metrics(totals, self.dist)  # summed over ranks
        out = {
            "accuracy": float(summed["accuracy"]),
            "margin": float(summed["margin"]),
            "loss": float(summed["bt_loss"]),
        }
        for key in ("member_accuracy", "margin_std"):
            if key in summed:
                out[key] = float(summed[key])
        return out


def _eval_metrics(rc: torch.Tensor, rr: torch.Tensor, num_pairs: int) -> dict[str, torch.Tensor]:
    """Held-out metrics of a batch of pairs normalised by the global ``num_pairs``: those of
    :func:`rlhf_core.losses.bradley_terry_loss`; for ensemble scores (P, K) those of the
    members' mean score plus ``member_accuracy`` and ``margin_std`` (the std across members
    of each pair's margin r_c - r_r, :func:`rlhf_core.rewards.ensemble.ensemble_std`, summed
    / N: the members' disagreement on held-out pairs, blind to their constants)."""
    from rlhf_core.rewards.ensemble import ensemble_std

    if rc.dim() == 1:
        return L.bradley_terry_loss(rc, rr, num_pairs=num_pairs).metrics
    k = rc.shape[1]
    metrics = dict(L.bradley_terry_loss(rc.mean(1), rr.mean(1), num_pairs=num_pairs).metrics)
    acc = sum(
        L.bradley_terry_loss(rc[:, j], rr[:, j], num_pairs=num_pairs).metrics["accuracy"]
        for j in range(k)
    )
    metrics["member_accuracy"] = torch.as_tensor(acc) / k
    margins = (rc - rr).detach().double().cpu().numpy()  # (P, K)
    metrics["margin_std"] = torch.tensor(float(ensemble_std(margins).sum()) / num_pairs)
    return metrics


def bootstrap_counts(num_items: int, num_members: int, seed: int) -> np.ndarray:
    """int64 (num_members, num_items): row k counts how often each item appears in member
    k's bootstrap resample (``num_items`` draws with replacement, seeded by ``seed`` and k;
    each row sums to ``num_items``; about 37% of the items are left out of each)."""
    if num_items < 1 or num_members < 1:
        raise ValueError(
            f"bootstrap_counts needs num_items >= 1 and num_members >= 1, got {num_items}, "
            f"{num_members}"
        )
    out = np.empty((num_members, num_items), dtype=np.int64)
    for k in range(num_members):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 13, k])
        out[k] = np.bincount(rng.integers(0, num_items, size=num_items), minlength=num_items)
    return out


def split_check_pairs(
    pairs: Sequence[Pair], check_fraction: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """Split preference pairs into the proxy's part and a disjoint check part holding
    ``round(len(pairs) * check_fraction)`` of them (seeded; each part keeps at least one
    pair). Train the optimised reward model on the first and an independent check model on
    the second; a policy that over-optimises the proxy's particular errors then loses reward
    under the check model while the proxy's keeps rising."""
    if not 0 < check_fraction < 1:
        raise ValueError(f"check_fraction must be in (0, 1), got {check_fraction}")
    if len(pairs) < 2:
        raise ValueError(f"splitting off a check part needs at least 2 pairs, got {len(pairs)}")
    # a seed stream apart from the held-out split's
    proxy, check = split_held_out(len(pairs), check_fraction, seed + 7919)
    return [pairs[i] for i in proxy], [pairs[i] for i in check]
