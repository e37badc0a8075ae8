"""The built-in demo: the whole RLHF pipeline on a small model and a synthetic task.

Nothing is downloaded. ``rlhf-core demo`` (or :func:`run_demo`) runs, in one run folder:

1. **SFT**: the built-in model (``model_size``) learns the synthetic language of
   :mod:`rlhf_core.tasks` from a fixed seed.
2. **Preferences**: pairs of the SFT model's samples are labelled by the hidden **gold** reward
   with Bradley-Terry noise, ``P(a > b) = sigmoid(beta * (gold(a) - gold(b)))``; a held-out
   share is kept aside, and the best accuracy any model can reach on it under that noise (the
   *noise ceiling*) is computed.
3. **Proxy reward model**: a :class:`~rlhf_core.models.RewardModel` on the SFT body, trained
   on those pairs; held-out accuracy is reported next to the ceiling.
4. **Optimisation of the proxy**: best-of-N sampling (several N), PPO, GRPO, and DPO on the
   same pairs. At evaluation points (every ``eval_every`` steps, and before training) the
   policy is sampled on a fixed prompt set and scored with the proxy and the gold reward, and
   its KL from the SFT reference is measured. An
   :class:`~rlhf_core.monitor.OveroptimizationMonitor` marks the gold peak and where early
   stopping would have cut; training goes on past it so the fall is visible. The on-policy
   trainers also log the gold reward of every training rollout (as a reward source of weight
   0), so ``metrics.jsonl`` has proxy, gold and KL at every step.
5. **Verifiable reward**: a second small model learns arithmetic from a corpus with wrong
   answers, then GRPO with the exact-answer reward raises its accuracy.
6. **Report**: ``report.md`` / ``report.json`` and PNG plots (proxy and gold reward against
   sqrt(KL) per method, the over-optimisation curve of Gao et al. 2022; reward-model
   accuracy; arithmetic accuracy) and sample completions before and after; a summary table
   in the terminal.

Every stage writes its results into its own folder and a ``stage.json`` when it finishes, and
every trainer checkpoints, so running the demo again on the same run folder (``resume=true``,
the default) continues where it stopped and a finished demo just prints its summary again.

Where things are:

- :mod:`~rlhf_core.demo.config`: :class:`DemoConfig` and its stage tables, :data:`QUICK`,
  :func:`load_demo_config`;
- :mod:`~rlhf_core.demo.pipeline`: the stage protocol (done / finish / resume, training from
  evaluation point to evaluation point) and the run-folder checks;
- :mod:`~rlhf_core.demo.language`: the evaluation of a policy of the synthetic language;
- :mod:`~rlhf_core.demo.stages`: one module per stage;
- :mod:`~rlhf_core.demo.runner`: :func:`run_demo` (the stages in order) and the report's
  assembly;
- :mod:`~rlhf_core.demo.report` (with :mod:`~rlhf_core.demo.results` and
  :mod:`~rlhf_core.demo.plots`): ``report.md``, ``report.json``, the plots, the terminal table.

Policy evaluation and the best-of-n curve are library code in :mod:`rlhf_core.evaluation`
(``rlhf-core eval`` uses them too); their names are re-exported here.
"""

from __future__ import annotations

from rlhf_core.demo.config import (
    METHODS,
    QUICK,
    DemoArithmetic,
    DemoBestOfN,
    DemoConfig,
    DemoDPO,
    DemoGRPO,
    DemoPPO,
    DemoPreferences,
    DemoReward,
    DemoSFT,
    load_demo_config,
)
from rlhf_core.demo.runner import DemoResult, run_demo
from rlhf_core.evaluation import PolicyEval, best_of_n_curve, best_of_n_kl, evaluate_policy

__all__ = [
    "DemoConfig",
    "DemoSFT",
    "DemoPreferences",
    "DemoReward",
    "DemoBestOfN",
    "DemoPPO",
    "DemoGRPO",
    "DemoDPO",
    "DemoArithmetic",
    "QUICK",
    "METHODS",
    "load_demo_config",
    "run_demo",
    "DemoResult",
    "PolicyEval",
    "evaluate_policy",
    "best_of_n_curve",
    "best_of_n_kl",
]
