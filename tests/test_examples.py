"""The single-file GRPO example (examples/grpo_single_file.py) runs and learns: its reward, the
fraction of digits in a completion, rises over ten steps on the built-in model."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grpo_single_file.py"


def _load():
    spec = importlib.util.spec_from_file_location("grpo_single_file", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Args
    spec.loader.exec_module(module)
    return module


def test_grpo_single_file_learns(capsys):
    ex = _load()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = ex.main(ex.parse(["--steps", "10"]))
    finally:
        torch.set_num_threads(old)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(math.isfinite(v) for r in rows for v in r.values())
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    print(f"reward/mean {first:.3f} -> {last:.3f}")
    assert last > first + 0.1, (first, last)
    assert "reward/mean=" in capsys.readouterr().out  # one line per step
