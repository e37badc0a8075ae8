"""The built-in demo: ``rlhf-core demo --quick`` end to end, with its numbers checked for sense,
plus the pieces it is made of (best-of-N curve, policy evaluation, config precedence, resume).

The quick demo runs once per session (in-process, fixed seeds) and every check reads its
report; it is the test suite's longest test (well under a minute on 2 idle cores).
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import pytest

from rlhf_core import demo as D
from rlhf_core.monitor import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, D.DemoResult, float]:
    run = tmp_path_factory.mktemp("demo") / "quick"
    cfg = D.load_demo_config(quick=True, overrides={"run_dir": str(run), "progress_bar": False})
    t0 = time.time()
    with open(run.parent / "out.txt", "w") as out:
        result = D.run_demo(cfg, out=out)
    return run, result, time.time() - t0


def _report(run: pathlib.Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_quick_demo_writes_every_output(quick: tuple[pathlib.Path, D.DemoResult, float]) -> None:
    run, result, _ = quick
    assert result.report_path == run / "report.md" and not result.already_finished
    md = (run / "report.md").read_text()
    for section in ("Proxy vs gold reward", "Reward model", "Verifiable reward", "Samples"):
        assert section in md
    for png in ("overoptimization.png", "reward_model.png", "verifiable.png"):
        path = run / "plots" / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"plots/{png}" in md
    assert (run / "config.toml").is_file()
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


def test_reward_model_is_clearly_better_than_chance(
    quick: tuple[pathlib.Path, D.DemoResult, float],
) -> None:
    rm = _report(quick[0])["reward_model"]
    assert rm["num_pairs"] >= 300
    assert 0.6 < rm["ceiling"] < 0.95  # the label noise leaves room, and a limit
    # 0.55 is more than 2 standard errors above chance on this many pairs
    assert rm["accuracy"] > 0.55, rm
    assert rm["accuracy"] < rm["ceiling"] + 0.05  # nothing beats the noise by much


def test_best_of_n_gold_rises_with_n_at_small_n(
    quick: tuple[pathlib.Path, D.DemoResult, float],
) -> None:
    curves = {c["method"]: c for c in _report(quick[0])["curves"]}
    pts = {p["step"]: p for p in curves["best-of-N"]["points"]}
    assert pts[1]["kl"] == 0 and pts[2]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert pts[2]["gold"] > pts[1]["gold"] + 0.05
    assert pts[4]["gold"] > pts[1]["gold"] + 0.1
    assert pts[4]["proxy"] > pts[2]["proxy"] > pts[1]["proxy"]  # by construction


def test_rl_curves_track_proxy_gold_and_kl(quick: tuple[pathlib.Path, D.DemoResult, float]) -> None:
    run, _, _ = quick
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


def test_grpo_raises_arithmetic_accuracy(quick: tuple[pathlib.Path, D.DemoResult, float]) -> None:
    v = _report(quick[0])["verifiable"]
    assert v["num_prompts"] >= 100
    assert v["accuracy_after"] > v["accuracy_before"] + 0.05, v
    assert v["curve"][0][0] == 0 and v["curve"][-1][1] == v["accuracy_after"]


def test_samples_before_and_after(quick: tuple[pathlib.Path, D.DemoResult, float]) -> None:
    samples = _report(quick[0])["samples"]
    methods = {s["method"].split(" ")[0] for s in samples}
    assert methods == {"best-of-N", "PPO", "GRPO", "DPO"}
    assert all(s["prompt"].startswith(("tell me", "describe", "write")) for s in samples)


def test_quick_demo_is_quick(quick: tuple[pathlib.Path, D.DemoResult, float]) -> None:
    _, result, seconds = quick
    stages = result.report.timings
    assert set(stages) >= {"sft", "preferences", "reward", "ppo", "grpo", "dpo", "arithmetic"}
    # the budget is one minute on 2 idle cores; leave room for a busy machine
    assert seconds < 240, stages


def test_rerun_of_a_finished_demo_trains_nothing(
    quick: tuple[pathlib.Path, D.DemoResult, float], capsys: pytest.CaptureFixture[str]
) -> None:
    run, first, _ = quick
    before = (run / "report.json").read_text()
    from rlhf_core import cli

    t0 = time.time()
    rc = cli.main(["demo", "--quick", "--run-dir", str(run), "--progress_bar", "false"])
    out = capsys.readouterr().out
    assert rc == 0 and "already finished" in out and time.time() - t0 < 30
    after = json.loads((run / "report.json").read_text())
    assert after["curves"] == json.loads(before)["curves"]
    # a different config in the same folder is refused, naming what differs
    with pytest.raises(FileExistsError, match="ppo.steps"):
        D.run_demo(D.load_demo_config(quick=True, overrides={"run_dir": str(run), "ppo.steps": 3}))


def test_interrupted_demo_resumes_from_its_stages(
    quick: tuple[pathlib.Path, D.DemoResult, float], tmp_path: pathlib.Path
) -> None:
    """Drop the last stages' results: the rerun redoes only those, from their checkpoints."""
    import shutil

    run, first, _ = quick
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


# --------------------------------------------------------------------------------------------
# the pieces


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
