"""Where the gold-free early stop lands against the gold peak, over finished demo runs.

For each run folder given (``rlhf-core demo --run_dir DIR --seed S``, any scale) and each of
its PPO / GRPO curves, applies the demo's gold-free stop (:func:`rlhf_core.demo.stopping.
gold_free_stop`, the run's ``gold_free`` settings unless ``--set`` overrides them) to the
evaluation records, and prints per run and method: the gold peak, the gold-free stop and
the evaluation it kept (the last one when it did not stop), the regret (gold at the peak minus gold at the kept evaluation), how
many evaluations the kept one is from the peak, the gold-based early stop
(:class:`rlhf_core.monitor.OveroptimizationMonitor`, the run's ``early_stop_*`` settings) and
the final gold reward (no stop); then the means over runs per method. A stage still training
is read from its ``evals.jsonl`` so far (``partial`` in the rows, ``last_step`` its last
evaluation). The gold reward is only
read to judge the stop, never by it.

Usage::

    python benches/bench_gold_free.py runs/gf-seed0 runs/gf-seed1 runs/gf-seed2
    python benches/bench_gold_free.py runs/gf-seed* --set gold_free.patience=3 --json out.json
    python benches/bench_gold_free.py runs/gf-seed6 --set gold_free.max_kl_growth=2 --plots out/

``--plots DIR`` draws each run's ``gold_free.png`` again with the settings used here, as
``DIR/<run>-gold_free.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rlhf_core.demo.config import load_demo_config
from rlhf_core.demo.plots import plot_gold_free
from rlhf_core.demo.results import MethodCurve
from rlhf_core.demo.runner import method_curve


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None if text == "none" else text


def measure(
    run: Path, overrides: dict[str, Any], curves: list[MethodCurve] | None = None
) -> list[dict[str, Any]]:
    """One row per PPO / GRPO curve of the demo in ``run``; the curves are appended to
    ``curves`` when given."""
    cfg = load_demo_config(run / "config.toml", {**overrides, "run_dir": str(run)})
    rows = []
    for method in ("ppo", "grpo"):
        stage, evals = run / method / "stage.json", run / method / "evals.jsonl"
        if stage.is_file():
            records, partial = json.loads(stage.read_text())["records"], False
        elif evals.is_file():  # a stage still training: the evaluations so far
            records = [json.loads(line) for line in evals.read_text().splitlines() if line]
            records, partial = sorted(records, key=lambda r: r["step"]), True
        else:
            continue
        if len(records) < 2:
            continue
        curve = method_curve(cfg, method, records)
        if curves is not None:
            curves.append(curve)
        stopper = curve.gold_free
        assert stopper is not None
        steps = [p.step for p in curve.points]
        peak = curve.peak
        # without a stop the run trains to the end: what it keeps is the last evaluation
        stopped = stopper.stop_step is not None
        kept = curve.point_at(stopper.best_step) if stopped else curve.points[-1]
        gold_stop = curve.stop
        assert peak is not None
        rows.append(
            {
                "run": run.name,
                "seed": cfg.seed,
                "method": method,
                "partial": partial,
                "last_step": int(records[-1]["step"]),
                "peak_step": peak.step,
                "peak_gold": peak.gold,
                "stop_step": stopper.stop_step,
                "stopped": stopped,
                "reasons": stopper.reasons,
                "kept_step": kept.step if kept else None,
                "kept_gold": kept.gold if kept else None,
                "regret": peak.gold - kept.gold if kept else None,
                "evals_from_peak": steps.index(kept.step) - steps.index(peak.step)
                if kept
                else None,
                "gold_stop_step": gold_stop.step if gold_stop else None,
                "gold_stop_gold": gold_stop.gold if gold_stop else None,
                "final_gold": curve.points[-1].gold,
                "start_gold": curve.points[0].gold,
            }
        )
    return rows


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished demo run folders")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a demo setting, e.g. gold_free.patience=3 (JSON values; none)",
    )
    ap.add_argument("--json", type=Path, help="write the rows and means here")
    ap.add_argument("--plots", type=Path, help="draw each run's gold_free.png here")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = _value(value)
    rows = []
    for run in args.runs:
        curves: list[MethodCurve] = []
        rows += measure(run, overrides, curves)
        if args.plots and curves:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_gold_free(curves, args.plots / f"{run.name}-gold_free.png")
    cols = ["run", "method", "last_step", "partial", "peak_step", "peak_gold", "stop_step", "kept_step", "kept_gold",
            "regret", "evals_from_peak", "gold_stop_step", "gold_stop_gold", "final_gold"]  # fmt: skip
    print("  ".join(cols + ["reasons"]))
    for r in rows:
        print("  ".join(_f(r[c]) for c in cols) + "  " + (",".join(r["reasons"]) or "-"))
    means: dict[str, dict[str, Any]] = {}
    for method in ("ppo", "grpo"):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        stopped = [r for r in mine if r["kept_gold"] is not None]  # kept: always, see measure

        def mean(key: str, of: list[dict[str, Any]]) -> float:
            vals = [r[key] for r in of if r[key] is not None]
            return sum(vals) / len(vals) if vals else math.nan

        means[method] = {
            "runs": len(mine),
            "stopped": sum(r["stopped"] for r in mine),
            "peak_gold": mean("peak_gold", mine),
            "kept_gold": mean("kept_gold", stopped),
            "regret": mean("regret", stopped),
            "abs_evals_from_peak": sum(abs(r["evals_from_peak"]) for r in stopped)
            / max(len(stopped), 1),
            "gold_stop_gold": mean("gold_stop_gold", mine),
            "final_gold": mean("final_gold", mine),
            "start_gold": mean("start_gold", mine),
        }
        m = means[method]
        print(
            f"{method}: {m['stopped']}/{m['runs']} runs stopped; mean gold: peak "
            f"{m['peak_gold']:.3f}, gold-free kept {m['kept_gold']:.3f} (regret "
            f"{m['regret']:.3f}, {m['abs_evals_from_peak']:.1f} evaluations from the peak), "
            f"gold-based stop {m['gold_stop_gold']:.3f}, no stop {m['final_gold']:.3f}, start "
            f"{m['start_gold']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "means": means}, indent=2) + "\n")


if __name__ == "__main__":
    main()
