"""What reward-model training and DPO share: preference pairs and the step over them.

Each step draws ``batch_size`` pairs (seeded, resumable order; this rank keeps its block of
``batch_size / world_size``), runs :meth:`PairTrainer.pair_loss` over micro-batches normalised
by the global pair count (:func:`rlhf_core.trainers.step.accumulate_step`), takes one optimizer
step and evaluates on the held-out pairs every ``eval_every`` steps and at the end.

Several processes: the loss stays normalised by ``batch_size`` (× world size before
``backward``; metrics are summed over ranks); evaluation splits the held-out pairs over the
ranks and sums their metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core.rollout import pad_sequences
from rlhf_core.trainers.loop import Trainer
from rlhf_core.trainers.step import accumulate_step

__all__ = [
    "EncodedPairs",
    "Pair",
    "PairTrainer",
    "encode_pairs",
    "eval_parts",
    "split_held_out",
]

Pair = tuple[str, str, str] | Mapping[str, Any]


@dataclass
class EncodedPairs:
    """Token ids of preference pairs: ``chosen[i]`` / ``rejected[i]`` are prompt + completion
    (+ EOS) int64 arrays; ``*_start[i]`` the index of the first completion token; ``margin``
    float64 (P,) (zeros when the data has none); ``weights`` optional int64 (P, K), how many
    times each of K ensemble members counts each pair (its bootstrap resample)."""

    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    chosen_start: list[int]
    rejected_start: list[int]
    margin: np.ndarray
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, idx: Sequence[int] | np.ndarray) -> EncodedPairs:
        rows = np.asarray(idx, dtype=np.int64)
        return EncodedPairs(
            [self.chosen[i] for i in idx],
            [self.rejected[i] for i in idx],
            [self.chosen_start[i] for i in idx],
            [self.rejected_start[i] for i in idx],
            self.margin[rows],
            None if self.weights is None else self.weights[rows],
        )


_PARTS = ("prompt", "chosen", "rejected")


def _rendered(pairs: Sequence[Pair], tokenizer: Any, chat_template_kwargs: Any) -> Any:
    """``pairs`` with conversational rows rendered: rows (mappings, or tuples) whose prompt,
    chosen or rejected is not text go, all of them, through
    :func:`rlhf_core.data.load_preferences` (chat template, ``tools``, implicit prompts,
    errors naming the row and column); text-only pairs are returned as they are."""
    from rlhf_core.data import load_preferences

    def as_row(p: Any) -> Any:
        if isinstance(p, (tuple, list)) and len(p) in (3, 4):
            row = dict(zip(_PARTS, p[:3], strict=True))
            return {**row, "margin": p[3]} if len(p) == 4 else row
        return p

    def plain(p: Any) -> bool:
        row = as_row(p)
        return not isinstance(row, Mapping) or all(isinstance(row.get(k, ""), str) for k in _PARTS)

    if (hasattr(pairs, "chosen") and hasattr(pairs, "rejected")) or all(plain(p) for p in pairs):
        return pairs
    rows = [as_row(p) for p in pairs]
    if any(not isinstance(r, Mapping) for r in rows):
        bad = next(i for i, r in enumerate(rows) if not isinstance(r, Mapping))
        raise ValueError(_expected(pairs[bad], bad))
    return load_preferences(
        [dict(r) for r in rows], tokenizer=tokenizer, chat_template_kwargs=chat_template_kwargs
    )


def _expected(p: Any, i: int) -> str:
    return (
        f"pairs[{i}] is a {type(p).__name__}; expected (prompt, chosen, rejected) or a mapping "
        "with 'prompt', 'chosen', 'rejected' (and optionally 'margin')"
    )


def _fields(p: Pair, i: int) -> tuple[str, str, str, float]:
    if isinstance(p, Mapping):
        missing = [k for k in ("chosen", "rejected") if k not in p]
        if missing:
            raise ValueError(
                f"pairs[{i}] lacks column(s) {missing}; expected 'prompt', 'chosen', 'rejected'"
            )
        parts = (p.get("prompt", ""), p["chosen"], p["rejected"])
        margin = float(p.get("margin", 0.0) or 0.0)
    elif isinstance(p, (tuple, list)) and len(p) in (3, 4):
        parts = (p[0], p[1], p[2])
        margin = float(p[3]) if len(p) == 4 else 0.0
    else:
        raise ValueError(_expected(p, i))
    for name, v in zip(_PARTS, parts, strict=True):
        if not isinstance(v, str):  # conversations were rendered; anything else is refused
            raise ValueError(
                f"pairs[{i}]: {name} is a {type(v).__name__}; expected text or a list of "
                "{role, content} messages"
            )
    return parts[0], parts[1], parts[2], margin


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[Pair],
    *,
    max_length: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> EncodedPairs:
    """Encode preference pairs with :func:`rlhf_core.models.encode_prompt_completion` (the
    encoding used everywhere: prompt with special tokens, completion, EOS). Pairs are tuples or
    mappings (a list, a ``datasets.Dataset`` or a :class:`rlhf_core.data.PreferenceDataset`);
    conversational ones (TRL's explicit or implicit prompt) are rendered with the chat template
    through :func:`rlhf_core.data.load_preferences`, never ``str()``-ed."""
    from rlhf_core.models import encode_prompt_completion

    pairs = _rendered(pairs, tokenizer, chat_template_kwargs)
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
        kw = dict(max_length=cfg.max_length, chat_template_kwargs=cfg.chat_template_kwargs)
        encoded = encode_pairs(tokenizer, pairs, **kw)
        if eval_pairs is not None:
            self.train_pairs = encoded
            self.eval_pairs = encode_pairs(tokenizer, eval_pairs, **kw) if len(eval_pairs) else None
        else:
            tr, ev = split_held_out(len(encoded), cfg.eval_fraction, cfg.seed)
            self.train_pairs = encoded.subset(tr)
            self.eval_pairs = encoded.subset(ev) if len(ev) else None
        self.setup_optimization(model, len(self.train_pairs))

    def pair_loss(self, part: EncodedPairs, num_pairs: int) -> L.LossOutput:
        """The loss of a micro-batch of pairs, normalised by ``num_pairs``."""
        raise NotImplementedError

    def evaluate(self, pairs: EncodedPairs | None = None) -> dict[str, float]:
        """Held-out metrics (default: the trainer's eval split)."""
        raise NotImplementedError

    def padded(self, pairs: EncodedPairs) -> dict[str, torch.Tensor]:
        """Chosen then rejected sequences of ``pairs`` as one padded batch of 2P rows on the
        device (``input_ids``, ``attention_mask`` (2P, T), ``loss_mask`` (2P, T-1)); it is also
        what a failed finite check saves."""
        batch = pad_sequences(
            pairs.chosen + pairs.rejected,
            pairs.chosen_start + pairs.rejected_start,
            self.tokenizer.pad_token_id,
            device=self.device,
        )
        self.batch_to_dump = batch
        return batch

    def train_step(self, step: int) -> dict[str, float]:
        cfg: Any = self.config
        with self.timer.phase("bookkeeping"):
            idx = self.sampler.next(cfg.batch_size)  # the same on every rank
            idx = idx[self.shard(len(idx))]
            batch = self.train_pairs.subset(idx)
            n = len(batch)  # this rank's pairs (batch_size for one process)
            mb = cfg.micro_batch_size or n
            parts = [batch.subset(np.arange(s, min(s + mb, n))) for s in range(0, n, mb)]
        with self.timer.phase("training"):
            self.trained_model.train()
            metrics = accumulate_step(
                parts,
                lambda part: self.pair_loss(part, cfg.batch_size),  # the global pair count
                optimizer_step=self.optimizer_step,
                models=[self.trained_model],
                dist=self.dist,
                sum_loss=True,
            )
            self.step_schedulers()
        return metrics

    def evaluation_due(self, step: int) -> bool:
        """Every ``eval_every`` steps and at the last one, when there are held-out pairs (the
        step loop then logs :meth:`evaluate` under ``eval/``)."""
        cfg: Any = self.config
        return self.eval_pairs is not None and (
            step == cfg.total_steps or bool(cfg.eval_every and step % cfg.eval_every == 0)
        )
