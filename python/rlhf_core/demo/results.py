"""What the demo's report is made of: plain dataclasses, filled by whoever ran the experiment.

- :class:`MethodCurve` per optimisation method: evaluations (:class:`CurvePoint`: step, KL,
  proxy, gold; check reward and ensemble disagreement when measured), the gold peak and the
  step where early stopping cut (from an :class:`~rlhf_core.monitor.OveroptimizationMonitor`
  or given), and where the gold-free stop cut and what it kept (:class:`GoldFreeSummary`, from
  a :class:`~rlhf_core.monitor.GoldFreeStop`).
- :class:`RewardModelSummary`: held-out accuracy of the proxy reward model next to the best
  accuracy possible under the label noise and chance.
- :class:`SampleComparison`: completions of the same prompt before and after optimisation.
- :class:`VerifiableSummary`: accuracy before/after RL on a task with exact answers.
- :class:`DemoReport`: all of the above, with notes, timings and the config.

:mod:`rlhf_core.demo.plots` draws them and :mod:`rlhf_core.demo.report` writes them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CurvePoint",
    "GoldFreeSummary",
    "MethodCurve",
    "RewardModelSummary",
    "SampleComparison",
    "VerifiableSummary",
    "DemoReport",
    "sqrt_kl",
]


def sqrt_kl(kl: float) -> float:
    """sqrt(max(KL, 0)): sampled KL estimates can dip slightly below zero."""
    return math.sqrt(max(float(kl), 0.0)) if math.isfinite(kl) else math.nan


@dataclass
class CurvePoint:
    """One evaluation: training step (or N for best-of-N), KL from the reference (nats),
    proxy (optimised) reward and gold reward. ``label`` names the point (e.g. ``"N=8"``)."""

    step: int
    kl: float
    proxy: float
    gold: float
    label: str | None = None
    check: float | None = None
    disagreement: float | None = None

    @property
    def where(self) -> str:
        """How text names the point: its label, else ``step <step>``."""
        return self.label if self.label else f"step {self.step}"


@dataclass
class GoldFreeSummary:
    """Where a :class:`~rlhf_core.monitor.GoldFreeStop` cut a method's run: ``stop_step`` (None:
    it did not), ``best_step`` (the evaluation it kept), the signals that tripped
    (``reasons``), the thresholds, and each evaluation's normalised signals (``signals``, one
    mapping per point of the curve)."""

    stop_step: int | None = None
    best_step: int | None = None
    reasons: list[str] = field(default_factory=list)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    signals: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_stopper(cls, stopper: Any) -> GoldFreeSummary:
        return cls(
            stopper.stop_step,
            stopper.best_step,
            list(stopper.reasons),
            dict(stopper.thresholds),
            [dict(p.signals) for p in stopper.history],
        )


@dataclass
class MethodCurve:
    """The evaluations of one method, in order. ``best_step``: the gold peak (computed from
    the points when None); ``stop_step``: where early stopping cut (None: it did not);
    ``gold_free``: where the gold-free stop cut and what it kept."""

    method: str
    points: list[CurvePoint] = field(default_factory=list)
    best_step: int | None = None
    stop_step: int | None = None
    gold_free: GoldFreeSummary | None = None

    def __post_init__(self) -> None:
        if self.best_step is None and self.points:
            finite = [p for p in self.points if math.isfinite(p.gold)]
            if finite:
                self.best_step = max(finite, key=lambda p: p.gold).step

    def point_at(self, step: int | None) -> CurvePoint | None:
        """The point of ``step`` (the last one at or before it when there is no exact match)."""
        if step is None or not self.points:
            return None
        before = [p for p in self.points if p.step <= step]
        return before[-1] if before else self.points[0]

    @property
    def peak(self) -> CurvePoint | None:
        return self.point_at(self.best_step)

    @property
    def stop(self) -> CurvePoint | None:
        return self.point_at(self.stop_step)

    @property
    def kept(self) -> CurvePoint | None:
        """The evaluation the gold-free stop kept (None: it did not stop)."""
        g = self.gold_free
        return None if g is None or g.stop_step is None else self.point_at(g.best_step)

    @property
    def regret(self) -> float | None:
        """Gold at the peak minus gold at the kept evaluation (None: no gold-free stop)."""
        peak, kept = self.peak, self.kept
        return None if peak is None or kept is None else peak.gold - kept.gold

    @classmethod
    def from_metrics(
        cls,
        method: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        kl_key: str = "kl",
        proxy_key: str = "reward/proxy",
        gold_key: str = "reward/gold",
        stop_step: int | None = None,
    ) -> MethodCurve:
        """Build from metric records (e.g. :func:`rlhf_core.monitor.read_metrics`), keeping
        the rows that have all three keys."""
        pts = [
            CurvePoint(int(r["step"]), float(r[kl_key]), float(r[proxy_key]), float(r[gold_key]))
            for r in rows
            if kl_key in r and proxy_key in r and gold_key in r
        ]
        if not pts:
            raise ValueError(
                f"no metric row of {method!r} has all of {kl_key!r}, {proxy_key!r}, {gold_key!r}"
            )
        return cls(method, pts, stop_step=stop_step)

    @classmethod
    def from_monitor(cls, method: str, monitor: Any) -> MethodCurve:
        """Build from an :class:`~rlhf_core.monitor.OveroptimizationMonitor` whose updates
        carried gold and KL values."""
        pts = [
            CurvePoint(
                p.step,
                math.nan if p.kl is None else p.kl,
                p.proxy,
                math.nan if p.gold is None else p.gold,
            )
            for p in monitor.history
        ]
        return cls(method, pts, best_step=monitor.best_step, stop_step=monitor.stop_step)


@dataclass
class RewardModelSummary:
    """Proxy reward model quality on held-out pairs. ``ceiling``: best accuracy possible under
    the label noise (see :func:`rlhf_core.tasks.bradley_terry_ceiling`); ``curve``: optional
    ``(step, held-out accuracy)`` during training."""

    accuracy: float
    num_pairs: int
    ceiling: float | None = None
    train_accuracy: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SampleComparison:
    prompt: str
    before: str
    after: str
    gold_before: float | None = None
    gold_after: float | None = None
    method: str = ""


@dataclass
class VerifiableSummary:
    """Accuracy of a policy on a task with exact answers, before and after RL, with an
    optional ``(step, accuracy)`` curve."""

    name: str
    accuracy_before: float
    accuracy_after: float
    num_prompts: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class DemoReport:
    title: str = "rlhf-core demo"
    curves: list[MethodCurve] = field(default_factory=list)
    reward_model: RewardModelSummary | None = None
    samples: list[SampleComparison] = field(default_factory=list)
    verifiable: VerifiableSummary | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
