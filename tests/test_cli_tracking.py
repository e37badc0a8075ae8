"""The command line with the product features: ``--report_to`` (every backend, offline; what
each holds is read back and compared with metrics.jsonl), ``--log_completions``
(samples.jsonl and the console), ``--eval_dataset`` / ``--eval_steps`` (eval/ metrics), the
model card of the saved model, and the errors (a tracker that is not installed, eval_steps
without eval prompts)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml
from test_tracking import wandb_records

from rlhf_core import cli
from rlhf_core.monitor import read_metrics, read_samples
from rlhf_core.monitor.tracking import mlflow_metric_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def grpo_args(run: pathlib.Path, *extra: str) -> list[str]:
    return [
        "grpo", "--config", str(ROOT / "configs" / "grpo.toml"), "--run-dir", str(run),
        "--total_steps", "2", "--rollout_batch_size", "8", "--max_new_tokens", "8",
        "--progress_bar", "false", *extra,
    ]  # fmt: skip


def numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: (math.nan if v is None else float(v))
        for k, v in row.items()
        if k not in ("step", "wall_time") and not isinstance(v, str)
    }


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_grpo_reports_to_every_tracker_with_samples_eval_and_a_card(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    mlruns = (tmp_path / "mlruns").as_uri()
    env = {
        **os.environ,
        "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(tmp_path / "trackio"), "TRACKIO_PROJECT": "cli-test",
        "MLFLOW_TRACKING_URI": mlruns, "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_EXPERIMENT_NAME": "cli-test",
    }  # fmt: skip
    args = grpo_args(
        run, "--report_to", "wandb", "trackio", "mlflow", "tensorboard", "--run_name", "cli",
        "--log_completions", "--num_completions_to_print", "2", "--eval_dataset",
        "builtin:arithmetic", "--eval_dataset_size", "4", "--eval_steps", "1",
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "rlhf_core", *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("completions at step") == 2
    assert "samples.jsonl" in proc.stdout

    rows = read_metrics(run)
    want = {r["step"]: numbers(r) for r in rows}
    assert sorted(want) == [1, 2]
    for step in (1, 2):
        assert {"eval/reward/mean", "eval/reward/gold_reward", "eval/kl", "eval/accuracy",
                "eval/response_length/mean"} <= set(want[step])  # fmt: skip
    samples = read_samples(run)
    assert [r["step"] for r in samples] == [1] * 8 + [2] * 8
    assert all(set(r["rewards"]) == {"gold_reward"} for r in samples)

    # W&B: the offline run's history
    history: dict[int, dict[str, Any]] = {}
    for rec in wandb_records(run):
        if rec.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                     for i in rec.history.item}  # fmt: skip
            history.setdefault(items["_step"], {}).update(items)
    for step, row in want.items():
        for k, v in row.items():
            got = history[step][k]
            assert close(math.nan if got == "NaN" else float(got), v), ("wandb", step, k)
        assert history[step]["completions/nrows"] == 8

    # MLflow: the file store
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(mlruns)
    (found,) = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert found.info.run_name == "cli" and found.data.params["eval_steps"] == "1"
    for name in want[2]:
        hist = {m.step: m.value for m in
                client.get_metric_history(found.info.run_id, mlflow_metric_name(name))}  # fmt: skip
        assert sorted(hist) == [s for s in (1, 2) if name in want[s]], name
        for step, value in hist.items():
            assert close(value, want[step][name]), ("mlflow", step, name)

    # trackio: its store, read in a process that sees the same TRACKIO_DIR
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage; "
            "print('LOGS=' + json.dumps(SQLiteStorage.get_logs('cli-test', 'cli')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    by_step: dict[int, dict[str, Any]] = {}
    for entry in json.loads(out.stdout.split("LOGS=", 1)[1].splitlines()[0]):
        by_step.setdefault(entry["step"], {}).update(entry)
    for step, row in want.items():
        for k, v in row.items():
            if not math.isnan(v):
                assert close(float(by_step[step][k]), v), ("trackio", step, k)
        assert len(by_step[step]["completions"]["_value"]) == 8

    assert any((run / "tensorboard").iterdir())

    # the model card
    card = (run / "model" / "README.md").read_text()
    head = yaml.safe_load(card[4:].partition("\n---\n")[0])
    assert head["library_name"] == "transformers" and head["base_model"] == "builtin:tiny"
    assert head["tags"][:2] == ["rlhf_core", "grpo"]
    assert head["datasets"] == ["builtin:language", "builtin:arithmetic"]  # dataset, eval
    assert "| `eval/accuracy` |" in card and 'report_to = ["wandb", "trackio", "mlflow"' in card


def test_report_to_none_and_the_tensorboard_alias(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(grpo_args(tmp_path / "none", "--report_to", "none", "--tensorboard")) == 0
    assert not (tmp_path / "none" / "tensorboard").exists()
    assert (tmp_path / "none" / "metrics.jsonl").is_file()  # always written
    card = (tmp_path / "none" / "model" / "README.md").read_text()
    assert "base_model: \"builtin:tiny\"" in card
    capsys.readouterr()


def test_tracker_not_installed_fails_before_training(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    rc = cli.main(grpo_args(tmp_path / "run", "--report_to", "wandb,tensorboard"))
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'rlhf-core[wandb]'" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_eval_steps_needs_eval_prompts(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(grpo_args(tmp_path / "run", "--eval_steps", "2"))
    err = capsys.readouterr().err
    assert rc == 2 and "eval_steps=2" in err and "--eval_dataset" in err
    rc = cli.main(grpo_args(tmp_path / "run", "--eval_dataset", "nope.jsonl"))
    err = capsys.readouterr().err
    assert rc == 2 and "eval_dataset='nope.jsonl': no such file or folder" in err
