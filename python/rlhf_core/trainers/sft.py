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
from rlhf_core.trainers.base import (
    Trainer,
    TrainerConfig,
    check_field,
    iter_micro_batches,
    logprobs_of,
    pad_sequences,
)

__all__ = ["SFTConfig", "SFTTrainer", "encode_examples"]

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


def sft_update(
    trainer: Trainer,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    batch: Mapping[str, torch.Tensor],
    *,
    micro_batch_size: int | None,
    aggregation: str,
    max_len: int | None,
    filler: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One AdamW step of SFT on a padded batch (``input_ids``, ``attention_mask``,
    ``loss_mask`` as from :func:`~rlhf_core.trainers.base.pad_sequences`); shared with
    best-of-N. Returns metrics (``loss``, ``nll``, ``grad_norm``, ``tokens``).

    With several processes ``batch`` is this rank's share: counts and metrics are global, and
    every rank runs as many micro-batches as the rank with the most (a rank with fewer rows
    runs ``filler``, any one-row batch, with its loss multiplied by 0, so that the gradient
    synchronisation, and under FSDP2 every forward, happens on all ranks)."""
    ctx = trainer.dist
    n_tok, n_seq = D.global_token_counts(batch["loss_mask"], ctx)
    totals: dict[str, torch.Tensor] = {}
    loss_acc = torch.zeros((), dtype=torch.float64, device=trainer.device)
    model.train()
    trainer._last_batch = dict(batch)
    micros = list(iter_micro_batches(batch, micro_batch_size))
    n_micro = D.all_reduce_max(len(micros), ctx) if ctx.is_distributed else len(micros)
    if n_micro > len(micros) and filler is None:
        raise ValueError(
            f"this rank has {len(micros)} micro-batch(es) but another has {n_micro}: give the "
            "ranks equal shares or a filler batch"
        )
    for k in range(n_micro):
        real = k < len(micros)
        mb = micros[k] if real else filler
        assert mb is not None
        with trainer.no_sync(model, enabled=k < n_micro - 1):
            with trainer.autocast():
                logp = logprobs_of(model, mb["input_ids"], mb["attention_mask"])
            out = L.sft_loss(
                logp,
                mb["loss_mask"],
                aggregation=aggregation,
                num_tokens=n_tok,
                num_seqs=n_seq,
                max_len=max_len,
            )
            trainer.backward(out.loss if real else out.loss * 0.0)
        if real:
            # float64 on the device, read once after the loop (no sync per micro-batch); the
            # same additions as Python floats, so the same value
            loss_acc = loss_acc + out.loss.detach().double()
            L.merge_metrics(totals, out.metrics)
    # one device-to-host copy of every metric, summed over ranks when there are several
    metrics = D.all_reduce_metrics({**totals, "loss": loss_acc}, ctx)
    loss_sum = metrics["loss"]
    metrics["grad_norm"] = trainer.optimizer_step(optimizer, params, {"loss": loss_sum})
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
    """

    name = "sft"
    config: SFTConfig

    def __init__(
        self, config: SFTConfig, model: nn.Module, tokenizer: Any, examples: Sequence[Example]
    ) -> None:
        super().__init__(config)
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
            metrics = sft_update(
                self,
                self.model,
                self.optimizer,
                self.params,
                batch,
                micro_batch_size=cfg.micro_batch_size,
                aggregation=cfg.aggregation,
                max_len=cfg.max_length,
            )
            self.scheduler.step()
        return metrics

