"""Experiment trackers (report_to): each backend logs offline here and the values it holds are
read back and compared with metrics.jsonl, the source of truth; tables too. Also the errors:
an unknown name, a backend that is not installed (the message names the extra)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from rlhf_core.monitor import (
    MetricsLogger,
    TrackerNotInstalledError,
    make_trackers,
    read_metrics,
)
from rlhf_core.monitor.tracking import mlflow_metric_name, table_columns

ROWS: list[dict[str, Any]] = [
    {"loss": 1.5, "reward/mean": 0.25, "kl": 0.0, "kl/k3_token_mean": 0.0, "note": "skip me"},
    {"loss": 0.75, "reward/mean": 0.5, "kl": 0.125, "kl/k3_token_mean": 0.0625, "ok": True},
    {"loss": float("nan"), "reward/mean": 0.625, "kl": 0.25, "kl/k3_token_mean": 0.1},
]
TABLE = [
    {"step": 2, "prompt": "Q:", "completion": "a|b", "reward": 1.0, "advantage": 0.5},
    {"step": 2, "prompt": "x=", "completion": "7", "reward": None, "advantage": -0.5},
]


def write_rows(logger: MetricsLogger) -> None:
    """The rows at steps 1..3 and the table at step 2, in the order the trainers log them."""
    for step, row in enumerate(ROWS, start=1):
        logger.log(step, row)
        if step == 2:
            logger.log_table("completions", TABLE, step)


def expected(run: pathlib.Path) -> dict[int, dict[str, float]]:
    """The numbers of metrics.jsonl per step, as the trackers get them (booleans as 0/1,
    null as NaN, strings left out)."""
    out: dict[int, dict[str, float]] = {}
    for r in read_metrics(run):
        out[r["step"]] = {
            k: float(v)
            for k, v in r.items()
            if k not in ("step", "wall_time") and not isinstance(v, str)
        }
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9)


# ---- W&B (offline mode: its local transaction log) ------------------------------------------


def wandb_records(run_dir: pathlib.Path) -> list[Any]:
    """The records of the offline run's ``run-*.wandb`` file: a ``:W&B`` header, then a
    LevelDB-style log (32 KiB blocks of chunks, each ``crc32 | length u16 | type u8``; type 1
    a whole record, 2/3/4 first/middle/last parts) of protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts, records = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and n == 0:  # zero padding to the end of the block
            pos += left - 7
            continue
        parts.append(data[pos : pos + n])
        pos += n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            records.append(rec)
            parts = []
    return records


def test_wandb_offline_run_holds_metrics_and_table(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "rlhf-core-tests")
    trackers = make_trackers(["wandb"], run_dir=tmp_path, run_name="wb", config={"seed": 3})
    with MetricsLogger(tmp_path, tensorboard=False, trackers=trackers) as log:
        write_rows(log)
    import wandb

    wandb.teardown()  # the service process writes the last records of the file when it ends
    history: dict[int, dict[str, Any]] = {}
    run_name = config = None
    for rec in wandb_records(tmp_path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in rec.history.item
            }
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run":
            run_name = rec.run.display_name
            config = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
    assert run_name == "wb" and config is not None and config["seed"] == 3
    want = expected(tmp_path)
    assert sorted(history) == sorted(want)
    for step, row in want.items():
        for k, v in row.items():
            got = history[step][k]  # NaN is the string "NaN" in wandb's JSON
            assert same(float("nan") if got in ("NaN", None) else float(got), v), (step, k)
    prefix = "completions/"  # the table's entry, nested under its name
    table = {k[len(prefix) :]: v for k, v in history[2].items() if k.startswith(prefix)}
    assert table["_type"] == "table-file" and table["nrows"] == 2
    (path,) = tmp_path.glob("wandb/offline-run-*/files/" + table["path"])
    saved = json.loads(path.read_text())
    assert saved["columns"] == table_columns(TABLE)
    assert saved["data"][0][:4] == [2, "Q:", "a|b", 1.0]


# ---- MLflow (a file store, read back with MlflowClient) -------------------------------------


def test_mlflow_file_store_holds_metrics_params_and_table(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rlhf-core-tests")
    run = tmp_path / "run"
    trackers = make_trackers(["mlflow"], run_dir=run, run_name="ml",
                             config={"seed": 3, "report_to": ["mlflow"]})  # fmt: skip
    with MetricsLogger(run, tensorboard=False, trackers=trackers) as log:
        write_rows(log)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rlhf-core-tests")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == "ml" and found.info.status == "FINISHED"
    assert found.data.params == {"seed": "3", "report_to": "['mlflow']"}
    want = expected(run)
    for name in want[1]:
        hist = client.get_metric_history(found.info.run_id, mlflow_metric_name(name))
        got = {m.step: m.value for m in hist}
        assert sorted(got) == sorted(s for s in want if name in want[s])
        for step, value in got.items():
            assert same(value, want[step][name]), (name, step)
    art = pathlib.Path(found.info.artifact_uri.removeprefix("file://"))
    saved = json.loads((art / "completions" / "step_000002.json").read_text())
    assert saved["columns"] == table_columns(TABLE)
    assert saved["data"][1] == [2, "x=", "7", None, -0.5]


def test_mlflow_names_have_no_slash() -> None:
    assert mlflow_metric_name("kl/k3_token_mean") == "kl.k3_token_mean"
    assert mlflow_metric_name("loss") == "loss"


# ---- TensorBoard (named in report_to: required) ---------------------------------------------


def test_tensorboard_tracker_holds_scalars_and_table(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trackers = make_trackers(["tensorboard"], run_dir=tmp_path, run_name="tb")
    with MetricsLogger(tmp_path, tensorboard=True, trackers=trackers) as log:
        assert len(log.trackers) == 1  # the alias adds no second writer
        write_rows(log)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    want = expected(tmp_path)
    for name in ("loss", "reward/mean", "kl/k3_token_mean", "ok"):
        got = {e.step: e.value for e in acc.Scalars(name)}
        assert sorted(got) == sorted(s for s in want if name in want[s])
        for step, value in got.items():
            assert same(value, want[step][name]), (name, step)
    (text,) = acc.Tensors("completions/text_summary")
    md = text.tensor_proto.string_val[0].decode()
    assert "| step | prompt | completion | reward | advantage |" in md and "a\\|b" in md


# ---- trackio (its local store; TRACKIO_DIR is read when trackio is imported) ----------------

TRACKIO_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from rlhf_core.monitor import MetricsLogger, make_trackers
    rows = json.loads(sys.argv[1]); table = json.loads(sys.argv[2]); run = sys.argv[3]
    trackers = make_trackers(["trackio"], run_dir=run, run_name="tk", config={"seed": 3})
    with MetricsLogger(run, tensorboard=False, trackers=trackers) as log:
        for step, row in enumerate(rows, start=1):
            log.log(step, row)
            if step == 2:
                log.log_table("completions", table, step)
    from trackio.sqlite_storage import SQLiteStorage
    print("LOGS=" + json.dumps(SQLiteStorage.get_logs("rlhf-core-tests", "tk")))
    """
)


def test_trackio_local_store_holds_metrics_and_table(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store"),
           "TRACKIO_PROJECT": "rlhf-core-tests"}  # fmt: skip
    rows = json.dumps(ROWS).replace("NaN", "null")  # the subprocess gets strict JSON
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-c", TRACKIO_SCRIPT, rows, json.dumps(TABLE), str(run)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    logs = json.loads(out.stdout.split("LOGS=", 1)[1].splitlines()[0])
    by_step: dict[int, dict[str, Any]] = {}
    for entry in logs:
        by_step.setdefault(entry["step"], {}).update(entry)
    want = {s: {k: v for k, v in r.items() if k != "loss" or s != 3} for s, r in
            expected(run).items()}  # fmt: skip
    assert sorted(by_step) == sorted(want)
    for step, row in want.items():
        for k, v in row.items():
            assert same(float(by_step[step][k]), v), (step, k)
    table = by_step[2]["completions"]
    assert table["_type"] == "trackio.table"
    assert table["_value"][0]["completion"] == "a|b" and table["_value"][1]["advantage"] == -0.5


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow", "tensorboard"])
def test_missing_backend_names_the_extra(
    name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(TrackerNotInstalledError, match=rf"rlhf-core\[{name}\]"):
        make_trackers([name], run_dir=tmp_path, run_name="x")


def test_unknown_backend_and_none(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        make_trackers(["comet"], run_dir=tmp_path, run_name="x")
    assert make_trackers(["none"], run_dir=tmp_path, run_name="x") == []


def test_a_failing_backend_closes_the_ones_before(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    from rlhf_core.monitor import tracking

    closed: list[str] = []
    monkeypatch.setattr(tracking.TensorBoardTracker, "finish", lambda self: closed.append("tb"))
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerNotInstalledError):
        make_trackers(["tensorboard", "wandb"], run_dir=tmp_path, run_name="x")
    assert closed == ["tb"]


def test_report_to_is_validated() -> None:
    from rlhf_core.trainers import TrainerConfig

    assert TrainerConfig(report_to="wandb, trackio").report_to == ["wandb", "trackio"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="report_to=\\['none', 'wandb'\\]"):
        TrainerConfig(report_to=["none", "wandb"])
    with pytest.raises(ValueError, match="report_to=\\['comet'\\]"):
        TrainerConfig(report_to=["comet"])
    with pytest.raises(ValueError, match="logging_steps=0"):
        TrainerConfig(logging_steps=0)


def test_a_trainer_with_a_missing_tracker_stops_before_its_first_step(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlhf_core.testing.trainers import FAST, policy, tokenizer
    from rlhf_core.trainers import SFTConfig, SFTTrainer

    monkeypatch.setitem(sys.modules, "trackio", None)
    cfg = SFTConfig(run_dir=str(tmp_path), batch_size=2, total_steps=2, report_to=["trackio"],
                    **FAST)  # fmt: skip
    trainer = SFTTrainer(cfg, policy(), tokenizer(), ["ab", "ba"])
    with pytest.raises(TrackerNotInstalledError, match=r"rlhf-core\[trackio\]"):
        trainer.train()
    assert trainer.global_step == 0 and not (tmp_path / "metrics.jsonl").exists()
