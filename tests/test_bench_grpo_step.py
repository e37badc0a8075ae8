"""benches/bench_grpo_step.py runs with the local backends in the main environment (vLLM and
TRL are measured in .venv-vllm: make bench-grpo-step) and reports what docs/generation.md
quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_step_per_local_backend(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(ROOT / "benches" / "bench_grpo_step.py"), "--backends",
           "hf,decode_loop", "--no-trl", "--steps", "1", "--warmup", "0", "--agreement-steps", "0",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    res = json.loads(out.read_text())
    assert "Qwen2-shaped" in res["model"] and 700_000 < res["model_params"] < 900_000
    assert set(res["ours"]) == {"hf", "decode_loop"}
    for r in res["ours"].values():
        assert r["median_step_s"] > 0
        assert r["completion_tokens_per_s"] == 4 * 8 * 64 / r["median_step_s"]
        assert {"generation", "training"} <= set(r["phases_median_s"])
    assert "| rlhf_core | hf |" in proc.stdout
