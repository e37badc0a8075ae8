"""Tests of rlhf_core.models: tokenizer, built-in policy, token logprobs, reward/value models,
reference model and LoRA. All on the CPU with the tiny built-in model."""

from __future__ import annotations

import copy
import string

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_core import models as M
from rlhf_core.models.logprobs import _head_split


def _naive_logprobs(model, ids, mask, temperature=1.0):
    pos = M.default_position_ids(mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.double()
    logp = torch.log_softmax(logits / temperature, dim=-1)[:, :-1]
    lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()
    return lp * valid, ent * valid


def _random_batch(gen, b=4, t=12, vocab=103, padding="right"):
    ids = torch.randint(4, vocab, (b, t), generator=gen)
    lengths = torch.randint(2, t + 1, (b,), generator=gen)
    lengths[0] = t
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        if padding == "right":
            mask[i, :n] = 1
        else:
            mask[i, t - n :] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


# ---------------------------------------------------------------------------- tokenizer


def test_builtin_tokenizer_specials_and_roundtrip(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = string.ascii_letters + string.digits + string.punctuation + " \n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_builtin_tokenizer_chat_template(tok):
    msgs = [{"role": "user", "content": "2+3="}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<bos><|user|>2+3=\n<|assistant|>"
    full = msgs + [{"role": "assistant", "content": "5"}]
    ids = tok.apply_chat_template(full, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id
    assert tok.convert_tokens_to_ids("<|assistant|>") in ids


def test_shipped_tokenizer_matches_build_script(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tools" / "build_tokenizer.py"
    spec = importlib.util.spec_from_file_location("build_tokenizer", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shipped = (M.BUILTIN_TOKENIZER_DIR / name).read_text()
        assert (tmp_path / name).read_text() == shipped, f"{name} is stale: rerun the script"


def test_load_tokenizer_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load_tokenizer("/nonexistent/tokenizer")


def test_encode_prompt_completion(tok):
    ids, n = M.encode_prompt_completion(tok, "ab", "cd")
    assert n == 3 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n:-1]) == "cd"
    ids2, _ = M.encode_prompt_completion(tok, "ab", "cd", add_eos=False)
    assert ids2 == ids[:-1]


# ---------------------------------------------------------------------------- policy


def test_builtin_policy_is_seeded_and_leaves_rng_alone(tok):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = M.build_builtin_policy(tok, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = M.build_builtin_policy(tok, seed=7)
    c = M.build_builtin_policy(tok, seed=8)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    assert type(a).__name__ == "LlamaForCausalLM"
    assert a.config.vocab_size == len(tok)


def test_builtin_sizes(tok):
    tiny = M.build_builtin_policy(tok, size="tiny")
    small = M.build_builtin_policy(tok, size="small")
    n_tiny = sum(p.numel() for p in tiny.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_tiny < 200_000 < n_small < 2_000_000
    with pytest.raises(ValueError, match="size must be one of"):
        M.build_builtin_policy(tok, size="huge")
    cfg = M.tiny_config(50, num_hidden_layers=3)
    assert cfg.num_hidden_layers == 3 and cfg.vocab_size == 50


def test_load_policy_builtin_and_local_roundtrip(tok, policy, tmp_path):
    m = M.load_policy("builtin", tokenizer=tok)
    assert torch.equal(m.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    small = M.load_policy("builtin:small", tokenizer=tok)
    assert small.config.hidden_size == M.BUILTIN_SIZES["small"]["hidden_size"]
    policy.save_pretrained(tmp_path / "p")
    tok.save_pretrained(tmp_path / "p")
    loaded = M.load_policy(tmp_path / "p")
    tok2 = M.load_tokenizer(tmp_path / "p")
    ids = torch.tensor([tok("hello world")["input_ids"]])
    assert tok2("hello world")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, loaded(ids).logits, atol=1e-6)
    bf = M.load_policy(tmp_path / "p", dtype="bf16")
    assert next(bf.parameters()).dtype == torch.bfloat16
    with pytest.raises(M.ModelNotFoundError, match="does not exist: no such local folder"):
        M.load_policy(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype must be one of"):
        M.resolve_dtype("float7")


# ---------------------------------------------------------------------------- token_logprobs


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_token_logprobs_matches_naive(policy, padding, chunk_size):
    gen = torch.Generator().manual_seed(1)
    ids, mask = _random_batch(gen, padding=padding)
    lp, ent = M.token_logprobs(policy, ids, mask, chunk_size=chunk_size, return_entropy=True)
    ref_lp, ref_ent = _naive_logprobs(policy, ids, mask)
    assert lp.shape == ent.shape == (4, 11) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()
    assert torch.all(lp[~valid] == 0) and torch.all(lp[valid] < 0)


@pytest.mark.parametrize("path", ["head_split", "full_forward"])
def test_token_logprobs_and_entropy_is_the_flag_form(policy, path):
    """The two-result function and ``return_entropy=True`` give the same bits on both code
    paths (chunked head after the body; full forward for models that post-process logits)."""
    model = policy
    if path == "full_forward":
        model = copy.deepcopy(policy)
        model.config.final_logit_softcapping = 30.0  # read by _head_split; Llama ignores it
        assert _head_split(model) is None
    else:
        assert _head_split(model) is not None
    gen = torch.Generator().manual_seed(5)
    ids, mask = _random_batch(gen, padding="left")
    lp, ent = M.token_logprobs_and_entropy(model, ids, mask, chunk_size=7, temperature=0.9)
    flag_lp, flag_ent = M.token_logprobs(
        model, ids, mask, chunk_size=7, temperature=0.9, return_entropy=True
    )
    assert torch.equal(lp, flag_lp) and torch.equal(ent, flag_ent)
    assert torch.equal(lp, M.token_logprobs(model, ids, mask, chunk_size=7, temperature=0.9))
    assert bool((ent[mask[:, 1:].bool() & mask[:, :-1].bool()] > 0).all())


def test_device_of():
    assert M.device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert M.device_of(torch.nn.ReLU()) == torch.device("cpu")  # no parameters
    meta = torch.nn.Linear(2, 2, device="meta")
    assert M.device_of(meta) == torch.device("meta")
    # a ReferenceModel has no parameters of its own: the device of the model it wraps
    assert M.device_of(M.ReferenceModel(meta)) == torch.device("meta")


def test_token_logprobs_temperature(policy):
    gen = torch.Generator().manual_seed(2)
    ids, mask = _random_batch(gen)
    lp = M.token_logprobs(policy, ids, mask, temperature=0.7)
    ref, _ = _naive_logprobs(policy, ids, mask, temperature=0.7)
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        M.token_logprobs(policy, ids, mask, temperature=0.0)


def test_token_logprobs_padding_does_not_change_values(policy, tok):
    seq = torch.tensor([tok("the cat sat")["input_ids"]])
    alone = M.token_logprobs(policy, seq, torch.ones_like(seq))
    t = seq.shape[1]
    ids = torch.zeros(2, t + 3, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0, :t], mask[0, :t] = seq[0], 1  # right padded
    ids[1, 3:], mask[1, 3:] = seq[0], 1  # left padded
    lp = M.token_logprobs(policy, ids, mask)
    torch.testing.assert_close(lp[0, : t - 1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[1, 3:], alone[0], atol=1e-5, rtol=0)


class _Wrapper(nn.Module):
    """A model without an HF body/head split: token_logprobs must use the full forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kw):
        return self.inner(**kw)


def test_token_logprobs_gradients_match_naive_on_both_paths(tok):
    gen = torch.Generator().manual_seed(3)
    ids, mask = _random_batch(gen)
    grads = []
    for kind in ("naive", "split", "full"):
        model = M.build_builtin_policy(tok, seed=0)
        if kind == "naive":
            lp, ent = _naive_logprobs(model, ids, mask)
        elif kind == "split":
            assert _head_split(model) is not None
            lp, ent = M.token_logprobs(model, ids, mask, chunk_size=7, return_entropy=True)
        else:
            wrapped = _Wrapper(model)
            assert _head_split(wrapped) is None
            lp, ent = M.token_logprobs(wrapped, ids, mask, chunk_size=7, return_entropy=True)
        (lp.sum() + 0.1 * ent.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1].double(), grads[0].double(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[2].double(), grads[0].double(), atol=1e-5, rtol=1e-4)


def test_token_logprobs_never_materialises_full_vocab_logits():
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaForCausalLM

    vocab, d = 5000, 64

    class LargestLogits(TorchDispatchMode):
        """Largest tensor with a vocabulary-sized last dim (the (d, V) weight view excluded)."""

        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor) and o.dim() >= 1 and o.shape[-1] == vocab:
                    if tuple(o.shape) != (d, vocab):
                        self.largest = max(self.largest, o.numel())
            return out

    torch.manual_seed(0)
    model = LlamaForCausalLM(M.tiny_config(vocab, hidden_size=d))
    ids = torch.randint(4, vocab, (4, 12))
    mask = torch.ones_like(ids)
    with LargestLogits() as rec:
        lp, ent = M.token_logprobs(model, ids, mask, chunk_size=6, return_entropy=True)
        (lp.sum() + ent.sum()).backward()
    assert rec.largest == 6 * vocab  # one chunk, in forward and in backward
    with LargestLogits() as rec:  # the naive computation does materialise (B, T, V)
        model(input_ids=ids).logits.log_softmax(-1).sum().backward()
    assert rec.largest >= 4 * 11 * vocab
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        M.token_logprobs(model, ids, mask, chunk_size=0)


def test_token_logprobs_bf16_autocast(policy):
    gen = torch.Generator().manual_seed(4)
    ids, mask = _random_batch(gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = M.token_logprobs(policy, ids, mask)
        pos = M.default_position_ids(mask)
        logits = policy(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # bf16
    ref, _ = _naive_logprobs(policy, ids, mask)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp.double(), ref, atol=0.1)  # bf16 forward vs float32 forward
    # the bf16 logits' log-softmax is taken in float32 (a bf16 log-softmax is ~0.02 off)
    valid = (mask[:, 1:] & mask[:, :-1]).bool()
    want = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(lp[valid], want[valid], atol=1e-5, rtol=1e-5)


def test_token_logprobs_shape_errors(policy):
    with pytest.raises(ValueError, match=r"input_ids must be \(B, T\)"):
        M.token_logprobs(policy, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        M.token_logprobs(policy, torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))
    out = M.token_logprobs(policy, torch.ones(2, 1, dtype=torch.long))
    assert out.shape == (2, 0)


# ---------------------------------------------------------------------------- reward / value


def test_reward_model_last_token_right_and_left_padding(policy, tok):
    rm = M.RewardModel.from_policy(policy)
    rm.eval()
    seqs = [tok("a good answer")["input_ids"], tok("bad")["input_ids"]]
    t = max(len(s) for s in seqs)
    right = torch.zeros(2, t, dtype=torch.long)
    left = torch.zeros(2, t, dtype=torch.long)
    rmask, lmask = torch.zeros_like(right), torch.zeros_like(left)
    for i, s in enumerate(seqs):
        right[i, : len(s)], rmask[i, : len(s)] = torch.tensor(s), 1
        left[i, t - len(s) :], lmask[i, t - len(s) :] = torch.tensor(s), 1
    with torch.no_grad():
        alone = torch.stack([rm(torch.tensor([s]))[0] for s in seqs])
        r_right = rm(right, rmask)
        r_left = rm(left, lmask)
    assert r_right.shape == (2,) and r_right.dtype == torch.float32
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=0)


def test_reward_model_from_policy_is_independent_and_trainable(policy):
    rm = M.RewardModel.from_policy(policy)
    assert all(p.requires_grad for p in rm.parameters())
    assert rm.head.in_features == policy.config.hidden_size
    with torch.no_grad():
        rm.body.embed_tokens.weight.add_(1.0)
    assert not torch.equal(rm.body.embed_tokens.weight, policy.model.embed_tokens.weight)
    ids = torch.randint(4, 100, (3, 6))
    rm(ids, torch.ones_like(ids)).sum().backward()
    assert rm.head.weight.grad is not None and rm.body.embed_tokens.weight.grad is not None


def test_reward_model_save_load_roundtrip(policy, tmp_path):
    rm = M.RewardModel.from_policy(policy, seed=3)
    with torch.no_grad():
        rm.head.bias.fill_(0.25)
    rm.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").exists()
    loaded = M.RewardModel.from_pretrained(tmp_path / "rm")
    ids = torch.randint(4, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), rm(ids, mask), atol=1e-6, rtol=0)


def test_reward_model_is_saved_for_transformers_and_old_folders_still_load(policy, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf_core.models.head_files import save_head_format

    rm = M.RewardModel.from_policy(policy, seed=4).eval()
    rm.save_pretrained(tmp_path / "new", pad_token_id=0)
    assert not (tmp_path / "new" / "rlhf_core_head.json").exists()
    seq = AutoModelForSequenceClassification.from_pretrained(tmp_path / "new").eval()
    assert type(seq).__name__ == "LlamaForSequenceClassification" and seq.config.num_labels == 1
    ids = torch.tensor([[1, 20, 30, 40, 2], [1, 50, 60, 2, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(
            seq(input_ids=ids, attention_mask=mask).logits.squeeze(-1),
            rm(ids, mask),
            atol=1e-5,
            rtol=0,
        )
    # a folder in the format earlier versions wrote (body + rlhf_core_head.*) still loads
    save_head_format(rm, tmp_path / "old")
    old = M.RewardModel.from_pretrained(tmp_path / "old").eval()
    with torch.no_grad():
        torch.testing.assert_close(old(ids, mask), rm(ids, mask), atol=1e-6, rtol=0)


def test_reward_model_from_sequence_classification(tok, tmp_path):
    from transformers import LlamaForSequenceClassification

    cfg = M.tiny_config(len(tok), num_labels=1)
    torch.manual_seed(0)
    seq = LlamaForSequenceClassification(cfg).eval()
    seq.save_pretrained(tmp_path / "cls")
    rm = M.RewardModel.from_pretrained(tmp_path / "cls").eval()
    ids = torch.tensor([tok("abc def")["input_ids"], tok("xy")["input_ids"] + [0] * 5])
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([[8], [3]])).long()
    with torch.no_grad():
        expected = seq(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        got = rm(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    cfg2 = M.tiny_config(len(tok), num_labels=2)
    LlamaForSequenceClassification(cfg2).save_pretrained(tmp_path / "cls2")
    with pytest.raises(ValueError, match="num_labels=1"):
        M.RewardModel.from_pretrained(tmp_path / "cls2")


def test_reward_model_from_pretrained_errors(policy, tmp_path):
    with pytest.raises(FileNotFoundError):
        M.RewardModel.from_pretrained(tmp_path / "missing")
    policy.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="neither an rlhf_core reward/value model"):
        M.RewardModel.from_pretrained(tmp_path / "lm")


def test_value_model_shapes_init_and_roundtrip(policy, tmp_path):
    rm = M.RewardModel.from_policy(policy, seed=1)
    vm = M.ValueModel.from_reward_model(rm)
    ids = torch.randint(4, 100, (2, 5))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        v = vm(ids, mask)
        r = rm(ids, mask)
    assert v.shape == (2, 5) and v.dtype == torch.float32
    torch.testing.assert_close(v[:, -1], r, atol=1e-6, rtol=0)  # same body + head
    assert vm.head.weight.data_ptr() != rm.head.weight.data_ptr()
    vm2 = M.ValueModel.from_policy(policy, seed=1)
    assert torch.equal(vm2.head.weight, rm.head.weight)  # same seeded init
    vm.save_pretrained(tmp_path / "vm")
    back = M.ValueModel.from_pretrained(tmp_path / "vm")
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask), v, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- reference / LoRA


def test_make_reference_is_frozen_copy(tok):
    policy = M.build_builtin_policy(tok, seed=0)
    ref = M.make_reference(policy)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    ids = torch.randint(4, 100, (2, 6))
    before = M.token_logprobs(ref, ids).detach()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    after = M.token_logprobs(ref, ids)
    assert torch.equal(before, after)
    assert not torch.allclose(M.token_logprobs(policy, ids), after)


def test_lora_reference_disables_adapters(tok):
    pytest.importorskip("peft")
    base = M.build_builtin_policy(tok, seed=0)
    ids = torch.randint(4, 100, (2, 6))
    base_lp = M.token_logprobs(base, ids).detach()
    policy = M.apply_lora(base, r=4, alpha=8)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)
    ref = M.make_reference(policy)
    assert list(ref.parameters()) == []
    ref_lp = M.token_logprobs(ref, ids)
    pol_lp = M.token_logprobs(policy, ids)
    torch.testing.assert_close(ref_lp, base_lp, atol=1e-6, rtol=0)
    assert not torch.allclose(pol_lp, base_lp, atol=1e-3)
    assert pol_lp.requires_grad and not ref_lp.requires_grad
    # the policy's adapters are active again after the reference ran
    torch.testing.assert_close(M.token_logprobs(policy, ids), pol_lp)
    from rlhf_core.generation import generate

    base_copy = M.build_builtin_policy(tok, seed=0)
    g_ref = generate(ref, tok, ["abc"], max_new_tokens=6, temperature=0)
    g_base = generate(base_copy, tok, ["abc"], max_new_tokens=6, temperature=0)
    assert g_ref.response_ids[0].tolist() == g_base.response_ids[0].tolist()
    # a reward model from a LoRA policy gets a plain body with the adapters merged in
    rm = M.RewardModel.from_policy(policy)
    assert not any("lora" in n for n, _ in rm.named_parameters())
    assert _is_lora(policy)
    with torch.no_grad():
        merged_hidden = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(rm.hidden_states(ids), merged_hidden, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="r \\(LoRA rank\\)"):
        M.apply_lora(M.build_builtin_policy(tok), r=0)


def _is_lora(model):
    return any("lora_" in n for n, _ in model.named_parameters())


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert M.last_token_index(mask).tolist() == [1, 3, 3]
    np.testing.assert_array_equal(
        M.default_position_ids(mask).numpy(), [[0, 1, 1, 1], [0, 0, 0, 1], [0, 1, 2, 3]]
    )
