"""Goodhart early stopping: :class:`OveroptimizationMonitor` tracks the optimised (proxy)
reward against a gold or held-out reward, remembers the gold peak and says when to stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EvalPoint", "OveroptimizationMonitor"]


@dataclass
class EvalPoint:
    """One evaluation of a run: the optimised (proxy) reward, the gold reward (None when not
    known) and the KL from the reference (None when not measured)."""

    step: int
    proxy: float
    gold: float | None = None
    kl: float | None = None


@dataclass
class OveroptimizationMonitor:
    """Track proxy vs gold (or held-out) reward and stop at the gold peak.

    The gold reward is what we actually want; the proxy is what the optimiser sees. Pushed
    hard, the proxy keeps rising while the gold reward peaks and falls (Gao et al. 2022,
    "Scaling Laws for Reward Model Overoptimization"). Call :meth:`update` at every evaluation:

    - ``best_step`` / ``best_gold``: the evaluation with the highest gold reward so far.
    - ``should_stop``: True once ``patience`` evaluations in a row brought no gold improvement
      larger than ``min_delta`` over the best; it stays True and ``stop_step`` records where.
    - ``diverging``: the proxy went up while the gold went down over the last ``window``
      evaluations (least-squares slopes of opposite signs, each beyond ``min_delta`` per
      evaluation on average), the signature of reward hacking.

    NaN gold values count as "no improvement". Without gold values nothing stops.
    """

    patience: int = 3
    min_delta: float = 0.0
    window: int = 4
    history: list[EvalPoint] = field(default_factory=list)
    best_step: int | None = None
    best_gold: float | None = None
    evals_since_best: int = 0
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")

    def update(
        self, step: int, proxy: float, gold: float | None = None, kl: float | None = None
    ) -> bool:
        """Record one evaluation; returns :attr:`should_stop`."""
        g = None if gold is None else float(gold)
        self.history.append(
            EvalPoint(int(step), float(proxy), g, None if kl is None else float(kl))
        )
        if g is not None:
            if math.isfinite(g) and (self.best_gold is None or g > self.best_gold + self.min_delta):
                self.best_gold = g
                self.best_step = int(step)
                self.evals_since_best = 0
            else:
                self.evals_since_best += 1
            if self.stop_step is None and self.evals_since_best >= self.patience:
                self.stop_step = int(step)
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.stop_step is not None

    @property
    def diverging(self) -> bool:
        pts = [p for p in self.history if p.gold is not None and math.isfinite(p.gold)]
        pts = pts[-self.window :]
        if len(pts) < self.window:
            return False
        x = np.arange(len(pts), dtype=np.float64)
        proxy_slope = float(np.polyfit(x, [p.proxy for p in pts], 1)[0])
        gold_slope = float(np.polyfit(x, [float(p.gold) for p in pts], 1)[0])  # type: ignore[arg-type]
        return proxy_slope > self.min_delta and gold_slope < -self.min_delta

    def warnings(self) -> list[str]:
        """Human-readable notes on the current state (empty when all is well)."""
        out = []
        if self.diverging:
            out.append(
                f"over-optimisation: proxy reward rising while gold reward falls over the last "
                f"{self.window} evaluations (gold peak {self.best_gold:.4g} at step "
                f"{self.best_step})"
            )
        if self.should_stop:
            out.append(
                f"early stop: no gold improvement > {self.min_delta} for {self.patience} "
                f"evaluations (stopped at step {self.stop_step}, best step {self.best_step})"
            )
        return out

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {
            "best_step": self.best_step,
            "best_gold": self.best_gold,
            "stop_step": self.stop_step,
            "last_proxy": None if last is None else last.proxy,
            "last_gold": None if last is None else last.gold,
            "num_evals": len(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [[p.step, p.proxy, p.gold, p.kl] for p in self.history],
            "best_step": self.best_step,
            "best_gold": self.best_gold,
            "evals_since_best": self.evals_since_best,
            "stop_step": self.stop_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [EvalPoint(int(s), float(p), g, k) for s, p, g, k in state["history"]]
        self.best_step = state["best_step"]
        self.best_gold = state["best_gold"]
        self.evals_since_best = int(state["evals_since_best"])
        self.stop_step = state["stop_step"]
