"""The end-to-end GRPO bench (benches/e2e_grpo.py) runs on a CPU at tiny size, and its pieces
(tokenizer, report) do what the GPU run relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benches" / "e2e_grpo.py"


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("e2e_grpo", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["e2e_grpo"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_word_tokenizer_round_trip() -> None:
    bench = _bench_module()
    tok = bench.build_tokenizer(50)
    assert len(tok) == 50
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    ids = tok("w4 w17 w49", add_special_tokens=True)["input_ids"]
    assert ids == [4, 17, 49]
    assert tok.decode(ids) == "w4 w17 w49"
    assert tok("w50")["input_ids"] == [tok.unk_token_id]


def test_report_ratio_and_phases() -> None:
    bench = _bench_module()
    work = bench.Workload()
    res = {
        "workload": bench.asdict(work),
        "device_name": "test GPU",
        "torch": "x",
        "transformers": "y",
        "model_params": 494_000_000,
        "trl": {"version": "1.16.0", "median_step_s": 6.0, "completion_tokens_per_s": 2731.0,
                "peak_memory_gib": 20.0},
        "ours": {"median_step_s": 1.5, "completion_tokens_per_s": 10923.0, "peak_memory_gib": 9.0,
                 "fast_generation": True,
                 "phases_median_s": {"generation": 1.0, "bookkeeping": 0.015, "training": 0.4}},
        "ratio": 0.25,
    }  # fmt: skip
    text = bench.format_report(res)
    assert "ratio rlhf_core / TRL step time: 0.250 (meets the target <= 0.333)" in text
    assert "bookkeeping share 1.00 % (meets the target < 2 %)" in text
    assert "TRL 1.16.0" in text and "494.0M params" in text


def test_tiny_run_without_trl(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(BENCH), "--tiny", "--steps", "2", "--no-trl", "--device", "cpu",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "rlhf_core phases" in proc.stdout, proc.stdout
    res = json.loads(out.read_text())
    ours = res["ours"]
    assert res["trl"] is None and res["ratio"] is None
    assert len(ours["step_times_s"]) == 2 and ours["median_step_s"] > 0
    assert {"generation", "scoring", "bookkeeping", "training"} <= set(ours["phases_median_s"])
    # EOS is suppressed: every completion has exactly max_new_tokens tokens
    assert ours["response_length_mean"] == pytest.approx(res["workload"]["max_new_tokens"])
    assert ours["loss_finite"]
    w = res["workload"]
    tokens = w["prompts_per_step"] * w["num_samples"] * w["max_new_tokens"]
    assert tokens == 2 * 4 * 8  # the tiny workload
    assert ours["completion_tokens_per_s"] == pytest.approx(tokens / ours["median_step_s"])


def test_step_ratio_is_ours_over_trl() -> None:
    bench = _bench_module()
    assert bench.step_ratio({"trl": {"median_step_s": 6.0}, "ours": {"median_step_s": 1.5}}) == 0.25
    assert bench.step_ratio({"trl": None, "ours": {"median_step_s": 1.5}}) is None
    assert bench.step_ratio({"trl": {"median_step_s": 6.0}, "ours": None}) is None


def test_memory_preset_runs_without_a_reference_and_with_checkpointing(tmp_path: Path) -> None:
    out = tmp_path / "mem.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(BENCH), "--tiny", "--steps", "1", "--warmup", "0", "--no-trl",
           "--device", "cpu", "--memory-preset", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    res = json.loads(out.read_text())
    assert res["workload"]["beta"] == 0.0
    assert res["ours"]["gradient_checkpointing"] and not res["ours"]["reference_model"]
    assert res["ours"]["loss_finite"]
