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
