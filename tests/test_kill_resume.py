"""Killed at a random point and resumed, every trainer ends where an uninterrupted run ends.

For each training command (SFT, reward, DPO, PPO, GRPO, RLOO, REINFORCE++, best-of-N), with
options away from their defaults and some set to ``none``: a ``python -m rlhf_core`` process
saving a checkpoint every step is killed with SIGKILL from outside at a random moment (after a
random number of logged steps, plus a random fraction of a step: mid-step, mid-checkpoint
write, mid-log), then ``rlhf-core <command> --resume RUN_DIR`` continues it. Its metrics and the
final model's weights must equal, bit for bit, those of the same command run without
interruption (all on one CPU thread). The seed of the random points is printed on failure
(``KILL_SEED=<n>`` reproduces them).
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlhf_core import cli
from rlhf_core.monitor import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS = 6
SEED = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
COMMON = ["--device", "cpu", "--progress_bar", "false", "--tensorboard", "false",
          "--save_every", "1", "--max_grad_norm", "none", "--total_steps", str(TOTAL_STEPS)]
RL = ["--max_new_tokens", "6", "--learning_rate", "0.01", "--kl_coef", "0.05",
      "--kl_clamp", "none", "--log_ratio_clamp", "none", "--dataset_size", "32"]  # fmt: skip

#: command -> options besides its preset's (non-default, several set to none)
OPTIONS: dict[str, list[str]] = {
    "sft": ["--batch_size", "4", "--dataset_size", "48", "--lr_scheduler", "linear",
            "--warmup_steps", "2", "--weight_decay", "0.01"],
    "reward": ["--batch_size", "4", "--dataset_size", "48", "--lr_scheduler", "cosine",
               "--eval_every", "2"],
    "dpo": ["--batch_size", "4", "--dataset_size", "32", "--loss_type", "ipo", "--beta", "0.2"],
    "ppo": [*RL, "--rollout_batch_size", "4", "--minibatch_size", "2", "--ppo_epochs", "2",
            "--value_clip", "none", "--kl_target", "1.0", "--missing_eos_penalty", "0.5"],
    "grpo": [*RL, "--rollout_batch_size", "8", "--num_samples", "4", "--minibatch_size", "4",
             "--ppo_epochs", "2", "--clip_high", "0.28", "--loss_type", "dr_grpo"],
    "rloo": [*RL, "--rollout_batch_size", "8", "--num_samples", "4", "--entropy_coef", "0.01"],
    "reinforce-pp": [*RL, "--rollout_batch_size", "8", "--num_samples", "2",
                     "--micro_batch_size", "3"],
    "best-of-n": ["--max_new_tokens", "6", "--rollout_batch_size", "8", "--num_samples", "4",
                  "--dataset_size", "32", "--learning_rate", "0.01"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the killed process runs with OMP_NUM_THREADS=1


def args_of(command: str, run: pathlib.Path) -> list[str]:
    preset = ROOT / "configs" / f"{command.replace('-', '_')}.toml"
    return [command, "--config", str(preset), *COMMON, *OPTIONS[command], "--run_dir", str(run)]


def model_files(run: pathlib.Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = run / ("reward_model" if (run / "reward_model").is_dir() else "model")
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}


def logged(run: pathlib.Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"}
            for r in read_metrics(run)]  # fmt: skip


def kill_at_random(command: str, run: pathlib.Path, rng: random.Random) -> tuple[int, float]:
    """Start the command in a process of its own and SIGKILL it after ``k`` logged steps plus
    ``delay`` seconds; returns (k, delay)."""
    k, delay = rng.randint(1, TOTAL_STEPS - 3), rng.uniform(0.0, 0.25)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_core", *args_of(command, run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while True:
            rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
            if len(rows) >= k:
                break
            if proc.poll() is not None:
                pytest.fail(f"{command} ended before it was killed:\n{proc.communicate()[1]}")
            assert time.monotonic() < deadline, f"{command}: no step {k} within 600 s"
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
    return k, delay


@pytest.mark.parametrize("command", list(OPTIONS))
def test_killed_and_resumed_equals_uninterrupted(
    command: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(f"{SEED}-{command}")
    straight, run = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(args_of(command, straight)) == 0, capsys.readouterr().err
    k, delay = kill_at_random(command, run, rng)
    where = f"KILL_SEED={SEED}: killed after step {k} + {delay:.3f} s"
    rc = cli.main([command, "--resume", str(run)])
    out = capsys.readouterr()
    assert rc == 0, f"{where}\n{out.err[-3000:]}"
    assert logged(run) == logged(straight), where
    got, want = model_files(run), model_files(straight)
    assert sorted(got) == sorted(want) and want, where
    for name, tensors in want.items():
        assert sorted(got[name]) == sorted(tensors), (where, name)
        for key, t in tensors.items():
            assert torch.equal(got[name][key], t), (where, name, key)
