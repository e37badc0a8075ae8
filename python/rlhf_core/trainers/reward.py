"""Reward-model training from preference pairs (Bradley–Terry).

Each step draws ``batch_size`` pairs (seeded, resumable order); chosen and rejected sequences
of a micro-batch go through the reward model in one forward, and the loss is
:func:`rlhf_core.losses.bradley_terry_loss` (optional per-pair margin, optional reward
centring) normalised by the pair count of the whole batch. A held-out split is evaluated every
``eval_every`` steps and at the end: ``eval/accuracy`` (fraction of pairs ranked right, ties
½) and ``eval/margin`` (mean r_chosen − r_rejected).

Several processes: every rank draws the same ``batch_size`` pairs and keeps its block of
``batch_size / world_size`` (the loss stays normalised by ``batch_size``, × world size before
``backward``; metrics are summed over ranks); evaluation splits the held-out pairs over the
ranks and sums their metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core.trainers.base import (
    Trainer,
    TrainerConfig,
    check_field,
    pad_sequences,
)

__all__ = [
    "PairTrainer",
    "RewardConfig",
    "RewardTrainer",
    "EncodedPairs",
    "encode_pairs",
    "eval_parts",
]

Pair = tuple[str, str, str] | Mapping[str, Any]


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


@dataclass
class EncodedPairs:
    """Token ids of preference pairs: ``chosen[i]`` / ``rejected[i]`` are prompt + completion
    (+ EOS) int64 arrays; ``*_start[i]`` the index of the first completion token; ``margin``
    float64 (P,) (zeros when the data has none)."""

    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    chosen_start: list[int]
    rejected_start: list[int]
    margin: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, idx: Sequence[int] | np.ndarray) -> EncodedPairs:
        return EncodedPairs(
            [self.chosen[i] for i in idx],
            [self.rejected[i] for i in idx],
            [self.chosen_start[i] for i in idx],
            [self.rejected_start[i] for i in idx],
            self.margin[np.asarray(idx, dtype=np.int64)],
        )


def _fields(p: Pair, i: int) -> tuple[str, str, str, float]:
    if isinstance(p, Mapping):
        missing = [k for k in ("chosen", "rejected") if k not in p]
        if missing:
            raise ValueError(
                f"pairs[{i}] lacks column(s) {missing}; expected 'prompt', 'chosen', 'rejected'"
            )
        return (
            str(p.get("prompt", "")),
            str(p["chosen"]),
            str(p["rejected"]),
            float(p.get("margin", 0.0) or 0.0),
        )
    if isinstance(p, (tuple, list)) and len(p) in (3, 4):
        return str(p[0]), str(p[1]), str(p[2]), float(p[3]) if len(p) == 4 else 0.0
    raise ValueError(
        f"pairs[{i}] is a {type(p).__name__}; expected (prompt, chosen, rejected) or a mapping "
        "with 'prompt', 'chosen', 'rejected' (and optionally 'margin')"
    )


def encode_pairs(
    tokenizer: Any, pairs: Sequence[Pair], *, max_length: int | None = None
) -> EncodedPairs:
    """Encode preference pairs with :func:`rlhf_core.models.encode_prompt_completion` (the
    encoding used everywhere: prompt with special tokens, completion, EOS)."""
    from rlhf_core.models import encode_prompt_completion

    out = EncodedPairs([], [], [], [], np.zeros(len(pairs), dtype=np.float64))
    for i, p in enumerate(pairs):
        prompt, chosen, rejected, margin = _fields(p, i)
        for text, seqs, starts in (
            (chosen, out.chosen, out.chosen_start),
            (rejected, out.rejected, out.rejected_start),
        ):
            ids, plen = encode_prompt_completion(tokenizer, prompt, text)
            if max_length is not None:
                ids = ids[:max_length]
            if plen >= len(ids):
                raise ValueError(
                    f"pairs[{i}]: no completion token left after truncation to max_length="
                    f"{max_length} (prompt is {plen} tokens)"
                )
            seqs.append(np.asarray(ids, dtype=np.int64))
            starts.append(plen)
        out.margin[i] = margin
    return out


def split_held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, eval) index split; eval gets round(n·fraction) items (at least 1 when
    fraction > 0, and train keeps at least 1)."""
    perm = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(n)
    k = 0 if fraction <= 0 else min(n - 1, max(1, round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def eval_parts(
    trainer: Trainer, pairs: EncodedPairs, batch_size: int
) -> list[tuple[EncodedPairs, bool]]:
    """The evaluation batches of ``trainer``'s rank: its block of ``pairs`` (blocks may differ
    by one pair) in batches of ``batch_size``, each with whether it counts. When forwards are
    collectives (FSDP2 over several processes) every rank gets as many batches as the rank
    with the most; the extra ones hold the first pair and do not count. For one process:
    every pair, in order, all counting."""
    mine = pairs.subset(trainer.shard(len(pairs), allow_uneven=True))
    parts = [
        (mine.subset(np.arange(s, min(s + batch_size, len(mine)))), True)
        for s in range(0, len(mine), batch_size)
    ]
    if trainer.lockstep_forwards:
        most = D.all_reduce_max(len(parts), trainer.dist)
        parts += [(pairs.subset([0]), False)] * (most - len(parts))
    return parts


class PairTrainer(Trainer):
    """What reward-model training and DPO share: the encoded training and held-out pairs, and
    a step that draws ``batch_size`` pairs (this rank's block of them), runs
    :meth:`pair_loss` over micro-batches normalised by the global pair count, takes one
    optimizer step and evaluates every ``eval_every`` steps. Subclasses implement
    :meth:`pair_loss` and :meth:`evaluate`."""

    train_pairs: EncodedPairs
    eval_pairs: EncodedPairs | None

    def setup_pairs(
        self,
        model: nn.Module,
        tokenizer: Any,
        pairs: Sequence[Pair],
        eval_pairs: Sequence[Pair] | None,
    ) -> None:
        """Encode the pairs (``eval_pairs`` given: held out as they are; otherwise an
        ``eval_fraction`` split of ``pairs``), then the sampler and optimizer of ``model``."""
        cfg: Any = self.config
        self.tokenizer = tokenizer
        encoded = encode_pairs(tokenizer, pairs, max_length=cfg.max_length)
        if eval_pairs is not None:
            self.train_pairs = encoded
            self.eval_pairs = (
                encode_pairs(tokenizer, eval_pairs, max_length=cfg.max_length)
                if len(eval_pairs)
                else None
            )
        else:
            tr, ev = split_held_out(len(encoded), cfg.eval_fraction, cfg.seed)
            self.train_pairs = encoded.subset(tr)
            self.eval_pairs = encoded.subset(ev) if len(ev) else None
        self.setup_optimization(model, len(self.train_pairs))

    def pair_loss(self, part: EncodedPairs, num_pairs: int) -> L.LossOutput:
        """The loss of a micro-batch of pairs, normalised by ``num_pairs``."""
        raise NotImplementedError

    def evaluate(self, pairs: EncodedPairs | None = None) -> dict[str, float]:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        cfg: Any = self.config
        model = self.trained_model
        with self.timer.phase("bookkeeping"):
            idx = self.sampler.next(cfg.batch_size)  # the same on every rank
            idx = idx[self.shard(len(idx))]
            batch = self.train_pairs.subset(idx)
        with self.timer.phase("training"):
            model.train()
            totals: dict[str, torch.Tensor] = {}
            # float64 on the device, read once per step (no sync per micro-batch)
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            n = len(batch)  # this rank's pairs (batch_size for one process)
            mb = cfg.micro_batch_size or n
            starts = range(0, n, mb)
            for k, s in enumerate(starts):
                part = batch.subset(np.arange(s, min(s + mb, n)))
                with self.no_sync(model, enabled=k < len(starts) - 1):
                    out = self.pair_loss(part, cfg.batch_size)  # normalised by the global count
                    self.backward(out.loss)
                loss_sum = loss_sum + out.loss.detach().double()
                L.merge_metrics(totals, out.metrics)
            metrics = self.reduce_metrics({**totals, "loss": loss_sum})
            metrics["grad_norm"] = self.optimizer_step(self.optimizer, self.params, metrics)
            self.scheduler.step()
        done = step + 1
        if self.eval_pairs is not None and (
            done == cfg.total_steps or (cfg.eval_every and done % cfg.eval_every == 0)
        ):
            with self.timer.phase("evaluation"):
                metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
        return metrics


class RewardTrainer(PairTrainer):
    """Train a :class:`~rlhf_core.models.RewardModel` on preference pairs.

    Args:
        config: :class:`RewardConfig`.
        reward_model: a ``RewardModel`` (``forward(input_ids, attention_mask) -> (B,)``).
        tokenizer: the tokenizer of its body.
        pairs: ``(prompt, chosen, rejected)`` tuples or mappings with those keys (and
            ``margin`` when ``use_margin``).
        eval_pairs: held-out pairs; default: ``eval_fraction`` of ``pairs`` is held out.
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
    ) -> None:
        super().__init__(config)
        if len(pairs) == 0:
            raise ValueError("pairs is empty: reward training needs at least one pair")
        self.check_divisible("batch_size", config.batch_size)
        self.model = self.wrap_trained(reward_model)
        self.setup_pairs(self.model, tokenizer, pairs, eval_pairs)

    def _forward_pairs(
        self, pairs: EncodedPairs, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (P,), (P,) of chosen and rejected, in one forward of 2P rows."""
        batch = pad_sequences(
            pairs.chosen + pairs.rejected,
            pairs.chosen_start + pairs.rejected_start,
            self.tokenizer.pad_token_id,
            device=self.device,
        )
        self._last_batch = batch
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
        summed = self.reduce_metrics(totals)
        return {
            "accuracy": float(summed["accuracy"]),
            "margin": float(summed["margin"]),
            "loss": float(summed["bt_loss"]),
        }
