"""CUDA-only checks of the GPU paths (skipped without a CUDA device; run on a lent GPU by
``benches/gpu_check.sh``).

- a GRPO trainer step under bf16 autocast: finite metrics, every trainable parameter changed,
  the transformer's matrix products ran in bf16, phase timings reported, the rollout sampled
  by the compiled decode loop (``fast_generation`` is on by default);
- :func:`rlhf_core.models.token_logprobs` forward + backward stays far below the memory of the
  full (B, T, V) float32 logits, and matches a naive log-softmax;
- the fast generation path (static KV cache + compiled decode step) runs without falling back,
  returns fixed-length completions, and with greedy decoding picks the argmax token of the
  model's own forward pass at every position.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (GPU paths: bf16 autocast step, logits memory, fast generation); "
    "run benches/gpu_check.sh on a GPU machine",
)

DEVICE = torch.device("cuda")


def _reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [float(len(set(c))) / max(len(c), 1) for c in completions]


def test_grpo_step_bf16_autocast(tmp_path: Any) -> None:
    from rlhf_core.generation import BACKENDS_USED
    from rlhf_core.models import build_builtin_policy, load_tokenizer
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    tok = load_tokenizer()
    policy = build_builtin_policy(tok, seed=0)
    compiled_before = BACKENDS_USED["static-compiled"]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    seen: list[torch.dtype] = []
    handle = policy.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype) if torch.is_grad_enabled() else None
    )
    cfg = GRPOConfig(
        run_dir=str(tmp_path / "run"),
        total_steps=1,
        device="cuda",
        bf16=True,
        num_samples=4,
        rollout_batch_size=16,
        max_new_tokens=12,
        micro_batch_size=8,
        kl_coef=0.04,
        learning_rate=1e-3,
        progress_bar=False,
        tensorboard=False,
    )
    prompts = [f"say {w}" for w in ("red", "blue", "green", "gold", "grey", "pink")]
    trainer = GRPOTrainer(cfg, policy, tok, prompts, _reward)
    result = trainer.train()
    handle.remove()
    m = result.metrics
    assert all(math.isfinite(v) for k, v in m.items() if "loss" in k), m
    assert {"time/generation", "time/scoring", "time/bookkeeping", "time/training"} <= set(m)
    assert seen and all(d == torch.bfloat16 for d in seen), seen
    assert next(trainer.policy.parameters()).device.type == "cuda"
    # fast_generation is on by default: the rollout came from the compiled decode loop
    assert BACKENDS_USED["static-compiled"] > compiled_before
    changed = [
        n for n, p in trainer.policy.named_parameters()
        if not torch.equal(p.detach().cpu(), before[n])
    ]  # fmt: skip
    assert len(changed) == len(before), sorted(set(before) - set(changed))


def test_token_logprobs_never_holds_full_logits() -> None:
    from transformers import LlamaForCausalLM

    from rlhf_core.models import tiny_config, token_logprobs

    vocab, b, t = 32000, 8, 1024
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(vocab, hidden_size=128, intermediate_size=256)).to(DEVICE)
    ids = torch.randint(4, vocab, (b, t), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[1, 700:] = 0
    full_bytes = b * t * vocab * 4  # float32 logits of the whole batch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lp = token_logprobs(model, ids, mask, chunk_size=256)
    assert isinstance(lp, torch.Tensor)
    (-lp.sum()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < full_bytes / 2, (
        f"peak {peak / 2**20:.0f} MiB vs full logits {full_bytes / 2**20:.0f} MiB"
    )
    with torch.no_grad():  # a naive reference on one row
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits.float()
        ref = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[0].detach(), ref, atol=2e-4, rtol=1e-4)
    assert torch.all(lp[1, 699:] == 0)  # padding positions hold 0


def test_fast_generation_path() -> None:
    from rlhf_core.generation import BACKENDS_USED, generate
    from rlhf_core.models import build_builtin_policy, load_tokenizer, token_logprobs

    tok = load_tokenizer()
    model = build_builtin_policy(tok, seed=0).to(DEVICE)
    prompts = ["hello there", "a b c", "count: 1 2 3", "x"]
    before = BACKENDS_USED["static-compiled"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the plain path fails
        fast = generate(
            model, tok, prompts, num_samples=2, max_new_tokens=24, temperature=0.0,
            stop_at_eos=False, fast=True,
        )  # fmt: skip
    assert len(fast) == 8
    assert BACKENDS_USED["static-compiled"] == before + 1  # rlhf_core's compiled loop ran
    assert all(len(r) == 24 for r in fast.response_ids)
    # greedy: every sampled token is the argmax of the model's own forward pass
    ref = copy.deepcopy(model).float()
    for p_ids, r_ids in zip(fast.prompt_ids, fast.response_ids, strict=True):
        seq = torch.as_tensor(list(p_ids) + list(r_ids), device=DEVICE)[None]
        with torch.no_grad():
            logits = ref(input_ids=seq).logits[0, len(p_ids) - 1 : -1].float()  # (R, V)
        chosen = logits.gather(-1, seq[0, len(p_ids) :, None]).squeeze(-1)
        gap = logits.max(-1).values - chosen
        assert float(gap.max()) < 1e-3, gap
    lp = token_logprobs(model, seq, torch.ones_like(seq))
    assert torch.isfinite(lp).all()


def test_fast_sampling_logprobs_match_the_trainer() -> None:
    """Sampled (temperature 0.8, top-k 20) through the compiled loop, twice with one seed: the
    same tokens, and the sampler's logprobs equal the trainer's recomputation."""
    from rlhf_core.generation import generate
    from rlhf_core.models import build_builtin_policy, load_tokenizer, token_logprobs

    tok = load_tokenizer()
    model = build_builtin_policy(tok, seed=0).to(DEVICE)
    kw: dict[str, Any] = dict(
        num_samples=4, max_new_tokens=32, temperature=0.8, top_k=20, seed=7,
        return_logprobs=True, fast=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        a = generate(model, tok, ["abc", "hello world", "1+1="], **kw)
        b = generate(model, tok, ["abc", "hello world", "1+1="], **kw)
    for x, y in zip(a.response_ids, b.response_ids, strict=True):
        assert x.tolist() == y.tolist()
    for i, seq in enumerate(a.sequences()):
        ids = torch.as_tensor(seq, device=DEVICE)[None]
        with torch.no_grad():
            lp = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.8)
        p = len(a.prompt_ids[i])
        got = torch.as_tensor(a.logprobs[i], device=DEVICE)
        torch.testing.assert_close(lp[0, p - 1 :], got, atol=2e-3, rtol=1e-3)
