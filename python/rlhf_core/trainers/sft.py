"""Supervised fine-tuning: maximise the likelihood of completions given prompts.

The pipeline's first stage (a policy that speaks the task's language) and the update of
best-of-N. Each step draws ``batch_size`` examples (seeded, resumable order), runs them in
micro-batches of ``micro_batch_size`` and takes one AdamW step on the negative log-likelihood
of the completion tokens, normalised by the token count of the whole batch
(:func:`rlhf_core.losses.sft_loss`).

Several processes: every rank draws the same ``batch_size`` examples and keeps its block of
``batch_size / world_size``; the token count of the whole batch normalises every rank's loss,
which is multiplied by the world size before ``backward`` (DDP / FSDP2 average gradients);
metrics are summed over ranks.
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
from rlhf_core.errors import check_field
from rlhf_core.rollout import iter_micro_batches, logprobs_of, pad_sequences
from rlhf_core.trainers.config import TrainerConfig
from rlhf_core.trainers.loop import Trainer
from rlhf_core.trainers.step import accumulate_step

__all__ = ["SFTConfig", "SFTTrainer", "encode_examples", "sft_step"]

Example = str | tuple[str, str] | Mapping[str, Any]


@dataclass
class SFTConfig(TrainerConfig):
    """Config of :class:`SFTTrainer`."""

    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step"})
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "examples per forward pass (gradient accumulation); none = batch_size"},
    )
    aggregation: str = field(
        default="token-mean",
        metadata={"help": f"loss aggregation, one of {', '.join(L.AGGREGATIONS)}"},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "truncate prompt+completion to this many tokens; none = no limit"},
    )
    completion_only: bool = field(
        default=True,
        metadata={"help": "loss on completion tokens only (false: on every token after the 1st)"},
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
            self.aggregation in L.AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"expected one of {L.AGGREGATIONS}",
        )
        check_field(
            self.aggregation != "seq-mean-token-sum-norm" or self.max_length is not None,
            "aggregation",
            self.aggregation,
            "seq-mean-token-sum-norm needs max_length as its constant normaliser; set max_length",
        )
        check_field(
            self.max_length is None or self.max_length >= 2,
            "max_length",
            self.max_length,
            "expected >= 2 or none",
        )


def _prompt_completion(ex: Example, i: int) -> tuple[str, str]:
    if isinstance(ex, str):
        return "", ex
    if isinstance(ex, Mapping):
        if "completion" in ex:
            return str(ex.get("prompt", "")), str(ex["completion"])
        if "text" in ex:
            return "", str(ex["text"])
        raise ValueError(
            f"examples[{i}] has keys {sorted(ex)}; expected 'prompt' and 'completion', or 'text'"
        )
    if isinstance(ex, (tuple, list)) and len(ex) == 2:
        return str(ex[0]), str(ex[1])
    raise ValueError(
        f"examples[{i}] is a {type(ex).__name__}; expected a string, a (prompt, completion) pair "
        "or a mapping with 'prompt'/'completion' (or 'text')"
    )


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], *, max_length: int | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """Token ids (prompt + completion + EOS) and completion start of each example.

    Uses :func:`rlhf_core.models.encode_prompt_completion`, the same encoding the reward model
    and the trainers' scoring use. Sequences longer than ``max_length`` are cut at the end.
    """
    from rlhf_core.models import encode_prompt_completion

    seqs: list[np.ndarray] = []
    starts: list[int] = []
    for i, ex in enumerate(examples):
        prompt, completion = _prompt_completion(ex, i)
        ids, plen = encode_prompt_completion(tokenizer, prompt, completion)
        if max_length is not None:
            ids = ids[:max_length]
        if plen >= len(ids):
            raise ValueError(
                f"examples[{i}] has no completion token left (prompt is {plen} tokens, "
                f"sequence {len(ids)}); raise max_length or shorten the prompt"
            )
        seqs.append(np.asarray(ids, dtype=np.int64))
        starts.append(plen)
    return seqs, starts


def sft_step(
    trainer: Trainer,
    batch: Mapping[str, torch.Tensor],
    *,
    micro_batch_size: int | None,
    aggregation: str,
    max_len: int | None,
    filler: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimizer step of SFT on ``trainer``'s main model (SFT and best-of-N).

    Args:
        trainer: the trainer whose :attr:`~rlhf_core.trainers.loop.Trainer.trained_model` is
            trained (its optimizer step, autocast and process group are used).
        batch: this rank's padded batch: ``input_ids`` int64 (B, T), ``attention_mask`` int64
            (B, T), ``loss_mask`` bool (B, T-1) (:func:`rlhf_core.rollout.pad_sequences`).
        micro_batch_size: rows per forward / backward; None = all.
        aggregation, max_len: of :func:`rlhf_core.losses.sft_loss`.
        filler: a one-row batch a rank with fewer micro-batches runs with a zero loss
            (:func:`~rlhf_core.trainers.step.accumulate_step`).

    Returns:
        ``loss``, ``nll``, ``grad_norm``, ``tokens`` (the NLL is normalised by the token count
        of every rank's batch).
    """
    n_tok, n_seq = D.global_token_counts(batch["loss_mask"], trainer.dist)
    model = trainer.trained_model
    model.train()
    trainer.batch_to_dump = dict(batch)

    def loss(micro: Mapping[str, torch.Tensor]) -> L.LossOutput:
        with trainer.autocast():
            logp = logprobs_of(model, micro["input_ids"], micro["attention_mask"])  # (b, w-1)
        return L.sft_loss(logp, micro["loss_mask"], aggregation=aggregation, num_tokens=n_tok,
                          num_seqs=n_seq, max_len=max_len)  # fmt: skip

    metrics = accumulate_step(
        list(iter_micro_batches(batch, micro_batch_size)),
        loss,
        optimizer_step=trainer.optimizer_step,
        models=[model],
        dist=trainer.dist,
        filler=filler,
        sum_loss=True,
    )
    metrics["tokens"] = float(n_tok)
    return metrics


class SFTTrainer(Trainer):
    """Supervised fine-tuning of a causal LM on (prompt, completion) examples.

    Args:
        config: :class:`SFTConfig`.
        model: an HF causal LM (trained in place, moved to the config's device).
        tokenizer: its tokenizer.
        examples: strings (the whole text is the target), ``(prompt, completion)`` pairs, or
            mappings with ``prompt`` / ``completion`` (or ``text``).
        callbacks: :class:`rlhf_core.trainers.callbacks.TrainerCallback` instances.
    """

    name = "sft"
    config: SFTConfig

    def __init__(
        self,
        config: SFTConfig,
        model: nn.Module,
        tokenizer: Any,
        examples: Sequence[Example],
        *,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(config, callbacks=callbacks)
        if len(examples) == 0:
            raise ValueError("examples is empty: SFT needs at least one example")
        self.check_divisible("batch_size", config.batch_size)
        self.model = self.wrap_trained(self.apply_lora(model))
        self.tokenizer = tokenizer
        self.sequences, starts = encode_examples(tokenizer, examples, max_length=config.max_length)
        self.starts = starts if config.completion_only else [1] * len(starts)
        self.setup_optimization(self.model, len(self.sequences))

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        with self.timer.phase("bookkeeping"):
            idx = self.sampler.next(cfg.batch_size)  # the same on every rank
            idx = idx[self.shard(len(idx))]
            batch = pad_sequences(
                [self.sequences[i] for i in idx],
                [self.starts[i] for i in idx],
                self.tokenizer.pad_token_id,
                device=self.device,
            )
        with self.timer.phase("training"):
            metrics = sft_step(self, batch, micro_batch_size=cfg.micro_batch_size,
                               aggregation=cfg.aggregation, max_len=cfg.max_length)  # fmt: skip
            self.step_schedulers()
        return metrics
