"""Over-optimisation without a gold reward: :class:`GoldFreeStop` watches signals a real run
can compute — the disagreement of a reward-model ensemble, the reward of a held-out check
model beside the optimised one, the KL from the reference — and says when to stop and which
evaluation to keep.

The signals, each normalised so that one threshold means the same in any run:

- **disagreement ratio** ``D_t / D_0``: the mean over samples of the std across ensemble
  members, divided by its value at the first update (the starting policy, whose samples are
  like the preference data). Members agree where the data constrained them and drift apart
  where it did not, which is where a policy that exploits one reward model goes (Coste et al.
  2023; Eisenstein et al. 2023).
- **check gap** ``(P_t - P_0) / s_P - (C_t - C_0) / s_C``: how far the optimised reward P rose
  beyond what a check model C trained on other preference pairs confirms, each in units of
  its own spread over samples at the first update (``s_P``, ``s_C``; 1 when not given). While
  the policy learns what both models learned from the data the two rise together; once it
  exploits the proxy's own errors the proxy keeps rising and the check stalls or falls.
- **check drop**: the check reward's fall from its best so far, in units of ``s_C``.
- **sqrt(KL)**: distance from the reference in the units of Gao et al. (2022), whose gold
  reward is a function of sqrt(KL) that rises, peaks and falls; a budget on it bounds the run.
- **KL growth** ``sqrt(KL_t) / sqrt(KL_r)``: the distance over the distance at the first update
  with a positive KL at or after step ``kl_reference_step`` (the first evaluation after the
  start). A budget in its own units: the run's early pace is the yardstick, so one threshold
  fits optimisers that move at different speeds. It stays low where the KL levels off (a KL
  penalty holds the policy) and keeps growing where nothing holds it (GRPO without a KL term).

The inputs are smoothed first (an exponential moving average with weight ``smoothing`` on the
past; 0 = none), then each signal is computed from them and compared with its threshold (None =
not used). Training stops once at least one
signal has been over its threshold for ``patience`` updates in a row. The kept evaluation
(:attr:`GoldFreeStop.best_step`, "best" without gold) is chosen among the updates at which
every signal was under its threshold: the one with the highest check reward when there is a
check model (``keep="check_peak"``), otherwise the last of them. It is known as the run goes
(:attr:`GoldFreeStop.candidate_step`, :attr:`GoldFreeStop.improved`), so a trainer can save the
weights of each new candidate and still have them when the stop comes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GoldFreePoint", "GoldFreeStop", "SIGNALS"]

#: The signals :class:`GoldFreeStop` can trip on, in the order it reports them.
SIGNALS: tuple[str, ...] = ("disagreement", "check_gap", "check_drop", "sqrt_kl", "kl_growth")

#: A KL (nats) at or below this counts as zero: no reference for the KL growth yet.
_KL_FLOOR = 1e-6


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


@dataclass
class GoldFreePoint:
    """One update: the raw inputs (``proxy``, ``disagreement``, ``check``, ``kl``; None when
    not given), the smoothed normalised signals (``signals``, by name) and which of them were
    over their thresholds (``over``)."""

    step: int
    proxy: float
    disagreement: float | None = None
    check: float | None = None
    kl: float | None = None
    signals: dict[str, float] = field(default_factory=dict)
    over: list[str] = field(default_factory=list)


@dataclass
class GoldFreeStop:
    """When to stop an RL run, and which evaluation to keep, without a gold reward.

    Call :meth:`update` at every evaluation (or every logged step) with what the run has:
    the optimised reward, and any of the ensemble disagreement, the check model's reward and
    the KL. Read :attr:`should_stop`, :attr:`stop_step`, :attr:`best_step`, :attr:`reasons`.

    Args:
        max_disagreement_ratio: trip when the smoothed disagreement exceeds this multiple of
            its starting value (None: not used).
        max_check_gap: trip when the smoothed check gap (proxy gain minus check gain, in
            starting spreads) exceeds this (None: not used).
        max_check_drop: trip when the smoothed check reward is this many starting spreads
            below its best so far (None: not used).
        max_sqrt_kl: trip when the smoothed sqrt(KL) exceeds this budget (None: not used).
        max_kl_growth: trip when the smoothed sqrt(KL) exceeds this multiple of its value at
            the reference update (None: not used).
        kl_reference_step: the KL growth's reference is the first update at or after this
            step whose KL is above 1e-6 nats (at every evaluation: 0, the first one after the
            start; at every step, set it to the step whose distance is the yardstick).
        patience: updates in a row with a signal over its threshold before stopping (>= 1).
        smoothing: EMA weight on the past in [0, 1) (0: the raw values).
        keep: ``"check_peak"`` (the default: the calm update, every signal under its
            threshold, with the best check reward; the last calm one when there is no check
            model) or ``"last_safe"`` (always the last calm update).

    A stop is final: later updates are recorded but change neither ``stop_step`` nor
    ``best_step``. NaN or missing inputs leave their signal out of that update.
    """

    max_disagreement_ratio: float | None = 1.5
    max_check_gap: float | None = 1.0
    max_check_drop: float | None = 0.25
    max_sqrt_kl: float | None = None
    max_kl_growth: float | None = None
    kl_reference_step: int = 0
    patience: int = 2
    smoothing: float = 0.0
    keep: str = "check_peak"
    history: list[GoldFreePoint] = field(default_factory=list)
    best_step: int | None = None
    stop_step: int | None = None
    reasons: list[str] = field(default_factory=list)
    #: the evaluation that would be kept if the run stopped now (None: no calm update yet)
    candidate_step: int | None = None
    #: whether the latest update became the new :attr:`candidate_step`
    improved: bool = False
    _candidate_check: float | None = field(default=None, repr=False)
    _start: dict[str, float] = field(default_factory=dict, repr=False)
    _ema: dict[str, float] = field(default_factory=dict, repr=False)
    _alarms: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "max_disagreement_ratio",
            "max_check_gap",
            "max_check_drop",
            "max_sqrt_kl",
            "max_kl_growth",
        ):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number or None, got {v}")
        if self.kl_reference_step < 0:
            raise ValueError(f"kl_reference_step must be >= 0, got {self.kl_reference_step}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.keep not in ("check_peak", "last_safe"):
            raise ValueError(f"keep must be 'check_peak' or 'last_safe', got {self.keep!r}")

    @property
    def thresholds(self) -> dict[str, float | None]:
        """Each signal's threshold (None: not used)."""
        return {
            "disagreement": self.max_disagreement_ratio,
            "check_gap": self.max_check_gap,
            "check_drop": self.max_check_drop,
            "sqrt_kl": self.max_sqrt_kl,
            "kl_growth": self.max_kl_growth,
        }

    @property
    def should_stop(self) -> bool:
        return self.stop_step is not None

    def update(
        self,
        step: int,
        proxy: float,
        *,
        disagreement: float | None = None,
        check: float | None = None,
        kl: float | None = None,
        proxy_scale: float | None = None,
        check_scale: float | None = None,
    ) -> bool:
        """Record one update; returns :attr:`should_stop`.

        ``proxy``: the optimised reward (mean over samples); ``disagreement``: the mean over
        samples of the std across ensemble members; ``check``: the check model's mean reward;
        ``kl``: the mean KL from the reference (nats per sequence). ``proxy_scale`` /
        ``check_scale``: the std over samples of the proxy's / check's scores, read at the
        first update that gives them (the spreads the check signals are measured in).
        """
        point = GoldFreePoint(
            int(step), float(proxy), _finite(disagreement), _finite(check), _finite(kl)
        )
        inputs = {"proxy": point.proxy, "disagreement": point.disagreement,
                  "check": point.check, "kl": point.kl}  # fmt: skip
        smooth: dict[str, float] = {}
        for name, value in inputs.items():
            if value is None:
                continue
            prev = self._ema.get(name)
            a = self.smoothing
            self._ema[name] = value if prev is None else a * prev + (1 - a) * value
            smooth[name] = self._ema[name]
        point.signals = self._signals(point.step, smooth, proxy_scale, check_scale)
        th = self.thresholds
        point.over = [
            s for s in SIGNALS if s in point.signals and th[s] is not None
            and point.signals[s] > th[s]  # type: ignore[operator]
        ]  # fmt: skip
        self.history.append(point)
        self.improved = False
        if self.stop_step is not None:
            return True
        if not point.over:
            self._consider(point)
        self._alarms = self._alarms + 1 if point.over else 0
        if self._alarms >= self.patience:
            self.stop_step = point.step
            run = self.history[-self._alarms :]
            self.reasons = [s for s in SIGNALS if any(s in p.over for p in run)]
            self.best_step = self.candidate_step
        return self.should_stop

    def _consider(self, point: GoldFreePoint) -> None:
        """Make the calm update ``point`` the candidate when ``keep`` prefers it: always for
        ``last_safe`` (and while no check reward was seen), else when its check reward is at
        least the candidate's."""
        c = point.check
        if self.keep == "check_peak" and self._candidate_check is not None:
            if c is None or c < self._candidate_check:
                return
        self.candidate_step = point.step
        self._candidate_check = c
        self.improved = True

    def _signals(
        self,
        step: int,
        x: Mapping[str, float],
        proxy_scale: float | None,
        check_scale: float | None,
    ) -> dict[str, float]:
        """The normalised signals from the smoothed inputs ``x`` at ``step``; the first value
        of each input (and the first scales given) are the reference, and for the KL growth
        the first KL above the floor from ``kl_reference_step`` on."""
        st = self._start
        for name in ("proxy_scale", "check_scale"):
            v = _finite(proxy_scale if name == "proxy_scale" else check_scale)
            if v is not None and name not in st:
                st[name] = max(v, 1e-12)
        for name, v in x.items():
            st.setdefault(name, v)
        out: dict[str, float] = {}
        if "disagreement" in x and st["disagreement"] > 0:
            out["disagreement"] = x["disagreement"] / st["disagreement"]
        if "check" in x:
            sc = st.get("check_scale", 1.0)
            gain_p = (x["proxy"] - st["proxy"]) / st.get("proxy_scale", 1.0)
            out["check_gap"] = gain_p - (x["check"] - st["check"]) / sc
            st["check_best"] = max(st.get("check_best", x["check"]), x["check"])
            out["check_drop"] = (st["check_best"] - x["check"]) / sc
        if "kl" in x:
            out["sqrt_kl"] = math.sqrt(max(x["kl"], 0.0))
            if "kl_reference" not in st and step >= self.kl_reference_step and x["kl"] > _KL_FLOOR:
                st["kl_reference"] = out["sqrt_kl"]
            if "kl_reference" in st:
                out["kl_growth"] = out["sqrt_kl"] / st["kl_reference"]
        return out

    def summary(self) -> dict[str, Any]:
        """``stop_step``, ``best_step``, ``reasons``, ``num_updates`` and the last signals."""
        return {
            "stop_step": self.stop_step,
            "best_step": self.best_step,
            "reasons": list(self.reasons),
            "num_updates": len(self.history),
            "last_signals": dict(self.history[-1].signals) if self.history else {},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(p) for p in self.history],
            "best_step": self.best_step,
            "stop_step": self.stop_step,
            "reasons": list(self.reasons),
            "candidate_step": self.candidate_step,
            "candidate_check": self._candidate_check,
            "start": dict(self._start),
            "ema": dict(self._ema),
            "alarms": self._alarms,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [GoldFreePoint(**p) for p in state["history"]]
        self.best_step = state["best_step"]
        self.stop_step = state["stop_step"]
        self.reasons = list(state["reasons"])
        self.candidate_step = state["candidate_step"]
        self._candidate_check = state["candidate_check"]
        self.improved = False
        self._start = dict(state["start"])
        self._ema = dict(state["ema"])
        self._alarms = int(state["alarms"])
