"""rlhf_core's static-cache decode loop (``generate(fast=True)``), run on the CPU.

On CUDA the loop's decode step is compiled with inductor (CUDA-graph replay; checked by
tests/test_gpu.py on a GPU). Here the same loop runs eagerly and under dynamo with the
``"eager"`` backend (which traces the HF forward like inductor does, without code generation),
and its results are compared with HF ``generate`` and with the trainer's logprobs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rlhf_core import models as M
from rlhf_core.generation import decode_loop as G
from rlhf_core.generation import generate

PROMPTS = ["hello", "12+7=", "the cat sat on", "x"]  # different lengths: left padding


@pytest.fixture(params=[None, "eager"], ids=["loop-eager", "loop-dynamo"])
def fast_on_cpu(request, monkeypatch):
    """Route ``generate(fast=True)`` through the decode loop on the CPU."""
    backend = request.param
    monkeypatch.setattr(G, "_FAST_ON_CPU", True)
    monkeypatch.setattr(G, "_FAST_COMPILE_BACKEND", backend)
    before = G.BACKENDS_USED.copy()
    name = "static-eager" if backend is None else "static-compiled"
    yield name
    assert G.BACKENDS_USED[name] > before[name], "the decode loop did not serve the calls"


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a.response_ids, b.response_ids, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.truncated, b.truncated)


def test_greedy_matches_hf_generate(policy, tok, fast_on_cpu):
    kw = dict(num_samples=2, max_new_tokens=24, temperature=0.0)
    plain = generate(policy, tok, PROMPTS, **kw)
    fast = generate(policy, tok, PROMPTS, fast=True, **kw)
    _same(fast, plain)
    fixed = generate(policy, tok, PROMPTS, fast=True, stop_at_eos=False, **kw)
    plain_fixed = generate(policy, tok, PROMPTS, stop_at_eos=False, **kw)
    _same(fixed, plain_fixed)
    assert all(len(r) == 24 for r in fixed.response_ids)


def test_sampling_is_seeded_and_logprobs_match_the_trainer(policy, tok, fast_on_cpu):
    kw = dict(num_samples=3, max_new_tokens=20, temperature=0.7, seed=5, return_logprobs=True)
    a = generate(policy, tok, PROMPTS, fast=True, **kw)
    b = generate(policy, tok, PROMPTS, fast=True, **kw)
    _same(a, b)
    other = generate(policy, tok, PROMPTS, fast=True, **{**kw, "seed": 6})
    assert any(
        not np.array_equal(x, y) for x, y in zip(a.response_ids, other.response_ids, strict=True)
    )
    seqs = a.sequences()
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        lp = M.token_logprobs(policy, ids, mask, temperature=0.7)
    for i in range(len(a)):
        p, r = len(a.prompt_ids[i]), len(a.response_ids[i])
        np.testing.assert_allclose(lp[i, p - 1 : p - 1 + r].numpy(), a.logprobs[i], atol=1e-5)


def test_top_k_one_and_tiny_top_p_are_greedy(policy, tok, fast_on_cpu):
    greedy = generate(policy, tok, PROMPTS, max_new_tokens=10, temperature=0.0)
    k1 = generate(policy, tok, PROMPTS, max_new_tokens=10, top_k=1, seed=1, fast=True)
    p0 = generate(policy, tok, PROMPTS, max_new_tokens=10, top_p=1e-6, seed=2, fast=True)
    _same(k1, greedy)
    _same(p0, greedy)


def test_top_k_restricts_to_the_k_most_likely(policy, tok):
    logits = torch.randn(64, 50, dtype=torch.float32)
    torch.manual_seed(0)
    nxt, scaled = G._sample_next(logits, 1.3, 3, 1.0, None)
    top3 = torch.topk(logits, 3, dim=-1).indices
    assert bool((top3 == nxt[:, None]).any(-1).all())
    torch.testing.assert_close(scaled, logits / 1.3)
    # top-p keeps the smallest set whose mass reaches p (here: the argmax when it has > p)
    peaked = torch.full((8, 50), -10.0)
    peaked[:, 7] = 10.0
    peaked[:, 8] = 9.0
    nxt, _ = G._sample_next(peaked, 1.0, 0, 0.5, None)
    assert bool((nxt == 7).all())


def test_early_exit_and_eos_trimming(policy, tok, fast_on_cpu, monkeypatch):
    """With every row's first greedy token declared EOS, all rows stop at once; the loop
    leaves after ``EARLY_EXIT_EVERY`` tokens and the responses are that one EOS token."""
    first = generate(policy, tok, PROMPTS, max_new_tokens=1, temperature=0.0)
    eos = sorted({int(r[0]) for r in first.response_ids})
    monkeypatch.setattr(G, "EARLY_EXIT_EVERY", 4)
    calls = []
    real = G._decode_step

    def counting(backend):
        fn = real(backend)

        def wrapped(*a, **k):
            calls.append(1)
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(G, "_decode_step", counting)
    monkeypatch.setattr(policy.generation_config, "eos_token_id", eos)
    c = generate(policy, tok, PROMPTS, max_new_tokens=40, temperature=0.0, fast=True)
    assert [r.tolist() for r in c.response_ids] == [[int(r[0])] for r in first.response_ids]
    assert not c.truncated.any()
    assert len(calls) == 3  # tokens 2..4 were decoded, then the check found every row stopped


def test_suppressed_tokens_are_never_drawn(policy, tok, fast_on_cpu, monkeypatch):
    greedy = generate(policy, tok, PROMPTS, max_new_tokens=12, temperature=0.0)
    banned = sorted({int(t) for r in greedy.response_ids for t in r})[:3]
    monkeypatch.setattr(policy.generation_config, "suppress_tokens", banned)
    fast = generate(policy, tok, PROMPTS, max_new_tokens=12, temperature=0.0, fast=True)
    plain = generate(policy, tok, PROMPTS, max_new_tokens=12, temperature=0.0)
    _same(fast, plain)  # HF generate honours the model's suppress_tokens too
    assert not any(set(r.tolist()) & set(banned) for r in fast.response_ids)


def test_generation_options_it_does_not_implement_go_to_hf(policy, tok, monkeypatch):
    monkeypatch.setattr(G, "_FAST_ON_CPU", True)
    monkeypatch.setattr(G, "_FAST_COMPILE_BACKEND", None)
    monkeypatch.setattr(policy.generation_config, "repetition_penalty", 1.3)
    ids = torch.tensor([[1, 40, 41]])
    with pytest.raises(ValueError, match="repetition_penalty"):
        G._static_decode(
            policy, ids, torch.ones_like(ids), max_new_tokens=4, temperature=0.0, top_p=1.0,
            top_k=0, eos_ids=[], pad_id=0, return_logprobs=False, compile_backend=None,
        )  # fmt: skip
    before = G.BACKENDS_USED.copy()
    with pytest.warns(RuntimeWarning, match="repetition_penalty"):
        fast = generate(policy, tok, PROMPTS, max_new_tokens=8, temperature=0.0, fast=True)
    plain = generate(policy, tok, PROMPTS, max_new_tokens=8, temperature=0.0)
    _same(fast, plain)
    assert G.BACKENDS_USED["static-eager"] == before["static-eager"]
    assert id(policy) in G._FAST_FAILED  # warned once; later calls go straight to HF
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            generate(policy, tok, PROMPTS, max_new_tokens=4, temperature=0.0, fast=True)
    finally:
        G._FAST_FAILED.discard(id(policy))  # the module-scoped policy serves later tests


def test_static_cache_is_reused_per_shape(policy, tok, fast_on_cpu):
    generate(policy, tok, PROMPTS, max_new_tokens=5, temperature=0.0, fast=True)
    first = G._DECODE_CACHES[id(policy)].cache
    generate(policy, tok, PROMPTS, max_new_tokens=5, seed=3, fast=True)
    assert G._DECODE_CACHES[id(policy)].cache is first  # same rows and length: reset, reused
    generate(policy, tok, PROMPTS[:2], max_new_tokens=5, temperature=0.0, fast=True)
    assert G._DECODE_CACHES[id(policy)].cache is not first


def test_cache_entry_dropped_with_the_model(tok, monkeypatch):
    import gc

    monkeypatch.setattr(G, "_FAST_ON_CPU", True)
    monkeypatch.setattr(G, "_FAST_COMPILE_BACKEND", None)
    model = M.build_builtin_policy(tok, seed=1)
    generate(model, tok, ["a"], max_new_tokens=3, temperature=0.0, fast=True)
    key = id(model)
    assert key in G._DECODE_CACHES
    del model
    gc.collect()
    assert key not in G._DECODE_CACHES


def test_the_sampler_draws_from_the_tempered_softmax():
    """Frequencies of 200,000 draws from 5 logits at temperature 0.8 match the softmax within
    5 standard errors; with top_k=2 only the two most likely tokens appear."""
    logits = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0]]).repeat(200_000, 1)
    torch.manual_seed(1)
    nxt, _ = G._sample_next(logits, 0.8, 0, 1.0, None)
    freq = torch.bincount(nxt, minlength=5).double() / nxt.numel()
    p = torch.softmax(logits[0].double() / 0.8, -1)
    se = torch.sqrt(p * (1 - p) / nxt.numel())
    assert bool(((freq - p).abs() < 5 * se).all()), (freq, p)
    nxt, _ = G._sample_next(logits, 0.8, 2, 1.0, None)
    assert set(torch.unique(nxt).tolist()) == {0, 3}
    nxt, _ = G._sample_next(logits, 0.8, 0, 1.0, torch.tensor([3]))  # suppressed
    assert 3 not in set(torch.unique(nxt).tolist())


def test_cache_length_buckets():
    assert [G._cache_length(n) for n in (1, 64, 65, 272, 513, 2048, 2049, 5000)] == [
        64, 64, 128, 512, 1024, 2048, 3072, 5120,
    ]  # fmt: skip


@pytest.fixture
def peft_installed():
    pytest.importorskip("peft")


def test_lora_policy_through_the_loop(peft_installed, tok, fast_on_cpu):
    """A peft LoRA-wrapped policy (non-zero adapters) decodes like HF generate does (the
    skip, when peft is missing, comes before the loop fixture is set up)."""
    model = M.apply_lora(M.build_builtin_policy(tok, seed=2), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at zero: make the adapters matter
    kw = dict(num_samples=2, max_new_tokens=16, temperature=0.0)
    _same(generate(model, tok, PROMPTS, fast=True, **kw), generate(model, tok, PROMPTS, **kw))
