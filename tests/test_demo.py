"""The built-in demo: ``rlhf-core demo --quick`` end to end, with its numbers checked for sense,
plus its config (precedence, presets, errors). The stage protocol has its own fast tests
(``test_demo_pipeline.py``); policy evaluation and the best-of-N curve are in
``test_evaluation.py``.

The quick demo runs once per module (in-process, fixed seeds) and every ``slow`` check reads
its report; it is the test suite's longest run (about a minute on 2 idle cores; its stage
times are measured by ``benches/bench_demo.py``, not asserted here).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from typing import Any

import pytest

from rlhf_core import demo as D
from rlhf_core.monitor import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, D.DemoResult]:
    run = tmp_path_factory.mktemp("demo") / "quick"
    # the stages after the baseline run in two worker processes (the default on 2 cores)
    overrides = {"run_dir": str(run), "progress_bar": False, "workers": 2}
    cfg = D.load_demo_config(quick=True, overrides=overrides)
    with open(run.parent / "out.txt", "w") as out:
        result = D.run_demo(cfg, out=out)
    return run, result


def _report(run: pathlib.Path) -> dict:
    return json.loads((run / "report.json").read_text())


@pytest.mark.slow
def test_quick_demo_writes_every_output(quick: tuple[pathlib.Path, D.DemoResult]) -> None:
    run, result = quick
    assert result.report_path == run / "report.md" and not result.already_finished
    md = (run / "report.md").read_text()
    for section in ("Proxy vs gold reward", "Reward model", "Verifiable reward", "Samples"):
        assert section in md
    for png in ("overoptimization.png", "reward_model.png", "verifiable.png"):
        path = run / "plots" / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"plots/{png}" in md
    assert (run / "config.toml").is_file()
    stages = ["sft", "preferences", "reward", "baseline", "best_of_n", "ppo", "grpo", "dpo"]
    assert list(result.report.timings) == [*stages, "arithmetic"]
    # every trainer left metrics (JSONL + TensorBoard), checkpoints and, for RL, per-step gold
    for stage in ("sft", "reward", "ppo", "grpo", "dpo", "arithmetic/sft", "arithmetic/grpo"):
        assert (run / stage / "metrics.jsonl").is_file(), stage
        assert (run / stage / "checkpoints" / "latest").is_file(), stage
        assert any((run / stage / "tensorboard").iterdir()), stage
    for stage in ("ppo", "grpo"):
        rows = read_metrics(run / stage)
        assert all({"reward/reward_model", "reward/gold_reward", "kl"} <= set(r) for r in rows)
    out = (run.parent / "out.txt").read_text()
    for method in ("best-of-N", "PPO", "GRPO", "DPO"):
        assert method in result.summary and method in out
    assert "reward model: held-out accuracy" in out and "report:" in out


@pytest.mark.slow
def test_reward_model_is_clearly_better_than_chance(
    quick: tuple[pathlib.Path, D.DemoResult],
) -> None:
    rm = _report(quick[0])["reward_model"]
    assert rm["num_pairs"] >= 300
    assert 0.6 < rm["ceiling"] < 0.95  # the label noise leaves room, and a limit
    # 0.55 is more than 2 standard errors above chance on this many pairs
    assert rm["accuracy"] > 0.55, rm
    assert rm["accuracy"] < rm["ceiling"] + 0.05  # nothing beats the noise by much


@pytest.mark.slow
def test_best_of_n_gold_rises_with_n_at_small_n(
    quick: tuple[pathlib.Path, D.DemoResult],
) -> None:
    curves = {c["method"]: c for c in _report(quick[0])["curves"]}
    pts = {p["step"]: p for p in curves["best-of-N"]["points"]}
    assert pts[1]["kl"] == 0 and pts[2]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert pts[2]["gold"] > pts[1]["gold"] + 0.05
    assert pts[4]["gold"] > pts[1]["gold"] + 0.1
    assert pts[4]["proxy"] > pts[2]["proxy"] > pts[1]["proxy"]  # by construction


@pytest.mark.slow
def test_rl_curves_track_proxy_gold_and_kl(quick: tuple[pathlib.Path, D.DemoResult]) -> None:
    run, _ = quick
    curves = {c["method"]: c for c in _report(run)["curves"]}
    for method, stage in (("PPO", "ppo"), ("GRPO", "grpo"), ("DPO", "dpo")):
        pts = curves[method]["points"]
        assert pts[0]["step"] == 0 and pts[0]["kl"] == pytest.approx(0.0, abs=1e-6)
        steps = [p["step"] for p in pts]
        assert steps == sorted(steps) and len(steps) >= 3
        assert all(math.isfinite(p["proxy"]) and math.isfinite(p["gold"]) for p in pts)
        assert pts[-1]["kl"] > 0.01  # the policy moved away from the reference
        assert curves[method]["best_step"] in steps
        evals = [
            json.loads(line)
            for line in (run / stage / "evals.jsonl").read_text().split("\n")
            if line
        ]
        assert [e["step"] for e in evals] == steps


@pytest.mark.slow
def test_grpo_raises_arithmetic_accuracy(quick: tuple[pathlib.Path, D.DemoResult]) -> None:
    v = _report(quick[0])["verifiable"]
    assert v["num_prompts"] >= 100
    assert v["accuracy_after"] > v["accuracy_before"] + 0.05, v
    assert v["curve"][0][0] == 0 and v["curve"][-1][1] == v["accuracy_after"]


@pytest.mark.slow
def test_samples_before_and_after(quick: tuple[pathlib.Path, D.DemoResult]) -> None:
    """Each method's report samples pair the SFT policy's sample ("before", the baseline
    stage's) with that method's own final sample ("after"), each with the gold reward of its
    text; and the optimisers changed what the policy writes."""
    from rlhf_core import tasks

    run, _ = quick
    samples = _report(run)["samples"]
    by_method: dict[str, list[dict]] = {}
    for s in samples:
        by_method.setdefault(s["method"].split(" ")[0], []).append(s)
    assert set(by_method) == {"best-of-N", "PPO", "GRPO", "DPO"}
    assert all(s["prompt"].startswith(("tell me", "describe", "write")) for s in samples)
    baseline = json.loads((run / "baseline" / "stage.json").read_text())["samples"]
    final = {"best-of-N": json.loads((run / "best_of_n" / "stage.json").read_text())["samples"]}
    cfg = D.load_demo_config(quick=True)
    for method, stage, steps in (
        ("PPO", "ppo", cfg.ppo.steps),
        ("GRPO", "grpo", cfg.grpo.steps),
        ("DPO", "dpo", cfg.dpo.steps),
    ):
        last = json.loads((run / stage / "evals.jsonl").read_text().splitlines()[-1])
        assert last["step"] == steps  # the trained policy, not an earlier point
        final[method] = last["samples"]
    for method, rows in by_method.items():
        assert len(rows) == len(baseline) == len(final[method]) == 3, method
        for s, b, a in zip(rows, baseline, final[method], strict=True):
            assert s["prompt"] == b["prompt"] == a["prompt"]
            assert (s["before"], s["gold_before"]) == (b["text"], b["gold"])
            assert (s["after"], s["gold_after"]) == (a["text"], a["gold"])
            gold = tasks.gold_reward([s["prompt"]] * 2, [s["before"], s["after"]])
            assert gold == pytest.approx([s["gold_before"], s["gold_after"]])
    changed = {m: sum(s["before"] != s["after"] for s in rows) for m, rows in by_method.items()}
    # the proxy's favourite of N samples is rarely the first plain sample
    assert changed["best-of-N"] >= 1, changed
    assert sum(changed.values()) >= len(samples) // 3, changed


@pytest.mark.slow
def test_rerun_of_a_finished_demo_trains_nothing(
    quick: tuple[pathlib.Path, D.DemoResult], capsys: pytest.CaptureFixture[str]
) -> None:
    run, first = quick
    before = (run / "report.json").read_text()
    from rlhf_core import cli

    # what a rerun may rewrite: the saved config, the report and the folder's lock; nothing a
    # stage wrote
    rewritten = {run / "config.toml", run / "report.md", run / "report.json", run / "plots",
                 run / "run.lock"}  # fmt: skip

    def stage_files() -> dict[pathlib.Path, int]:
        files = (p for p in run.rglob("*") if p.is_file())
        kept = (p for p in files if not any(p == r or r in p.parents for r in rewritten))
        return {p: p.stat().st_mtime_ns for p in kept}

    files = stage_files()
    assert len(files) > 50
    rc = cli.main(["demo", "--quick", "--run-dir", str(run), "--progress_bar", "false"])
    out = capsys.readouterr().out
    assert rc == 0 and "already finished" in out and "stages run now" not in out
    assert stage_files() == files  # no stage trained, evaluated or saved anything again
    after = json.loads((run / "report.json").read_text())
    assert after["curves"] == json.loads(before)["curves"]
    # a different config in the same folder is refused, naming what differs
    with pytest.raises(FileExistsError, match="ppo.steps"):
        D.run_demo(D.load_demo_config(quick=True, overrides={"run_dir": str(run), "ppo.steps": 3}))


@pytest.mark.slow
def test_a_finished_demo_is_reported_again_with_other_gold_free_settings(
    quick: tuple[pathlib.Path, D.DemoResult], tmp_path: pathlib.Path
) -> None:
    """The gold-free stop is applied when the report is written: a rerun with other
    [gold_free] settings trains nothing and reports the new stop."""
    import shutil

    run, first = quick
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "config.toml").write_text(
        (copy / "config.toml").read_text().replace(str(run), str(copy))
    )
    over = {"run_dir": str(copy), "progress_bar": False, "gold_free.patience": 1,
            "gold_free.max_kl_growth": 1.01, "gold_free.kl_reference_step": 0}  # fmt: skip
    with open(tmp_path / "out.txt", "w") as out:
        res = D.run_demo(D.load_demo_config(quick=True, overrides=over), out=out)
    assert res.already_finished
    rows = {c.method: c.gold_free for c in res.report.curves if c.gold_free is not None}
    assert set(rows) == {"PPO", "GRPO"}
    for method, g in rows.items():
        # growth over the first evaluation's sqrt(KL) passes 1.01 once the policy moves on
        assert g.thresholds["kl_growth"] == 1.01, method
        assert g.stop_step is not None and "kl_growth" in g.reasons, (method, g)
    assert "max_kl_growth = 1.01" in (copy / "config.toml").read_text()
    assert [c.points for c in res.report.curves] == [c.points for c in first.report.curves]


@pytest.mark.slow
def test_interrupted_demo_resumes_from_its_stages(
    quick: tuple[pathlib.Path, D.DemoResult], tmp_path: pathlib.Path
) -> None:
    """Drop the last stages' results: the rerun redoes only those, from their checkpoints."""
    import shutil

    run, first = quick
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg_text = (copy / "config.toml").read_text().replace(str(run), str(copy))
    (copy / "config.toml").write_text(cfg_text)
    (copy / "dpo" / "stage.json").unlink()
    (copy / "report.json").unlink()
    with open(tmp_path / "out.txt", "w") as out:
        res = D.run_demo(
            D.load_demo_config(quick=True, overrides={"run_dir": str(copy), "progress_bar": False}),
            out=out,
        )
    assert not res.already_finished
    again = {c.method: c for c in res.report.curves}
    orig = {c["method"]: c for c in _report(run)["curves"]}
    # DPO had finished training (its checkpoint and evals are kept): same curve, no retraining
    assert [p.gold for p in again["DPO"].points] == [p["gold"] for p in orig["DPO"]["points"]]
    assert res.report.timings["sft"] == first.report.timings["sft"]


def _copy_run(run: pathlib.Path, copy: pathlib.Path, drop: list[str]) -> None:
    """Copy a finished demo folder to ``copy`` (its config naming the new folder), without
    the report and the stages ``drop`` (``stage.json`` and everything else of theirs)."""
    import shutil

    shutil.copytree(run, copy)
    cfg_text = (copy / "config.toml").read_text().replace(str(run), str(copy))
    (copy / "config.toml").write_text(cfg_text)
    (copy / "report.json").unlink()
    for stage in drop:
        shutil.rmtree(copy / stage)


_PARALLEL = ["best_of_n", "ppo", "grpo", "dpo", "arithmetic"]


def _stage_results(run: pathlib.Path, stage: str) -> dict:
    """A stage's results without its timings (the stage's and each evaluation's seconds)."""
    data = json.loads((run / stage / "stage.json").read_text())
    data.pop("seconds")
    for record in data.get("records", []):
        record.pop("seconds", None)
    return data


@pytest.mark.slow
def test_stages_in_workers_equal_one_process(
    quick: tuple[pathlib.Path, D.DemoResult], tmp_path: pathlib.Path
) -> None:
    """The fixture ran the stages after the baseline in two workers, the check model in a
    worker beside the proxy and the arithmetic part beside the first stages; run again in
    this process (same thread count), every result is the same to the last bit."""
    run, first = quick
    printed = (run.parent / "out.txt").read_text()
    assert "worker processes side by side" in printed
    assert "reward/check: started beside" in printed
    assert "arithmetic: started beside" in printed
    assert {p.stem for p in (run / "logs").glob("*.log")} == {*_PARALLEL, "reward_check"}
    copy = tmp_path / "copy"
    redo = ["reward", "baseline", *_PARALLEL]
    _copy_run(run, copy, redo)
    overrides = {"run_dir": str(copy), "progress_bar": False, "workers": 1}
    with open(tmp_path / "out.txt", "w") as out:
        res = D.run_demo(D.load_demo_config(quick=True, overrides=overrides), out=out)
    assert sorted(res.report.timings) == sorted(first.report.timings)
    assert "worker processes" not in (tmp_path / "out.txt").read_text()
    assert "beside" not in (tmp_path / "out.txt").read_text()
    for stage in redo:
        assert _stage_results(copy, stage) == _stage_results(run, stage), stage
    for model in ("reward_model", "check_model"):
        for f in (run / "reward" / model).glob("*.safetensors"):
            assert f.read_bytes() == (copy / "reward" / model / f.name).read_bytes(), f
    assert _report(copy)["curves"] == _report(run)["curves"]


def _fails_in_a_worker(copy: pathlib.Path, tmp_path: pathlib.Path, match: str) -> str:
    """Run the quick demo in ``copy`` with two workers: it must raise a DemoStageError
    matching ``match`` and leave no worker process; returns the error's text."""
    import multiprocessing as mp

    from rlhf_core.demo.workers import DemoStageError

    overrides = {"run_dir": str(copy), "progress_bar": False, "workers": 2}
    cfg = D.load_demo_config(quick=True, overrides=overrides)
    with pytest.raises(DemoStageError, match=match) as info:
        with open(tmp_path / "out.txt", "w") as out:
            D.run_demo(cfg, out=out)
    assert mp.active_children() == []
    return str(info.value)


@pytest.mark.slow
def test_failing_worker_names_its_stage_and_leaves_no_process(
    quick: tuple[pathlib.Path, D.DemoResult], tmp_path: pathlib.Path
) -> None:
    run, _ = quick
    copy = tmp_path / "copy"
    _copy_run(run, copy, ["ppo", "grpo"])
    (copy / "ppo").write_text("a file where PPO's folder goes")  # PPO fails at once
    error = _fails_in_a_worker(copy, tmp_path, "demo stage 'ppo' failed")
    assert "rerun the same command to resume" in error
    assert "Traceback" in error  # the end of the worker's log


@pytest.mark.slow
def test_failing_beside_job_names_itself_and_leaves_no_process(
    quick: tuple[pathlib.Path, D.DemoResult], tmp_path: pathlib.Path
) -> None:
    """The check model's worker fails: the reward stage ends with an error naming the job
    and quoting its log; no process is left and the stages before are kept."""
    run, _ = quick
    copy = tmp_path / "copy"
    _copy_run(run, copy, ["reward", "baseline", *_PARALLEL])
    # the proxy's folder as its trainer starts it (its record), with a file where the check
    # model's folder goes: the check model's worker fails at once
    (copy / "reward").mkdir()
    for name in ("run.json", "config.toml"):
        shutil.copy(run / "reward" / name, copy / "reward" / name)
    (copy / "reward" / "check").write_text("a file where the check model's folder goes")
    error = _fails_in_a_worker(copy, tmp_path, "demo job 'reward/check' failed")
    assert "Traceback" in error
    assert (copy / "preferences" / "stage.json").is_file()
    assert not (copy / "reward" / "stage.json").exists()


@pytest.mark.slow
def test_interrupted_workers_are_stopped(
    quick: tuple[pathlib.Path, D.DemoResult],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (here: KeyboardInterrupt while waiting for the workers) ends every worker."""
    import io
    import multiprocessing as mp
    import multiprocessing.connection
    import re

    run, _ = quick
    copy = tmp_path / "copy"
    _copy_run(run, copy, ["ppo", "grpo"])

    real_wait, calls = multiprocessing.connection.wait, []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the demo's wait for its workers (later: join's own waits)
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(multiprocessing.connection, "wait", interrupted)
    out = io.StringIO()
    overrides = {"run_dir": str(copy), "progress_bar": False, "workers": 2}
    with pytest.raises(KeyboardInterrupt):
        D.run_demo(D.load_demo_config(quick=True, overrides=overrides), out=out)
    pids = [int(p) for p in re.findall(r"started \(process (\d+)\)", out.getvalue())]
    assert len(pids) == 2 and mp.active_children() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --------------------------------------------------------------------------------------------
# the config


def test_config_precedence_and_presets(tmp_path: pathlib.Path) -> None:
    assert D.load_demo_config() == D.DemoConfig()
    quick = D.load_demo_config(quick=True)
    assert quick.model_size == "tiny" and quick.run_dir == "runs/demo-quick"
    path = tmp_path / "d.toml"
    path.write_text('model_size = "small"\n[ppo]\nsteps = 7\n')
    cfg = D.load_demo_config(path, ["--ppo.steps", "9"], quick=True)
    assert cfg.model_size == "small" and cfg.ppo.steps == 9 and cfg.sft.steps == quick.sft.steps
    # the shipped presets are exactly the defaults and the quick scale
    assert D.load_demo_config(ROOT / "configs" / "demo.toml") == D.DemoConfig()
    assert D.load_demo_config(ROOT / "configs" / "demo_quick.toml") == quick


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"methods": ["ppo", "sac"]}, "methods="),
        ({"model_size": "huge"}, "model_size='huge'"),
        ({"best_of_n.ns": [4, 2]}, "best_of_n.ns="),
        ({"preferences.heldout_pairs": 5000}, "preferences.heldout_pairs=5000"),
        ({"grpo.num_samples": 1}, "grpo.num_samples=1"),
        ({"arithmetic.ops": "*"}, "arithmetic.ops='\\*'"),
    ],
)
def test_bad_demo_config_names_the_field(override: dict, message: str) -> None:
    from rlhf_core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        D.load_demo_config(overrides=override)
