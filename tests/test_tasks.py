"""Tests of rlhf_core.tasks: the synthetic language, its gold reward, and arithmetic."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from rlhf_core import tasks as T


def test_deterministic_from_seed() -> None:
    assert T.sft_corpus(50, seed=3) == T.sft_corpus(50, seed=3)
    assert T.sft_corpus(50, seed=3) != T.sft_corpus(50, seed=4)
    assert T.prompt_set(20, seed=1) == T.prompt_set(20, seed=1)
    assert T.arithmetic_dataset(20, seed=2) == T.arithmetic_dataset(20, seed=2)
    assert T.arithmetic_sft_corpus(20, seed=2) == T.arithmetic_sft_corpus(20, seed=2)
    # independent of the global RNG
    random.seed(0)
    a = T.sft_corpus(5, seed=0)
    random.seed(1)
    assert T.sft_corpus(5, seed=0) == a


def test_charset_and_builtin_tokenizer() -> None:
    texts = [r["prompt"] + r["completion"] for r in T.sft_corpus(300, seed=0)]
    texts += [r["prompt"] + r["completion"] for r in T.arithmetic_sft_corpus(300, ops="+-")]
    chars = set("".join(texts))
    assert chars <= T.CHARSET
    models = pytest.importorskip("rlhf_core.models")
    tok = models.load_tokenizer()
    vocab = tok.get_vocab()
    assert all(c in vocab for c in T.CHARSET)
    # character-level: one token per character, and decoding gives the text back
    text = texts[0]
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_corpus_shape() -> None:
    rows = T.sft_corpus(500, seed=0)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    for r in rows:
        assert T.prompt_subject(r["prompt"]) in T.SUBJECTS
        assert r["completion"].startswith(" ")
        words = re.findall(r"[a-z]+", r["completion"])
        assert set(words) <= T.VOCABULARY
    n_sent = np.array([r["completion"].count(".") for r in rows])
    assert 1.5 < n_sent.mean() < 2.6 and n_sent.max() <= 4
    assert len(set(T.prompt_set(200))) > 20  # animals x templates


def test_prompt_subject() -> None:
    assert T.prompt_subject("tell me about the cat:") == "cat"
    assert T.prompt_subject("describe the owl: ") == "owl"
    assert T.prompt_subject("<bos><|user|>write about the fox:\n<|assistant|>") == "fox"
    assert T.prompt_subject("user: tell me about the bee:\nassistant: ") == "bee"
    assert T.prompt_subject("tell me about the car:") is None
    assert T.prompt_subject("hello") is None
    with pytest.raises(ValueError, match="subject"):
        T.make_prompt("car")


CAT = "tell me about the cat:"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # topic +1, ending +.5, positive .4, length .4
        (" the cat is happy.", 2.3),
        (" the dog is happy.", -1.0 + 0.5 + 0.4 + 0.4 - 0.3),  # off topic
        (" the cat is happy", 1.0 - 0.5 + 0.4 + 0.0),  # trails off: no complete sentence
        (" the cat is very happy.", 2.6),
        (" the cat is very very very happy.", 2.3 + 0.3 - 1.2),
        (" the cat is sad.", 1.0 + 0.5 - 0.5 + 0.4),
        (" the cat is big. it is calm. it is kind.", 1.0 + 0.5 + 0.8 + 1.2),
        (" the cat is big. it is big. it is big. it is big. it is big.", 1.5 + 1.2 - 1.2 - 2.4),
        (
            " the cat is happy. it is good. it is kind. it is calm. it is bright.",
            1.5 + 0.8 - 0.6 + 1.2 - 1.2,
        ),
        (" the cat is zzz qqq.", 1.0 + 0.5 + 0.4 - 0.4),
        ("", -2.0),
        ("   ...", -2.0),
    ],
)
def test_gold_reward_values(completion: str, expected: float) -> None:
    (score,) = T.gold_reward([CAT], [completion])
    assert score == pytest.approx(expected)
    parts = T.gold_components(CAT, completion)
    assert parts is not None and sum(parts.values()) == pytest.approx(expected)


def test_gold_reward_signature_and_unscorable() -> None:
    assert T.gold_reward(["what?"], [" the cat is happy."]) == [None]
    assert T.gold_reward([CAT], [" the cat is happy."], answer=["x"]) == [pytest.approx(2.3)]
    with pytest.raises(ValueError, match="must match"):
        T.gold_reward([CAT, CAT], [" x."])
    rewards = pytest.importorskip("rlhf_core.rewards")
    out = rewards.combine_rewards([T.gold_reward], [1.0], [CAT, "what?"], [" the cat.", " x."])
    assert out[0] == pytest.approx(1.0 + 0.5 + 0.4) and np.isnan(out[1])


def test_bradley_terry_ceiling() -> None:
    assert T.bradley_terry_ceiling([0.0], [0.0]) == 0.5
    assert T.bradley_terry_ceiling([10.0, -10.0], [0.0, 0.0]) == pytest.approx(1.0, abs=1e-4)
    p = 1 / (1 + np.exp(-1.0))
    assert T.bradley_terry_ceiling([1.0, 0.0], [0.0, 1.0]) == pytest.approx(p)
    assert T.bradley_terry_ceiling([2.0, np.nan], [0.0, 0.0], beta=0.5) == pytest.approx(p)
    assert np.isnan(T.bradley_terry_ceiling([np.nan], [0.0]))
    with pytest.raises(ValueError, match="1-D"):
        T.bradley_terry_ceiling([1.0, 2.0], [1.0])


def _features(prompt: str, completion: str, vocab: dict[str, int]) -> np.ndarray:
    v = np.zeros(len(vocab) + 3)
    words = re.findall(r"[a-z]+", completion)
    for w in words:
        if w in vocab:
            v[vocab[w]] += 1
    v[-3] = float(T.prompt_subject(prompt) in words)
    v[-2] = completion.count(".")
    v[-1] = float(completion.strip().endswith("."))
    return v


def test_goodhart_emerges_for_a_fitted_proxy() -> None:
    """The task's reason to exist: a proxy fitted to gold-labelled (Bradley-Terry) pairs of
    grammar samples agrees with gold near the data, and optimising it harder (best-of-N over a
    broader sampler: more sentences, doubled "very") raises the proxy while the gold falls."""
    vocab = {w: i for i, w in enumerate(sorted(T.VOCABULARY))}
    rng = random.Random(0)
    n = 1500
    prompts = T.prompt_set(n, seed=1)
    a = [T.sample_completion(rng, T.prompt_subject(p) or "cat") for p in prompts]
    b = [T.sample_completion(rng, T.prompt_subject(p) or "cat") for p in prompts]
    ga = np.array(T.gold_reward(prompts, a), dtype=float)
    gb = np.array(T.gold_reward(prompts, b), dtype=float)
    labels = np.random.default_rng(0).random(n) < 1 / (1 + np.exp(-(ga - gb)))
    x = np.stack(
        [
            _features(p, s, vocab) - _features(p, t, vocab)
            for p, s, t in zip(prompts, a, b, strict=True)
        ]
    )
    w = np.zeros(x.shape[1])
    for _ in range(1500):  # logistic regression (Bradley-Terry on features)
        prob = 1 / (1 + np.exp(-(x @ w)))
        w -= 0.5 * (x.T @ (prob - labels) / n + 1e-3 * w)
    accuracy = float(((x @ w > 0) == labels).mean())
    assert accuracy > 0.65 and accuracy > T.bradley_terry_ceiling(ga, gb) - 0.03

    def broad(r: random.Random, subject: str) -> str:
        k = r.randint(1, 7)
        sents = [T._sentence(r, subject, i == 0) for i in range(k)]
        sents = [s.replace(" is ", " is very very ") if r.random() < 0.3 else s for s in sents]
        return " " + ". ".join(sents) + "."

    def best_of(k: int, sampler: object) -> tuple[float, float]:
        proxy, gold = [], []
        for p in prompts[:100]:
            subj = T.prompt_subject(p) or "cat"
            cands = [sampler(rng, subj) for _ in range(k)]  # type: ignore[operator]
            scores = [_features(p, c, vocab) @ w for c in cands]
            best = int(np.argmax(scores))
            proxy.append(scores[best])
            gold.append(T.gold_reward([p], [cands[best]])[0])
        return float(np.mean(proxy)), float(np.mean(gold))

    # near the data: best-of-N raises the gold reward
    (p1, g1), (p8, g8) = best_of(1, T.sample_completion), best_of(8, T.sample_completion)
    assert p8 > p1 and g8 > g1 + 0.3
    # pushed beyond it: the proxy keeps rising, the gold falls
    (q1, h1), (q32, h32) = best_of(1, broad), best_of(32, broad)
    assert q32 > q1 + 1.0 and h32 < h1 - 0.5


def test_arithmetic_dataset() -> None:
    rows = T.arithmetic_dataset(200, seed=0, max_operand=9, ops="+-")
    for r in rows:
        m = re.fullmatch(r"(\d+)([+-])(\d+)=", r["prompt"])
        assert m is not None
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert 0 <= a <= 9 and 0 <= b <= 9
        assert int(r["answer"]) == (a + b if op == "+" else a - b) >= 0
    assert {r["prompt"][1:2] for r in rows if len(r["prompt"]) == 4} == {"+", "-"}


def test_arithmetic_sft_corpus_error_rate() -> None:
    rows = T.arithmetic_sft_corpus(2000, seed=0, error_rate=0.3)
    wrong = [r for r in rows if r["completion"] != r["answer"]]
    assert 0.25 < len(wrong) / len(rows) < 0.35
    assert all(1 <= abs(int(r["completion"]) - int(r["answer"])) <= 3 for r in wrong)
    assert all(int(r["completion"]) >= 0 for r in rows)
    assert all(r["completion"] == r["answer"] for r in T.arithmetic_sft_corpus(100, error_rate=0.0))


def test_arithmetic_reward() -> None:
    prompts = ["12+7="] * 6
    completions = ["19", " 19 ", "19.", "190", "", "18"]
    assert T.arithmetic_reward(prompts, completions, answer=["19"] * 6) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]
    assert T.arithmetic_reward(["1+1="], ["2"], answer=[None]) == [None]
    with pytest.raises(ValueError, match="must match"):
        T.arithmetic_reward(["1+1="], ["2"], answer=[])


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (T.arithmetic_dataset, {"n": -1}, "n must be"),
        (T.arithmetic_dataset, {"n": 1, "max_operand": 0}, "max_operand"),
        (T.arithmetic_dataset, {"n": 1, "ops": "*"}, "ops"),
        (T.arithmetic_sft_corpus, {"n": 1, "error_rate": 1.5}, "error_rate"),
        (T.sft_corpus, {"n": -1}, "n must be"),
        (T.prompt_set, {"n": -2}, "n must be"),
    ],
)
def test_bad_arguments(fn: object, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)  # type: ignore[operator]
