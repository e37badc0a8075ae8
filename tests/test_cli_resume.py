"""``--resume`` from the command line keeps the run it continues (issue 18, findings 2, 3, 5):
options set to none stay none, a refused resume leaves the record as it was, a finished run is
not rewritten, and relative paths mean what they meant when the run started."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlhf_core import cli
from rlhf_core.monitor import read_metrics

RL = ["--model", "builtin:tiny", "--dataset", "builtin:language", "--rollout_batch_size", "4", "--num_samples", "2", "--max_new_tokens", "6",
      "--learning_rate", "0.05", "--progress_bar", "false", "--tensorboard", "false",
      "--dataset_size", "16", "--device", "cpu", "--reward_funcs", "gold"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the same bits in every run of a test


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out + out.err


def weights(run_dir: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: pathlib.Path, b: pathlib.Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"}
            for r in rows]  # fmt: skip


NONE_OPTIONS = {
    "grpo": ["--max_grad_norm", "none", "--kl_clamp", "none", "--log_ratio_clamp", "none",
             "--kl_coef", "0.1"],
    "ppo": ["--value_clip", "none", "--max_grad_norm", "none", "--kl_clamp", "none"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(NONE_OPTIONS))
def test_options_set_to_none_survive_resume(
    command: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 2: config.toml wrote None as a comment, so `--max_grad_norm none` resumed with
    clipping at 1.0 (kl_clamp, log_ratio_clamp, PPO's value_clip alike) and the final weights
    differed from the uninterrupted run's."""
    args = [command, *RL, *NONE_OPTIONS[command]]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    rc, out = run([*args, "--run_dir", str(straight), "--total_steps", "3"], capsys)
    assert rc == 0, out
    rc, out = run([*args, "--run_dir", str(parts), "--total_steps", "2"], capsys)
    assert rc == 0, out
    rc, out = run([command, "--resume", str(parts), "--total_steps", "3"], capsys)
    assert rc == 0, out
    assert strip(read_metrics(parts)) == strip(read_metrics(straight))
    assert_same_weights(parts, straight)
    rec = json.loads((parts / "run.json").read_text())["config"]
    for opt in NONE_OPTIONS[command][::2]:
        name = opt.removeprefix("--")
        if NONE_OPTIONS[command][NONE_OPTIONS[command].index(opt) + 1] == "none":
            assert rec[name] is None, name
            assert f'{name} = "none"' in (parts / "config.toml").read_text()


def test_a_refused_resume_leaves_the_run_as_it_was(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 3: a resume that failed (another --seed, another --model) left its value in
    config.toml, and every later plain --resume failed until the file was edited by hand."""
    run_dir = tmp_path / "run"
    rc, out = run(["grpo", *RL, "--run_dir", str(run_dir), "--total_steps", "1"], capsys)
    assert rc == 0, out
    other_model = tmp_path / "other_model"
    rc, out = run(["sft", "--model", "builtin:tiny", "--dataset", "builtin:language",
                   "--run_dir", str(tmp_path / "sft"), "--total_steps", "1",
                   "--batch_size", "2", "--dataset_size", "8", "--progress_bar", "false",
                   "--tensorboard", "false"], capsys)  # fmt: skip
    assert rc == 0, out
    (tmp_path / "sft" / "model").rename(other_model)
    names = [n for n in ("config.toml", "run.json") if (run_dir / n).is_file()]
    saved = {n: (run_dir / n).read_bytes() for n in names}
    rc, out = run(["grpo", "--resume", str(run_dir), "--model", str(other_model),
                   "--total_steps", "2"], capsys)
    assert rc == 1 and f"model: 'builtin:tiny' (saved) vs '{other_model}' (now)" in out, out
    assert {n: (run_dir / n).read_bytes() for n in saved} == saved
    rc, out = run(["grpo", "--resume", str(run_dir), "--seed", "5", "--total_steps", "2"], capsys)
    assert rc == 1 and "seed: 0 (saved) vs 5 (now)" in out, out
    assert {n: (run_dir / n).read_bytes() for n in saved} == saved
    assert sorted(saved) == ["config.toml", "run.json"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1]
    rc, out = run(["grpo", "--resume", str(run_dir), "--total_steps", "2"], capsys)
    assert rc == 0, out
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert json.loads((run_dir / "run.json").read_text())["config"]["total_steps"] == 2


def test_a_finished_run_is_reported_not_rewritten(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    rc, out = run(["grpo", *RL, "--run_dir", str(run_dir), "--total_steps", "1"], capsys)
    assert rc == 0, out
    files = ("config.toml", "metrics.jsonl", "run.json")
    before = {n: (run_dir / n).stat() for n in files if (run_dir / n).exists()}
    rc, out = run(["grpo", "--resume", str(run_dir)], capsys)
    assert rc == 0 and "already finished" in out
    for n, st in before.items():
        now = (run_dir / n).stat()
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns,
                                                              st.st_size), n  # fmt: skip
    assert sorted(before) == sorted(files)


_REWARD = "def score(prompts, completions, **columns):\n    return [{} for c in completions]\n"


def test_a_resume_from_another_folder_reads_the_same_reward_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 5: relative paths in the saved config were resolved against the working folder
    of the resume: a resume from another folder loaded another reward file and trained on it."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "reward.py").write_text(_REWARD.format("1.0 + len(c)"))
    (second / "reward.py").write_text(_REWARD.format("-100.0"))
    run_dir = tmp_path / "run"
    args = ["grpo", *RL, "--reward_funcs", "reward.py:score", "--run_dir", str(run_dir)]
    monkeypatch.chdir(first)
    rc, out = run([*args, "--total_steps", "1"], capsys)
    assert rc == 0, out
    monkeypatch.chdir(second)
    rc, out = run(["grpo", "--resume", str(run_dir), "--total_steps", "2"], capsys)
    assert rc == 0, out
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["reward/score"] >= 1.0  # first/reward.py, not second's -100
    rec = json.loads((run_dir / "run.json").read_text())["config"]
    assert rec["reward_funcs"] == [f"{first / 'reward.py'}:score"]
    # the same command line from another folder names another file: refused, naming it
    rc, out = run([*args, "--total_steps", "3"], capsys)
    assert rc == 1 and "reward_funcs" in out and str(second / "reward.py") in out, out


def test_a_run_stopped_after_its_last_checkpoint_saves_its_final_model_on_resume(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed between the last checkpoint and the final model (found by the kill-at-random
    test): the resume loads that checkpoint and writes the model the run would have written;
    a resume of a run whose model is there still trains and writes nothing."""
    run_dir = tmp_path / "run"
    args = ["grpo", *RL, "--run_dir", str(run_dir), "--total_steps", "2"]
    rc, out = run(args, capsys)
    assert rc == 0, out
    want = weights(run_dir)
    shutil.rmtree(run_dir / "model")  # what a kill right after the last checkpoint leaves
    rc, out = run(["grpo", "--resume", str(run_dir)], capsys)
    assert rc == 0 and "final model was not saved" in out, out
    got = weights(run_dir)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert "## " in (run_dir / "model" / "README.md").read_text()  # with its model card
    rc, out = run(["grpo", "--resume", str(run_dir)], capsys)
    assert rc == 0 and "already finished" in out and "not saved" not in out, out
