"""The demo's config: one dataclass per stage, :class:`DemoConfig` holding them, the
``--quick`` overrides (:data:`QUICK`) and :func:`load_demo_config`.

Each field carries its ``help`` (the CLI's ``rlhf-core demo --help`` is generated from it) and
each ``__post_init__`` refuses a bad value with a ``ValueError`` naming the dotted field
(``ppo.steps=0: expected >= 1``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.errors import check_field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "METHODS",
    "DemoSFT",
    "DemoPreferences",
    "DemoReward",
    "DemoBestOfN",
    "DemoPPO",
    "DemoGRPO",
    "DemoDPO",
    "DemoArithmetic",
    "DemoGoldFree",
    "DemoConfig",
    "QUICK",
    "load_demo_config",
    "flatten",
]

#: The proxy-optimisation methods the demo can run, in report order.
METHODS: tuple[str, ...] = ("best_of_n", "ppo", "grpo", "dpo")


def _at_least(cfg: Any, prefix: str, minimum: float, *names: str) -> None:
    """Check ``getattr(cfg, name) >= minimum`` for each name; errors name ``prefix.name``."""
    for name in names:
        value = getattr(cfg, name)
        check_field(value >= minimum, f"{prefix}{name}", value, f"expected >= {minimum}")


def _positive(cfg: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        check_field(value > 0, f"{prefix}{name}", value, "expected > 0")


_REDUCE_HELP = (
    "what is optimised of the proxy ensemble: 'mean', 'min' (worst case), 'mean_minus_std' "
    "or 'mean_minus_var' (uncertainty-weighted), see rlhf_core.rewards.ensemble"
)
_LAMBDA_HELP = "λ of mean_minus_std / mean_minus_var"


def _reduction(value: str, name: str) -> None:
    from rlhf_core.rewards.ensemble import ENSEMBLE_REDUCTIONS

    ok = value in ENSEMBLE_REDUCTIONS
    check_field(ok, name, value, f"expected one of {ENSEMBLE_REDUCTIONS}")


def _builtin_size(value: str, name: str) -> None:
    from rlhf_core.models import BUILTIN_SIZES

    check_field(value in BUILTIN_SIZES, name, value, f"expected one of {sorted(BUILTIN_SIZES)}")


@dataclass
class DemoSFT:
    """Stage 1: supervised fine-tuning on the synthetic language."""

    steps: int = field(default=400, metadata={"help": "SFT optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per SFT step"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak SFT learning rate"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warm-up steps (then cosine)"})
    corpus_size: int = field(
        default=8000, metadata={"help": "examples sampled from the grammar (tasks.sft_corpus)"}
    )

    def __post_init__(self) -> None:
        _at_least(self, "sft.", 1, "steps", "batch_size")
        _positive(self, "sft.", "learning_rate")
        _at_least(self, "sft.", 0, "warmup_steps")
        _at_least(self, "sft.", 1, "corpus_size")


@dataclass
class DemoPreferences:
    """Stage 2: gold-labelled preference pairs of SFT samples."""

    num_pairs: int = field(
        default=3000, metadata={"help": "pairs sampled (two SFT completions of one prompt each)"}
    )
    heldout_pairs: int = field(
        default=500, metadata={"help": "of those, pairs held out to measure reward-model accuracy"}
    )
    beta: float = field(
        default=1.0,
        metadata={
            "help": "Bradley-Terry label noise: P(a > b) = sigmoid(beta * (gold_a - gold_b))"
        },
    )

    def __post_init__(self) -> None:
        _at_least(self, "preferences.", 4, "num_pairs")
        check_field(
            1 <= self.heldout_pairs < self.num_pairs,
            "preferences.heldout_pairs",
            self.heldout_pairs,
            f"expected between 1 and num_pairs - 1 ({self.num_pairs - 1})",
        )
        check_field(
            math.isfinite(self.beta) and self.beta > 0,
            "preferences.beta",
            self.beta,
            "expected a positive number (1.0 = the gold reward's own scale)",
        )


@dataclass
class DemoReward:
    """Stage 3: the proxy reward model (an ensemble) and the check model."""

    steps: int = field(
        default=150, metadata={"help": "optimizer steps of the proxy, and of the check model"}
    )
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    eval_every: int = field(
        default=25, metadata={"help": "held-out accuracy every this many steps (for the plot)"}
    )
    ensemble: int = field(
        default=5,
        metadata={
            "help": "K: the proxy is K reward heads on the SFT body, each trained on its own "
            "bootstrap resample of the proxy's pairs; RL optimises their reduction and logs "
            "their disagreement (1 = one reward model)"
        },
    )
    check_fraction: float = field(
        default=0.5,
        metadata={
            "help": "share of the training pairs that train the check model instead of the "
            "proxy (0 = no check model)"
        },
    )

    def __post_init__(self) -> None:
        _at_least(self, "reward.", 1, "steps", "batch_size", "eval_every", "ensemble")
        _positive(self, "reward.", "learning_rate")
        ok = 0 <= self.check_fraction < 1
        check_field(ok, "reward.check_fraction", self.check_fraction, "expected in [0, 1)")


@dataclass
class DemoBestOfN:
    """Best-of-N sampling from the SFT model, ranked by the proxy."""

    ns: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
        metadata={"help": "the N values; the largest is sampled per prompt, smaller N reuse them"},
    )

    def __post_init__(self) -> None:
        ns = self.ns
        ok = len(ns) >= 1 and all(n >= 1 for n in ns)
        check_field(ok, "best_of_n.ns", ns, "expected a non-empty list of integers >= 1")
        ok = list(ns) == sorted(set(ns))
        check_field(ok, "best_of_n.ns", ns, "expected distinct values in increasing order")


@dataclass
class DemoPPO:
    """PPO against the proxy (value model initialised from the reward model)."""

    steps: int = field(default=40, metadata={"help": "PPO steps (one rollout each)"})
    rollout_batch_size: int = field(default=64, metadata={"help": "completions per step"})
    minibatch_size: int = field(default=32, metadata={"help": "sequences per optimizer step"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout"})
    learning_rate: float = field(default=3e-4, metadata={"help": "policy learning rate"})
    value_learning_rate: float = field(default=1e-3, metadata={"help": "value learning rate"})
    kl_coef: float = field(
        default=0.01, metadata={"help": "β of the per-token KL penalty (small: let it overfit)"}
    )
    eval_every: int = field(default=5, metadata={"help": "evaluate every this many steps"})
    ensemble_reduce: str = field(default="mean", metadata={"help": _REDUCE_HELP})
    ensemble_lambda: float = field(default=1.0, metadata={"help": _LAMBDA_HELP})

    def __post_init__(self) -> None:
        _at_least(self, "ppo.", 1, "steps", "eval_every")
        _at_least(self, "ppo.", 0, "kl_coef", "ensemble_lambda")
        _reduction(self.ensemble_reduce, "ppo.ensemble_reduce")


@dataclass
class DemoGRPO:
    """GRPO against the proxy."""

    steps: int = field(default=50, metadata={"help": "GRPO steps (one rollout each)"})
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per step"})
    num_samples: int = field(default=4, metadata={"help": "G: completions per prompt"})
    learning_rate: float = field(default=2e-4, metadata={"help": "policy learning rate"})
    kl_coef: float = field(default=0.0, metadata={"help": "β of the k3 KL term in the loss"})
    eval_every: int = field(default=5, metadata={"help": "evaluate every this many steps"})
    ensemble_reduce: str = field(default="mean", metadata={"help": _REDUCE_HELP})
    ensemble_lambda: float = field(default=1.0, metadata={"help": _LAMBDA_HELP})

    def __post_init__(self) -> None:
        _at_least(self, "grpo.", 1, "steps", "prompts_per_step")
        _at_least(self, "grpo.", 2, "num_samples")
        _at_least(self, "grpo.", 1, "eval_every")
        _at_least(self, "grpo.", 0, "kl_coef", "ensemble_lambda")
        _reduction(self.ensemble_reduce, "grpo.ensemble_reduce")


@dataclass
class DemoDPO:
    """DPO on the reward model's training pairs."""

    steps: int = field(default=60, metadata={"help": "DPO optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    beta: float = field(default=0.1, metadata={"help": "DPO β"})
    eval_every: int = field(default=10, metadata={"help": "evaluate every this many steps"})

    def __post_init__(self) -> None:
        _at_least(self, "dpo.", 1, "steps")
        _positive(self, "dpo.", "beta")
        _at_least(self, "dpo.", 1, "eval_every")


@dataclass
class DemoArithmetic:
    """Part two: GRPO with a verifiable (exact-answer) reward on arithmetic."""

    enabled: bool = field(default=True, metadata={"help": "run part two"})
    model_size: str = field(default="tiny", metadata={"help": "built-in model size"})
    max_operand: int = field(default=9, metadata={"help": "operands are in [0, max_operand]"})
    ops: str = field(default="+", metadata={"help": "operations: '+', '-' or '+-'"})
    error_rate: float = field(
        default=0.3, metadata={"help": "share of wrong answers in the SFT corpus"}
    )
    corpus_size: int = field(default=3000, metadata={"help": "SFT corpus rows"})
    sft_steps: int = field(default=600, metadata={"help": "SFT steps"})
    sft_batch_size: int = field(default=64, metadata={"help": "SFT examples per step"})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "SFT peak learning rate"})
    grpo_steps: int = field(default=40, metadata={"help": "GRPO steps"})
    prompts_per_step: int = field(default=16, metadata={"help": "GRPO prompts per step"})
    num_samples: int = field(default=8, metadata={"help": "GRPO group size G"})
    learning_rate: float = field(default=5e-4, metadata={"help": "GRPO learning rate"})
    eval_prompts: int = field(default=200, metadata={"help": "problems in the fixed eval set"})
    eval_samples: int = field(
        default=4, metadata={"help": "samples per eval problem (accuracy at temperature 1)"}
    )
    eval_every: int = field(default=10, metadata={"help": "evaluate every this many GRPO steps"})

    def __post_init__(self) -> None:
        _builtin_size(self.model_size, "arithmetic.model_size")
        _at_least(self, "arithmetic.", 1, "max_operand")
        ok = bool(self.ops) and set(self.ops) <= {"+", "-"}
        check_field(ok, "arithmetic.ops", self.ops, "expected '+', '-' or '+-'")
        ok = 0 <= self.error_rate <= 1
        check_field(ok, "arithmetic.error_rate", self.error_rate, "expected [0, 1]")
        _at_least(self, "arithmetic.", 1, "corpus_size", "sft_steps", "sft_batch_size")
        _at_least(self, "arithmetic.", 1, "grpo_steps", "prompts_per_step")
        _at_least(self, "arithmetic.", 1, "eval_prompts", "eval_samples", "eval_every")
        _at_least(self, "arithmetic.", 2, "num_samples")


@dataclass
class DemoGoldFree:
    """The gold-free early stop of PPO and GRPO (:class:`rlhf_core.monitor.GoldFreeStop`),
    applied at every evaluation; training goes on past it so the fall stays visible."""

    max_disagreement_ratio: float | None = field(
        default=1.5,
        metadata={
            "help": "stop signal: ensemble disagreement over its starting value (none = off)"
        },
    )
    max_check_gap: float | None = field(
        default=1.0,
        metadata={
            "help": "stop signal: proxy gain minus check-model gain, in starting spreads "
            "(none = off)"
        },
    )
    max_check_drop: float | None = field(
        default=0.25,
        metadata={"help": "stop signal: check reward below its best, in starting spreads"},
    )
    max_sqrt_kl: float | None = field(
        default=None, metadata={"help": "stop signal: a sqrt(KL) budget (none = off)"}
    )
    max_kl_growth: float | None = field(
        default=2.0,
        metadata={
            "help": "stop signal: sqrt(KL) over its value at the first evaluation after the "
            "start (none = off; 2.0 was checked on held-out seeds, docs/demo.md)"
        },
    )
    kl_reference_step: int = field(
        default=0,
        metadata={"help": "the KL growth's reference: the first evaluation from this step on "
                  "with a positive KL"},  # fmt: skip
    )
    patience: int = field(
        default=2, metadata={"help": "evaluations in a row with a signal over its threshold"}
    )
    smoothing: float = field(
        default=0.0, metadata={"help": "EMA weight on the past of each signal, in [0, 1)"}
    )
    keep: str = field(
        default="check_peak",
        metadata={
            "help": "the evaluation kept: 'check_peak' (best check reward before the alarms) "
            "or 'last_safe' (the last one before them)"
        },
    )

    def __post_init__(self) -> None:
        from rlhf_core.monitor import GoldFreeStop

        try:
            GoldFreeStop(**{f: getattr(self, f) for f in _GOLD_FREE_FIELDS})
        except ValueError as exc:
            raise ValueError(f"gold_free.{exc}") from None


_GOLD_FREE_FIELDS = (
    "max_disagreement_ratio",
    "max_check_gap",
    "max_check_drop",
    "max_sqrt_kl",
    "max_kl_growth",
    "kl_reference_step",
    "patience",
    "smoothing",
    "keep",
)


@dataclass
class DemoConfig:
    """Config of :func:`~rlhf_core.demo.run_demo`. The defaults are the full demo (about 10
    minutes on a 2-core CPU); :data:`QUICK` holds the overrides of ``--quick`` (under a
    minute)."""

    run_dir: str = field(
        default="runs/demo", metadata={"help": "folder of the demo's outputs (report.md, plots)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of every random choice"})
    model_size: str = field(
        default="small", metadata={"help": "built-in model size of part one ('tiny', 'small')"}
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={"help": f"proxy optimisers to run, any of {', '.join(METHODS)}"},
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "most tokens per completion of the synthetic language"}
    )
    eval_samples: int = field(
        default=4,
        metadata={
            "help": "samples per evaluation prompt (the prompts: each animal with each template)"
        },
    )
    early_stop_patience: int = field(
        default=3,
        metadata={"help": "evaluations without a gold improvement before early stopping cuts"},
    )
    early_stop_min_delta: float = field(
        default=0.02, metadata={"help": "gold improvement that counts for early stopping"}
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "continue a demo in run_dir where it stopped (false: refuse a run_dir that "
            "already holds a demo)"
        },
    )
    progress_bar: bool = field(default=True, metadata={"help": "show progress bars"})
    tensorboard: bool = field(
        default=True, metadata={"help": "also write TensorBoard events (when installed)"}
    )
    device: str = field(
        default="cpu", metadata={"help": "'cpu', 'cuda' or 'auto' (CUDA when available)"}
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "torch CPU threads during the demo (0 = torch's default). The built-in "
            "models are too small to gain from more, and on a busy machine extra threads "
            "slow every step down"
        },
    )
    workers: int = field(
        default=0,
        metadata={
            "help": "processes that run the stages after the baseline (best-of-N, PPO, GRPO, "
            "DPO, arithmetic) side by side, each with `threads` threads; their results are the "
            "same as in one process; with more than 1 the check model also trains beside the "
            "proxy, and the arithmetic part beside the first stages. 0 = min(2, CPU count) on "
            "the CPU when a core is idle, else 1; 1 on a GPU; 1 = one after the other in this "
            "process"
        },
    )
    sft: DemoSFT = field(default_factory=DemoSFT, metadata={"help": "stage 1: SFT"})
    preferences: DemoPreferences = field(
        default_factory=DemoPreferences, metadata={"help": "stage 2: gold-labelled pairs"}
    )
    reward: DemoReward = field(
        default_factory=DemoReward, metadata={"help": "stage 3: proxy reward model"}
    )
    best_of_n: DemoBestOfN = field(
        default_factory=DemoBestOfN, metadata={"help": "best-of-N sampling"}
    )
    ppo: DemoPPO = field(default_factory=DemoPPO, metadata={"help": "PPO"})
    grpo: DemoGRPO = field(default_factory=DemoGRPO, metadata={"help": "GRPO"})
    dpo: DemoDPO = field(default_factory=DemoDPO, metadata={"help": "DPO"})
    gold_free: DemoGoldFree = field(
        default_factory=DemoGoldFree, metadata={"help": "the gold-free early stop of PPO / GRPO"}
    )
    arithmetic: DemoArithmetic = field(
        default_factory=DemoArithmetic, metadata={"help": "part two: verifiable reward"}
    )

    def __post_init__(self) -> None:
        _builtin_size(self.model_size, "model_size")
        unknown = [m for m in self.methods if m not in METHODS]
        fix = f"unknown {unknown}; expected any of {METHODS}"
        check_field(not unknown, "methods", self.methods, fix)
        ok = len(set(self.methods)) == len(self.methods)
        check_field(ok, "methods", self.methods, "each method at most once")
        _at_least(self, "", 8, "max_new_tokens")
        _at_least(self, "", 1, "eval_samples", "early_stop_patience")
        _at_least(self, "", 0, "early_stop_min_delta")
        ok = self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")
        check_field(ok, "device", self.device, "expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_field(
            self.threads >= 0, "threads", self.threads, "expected >= 0 (0 = torch's default)"
        )
        check_field(
            self.workers >= 0, "workers", self.workers, "expected >= 0 (0 = min(2, CPU count))"
        )


#: Overrides that turn the full demo into ``--quick``: the tiny model and small step counts,
#: the same stages and outputs (under a minute on a 2-core CPU).
QUICK: dict[str, Any] = {
    "run_dir": "runs/demo-quick",
    "model_size": "tiny",
    "max_new_tokens": 64,
    "eval_samples": 2,
    "sft.steps": 300,
    "sft.corpus_size": 4000,
    "preferences.num_pairs": 1600,
    "preferences.heldout_pairs": 400,
    "reward.steps": 50,
    "reward.batch_size": 32,
    "reward.learning_rate": 3e-3,
    "reward.eval_every": 10,
    "best_of_n.ns": [1, 2, 4, 8, 16],
    "ppo.steps": 8,
    "ppo.rollout_batch_size": 32,
    "ppo.minibatch_size": 16,
    "ppo.learning_rate": 1e-4,
    "ppo.eval_every": 4,
    "grpo.steps": 8,
    "grpo.prompts_per_step": 8,
    "grpo.eval_every": 4,
    "dpo.steps": 24,
    "dpo.learning_rate": 1e-4,
    "dpo.batch_size": 16,
    "dpo.eval_every": 8,
    "arithmetic.sft_steps": 500,
    "arithmetic.grpo_steps": 30,
    "arithmetic.eval_prompts": 100,
    "arithmetic.eval_every": 10,
}


def load_demo_config(
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    quick: bool = False,
) -> DemoConfig:
    """The demo config. Precedence, lowest first: the defaults (the full demo), :data:`QUICK`
    when ``quick``, the TOML file, the overrides (``["--ppo.steps", "50"]`` or a mapping of
    dotted names)."""
    from rlhf_core.config import load_config, parse_overrides

    merged: dict[str, Any] = dict(QUICK) if quick else {}
    if toml_path is not None:
        load_config(DemoConfig, toml_path)  # checks the file alone: errors name it
        with open(toml_path, "rb") as fh:
            merged.update(flatten(tomllib.load(fh)))
    if overrides:
        extra = (
            dict(overrides)
            if isinstance(overrides, Mapping)
            else dict(parse_overrides(list(overrides)))
        )
        merged.update({str(k).replace("-", "_"): v for k, v in extra.items()})
    return load_config(DemoConfig, None, merged)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one mapping of dotted names (``{"ppo": {"steps": 8}}`` →
    ``{"ppo.steps": 8}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
