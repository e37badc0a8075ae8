"""RolloutBuffer: input forms, validation (a rejected add changes nothing), exact state round
trip, materialised batches against the plain reference, zero copy into torch, advantages
against the float64 references."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import _core, ops
from rlhf_core.buffer import Padded, Ragged, RolloutBuffer
from rlhf_core.errors import (
    DtypeError,
    FieldError,
    InvalidOptionError,
    OffsetsError,
    ShapeError,
    StateError,
)
from rlhf_core.testing import buffer_reference as ref

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def make_seqs(rng: np.random.Generator, n: int, *, max_p: int = 5, max_r: int = 7,
              loss_mask: bool = False, nan_frac: float = 0.0, groups: int = 3,
              dtype: type = np.float32) -> list[dict]:
    seqs = []
    for _ in range(n):
        p = int(rng.integers(1, max_p + 1))
        r = int(rng.integers(0, max_r + 1))
        s = {
            "prompt_ids": rng.integers(1, 50, p).astype(np.int64),
            "response_ids": rng.integers(1, 50, r).astype(np.int64),
            "logprobs": (-rng.random(r)).astype(dtype),
            "ref_logprobs": (-rng.random(r)).astype(dtype),
            "values": rng.standard_normal(r).astype(dtype),
            "scores": float(rng.integers(0, 3)) if rng.random() >= nan_frac else float("nan"),
            "group_ids": int(rng.integers(0, groups)),
        }
        if loss_mask:
            s["loss_mask"] = rng.random(r) < 0.8
        seqs.append(s)
    return seqs


TOKEN = ("logprobs", "ref_logprobs", "values", "loss_mask", "rewards")


def add_seqs(buf: RolloutBuffer, seqs: list[dict]) -> None:
    kw = {k: [s[k] for s in seqs] for k in TOKEN if k in seqs[0]}
    buf.add(
        prompt_ids=[s["prompt_ids"] for s in seqs],
        response_ids=[s["response_ids"] for s in seqs],
        scores=np.array([s["scores"] for s in seqs]),
        group_ids=np.array([s["group_ids"] for s in seqs], dtype=np.int64),
        **kw,
    )


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            assert_state_equal(x, y)
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert x.tobytes() == y.tobytes(), k  # bit for bit, NaN included
        else:
            assert x == y, k


seq_lists = st.integers(0, 2**32 - 1).flatmap(
    lambda seed: st.integers(1, 12).map(lambda n: make_seqs(np.random.default_rng(seed), n))
)

# ---------------------------------------------------------------------------------------------
# Input forms
# ---------------------------------------------------------------------------------------------


def test_input_forms_store_the_same_thing():
    rng = np.random.default_rng(0)
    seqs = make_seqs(rng, 4, loss_mask=True)
    a = RolloutBuffer()
    add_seqs(a, seqs)

    # Torch tensors, bfloat16 logprobs converted to float32 explicitly.
    b = RolloutBuffer()
    b.add(
        prompt_ids=[torch.from_numpy(s["prompt_ids"]) for s in seqs],
        response_ids=[torch.from_numpy(s["response_ids"]) for s in seqs],
        logprobs=[torch.from_numpy(s["logprobs"]) for s in seqs],
        ref_logprobs=[torch.from_numpy(s["ref_logprobs"]) for s in seqs],
        values=[torch.from_numpy(s["values"]) for s in seqs],
        loss_mask=[torch.from_numpy(s["loss_mask"]) for s in seqs],
        scores=torch.tensor([s["scores"] for s in seqs], dtype=torch.float64),
        group_ids=torch.tensor([s["group_ids"] for s in seqs]),
    )
    assert_state_equal(a.state_dict(), b.state_dict())

    # Ragged (values, offsets) and padded (left-padded prompts, right-padded responses).
    def ragged(k):
        vals = np.concatenate([s[k] for s in seqs])
        off = np.concatenate([[0], np.cumsum([len(s[k]) for s in seqs])])
        return Ragged(vals, off)

    c = RolloutBuffer()
    c.add(
        prompt_ids=ragged("prompt_ids"),
        response_ids=ragged("response_ids"),
        logprobs=ragged("logprobs"),
        ref_logprobs=ragged("ref_logprobs"),
        values=ragged("values"),
        loss_mask=ragged("loss_mask"),
        scores=[s["scores"] for s in seqs],
        group_ids=[s["group_ids"] for s in seqs],
    )
    assert_state_equal(a.state_dict(), c.state_dict())

    tp = max(len(s["prompt_ids"]) for s in seqs)
    tr = max(len(s["response_ids"]) for s in seqs) + 2
    P = np.zeros((4, tp), np.int64)
    pm = np.zeros((4, tp), np.int64)
    R = np.full((4, tr), 99, np.int64)
    rm = np.zeros((4, tr), bool)
    fields = {k: np.full((4, tr), np.nan, np.float32) for k in ("logprobs", "ref_logprobs", "values")}
    lmask = np.zeros((4, tr), np.uint8)
    for i, s in enumerate(seqs):
        p, r = len(s["prompt_ids"]), len(s["response_ids"])
        P[i, tp - p :] = s["prompt_ids"]
        pm[i, tp - p :] = 1
        R[i, :r] = s["response_ids"]
        rm[i, :r] = True
        for k in fields:
            fields[k][i, :r] = s[k]
        lmask[i, :r] = s["loss_mask"]
    d = RolloutBuffer()
    d.add(
        prompt_ids=P, prompt_mask=pm, response_ids=R, response_mask=rm,
        loss_mask=Padded(lmask, rm), scores=np.array([s["scores"] for s in seqs]),
        group_ids=np.array([s["group_ids"] for s in seqs]), **fields,
    )
    assert_state_equal(a.state_dict(), d.state_dict())


def test_bfloat16_becomes_float32_with_cast_and_fields_read_back():
    buf = RolloutBuffer()
    lp = torch.tensor([-0.5, -0.25], dtype=torch.bfloat16)
    # the strict default refuses it, names the field and the opt-in, and adds nothing
    with pytest.raises(DtypeError, match=r"logprobs has dtype torch.bfloat16.*cast=True"):
        buf.add(prompt_ids=[[1, 2]], response_ids=[[3, 4]], logprobs=[lp])
    assert len(buf) == 0
    buf.add(prompt_ids=[[1, 2]], response_ids=[[3, 4]], logprobs=[lp], sequence_fields={"k": [7]},
            bonus=[np.array([1, 2], np.int32)], cast=True)
    assert buf.token_fields == {"response_ids": "int64", "logprobs": "float32", "bonus": "int32"}
    assert buf.sequence_fields == {"k": "int64"}
    s = buf.sequence(0)
    assert s["logprobs"].tolist() == [-0.5, -0.25] and s["k"] == 7
    assert buf.field("bonus").dtype == np.int32
    assert buf.lengths().tolist() == [4] and buf.lengths("response").tolist() == [2]
    buf.add(prompt_ids=[], response_ids=[])  # an empty add is a no-op
    assert len(buf) == 1


def test_interop_policy_is_the_kernels_policy_plus_an_explicit_cast():
    """The buffer reads arrays as rlhf_core.ops does (rlhf_core._arrays): half floats and
    tensors off the CPU are errors naming the field; ``cast=True`` converts half floats (numpy
    float16, torch float16 / bfloat16) to float32, in every input form and in set_advantages."""
    base = dict(prompt_ids=[[1], [2]], response_ids=[[3, 4], [5]])
    half_forms = {
        "pieces": [np.array([0.5, -1.0], np.float16), np.array([2.0], np.float16)],
        "ragged": Ragged(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float16), np.array([0, 2, 3])),
        "padded": Padded(
            torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.bfloat16),
            np.array([[1, 1], [1, 0]], bool),
        ),
    }
    for form, values in half_forms.items():
        strict = RolloutBuffer()
        with pytest.raises(DtypeError, match=r"values has dtype .*float16.*cast=True"):
            strict.add(**base, values=values)
        assert len(strict) == 0, form
        cast = RolloutBuffer()
        cast.add(**base, values=values, cast=True)
        assert cast.token_fields["values"] == "float32", form
        assert cast.field("values").tolist() == [0.5, -1.0, 2.0], form
    with pytest.raises(DtypeError, match=r"logprobs is on device meta.*\.cpu\(\).*cast=True"):
        RolloutBuffer().add(**base, logprobs=[torch.zeros(2, device="meta"), torch.zeros(1)])
    with pytest.raises(DtypeError, match=r"scores has dtype torch.bfloat16"):
        RolloutBuffer().add(**base, scores=torch.zeros(2, dtype=torch.bfloat16))
    buf = RolloutBuffer()
    buf.add(**base, scores=np.array([1.0, 0.0]))
    adv = torch.tensor([0.25, -0.25], dtype=torch.bfloat16)
    with pytest.raises(DtypeError, match="advantages has dtype torch.bfloat16"):
        buf.set_advantages(adv)
    buf.set_advantages(adv, cast=True)
    assert buf.field("advantages").tolist() == [0.25, -0.25]
    # float32 CPU tensors need no cast, with or without autograd history
    ok = RolloutBuffer()
    ok.add(**base, values=[torch.ones(2, requires_grad=True), torch.ones(1)])
    assert ok.field("values").tolist() == [1.0, 1.0, 1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cast_copies_gpu_tensors_to_the_cpu():
    """On a GPU machine: a CUDA tensor is refused by default and copied with cast=True (bf16
    converted on the device first)."""
    base = dict(prompt_ids=[[1]], response_ids=[[3, 4]])
    lp = torch.tensor([-0.5, -0.25], device="cuda")
    with pytest.raises(DtypeError, match=r"logprobs is on device cuda.*cast=True"):
        RolloutBuffer().add(**base, logprobs=[lp])
    buf = RolloutBuffer()
    buf.add(**base, logprobs=[lp.bfloat16()], values=Ragged(lp, np.array([0, 2])), cast=True)
    assert buf.field("logprobs").tolist() == [-0.5, -0.25] == buf.field("values").tolist()


# ---------------------------------------------------------------------------------------------
# Validation: typed errors, nothing lost on a rejected add
# ---------------------------------------------------------------------------------------------


BAD_ADDS = [
    # (kwargs changes, error, words in the message)
    (dict(logprobs=[np.zeros(2, np.float32), np.zeros(2, np.float32)]), ShapeError,
     ["logprobs", "sequence 1 of this add", "buffer index 3", "2 values", "1 tokens"]),
    (dict(values=[np.zeros(2, np.float64), np.zeros(1, np.float64)]), DtypeError,
     ["values", "float32", "float64"]),
    (dict(extra=[np.zeros(2), np.zeros(1)]), FieldError, ["unknown field", "extra"]),
    (dict(logprobs=None), FieldError, ["logprobs", "missing"]),
    (dict(prompt_ids=[np.array([1]), np.array([], np.int64)]), ShapeError,
     ["prompt_ids", "sequence 1", "empty"]),
    (dict(scores=np.zeros(3)), ShapeError, ["scores has 3 values", "2 sequences"]),
    (dict(group_ids=np.array(["a", "b"])), DtypeError, ["group_ids", "integers"]),
    (dict(response_ids=[np.array([1.0, 2.0]), np.array([3.0])]), DtypeError,
     ["response_ids must be int32 or int64"]),
    (dict(logprobs=[np.zeros(2, np.float32), np.zeros(1, np.float64)]), DtypeError,
     ["logprobs", "sequence 1 has dtype float64"]),
    (dict(logprobs=[np.zeros((2, 1), np.float32), np.zeros(1, np.float32)]), ShapeError,
     ["logprobs", "sequence 0", "1-D"]),
    (dict(input_ids=[np.zeros(2), np.zeros(1)]), FieldError, ["reserved"]),
    (dict(loss_mask=[np.array([1, 2]), np.array([0])]), DtypeError, ["loss_mask", "0/1"]),
    (dict(logprobs=np.zeros((2, 2), np.float32)), ShapeError, ["logprobs is padded", "mask"]),
    (dict(logprobs=Ragged(np.zeros(3, np.float32), np.array([1, 3]))), OffsetsError,
     ["logprobs", "offsets"]),
]


@pytest.mark.parametrize("change,err,words", BAD_ADDS)
def test_rejected_add_names_the_problem_and_changes_nothing(change, err, words):
    buf = RolloutBuffer()
    good = dict(
        prompt_ids=[np.array([1, 2]), np.array([3])],
        response_ids=[np.array([4, 5]), np.array([6])],
        logprobs=[np.array([-1, -2], np.float32), np.array([-3], np.float32)],
        values=[np.zeros(2, np.float32), np.zeros(1, np.float32)],
        scores=np.array([1.0, 0.0]),
        group_ids=np.array([0, 0]),
    )
    buf.add(**good)
    buf.compute_advantages("grpo")
    before = buf.state_dict()
    kw = {**good, **change}
    kw = {k: v for k, v in kw.items() if v is not None}
    with pytest.raises(err) as info:
        buf.add(**kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert_state_equal(before, buf.state_dict())
    # The buffer still works: the same good batch appends.
    buf.add(**good)
    assert len(buf) == 4


def test_padded_mask_errors():
    buf = RolloutBuffer()
    with pytest.raises(ShapeError, match="mask row 0 is not one contiguous run"):
        buf.add(prompt_ids=[[1]], response_ids=np.array([[1, 2, 3]]),
                response_mask=np.array([[1, 0, 1]]))
    with pytest.raises(ShapeError, match="mask has shape"):
        buf.add(prompt_ids=[[1]], response_ids=np.array([[1, 2, 3]]), response_mask=np.ones((1, 2)))
    assert len(buf) == 0


def test_builtin_error_classes_still_catch():
    buf = RolloutBuffer()
    with pytest.raises(ValueError):
        buf.add(prompt_ids=[[]], response_ids=[[1]])
    with pytest.raises(KeyError):
        buf.add(prompt_ids=[[1]], response_ids=[[1]], advantages=[[1.0]])


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


def test_state_round_trip_is_exact_through_pickle_and_torch_save(tmp_path):
    rng = np.random.default_rng(1)
    buf = RolloutBuffer(float_dtype="float64")
    add_seqs(buf, make_seqs(rng, 9, loss_mask=True, nan_frac=0.3))
    buf.compute_advantages("gae", gamma=0.9, lam=0.8, kl_coef=0.1)
    sd = buf.state_dict()
    assert sd["computed"]["level"] == "token" and sd["float_dtype"] == "float64"
    for restored in (pickle.loads(pickle.dumps(sd)), _torch_round_trip(sd, tmp_path)):
        b2 = RolloutBuffer()
        b2.load_state_dict(restored)
        assert_state_equal(sd, b2.state_dict())
        m1 = buf.all().to_padded(return_tensors="np")
        m2 = b2.all().to_padded(return_tensors="np")
        assert_state_equal(m1, m2)
    # Torch tensors are accepted too.
    as_torch = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in sd.items()}
    b3 = RolloutBuffer()
    b3.load_state_dict(as_torch)
    assert len(b3) == 9


def _torch_round_trip(sd, tmp_path):
    torch.save(sd, tmp_path / "buf.pt")
    return torch.load(tmp_path / "buf.pt", weights_only=False)


def test_corrupt_state_is_refused_and_changes_nothing():
    rng = np.random.default_rng(2)
    buf = RolloutBuffer()
    add_seqs(buf, make_seqs(rng, 5))
    sd = buf.state_dict()
    other = RolloutBuffer()
    add_seqs(other, make_seqs(rng, 3))
    before = other.state_dict()
    bad = dict(sd, response_offsets=sd["response_offsets"][::-1].copy())
    with pytest.raises(StateError, match="response_offsets"):
        other.load_state_dict(bad)
    bad = dict(sd, token_fields=dict(sd["token_fields"], logprobs=sd["token_fields"]["logprobs"][1:]))
    with pytest.raises(StateError, match="logprobs"):
        other.load_state_dict(bad)
    with pytest.raises(StateError, match="format"):
        other.load_state_dict(dict(sd, format="something else"))
    with pytest.raises(StateError, match="lacks the key"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "prompt_ids"})
    assert_state_equal(before, other.state_dict())


def test_clear_keeps_schema_reset_forgets_it():
    rng = np.random.default_rng(3)
    buf = RolloutBuffer()
    add_seqs(buf, make_seqs(rng, 4))
    buf.clear()
    assert len(buf) == 0 and "logprobs" in buf.token_fields
    with pytest.raises(FieldError, match="missing"):
        buf.add(prompt_ids=[[1]], response_ids=[[2]])
    buf.reset()
    buf.add(prompt_ids=[[1]], response_ids=[[2]])
    assert buf.token_fields == {"response_ids": "int64"}


# ---------------------------------------------------------------------------------------------
# Materialisation
# ---------------------------------------------------------------------------------------------


@given(seqs=seq_lists, data=st.data())
def test_padded_and_packed_batches_equal_the_plain_reference(seqs, data):
    buf = RolloutBuffer()
    add_seqs(buf, seqs)
    n = len(seqs)
    idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
    pad = data.draw(st.sampled_from([0, -1, 7]))
    mult = data.draw(st.sampled_from([1, 4]))
    tf = ["logprobs", "ref_logprobs", "values"]
    got = buf.batch(idx).to_padded(pad_token_id=pad, pad_to_multiple_of=mult, return_tensors="np")
    want = ref.padded_batch(seqs, idx, pad_token_id=pad, pad_to_multiple_of=mult,
                            token_fields=tf, seq_fields=["scores", "group_ids"])
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    got = buf.batch(idx).to_packed(return_tensors="np")
    want = ref.packed_batch(seqs, idx, token_fields=tf)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["max_seqlen"] == max(len(seqs[i]["prompt_ids"]) + len(seqs[i]["response_ids"])
                                    for i in idx)


def test_batches_wrap_into_torch_without_a_copy():
    rng = np.random.default_rng(4)
    buf = RolloutBuffer()
    add_seqs(buf, make_seqs(rng, 6))
    buf.compute_advantages("grpo")
    mb = buf.all()
    arrays = mb.to_padded(return_tensors="np")
    from rlhf_core.buffer.minibatch import _wrap

    tensors = _wrap(arrays, "pt", None)
    for k, a in arrays.items():
        # The numpy array views memory the Rust core allocated (no numpy-side copy) ...
        assert not a.flags.owndata and a.base is not None, k
        # ... and the tensor is the same memory.
        t = tensors[k]
        assert t.data_ptr() == a.ctypes.data, k
        assert np.shares_memory(t.numpy(), a), k
    tensors["input_ids"][0, 0] = -5
    assert arrays["input_ids"][0, 0] == -5
    out = mb.to_padded()
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    assert out["response_mask"].dtype == torch.bool and out["input_ids"].dtype == torch.int64


def test_alignment_with_next_token_logprobs():
    """response_mask / old_logprobs line up with log-probabilities of input_ids[:, 1:]."""
    torch.manual_seed(0)
    vocab = 11
    table = torch.randn(vocab, vocab).log_softmax(-1)  # a bigram "model": logits[j] from token j
    rng = np.random.default_rng(5)
    buf = RolloutBuffer()
    prompts, responses, lps = [], [], []
    for _ in range(5):
        p = rng.integers(0, vocab, int(rng.integers(1, 4)))
        r = rng.integers(0, vocab, int(rng.integers(0, 5)))
        seq = np.concatenate([p, r])
        # log p(response token k) = table[seq[P + k - 1], seq[P + k]]
        lp = np.array([table[seq[len(p) + k - 1], seq[len(p) + k]].item() for k in range(len(r))],
                      dtype=np.float32)
        prompts.append(p)
        responses.append(r)
        lps.append(lp)
    buf.add(prompt_ids=prompts, response_ids=responses, logprobs=lps)
    b = buf.all().to_padded()
    ids = b["input_ids"]
    token_logprobs = table[ids[:, :-1], ids[:, 1:]]  # (b, t-1): logits[:, j] -> ids[:, j+1]
    m = b["response_mask"]
    assert torch.equal(token_logprobs[m], b["old_logprobs"][m])
    assert int(m.sum()) == sum(len(r) for r in responses)


def test_materialisation_is_the_same_serial_and_parallel():
    rng = np.random.default_rng(6)
    buf = RolloutBuffer()
    add_seqs(buf, make_seqs(rng, 300, max_p=40, max_r=400))
    idx = np.arange(300)
    was = ops.get_parallelism()
    try:
        ops.set_parallelism(True)
        a = buf.batch(idx).to_padded(return_tensors="np")
        ops.set_parallelism(False)
        b = buf.batch(idx).to_padded(return_tensors="np")
    finally:
        ops.set_parallelism(was)
    assert_state_equal(a, b)


def test_stale_minibatch_is_refused():
    rng = np.random.default_rng(7)
    buf = RolloutBuffer()
    seqs = make_seqs(rng, 3)
    add_seqs(buf, seqs)
    mb = buf.all()
    add_seqs(buf, seqs)
    with pytest.raises(StateError, match="changed"):
        mb.to_padded()
    with pytest.raises(ShapeError, match="out of range"):
        buf.batch([0, 6]).to_padded()


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


adv_options = st.fixed_dictionaries(
    {
        "estimator": st.sampled_from(
            ["gae", "grpo", "dr_grpo", "rloo", "reinforce++", "reinforce++_baseline"]
        ),
        "gamma": st.sampled_from([1.0, 0.9]),
        "lam": st.sampled_from([1.0, 0.95]),
        "masked": st.sampled_from(["skip", "zero"]),
        "kl_coef": st.sampled_from([0.0, 0.05]),
        "whiten": st.sampled_from([None, "none", "token", "sequence"]),
        "loss_mask": st.booleans(),
        "nan_frac": st.sampled_from([0.0, 0.3]),
        "rewards": st.booleans(),
    }
)


@given(opts=adv_options, seed=st.integers(0, 2**32 - 1), n=st.integers(1, 14))
def test_advantages_match_the_float64_reference(opts, seed, n):
    rng = np.random.default_rng(seed)
    seqs = make_seqs(rng, n, loss_mask=opts["loss_mask"], nan_frac=opts["nan_frac"],
                     dtype=np.float64)
    if opts["rewards"]:
        for s in seqs:
            s["rewards"] = rng.standard_normal(len(s["response_ids"])) * 0.1
    est = opts["estimator"]
    kw = dict(gamma=opts["gamma"], lam=opts["lam"], masked=opts["masked"], whiten=opts["whiten"])
    if est not in ("grpo", "dr_grpo", "rloo"):
        kw["kl_coef"] = opts["kl_coef"]
    buf = RolloutBuffer(float_dtype="float64")
    add_seqs(buf, seqs)
    stats = buf.compute_advantages(est, **kw)
    level, adv, ret = ref.advantages(seqs, est, **kw)
    info = buf.advantages_info
    assert info is not None and info["level"] == level and info["estimator"] == est
    np.testing.assert_allclose(buf.field("advantages"), adv, rtol=1e-9, atol=1e-9)
    if ret is not None:
        np.testing.assert_allclose(buf.field("returns"), ret, rtol=1e-9, atol=1e-9)
    # Returned moments: over valid tokens (loss_mask, non-NaN score) or sequences with one.
    valid = [
        (np.asarray(s.get("loss_mask", np.ones(len(s["response_ids"]), bool)), bool)
         & (not np.isnan(s["scores"])))
        for s in seqs
    ]
    if level == "token":
        trained = adv[np.concatenate(valid)] if valid else adv[:0]
    else:
        trained = adv[[bool(v.any()) for v in valid]]
    if trained.size:
        np.testing.assert_allclose(
            [stats["mean"], stats["std"], stats["min"], stats["max"]],
            [trained.mean(), trained.std(), trained.min(), trained.max()],
            rtol=1e-9, atol=1e-9,
        )
    else:
        assert "mean" not in stats
    if est in ("grpo", "dr_grpo", "rloo", "reinforce++_baseline"):
        assert stats["num_groups"] == len({s["group_ids"] for s in seqs})
        assert stats["num_nan"] == sum(np.isnan(s["scores"]) for s in seqs)
    # Broadcast only in the batch: per-sequence advantages over the response mask.
    b = buf.all().to_padded(return_tensors="np")
    if level == "sequence":
        want = np.where(b["response_mask"], b["seq_advantages"][:, None], 0.0)
        np.testing.assert_array_equal(b["advantages"], want)


@given(first=adv_options, second=adv_options, seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 14), dtype=st.sampled_from(["float32", "float64"]))
def test_reused_storage_gives_the_bits_of_a_fresh_buffer(first, second, seed, n, dtype):
    """Advantages computed in a buffer that was cleared and refilled (its spare storage holds
    the earlier results, reused without re-zeroing) equal a fresh buffer's, bit for bit."""
    rng = np.random.default_rng(seed)

    def kwargs(o):
        kw = dict(gamma=o["gamma"], lam=o["lam"], masked=o["masked"], whiten=o["whiten"])
        if o["estimator"] not in ("grpo", "dr_grpo", "rloo"):
            kw["kl_coef"] = o["kl_coef"]
        return kw

    # the same schema (the first add fixes the fields), other data
    old = make_seqs(rng, n + 3, loss_mask=second["loss_mask"], nan_frac=first["nan_frac"])
    new = make_seqs(rng, n, loss_mask=second["loss_mask"], nan_frac=second["nan_frac"])
    reused = RolloutBuffer(float_dtype=dtype)
    add_seqs(reused, old)
    reused.compute_advantages(first["estimator"], **kwargs(first))
    reused.compute_advantages(first["estimator"], **kwargs(first))  # replace: storage recycled
    reused.clear()
    add_seqs(reused, new)
    reused.compute_advantages(second["estimator"], **kwargs(second))
    fresh = RolloutBuffer(float_dtype=dtype)
    add_seqs(fresh, new)
    fresh.compute_advantages(second["estimator"], **kwargs(second))
    for name in ("advantages", "returns"):
        a = reused.field(name) if name == "advantages" or reused.advantages_info["has_returns"] \
            else None
        b = fresh.field(name) if a is not None else None
        if a is not None:
            assert a.tobytes() == b.tobytes(), name


def _token_whitened_vs_broadcast(seqs: list[dict], est: str) -> tuple[np.ndarray, np.ndarray]:
    """The buffer's ``whiten="token"`` per-sequence advantages, broadcast to tokens, and
    ``ops.masked_whiten`` (ddof 1) of the un-whitened ones broadcast over the valid tokens."""
    lengths = [len(s["response_ids"]) for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    valid = np.concatenate([
        np.asarray(s.get("loss_mask", np.ones(len(s["response_ids"]), bool)), bool)
        & (not np.isnan(s["scores"]))
        for s in seqs
    ]) if seqs else np.zeros(0, bool)
    plain = RolloutBuffer(float_dtype="float64")
    add_seqs(plain, seqs)
    plain.compute_advantages(est, whiten="none")
    white = RolloutBuffer(float_dtype="float64")
    add_seqs(white, seqs)
    white.compute_advantages(est, whiten="token")
    assert white.advantages_info is not None and white.advantages_info["level"] == "sequence"
    got = ops.broadcast_to_tokens(white.field("advantages"), valid, offsets=offsets)
    tokens = ops.broadcast_to_tokens(plain.field("advantages"), valid, offsets=offsets)
    want = np.where(valid, ops.masked_whiten(tokens, valid, offsets=offsets, ddof=1, eps=1e-8), 0.0)
    return got, want


def test_token_whitening_of_sequence_advantages_is_whitening_the_broadcast_tokens():
    # GRPO, scores 1, 2, 3, 4 in groups of 2, 3 tokens each: group advantages ±1/sqrt(2);
    # whitened over 12 tokens with ddof 1 → ±sqrt(11/12) ≈ ±0.957 (population variance: ±1).
    seqs = [
        {"prompt_ids": np.array([1]), "response_ids": np.array([1, 2, 3]),
         "logprobs": np.zeros(3), "scores": float(k + 1), "group_ids": k // 2}
        for k in range(4)
    ]
    got, want = _token_whitened_vs_broadcast(seqs, "grpo")
    np.testing.assert_allclose(np.abs(got), np.sqrt(11 / 12), rtol=1e-7)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@given(
    est=st.sampled_from(["grpo", "dr_grpo", "rloo", "reinforce++_baseline"]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 14),
    loss_mask=st.booleans(),
    nan_frac=st.sampled_from([0.0, 0.3]),
)
def test_token_whitening_matches_ops_masked_whiten_of_broadcast(est, seed, n, loss_mask,
                                                                 nan_frac):
    rng = np.random.default_rng(seed)
    seqs = make_seqs(rng, n, loss_mask=loss_mask, nan_frac=nan_frac, dtype=np.float64)
    got, want = _token_whitened_vs_broadcast(seqs, est)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_float32_advantages_are_close_to_float64():
    rng = np.random.default_rng(8)
    seqs = make_seqs(rng, 50, loss_mask=True)
    buf = RolloutBuffer()
    add_seqs(buf, seqs)
    buf.compute_advantages("gae", gamma=0.99, lam=0.95, kl_coef=0.02)
    _, adv, ret = ref.advantages(seqs, "gae", gamma=0.99, lam=0.95, kl_coef=0.02)
    assert buf.field("advantages").dtype == np.float32
    np.testing.assert_allclose(buf.field("advantages"), adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(buf.field("returns"), ret, rtol=1e-4, atol=1e-4)


def test_advantage_option_errors():
    rng = np.random.default_rng(9)
    buf = RolloutBuffer()
    with pytest.raises(InvalidOptionError, match="no sequences"):
        buf.compute_advantages("grpo")
    add_seqs(buf, make_seqs(rng, 4))
    with pytest.raises(InvalidOptionError, match="estimator"):
        buf.compute_advantages("ppo")
    with pytest.raises(InvalidOptionError, match="kl_coef"):
        buf.compute_advantages("grpo", kl_coef=0.1)
    with pytest.raises(InvalidOptionError, match="whiten"):
        buf.compute_advantages("gae", whiten="batch")
    with pytest.raises(InvalidOptionError, match="gamma"):
        buf.compute_advantages("gae", gamma=1.5)
    with pytest.raises(InvalidOptionError, match="scale applies to group"):
        buf.compute_advantages("gae", scale="group")
    b2 = RolloutBuffer()
    b2.add(prompt_ids=[[1]], response_ids=[[2, 3]], scores=[1.0])
    with pytest.raises(FieldError, match="group_ids"):
        b2.compute_advantages("grpo")
    with pytest.raises(FieldError, match="values"):
        b2.compute_advantages("gae")
    with pytest.raises(FieldError, match="logprobs"):
        b2.compute_advantages("reinforce++", kl_coef=0.1)
    assert b2.compute_advantages("grpo", group_size=1)["num_singleton"] == 1.0
    # whiten=True / False: the estimator's default mode / none.
    add_seqs(b3 := RolloutBuffer(), make_seqs(rng, 6))
    b3.compute_advantages("gae", whiten=True)
    a_true = b3.field("advantages")
    b3.compute_advantages("gae", whiten="token")
    assert a_true.tobytes() == b3.field("advantages").tobytes()
    b3.compute_advantages("gae", whiten=False)
    a_false = b3.field("advantages")
    b3.compute_advantages("gae", whiten="none")
    assert a_false.tobytes() == b3.field("advantages").tobytes()


def test_set_advantages_and_stats():
    buf = RolloutBuffer()
    buf.add(prompt_ids=[[1], [2]], response_ids=[[3, 4], [5]], scores=[1.0, 3.0],
            group_ids=[0, 0], truncated=[True, False])
    buf.set_advantages(np.array([0.5, -0.5], np.float32))
    assert buf.advantages_info == {"estimator": "custom", "level": "sequence", "has_returns": False}
    buf.set_advantages([np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)],
                       returns=np.zeros(3, np.float32))
    assert buf.advantages_info["level"] == "token"
    with pytest.raises(ShapeError, match="expected 2"):
        buf.set_advantages(np.zeros(5, np.float32))
    st_ = buf.stats()
    assert st_["num_sequences"] == 2 and st_["truncated/frac"] == 0.5
    assert st_["scores/mean"] == 2.0 and st_["groups/num_groups"] == 1
    assert st_["advantages/max"] == 3.0


def test_compute_in_threads_gives_the_same_bits():
    """Two threads running compute_advantages on separate buffers (the core releases the GIL)
    get exactly the result of a single-threaded run."""
    rng = np.random.default_rng(10)
    seqs = make_seqs(rng, 2000, max_r=200)
    bufs = [RolloutBuffer() for _ in range(2)]
    for b in bufs:
        add_seqs(b, seqs)
    alone = RolloutBuffer()
    add_seqs(alone, seqs)
    alone.compute_advantages("gae", gamma=0.99, lam=0.95)
    errors: list[BaseException] = []

    def run(b):
        try:
            for _ in range(3):
                b.compute_advantages("gae", gamma=0.99, lam=0.95)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in bufs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for b in bufs:
        assert b.field("advantages").tobytes() == alone.field("advantages").tobytes()


def test_core_class_is_not_subclassable_and_builds_in_release():
    # `make build` / `make test` build the extension in release mode (benches refuse debug)
    assert _core.BUILD_PROFILE == "release"
    with pytest.raises(TypeError):
        type("X", (_core._RolloutBuffer,), {})


def test_per_sequence_arrays_are_checked_in_the_core():
    core = _core._RolloutBuffer()
    prompt = ("pieces", [np.array([1], np.int64)], None)

    def add(resp):
        core.add(prompt, [("response_ids", ("pieces", resp, None))], [])

    with pytest.raises(DtypeError, match="sequence 0"):
        add([[1, 2]])  # not an array
    with pytest.raises(ShapeError, match="not C-contiguous"):
        add([np.arange(4, dtype=np.int64)[::2]])
    with pytest.raises(ShapeError, match="1-D"):
        add([np.zeros((1, 2), np.int64)])
    with pytest.raises(DtypeError, match="float16"):
        add([np.zeros(2, np.float16)])
    assert len(core) == 0
    # Through the Python layer, strided views and Python lists are converted first.
    buf = RolloutBuffer()
    base = np.arange(10, dtype=np.int64)
    buf.add(prompt_ids=[base[::3], [5]], response_ids=[base[1::2], []])
    assert buf.sequence(0)["prompt_ids"].tolist() == [0, 3, 6, 9]
    assert buf.sequence(0)["response_ids"].tolist() == [1, 3, 5, 7, 9]
    assert buf.sequence(1)["response_ids"].tolist() == []


def test_bool_arrays_holding_other_bytes_are_refused():
    """A numpy bool view of uint8 data can hold bytes other than 0/1; read as Rust bools they
    would be undefined behaviour (and did give wrong advantages), so every entry point refuses
    them with the field named: pieces, ragged values, a per-sequence field."""
    from rlhf_core.buffer import Ragged

    bad = np.array([2, 1, 0], np.uint8).view(bool)
    base = dict(prompt_ids=[[1], [2]], response_ids=[[1, 2, 3], [4, 5, 6]], scores=np.zeros(2))
    for kw in (
        dict(loss_mask=[bad, np.ones(3, bool)]),
        dict(loss_mask=Ragged(np.concatenate([bad, bad]), np.array([0, 3, 6]))),
        dict(truncated=np.array([2, 0], np.uint8).view(bool)),
    ):
        buf = RolloutBuffer()
        with pytest.raises(DtypeError, match=r"(loss_mask|truncated).*byte value 2"):
            buf.add(**{**base, **kw})
        assert len(buf) == 0
    ok = RolloutBuffer()
    ok.add(**base, loss_mask=[np.array([True, True, False]), np.ones(3, bool)])
    assert len(ok) == 2


def test_padded_fields_with_their_own_masks_are_scanned_separately():
    """Fields sharing one mask are scanned once per add; a field with a different mask of the
    same shape is still checked against the response lengths (the scan is not reused)."""
    from rlhf_core.buffer import Padded

    ids = np.arange(8).reshape(2, 4)
    vals = np.ones((2, 4), np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    other = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
    base = dict(prompt_ids=[[1], [2]], scores=np.zeros(2))
    ok = RolloutBuffer()
    ok.add(**base, response_ids=Padded(ids, mask), logprobs=Padded(vals, mask),
           values=Padded(vals * 2, mask))
    np.testing.assert_array_equal(ok.field("values"), [2, 2, 2, 2, 2])
    bad = RolloutBuffer()
    with pytest.raises(ShapeError, match="logprobs: sequence 0 of this add .* has 2 values"):
        bad.add(**base, response_ids=Padded(ids, mask), logprobs=Padded(vals, other))
