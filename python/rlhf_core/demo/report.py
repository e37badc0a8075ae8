"""The demo's report: ``report.md`` (plus ``report.json``) and the PNG plots in the run folder,
and :func:`summary_table`, the terminal version.

What goes in is a :class:`DemoReport` (:mod:`rlhf_core.demo.results`). What comes out
(:func:`write_report`): ``plots/overoptimization.png`` (proxy and gold reward against sqrt(KL)
per method, the over-optimisation curve of Gao et al. 2022, with the gold peak and the
early-stop point marked), ``plots/reward_model.png``, ``plots/verifiable.png``
(:mod:`rlhf_core.demo.plots`), ``report.md`` linking them with tables of the numbers and
samples, and ``report.json`` with the same numbers for programs (non-finite numbers as
``null``).

The dataclasses and plot functions are re-exported here: this module is the report's API.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Sequence
from dataclasses import asdict

from rlhf_core._io import atomic_write_text, json_safe
from rlhf_core.demo.plots import (
    kl_trend,
    plot_gold_free,
    plot_overoptimization,
    plot_reward_model,
    plot_verifiable,
)
from rlhf_core.demo.results import (
    CurvePoint,
    DemoReport,
    GoldFreeSummary,
    MethodCurve,
    RewardModelSummary,
    SampleComparison,
    VerifiableSummary,
    sqrt_kl,
)

__all__ = [
    "CurvePoint",
    "GoldFreeSummary",
    "MethodCurve",
    "RewardModelSummary",
    "SampleComparison",
    "VerifiableSummary",
    "DemoReport",
    "sqrt_kl",
    "kl_trend",
    "plot_gold_free",
    "plot_overoptimization",
    "plot_reward_model",
    "plot_verifiable",
    "summary_table",
    "write_report",
]


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _gold_free_cell(c: MethodCurve) -> str:
    g = c.gold_free
    if g is None:
        return "-"
    if g.stop_step is None:
        return "no stop"
    kept = c.kept
    return f"step {g.stop_step}, kept {kept.where} (gold {_f(kept.gold)})" if kept else (
        f"step {g.stop_step}, nothing kept"
    )  # fmt: skip


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
                f"{_f(peak.gold)} @ {peak.where}" if peak else "-",
                f"{stop.where} (gold {_f(stop.gold)})" if stop else "-",
                _gold_free_cell(c),
                _f(sqrt_kl(last.kl) if last else None),
            ]
        )
    return rows


_CURVE_HEAD = [
    "method",
    "final proxy",
    "final gold",
    "gold peak @ step",
    "early stop (gold)",
    "gold-free stop",
    "final sqrt(KL)",
]


def _gold_free_rows(report: DemoReport) -> list[list[str]]:
    rows = []
    for c in report.curves:
        g = c.gold_free
        if g is None:
            continue
        peak, kept, stop = c.peak, c.kept, c.stop
        regret = c.regret
        away = "-"
        if peak is not None and kept is not None:
            steps = [p.step for p in c.points]
            away = str(steps.index(kept.step) - steps.index(peak.step))
        rows.append(
            [
                c.method,
                f"{_f(peak.gold)} @ {peak.where}" if peak else "-",
                f"step {g.stop_step}" if g.stop_step is not None else "no stop",
                f"{kept.where} (gold {_f(kept.gold)})" if kept else "-",
                _f(regret),
                away,
                ", ".join(g.reasons) or "-",
                f"{stop.where} (gold {_f(stop.gold)})" if stop else "-",
                _f(c.points[-1].gold) if c.points else "-",
            ]
        )
    return rows


_GOLD_FREE_HEAD = [
    "method",
    "gold peak",
    "gold-free stop",
    "kept (gold)",
    "regret",
    "evals from peak",
    "signals",
    "gold-based stop",
    "no stop: final gold",
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
    if any(c.gold_free is not None for c in report.curves):
        plot_gold_free(report.curves, run / "plots" / "gold_free.png")
        plots["gold_free"] = "plots/gold_free.png"
        md += [
            "## Over-optimisation without a gold reward",
            "",
            "What a real run can see: the proxy ensemble's disagreement (std across members, "
            "over its starting value), the check model trained on other preference pairs, and "
            "the KL (as sqrt(KL), and its growth over the first evaluation after the start). "
            "The gold-free stop (rlhf_core.monitor.GoldFreeStop) reads only those; "
            "the gold reward is shown to judge it. Regret = gold at the gold peak - gold at "
            "the evaluation the gold-free stop kept.",
            "",
            "![gold-free signals](plots/gold_free.png)",
            "",
            *_md_table(_GOLD_FREE_HEAD, _gold_free_rows(report)),
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
    path = atomic_write_text(run / "report.md", "\n".join(md))
    data = json_safe(asdict(report))  # non-finite numbers as null: strict JSON
    data["plots"] = plots
    atomic_write_text(run / "report.json", json.dumps(data, indent=2, allow_nan=False))
    return path
