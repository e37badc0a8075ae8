"""The parts of the ``rlhf-core`` package one by one: the command table answers ``--help``
without torch, the error messages of the parser, ``--resume`` words, eval's combined reward.

Whole commands run in ``tests/test_cli.py``.
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, is_dataclass
from typing import Any

import numpy as np
import pytest

from rlhf_core.cli import parser as P
from rlhf_core.config import BOOL_WORDS, load_config


@dataclass
class _Resume:
    resume: bool = True


def test_top_help_and_a_mistyped_command_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from rlhf_core.cli import main\n"
        "assert main(['--help']) == 0 and main(['gpro']) == 2 and main(['-V']) == 0\n"
        "heavy = sorted({'torch', 'transformers', 'rlhf_core.trainers', 'rlhf_core.demo'}"
        " & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "usage: rlhf-core" in res.stdout and "did you mean 'grpo'" in res.stderr


def test_every_command_resolves_its_config_and_runner() -> None:
    for name, cmd in P.COMMANDS.items():
        assert cmd.name == name
        assert is_dataclass(cmd.config), name
        assert callable(cmd.run), name
        assert cmd.run.__name__.startswith("run_"), name


def test_unknown_option_message_names_the_first_option_and_the_closest() -> None:
    parser = P.build_parser("ppo")
    msg = P.unknown_option_message("ppo", parser, ["stray", "--kl-coeff=3"])
    assert "unrecognized argument '--kl-coeff=3'" in msg and "did you mean --kl-coef?" in msg
    msg = P.unknown_option_message("ppo", parser, ["stray"])
    assert "unrecognized argument 'stray'" in msg and "did you mean" not in msg
    assert msg.endswith("(rlhf-core ppo --help lists the options)")


def test_unknown_command_message() -> None:
    assert "did you mean 'best-of-n'" in P.unknown_command_message("best-of-m")
    assert "did you mean" not in P.unknown_command_message("zzzzzz")
    with pytest.raises(KeyError, match="unknown command 'nope'"):
        P.build_parser("nope")


@pytest.mark.parametrize("word", sorted(BOOL_WORDS) + ["TRUE", " Off "])
def test_resume_words_are_the_boolean_words_of_the_configs(word: str) -> None:
    # --resume <word> keeps the run folder of --run_dir; the config reads the same word as a bool
    assert P.apply_resume({"resume": word}, "x.toml") == ("x.toml", {"resume": word})

    truthy = word.strip().lower() in {"true", "1", "yes", "on", "y", "t"}
    assert load_config(_Resume, overrides={"resume": word}).resume is truthy


def test_resume_run_dir(tmp_path: pathlib.Path) -> None:
    with pytest.raises(P.CLIError, match="expected true/false or a run folder"):
        P.apply_resume({"resume": str(tmp_path)}, None)
    (tmp_path / "config.toml").write_text("seed = 1\n")
    toml, out = P.apply_resume({"resume": str(tmp_path), "seed": "2"}, None)
    assert toml == str(tmp_path / "config.toml")
    assert out == {"resume": "true", "seed": "2", "run_dir": str(tmp_path)}
    _, out = P.apply_resume({"resume": str(tmp_path), "run_dir": "elsewhere"}, None)
    assert out["run_dir"] == "elsewhere"
    with pytest.raises(P.CLIError, match="do not also pass --config"):
        P.apply_resume({"resume": str(tmp_path)}, "other.toml")


def _policy_eval(scores: dict[str, list[float]]) -> Any:
    from rlhf_core.evaluation import PolicyEval

    n = len(next(iter(scores.values())))
    return PolicyEval(
        prompts=["p"] * n,
        texts=[f"c{i}" for i in range(n)],
        scores={k: np.asarray(v, dtype=np.float64) for k, v in scores.items()},
        kl=None,
        response_lengths=np.ones(n, dtype=np.int64),
        truncated=np.zeros(n, dtype=bool),
    )


def test_eval_combined_reward_is_the_weighted_sum_over_scorable_samples() -> None:
    from rlhf_core.cli.commands.eval import combined_reward

    ev = _policy_eval({"a": [1.0, math.nan, 3.0, 0.5], "b": [2.0, 2.0, -2.0, 0.25]})
    # rows: 1 + 0.5*2 = 2; NaN (a cannot score); 3 - 1 = 2; 0.5 + 0.125 = 0.625
    assert combined_reward(ev, [1.0, 0.5]) == (2.0 + 2.0 + 0.625) / 3
    assert combined_reward(ev, None) == (3.0 + 1.0 + 0.75) / 3
    assert math.isnan(combined_reward(_policy_eval({"a": [math.nan], "b": [1.0]}), None))
    with pytest.raises(ValueError, match="weights has 1 entries, funcs has 2"):
        combined_reward(ev, [1.0])
