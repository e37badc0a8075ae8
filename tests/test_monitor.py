"""Tests of rlhf_core.monitor: metrics files, timers, the NaN tripwire and detectors."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
import time

import numpy as np
import pytest
import torch

from rlhf_core import monitor
from rlhf_core.monitor import (
    InstabilityDetector,
    MetricsLogger,
    NonFiniteError,
    OveroptimizationMonitor,
    PhaseTimer,
    check_finite,
    distinct_n,
    read_metrics,
    repetition_rate,
)


def test_metrics_jsonl_roundtrip(tmp_path: pathlib.Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(0, {"loss": 1.5, "reward/mean": np.float32(0.25), "n": np.int64(3)})
        log.log(1, {"loss": torch.tensor(0.5), "bad": float("nan"), "note": "hi", "ok": True})
        rows = log.read()
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["loss"] == 1.5 and rows[0]["reward/mean"] == 0.25 and rows[0]["n"] == 3
    assert rows[1]["loss"] == 0.5 and math.isnan(rows[1]["bad"]) and rows[1]["note"] == "hi"
    # the file is strict JSON (no NaN tokens)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert MetricsLogger.read_run(tmp_path) == read_metrics(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="after close"):
        log.log(2, {"x": 1.0})


def test_reserved_names(tmp_path: pathlib.Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log, pytest.raises(ValueError, match="step"):
        log.log(0, {"step": 1})


def test_resume_truncates_later_steps(tmp_path: pathlib.Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for s in range(6):
            log.log(s, {"x": s})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "x"')  # torn line from a crash
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as log:
        log.log(4, {"x": 40})
        rows = log.read()
    assert [(r["step"], r["x"]) for r in rows] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 40)]


def test_read_metrics_errors(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2"):
        read_metrics(p)
    p.write_text('{"step": 0}\n[1]\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_metrics(p)
    p.write_text('{"step": 0}\n{"step": 1, "x\n')
    assert [r["step"] for r in read_metrics(p)] == [0]


def test_tensorboard_events_written(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path) as log:
        assert log.tensorboard_enabled
        log.log(0, {"loss": 1.0, "text": "skipped"})
        log.log(1, {"loss": 0.5})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == [1.0, 0.5]


def test_tensorboard_missing_is_skipped_with_one_note(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import raises ImportError
    monkeypatch.setattr(monitor.logger, "_TB_NOTE_SHOWN", False)
    with caplog.at_level(logging.INFO, logger="rlhf_core.monitor"):
        a = MetricsLogger(tmp_path / "a")
        b = MetricsLogger(tmp_path / "b")
    assert not a.tensorboard_enabled and not b.tensorboard_enabled
    a.log(0, {"x": 1})
    notes = [r for r in caplog.records if "tensorboard is not installed" in r.getMessage()]
    assert len(notes) == 1
    assert not (tmp_path / "a" / "tensorboard").exists()
    a.close()
    b.close()


def test_phase_timer() -> None:
    timer = PhaseTimer()
    with timer.phase("generation"):
        time.sleep(0.02)
    with timer.phase("generation"):
        time.sleep(0.01)
    with timer.phase("training"):
        pass
    timer.add("scoring", 0.5)
    assert timer.counts() == {"generation": 2, "training": 1, "scoring": 1}
    s = timer.summary()
    assert set(s) == {"time/generation", "time/training", "time/scoring"}
    assert 0.03 <= s["time/generation"] < 1.0
    assert s["time/scoring"] == 0.5
    assert timer.summary() == {}
    with pytest.raises(RuntimeError), timer.phase("boom"):
        raise RuntimeError
    assert "time/boom" in timer.summary(reset=False)


def test_check_finite_passes_when_finite(tmp_path: pathlib.Path) -> None:
    check_finite(
        {"loss": 1.0, "t": torch.tensor(2.0), "a": np.ones(3)},
        {"ids": torch.arange(4), "adv": torch.zeros(2, 3)},
        tmp_path,
        step=1,
    )
    assert list(tmp_path.iterdir()) == []


def test_check_finite_names_offenders_and_dumps(tmp_path: pathlib.Path) -> None:
    adv = torch.zeros(2, 3)
    adv[1, 2] = float("nan")
    adv[0, 0] = float("inf")
    batch = {"input_ids": torch.arange(6).reshape(2, 3), "advantages": adv}
    with pytest.raises(NonFiniteError) as info:
        check_finite({"loss": float("nan"), "kl": 0.1}, batch, tmp_path / "dumps", step=7)
    err = info.value
    msg = str(err)
    assert err.names == ["loss", "advantages"] and err.step == 7
    assert "metric 'loss' = nan" in msg
    assert (
        "tensor 'advantages' (2, 3) has 1 NaN and 1 inf of 6 elements, first at index (0, 0)" in msg
    )
    assert "at step 7" in msg
    assert err.dump_path == tmp_path / "dumps" / "nonfinite_step7.pt"
    assert str(err.dump_path) in msg
    saved = torch.load(err.dump_path, weights_only=False)
    assert saved["step"] == 7 and saved["offenders"] == ["loss", "advantages"]
    assert torch.equal(saved["batch"]["input_ids"], batch["input_ids"])
    assert torch.isnan(saved["batch"]["advantages"][1, 2])


def test_check_finite_numpy_and_no_dump() -> None:
    with pytest.raises(NonFiniteError, match=r"array 'x' \(3,\) has 0 NaN and 1 inf") as info:
        check_finite({"x": np.array([1.0, -np.inf, 2.0])})
    assert info.value.dump_path is None
    with pytest.raises(NonFiniteError, match="metric 'y'"):
        check_finite({"y": np.float64("nan")})
    with pytest.raises(NonFiniteError, match="metric 'z'"):
        check_finite({"z": torch.tensor(float("inf"))})
    assert isinstance(info.value, FloatingPointError)


def test_overoptimization_peak_and_stop() -> None:
    mon = OveroptimizationMonitor(patience=2, min_delta=0.01)
    gold = [0.1, 0.3, 0.5, 0.505, 0.4, 0.3, 0.2]
    proxy = [0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    stops = [
        mon.update(s * 10, p, g, kl=s * 0.1)
        for s, (p, g) in enumerate(zip(proxy, gold, strict=True))
    ]
    # 0.505 is not an improvement > min_delta over 0.5 -> counts as a non-improving evaluation
    assert mon.best_step == 20 and mon.best_gold == 0.5
    assert stops == [False, False, False, False, True, True, True]
    assert mon.stop_step == 40 and mon.should_stop
    assert mon.diverging
    warnings = mon.warnings()
    assert any("over-optimisation" in w for w in warnings)
    assert any("early stop" in w and "step 40" in w for w in warnings)
    assert mon.summary()["best_step"] == 20


def test_overoptimization_no_gold_never_stops_and_nan_counts() -> None:
    mon = OveroptimizationMonitor(patience=1)
    for s in range(5):
        assert not mon.update(s, float(s))
    assert mon.best_step is None and not mon.diverging
    mon2 = OveroptimizationMonitor(patience=2)
    mon2.update(0, 0.0, 1.0)
    mon2.update(1, 0.0, float("nan"))
    assert mon2.update(2, 0.0, float("nan"))
    assert mon2.best_step == 0


def test_overoptimization_not_diverging_when_both_rise() -> None:
    mon = OveroptimizationMonitor(patience=10, window=3)
    for s in range(5):
        mon.update(s, proxy=float(s), gold=0.5 * s)
    assert not mon.diverging and not mon.should_stop and mon.warnings() == []


def test_overoptimization_state_roundtrip() -> None:
    a = OveroptimizationMonitor(patience=2)
    for s, g in enumerate([1.0, 2.0, 1.5]):
        a.update(s, g * 2, g, 0.1)
    b = OveroptimizationMonitor(patience=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.update(3, 5.0, 1.0) == a.update(3, 5.0, 1.0) is True
    assert b.summary() == a.summary()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"patience": 0}, "patience"), ({"min_delta": -1.0}, "min_delta"), ({"window": 1}, "window")],
)
def test_overoptimization_bad_args(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OveroptimizationMonitor(**kwargs)  # type: ignore[arg-type]


def test_distinct_n_and_repetition() -> None:
    assert distinct_n(["a b c", "d e f"], 1) == 1.0
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a a a a"], 1) == 0.25
    assert distinct_n([""], 2) == 0.0
    assert distinct_n(["ab", "ab"], 1, tokenize=list) == 0.5
    assert repetition_rate(["a b c d"], 2) == 0.0
    # "x y x y x y": bigrams xy yx xy yx xy -> 2 unique of 5
    assert repetition_rate(["x y x y x y"], 2) == pytest.approx(0.6)
    assert repetition_rate(["a", "x y x y x y"], 2) == pytest.approx(0.6)
    assert repetition_rate(["a"], 2) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a"], 0)
    with pytest.raises(ValueError, match="n must be"):
        repetition_rate(["a"], 0)


def test_instability_detector() -> None:
    det = InstabilityDetector(spike_factor=5.0, min_history=3, entropy_floor=0.05)
    for s in range(5):
        assert det.update(s, kl=0.01, entropy=2.0) == []
    warn = det.update(5, kl=0.2)
    assert len(warn) == 1 and "KL spike" in warn[0] and "step 5" in warn[0]
    assert det.update(6, kl=0.02) == []
    assert "entropy collapse" in det.update(7, entropy=0.01)[0]
    assert "entropy fell" in det.update(8, entropy=0.15)[0]
    assert "KL is nan" in det.update(9, kl=float("nan"))[0]
    # small absolute KL never counts as a spike
    det2 = InstabilityDetector(min_history=2, min_kl=1e-3)
    for s in range(3):
        det2.update(s, kl=1e-6)
    assert det2.update(3, kl=5e-4) == []
    det3 = InstabilityDetector()
    det3.load_state_dict(det.state_dict())
    assert det3.update(10, kl=5.0) == det.update(10, kl=5.0)
    with pytest.raises(ValueError, match="spike_factor"):
        InstabilityDetector(spike_factor=1.0)
