"""Tests of rlhf_core.demo.report: plots, report.md / report.json and the terminal table."""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from rlhf_core.demo.report import (
    CurvePoint,
    DemoReport,
    MethodCurve,
    RewardModelSummary,
    SampleComparison,
    VerifiableSummary,
    plot_overoptimization,
    summary_table,
    write_report,
)
from rlhf_core.monitor import MetricsLogger, OveroptimizationMonitor, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def goodhart_curve(method: str, n: int = 8) -> MethodCurve:
    mon = OveroptimizationMonitor(patience=2)
    for s in range(n):
        kl = 0.05 * s * s
        mon.update(s * 10, proxy=0.5 * s, gold=1.0 + s - 0.25 * s * s, kl=kl)
    return MethodCurve.from_monitor(method, mon)


def full_report() -> DemoReport:
    bon = MethodCurve(
        "best-of-n",
        [
            CurvePoint(
                n, math.log(n) - (n - 1) / n, 0.3 * math.log2(n), 0.2 * math.log2(n), f"N={n}"
            )
            for n in (1, 2, 4, 8)
        ],
    )
    return DemoReport(
        title="demo | test",
        curves=[goodhart_curve("ppo"), goodhart_curve("grpo", 6), bon],
        reward_model=RewardModelSummary(
            accuracy=0.71, num_pairs=256, ceiling=0.74, curve=[(0, 0.5), (10, 0.68), (20, 0.71)]
        ),
        samples=[
            SampleComparison(
                "tell me about the cat:", " the cat.", " the cat is happy. | it", 1.9, 2.3, "ppo"
            )
        ],
        verifiable=VerifiableSummary("arithmetic", 0.3, 0.6, 64, curve=[(0, 0.3), (5, 0.6)]),
        notes=["quick mode"],
        timings={"sft": 1.5, "ppo": 2.25},
        config={"seed": 0, "beta": float("nan")},
    )


def test_write_report_files(tmp_path: pathlib.Path) -> None:
    path = write_report(tmp_path, full_report())
    assert path == tmp_path / "report.md"
    for name in ("overoptimization", "reward_model", "verifiable"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    md = path.read_text()
    assert md.startswith("# demo | test")
    assert "![proxy vs gold reward](plots/overoptimization.png)" in md
    # no gold-free stop in this report (no ensemble signals): "-" in that column
    assert "| ppo | 3.500 | -4.250 | 2.000 @ step 20 | step 40 (gold 1.000) | - | 1.565 |" in md
    assert "Held-out accuracy **0.710** on 256 pairs" in md and "0.740" in md
    assert "accuracy 0.300 before RL, **0.600** after (64 held-out prompts)" in md
    assert r"`the cat is happy. \| it`" not in md and r"` the cat is happy. \| it`" in md
    assert "| sft | 1.5 |" in md and "- quick mode" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["reward_model"]["accuracy"] == 0.71
    assert data["curves"][0]["best_step"] == 20 and data["curves"][0]["stop_step"] == 40
    assert data["config"]["beta"] is None  # NaN -> null, strict JSON
    assert data["plots"]["verifiable"] == "plots/verifiable.png"


def test_write_report_partial(tmp_path: pathlib.Path) -> None:
    write_report(tmp_path, DemoReport(reward_model=RewardModelSummary(0.6, 10)))
    assert (tmp_path / "plots" / "reward_model.png").exists()
    assert not (tmp_path / "plots" / "overoptimization.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "Proxy vs gold" not in md and "noise" not in md
    write_report(tmp_path / "v", DemoReport(verifiable=VerifiableSummary("arith", 0.1, 0.2)))
    assert (tmp_path / "v" / "plots" / "verifiable.png").read_bytes()[:8] == PNG


def test_summary_table() -> None:
    text = summary_table(full_report())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "final", "proxy"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    ppo = next(line for line in lines if line.startswith("ppo"))
    assert "2.000 @ step 20" in ppo and "step 40 (gold 1.000)" in ppo
    bon = next(line for line in lines if line.startswith("best-of-n"))
    assert "0.600 @ N=8" in bon and bon.split()[-1] == "1.097"  # sqrt(log 8 - 7/8)
    assert "held-out accuracy 0.710 on 256 pairs, noise ceiling 0.740" in text
    assert "arithmetic: accuracy 0.300 -> 0.600" in text


def test_curve_peak_stop_and_from_metrics(tmp_path: pathlib.Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for s, (kl, proxy, gold) in enumerate([(0.0, 0.0, 0.0), (0.1, 1.0, 0.8), (0.4, 2.0, 0.5)]):
            log.log(s, {"kl": kl, "reward/proxy": proxy, "reward/gold": gold})
        log.log(3, {"loss": 1.0})  # rows without the keys are ignored
    curve = MethodCurve.from_metrics("ppo", read_metrics(tmp_path), stop_step=2)
    assert [p.step for p in curve.points] == [0, 1, 2]
    assert curve.best_step == 1 and curve.peak == curve.points[1]
    assert curve.stop == curve.points[2]
    assert curve.point_at(5) == curve.points[2] and curve.point_at(None) is None
    with pytest.raises(ValueError, match="'reward/gold'"):
        MethodCurve.from_metrics("x", [{"step": 0, "kl": 0.0}])
    nan_gold = MethodCurve("x", [CurvePoint(0, 0.0, 1.0, math.nan), CurvePoint(1, 0.1, 2.0, 0.3)])
    assert nan_gold.best_step == 1


def test_plot_requires_curves(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        plot_overoptimization([], tmp_path / "x.png")
    # negative KL estimates are clipped to 0 before the square root
    from rlhf_core.demo.report import sqrt_kl

    assert sqrt_kl(-1e-4) == 0.0 and sqrt_kl(0.25) == 0.5 and math.isnan(sqrt_kl(math.nan))
    curve = MethodCurve("m", [CurvePoint(0, -1e-4, 0.0, 0.0), CurvePoint(1, 0.25, 1.0, 0.5)])
    assert plot_overoptimization([curve], tmp_path / "x.png").read_bytes()[:8] == PNG


def test_kl_trend_sorts_by_kl_and_averages_groups():
    from rlhf_core.demo.report import kl_trend

    # a run whose KL falls back at step 3: the trend is in KL order, group means
    x = [0.0, 1.0, 2.0, 1.5, 3.0, 4.0, math.nan]
    y = [0.0, 1.0, 2.0, 1.4, 1.0, 0.0, 5.0]
    tx, ty = kl_trend(x, y, bins=3)
    assert tx == [0.5, 1.75, 3.5]  # (0, 1), (1.5, 2), (3, 4); the NaN point dropped
    assert ty == pytest.approx([0.5, 1.7, 0.5])
    assert tx == sorted(tx)
    assert kl_trend([], []) == ([], [])
    assert kl_trend([1.0], [2.0], bins=6) == ([1.0], [2.0])
