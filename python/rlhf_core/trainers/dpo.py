"""Direct preference optimisation (DPO, with conservative label smoothing) and IPO.

Each step draws ``batch_size`` pairs; for each micro-batch the chosen and rejected sequences
go through the policy in one forward (with grad) and through the frozen reference in one
forward (inference mode), and :func:`rlhf_core.losses.dpo_loss` compares the sequence
log-probabilities of the completions (summed for DPO, length-averaged for IPO as in the IPO
paper), normalised by the pair count of the whole batch.

Several processes: every rank draws the same ``batch_size`` pairs and keeps its block of
``batch_size / world_size`` (the loss stays normalised by ``batch_size``, × world size before
``backward``; metrics are summed over ranks); evaluation splits the held-out pairs over the
ranks and sums their metrics.
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
from rlhf_core.rollout import logprobs_of
from rlhf_core.trainers.config import TrainerConfig
from rlhf_core.trainers.pairwise import EncodedPairs, Pair, PairTrainer, eval_parts

__all__ = ["DPOConfig", "DPOTrainer"]


@dataclass
class DPOConfig(TrainerConfig):
    """Config of :class:`DPOTrainer`."""

    beta: float = field(
        default=0.1, metadata={"help": "β: strength of the implicit KL constraint (> 0)"}
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": f"one of {', '.join(L.DPO_LOSS_TYPES)} (DPO or IPO)"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "conservative-DPO label noise ε in [0, 0.5) (sigmoid only)"},
    )
    batch_size: int = field(default=16, metadata={"help": "preference pairs per optimizer step"})
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "pairs per forward pass; none = batch_size"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "truncate each sequence to this many tokens"}
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "held-out share of the pairs when no eval pairs are given (0 = none)"},
    )
    eval_every: int = field(
        default=0, metadata={"help": "evaluate every this many steps (0 = only at the end)"}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "pairs per evaluation forward"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(self.beta > 0, "beta", self.beta, "expected > 0 (e.g. 0.1)")
        check_field(
            self.loss_type in L.DPO_LOSS_TYPES,
            "loss_type",
            self.loss_type,
            f"unknown loss type; expected one of {L.DPO_LOSS_TYPES}",
        )
        check_field(
            0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            self.label_smoothing,
            "expected in [0, 0.5)",
        )
        check_field(
            self.label_smoothing == 0 or self.loss_type == "sigmoid",
            "label_smoothing",
            self.label_smoothing,
            "label smoothing applies to loss_type='sigmoid' only; set it to 0 for ipo",
        )
        check_field(self.batch_size >= 1, "batch_size", self.batch_size, "expected >= 1")
        check_field(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "micro_batch_size",
            self.micro_batch_size,
            "expected >= 1 or none",
        )
        check_field(
            self.max_length is None or self.max_length >= 2,
            "max_length",
            self.max_length,
            "expected >= 2 or none",
        )
        check_field(
            0 <= self.eval_fraction < 1, "eval_fraction", self.eval_fraction, "expected in [0, 1)"
        )
        check_field(self.eval_every >= 0, "eval_every", self.eval_every, "expected >= 0")
        check_field(
            self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "expected >= 1"
        )


class DPOTrainer(PairTrainer):
    """Train a policy with DPO / IPO on preference pairs against a frozen reference.

    Args:
        config: :class:`DPOConfig`.
        policy: an HF causal LM (trained in place).
        tokenizer: its tokenizer.
        pairs: ``(prompt, chosen, rejected)`` tuples or mappings with those keys.
        reference: the frozen reference; default :func:`rlhf_core.models.make_reference` of
            the policy as passed (before any training).
        eval_pairs: held-out pairs (default: ``eval_fraction`` of ``pairs``, none when 0).
        callbacks: :class:`rlhf_core.trainers.callbacks.TrainerCallback` instances.
    """

    name = "dpo"
    config: DPOConfig

    def __init__(
        self,
        config: DPOConfig,
        policy: nn.Module,
        tokenizer: Any,
        pairs: Sequence[Pair],
        *,
        reference: nn.Module | None = None,
        eval_pairs: Sequence[Pair] | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        from rlhf_core.models import make_reference

        super().__init__(config, callbacks=callbacks)
        if len(pairs) == 0:
            raise ValueError("pairs is empty: DPO needs at least one pair")
        self.check_divisible("batch_size", config.batch_size)
        policy = self.apply_lora(policy)
        # the reference is a copy of the policy as passed, made before the policy is wrapped
        self.reference = self.wrap_frozen(
            reference if reference is not None else make_reference(policy)
        )
        self.policy = self.wrap_trained(policy)
        self.reference.eval()
        self.setup_pairs(self.policy, tokenizer, pairs, eval_pairs)

    def _sequence_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Completion log-probabilities (2P,) of a padded pair batch (chosen, then rejected)."""
        with self.autocast():
            lp = logprobs_of(model, batch["input_ids"], batch["attention_mask"])
        average = self.config.loss_type == "ipo"
        return L.sequence_logprobs(lp, batch["loss_mask"], average=average)  # (2P,)

    def pair_loss(
        self, pairs: EncodedPairs, num_pairs: int, policy: nn.Module | None = None
    ) -> L.LossOutput:
        p = len(pairs)
        batch = self.padded(pairs)  # copied to the device once, for the reference and the policy
        with torch.inference_mode():
            ref = self._sequence_logps(self.reference, batch)
        ref = ref.clone()  # outside inference mode: a normal tensor, usable in autograd
        pol = self._sequence_logps(self.policy if policy is None else policy, batch)
        return L.dpo_loss(
            pol[:p],
            pol[p:],
            ref[:p],
            ref[p:],
            beta=self.config.beta,
            loss_type=self.config.loss_type,
            label_smoothing=self.config.label_smoothing,
            num_pairs=num_pairs,
        )

    @torch.no_grad()
    def evaluate(self, pairs: EncodedPairs | None = None) -> dict[str, float]:
        """Implicit-reward accuracy, margin and loss on held-out pairs."""
        pairs = pairs if pairs is not None else self.eval_pairs
        if pairs is None or len(pairs) == 0:
            raise ValueError("no evaluation pairs: pass eval_pairs or set eval_fraction > 0")
        was = self.policy.training
        self.policy.eval()
        totals: dict[str, torch.Tensor] = {}
        try:
            # no gradient: the DDP wrapper (whose forward is a collective) is not needed
            policy = D.unwrap_model(self.policy)
            for part, real in self.eval_parts(pairs):
                out = self.pair_loss(part, len(pairs), policy)
                if real:
                    L.merge_metrics(totals, out.metrics)
        finally:
            self.policy.train(was)
        summed = D.all_reduce_metrics(totals, self.dist)  # summed over ranks
        return {
            "reward_accuracy": float(summed["reward_accuracy"]),
            "reward_margin": float(summed["reward_margin"]),
            "loss": float(summed["dpo_loss"]),
        }

    def eval_parts(self, pairs: EncodedPairs) -> list[tuple[EncodedPairs, bool]]:
        """This rank's held-out pairs in batches of ``eval_batch_size``, each with whether it
        counts. Under FSDP2 every rank runs as many forward passes as the rank with the most
        batches (extra ones repeat the first pair and are not counted)."""
        return eval_parts(self, pairs, self.config.eval_batch_size)
