"""Moved to :mod:`rlhf_core.demo.report`; this module re-exports its public names so that
``from rlhf_core.report import ...`` keeps working while other code moves over. New code
imports from :mod:`rlhf_core.demo.report`."""

from __future__ import annotations

from rlhf_core.demo.report import (
    CurvePoint,
    DemoReport,
    MethodCurve,
    RewardModelSummary,
    SampleComparison,
    VerifiableSummary,
    kl_trend,
    plot_overoptimization,
    plot_reward_model,
    plot_verifiable,
    sqrt_kl,
    summary_table,
    write_report,
)

__all__ = [
    "CurvePoint",
    "MethodCurve",
    "RewardModelSummary",
    "SampleComparison",
    "VerifiableSummary",
    "DemoReport",
    "sqrt_kl",
    "kl_trend",
    "plot_overoptimization",
    "plot_reward_model",
    "plot_verifiable",
    "summary_table",
    "write_report",
]
