"""The trainers on Hugging Face models and TRL-shaped data: conversational rows rendered with
the chat template (never ``str()``-ed), SFT on ``messages`` with the loss on assistant turns,
reward functions written to TRL's contract, a reward model with another tokenizer than the
policy's, the reward trainer with LoRA, and ``transformers.get_scheduler`` schedules.

The tiny Hub models and datasets come from :mod:`rlhf_core.testing.hf_cache`, offline."""

from __future__ import annotations

import math
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_core import cli, models
from rlhf_core.monitor import read_metrics
from rlhf_core.testing import hf_cache
from rlhf_core.testing.hf_cache import TinyHub
from rlhf_core.testing.trainers import FAST

QUIET = ["--progress_bar", "false", "--tensorboard", "false", "--device", "cpu"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> TinyHub:
    return hf_cache.build_tiny_hub(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def offline(
    hub: TinyHub, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TinyHub]:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    with hf_cache.offline_hub(hub.home):
        yield hub


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------------------------
# GRPO with TRL-signature reward functions on a conversational prompt dataset by Hub id

TRL_REWARDS = '''
import json, pathlib

def accuracy_reward(completions, answer, **kwargs):
    """TRL's documented form: conversational completions, the dataset's 'answer' column."""
    contents = [c[0]["content"] for c in completions]
    return [1.0 if a in c else 0.0 for c, a in zip(contents, answer)]

def format_reward(completions, **kwargs):
    kwargs["log_metric"]("format/seen", float(len(completions)))
    with open("seen.jsonl", "a") as f:
        f.write(json.dumps({
            "prompt": kwargs["prompts"][0],
            "completion": completions[0],
            "ids": kwargs["completion_ids"][0],
            "step": kwargs["trainer_state"].global_step,
            "max_steps": kwargs["trainer_state"].max_steps,
        }) + "\\n")
    return [None if len(c[0]["content"]) % 2 else 0.5 for c in completions]

async def length_reward(completions, **kwargs):
    return [min(len(c[0]["content"]), 8) / 8 for c in completions]
'''


def test_grpo_with_trl_reward_functions_on_conversational_prompts(
    offline: TinyHub, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "my_rewards.py").write_text(TRL_REWARDS)
    funcs = [f"{tmp_path / 'my_rewards.py'}:{n}" for n in ("accuracy_reward", "format_reward")]
    rc, out, err = run_cli(
        ["grpo", "--model", offline.policy, "--dataset", offline.prompts, "--run_dir", "g"]
        + ["--reward_funcs", ",".join([*funcs, "my_rewards.length_reward"])]
        + ["--total_steps", "2", "--num_generations", "4", "--rollout_batch_size", "8"]
        + ["--max_completion_length", "6", "--learning_rate", "1e-3", *QUIET],
        capsys,
    )
    assert rc == 0, err
    rows = read_metrics("g")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["format/seen"] == 8.0 and r["reward/frac_unscorable"] == 0.0
        assert {"reward/accuracy_reward", "reward/format_reward", "reward/length_reward"} <= set(r)
    import json

    seen = [json.loads(line) for line in pathlib.Path("seen.jsonl").read_text().splitlines()]
    assert [s["step"] for s in seen] == [0, 1] and seen[0]["max_steps"] == 2
    prompt, completion = seen[0]["prompt"], seen[0]["completion"]
    assert isinstance(prompt, list) and prompt[0]["role"] == "user"  # messages, as in the data
    assert completion[0]["role"] == "assistant" and isinstance(completion[0]["content"], str)
    tok = models.load_tokenizer(offline.policy)
    assert tok.decode(seen[0]["ids"], skip_special_tokens=True) == completion[0]["content"]


def test_grpo_refuses_a_reward_function_of_the_wrong_arity(
    offline: TinyHub, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "bad.py").write_text("def one(text):\n    return [0.0]\n")
    rc, _, err = run_cli(
        ["grpo", "--model", offline.policy, "--dataset", offline.prompts, "--run_dir", "g"]
        + ["--reward_funcs", f"{tmp_path / 'bad.py'}:one", "--total_steps", "1"]
        + ["--num_generations", "2", "--rollout_batch_size", "2", "--max_new_tokens", "2"]
        + QUIET,
        capsys,
    )
    assert rc == 1 and "Traceback" not in err
    assert "reward function 'one'(text) cannot take a batch of completions" in err


# --------------------------------------------------------------------------------------------
# conversational rows in the Python trainers


def test_rl_trainer_renders_conversational_prompts_with_the_chat_template(
    offline: TinyHub, tmp_path: pathlib.Path
) -> None:
    import datasets

    from rlhf_core.data import DataError
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    tok = models.load_tokenizer(offline.policy)
    policy = models.load_policy(offline.policy)
    ds = datasets.load_dataset(offline.prompts, split="train")
    cfg = GRPOConfig(run_dir=str(tmp_path / "g"), total_steps=1, num_samples=2,
                     rollout_batch_size=4, max_new_tokens=3,
                     chat_template_kwargs={"enable_thinking": False}, **FAST)  # fmt: skip

    def f(completions: Any, answer: Any, **kwargs: Any) -> list[float]:
        return [0.0] * len(completions)

    t = GRPOTrainer(cfg, policy, tok, ds, [f])
    want = tok.apply_chat_template(
        ds[0]["prompt"], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert t.collector.prompt_texts[0] == want and "[{" not in want
    assert t.collector.prompt_columns["answer"][:2] == ["0", "1"]
    bad = [{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": 7}]
    with pytest.raises(DataError) as info:
        GRPOTrainer(cfg, policy, tok, bad, [f])
    assert info.value.row == 2 and info.value.column == "prompt"


def test_sft_on_messages_learns_the_assistant_turns_only(offline: TinyHub) -> None:
    from rlhf_core.trainers.sft import encode_examples

    tok = models.load_tokenizer(offline.policy)
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    (ids,), (mask,) = encode_examples(tok, [{"messages": conv}])
    assert ids.tolist() == tok.apply_chat_template(conv, tokenize=True, return_dict=False)
    learned = tok.decode(ids[mask])
    assert learned.count("<|im_end|>") == 2 and "4" in learned and "6" in learned
    assert "2+2" not in learned and "Be brief" not in learned
    with pytest.raises(ValueError, match=r"examples\[0\] has keys \['chat'\]; expected 'messages'"):
        encode_examples(tok, [{"chat": conv}])


def test_dpo_renders_conversational_pairs(offline: TinyHub, tmp_path: pathlib.Path) -> None:
    import datasets

    from rlhf_core.trainers.pairwise import encode_pairs

    tok = models.load_tokenizer(offline.policy)
    ds = datasets.load_dataset(offline.preferences, split="train")
    enc = encode_pairs(tok, ds)
    prompt = tok.apply_chat_template(ds[0]["prompt"], tokenize=False, add_generation_prompt=True)
    first = tok.decode(enc.chosen[0])
    assert first.startswith(prompt) and first.endswith("cats is fine.<|im_end|>\n")
    assert first.count("<|im_end|>") == 2  # no doubled end of turn
    with pytest.raises(
        ValueError,
        match=r"row 1 \(index 0\), column 'chosen': expected a string or a list of \{role",
    ):
        encode_pairs(tok, [("p", 3, "r")])


# --------------------------------------------------------------------------------------------
# a reward model with another tokenizer


def _rm_of_other(hub: TinyHub, folder: pathlib.Path) -> tuple[Any, Any]:
    tok_b = models.load_tokenizer(hub.other)
    rm = models.RewardModel.from_policy(models.load_policy(hub.other), seed=3)
    rm.save_pretrained(folder)
    tok_b.save_pretrained(folder)
    return rm, tok_b


def test_reward_model_with_another_tokenizer_re_encodes_the_texts(offline: TinyHub) -> None:
    from rlhf_core.rewards import RewardModelScorer, combine_rewards

    tok_a = models.load_tokenizer(offline.policy)
    rm, tok_b = _rm_of_other(offline, pathlib.Path("rm_b"))
    assert not models.same_tokenizer(tok_a, tok_b)
    assert models.same_tokenizer(tok_a, models.load_tokenizer(offline.policy))
    scorer = RewardModelScorer(rm, tok_b, policy_tokenizer=tok_a)
    assert not scorer.reads_policy_ids
    prompts = [[{"role": "user", "content": "the answer?"}], [{"role": "user", "content": "hi"}]]
    texts = ["the other", "there"]
    # the policy's token ids: what the trainers pass as sequences
    seqs = []
    for p, c in zip(prompts, texts, strict=True):
        rendered = tok_a.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        seqs.append(models.encode_prompt_completion(tok_a, rendered, c)[0])
    got = combine_rewards([scorer], None, prompts, texts, sequences=seqs)
    # the reward model's own encoding: its chat template over the conversation, its vocabulary
    want = []
    for p, c in zip(prompts, texts, strict=True):
        full = p + [{"role": "assistant", "content": c}]
        ids = tok_b.apply_chat_template(full, tokenize=True, return_dict=False)
        with torch.no_grad():
            want.append(float(rm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the policy's ids read by the other vocabulary would give other numbers
    assert not np.allclose(scorer.score_ids(seqs), want, atol=1e-5)
    same = RewardModelScorer(rm, tok_b, policy_tokenizer=models.load_tokenizer(offline.other))
    assert same.reads_policy_ids


def test_ppo_with_a_reward_model_of_another_tokenizer(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    _rm_of_other(offline, pathlib.Path("rm_b"))
    rc, out, err = run_cli(
        ["ppo", "--model", offline.policy, "--dataset", offline.prompts, "--run_dir", "p"]
        + ["--reward_model", "rm_b", "--total_steps", "2", "--rollout_batch_size", "4"]
        + ["--max_new_tokens", "4", "--learning_rate", "1e-3", *QUIET],
        capsys,
    )
    assert rc == 0, err
    rows = read_metrics("p")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["reward/mean"]) for r in rows)


# --------------------------------------------------------------------------------------------
# learning-rate schedules


def test_transformers_schedules_by_name() -> None:
    from transformers import get_scheduler

    from rlhf_core.trainers.config import LR_SCHEDULERS, TrainerConfig
    from rlhf_core.trainers.optim import build_scheduler

    def lrs(cfg: TrainerConfig) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = build_scheduler(opt, cfg)
        out = []
        for _ in range(cfg.total_steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    base = TrainerConfig(total_steps=10, warmup_steps=2, lr_scheduler="linear")
    ours = lrs(base)
    theirs = lrs(TrainerConfig(total_steps=10, warmup_steps=2, lr_scheduler="polynomial",
                               lr_scheduler_kwargs={"power": 1.0, "lr_end": 0.0}))  # fmt: skip
    np.testing.assert_allclose(ours[:2], [1 / 3, 2 / 3]) and np.testing.assert_allclose(
        theirs[:2], [1 / 3, 2 / 3]
    )
    # after the warm-up each transformers schedule is its own, read one step ahead
    for name in LR_SCHEDULERS[3:]:
        kw = {"num_decay_steps": 3} if name == "warmup_stable_decay" else {}
        kw = {"min_lr_rate": 0.1} if "min_lr" in name else kw
        got = lrs(TrainerConfig(total_steps=10, warmup_steps=2, lr_scheduler=name,
                                lr_scheduler_kwargs=kw))  # fmt: skip
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        ref = get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=11,
                            scheduler_specific_kwargs=kw or None)  # fmt: skip
        want = [ref.lr_lambdas[0](s + 1) for s in range(10)]
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
        assert got[0] > 0, name
    ratio = TrainerConfig(total_steps=10, warmup_ratio=0.25, lr_scheduler="cosine")
    assert lrs(ratio)[:3] == pytest.approx([1 / 4, 2 / 4, 3 / 4])  # ceil(2.5) = 3 steps


def test_schedule_errors() -> None:
    from rlhf_core.trainers.config import TrainerConfig
    from rlhf_core.trainers.optim import build_scheduler

    with pytest.raises(ValueError, match="lr_scheduler='step'"):
        TrainerConfig(lr_scheduler="step")
    with pytest.raises(ValueError, match="lr_scheduler_kwargs.*'linear' schedule takes no"):
        TrainerConfig(lr_scheduler="linear", lr_scheduler_kwargs={"power": 2})
    with pytest.raises(ValueError, match="warmup_ratio=0.2: set warmup_steps"):
        TrainerConfig(warmup_steps=2, warmup_ratio=0.2)
    cfg = TrainerConfig(lr_scheduler="polynomial", lr_scheduler_kwargs={"bogus": 1})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match="transformers.get_scheduler refused them"):
        build_scheduler(opt, cfg)


def test_a_step_without_an_optimizer_step_advances_the_schedule_quietly(
    tmp_path: pathlib.Path,
) -> None:
    """Every completion truncated and masked: no optimizer step. The schedule still follows the
    trainer step, without torch's warning of a scheduler stepped before its optimizer."""
    from rlhf_core.testing.trainers import policy, tokenizer
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=3, num_samples=2, rollout_batch_size=4,
                     max_new_tokens=1, mask_truncated=True, lr_scheduler="linear",
                     learning_rate=1e-3, **FAST)  # fmt: skip
    tok = tokenizer()
    t = GRPOTrainer(cfg, policy(), tok, ["1+1=", "2+2="], [lambda p, c: [0.0] * len(c)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.train()
    rows = read_metrics(tmp_path)
    assert [r["optimizer_steps"] for r in rows] == [0.0, 0.0, 1.0]  # one completion stopped
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0])  # after each
