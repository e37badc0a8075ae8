"""The ``rlhf-core`` command line: help, presets, every command on its preset for a couple of
steps, chaining the outputs of one command into the next, resume, data files and errors.

Commands run in-process through :func:`rlhf_core.cli.main` (the imports are paid once); one
test runs the installed entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from rlhf_core import cli
from rlhf_core.config import field_docs, load_config
from rlhf_core.monitor import read_metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

#: preset file -> command (the first line of each preset says how to run it)
_PRESET_RE = re.compile(r"^# rlhf-core ([a-z-]+) --config configs/(\S+)$")
#: the suffixes of preset files (TOML; YAML for recipes in TRL's spellings)
_PRESET_SUFFIXES = (".toml", ".yaml")

#: a couple of steps and small batches for every trainer command
FAST = {
    "sft": ["--total_steps", "2", "--batch_size", "4"],
    "reward": ["--total_steps", "2", "--batch_size", "4", "--dataset_size", "60"],
    "dpo": ["--total_steps", "2", "--batch_size", "4", "--dataset_size", "40"],
    "ppo": ["--total_steps", "2", "--rollout_batch_size", "8", "--minibatch_size", "4"],
    "grpo": ["--total_steps", "2", "--rollout_batch_size", "8"],
    "rloo": ["--total_steps", "2", "--rollout_batch_size", "8"],
    "reinforce-pp": ["--total_steps", "2", "--rollout_batch_size", "8"],
    "best-of-n": ["--total_steps", "2", "--rollout_batch_size", "16"],
    "label": ["--num_prompts", "6"],
    "eval": ["--num_prompts", "4"],
}
SHORT = ["--max_new_tokens", "12"]
TRAINERS = ["sft", "reward", "dpo", "ppo", "grpo", "rloo", "reinforce-pp", "best-of-n"]


def preset_files() -> list[pathlib.Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.suffix in _PRESET_SUFFIXES)


def preset_command(path: pathlib.Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = _PRESET_RE.match(first)
    assert m, f"{path}: first line must be '# rlhf-core <command> --config configs/...'"
    assert (CONFIGS / m.group(2)) == path, f"{path}: first line names {m.group(2)}"
    return m.group(1)


def preset_of(command: str) -> pathlib.Path:
    return CONFIGS / f"{command.replace('-', '_')}.toml"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def base_args(command: str, run_dir: pathlib.Path) -> list[str]:
    args = [command, "--config", str(preset_of(command)), "--run-dir", str(run_dir)]
    args += FAST[command]
    if command not in ("sft", "reward", "dpo"):
        args += SHORT
    if command in TRAINERS:
        args += ["--progress_bar", "false", "--tensorboard", "false"]
    return args


# --------------------------------------------------------------------------------------------
# help and presets


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0
    for name in cli.COMMANDS:
        assert f"  {name} " in out
    rc, out, _ = run_cli([], capsys)
    assert rc == 2 and "usage: rlhf-core" in out
    assert set(cli.COMMANDS) == {
        "demo",
        "sft",
        "reward",
        "ppo",
        "grpo",
        "rloo",
        "reinforce-pp",
        "best-of-n",
        "dpo",
        "label",
        "eval",
    }


def test_unknown_command_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["gpro"], capsys)
    assert rc == 2 and "unknown command 'gpro'" in err and "did you mean 'grpo'" in err


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_documents_every_field(command: str) -> None:
    help_out = cli.build_parser(command).format_help()
    text = " ".join(help_out.split())
    squashed = "".join(help_out.split())  # argparse wraps lines at spaces and hyphens
    fields = field_docs(cli.COMMANDS[command].config)
    assert fields
    for name, _tp, _default, help_text in fields:
        assert f"--{name} " in text, f"{command}: --{name} missing from --help"
        assert help_text, f"{command}: field {name} has no help text"
        words = "".join(help_text.split()[:4])
        assert words in squashed, f"{command}: help of --{name} missing"
    assert "--config" in text and "--resume" in text and "--run-dir" in text


def test_every_command_has_a_preset_and_every_preset_loads() -> None:
    seen: dict[str, list[str]] = {}
    for path in preset_files():
        command = preset_command(path)
        assert command in cli.COMMANDS, f"{path} names unknown command {command!r}"
        seen.setdefault(command, []).append(path.name)
        if command == "demo":
            from rlhf_core.demo import load_demo_config

            load_demo_config(path)
        else:
            from rlhf_core.cli.aliases import aliases_for

            config = cli.COMMANDS[command].config
            load_config(config, path, aliases=aliases_for(config))
    assert set(seen) == set(cli.COMMANDS), (
        f"commands without a preset: {set(cli.COMMANDS) - set(seen)}"
    )
    for command in cli.COMMANDS:
        if command != "demo":
            assert preset_of(command).is_file()
    # CPU presets use the built-in model; GPU recipes are documented as such
    for path in preset_files():
        text = path.read_text(encoding="utf-8")
        if path.parent.name == "gpu":
            from rlhf_core.config import read_config_file

            assert "GPU" in text.splitlines()[1]
            data = read_config_file(path)
            assert data.get("device") == "cuda" and data.get("bf16", True) is True
            assert data.get("dtype") == "float32"  # master weights (bf16 autocast on CUDA)
        elif preset_command(path) != "demo":  # CPU presets: the built-in model and task
            data = tomllib.loads(text)
            assert data["model"].startswith("builtin") and data["dataset"].startswith("builtin")


def test_print_config_round_trips(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    run = tmp_path / "run"
    rc, out, _ = run_cli(
        [
            "grpo",
            "--config",
            str(preset_of("grpo")),
            "--num-samples",
            "8",
            "--run-dir",
            str(run),
            "--print-config",
        ],
        capsys,
    )
    assert rc == 0
    path = tmp_path / "c.toml"
    path.write_text(out)
    cfg = load_config(cli.GRPORunConfig, path)
    assert cfg.num_samples == 8 and cfg.reward_funcs == ["gold"] and cfg.run_dir == str(run)
    assert not run.exists()  # printing the config runs nothing


def test_config_errors_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["sft", "--batch_size", "0", "--print-config"], capsys)
    assert rc == 2 and "batch_size=0" in err
    rc, _, err = run_cli(["ppo", "--config", str(preset_of("ppo")), "--kl_coef", "x"], capsys)
    assert rc == 2 and "kl_coef" in err and "expected a number" in err
    rc, _, err = run_cli(["grpo", "--reward_funcs", "", "--print-config"], capsys)
    assert rc == 2 and "reward_funcs" in err and "--reward_model" in err
    rc, _, err = run_cli(
        ["label", "--reward_funcs", "gold", "--judge_model", "builtin:tiny", "--print-config"],
        capsys,
    )
    assert rc == 2 and "exactly one judge" in err
    rc, _, err = run_cli(["ppo", "--learning_rat", "3"], capsys)
    assert rc == 2 and "did you mean --learning_rate?" in err
    rc, _, err = run_cli(["sft", "--config", "no/such/file.toml"], capsys)
    assert rc == 2 and "does not exist" in err


# --------------------------------------------------------------------------------------------
# every command on its preset


@pytest.mark.parametrize("command", TRAINERS)
def test_trainer_command_runs_its_preset(
    command: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / command
    rc, out, err = run_cli(base_args(command, run), capsys)
    assert rc == 0, err
    saved = load_config(cli.COMMANDS[command].config, run / "config.toml")
    assert saved.total_steps == 2 and saved.run_dir == str(run)
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert (run / "checkpoints" / "latest").is_file()
    model_dir = run / ("reward_model" if command == "reward" else "model")
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    card = (model_dir / "README.md").read_text()  # the model card (tests/test_model_card.py)
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f'- "{command}"' in card and "## Final metrics" in card
    assert (run / "plots" / "metrics.png").stat().st_size > 1000
    assert f"{command}: run folder {run}" in out
    if command in ("ppo", "grpo", "rloo", "reinforce-pp", "best-of-n"):
        assert "reward/gold_reward" in rows[-1] and "kl" in rows[-1]


def test_label_writes_trl_pairs(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "label"
    rc, out, err = run_cli(base_args("label", run), capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) <= 6
    for r in rows:
        assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(r)
        assert r["chosen"] != r["rejected"] and 0 <= r["p_chosen"] <= 1
    summary = json.loads((run / "label_summary.json").read_text())
    assert summary["num_pairs"] == len(rows) and summary["judge"].startswith("reward")
    # the pairs load as a preference dataset and train a reward model
    from rlhf_core.data import load_preferences

    assert len(load_preferences(run / "preferences.jsonl")) == len(rows)


def test_eval_reports_rewards_and_kl(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "eval"
    rc, out, err = run_cli(base_args("eval", run), capsys)
    assert rc == 0, err
    res = json.loads((run / "eval.json").read_text())
    assert res["num_prompts"] == 4 and res["num_samples"] == 8
    assert abs(res["kl"]) < 1e-6  # the reference is the same built-in model
    assert "reward/gold_reward" in res
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all("reward/gold_reward" in s for s in samples)
    assert "reward/gold_reward" in out


# --------------------------------------------------------------------------------------------
# chaining, resume, data files, reward functions


def test_outputs_chain_into_the_next_command(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sft -> reward (on the SFT body) -> ppo (reward model, value from it) -> label with an LM
    judge (RLAIF) -> dpo on those pairs -> eval against the SFT reference."""
    sft, rm, ppo = tmp_path / "sft", tmp_path / "reward", tmp_path / "ppo"
    label, dpo, ev = tmp_path / "label", tmp_path / "dpo", tmp_path / "eval"
    assert run_cli(base_args("sft", sft), capsys)[0] == 0
    model = str(sft / "model")
    assert run_cli(base_args("reward", rm) + ["--model", model], capsys)[0] == 0
    rc, _, err = run_cli(
        base_args("ppo", ppo)
        + ["--model", model, "--reward_model", str(rm / "reward_model"), "--reward_funcs", ""],
        capsys,
    )
    assert rc == 0, err
    assert "reward/reward_model" in read_metrics(ppo)[-1]
    rc, out, err = run_cli(
        base_args("label", label)
        + ["--model", model, "--reward_funcs", "", "--judge_model", model],
        capsys,
    )
    assert rc == 0, err
    assert "LM judge" in out
    pairs = label / "preferences.jsonl"
    rc, _, err = run_cli(
        base_args("dpo", dpo) + ["--model", model, "--dataset", str(pairs), "--batch_size", "2"],
        capsys,
    )
    assert rc == 0, err
    rc, _, err = run_cli(
        base_args("eval", ev)
        + [
            "--model",
            str(ppo / "model"),
            "--reference",
            model,
            "--reward_model",
            str(rm / "reward_model"),
            "--reward_funcs",
            "gold",
        ],
        capsys,
    )
    assert rc == 0, err
    res = json.loads((ev / "eval.json").read_text())
    assert res["kl"] > 0 and "reward/reward_model" in res and "reward/combined" in res


def test_resume_continues_and_a_finished_run_says_so(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "sft"
    args = base_args("sft", run)
    args[args.index("--tensorboard") + 1] = "true"
    assert run_cli(args, capsys)[0] == 0
    assert any((run / "tensorboard").iterdir())  # TensorBoard events next to metrics.jsonl
    # --resume RUN_DIR reads RUN_DIR/config.toml; options still apply
    rc, out, err = run_cli(["sft", "--resume", str(run), "--total_steps", "3"], capsys)
    assert rc == 0, err
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert load_config(cli.SFTRunConfig, run / "config.toml").total_steps == 3
    rc, out, err = run_cli(["sft", "--resume", str(run)], capsys)
    assert rc == 0 and "already finished" in out
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    # a new run may not silently reuse a folder that holds checkpoints
    rc, _, err = run_cli(base_args("sft", run) + ["--resume", "false"], capsys)
    assert rc == 1 and "already holds checkpoints" in err
    rc, _, err = run_cli(["sft", "--resume", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and "config.toml" in err
    rc, _, err = run_cli(["sft", "--resume", str(run), "--config", str(preset_of("sft"))], capsys)
    assert rc == 2 and "--config" in err


def test_prompt_file_with_answers_and_a_verifiable_reward(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(3)]
    rows.append({"prompt": [{"role": "user", "content": "2+2="}], "answer": "4"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "grpo"
    rc, _, err = run_cli(
        base_args("grpo", run) + ["--dataset", str(data), "--reward_funcs", "exact_match"],
        capsys,
    )
    assert rc == 0, err
    assert "reward/exact_match_reward" in read_metrics(run)[-1]


def test_malformed_data_names_file_row_column_or_is_skipped(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    good = {"prompt": "tell me about the cat:", "chosen": " the cat is happy.", "rejected": " x"}
    lines = [json.dumps(good)] * 6 + [json.dumps({"prompt": "p", "chosen": "a"})]
    data.write_text("\n".join(lines) + "\n")
    args = base_args("reward", tmp_path / "r1") + ["--dataset", str(data)]
    rc, _, err = run_cli(args, capsys)
    assert rc == 1 and str(data) in err and "row 7" in err and "'rejected'" in err
    rc, _, err = run_cli(
        base_args("reward", tmp_path / "r2") + ["--dataset", str(data), "--data_on_error", "skip"],
        capsys,
    )
    assert rc == 0, err
    assert "skipped" in err
    rc, _, err = run_cli(base_args("sft", tmp_path / "s") + ["--dataset", "nope.jsonl"], capsys)
    assert rc == 2 and "dataset='nope.jsonl'" in err
    rc, _, err = run_cli(base_args("sft", tmp_path / "s") + ["--model", "no/such/dir"], capsys)
    assert rc == 2 and "model='no/such/dir'" in err and "no such local folder" in err
    assert "not a Hugging Face Hub id" in err


def test_reward_function_specs(tmp_path: pathlib.Path) -> None:
    from rlhf_core import tasks

    assert cli.resolve_reward_function("gold") is tasks.gold_reward
    assert cli.resolve_reward_function("rlhf_core.tasks:arithmetic_reward") is (
        tasks.arithmetic_reward
    )
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def brevity(prompts, completions, **columns):\n"
        "    return [-len(c) / 10 for c in completions]\n"
        "class K:\n"
        "    @staticmethod\n"
        "    def score(prompts, completions):\n"
        "        return [1.0] * len(completions)\n"
        "NOT_CALLABLE = 3\n"
    )
    fn = cli.resolve_reward_function(f"{f}:brevity")
    assert fn(["p"], ["abcd"]) == [-0.4]
    assert cli.resolve_reward_function(f"{f}:K.score")(["p"], ["x"]) == [1.0]
    cases = {
        "nocolon": "not 'module:function'",
        "no_such_module_xyz:f": "cannot import",
        "rlhf_core.tasks:nope": "has no attribute 'nope'",
        f"{f}:NOT_CALLABLE": "not a function",
        f"{tmp_path / 'missing.py'}:f": "no such file",
    }
    for spec, message in cases.items():
        with pytest.raises(cli.CLIError, match=message):
            cli.resolve_reward_function(spec, field_name="reward_funcs[0]")


def test_entry_point_and_python_m() -> None:
    exe = pathlib.Path(sys.executable).with_name("rlhf-core")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the package installs the script next to the interpreter (pyproject [project.scripts])
    assert exe.exists(), f"rlhf-core entry point missing next to {sys.executable}"
    for argv in ([str(exe), "--help"], [sys.executable, "-m", "rlhf_core", "ppo", "--help"]):
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "rlhf-core" in res.stdout
    assert "--kl_coef" in res.stdout


# --------------------------------------------------------------------------------------------
# reward sources of weight 0 (combined as training combines them)

_UNSCORABLE = (
    "def unscorable(prompts, completions, **columns):\n    return [None] * len(completions)\n"
)
def test_eval_ignores_a_weight_zero_source_that_cannot_score(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "unscorable.py"
    f.write_text(_UNSCORABLE)
    run = tmp_path / "eval"
    args = base_args("eval", run) + ["--reward_funcs", f"gold,{f}:unscorable"]
    rc, _, err = run_cli(args + ["--reward_weights", "1,0"], capsys)
    assert rc == 0, err
    res = json.loads((run / "eval.json").read_text())
    assert res["reward/unscorable/frac_unscorable"] == 1.0  # the source did run
    assert res["reward/combined"] is not None  # JSON null = NaN
    assert res["reward/combined"] == pytest.approx(res["reward/gold_reward"], rel=1e-12)


def test_label_ignores_a_weight_zero_source_that_cannot_score(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "unscorable.py"
    f.write_text(_UNSCORABLE)
    gold_only, with_zero = tmp_path / "gold", tmp_path / "zero"
    assert run_cli(base_args("label", gold_only), capsys)[0] == 0
    args = base_args("label", with_zero) + ["--reward_funcs", f"gold,{f}:unscorable"]
    rc, _, err = run_cli(args + ["--reward_weights", "1,0"], capsys)
    assert rc == 0, err
    expected = (gold_only / "preferences.jsonl").read_text()
    assert expected.strip()  # the gold judge labelled some pairs
    assert (with_zero / "preferences.jsonl").read_text() == expected


def test_empty_answers_written_by_label_are_read_by_dpo_and_reward(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What one command writes, the next reads (issue 18, item 11): a policy that often stops
    at once gives pairs with an empty side; label writes them as they are, and dpo and reward
    train on them."""
    from rlhf_core import tasks

    data = tmp_path / "half_empty.jsonl"
    rows = tasks.sft_corpus(400, seed=0)
    data.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "completion": "" if i % 2 else r["completion"]})
            + "\n"
            for i, r in enumerate(rows)
        )
    )
    sft, label = tmp_path / "sft", tmp_path / "label"
    args = base_args("sft", sft) + ["--dataset", str(data), "--total_steps", "40"]
    assert run_cli(args + ["--batch_size", "16"], capsys)[0] == 0
    model = str(sft / "model")
    args = base_args("label", label) + ["--model", model, "--num_prompts", "32"]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    pairs = [json.loads(line) for line in (label / "preferences.jsonl").read_text().splitlines()]
    empty = [p for p in pairs if "" in (p["chosen"], p["rejected"])]
    assert empty, "the policy should stop at once in some samples"
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    for command in ("dpo", "reward"):
        run = tmp_path / command
        args = base_args(command, run) + [
            "--model",
            model,
            "--dataset",
            str(label / "preferences.jsonl"),
        ]
        rc, _, err = run_cli(args, capsys)
        assert rc == 0, err
        assert "skipped" not in err  # every pair was read
        assert [r["step"] for r in read_metrics(run)] == [1, 2]
