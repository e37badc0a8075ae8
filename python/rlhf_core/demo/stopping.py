"""The demo's gold-free early stop: a :class:`~rlhf_core.monitor.GoldFreeStop` configured by
``DemoConfig.gold_free`` and fed the evaluation records of a run (the proxy ensemble's mean and
disagreement, the check model's reward and their spreads, the KL). The gold reward is never
read here: the report compares where this stop lands with the gold peak afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_core.demo.config import _GOLD_FREE_FIELDS, DemoConfig
from rlhf_core.monitor import GoldFreeStop

__all__ = ["gold_free_stop"]


def gold_free_stop(cfg: DemoConfig, records: Sequence[Mapping[str, Any]]) -> GoldFreeStop:
    """A :class:`GoldFreeStop` with ``cfg.gold_free``'s settings, updated with every record
    (step order) of a run."""
    stopper = GoldFreeStop(**{f: getattr(cfg.gold_free, f) for f in _GOLD_FREE_FIELDS})
    for r in records:
        stopper.update(
            int(r["step"]),
            float(r["proxy"]),
            disagreement=r.get("disagreement"),
            check=r.get("check"),
            kl=r.get("kl"),
            proxy_scale=r.get("proxy_sd"),
            check_scale=r.get("check_sd"),
        )
    return stopper
