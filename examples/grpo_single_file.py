"""GRPO in one file, top to bottom, from rlhf_core's public pieces.

What ``rlhf_core.trainers.GRPOTrainer`` does, without the trainer: sample a group of G
completions per prompt, score them, compute group-relative advantages with the Rust kernel,
then a few epochs of the clipped surrogate with a k3 KL penalty to a frozen reference. The
built-in tiny model learns to write digits (the reward is the fraction of digits in a
completion); nothing is downloaded.

    python examples/grpo_single_file.py --steps 30

The pieces: ``rlhf_core.models`` (model, tokenizer, reference, per-token logprobs),
``rlhf_core.generation.generate`` (sampling), ``rlhf_core.ops`` (the advantage kernel),
``rlhf_core.buffer.RolloutBuffer`` (ragged storage, seeded minibatches, padded batches) and
``rlhf_core.losses`` (pure loss functions). What the trainer adds on top: checkpoints and
exact resume, several processes, micro-batches, logging, more estimators and options.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_core import losses, ops
from rlhf_core.buffer import RolloutBuffer
from rlhf_core.generation import generate
from rlhf_core.models import build_builtin_policy, load_tokenizer, make_reference, token_logprobs


@dataclass
class Args:
    seed: int = 0
    """seed of the model's initialisation, the sampling and the minibatch order"""
    steps: int = 20
    """training steps (one rollout each)"""
    prompts_per_step: int = 4
    """prompts sampled per step"""
    group_size: int = 8
    """G: completions per prompt"""
    max_new_tokens: int = 8
    """most tokens per completion"""
    learning_rate: float = 2e-3
    """AdamW learning rate"""
    epochs: int = 2
    """passes over each rollout (GRPO's mu)"""
    minibatch_size: int = 16
    """completions per optimizer step"""
    clip: float = 0.2
    """PPO clip epsilon"""
    kl_coef: float = 0.02
    """beta of the k3 KL penalty to the reference, in the loss"""
    std_eps: float = 1e-4
    """added to the group std before dividing (TRL's value)"""


PROMPTS = ["Q:", "A:", "x=", "y=", "ab", "1+"]


def digit_reward(completions: list[str]) -> np.ndarray:
    """float64 (N,): the fraction of digits in each completion."""
    return np.array([sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions])


def response_logprobs(model: torch.nn.Module, seqs: list[np.ndarray], prompt_lens: list[int],
                      pad_id: int) -> list[np.ndarray]:  # fmt: skip
    """Per-token logprobs of each response under ``model``, float32 (R_i,) per sequence."""
    lengths = [len(s) for s in seqs]
    t = max(lengths)
    input_ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)  # (B, T) right-padded
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.from_numpy(s)
    attention_mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    with torch.no_grad():
        logp = token_logprobs(model, input_ids, attention_mask)  # (B, T-1): column j = token j+1
    assert isinstance(logp, torch.Tensor)
    # response token k of sequence i is input_ids[i, P_i + k], predicted by column P_i + k - 1
    rows = enumerate(zip(prompt_lens, lengths, strict=True))
    return [logp[i, p - 1 : n - 1].numpy() for i, (p, n) in rows]


def main(args: Args) -> list[dict[str, float]]:
    """Train; returns one row of metrics per step."""
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer()
    policy = build_builtin_policy(tokenizer, seed=args.seed)
    reference = make_reference(policy)  # a frozen copy: the KL anchor
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.learning_rate)
    pad_id = tokenizer.pad_token_id
    buffer = RolloutBuffer()
    history: list[dict[str, float]] = []

    for step in range(args.steps):
        # 1. rollout: G completions for each of the step's prompts, without grad
        first = step * args.prompts_per_step
        prompts = [PROMPTS[(first + i) % len(PROMPTS)] for i in range(args.prompts_per_step)]
        policy.eval()
        comp = generate(policy, tokenizer, prompts, num_samples=args.group_size,
                        max_new_tokens=args.max_new_tokens, seed=args.seed * 10_000 + step)  # fmt: skip
        scores = digit_reward(comp.texts)  # (N,) one score per completion

        # 2. the logprobs the ratio and the KL compare against: rollout policy and reference
        seqs = comp.sequences()  # prompt + response ids per completion
        prompt_lens = [len(p) for p in comp.prompt_ids]
        old_logprobs = response_logprobs(policy, seqs, prompt_lens, pad_id)
        ref_logprobs = response_logprobs(reference, seqs, prompt_lens, pad_id)

        # 3. the rollout into the buffer (ragged: no padding stored), group advantages from the
        #    Rust kernel: (r - mean_group) / (std_group + eps), one per completion
        buffer.clear()
        buffer.add(prompt_ids=comp.prompt_ids, response_ids=comp.response_ids,
                   logprobs=old_logprobs, ref_logprobs=ref_logprobs, scores=scores,
                   group_ids=comp.group_ids)  # fmt: skip
        advantages, groups = ops.group_advantages(
            scores.astype(np.float32), group_ids=comp.group_ids, eps=args.std_eps, return_stats=True
        )
        buffer.set_advantages(advantages, estimator="grpo")

        # 4. epochs x shuffled minibatches of the clipped surrogate + k3 KL, one step each
        policy.train()
        step_losses, clip_fracs = [], []
        for mb in buffer.minibatches(args.minibatch_size, epochs=args.epochs, seed=step):
            batch = mb.to_padded(pad_token_id=pad_id)  # (b, t) inputs, (b, t-1) per-token arrays
            logp = token_logprobs(policy, batch["input_ids"], batch["attention_mask"])
            assert isinstance(logp, torch.Tensor)
            mask = batch["response_mask"]  # (b, t-1): which columns are response tokens
            out = losses.ppo_policy_loss(
                logp, batch["old_logprobs"], batch["advantages"], mask,
                clip_low=args.clip, aggregation="seq-mean-token-mean",
            ) + losses.kl_penalty(
                logp, batch["ref_logprobs"], mask, coef=args.kl_coef, estimator="k3",
                aggregation="seq-mean-token-mean",
            )  # fmt: skip
            optimizer.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            step_losses.append(out.loss.item())
            clip_fracs.append(out.metrics["clip_frac"].item())

        row = {
            "step": float(step + 1),
            "reward/mean": float(scores.mean()),
            "loss": float(np.mean(step_losses)),
            "clip_frac": float(np.mean(clip_fracs)),
            "frac_zero_std_groups": groups.frac_zero_std,
        }
        history.append(row)
        print(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
    return history


def parse(argv: list[str] | None = None) -> Args:
    """Args from the command line: one ``--name`` per field of :class:`Args`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse())
