"""The demo's report: PNG plots and a ``report.md`` (plus ``report.json``) in the run folder.

What goes in (plain dataclasses, filled by whoever ran the experiment):

- :class:`MethodCurve` per optimisation method: evaluations ``(step, kl, proxy, gold)``, the
  gold peak and the step where early stopping cut (from an
  :class:`~rlhf_core.monitor.OveroptimizationMonitor` or given).
- :class:`RewardModelSummary`: held-out accuracy of the proxy reward model next to the best
  accuracy possible under the label noise and chance.
- :class:`SampleComparison`: completions of the same prompt before and after optimisation.
- :class:`VerifiableSummary`: accuracy before/after RL on a task with exact answers.

What comes out (:func:`write_report`): ``plots/overoptimization.png`` (proxy and gold reward
against sqrt(KL) per method, the over-optimisation curve of Gao et al. 2022, with the gold
peak and the early-stop point marked), ``plots/reward_model.png``, ``plots/verifiable.png``,
``report.md`` linking them with tables of the numbers and samples, and ``report.json`` with
the same numbers for programs. :func:`summary_table` is the terminal version.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CurvePoint",
    "MethodCurve",
    "RewardModelSummary",
    "SampleComparison",
    "VerifiableSummary",
    "DemoReport",
    "kl_trend",
    "plot_overoptimization",
    "plot_reward_model",
    "plot_verifiable",
    "summary_table",
    "write_report",
]


def _sqrt_kl(kl: float) -> float:
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


@dataclass
class MethodCurve:
    """The evaluations of one method, in order. ``best_step``: the gold peak (computed from
    the points when None); ``stop_step``: where early stopping cut (None: it did not)."""

    method: str
    points: list[CurvePoint] = field(default_factory=list)
    best_step: int | None = None
    stop_step: int | None = None

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


# --------------------------------------------------------------------------------------------
# plots


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
        x = [_sqrt_kl(p.kl) for p in curve.points]
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
                [_sqrt_kl(peak.kl)],
                [peak.gold],
                "*",
                ms=14,
                color="tab:red",
                label=f"gold peak ({_where(peak)})",
            )
        stop = curve.stop
        if stop is not None:
            ax.axvline(
                _sqrt_kl(stop.kl), ls=":", color="tab:gray", label=f"early stop ({_where(stop)})"
            )
        ax.set_title(curve.method)
        ax.set_xlabel("sqrt(KL to reference)")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("proxy vs gold reward (over-optimisation)")
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


# --------------------------------------------------------------------------------------------
# text


def _where(p: CurvePoint) -> str:
    return p.label if p.label else f"step {p.step}"


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _curve_rows(report: DemoReport) -> list[list[str]]:
    rows = []
    for c in report.curves:
        last = c.points[-1] if c.points else None
        peak = c.peak
        stop = c.stop
        rows.append(
            [
                c.method,
                _f(last.proxy if last else None),
                _f(last.gold if last else None),
                f"{_f(peak.gold)} @ {_where(peak)}" if peak else "-",
                f"{_where(stop)} (gold {_f(stop.gold)})" if stop else "-",
                _f(_sqrt_kl(last.kl) if last else None),
            ]
        )
    return rows


_CURVE_HEAD = [
    "method",
    "final proxy",
    "final gold",
    "gold peak @ step",
    "early stop",
    "final sqrt(KL)",
]


def summary_table(report: DemoReport) -> str:
    """A plain-text table for the terminal: per method final proxy/gold, gold peak, early
    stop and final sqrt(KL); then reward-model and verifiable-task lines."""
    lines: list[str] = []
    if report.curves:
        rows = [_CURVE_HEAD, *_curve_rows(report)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_CURVE_HEAD))]
        for k, r in enumerate(rows):
            lines.append(
                "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            )
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
    rm = report.reward_model
    if rm is not None:
        ceiling = f", noise ceiling {_f(rm.ceiling)}" if rm.ceiling is not None else ""
        lines.append(
            f"reward model: held-out accuracy {_f(rm.accuracy)} on {rm.num_pairs} pairs"
            f"{ceiling}, chance 0.500"
        )
    v = report.verifiable
    if v is not None:
        lines.append(f"{v.name}: accuracy {_f(v.accuracy_before)} -> {_f(v.accuracy_after)}")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(run_dir: str | os.PathLike[str], report: DemoReport) -> pathlib.Path:
    """Write the plots (``run_dir/plots/*.png``), ``run_dir/report.md`` and
    ``run_dir/report.json``; return the path of ``report.md``."""
    run = pathlib.Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    md: list[str] = [f"# {report.title}", ""]
    if report.notes:
        md += [*(f"- {n}" for n in report.notes), ""]
    plots: dict[str, str] = {}
    if report.curves:
        plot_overoptimization(report.curves, run / "plots" / "overoptimization.png")
        plots["overoptimization"] = "plots/overoptimization.png"
        md += [
            "## Proxy vs gold reward",
            "",
            "Each method optimises the proxy reward model; the gold reward is the hidden "
            "preference it was trained to imitate. Plotted against sqrt(KL) from the reference "
            "policy (Gao et al. 2022); the star marks the gold peak, the dotted line where "
            "early stopping cut.",
            "",
            "![proxy vs gold reward](plots/overoptimization.png)",
            "",
            *_md_table(_CURVE_HEAD, _curve_rows(report)),
            "",
        ]
    rm = report.reward_model
    if rm is not None:
        plot_reward_model(rm, run / "plots" / "reward_model.png")
        plots["reward_model"] = "plots/reward_model.png"
        md += [
            "## Reward model",
            "",
            f"Held-out accuracy **{_f(rm.accuracy)}** on {rm.num_pairs} pairs (chance 0.500"
            + (
                f"; best possible under the label noise {_f(rm.ceiling)}"
                if rm.ceiling is not None
                else ""
            )
            + (
                f"; training accuracy {_f(rm.train_accuracy)}"
                if rm.train_accuracy is not None
                else ""
            )
            + ").",
            "",
            "![reward model accuracy](plots/reward_model.png)",
            "",
        ]
    v = report.verifiable
    if v is not None:
        plot_verifiable(v, run / "plots" / "verifiable.png")
        plots["verifiable"] = "plots/verifiable.png"
        md += [
            f"## Verifiable reward: {v.name}",
            "",
            f"Exact-answer accuracy {_f(v.accuracy_before)} before RL, "
            f"**{_f(v.accuracy_after)}** after"
            + (f" ({v.num_prompts} held-out prompts)." if v.num_prompts else "."),
            "",
            "![verifiable accuracy](plots/verifiable.png)",
            "",
        ]
    if report.samples:
        rows = [
            [
                s.method or "-",
                _md_cell(s.prompt),
                _md_cell(s.before),
                _f(s.gold_before, 2),
                _md_cell(s.after),
                _f(s.gold_after, 2),
            ]
            for s in report.samples
        ]
        md += [
            "## Samples before and after",
            "",
            *_md_table(["method", "prompt", "before", "gold", "after", "gold"], rows),
            "",
        ]
    if report.timings:
        md += [
            "## Timings",
            "",
            *_md_table(["stage", "seconds"], [[k, f"{t:.1f}"] for k, t in report.timings.items()]),
            "",
        ]
    path = run / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    data = _finite(asdict(report))
    data["plots"] = plots
    (run / "report.json").write_text(
        json.dumps(data, indent=2, default=_json_default, allow_nan=False), encoding="utf-8"
    )
    return path
