"""A rollout engine for tests without vLLM: a separate copy of the policy's weights behind the
:class:`rlhf_core.generation.RolloutBackend` interface.

:class:`SeparateWeightsBackend` samples with HF ``generate`` from its **own** copy of the
policy, reports the sampler's logprobs of the sampled tokens, and refreshes the copy only when
:meth:`~SeparateWeightsBackend.sync_weights` is called, exactly the contract a vLLM engine has.
So everything a trainer does around an engine (when it syncs, the rollout-logprob channel, the
mismatch metrics and their correction, a missed sync) is testable in the main test suite; the
real engine is tested in ``tests/vllm_backend``::

    trainer = GRPOTrainer(config, policy, tok, prompts, reward)
    trainer.backend = engine = SeparateWeightsBackend(policy, tok)
    trainer.train()
    assert engine.syncs == config.total_steps
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rlhf_core.generation import Completions, LocalBackend, SamplingConfig
from rlhf_core.generation.weights import inference_state_dict, is_peft_model

__all__ = ["SeparateWeightsBackend"]


class SeparateWeightsBackend:
    """HF ``generate`` on a private copy of ``model``, synced on request.

    Args:
        model: the policy (DDP unwrapped; a peft model's adapters merged into the copy when
            synced, as an engine gets them).
        tokenizer: its tokenizer.

    Attributes:
        model: the private copy (eval mode, no gradients).
        syncs: number of :meth:`sync_weights` calls.
        calls: number of :meth:`generate` calls.
        asleep: True between :meth:`sleep` and the next sync or generation.
    """

    name = "separate_weights"

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        from rlhf_core.parallel import unwrap_model

        base = unwrap_model(model)
        # a peft model's copy is merged into a plain model with the base model's names
        self.model = (
            copy.deepcopy(base).merge_and_unload()  # type: ignore[operator]
            if is_peft_model(base)
            else copy.deepcopy(base)
        )
        self.model.eval().requires_grad_(False)
        self._load(inference_state_dict(base))
        self._local = LocalBackend(self.model, tokenizer, "hf")
        self.syncs = 0
        self.calls = 0
        self.asleep = False
        self.closed = False

    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            own = self.model.state_dict()
            for k, v in state.items():
                own[k].copy_(v)

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Sequence[str],
        sampling: SamplingConfig,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> Completions:
        if self.closed:
            raise RuntimeError("this backend is closed")
        self.asleep = False
        self.calls += 1
        return self._local.generate(prompts, sampling, prompt_seeds=prompt_seeds)

    def sync_weights(self, model: nn.Module | None = None) -> float:
        """Copy ``model``'s current weights (LoRA merged) into the private copy."""
        if model is None:
            raise ValueError("sync_weights needs the model")
        t0 = time.perf_counter()
        self._load(inference_state_dict(model))
        self.syncs += 1
        self.asleep = False
        return time.perf_counter() - t0

    def sleep(self) -> None:
        """Record that the trainer put the engine to sleep (nothing is freed here)."""
        self.asleep = True

    def close(self) -> None:
        self.closed = True
