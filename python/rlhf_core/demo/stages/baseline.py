"""Stage 4, baseline: the SFT policy at the evaluation point every method starts from (step 0
of each curve, and the "before" of the report's samples)."""

from __future__ import annotations

import time
from typing import Any

from rlhf_core.demo.language import LanguageEval
from rlhf_core.demo.pipeline import Run

__all__ = ["evaluate_baseline"]


def evaluate_baseline(run: Run, lang: LanguageEval, policy: Any) -> dict[str, Any]:
    """The evaluation record of the SFT ``policy`` at step 0 (read back when done)."""
    run.header("evaluation of the SFT policy (the starting point of every method)")
    data = run.done("baseline")
    if data is not None:
        run.say(f"  done before: proxy {data['proxy']:.3f}, gold {data['gold']:.3f}")
        return data
    t0 = time.time()
    rec = lang(policy, 0)
    data = run.finish("baseline", rec, t0)
    run.say(
        f"  {len(lang.prompts)} prompts x {run.cfg.eval_samples} samples: proxy "
        f"{rec['proxy']:.3f}, gold {rec['gold']:.3f}, mean length "
        f"{rec['response_length']:.1f} tokens"
    )
    return data
