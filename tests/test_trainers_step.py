"""The one training step (rlhf_core.trainers.step): micro-batch invariance of
``accumulate_step``, proved once for every trainer that uses it (SFT, best-of-N, reward, DPO,
PPO, GRPO family), and the averaging of metrics over optimizer steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlhf_core import losses as L
from rlhf_core.trainers.step import StepAverage, accumulate_step

B, T, D = 6, 7, 5


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """Rows of features (B, T, D), old logprobs and advantages (B, T), a right-padded mask
    with rows of different lengths (one row empty)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 5, 0, 1, 6])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return {
        "x": torch.randn(B, T, D, generator=g),
        "old": -torch.rand(B, T, generator=g) - 0.5,
        "adv": torch.randn(B, T, generator=g),
        "mask": mask,
    }


class Toy(torch.nn.Module):
    """Per-token logprobs ``−softplus(x·w + b)`` (B, T): a differentiable stand-in for a policy."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(D, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.softplus(x @ self.w + self.b)


def _run(batch: dict[str, torch.Tensor], sizes: list[int], mode: str) -> tuple[Any, Any]:
    """One accumulate_step over micro-batches of the given row counts; returns the metrics and
    the gradients seen by the optimizer step."""
    model = Toy()
    n_tok, n_seq = L.count_tokens_and_seqs(batch["mask"])
    cuts = [0]
    for s in sizes:
        cuts.append(cuts[-1] + s)
    micros = [
        {k: v[a:b] for k, v in batch.items()} for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    calls: list[dict[str, float]] = []
    grads: list[torch.Tensor] = []

    def loss_fn(micro: dict[str, torch.Tensor]) -> L.LossOutput:
        logp = model(micro["x"])
        kw = dict(aggregation=mode, num_tokens=n_tok, num_seqs=n_seq, max_len=T)
        return L.ppo_policy_loss(
            logp, micro["old"], micro["adv"], micro["mask"], **kw
        ) + L.sft_loss(logp, micro["mask"], **kw)

    def optimizer_step(metrics: Any) -> dict[str, float]:
        calls.append(dict(metrics))
        grads.extend(p.grad.detach().clone() for p in model.parameters())
        return {
            "grad_norm": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        }

    metrics = accumulate_step(micros, loss_fn, optimizer_step=optimizer_step, sum_loss=True)
    assert len(calls) == 1 and "grad_norm" not in calls[0]
    return metrics, grads


@pytest.mark.parametrize("mode", L.AGGREGATIONS)
@pytest.mark.parametrize("sizes", [[1] * B, [2, 4], [5, 1]])
def test_micro_batch_invariance(mode: str, sizes: list[int]) -> None:
    """1 micro-batch of B rows == any split into micro-batches: gradients, summed losses and
    every metric (sums and the *_min / *_max extremes)."""
    batch = _batch(3)
    whole, g_whole = _run(batch, [B], mode)
    split, g_split = _run(batch, sizes, mode)
    assert whole.keys() == split.keys()
    assert {"loss", "policy_loss", "nll", "ratio_min", "ratio_max", "grad_norm"} <= set(whole)
    for k in whole:
        assert split[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(g_whole, g_split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_losses_are_summed_only_when_asked() -> None:
    batch = _batch(1)
    model = Toy()
    n_tok, n_seq = L.count_tokens_and_seqs(batch["mask"])

    def loss_fn(micro: dict[str, torch.Tensor]) -> L.LossOutput:
        return L.sft_loss(model(micro["x"]), micro["mask"], num_tokens=n_tok, num_seqs=n_seq)

    micros = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    plain = accumulate_step(micros, loss_fn, optimizer_step=lambda m: {})
    assert set(plain) == {"nll"}
    model.zero_grad()
    summed = accumulate_step(micros, loss_fn, optimizer_step=lambda m: {}, sum_loss=True)
    assert summed["loss"] == pytest.approx(summed["nll"], rel=1e-6)  # the loss is the NLL


def test_step_average_uses_the_metric_table() -> None:
    avg = StepAverage()
    assert avg.result() == {}
    avg.add({"loss": 1.0, "ratio_min": 0.9, "ratio_max": 1.1})
    avg.add({"loss": 3.0, "ratio_min": 0.8, "ratio_max": 1.0})
    assert avg.count == 2
    assert avg.result() == {"loss": 2.0, "ratio_min": 0.8, "ratio_max": 1.1}
