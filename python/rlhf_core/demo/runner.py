"""The demo from start to end: the stages in order (:func:`run_demo`), then the report built
from their results (:func:`build_report`)."""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rlhf_core.demo import report as R
from rlhf_core.demo.config import DemoConfig
from rlhf_core.demo.language import LanguageEval
from rlhf_core.demo.pipeline import Run
from rlhf_core.demo.stages.arithmetic import arithmetic
from rlhf_core.demo.stages.baseline import evaluate_baseline
from rlhf_core.demo.stages.best_of_n import best_of_n
from rlhf_core.demo.stages.dpo import train_dpo
from rlhf_core.demo.stages.preferences import label_preferences
from rlhf_core.demo.stages.reward import train_reward_model
from rlhf_core.demo.stages.rl import train_rl
from rlhf_core.demo.stages.sft import train_sft
from rlhf_core.demo.stopping import gold_free_stop
from rlhf_core.demo.workers import run_in_workers, start_beside

__all__ = ["DemoResult", "run_demo", "build_report"]

#: How the report names each method.
_NAMES = {"best_of_n": "best-of-N", "ppo": "PPO", "grpo": "GRPO", "dpo": "DPO"}


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the report (also in ``run_dir/report.json``), the path
    of ``report.md``, the terminal summary, whether the run had already finished, and the
    seconds this call took."""

    report: R.DemoReport
    report_path: pathlib.Path
    summary: str
    already_finished: bool = False
    seconds: float = 0.0


def run_demo(config: DemoConfig | None = None, *, out: Any = None) -> DemoResult:
    """Run the demo (see :mod:`rlhf_core.demo`) and write its report.

    Args:
        config: a :class:`DemoConfig` (default: the full demo; see
            :func:`~rlhf_core.demo.load_demo_config` for ``quick`` and overrides).
        out: where progress text goes (default ``sys.stdout``); tqdm bars go to stderr.

    Returns:
        :class:`DemoResult`; the report is also in ``config.run_dir``.
    """
    import torch

    cfg = config if config is not None else DemoConfig()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with _quiet_transformers():
            return _run(Run(cfg, out=out))
    finally:
        torch.set_num_threads(threads)


def _run(run: Run) -> DemoResult:
    from rlhf_core.models import make_reference
    from rlhf_core.rewards import RewardModelScorer
    from rlhf_core.rewards.ensemble import RewardEnsembleScorer

    cfg = run.cfg
    t_start = time.time()
    run.check_run_dir()
    finished_before = run.finished_before()
    scale = "quick" if cfg.model_size == "tiny" else "full"
    run.say(
        f"rlhf-core demo: {run.root} ({scale} scale, built-in {cfg.model_size} model; "
        "nothing is downloaded)"
    )
    # the arithmetic part depends on nothing: with workers it runs beside the first stages
    side = (
        start_beside(run, "arithmetic")
        if cfg.arithmetic.enabled and run.done("arithmetic") is None
        else None
    )
    try:
        sft = train_sft(run)
        train, held, prefs = label_preferences(run, sft)
        rm, check, rm_data = train_reward_model(run, sft, train, held, prefs)
        if side is not None:
            side.join()
            run.ran.append("arithmetic")
    finally:
        if side is not None:
            side.stop()
    scorer: Any = (
        RewardEnsembleScorer(rm, run.tok, batch_size=128)  # evaluated: the members' mean
        if getattr(rm, "num_members", None) is not None
        else RewardModelScorer(rm, run.tok, batch_size=128)
    )
    checker = (
        RewardModelScorer(check, run.tok, batch_size=128, name="check_model")
        if check is not None
        else None
    )
    lang = LanguageEval(run, scorer, make_reference(sft), checker)
    baseline = evaluate_baseline(run, lang, sft)
    run_in_workers(run)  # workers > 1: the next stages run side by side first, then are read back
    results: dict[str, dict[str, Any]] = {}
    for m in cfg.methods:
        if m == "best_of_n":
            results[m] = best_of_n(run, lang, sft)
        elif m in ("ppo", "grpo"):
            results[m] = train_rl(run, lang, m, sft, rm, baseline)
        elif m == "dpo":
            results[m] = train_dpo(run, lang, sft, train, baseline)
    arith = arithmetic(run) if cfg.arithmetic.enabled else None
    run.stages_done()  # in a worker process (demo.workers) its one stage is done: it stops here
    run.header("report")
    rep = build_report(run, len(lang.prompts), baseline, results, rm_data, arith)
    path = R.write_report(run.root, rep)
    summary = R.summary_table(rep)
    run.say("")
    run.say(summary)
    total = time.time() - t_start
    if finished_before:
        run.say(
            f"\nthis demo had already finished in {run.root}; nothing was trained again "
            "(choose another --run-dir for a new run)"
        )
    else:
        redone = ", ".join(run.ran) if run.ran else "none"
        run.say(f"\nfinished in {total:.0f} s (stages run now: {redone})")
    run.say(f"report: {path}  plots: {run.root / 'plots'}")
    return DemoResult(rep, path, summary, already_finished=finished_before, seconds=total)


def build_report(
    run: Run,
    num_prompts: int,
    baseline: dict[str, Any],
    results: dict[str, dict[str, Any]],
    rm: dict[str, Any],
    arith: dict[str, Any] | None,
) -> R.DemoReport:
    """The :class:`~rlhf_core.demo.report.DemoReport` of a run from its stages' results:
    one curve per method (gold peak and early stop from an
    :class:`~rlhf_core.monitor.OveroptimizationMonitor`), the samples before (``baseline``)
    and after each method, the reward model, the arithmetic part, notes and timings.
    ``num_prompts`` is the size of the evaluation prompt set."""
    from rlhf_core.config import config_to_dict

    cfg = run.cfg
    curves: list[R.MethodCurve] = []
    notes: list[str] = []
    samples: list[R.SampleComparison] = []
    for m, data in results.items():
        curve = method_curve(cfg, m, data["records"])
        curves.append(curve)
        note = _curve_note(run, m, curve)
        if note:
            notes.append(note)
        after = data["samples"] if m == "best_of_n" else data["records"][-1]["samples"]
        method = _NAMES[m] + (f" (N={max(cfg.best_of_n.ns)})" if m == "best_of_n" else "")
        for b, a in zip(baseline["samples"], after, strict=False):
            samples.append(
                R.SampleComparison(
                    prompt=b["prompt"],
                    before=b["text"],
                    after=a["text"],
                    gold_before=b["gold"],
                    gold_after=a["gold"],
                    method=method,
                )
            )
    if "best_of_n" in results:
        notes.append(
            "best-of-N: KL is the analytic log N - (N-1)/N; proxy and gold are averaged over "
            "disjoint groups of N samples per prompt"
        )
    go = rm.get("gold_order_accuracy")
    if go is not None:
        notes.append(
            f"reward model: agrees with the noise-free gold order on {go:.3f} of held-out "
            f"pairs (its accuracy on the noisy labels is {rm['accuracy']:.3f}, ceiling "
            f"{rm['ceiling']:.3f})"
        )
    notes.append(
        f"evaluation: {num_prompts} fixed prompts x {cfg.eval_samples} "
        "samples at temperature 1 per point; KL = mean over samples of "
        "sum_t log pi - log pi_ref (nats)"
    )
    verifiable = None
    if arith is not None:
        verifiable = R.VerifiableSummary(
            name="GRPO on arithmetic (exact answers)",
            accuracy_before=arith["accuracy_before"],
            accuracy_after=arith["accuracy_after"],
            num_prompts=arith["num_prompts"],
            curve=[(int(r["step"]), float(r["accuracy"])) for r in arith["records"]],
        )
        notes.append(
            "arithmetic: accuracy is the share of samples at temperature 1 with the exact "
            f"answer, {arith['accuracy_before']:.3f} -> {arith['accuracy_after']:.3f}; "
            f"greedy decoding {arith['greedy_before']:.3f} -> {arith['greedy_after']:.3f}"
        )
    return R.DemoReport(
        title="rlhf-core demo: over-optimisation of a learned reward",
        curves=curves,
        reward_model=R.RewardModelSummary(
            accuracy=rm["accuracy"],
            num_pairs=rm["num_pairs"],
            ceiling=rm["ceiling"],
            train_accuracy=rm.get("train_accuracy"),
            curve=[(int(s), float(a)) for s, a in rm.get("curve", [])],
        ),
        samples=samples,
        verifiable=verifiable,
        notes=notes,
        timings=dict(run.timings),
        config=config_to_dict(cfg),
    )


def method_curve(cfg: DemoConfig, method: str, records: list[dict[str, Any]]) -> R.MethodCurve:
    """One method's curve from its evaluation records (step order): the gold peak and the
    gold-based early stop (:class:`~rlhf_core.monitor.OveroptimizationMonitor`, the config's
    ``early_stop_*``), each point's check reward and disagreement, and for PPO and GRPO the
    gold-free stop with ``cfg.gold_free``'s settings."""
    from rlhf_core.monitor import OveroptimizationMonitor

    mon = OveroptimizationMonitor(
        patience=cfg.early_stop_patience, min_delta=cfg.early_stop_min_delta
    )
    for r in records:
        mon.update(int(r["step"]), r["proxy"], r["gold"], r["kl"])
    curve = R.MethodCurve.from_monitor(_NAMES[method], mon)
    for p, r in zip(curve.points, records, strict=True):
        p.label = r.get("label")
        p.check = r.get("check")
        p.disagreement = r.get("disagreement")
    if method in ("ppo", "grpo"):
        curve.gold_free = R.GoldFreeSummary.from_stopper(gold_free_stop(cfg, records))
    return curve


def _curve_note(run: Run, method: str, curve: R.MethodCurve) -> str:
    """The report's line on one method's curve: gold peak, early stop, last point ("" when
    the curve has no finite gold)."""
    unit = "N=" if method == "best_of_n" else "step "
    peak, stop, last = curve.peak, curve.stop, curve.points[-1]
    if peak is None:
        return ""
    patience = run.cfg.early_stop_patience
    cut = (
        f"early stopping (patience {patience}) would cut at {unit}{stop.step} "
        f"(gold {stop.gold:.3f})"
        if stop is not None
        else "early stopping would not have cut"
    )
    return (
        f"{_NAMES[method]}: gold peaks at {unit}{peak.step} ({peak.gold:.3f}, proxy "
        f"{peak.proxy:.3f}); {cut}; last {unit}{last.step}: proxy {last.proxy:.3f}, "
        f"gold {last.gold:.3f}, sqrt(KL) {math.sqrt(max(last.kl, 0.0)):.2f}"
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-call progress bars (weight loading / saving) for the run."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
