"""Reward ensembles and check models from the command line: ``rlhf-core reward --ensemble K
--check_fraction F`` writes an ensemble (and its members) and a check model; the RL commands
optimise the ensemble with ``--ensemble_reduce``, log ``--check_model`` beside it and stop on
the gold-free signals with ``--gold_free_stop``."""

from __future__ import annotations

import json
import pathlib

import pytest

from rlhf_core import cli
from rlhf_core.models import RewardEnsemble, RewardModel, load_reward_model
from rlhf_core.monitor import read_metrics

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
QUIET = ["--progress_bar", "false", "--tensorboard", "false"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _reward(run: pathlib.Path, *extra: str) -> list[str]:
    return [
        "reward", "--config", str(CONFIGS / "reward.toml"), "--run-dir", str(run),
        "--total_steps", "2", "--batch_size", "4", "--dataset_size", "60", *QUIET, *extra,
    ]  # fmt: skip


def test_reward_ensemble_and_check_model(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "rm"
    rc, out, err = run_cli(
        _reward(run, "--ensemble", "3", "--check_fraction", "0.5", "--save_members", "true"),
        capsys,
    )
    assert rc == 0, err
    ens = load_reward_model(run / "reward_model")
    assert isinstance(ens, RewardEnsemble) and ens.num_members == 3
    for k in range(3):
        assert isinstance(load_reward_model(run / "reward_model" / "members" / f"member_{k}"),
                          RewardModel)  # fmt: skip
    check = load_reward_model(run / "check_model")
    assert isinstance(check, RewardModel)
    assert "check model saved to" in out and "reward model saved to" in out
    # the two trainers had the same held-out pairs and disjoint training pairs
    assert [r["step"] for r in read_metrics(run / "check")] == [1, 2]
    last = read_metrics(run)[-1]
    assert "eval/member_accuracy" in last and "eval/margin_std" in last
    # a rerun trains nothing
    rc, out, _ = run_cli(
        _reward(run, "--ensemble", "3", "--check_fraction", "0.5", "--save_members", "true"),
        capsys,
    )
    assert rc == 0 and "already" in out

    grpo = tmp_path / "grpo"
    rc, _, err = run_cli(
        [
            "grpo", "--config", str(CONFIGS / "grpo.toml"), "--run-dir", str(grpo),
            "--total_steps", "2", "--rollout_batch_size", "8", "--max_new_tokens", "12", *QUIET,
            "--reward_model", str(run / "reward_model"), "--check_model", str(run / "check_model"),
            "--ensemble_reduce", "mean_minus_std", "--ensemble_lambda", "0.5",
        ],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    row = read_metrics(grpo)[-1]
    for key in ("reward/reward_ensemble", "reward/reward_ensemble/std", "reward/check_model",
                "reward/gold_reward", "reward/reward_ensemble/member_2"):  # fmt: skip
        assert key in row, key
    # the check model is tracked with weight 0: the reward is the ensemble plus gold (weight 1)
    assert row["reward/mean"] == pytest.approx(
        row["reward/reward_ensemble"] + row["reward/gold_reward"], rel=1e-9
    )

    # the gold-free stop from the command line: a sqrt(KL) budget of 1e-6 stops the run once
    # the policy has moved (every step: no eval dataset), the kept model is saved
    gf = tmp_path / "grpo-gf"
    rc, out, err = run_cli(
        [
            "grpo", "--config", str(CONFIGS / "grpo.toml"), "--run-dir", str(gf),
            "--total_steps", "8", "--rollout_batch_size", "8", "--max_new_tokens", "12", *QUIET,
            "--learning_rate", "3e-3", "--reward_funcs", "",
            "--reward_model", str(run / "reward_model"), "--check_model", str(run / "check_model"),
            "--gold_free_stop", "--gold_free_max_sqrt_kl", "1e-6", "--gold_free_patience", "1",
            "--gold_free_max_disagreement_ratio", "none", "--gold_free_max_check_gap", "none",
            "--gold_free_max_check_drop", "none",
        ],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    summary = json.loads((gf / "gold_free.json").read_text())
    steps = [r["step"] for r in read_metrics(gf)]
    assert summary["stop_step"] == steps[-1] < 8 and summary["reasons"] == ["sqrt_kl"]
    kept = json.loads((gf / "gold_free_best" / "gold_free_step.json").read_text())
    assert kept["step"] == summary["best_step"] < summary["stop_step"]
    assert "model kept by the gold-free stop saved to" in out


def test_bad_ensemble_options(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(_reward(tmp_path / "a", "--ensemble", "0"), capsys)
    assert rc == 2 and "ensemble=0" in err
    rc, _, err = run_cli(_reward(tmp_path / "b", "--check_fraction", "1"), capsys)
    assert rc == 2 and "check_fraction=1" in err
    rc, _, err = run_cli(
        ["grpo", "--config", str(CONFIGS / "grpo.toml"), "--run-dir", str(tmp_path / "c"),
         "--check_model", str(tmp_path / "nowhere"), *QUIET],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "check_model=" in err and "no such folder" in err
    rc, _, err = run_cli(
        ["grpo", "--config", str(CONFIGS / "grpo.toml"), "--ensemble_reduce", "max"], capsys
    )
    assert rc == 2 and "ensemble_reduce" in err
    rc, _, err = run_cli(
        ["grpo", "--config", str(CONFIGS / "grpo.toml"), "--gold_free_stop",
         "--gold_free_patience", "0", *QUIET],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "gold_free_patience" in err
    rc, _, err = run_cli(
        ["grpo", "--config", str(CONFIGS / "grpo.toml"), "--gold_free_stop",
         "--gold_free_max_kl_growth", "0", *QUIET],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "gold_free_max_kl_growth" in err
