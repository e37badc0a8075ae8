"""Tests of rlhf_core.generation.generate on the tiny built-in model (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_core import models as M
from rlhf_core.generation import Completions, generate

PROMPTS = ["hello", "12+7=", "the cat sat on"]


# ``tok`` and ``policy`` (the seed-0 tiny built-in model) come from conftest.py. The untrained
# model gives EOS about 1% per step, so with 40 new tokens some rows stop and some are
# truncated.


@pytest.fixture(scope="module")
def sampled(policy, tok):
    return generate(
        policy, tok, PROMPTS, num_samples=4, max_new_tokens=40, seed=11, return_logprobs=True
    )


def test_shapes_and_group_order(sampled, tok):
    c = sampled
    assert isinstance(c, Completions) and len(c) == 12
    np.testing.assert_array_equal(c.group_ids, np.repeat(np.arange(3), 4))
    assert c.group_ids.dtype == np.int64 and c.truncated.dtype == np.bool_
    for i in range(12):
        expected = tok(PROMPTS[i // 4])["input_ids"]
        assert c.prompt_ids[i].dtype == np.int64 and c.prompt_ids[i].tolist() == expected
        assert c.response_ids[i].dtype == np.int64 and 1 <= len(c.response_ids[i]) <= 40
        assert c.prompts[i] == PROMPTS[i // 4]
        assert c.texts[i] == tok.decode(c.response_ids[i], skip_special_tokens=True)
    np.testing.assert_array_equal(c.response_lengths, [len(r) for r in c.response_ids])
    np.testing.assert_array_equal(c.prompt_lengths, [len(p) for p in c.prompt_ids])
    seqs = c.sequences()
    assert all(
        len(s) == len(p) + len(r)
        for s, p, r in zip(seqs, c.prompt_ids, c.response_ids, strict=True)
    )
    # samples of one prompt differ from each other
    assert len({tuple(r.tolist()) for r in c.response_ids[:4]}) > 1


def test_eos_trimming_and_truncation_flags(sampled, tok):
    c = sampled
    eos = tok.eos_token_id
    assert c.truncated.any() and not c.truncated.all()  # both cases occur with this seed
    for r, trunc in zip(c.response_ids, c.truncated, strict=True):
        hits = np.flatnonzero(r == eos)
        if trunc:
            assert len(r) == 40 and hits.size == 0
        else:
            assert hits.tolist() == [len(r) - 1]  # exactly one EOS, at the end


def test_seed_is_reproducible_and_leaves_global_rng(policy, tok, sampled):
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    again = generate(policy, tok, PROMPTS, num_samples=4, max_new_tokens=40, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(again.response_ids, sampled.response_ids, strict=True):
        np.testing.assert_array_equal(a, b)
    other = generate(policy, tok, PROMPTS, num_samples=4, max_new_tokens=40, seed=12)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(other.response_ids, sampled.response_ids, strict=True)
    )


def _right_padded(c: Completions):
    seqs = c.sequences()
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = 1
    return ids, mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_token_logprobs(policy, tok, temperature):
    c = generate(
        policy,
        tok,
        PROMPTS,
        num_samples=2,
        max_new_tokens=20,
        temperature=temperature,
        seed=3,
        return_logprobs=True,
    )
    ids, mask = _right_padded(c)
    with torch.no_grad():
        lp = M.token_logprobs(policy, ids, mask, temperature=temperature)
    for i in range(len(c)):
        p, r = len(c.prompt_ids[i]), len(c.response_ids[i])
        ours = lp[i, p - 1 : p - 1 + r].numpy()  # logits at j predict token j+1
        assert c.logprobs[i].shape == (r,) and c.logprobs[i].dtype == np.float32
        np.testing.assert_allclose(ours, c.logprobs[i], atol=1e-5)


def test_greedy_is_argmax_and_independent_of_batching(policy, tok):
    g = generate(policy, tok, PROMPTS, num_samples=2, max_new_tokens=8, temperature=0)
    for j in range(0, len(g), 2):
        np.testing.assert_array_equal(g.response_ids[j], g.response_ids[j + 1])
    # manual greedy decoding of prompt 1 without padding or cache
    ids = torch.tensor([tok(PROMPTS[1])["input_ids"]])
    with torch.no_grad():
        for _ in range(8):
            nxt = policy(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if nxt.item() == tok.eos_token_id:
                break
    assert g.response_ids[2].tolist() == ids[0, len(g.prompt_ids[2]) :].tolist()
    # left padding: per-prompt results do not depend on the batch they ran in
    one_by_one = generate(policy, tok, PROMPTS, max_new_tokens=8, temperature=0, batch_size=1)
    for j in range(3):
        np.testing.assert_array_equal(one_by_one.response_ids[j], g.response_ids[2 * j])


def test_fixed_length_without_eos_stop(policy, tok):
    c = generate(
        policy, tok, [[1, 40, 41]], num_samples=3, max_new_tokens=25, seed=0, stop_at_eos=False
    )
    assert all(len(r) == 25 for r in c.response_ids)
    np.testing.assert_array_equal(
        c.truncated, [tok.eos_token_id not in r.tolist() for r in c.response_ids]
    )


def test_training_mode_restored(tok):
    m = M.build_builtin_policy(tok)
    m.train()
    generate(m, tok, ["a"], max_new_tokens=2, seed=0)
    assert m.training
    m.eval()
    generate(m, tok, ["a"], max_new_tokens=2, seed=0)
    assert not m.training


def test_argument_errors(policy, tok):
    with pytest.raises(ValueError, match="num_samples"):
        generate(policy, tok, PROMPTS, num_samples=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(policy, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(policy, tok, PROMPTS, max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(policy, tok, PROMPTS, max_new_tokens=4, top_k=-1)
    with pytest.raises(ValueError, match="temperature"):
        generate(policy, tok, PROMPTS, max_new_tokens=4, temperature=-1.0)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generate(policy, tok, [[1, 5], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(policy, tok, [], max_new_tokens=4)


def test_top_k_one_is_greedy(policy, tok):
    a = generate(policy, tok, PROMPTS, max_new_tokens=6, top_k=1, seed=1)
    b = generate(policy, tok, PROMPTS, max_new_tokens=6, temperature=0)
    for x, y in zip(a.response_ids, b.response_ids, strict=True):
        np.testing.assert_array_equal(x, y)


class _ScriptedModel(nn.Module):
    """Returns fixed continuations, padded with pad id after EOS like HF generate does."""

    def __init__(self, continuations):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.generation_config = SimpleNamespace(eos_token_id=[2, 9])

    def generate(self, input_ids, attention_mask, generation_config):
        assert torch.all(attention_mask[:, -1] == 1)  # left padded
        cont = torch.tensor(self.continuations[: input_ids.shape[0]])
        return SimpleNamespace(sequences=torch.cat([input_ids, cont], dim=1))


def test_trimming_with_scripted_model(tok):
    model = _ScriptedModel([[5, 6, 2, 0, 0], [5, 9, 0, 0, 0], [5, 6, 7, 8, 4]])
    c = generate(model, tok, [[1, 5], [1], [1, 7, 7]], max_new_tokens=5)
    assert [r.tolist() for r in c.response_ids] == [[5, 6, 2], [5, 9], [5, 6, 7, 8, 4]]
    assert c.truncated.tolist() == [False, False, True]  # model's extra EOS id 9 counts
    assert [p.tolist() for p in c.prompt_ids] == [[1, 5], [1], [1, 7, 7]]


# ---- backends behind one interface -------------------------------------------------------------


def test_backend_names_choose_the_path(policy, tok):
    from rlhf_core import generation as G

    kw = dict(num_samples=2, max_new_tokens=12, temperature=0.0)
    auto = generate(policy, tok, PROMPTS, **kw)
    assert auto.backend == "hf"  # auto on the CPU: HF generate, as before
    hf = generate(policy, tok, PROMPTS, generation_backend="hf", **kw)
    before = G.BACKENDS_USED.copy()
    loop = generate(policy, tok, PROMPTS, generation_backend="decode_loop", **kw)
    assert G.BACKENDS_USED["static-eager"] == before["static-eager"] + 1  # eager on the CPU
    assert (hf.backend, loop.backend) == ("hf", "decode_loop")
    for c in (hf, loop):
        assert [r.tolist() for r in c.response_ids] == [r.tolist() for r in auto.response_ids]
        np.testing.assert_array_equal(c.truncated, auto.truncated)
    backend = G.make_backend("decode_loop", policy, tok)
    assert isinstance(backend, G.RolloutBackend) and backend.sync_weights(policy) == 0.0
    backend.close()
    with pytest.raises(ValueError, match="make_backend"):
        generate(policy, tok, PROMPTS, max_new_tokens=4, generation_backend="vllm")
    with pytest.raises(ValueError, match="generation_backend must be one of"):
        generate(policy, tok, PROMPTS, max_new_tokens=4, generation_backend="sglang")
    with pytest.raises(ValueError, match="must be one of"):
        G.make_backend("sglang", policy, tok)


@pytest.mark.parametrize("backend", ["hf", "decode_loop"])
def test_stop_tokens_and_min_p(policy, tok, backend):
    kw = dict(max_new_tokens=16, temperature=0.0, generation_backend=backend)
    greedy = generate(policy, tok, PROMPTS, **kw)
    stops = sorted({int(r[3]) for r in greedy.response_ids if len(r) > 4})[:2]
    cut = generate(policy, tok, PROMPTS, stop_token_ids=stops, **kw)
    for g, c, trunc in zip(greedy.response_ids, cut.response_ids, cut.truncated, strict=True):
        hits = [i for i, t in enumerate(g.tolist()) if t in stops]
        if hits and hits[0] < len(g):
            assert c.tolist() == g[: hits[0] + 1].tolist() and not trunc
        else:
            assert c.tolist() == g.tolist()
    # stop tokens end a sequence even without EOS stopping; truncated = no EOS nor stop token
    fixed = generate(policy, tok, PROMPTS, stop_token_ids=stops, stop_at_eos=False, **kw)
    for r, trunc in zip(fixed.response_ids, fixed.truncated, strict=True):
        flags = [t for t in r.tolist() if t in {*stops, tok.eos_token_id}]
        assert trunc == (not flags)
    # min_p close to 1 keeps only the most likely token: greedy
    sampled = generate(
        policy, tok, PROMPTS, max_new_tokens=16, min_p=0.999, seed=3, generation_backend=backend
    )
    for x, y in zip(sampled.response_ids, greedy.response_ids, strict=True):
        np.testing.assert_array_equal(x, y)


def test_prompt_seeds_make_a_prompts_samples_independent_of_the_batch(policy, tok):
    kw = dict(num_samples=3, max_new_tokens=10, return_logprobs=True)
    both = generate(policy, tok, PROMPTS[:2], prompt_seeds=[11, 12], **kw)
    alone = generate(policy, tok, PROMPTS[1:2], prompt_seeds=[12], **kw)
    for x, y in zip(both.response_ids[3:], alone.response_ids, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(both.group_ids, [0, 0, 0, 1, 1, 1])
    assert both.logprobs is not None and len(both.logprobs) == 6
    with pytest.raises(ValueError, match="prompt_seeds has 1 seeds for 2 prompts"):
        generate(policy, tok, PROMPTS[:2], prompt_seeds=[1], max_new_tokens=4)


def test_completions_concatenate(policy, tok):
    a = generate(policy, tok, PROMPTS[:2], num_samples=2, max_new_tokens=5, seed=0)
    b = generate(policy, tok, PROMPTS[2:], num_samples=2, max_new_tokens=5, seed=1)
    c = Completions.concatenate([a, b])
    assert len(c) == 6 and c.backend == "hf" and c.logprobs is None
    np.testing.assert_array_equal(c.group_ids, np.repeat(np.arange(3), 2))
    assert c.prompts == a.prompts + b.prompts
    with pytest.raises(ValueError, match="at least one"):
        Completions.concatenate([])


def test_sampling_config_checks():
    from rlhf_core.generation import SamplingConfig

    with pytest.raises(ValueError, match="min_p"):
        SamplingConfig(max_new_tokens=4, min_p=1.0)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingConfig(max_new_tokens=4, stop_token_ids=(-1,))
    assert SamplingConfig(max_new_tokens=4, stop_token_ids=[3, 4]).stop_token_ids == (3, 4)  # type: ignore[arg-type]


# ---- what the vLLM backend needs that runs without vLLM --------------------------------------


def test_inference_state_dict_ties_once_and_casts(policy):
    from rlhf_core.generation.weights import inference_state_dict

    sd = inference_state_dict(policy)
    assert policy.config.tie_word_embeddings and "lm_head.weight" not in sd
    full = policy.state_dict()
    assert set(sd) == set(full) - {"lm_head.weight"}
    for k, v in sd.items():
        assert torch.equal(v, full[k])
    half = inference_state_dict(policy, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in half.values())


def test_inference_state_dict_merges_lora(tok):
    pytest.importorskip("peft")
    import copy

    from rlhf_core.generation.weights import inference_state_dict

    model = M.apply_lora(M.build_builtin_policy(tok, seed=4), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = inference_state_dict(model)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(sd) == set(merged) - {"lm_head.weight"}
    for k, v in sd.items():
        torch.testing.assert_close(v, merged[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(sd[k], M.build_builtin_policy(tok, seed=4).state_dict()[k])
               for k in sd)  # fmt: skip
    for k, v in model.state_dict().items():  # the training model is left as it was
        assert torch.equal(v, before[k])


def test_vllm_backend_without_vllm_names_the_install(policy, tok, monkeypatch):
    import sys

    from rlhf_core.generation import make_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, installed or not
    with pytest.raises(ImportError, match=r"rlhf-core\[vllm\].*make vllm-env"):
        make_backend("vllm", policy, tok)


def test_vllm_config_checks_and_request_seeds():
    from rlhf_core.generation.vllm import VLLMConfig, request_seeds

    with pytest.raises(ValueError, match="mode"):
        VLLMConfig(mode="server")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_transfer='tensors' needs mode='colocate'"):
        VLLMConfig(mode="multiprocess", weight_transfer="tensors")
    with pytest.raises(ValueError, match="sleep_level"):
        VLLMConfig(sleep_level=3)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMConfig(gpu_memory_utilization=0.0)
    a = request_seeds(3, 7, None)
    assert a == request_seeds(3, 7, None) and len(set(a)) == 3
    assert a != request_seeds(3, 8, None) and all(0 <= s < 2**31 for s in a)
    assert request_seeds(2, None, None) == [None, None]
    assert request_seeds(2, 7, [5, 6]) == [5, 6]
    with pytest.raises(ValueError, match="prompt_seeds has 1 seeds for 2 prompts"):
        request_seeds(2, None, [1])


def test_the_docs_first_example_runs():
    """docs/generation.md's first python block (the local backends) runs as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "generation.md").read_text()
    first = re.findall(r"```python\n(.*?)```", doc, flags=re.S)[0]
    exec(compile(first, "docs/generation.md python block 1", "exec"), {"__name__": "__doc__"})
