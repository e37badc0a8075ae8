"""The demo's stage protocol (rlhf_core.demo.pipeline) without training anything: a stage's
results saved and found again, a trainer driven from evaluation point to evaluation point and
resumed after an interruption, and the run-folder checks."""

from __future__ import annotations

import io
import json
import math
import pathlib
import time
from types import SimpleNamespace
from typing import Any

import pytest

from rlhf_core.demo import load_demo_config
from rlhf_core.demo.pipeline import Run, latest_step


class FakeTrainer:
    """Stands in for a trainer: ``train(stop_at_step=t)`` "trains" to t and checkpoints there
    (a ``step_<t>/meta.json`` folder, what :func:`rlhf_core.checkpoint.list_checkpoints`
    reads); ``load`` records that weights were loaded."""

    def __init__(self, run_dir: pathlib.Path, total_steps: int, global_step: int = 0) -> None:
        self.config = SimpleNamespace(run_dir=str(run_dir), total_steps=total_steps)
        self.run_dir = run_dir
        self.global_step = global_step
        self.calls: list[tuple[str, int]] = []

    def claim_run_dir(self) -> None:
        """The folder becomes the trainer's before anything is written into it."""
        self.claimed_first = not (self.run_dir / "evals.jsonl").exists()

    def train(self, stop_at_step: int) -> None:
        self.calls.append(("train", stop_at_step))
        self.global_step = stop_at_step
        ckpt = self.run_dir / "checkpoints" / f"step_{stop_at_step}"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text("{}")

    def load(self, run_dir: pathlib.Path) -> None:
        self.calls.append(("load", latest_step(run_dir)))
        self.global_step = latest_step(run_dir)


def make_run(tmp_path: pathlib.Path, **overrides: Any) -> Run:
    cfg = load_demo_config(
        quick=True, overrides={"run_dir": str(tmp_path / "run"), "progress_bar": False, **overrides}
    )
    return Run(cfg, out=io.StringIO())


def evaluator(log: list[int], nan_at: int | None = None) -> Any:
    def evaluate(step: int) -> dict[str, Any]:
        log.append(step)
        gold = math.nan if step == nan_at else 0.1 * step
        return {"step": step, "proxy": 0.2 * step, "gold": gold, "kl": 0.01 * step}

    return evaluate


def read_evals(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]


def test_train_with_evals_evaluates_every_slice(tmp_path: pathlib.Path) -> None:
    run = make_run(tmp_path)
    trainer = FakeTrainer(tmp_path / "ppo", total_steps=8)
    seen: list[int] = []
    first = {"step": 0, "proxy": 1.0, "gold": 1.0, "kl": 0.0, "seconds": 0.5}
    records = run.train_with_evals(trainer, "ppo", 3, evaluator(seen), first)
    assert trainer.calls == [("train", 3), ("train", 6), ("train", 8)]
    assert trainer.claimed_first
    assert seen == [3, 6, 8]  # step 0 is the record given, not evaluated again
    assert [r["step"] for r in records] == [0, 3, 6, 8] and records[0]["proxy"] == 1.0
    assert read_evals(tmp_path / "ppo") == records
    # without a first record, step 0 is evaluated before training
    seen.clear()
    other = FakeTrainer(tmp_path / "grpo", total_steps=4)
    records = run.train_with_evals(other, "grpo", 4, evaluator(seen), None)
    assert seen == [0, 4] and [r["step"] for r in records] == [0, 4]


def test_train_with_evals_resumes_after_an_interruption(tmp_path: pathlib.Path) -> None:
    """Trained and checkpointed to step 6, killed before evaluating it: the rerun trains no
    slice again, loads step 6 to evaluate it, keeps the evaluations up to the checkpoint
    (dropping a stale one past it) and goes on to the end."""
    run = make_run(tmp_path)
    folder = tmp_path / "ppo"
    trainer = FakeTrainer(folder, total_steps=9)
    trainer.train(3)
    trainer.train(6)
    stale = {"step": 9, "proxy": 9.0, "gold": 9.0, "kl": 9.0}
    rows = [{"step": 0, "proxy": 0.0, "gold": None, "kl": 0.0}, evaluator([])(3), stale]
    (folder / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = FakeTrainer(folder, total_steps=9)
    seen: list[int] = []
    records = run.train_with_evals(again, "ppo", 3, evaluator(seen, nan_at=9), None)
    assert again.calls == [("load", 6), ("train", 9)]
    assert seen == [6, 9]
    assert [r["step"] for r in records] == [0, 3, 6, 9]
    assert math.isnan(records[0]["gold"])  # written as null, read back as NaN
    assert math.isnan(records[-1]["gold"]) and records[-1]["proxy"] == pytest.approx(1.8)
    on_disk = read_evals(folder)
    assert [r["step"] for r in on_disk] == [0, 3, 6, 9] and on_disk[-1]["gold"] is None


def test_done_and_finish(tmp_path: pathlib.Path) -> None:
    run = make_run(tmp_path)
    assert run.done("sft") is None
    t0 = time.time() - 1.5
    data = run.finish("sft", {"loss": 0.5, "nan": math.nan, "curve": [(1, 0.5)]}, t0)
    assert data["seconds"] >= 1.5 and run.ran == ["sft"] and run.timings["sft"] == data["seconds"]
    saved = json.loads(run.stage_file("sft").read_text())
    assert saved == {"loss": 0.5, "nan": None, "curve": [[1, 0.5]], "seconds": data["seconds"]}
    again = make_run(tmp_path)
    assert again.done("sft") == saved and again.timings == {"sft": data["seconds"]}
    assert again.ran == []
    fresh = make_run(tmp_path, resume=False)
    assert fresh.done("sft") is None
    fresh.ran.append("sft")  # a worker process finished it in this call: done, resume off too
    assert fresh.done("sft") == saved
    assert run.expected_stages()[-1] == "arithmetic"
    assert "arithmetic" not in make_run(tmp_path, **{"arithmetic.enabled": False}).expected_stages()


def test_header_counts_the_stages(tmp_path: pathlib.Path) -> None:
    run = make_run(tmp_path, methods=["ppo"])
    run.header("one")
    run.header("two")
    # sft, preferences, reward, baseline, ppo, arithmetic + the report
    assert run.out.getvalue() == "\n[1/7] one\n\n[2/7] two\n"


def test_check_run_dir(tmp_path: pathlib.Path) -> None:
    run = make_run(tmp_path)
    run.root.mkdir()
    (run.root / "run.lock").write_text("")  # `rlhf-core demo` locks its new folder first
    run.check_run_dir()
    saved = run.root / "config.toml"
    assert saved.is_file()
    # the same config again, or one differing only in fields that change nothing saved
    make_run(tmp_path, threads=2, progress_bar=True, workers=1).check_run_dir()
    with pytest.raises(FileExistsError, match=r"ppo\.steps: 8 -> 3"):
        make_run(tmp_path, **{"ppo.steps": 3}).check_run_dir()
    with pytest.raises(FileExistsError, match="--resume true"):
        make_run(tmp_path, resume=False).check_run_dir()
    saved.unlink()
    (run.root / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds no demo config.toml"):
        make_run(tmp_path).check_run_dir()


def test_workers_default_to_two_on_a_cpu_with_a_core_to_spare(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlhf_core.demo import workers as W

    cfg = make_run(tmp_path).cfg
    monkeypatch.setattr(W.os, "cpu_count", lambda: 2)
    # (idle, total) jiffies read before and after the measurement
    times = iter([(100, 200), (180, 300)] * 2 + [(100, 200), (105, 300)] * 2)
    monkeypatch.setattr(W, "_cpu_times", lambda: next(times))
    assert W.spare_cores(0.0) == pytest.approx(2 * 0.8 - 1)  # 80% idle: the demo alone
    assert W.resolve_workers(cfg) == 2
    assert W.spare_cores(0.0) == pytest.approx(2 * 0.05 - 1)  # a busy machine
    assert W.resolve_workers(cfg) == 1
    # without /proc/stat: the load average, which counts the demo's own process
    monkeypatch.setattr(W, "_cpu_times", lambda: None)
    monkeypatch.setattr(W.os, "getloadavg", lambda: (1.1, 1.0, 1.0))
    assert W.resolve_workers(cfg) == 2
    monkeypatch.setattr(W.os, "getloadavg", lambda: (9.5, 9.0, 9.0))
    assert W.resolve_workers(cfg) == 1
    assert W.resolve_workers(load_demo_config(overrides={"workers": 3})) == 3
    monkeypatch.setattr(W.os, "cpu_count", lambda: 1)
    assert W.resolve_workers(cfg) == 1
    assert W.worker_threads(cfg, 2) == cfg.threads == 1
