"""The trainers compute what they computed when tests/data/behaviour.json was recorded: every
logged metric of short fixed-seed runs (SFT, reward, DPO, PPO, GRPO, Dr.GRPO, RLOO,
REINFORCE++, best-of-N) and the final weights, bit for bit (tools/behaviour_snapshot.py).

A change that alters the maths on purpose re-records the file in the same commit and says
why; the comparison holds only on the versions the file names (requirements/constraints.txt
pins them for ``make setup``), bit for bit on the CPU it names and to a tolerance on others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import behaviour_snapshot as S  # noqa: E402

SAVED = json.loads((ROOT / "tests" / "data" / "behaviour.json").read_text())


def test_snapshot_covers_every_trainer():
    assert set(SAVED["runs"]) == set(S.RUNS)
    for name, run in SAVED["runs"].items():
        assert len(run["metrics"]) >= 3, name


@pytest.mark.skipif(
    S.versions() != SAVED["versions"],
    reason=f"behaviour.json was recorded on {SAVED['versions']}, this is {S.versions()}",
)
@pytest.mark.parametrize("name", sorted(S.RUNS))
def test_same_metrics_and_weights_as_recorded(name):
    """Bit for bit on the CPU the file was recorded on; elsewhere every metric to a relative
    1e-3 (float32 sums run in another order: 1e-4 measured across two machines)."""
    new = {"versions": S.versions(), "runs": {name: S.run_one(name)}}
    old = {"versions": SAVED["versions"], "runs": {name: SAVED["runs"][name]}}
    diff = S.differences(old, new, exact=SAVED.get("machine") == S.machine())
    assert not diff, "\n".join(diff[:20])


def test_differences_sees_a_changed_metric_and_weights():
    old = {"runs": {"x": {"metrics": [{"loss": 1.0}], "weights_sha256": "a"}}}
    new = {"runs": {"x": {"metrics": [{"loss": 1.0000001}], "weights_sha256": "b"}}}
    diff = S.differences(old, new)
    assert any("loss" in d for d in diff) and any("weights" in d for d in diff)


def test_differences_on_another_machine_allow_rounding_not_changes():
    old = {"runs": {"x": {"metrics": [{"loss": 1.0, "mean": 1e-8, "n": 2}], "weights_sha256": "a"}}}
    rounded = {"runs": {"x": {"metrics": [{"loss": 1.0001, "mean": -2e-9, "n": 2}],
                              "weights_sha256": "b"}}}  # fmt: skip
    assert S.differences(old, rounded, exact=False) == []
    changed = {"runs": {"x": {"metrics": [{"loss": 1.01, "mean": 1e-8, "n": 3}],
                              "weights_sha256": "a"}}}  # fmt: skip
    diff = S.differences(old, changed, exact=False)
    assert any("loss" in d for d in diff) and any(" n:" in d for d in diff)
    nan = {"runs": {"x": {"metrics": [{"loss": float("nan"), "mean": 1e-8, "n": 2}],
                          "weights_sha256": "a"}}}  # fmt: skip
    assert any("loss" in d for d in S.differences(old, nan, exact=False))
