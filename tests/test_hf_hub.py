"""Hub ids without a network: models, tokenizers and datasets named by Hugging Face Hub id,
resolved from a cache built by :mod:`rlhf_core.testing.hf_cache` with ``HF_HUB_OFFLINE=1``,
through the library and the command line end to end; and the error of each bad input.

Commands run in-process inside :func:`~rlhf_core.testing.hf_cache.offline_hub` (which points
``huggingface_hub`` and ``datasets`` at the cache); one runs in a subprocess with nothing but
the environment variables of :func:`~rlhf_core.testing.hf_cache.offline_env`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rlhf_core import cli, models
from rlhf_core.monitor import read_metrics
from rlhf_core.testing import hf_cache
from rlhf_core.testing.hf_cache import TinyHub

QUIET = ["--progress_bar", "false", "--tensorboard", "false", "--device", "cpu"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> TinyHub:
    home = tmp_path_factory.mktemp("hf_home")
    built = hf_cache.build_tiny_hub(home)
    # a second revision of the policy: a branch "v1" with other weights
    tok = hf_cache.byte_tokenizer()
    hf_cache.cache_model(home, built.policy, hf_cache.tiny_qwen2(tok, seed=5), tok, revision="v1")
    return built


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


def first_params(model: Any) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


# --------------------------------------------------------------------------------------------
# models and tokenizers by Hub id


def test_models_load_by_hub_id_as_float32_unless_asked(offline: TinyHub) -> None:
    m = models.load_policy(offline.policy)  # saved in bfloat16
    assert type(m).__name__ == "Qwen2ForCausalLM"
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert next(models.load_policy(offline.policy, dtype="auto").parameters()).dtype == (
        torch.bfloat16
    )
    assert next(models.load_policy(offline.policy, dtype="bf16").parameters()).dtype == (
        torch.bfloat16
    )
    # a revision by argument or as org/name@revision: other weights than main
    v1 = models.load_policy(offline.policy, revision="v1")
    assert torch.equal(first_params(v1), first_params(models.load_policy(offline.policy + "@v1")))
    assert not torch.equal(first_params(v1), first_params(m))
    with pytest.raises(ValueError, match="names revision 'v1' but revision='main'"):
        models.load_policy(offline.policy + "@v1", revision="main")


def test_two_tokenizers_with_different_vocabularies(offline: TinyHub) -> None:
    a, b = models.load_tokenizer(offline.policy), models.load_tokenizer(offline.other)
    assert len(a) != len(b)
    text = "the theory in there"
    assert a(text)["input_ids"] != b(text)["input_ids"]
    assert a.decode(a(text)["input_ids"]) == text == b.decode(b(text)["input_ids"])
    assert a.eos_token == "<|im_end|>" and a.pad_token == "<|endoftext|>" and a.chat_template


def test_unknown_model_offline_says_what_where_and_offline(offline: TinyHub) -> None:
    cache = offline.home / "hub"
    with pytest.raises(models.ModelNotFoundError) as info:
        models.load_policy("tiny-org/absent")
    msg = str(info.value)
    assert "model 'tiny-org/absent' (revision 'main')" in msg
    assert str(cache / "models--tiny-org--absent") in msg
    assert "offline (HF_HUB_OFFLINE=1)" in msg and "nothing was downloaded" in msg
    with pytest.raises(models.ModelNotFoundError) as info:
        models.load_policy(offline.policy + "@no-such-branch")
    msg = str(info.value)
    assert "revision 'no-such-branch'" in msg and "but not what is needed" in msg
    with pytest.raises(models.ModelNotFoundError, match="tokenizer 'tiny-org/absent'"):
        models.load_tokenizer("tiny-org/absent")
    with pytest.raises(models.ModelNotFoundError, match="reward model 'tiny-org/absent'"):
        models.RewardModel.from_pretrained("tiny-org/absent")


def test_cli_missing_model_or_dataset_is_an_error(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --model / no --dataset outside the presets: an error before anything runs, not a
    silent run of the built-in toy model on the toy task."""
    rc, _, err = run_cli(["sft", "--dataset", offline.messages, *QUIET], capsys)
    assert rc == 2 and "model=None: required: pass --model org/name" in err
    assert "builtin:* for the built-in toy model the presets in configs/ use" in err
    rc, _, err = run_cli(["grpo", "--model", offline.policy, "--reward_funcs", "gold"], capsys)
    assert rc == 2 and "dataset=None: required" in err
    assert not pathlib.Path("runs").exists()


def test_cli_unknown_hub_model_offline(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sft", "--model", "tiny-org/absent", "--dataset", offline.messages, *QUIET]
    rc, _, err = run_cli(args, capsys)
    assert rc == 2 and "model='tiny-org/absent'" in err and "(revision 'main')" in err
    assert "offline (HF_HUB_OFFLINE=1)" in err
    assert str(offline.home / "hub" / "models--tiny-org--absent") in err
    grpo = ["grpo", "--model", offline.policy, "--dataset", offline.prompts, *QUIET]
    rc, _, err = run_cli([*grpo, "--reward_model", "tiny-org/nope"], capsys)
    assert rc == 2 and "reward_model='tiny-org/nope'" in err
    assert "reward model 'tiny-org/nope' (revision 'main')" in err


def test_cli_unknown_hub_dataset_offline(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["sft", "--model", offline.policy, "--total_steps", "1", *QUIET]
    rc, _, err = run_cli([*base, "--dataset", "tiny-org/absent"], capsys)
    assert rc == 2 and "dataset='tiny-org/absent'" in err
    assert f"not in the datasets cache at {offline.home / 'datasets'}" in err
    assert "offline (HF_HUB_OFFLINE=1)" in err
    rc, _, err = run_cli([*base, "--dataset", offline.messages, "--dataset_split", "x"], capsys)
    assert rc == 2 and "dataset='tiny-org/messages'" in err and "split" in err


def test_cli_wrong_column_names_source_row_and_column(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_cli(
        ["grpo", "--model", offline.policy, "--dataset", offline.messages, "--total_steps", "1"]
        + ["--reward_funcs", "exact_match", *QUIET],
        capsys,
    )
    assert rc == 1
    assert (
        "tiny-org/messages split 'train': row 1 (index 0), column 'prompt': missing column "
        "(the row has ['messages', 'tools'])" in err
    )


# --------------------------------------------------------------------------------------------
# the command line end to end on Hub ids


def test_sft_on_messages_by_hub_id(offline: TinyHub, capsys: pytest.CaptureFixture[str]) -> None:
    run = pathlib.Path("sft")
    rc, out, err = run_cli(
        ["sft", "--model", offline.policy, "--dataset", offline.messages, "--run_dir", str(run)]
        + ["--total_steps", "3", "--batch_size", "4", "--learning_rate", "1e-3", *QUIET],
        capsys,
    )
    assert rc == 0, err
    assert "13 conversations of tiny-org/messages split 'train': 26 assistant turns" in err
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)
    saved = models.load_policy(run / "model")
    start = models.load_policy(offline.policy)
    assert not torch.equal(first_params(saved), first_params(start))
    cfg = (run / "config.toml").read_text()
    assert 'model = "tiny-org/chat-a"' in cfg and 'dataset = "tiny-org/messages"' in cfg


def test_reward_model_by_hub_id_loads_in_transformers_and_scores_the_same(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForSequenceClassification

    from rlhf_core.data import load_preferences
    from rlhf_core.rewards import RewardModelScorer

    run = pathlib.Path("rm")
    rc, out, err = run_cli(
        ["reward", "--model", offline.policy, "--dataset", offline.preferences]
        + ["--eval_split", "test", "--run_dir", str(run), "--total_steps", "3"]
        + ["--batch_size", "2", "--learning_rate", "1e-2", *QUIET],
        capsys,
    )
    assert rc == 0, err
    assert "eval/accuracy" in read_metrics(run)[-1]
    folder = run / "reward_model"
    config = json.loads((folder / "config.json").read_text())
    tok = models.load_tokenizer(folder)
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    seq = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert seq.config.num_labels == 1 and config["pad_token_id"] == tok.pad_token_id
    ours = models.RewardModel.from_pretrained(folder).eval()
    bias = json.loads((folder / "rlhf_core_score.json").read_text())["bias"]
    assert ours.head.bias is not None and float(ours.head.bias.detach()) == bias
    pairs = load_preferences(offline.preferences, tokenizer=tok)
    prompts = pairs.prompts * 2
    completions = pairs.chosen + pairs.rejected  # the rejected ones are empty answers
    scores = RewardModelScorer(ours, tok, batch_size=4)(prompts, completions)
    ids = [
        models.encode_prompt_completion(tok, p, c)[0]
        for p, c in zip(prompts, completions, strict=True)
    ]
    width = max(len(x) for x in ids)
    batch = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask = (batch != tok.pad_token_id).long()
    with torch.no_grad():
        theirs = seq(input_ids=batch, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(theirs + bias, torch.tensor(scores), atol=1e-5, rtol=0)


def test_lora_run_saves_a_peft_adapter_and_a_merged_model(
    offline: TinyHub, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = pathlib.Path("lora")
    rc, out, err = run_cli(
        ["sft", "--model", offline.policy, "--dataset", offline.messages, "--run_dir", str(run)]
        + ["--total_steps", "2", "--batch_size", "4", "--learning_rate", "1e-2"]
        + ["--lora_r", "4", "--lora_alpha", "8", "--use_rslora", "--merge_lora", *QUIET],
        capsys,
    )
    assert rc == 0, err
    assert f"LoRA adapter (PEFT) saved to {run / 'adapter'}" in out
    assert f"merged model saved to {run / 'model'}" in out
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["use_rslora"] is True
    assert adapter["base_model_name_or_path"] == offline.policy
    base = AutoModelForCausalLM.from_pretrained(offline.policy, dtype=torch.float32)
    before = base(torch.tensor([[5, 6, 7, 8]])).logits.detach()
    peft = PeftModel.from_pretrained(base, run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        via_adapter, via_merged = peft(ids).logits, merged(ids).logits
    torch.testing.assert_close(via_adapter, via_merged, atol=1e-5, rtol=0)
    assert not torch.allclose(via_adapter, before, atol=1e-4)  # the adapters learned something
    # the adapter folder as a --model of the next command: its base with the adapters merged
    again = models.load_policy(run / "adapter").eval()
    assert not models.is_peft(again)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, via_merged, atol=1e-5, rtol=0)


def test_lora_options_reach_peft(tok: Any) -> None:
    policy = models.build_builtin_policy(tok, seed=0)
    peft = models.apply_lora(policy, r=4, use_dora=True, modules_to_save=["norm"])
    cfg = peft.peft_config["default"]
    assert cfg.use_dora is True and "norm" in set(cfg.modules_to_save)
    names = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert any("modules_to_save" in n and "norm" in n for n in names)


def test_yaml_recipe_with_trl_spellings(
    offline: TinyHub, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "rewards.py").write_text(
        "def varied(prompts, completions, **columns):\n"
        "    return [float(len(c) % 3) for c in completions]\n"
    )
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        "# a TRL GRPO recipe, keys as TRL spells them\n"
        f"model_name_or_path: {offline.policy}\n"
        "model_revision: main\n"
        f"dataset_name: {offline.prompts}\n"
        "dataset_train_split: train\n"
        "output_dir: grpo\n"
        "max_steps: 2\n"
        "learning_rate: 1.0e-5\n"
        "lr_scheduler_type: cosine\n"
        "num_generations: 4\n"
        "per_device_train_batch_size: 4\n"
        "max_completion_length: 8\n"
        "beta: 0.02\n"
        "epsilon: 0.2\n"
        "epsilon_high: 0.28\n"
        "num_iterations: 1\n"
        "mask_truncated_completions: false\n"
        "save_steps: 1\n"
        "save_total_limit: 1\n"
        f"reward_funcs: [exact_match, {tmp_path / 'rewards.py'}:varied]\n"
        "chat_template_kwargs: {enable_thinking: false}\n"
        "max_grad_norm: null\n"
    )
    rc, out, err = run_cli(["grpo", "--config", str(recipe), *QUIET], capsys)
    assert rc == 0, err
    from rlhf_core.config import load_config

    cfg = load_config(cli.GRPORunConfig, pathlib.Path("grpo") / "config.toml")
    assert (cfg.model, cfg.revision, cfg.dataset, cfg.dataset_split) == (
        offline.policy,
        "main",
        offline.prompts,
        "train",
    )
    assert (cfg.total_steps, cfg.num_samples, cfg.micro_batch_size, cfg.max_new_tokens) == (
        2,
        4,
        4,
        8,
    )
    assert (cfg.kl_coef, cfg.clip_low, cfg.clip_high, cfg.ppo_epochs) == (0.02, 0.2, 0.28, 1)
    # YAML's null is none (the recipe as read; config.toml cannot hold a none yet, issue 18)
    from rlhf_core.cli.aliases import aliases_for

    read = load_config(cli.GRPORunConfig, recipe, aliases=aliases_for(cli.GRPORunConfig))
    assert read.max_grad_norm is None and read.kl_coef == 0.02
    assert (cfg.lr_scheduler, cfg.mask_truncated, cfg.save_every, cfg.keep_last) == (
        "cosine",
        False,
        1,
        1,
    )
    assert cfg.chat_template_kwargs == {"enable_thinking": False}
    assert [r["step"] for r in read_metrics("grpo")] == [1, 2]
    # the command line takes the same spellings, and wins over the file
    rc, out, _ = run_cli(
        ["grpo", "--config", str(recipe), "--num_generations", "2", "--print-config"], capsys
    )
    assert rc == 0 and "num_samples = 2" in out and "\nnum_generations =" not in out


def test_aliases_conflicts_and_hints(
    offline: TinyHub, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    both = tmp_path / "both.yaml"
    both.write_text(
        "max_steps: 3\ntotal_steps: 4\nmodel: builtin:tiny\ndataset: builtin:language\n"
    )
    rc, _, err = run_cli(["sft", "--config", str(both), "--print-config"], capsys)
    assert rc == 2 and "'max_steps' and 'total_steps' are the same option ('total_steps')" in err
    rc, _, err = run_cli(
        ["sft", "--output_dir", "a", "--run_dir", "b", "--model", "builtin", "--print-config"],
        capsys,
    )
    assert rc == 2 and "'run_dir' and 'output_dir' are the same option" in err
    hint = tmp_path / "hint.yaml"
    hint.write_text("gradient_accumulation_steps: 4\n")
    rc, _, err = run_cli(["sft", "--config", str(hint), "--print-config"], capsys)
    assert rc == 2 and "'gradient_accumulation_steps' has no equivalent here" in err
    assert "per_device_train_batch_size x gradient_accumulation_steps" in err
    rc, _, err = run_cli(["grpo", "--num_train_epochs", "3"], capsys)
    assert rc == 2 and "--num_train_epochs (TRL's) has no equivalent here: set total_steps" in err
    # DPO's beta is DPO's; GRPO's beta is the KL coefficient
    rc, out, _ = run_cli(
        ["dpo", "--model", "builtin", "--dataset", "builtin:language", "--beta", "0.3"]
        + ["--print-config"],
        capsys,
    )
    assert rc == 0 and "\nbeta = 0.3\n" in out
    rc, out, _ = run_cli(
        ["grpo", "--model", "builtin", "--dataset", "builtin:language", "--beta", "0.3"]
        + ["--reward_funcs", "gold", "--print-config"],
        capsys,
    )
    assert rc == 0 and "\nkl_coef = 0.3\n" in out and "\nbeta" not in out
    text = " ".join(cli.build_parser("grpo").format_help().split())
    assert "--num_generations VALUE = --num_samples" in text and "--beta VALUE = --kl_coef" in text
    dpo_help = " ".join(cli.build_parser("dpo").format_help().split())
    assert "--output_dir VALUE = --run_dir" in dpo_help and "--beta VALUE" not in dpo_help


def test_subprocess_with_the_environment_only(hub: TinyHub, tmp_path: pathlib.Path) -> None:
    """What a user does: HF_HOME and HF_HUB_OFFLINE=1 in the environment, then the command."""
    env = {**os.environ, **hf_cache.offline_env(hub.home), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "rlhf_core", "sft", "--model", hub.policy, "--dataset"]
    args += [hub.messages, "--total_steps", "1", "--batch_size", "2", "--run_dir", "run", *QUIET]
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    args[args.index(hub.policy)] = "tiny-org/absent"
    args[args.index("run")] = "run2"  # a new run: "run" holds the first one's options
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2
    assert "model='tiny-org/absent'" in res.stderr and "HF_HUB_OFFLINE=1" in res.stderr
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------
# datasets by Hub id, streamed, or as datasets.Dataset objects


def test_hub_datasets_stream_split_and_dataset_objects(offline: TinyHub) -> None:
    import datasets

    from rlhf_core.data import DataError, load_preferences, load_prompts, load_sft_dataset

    tok = models.load_tokenizer(offline.policy)
    streamed = load_prompts(offline.prompts, tokenizer=tok, streaming=True, limit=3)
    assert len(streamed) == 3 and streamed.report.total == 3
    assert streamed.columns["answer"] == ["0", "1", "2"]
    assert streamed.prompts == load_prompts(offline.prompts, tokenizer=tok).prompts[:3]
    assert len(load_preferences(offline.preferences, split="test")) == 2
    with pytest.raises(DataError, match=r"no split|Unknown split") as info:
        load_preferences(offline.preferences, split="validation")
    assert info.value.kind == "split" and info.value.row is None
    # a datasets.Dataset (what load_dataset returns) is rows like any list of dicts
    ds = datasets.load_dataset(offline.messages, split="train")
    conv = load_sft_dataset(ds, tokenizer=tok)
    assert len(conv) == 13 and conv.source == "<list>"
    assert conv.tools[-1][0]["function"]["name"] == "add"  # nulls Arrow added are gone
