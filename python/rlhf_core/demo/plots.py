"""The demo report's PNG plots, drawn on matplotlib's Agg canvas directly (no pyplot, no
global backend change):

- :func:`plot_overoptimization`: proxy and gold reward against sqrt(KL), one panel per method
  (the over-optimisation curve of Gao et al. 2022), gold peak and early stop marked;
- :func:`plot_gold_free`: per RL method, proxy / check / gold reward and the ensemble's
  disagreement against sqrt(KL), with the gold peak, the gold-free stop and the kept point;
- :func:`plot_reward_model`: held-out accuracy next to chance and the noise ceiling;
- :func:`plot_verifiable`: accuracy during RL on the task with exact answers.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from rlhf_core.demo.results import MethodCurve, RewardModelSummary, VerifiableSummary, sqrt_kl

__all__ = [
    "kl_trend",
    "plot_gold_free",
    "plot_overoptimization",
    "plot_reward_model",
    "plot_verifiable",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, format="png")
    return p


def kl_trend(
    x: Sequence[float], y: Sequence[float], bins: int = 6
) -> tuple[list[float], list[float]]:
    """The trend of ``y`` against ``x``: the points (non-finite ones dropped) sorted by ``x``
    and cut into at most ``bins`` consecutive groups of near-equal size; returns each group's
    mean ``x`` and mean ``y`` (increasing ``x``). KL along a run is not monotone (it can fall
    back for a few steps), so a line through the points in step order zigzags; this is the
    curve to read reward-vs-KL from."""
    pts = sorted(
        (float(a), float(b))
        for a, b in zip(x, y, strict=True)
        if math.isfinite(a) and math.isfinite(b)
    )
    if not pts:
        return [], []
    k = max(1, min(bins, len(pts)))
    xs, ys = [], []
    for i in range(k):
        part = pts[i * len(pts) // k : (i + 1) * len(pts) // k]
        xs.append(sum(p[0] for p in part) / len(part))
        ys.append(sum(p[1] for p in part) / len(part))
    return xs, ys


def plot_overoptimization(
    curves: Sequence[MethodCurve], path: str | os.PathLike[str]
) -> pathlib.Path:
    """One panel per method: proxy (blue) and gold (orange) reward against sqrt(KL). The
    evaluations are markers joined faintly in step order (the run's trajectory); the bold
    lines are the trend (:func:`kl_trend`: means over groups of points sorted by KL). A star
    marks the gold peak and a dotted vertical line where early stopping cut."""
    if not curves:
        raise ValueError("plot_overoptimization needs at least one MethodCurve")
    n = len(curves)
    fig = _figure(4.2 * n, 3.6)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, curve in zip(axes, curves, strict=True):
        x = [sqrt_kl(p.kl) for p in curve.points]
        for attr, color, style, name in (
            ("proxy", "tab:blue", "--", "proxy"),
            ("gold", "tab:orange", "-", "gold"),
        ):
            y = [getattr(p, attr) for p in curve.points]
            ax.plot(x, y, "o", ms=3, color=color)
            ax.plot(x, y, style, lw=0.8, alpha=0.3, color=color)  # trajectory, step order
            tx, ty = kl_trend(x, y)
            ax.plot(tx, ty, style, lw=2.0, color=color, label=f"{name} (trend)")
        for p, xi in zip(curve.points, x, strict=True):
            if p.label:
                ax.annotate(
                    p.label, (xi, p.proxy), fontsize=7, xytext=(2, 3), textcoords="offset points"
                )
        peak = curve.peak
        if peak is not None:
            ax.plot(
                [sqrt_kl(peak.kl)],
                [peak.gold],
                "*",
                ms=14,
                color="tab:red",
                label=f"gold peak ({peak.where})",
            )
        stop = curve.stop
        if stop is not None:
            ax.axvline(
                sqrt_kl(stop.kl), ls=":", color="tab:gray", label=f"early stop ({stop.where})"
            )
        ax.set_title(curve.method)
        ax.set_xlabel("sqrt(KL to reference)")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("proxy vs gold reward (over-optimisation)")
    return _save(fig, path)


def plot_gold_free(curves: Sequence[MethodCurve], path: str | os.PathLike[str]) -> pathlib.Path:
    """One row per method that has a gold-free stop (``curve.gold_free``): left, the proxy
    (dashed), check (dash-dot) and gold (solid) reward against sqrt(KL), in step order; right,
    the ensemble's disagreement over its starting value, the check gap (in starting spreads)
    and the KL growth against sqrt(KL), with their thresholds. A star marks the gold peak, a
    dotted line the gold-free stop, a circle the evaluation it kept."""
    rows = [c for c in curves if c.gold_free is not None]
    if not rows:
        raise ValueError("plot_gold_free needs a MethodCurve with gold_free set")
    fig = _figure(9.0, 3.4 * len(rows))
    for i, curve in enumerate(rows):
        g = curve.gold_free
        assert g is not None
        x = [sqrt_kl(p.kl) for p in curve.points]
        ax = fig.add_subplot(len(rows), 2, 2 * i + 1)
        series = [("proxy", "tab:blue", "--"), ("gold", "tab:orange", "-")]
        if any(p.check is not None for p in curve.points):
            series.insert(1, ("check", "tab:green", "-."))
        for attr, color, style in series:
            y = [math.nan if getattr(p, attr) is None else getattr(p, attr) for p in curve.points]
            ax.plot(x, y, style, marker="o", ms=3, lw=1.2, color=color, label=attr)
        peak, kept = curve.peak, curve.kept
        if peak is not None:
            ax.plot([sqrt_kl(peak.kl)], [peak.gold], "*", ms=13, color="tab:red",
                    label=f"gold peak ({peak.where})")  # fmt: skip
        if kept is not None:
            ax.plot([sqrt_kl(kept.kl)], [kept.gold], "o", ms=10, mfc="none", mew=2,
                    color="black", label=f"kept ({kept.where})")  # fmt: skip
        stop = curve.point_at(g.stop_step)
        if stop is not None and g.stop_step is not None:
            ax.axvline(sqrt_kl(stop.kl), ls=":", color="tab:gray",
                       label=f"gold-free stop ({stop.where})")  # fmt: skip
        ax.set_title(f"{curve.method}: rewards")
        ax.set_xlabel("sqrt(KL to reference)")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
        ax2 = fig.add_subplot(len(rows), 2, 2 * i + 2)
        for name, color, label in (
            ("disagreement", "tab:purple", "disagreement / start"),
            ("check_gap", "tab:green", "check gap (spreads)"),
            ("kl_growth", "tab:red", "KL growth (sqrt(KL) / at first eval)"),
        ):
            y = [s.get(name, math.nan) for s in g.signals]
            if all(math.isnan(v) for v in y):
                continue
            ax2.plot(x[: len(y)], y, "-o", ms=3, color=color, label=label)
            th = g.thresholds.get(name)
            if th is not None:
                ax2.axhline(th, ls="--", lw=0.8, color=color)
        if stop is not None and g.stop_step is not None:
            ax2.axvline(sqrt_kl(stop.kl), ls=":", color="tab:gray")
        ax2.set_title(f"{curve.method}: gold-free signals")
        ax2.set_xlabel("sqrt(KL to reference)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=6, loc="best")
    fig.suptitle("over-optimisation without gold: what the run can see")
    return _save(fig, path)


def plot_reward_model(summary: RewardModelSummary, path: str | os.PathLike[str]) -> pathlib.Path:
    """Held-out accuracy next to chance and the noise ceiling (+ the training curve)."""
    has_curve = bool(summary.curve)
    fig = _figure(8.0 if has_curve else 4.5, 3.4)
    ax = fig.add_subplot(1, 2 if has_curve else 1, 1)
    names = ["chance", "reward model"]
    values = [0.5, summary.accuracy]
    colors = ["tab:gray", "tab:blue"]
    if summary.ceiling is not None:
        names.append("noise ceiling")
        values.append(summary.ceiling)
        colors.append("tab:green")
    bars = ax.bar(names, values, color=colors)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"held-out pairs (n={summary.num_pairs})")
    if has_curve:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot([s for s, _ in summary.curve], [a for _, a in summary.curve], "-o", ms=3)
        if summary.ceiling is not None:
            ax2.axhline(summary.ceiling, ls="--", color="tab:green", label="noise ceiling")
        ax2.axhline(0.5, ls=":", color="tab:gray", label="chance")
        ax2.set_xlabel("step")
        ax2.set_ylabel("held-out accuracy")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    return _save(fig, path)


def plot_verifiable(summary: VerifiableSummary, path: str | os.PathLike[str]) -> pathlib.Path:
    """Accuracy during RL on the verifiable task (or before/after bars without a curve)."""
    fig = _figure(4.8, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    if summary.curve:
        ax.plot([s for s, _ in summary.curve], [a for _, a in summary.curve], "-o", ms=3)
        ax.axhline(summary.accuracy_before, ls=":", color="tab:gray", label="before")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    else:
        bars = ax.bar(
            ["before", "after"],
            [summary.accuracy_before, summary.accuracy_after],
            color=["tab:gray", "tab:blue"],
        )
        for b in bars:
            v = b.get_height()
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(summary.name)
    ax.grid(alpha=0.3)
    return _save(fig, path)
