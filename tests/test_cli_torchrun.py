"""The command line under ``torchrun`` (issue 14, item 4): ``torchrun --nproc-per-node 2 -m
rlhf_core grpo ...`` and ``torchrun --no-python rlhf-core sft ...`` with 2 gloo CPU processes
leave one clean run folder (rank 0 writes the shared files: record, config, metrics, plots,
model, lock) and equal a one-process run of the same command: every logged metric to float
tolerance, every weight to ``WEIGHT_ATOL`` (the same bounds as the Python-API test,
``tests/test_trainers_distributed.py``). A second launch resumes the GRPO run from its
checkpoint on both ranks.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlhf_core import cli
from rlhf_core.monitor import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 420
WEIGHT_ATOL = 2e-5
METRIC_REL, METRIC_ABS = 1e-4, 1e-5
COMMON = ["--device", "cpu", "--progress_bar", "false", "--tensorboard", "false"]

#: command -> (how torchrun starts it, its options); global batches split evenly over 2 ranks
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "grpo": (
        ["-m", "rlhf_core"],
        ["grpo", "--config", str(ROOT / "configs" / "grpo.toml"), "--rollout_batch_size", "8",
         "--num_samples", "4", "--max_new_tokens", "6", "--per_prompt_seeds", "true",
         "--kl_coef", "0.05", "--max_grad_norm", "none", "--save_every", "1", *COMMON],
    ),
    "sft": (
        ["--no-python", "rlhf-core"],
        ["sft", "--config", str(ROOT / "configs" / "sft.toml"), "--batch_size", "4",
         "--dataset_size", "64", "--save_every", "1", *COMMON],
    ),
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(start: list[str], args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env["PATH"]])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           *start, *args]  # fmt: skip
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=LAUNCH_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the 2-process run did not finish in {LAUNCH_TIMEOUT_S} s: {exc.stderr!r}")


def metrics(run: pathlib.Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"}
            for r in read_metrics(run)]  # fmt: skip


def compare_runs(got: pathlib.Path, ref: pathlib.Path) -> float:
    a, b = metrics(got), metrics(ref)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for g, r in zip(a, b, strict=True):
        assert sorted(g) == sorted(r)
        for k, v in r.items():
            if v is None:
                assert g[k] is None, k
            else:
                assert g[k] == pytest.approx(v, rel=METRIC_REL, abs=METRIC_ABS), (k, r["step"])
    wa = load_file(str(got / "model" / "model.safetensors"))
    wb = load_file(str(ref / "model" / "model.safetensors"))
    assert sorted(wa) == sorted(wb)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wb)
    assert worst <= WEIGHT_ATOL, worst
    return worst


@pytest.mark.parametrize("name", list(RUNS))
def test_torchrun_cli_equals_one_process(
    name: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, args = RUNS[name]
    if start[0] == "--no-python" and not shutil.which("rlhf-core", path=str(
            pathlib.Path(sys.executable).parent)):  # fmt: skip
        pytest.fail("the rlhf-core entry point is not installed next to the interpreter")
    got, ref = tmp_path / "two", tmp_path / "one"
    proc = torchrun(start, [*args, "--run_dir", str(got), "--total_steps", "2"], tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
    # rank 0 alone printed the summary and wrote the shared files
    assert proc.stdout.count(f"{name}: run folder {got}") == 1, proc.stdout
    torch.set_num_threads(1)
    rc = cli.main([*args, "--run_dir", str(ref), "--total_steps", "2"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert {"run.json", "config.toml", "metrics.jsonl", "model", "plots", "checkpoints",
            "run.lock"} <= {p.name for p in got.iterdir()}  # fmt: skip
    assert (got / "run.lock").read_text() == ""  # released when the command ended
    assert (got / "config.toml").read_text().replace(str(got), "") == (
        ref / "config.toml"
    ).read_text().replace(str(ref), "")
    ckpts = sorted(p.name for p in (got / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_000001", "step_000002"]
    worst = compare_runs(got, ref)
    print(f"{name}: max |weight difference| 2 processes vs 1: {worst:.2e}")
    if name != "grpo":
        return
    # every rank reads the same checkpoint to resume: one more step on 2 processes
    proc = torchrun(start, ["grpo", "--resume", str(got), "--total_steps", "3"], tmp_path)
    assert proc.returncode == 0, f"stderr:\n{proc.stderr[-8000:]}"
    assert "resuming" in proc.stderr and proc.stderr.count("resuming") == 1
    rc = cli.main(["grpo", "--resume", str(ref), "--total_steps", "3"])
    assert rc == 0, capsys.readouterr().err
    compare_runs(got, ref)
