"""Failure-mode metrics of an RL run: :func:`distinct_n` and :func:`repetition_rate` measure
mode collapse and degenerate repetition in samples; :class:`InstabilityDetector` turns KL
spikes and entropy collapse into readable warnings.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InstabilityDetector", "distinct_n", "repetition_rate"]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(
    texts: Sequence[str], n: int = 2, *, tokenize: Callable[[str], Sequence[str]] = str.split
) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over all ``texts``.

    1.0 means no n-gram repeats across the batch; values falling during training signal mode
    collapse. ``tokenize`` splits a text into tokens (whitespace words by default; pass
    ``list`` for characters). Returns 0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams.extend(_ngrams(tokenize(t), n))
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def repetition_rate(
    texts: Sequence[str], n: int = 3, *, tokenize: Callable[[str], Sequence[str]] = str.split
) -> float:
    """Mean over texts of the fraction of n-grams that repeat an earlier n-gram of the same
    text (0.0 = no repetition; near 1.0 = the text loops). Texts shorter than ``n`` tokens are
    left out; 0.0 when none qualifies."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rates = []
    for t in texts:
        grams = _ngrams(tokenize(t), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


@dataclass
class InstabilityDetector:
    """Warnings for the usual ways an RL run goes wrong.

    - KL spike: ``kl > spike_factor * median(last `window` KL values)`` and
      ``kl > min_kl`` (so noise around zero KL does not fire), once ``min_history`` values exist.
    - Entropy collapse: mean token entropy below ``entropy_floor`` nats, or below
      ``entropy_drop`` times the first entropy seen.

    :meth:`update` returns the warnings of that step as readable sentences (empty if none).
    """

    spike_factor: float = 5.0
    window: int = 20
    min_history: int = 5
    min_kl: float = 1e-3
    entropy_floor: float = 0.05
    entropy_drop: float = 0.1
    _kl: deque[float] = field(default_factory=deque, repr=False)
    _first_entropy: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if self.window < 1 or self.min_history < 1:
            raise ValueError("window and min_history must be >= 1")
        self._kl = deque(self._kl, maxlen=self.window)

    def update(
        self, step: int, *, kl: float | None = None, entropy: float | None = None
    ) -> list[str]:
        out: list[str] = []
        if kl is not None:
            k = float(kl)
            if not math.isfinite(k):
                out.append(f"step {step}: KL is {k}")
            else:
                if len(self._kl) >= self.min_history:
                    med = statistics.median(self._kl)
                    if k > self.min_kl and k > self.spike_factor * max(med, 0.0):
                        out.append(
                            f"step {step}: KL spike: {k:.4g} is more than {self.spike_factor:g}x "
                            f"the median {med:.4g} of the last {len(self._kl)} steps; consider a "
                            "lower learning rate, a larger KL coefficient or tighter clipping"
                        )
                self._kl.append(k)
        if entropy is not None:
            e = float(entropy)
            if self._first_entropy is None and math.isfinite(e):
                self._first_entropy = e
            if e < self.entropy_floor:
                out.append(
                    f"step {step}: entropy collapse: mean token entropy {e:.4g} nats is below "
                    f"{self.entropy_floor:g}; the policy is nearly deterministic "
                    "(mode collapse likely; check distinct-n)"
                )
            elif (
                self._first_entropy is not None
                and self._first_entropy > 0
                and e < self.entropy_drop * self._first_entropy
            ):
                out.append(
                    f"step {step}: entropy fell to {e:.4g} nats, under "
                    f"{self.entropy_drop:g}x its initial {self._first_entropy:.4g}"
                )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kl": list(self._kl), "first_entropy": self._first_entropy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._kl = deque((float(x) for x in state["kl"]), maxlen=self.window)
        self._first_entropy = state["first_entropy"]
