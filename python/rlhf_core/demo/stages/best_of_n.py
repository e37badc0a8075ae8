"""Best-of-N: sample N completions of each evaluation prompt from the SFT policy and keep the
proxy's favourite. The largest N is sampled once per prompt and the smaller N reuse those
samples in disjoint groups (:func:`rlhf_core.evaluation.best_of_n_curve`); the KL of best-of-N
is the analytic ``log N - (N - 1) / N``."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_core.demo.language import LanguageEval
from rlhf_core.demo.pipeline import Run
from rlhf_core.evaluation import best_of_n_curve, evaluate_policy

__all__ = ["best_of_n"]


def best_of_n(run: Run, lang: LanguageEval, policy: Any) -> dict[str, Any]:
    """The best-of-N curve of ``policy`` (one record per N, ``step`` = N) and the proxy's
    favourite sample of each shown prompt at the largest N."""
    ns = list(run.cfg.best_of_n.ns)
    run.header(f"best-of-N: sample N from the SFT policy, keep the proxy's favourite (N={ns})")
    data = run.done("best_of_n")
    if data is not None:
        _say(run, data["records"])
        return data
    t0 = time.time()
    nmax = max(ns)
    ev = evaluate_policy(
        policy,
        run.tok,
        lang.prompts,
        lang.scorers(),
        num_samples=nmax,
        max_new_tokens=run.cfg.max_new_tokens,
        seed=lang.seed + 1,
        batch_size=256,
    )
    p = len(lang.prompts)
    proxy = ev.scores["proxy"].reshape(p, nmax)  # (P, N): prompt-major rows
    gold = ev.scores["gold"].reshape(p, nmax)
    samples = []
    for i in lang.shown:
        j = int(np.argmax(np.where(np.isfinite(proxy[i]), proxy[i], -np.inf)))
        samples.append(
            {
                "prompt": lang.prompts[i],
                "text": ev.texts[i * nmax + j],
                "gold": float(gold[i, j]),
                "proxy": float(proxy[i, j]),
            }
        )
    records: list[dict[str, Any]] = [
        {"step": n, "kl": kl, "proxy": px, "gold": g, "label": f"N={n}"}
        for n, kl, px, g in best_of_n_curve(proxy, gold, ns)
    ]
    data = run.finish("best_of_n", {"records": records, "samples": samples, "num_prompts": p}, t0)
    _say(run, records)
    return data


def _say(run: Run, records: Sequence[Mapping[str, Any]]) -> None:
    for r in records:
        run.say(
            f"  N={r['step']:<4d} sqrt(KL) {math.sqrt(r['kl']):.2f}  proxy {r['proxy']:.3f}"
            f"  gold {r['gold']:.3f}"
        )
