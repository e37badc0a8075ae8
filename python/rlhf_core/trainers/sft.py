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
        metadata={
            "help": "loss on completion tokens only (conversations: the assistant turns); "
            "false: on every token after the first"
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


def _encode_one(
    tokenizer: Any, ex: Any, i: int, chat_template_kwargs: Mapping[str, Any] | None
) -> tuple[list[int] | np.ndarray, np.ndarray]:
    """Token ids and target mask of example ``i``."""
    from rlhf_core.data import DataError, encode_conversation, render_prompt_completion
    from rlhf_core.models import encode_prompt_completion

    kw: dict[str, Any] = dict(chat_template_kwargs=chat_template_kwargs, source="examples",
                              row=i + 1)  # fmt: skip
    if isinstance(ex, str):
        prompt, completion = "", ex
    elif isinstance(ex, Mapping) and "messages" in ex:
        enc = encode_conversation(tokenizer, ex["messages"], tools=ex.get("tools"), **kw)
        return enc.input_ids, enc.loss_mask
    elif isinstance(ex, Mapping) and "completion" in ex:
        prompt, completion = render_prompt_completion(
            ex.get("prompt", ""), ex["completion"], tokenizer, tools=ex.get("tools"), **kw
        )
    elif isinstance(ex, Mapping) and "text" in ex:
        if not isinstance(ex["text"], str):
            raise DataError("examples", i + 1, "text", "wrong_type",
                            f"expected a string, got {type(ex['text']).__name__}")  # fmt: skip
        prompt, completion = "", ex["text"]
    elif isinstance(ex, Mapping):
        raise ValueError(
            f"examples[{i}] has keys {sorted(ex)}; expected 'messages', 'prompt' and "
            "'completion', or 'text'"
        )
    elif isinstance(ex, (tuple, list)) and len(ex) == 2:
        prompt, completion = render_prompt_completion(ex[0], ex[1], tokenizer, **kw)
    else:
        raise ValueError(
            f"examples[{i}] is a {type(ex).__name__}; expected a string, a (prompt, completion) "
            "pair or a mapping with 'messages', 'prompt'/'completion' or 'text'"
        )
    ids, plen = encode_prompt_completion(tokenizer, prompt, completion)
    return ids, np.arange(len(ids)) >= plen


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and target mask (bool, True on the tokens the loss covers) of each example.

    * a string, or a mapping with ``text``: the whole text is the completion of an empty
      prompt;
    * a ``(prompt, completion)`` pair, or a mapping with ``prompt`` (optional) and
      ``completion``: strings, or conversations (TRL's conversational prompt-completion rows)
      rendered with the chat template (:func:`rlhf_core.data.render_prompt_completion`);
      encoded with :func:`rlhf_core.models.encode_prompt_completion`, the encoding the
      reward model and the trainers' scoring use; the completion tokens are the targets;
    * a mapping with ``messages`` (and ``tools``): a whole conversation through
      :func:`rlhf_core.data.encode_conversation`, the assistant turns being the targets.

    A value that is neither text nor messages raises (never ``str()``). Sequences longer than
    ``max_length`` are cut at the end. ``examples`` may be a list, a ``datasets.Dataset`` or a
    dataset of :mod:`rlhf_core.data`.
    """
    seqs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i, ex in enumerate(examples):
        ids, mask = _encode_one(tokenizer, ex, i, chat_template_kwargs)
        ids_arr = np.asarray(ids, dtype=np.int64)
        mask_arr = np.asarray(mask, dtype=bool)
        if max_length is not None:
            ids_arr, mask_arr = ids_arr[:max_length], mask_arr[:max_length]
        if not mask_arr[1:].any():
            raise ValueError(
                f"examples[{i}] has no target token left (sequence of {len(ids_arr)} tokens"
                + (f" after truncation to max_length={max_length}" if max_length else "")
                + "); raise max_length or shorten the prompt"
            )
        seqs.append(ids_arr)
        masks.append(mask_arr)
    return seqs, masks


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
        examples: strings (the whole text is the target), ``(prompt, completion)`` pairs,
            mappings with ``prompt`` / ``completion`` (text or conversations), ``text``, or
            ``messages`` (a conversation: the loss on its assistant turns only); a list, a
            ``datasets.Dataset`` or a dataset of :mod:`rlhf_core.data` (see
            :func:`encode_examples`).
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
        self.sequences, masks = encode_examples(
            tokenizer, examples, max_length=config.max_length,
            chat_template_kwargs=config.chat_template_kwargs,
        )  # fmt: skip
        if not config.completion_only:  # every token after the first
            masks = [np.ones(len(m), dtype=bool) for m in masks]
        self.loss_masks = masks
        self.setup_optimization(self.model, len(self.sequences))

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        with self.timer.phase("bookkeeping"):
            idx = self.sampler.next(cfg.batch_size)  # the same on every rank
            idx = idx[self.shard(len(idx))]
            batch = pad_sequences(
                [self.sequences[i] for i in idx],
                None,
                self.tokenizer.pad_token_id,
                loss_masks=[self.loss_masks[i] for i in idx],
                device=self.device,
            )
        with self.timer.phase("training"):
            metrics = sft_step(self, batch, micro_batch_size=cfg.micro_batch_size,
                               aggregation=cfg.aggregation, max_len=cfg.max_length)  # fmt: skip
            self.step_schedulers()
        return metrics
