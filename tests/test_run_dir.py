"""A run folder belongs to one run (issue 18, finding 1 and 4): refused paths, the lock (held,
named in the error, taken over when its holder died), folders holding something else, the
record a resume is checked against, and what a resume may change."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from rlhf_core import cli
from rlhf_core.run_dir import (
    LOCK_FILE,
    MAY_CHANGE_ON_RESUME,
    RunDirError,
    RunFolder,
    check_run_dir_path,
    config_changes,
    config_record,
    lock_run_dir,
    read_record,
    release_run_dir,
)
from rlhf_core.testing.trainers import FAST, policy, tokenizer
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer


def make_sft(run: pathlib.Path | str, **kw: Any) -> SFTTrainer:
    cfg = SFTConfig(run_dir=str(run), learning_rate=1e-3, batch_size=3, **FAST, **kw)
    return SFTTrainer(cfg, policy(), tokenizer(), [("1+1=", "2"), ("2+2=", "4"), "hello"] * 3)


def sft_args(run: pathlib.Path | str, *extra: str) -> list[str]:
    return ["sft", "--model", "builtin:tiny", "--dataset", "builtin:language",
            "--run_dir", str(run), "--total_steps", "1", "--batch_size", "4",
            "--dataset_size", "40", "--progress_bar", "false", "--tensorboard", "false",
            *extra]  # fmt: skip


# --------------------------------------------------------------------------------------------
# paths


@pytest.mark.parametrize("bad", ["", "  ", "/", "~", "~/runs/x"])
def test_refused_paths(bad: str) -> None:
    with pytest.raises(RunDirError, match="run_dir"):
        check_run_dir_path(bad)


def test_home_folder_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RunDirError, match="home folder"):
        check_run_dir_path(str(tmp_path))
    assert check_run_dir_path(tmp_path / "runs" / "a") == tmp_path / "runs" / "a"


@pytest.mark.parametrize("bad", ["", "/"])
def test_cli_refuses_empty_and_root_run_dir(
    bad: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding 4: `--run_dir ""` wrote the run into the current folder over an unrelated
    config.toml and model/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("mine = 1\n")
    (tmp_path / "model").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli.main(sft_args(bad))
    err = capsys.readouterr().err
    assert rc == 2 and "run_dir" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "config.toml").read_text() == "mine = 1\n"


def test_python_api_refuses_empty_run_dir(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="run_dir is empty"):
        make_sft("", total_steps=1).train()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# what a folder may hold


def test_a_folder_holding_other_files_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 4: any existing folder without checkpoints/ was written into."""
    other = tmp_path / "project"
    other.mkdir()
    (other / "config.toml").write_text("unrelated = true\n")
    (other / "notes.txt").write_text("keep me\n")
    with pytest.raises(RunDirError, match=r"not an rlhf_core run's \(config.toml, notes.txt\)"):
        make_sft(other, total_steps=1).train()
    rc = cli.main(sft_args(other))
    assert rc == 1 and "not an rlhf_core run's" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.toml", "notes.txt"]  # untouched
    assert (other / "config.toml").read_text() == "unrelated = true\n"
    # an empty folder (or one holding only the lock file) is a new run's
    empty = tmp_path / "empty"
    empty.mkdir()
    make_sft(empty, total_steps=1).train()
    assert (empty / "run.json").is_file()


def test_record_is_written_and_read(tmp_path: pathlib.Path) -> None:
    trainer = make_sft(tmp_path / "run", total_steps=1, max_grad_norm=None)
    trainer.train()
    rec = read_record(tmp_path / "run")
    assert rec is not None and rec["kind"] == "sft"
    assert rec["config"]["max_grad_norm"] is None  # lossless: none stays none
    assert rec["config"] == config_record(trainer.config)
    text = (tmp_path / "run" / "config.toml").read_text()
    assert 'max_grad_norm = "none"' in text


def test_a_run_of_another_trainer_is_refused(tmp_path: pathlib.Path) -> None:
    make_sft(tmp_path, total_steps=1).train()
    cfg = GRPOConfig(run_dir=str(tmp_path), rollout_batch_size=4, num_samples=2,
                     max_new_tokens=4, **FAST)  # fmt: skip
    trainer = GRPOTrainer(cfg, policy(), tokenizer(), ["a", "b"], lambda p, c, **k: [1.0] * len(c))
    with pytest.raises(RunDirError, match="written by the 'sft' trainer"):
        trainer.train()


def test_resume_with_changed_options_is_refused(tmp_path: pathlib.Path) -> None:
    make_sft(tmp_path, total_steps=1, max_grad_norm=None).train()
    with pytest.raises(RunDirError) as info:
        make_sft(tmp_path, total_steps=2, max_grad_norm=1.0, seed=3).train()
    msg = str(info.value)
    assert "max_grad_norm: none (saved) vs 1.0 (now)" in msg
    assert "seed: 0 (saved) vs 3 (now)" in msg
    assert "total_steps" in msg  # listed among those that may change
    # options that may change: total_steps, logging, device
    res = make_sft(tmp_path, total_steps=2, max_grad_norm=None, save_every=1, keep_last=3).train()
    assert res.step == 2
    assert read_record(tmp_path)["config"]["total_steps"] == 2  # type: ignore[index]


def test_config_changes_rules() -> None:
    a = SFTConfig(max_grad_norm=None)
    saved = config_record(a)
    assert config_changes(saved, a) == []
    b = SFTConfig(max_grad_norm=None, total_steps=7, device="cpu", progress_bar=False)
    assert config_changes(saved, b) == []
    c = SFTConfig(max_grad_norm=2.0, learning_rate=1e-3)
    assert {k for k, _, _ in config_changes(saved, c)} == {"max_grad_norm", "learning_rate"}
    # an option missing from an older record counts as its default
    older = {k: v for k, v in saved.items() if k != "weight_decay"}
    assert config_changes(older, a) == []
    assert [k for k, _, _ in config_changes(older, SFTConfig(max_grad_norm=None,
                                                             weight_decay=0.1))] == [
        "weight_decay"
    ]  # fmt: skip
    assert {"total_steps", "device", "progress_bar", "tensorboard"} <= MAY_CHANGE_ON_RESUME


def test_non_finite_values_are_recorded() -> None:
    rec = config_record(SFTConfig(max_grad_norm=float("inf")))
    assert rec["max_grad_norm"] == "inf"
    json.dumps(rec, allow_nan=False)  # plain JSON


def test_a_finished_run_is_not_rewritten(tmp_path: pathlib.Path) -> None:
    make_sft(tmp_path, total_steps=1).train()
    stamp = {n: (tmp_path / n).stat() for n in ("run.json", "config.toml")}
    res = make_sft(tmp_path, total_steps=1).train()
    assert res.already_finished
    for n, st in stamp.items():
        now = (tmp_path / n).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), n


# --------------------------------------------------------------------------------------------
# the lock

_HOLD = (
    "import sys, time\n"
    "from rlhf_core.run_dir import lock_run_dir\n"
    "lock_run_dir(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def _holder(folder: pathlib.Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_folder_is_refused_naming_the_holder(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 1: two processes on one run folder mixed two runs' files and both exited 0."""
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunDirError) as info:
            make_sft(run, total_steps=1).train()
        msg = str(info.value)
        assert f"PID {proc.pid}" in msg and os.uname().nodename in msg and LOCK_FILE in msg
        rc = cli.main(sft_args(run))
        assert rc == 1 and f"PID {proc.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing else written
    finally:
        proc.kill()
        proc.communicate()


def test_a_stale_lock_is_taken_over(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    proc = _holder(run)
    os.kill(proc.pid, signal.SIGKILL)  # dies holding it: the file still names it
    proc.communicate()
    assert str(proc.pid) in (run / LOCK_FILE).read_text()
    with caplog.at_level("WARNING", logger="rlhf_core.run_dir"):
        make_sft(run, total_steps=1).train()
    assert f"took over the lock left by PID {proc.pid}" in caplog.text
    held = json.loads((run / LOCK_FILE).read_text())
    assert held["pid"] == os.getpid()
    assert release_run_dir(run)
    assert (run / LOCK_FILE).read_text() == ""  # released cleanly: nothing stale left


def test_lock_is_reentrant_in_one_process_and_released(tmp_path: pathlib.Path) -> None:
    lock_run_dir(tmp_path / "a")
    lock_run_dir(tmp_path / "a")  # the same process: a second trainer on the same run
    folder = RunFolder.claim(tmp_path / "a", kind="sft")
    assert folder.is_new
    assert release_run_dir(tmp_path / "a") and not release_run_dir(tmp_path / "a")


def test_a_second_cli_run_stops_while_the_first_trains(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started on a folder another `rlhf-core` process is training in, a run stops at once
    naming it, and writes nothing; the first one's files are untouched."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "rlhf_core", *sft_args(run)]
    argv[argv.index("--total_steps") + 1] = "100000"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").stat().st_size:
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        record = (run / "run.json").read_text()
        rc = cli.main(sft_args(run, "--seed", "1"))
        err = capsys.readouterr().err
        assert rc == 1 and f"PID {first.pid}" in err and "in use by another process" in err
        assert (run / "run.json").read_text() == record
    finally:
        first.kill()
        first.communicate()
