"""Watching a run: metrics files, experiment trackers, logged samples, phase timings, the NaN
tripwire and failure-mode detectors.

One module per concern (:mod:`~rlhf_core.monitor.logger`, :mod:`~rlhf_core.monitor.tracking`,
:mod:`~rlhf_core.monitor.samples`, :mod:`~rlhf_core.monitor.guards`,
:mod:`~rlhf_core.monitor.overoptimization`, :mod:`~rlhf_core.monitor.failure_modes`); every
public name is importable from ``rlhf_core.monitor``. The trainers use the detectors through
callbacks (:mod:`rlhf_core.trainers.callbacks`).

- :class:`MetricsLogger` appends one JSON object per step to ``run_dir/metrics.jsonl`` and hands
  the numbers to the trackers of ``report_to`` (:func:`make_trackers`: TensorBoard, W&B,
  trackio, MLflow, each an optional extra). :meth:`MetricsLogger.read` reads a metrics file
  back.
- :class:`SampleLogger` appends sampled completions to ``run_dir/samples.jsonl``;
  :func:`print_samples` shows a few on the console.
- :class:`PhaseTimer` accumulates wall-clock time per named phase (generation, scoring, ...).
- :func:`check_finite` raises :class:`NonFiniteError` naming every non-finite metric or tensor
  after saving the offending batch to ``dump_dir/nonfinite_step{N}.pt``.
- :class:`OveroptimizationMonitor` tracks the optimised (proxy) reward against a gold or
  held-out reward, remembers the gold peak and says when to stop (Goodhart early stopping).
- :class:`GoldFreeStop` says when to stop without a gold reward, from a reward ensemble's
  disagreement, a check model's reward and the KL, and which evaluation to keep.
- :func:`distinct_n`, :func:`repetition_rate` and :class:`InstabilityDetector` turn mode
  collapse, degenerate repetition, KL spikes and entropy collapse into numbers and warnings.
"""

from rlhf_core.monitor.failure_modes import InstabilityDetector, distinct_n, repetition_rate
from rlhf_core.monitor.gold_free import GoldFreePoint, GoldFreeStop
from rlhf_core.monitor.guards import NonFiniteError, check_finite
from rlhf_core.monitor.logger import MetricsLogger, PhaseTimer, read_metrics
from rlhf_core.monitor.overoptimization import EvalPoint, OveroptimizationMonitor
from rlhf_core.monitor.samples import SampleLogger, print_samples, read_samples
from rlhf_core.monitor.tracking import (
    REPORT_TO,
    Tracker,
    TrackerNotInstalledError,
    make_trackers,
)

__all__ = [
    "MetricsLogger",
    "read_metrics",
    "REPORT_TO",
    "Tracker",
    "TrackerNotInstalledError",
    "make_trackers",
    "SampleLogger",
    "read_samples",
    "print_samples",
    "PhaseTimer",
    "NonFiniteError",
    "check_finite",
    "OveroptimizationMonitor",
    "EvalPoint",
    "GoldFreeStop",
    "GoldFreePoint",
    "distinct_n",
    "repetition_rate",
    "InstabilityDetector",
]
