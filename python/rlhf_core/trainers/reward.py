"""Reward-model training from preference pairs (Bradley–Terry).

Each step draws ``batch_size`` pairs (seeded, resumable order); chosen and rejected sequences
of a micro-batch go through the reward model in one forward, and the loss is
:func:`rlhf_core.losses.bradley_terry_loss` (optional per-pair margin, optional reward
centring) normalised by the pair count of the whole batch. A held-out split is evaluated every
``eval_every`` steps and at the end: ``eval/accuracy`` (fraction of pairs ranked right, ties
½) and ``eval/margin`` (mean r_chosen − r_rejected).

The step over pairs, the held-out split and the several-process rules are
:class:`~rlhf_core.trainers.pairwise.PairTrainer`'s, shared with DPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
)

__all__ = ["RewardConfig", "RewardTrainer"]


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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            self.lora_r == 0,
            "lora_r",
            self.lora_r,
            "expected 0: LoRA applies to a causal-LM policy, not to a reward model "
            "(wrap the reward model's body with peft yourself to train adapters)",
        )
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
        self.model = self.wrap_trained(reward_model)
        self.setup_pairs(self.model, tokenizer, pairs, eval_pairs)

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
        """Bradley–Terry loss of a micro-batch (with its margins when ``use_margin``)."""
        rc, rr = self._forward_pairs(part)
        margin = (
            torch.as_tensor(part.margin, dtype=rc.dtype, device=rc.device)
            if self.config.use_margin
            else None
        )
        return L.bradley_terry_loss(
            rc, rr, margin=margin, center_coef=self.config.center_coef, num_pairs=num_pairs
        )

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
                out = L.bradley_terry_loss(rc, rr, num_pairs=len(pairs))
                if real:
                    L.merge_metrics(totals, out.metrics)
        finally:
            self.model.train(was)
        summed = D.all_reduce_metrics(totals, self.dist)  # summed over ranks
        return {
            "accuracy": float(summed["accuracy"]),
            "margin": float(summed["margin"]),
            "loss": float(summed["bt_loss"]),
        }
