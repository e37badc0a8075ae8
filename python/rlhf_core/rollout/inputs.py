"""Model inputs: token sequences padded into ``(B, T)`` batches, micro-batches trimmed to
their own width, and the next-token logprobs of a causal LM over them.

Token alignment (the one every trainer and the buffer's materialised batches use): per-token
tensors are ``(B, T-1)`` and column ``j`` is about token ``j+1`` of ``input_ids``, the
alignment of :func:`rlhf_core.models.token_logprobs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["iter_micro_batches", "logprobs_and_entropy", "logprobs_of", "pad_sequences"]


def pad_sequences(
    sequences: Sequence[np.ndarray | Sequence[int]],
    completion_starts: Sequence[int] | None,
    pad_id: int,
    *,
    loss_masks: Sequence[np.ndarray | Sequence[bool]] | None = None,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into model inputs with a loss mask.

    The rows are materialised by the Rust buffer (:meth:`rlhf_core.buffer.Minibatch.
    to_padded`: each sequence is its prompt, the tokens before its completion start, and its
    completion), so the padding is the buffer's and its ``response_mask`` is the loss mask.

    Args:
        sequences: N token-id sequences (prompt + completion), int.
        completion_starts: per sequence, the index of its first completion token (0 and 1 both
            mean that every token after the first is a target); None with ``loss_masks``.
        pad_id: padding token id.
        loss_masks: instead of ``completion_starts``, per sequence a bool (L_i,) mask of its
            target tokens (e.g. the assistant turns of a conversation,
            :func:`rlhf_core.data.encode_conversation`); the first token is never a target
            (nothing predicts it).
        device: where the tensors go (None: the CPU, sharing memory with the buffer's arrays).

    Returns:
        ``input_ids`` int64 (N, T), ``attention_mask`` int64 (N, T), and ``loss_mask`` bool
        (N, T-1) aligned with :func:`rlhf_core.models.token_logprobs` output: ``loss_mask[i, j]``
        is True when token ``j+1`` of sequence ``i`` is a target (a completion token, or True in
        its loss mask). T is the longest sequence, at least 2.
    """
    from rlhf_core.buffer import RolloutBuffer

    n = len(sequences)
    rows = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    masks: list[np.ndarray] | None = None
    if loss_masks is not None:
        if completion_starts is not None:
            raise ValueError("give completion_starts or loss_masks, not both")
        if len(loss_masks) != n:
            raise ValueError(f"loss_masks has {len(loss_masks)} entries, sequences has {n}")
        masks = [np.asarray(m, dtype=bool).reshape(-1) for m in loss_masks]
        for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
            if len(m) != len(r):
                raise ValueError(f"loss_masks[{i}] has {len(m)} entries, sequences[{i}] {len(r)}")
        completion_starts = [1] * n
    elif completion_starts is None:
        raise ValueError("give completion_starts or loss_masks")
    if len(completion_starts) != n:
        raise ValueError(
            f"completion_starts has {len(completion_starts)} entries, sequences has {n}"
        )
    if n == 0 or max(len(r) for r in rows) < 2:
        # nothing to predict: the (N, 2) / (N, 1) shapes of an all-padding batch
        t = 2
        ids = torch.full((n, t), int(pad_id), dtype=torch.long)
        attn = torch.zeros((n, t), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.from_numpy(r)
            attn[i, : len(r)] = 1
        out = {"input_ids": ids, "attention_mask": attn,
               "loss_mask": torch.zeros((n, t - 1), dtype=torch.bool)}  # fmt: skip
    else:
        cut = [min(max(int(k), 1), len(r)) for r, k in zip(rows, completion_starts, strict=True)]
        buffer = RolloutBuffer()
        buffer.add(
            prompt_ids=[r[:k] for r, k in zip(rows, cut, strict=True)],
            response_ids=[r[k:] for r, k in zip(rows, cut, strict=True)],
        )
        padded = buffer.all().to_padded(pad_token_id=int(pad_id))
        out = {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "loss_mask": padded["response_mask"],
        }
        if masks is not None:  # (N, T-1): column j is about token j+1
            lm = torch.zeros_like(out["loss_mask"])
            for i, m in enumerate(masks):
                lm[i, : len(m) - 1] = torch.from_numpy(m[1:])
            out["loss_mask"] = lm
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def iter_micro_batches(
    batch: Mapping[str, torch.Tensor],
    micro_batch_size: int | None,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Split a dict of row-aligned tensors into chunks of ``micro_batch_size`` rows
    (``None`` = one chunk).

    With a right-padded ``attention_mask`` (B, T) in the batch, columns that are padding in
    every row of a chunk are cut, so each micro-batch is only as wide as its longest row:
    tensors whose second axis is ``T`` keep ``width`` columns, those aligned with the
    logprobs (``T - 1``) keep ``width - 1``. 1-D tensors are only sliced by rows.

    ``lengths`` (B,) int, on the host: the number of real tokens of each row (the row sums of
    ``attention_mask``), when the caller already has them. Without it they are read from the
    mask once per call (one device-to-host copy for the whole batch, none per micro-batch).
    """
    if not batch:
        return
    n = next(iter(batch.values())).shape[0]
    size = n if micro_batch_size is None else int(micro_batch_size)
    if n == 0 or size < 1:
        return
    attn = batch.get("attention_mask")
    t_full = attn.shape[1] if attn is not None and attn.dim() == 2 else None
    row_len: np.ndarray | None = None
    if t_full is not None:
        assert attn is not None
        if lengths is None:
            row_len = attn.sum(dim=1).cpu().numpy()
        else:
            row_len = np.asarray(lengths, dtype=np.int64)
            if row_len.shape != (n,):
                raise ValueError(f"lengths has shape {row_len.shape}, expected ({n},)")
    for s in range(0, n, size):
        chunk = {k: v[s : s + size] for k, v in batch.items()}
        if t_full is not None and row_len is not None:
            width = max(int(row_len[s : s + size].max()), 2)
            if width < t_full:
                for k, v in chunk.items():
                    if v.dim() >= 2 and v.shape[1] == t_full:
                        chunk[k] = v[:, :width]
                    elif v.dim() >= 2 and v.shape[1] == t_full - 1:
                        chunk[k] = v[:, : width - 1]
        yield chunk


def logprobs_of(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """float32 (B, T-1) next-token logprobs (:func:`rlhf_core.models.token_logprobs`)."""
    from rlhf_core.models import token_logprobs

    out = token_logprobs(model, input_ids, attention_mask, temperature=temperature)
    assert isinstance(out, torch.Tensor)
    return out


def logprobs_and_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (B, T-1) next-token logprobs and entropies."""
    from rlhf_core.models import token_logprobs

    out = token_logprobs(
        model, input_ids, attention_mask, temperature=temperature, return_entropy=True
    )
    assert isinstance(out, tuple)
    return out[0], out[1]
