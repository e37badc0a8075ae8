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

:func:`evaluate_policy` (sample a policy on prompts, score the samples with reward sources and
measure the KL from a reference) is also what ``rlhf-core eval`` uses.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_core.evaluation import PolicyEval, best_of_n_curve, best_of_n_kl, evaluate_policy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

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

log = logging.getLogger("rlhf_core.demo")

#: The proxy-optimisation methods the demo can run, in report order.
METHODS: tuple[str, ...] = ("best_of_n", "ppo", "grpo", "dpo")


def _check(ok: bool, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: {fix}")


# --------------------------------------------------------------------------------------------
# config


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
        _check(self.steps >= 1, "sft.steps", self.steps, "expected >= 1")
        _check(self.batch_size >= 1, "sft.batch_size", self.batch_size, "expected >= 1")
        _check(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "expected > 0")
        _check(self.warmup_steps >= 0, "sft.warmup_steps", self.warmup_steps, "expected >= 0")
        _check(self.corpus_size >= 1, "sft.corpus_size", self.corpus_size, "expected >= 1")


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
        _check(self.num_pairs >= 4, "preferences.num_pairs", self.num_pairs, "expected >= 4")
        _check(
            1 <= self.heldout_pairs < self.num_pairs,
            "preferences.heldout_pairs",
            self.heldout_pairs,
            f"expected between 1 and num_pairs - 1 ({self.num_pairs - 1})",
        )
        _check(
            math.isfinite(self.beta) and self.beta > 0,
            "preferences.beta",
            self.beta,
            "expected a positive number (1.0 = the gold reward's own scale)",
        )


@dataclass
class DemoReward:
    """Stage 3: the proxy reward model."""

    steps: int = field(default=300, metadata={"help": "reward-model optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    eval_every: int = field(
        default=50, metadata={"help": "held-out accuracy every this many steps (for the plot)"}
    )

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "reward.steps", self.steps, "expected >= 1")
        _check(self.batch_size >= 1, "reward.batch_size", self.batch_size, "expected >= 1")
        _check(self.learning_rate > 0, "reward.learning_rate", self.learning_rate, "expected > 0")
        _check(self.eval_every >= 1, "reward.eval_every", self.eval_every, "expected >= 1")


@dataclass
class DemoBestOfN:
    """Best-of-N sampling from the SFT model, ranked by the proxy."""

    ns: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
        metadata={"help": "the N values; the largest is sampled per prompt, smaller N reuse them"},
    )

    def __post_init__(self) -> None:
        _check(
            len(self.ns) >= 1 and all(n >= 1 for n in self.ns),
            "best_of_n.ns",
            self.ns,
            "expected a non-empty list of integers >= 1",
        )
        _check(
            list(self.ns) == sorted(set(self.ns)),
            "best_of_n.ns",
            self.ns,
            "expected distinct values in increasing order",
        )


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

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "ppo.steps", self.steps, "expected >= 1")
        _check(self.eval_every >= 1, "ppo.eval_every", self.eval_every, "expected >= 1")
        _check(self.kl_coef >= 0, "ppo.kl_coef", self.kl_coef, "expected >= 0")


@dataclass
class DemoGRPO:
    """GRPO against the proxy."""

    steps: int = field(default=50, metadata={"help": "GRPO steps (one rollout each)"})
    prompts_per_step: int = field(default=16, metadata={"help": "prompts per step"})
    num_samples: int = field(default=4, metadata={"help": "G: completions per prompt"})
    learning_rate: float = field(default=2e-4, metadata={"help": "policy learning rate"})
    kl_coef: float = field(default=0.0, metadata={"help": "β of the k3 KL term in the loss"})
    eval_every: int = field(default=5, metadata={"help": "evaluate every this many steps"})

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "grpo.steps", self.steps, "expected >= 1")
        _check(
            self.prompts_per_step >= 1,
            "grpo.prompts_per_step",
            self.prompts_per_step,
            "expected >= 1",
        )
        _check(self.num_samples >= 2, "grpo.num_samples", self.num_samples, "expected >= 2")
        _check(self.eval_every >= 1, "grpo.eval_every", self.eval_every, "expected >= 1")
        _check(self.kl_coef >= 0, "grpo.kl_coef", self.kl_coef, "expected >= 0")


@dataclass
class DemoDPO:
    """DPO on the reward model's training pairs."""

    steps: int = field(default=60, metadata={"help": "DPO optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    beta: float = field(default=0.1, metadata={"help": "DPO β"})
    eval_every: int = field(default=10, metadata={"help": "evaluate every this many steps"})

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "dpo.steps", self.steps, "expected >= 1")
        _check(self.beta > 0, "dpo.beta", self.beta, "expected > 0")
        _check(self.eval_every >= 1, "dpo.eval_every", self.eval_every, "expected >= 1")


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
        from rlhf_core.models import BUILTIN_SIZES

        _check(
            self.model_size in BUILTIN_SIZES,
            "arithmetic.model_size",
            self.model_size,
            f"expected one of {sorted(BUILTIN_SIZES)}",
        )
        _check(self.max_operand >= 1, "arithmetic.max_operand", self.max_operand, "expected >= 1")
        _check(
            bool(self.ops) and set(self.ops) <= {"+", "-"},
            "arithmetic.ops",
            self.ops,
            "expected '+', '-' or '+-'",
        )
        _check(
            0 <= self.error_rate <= 1, "arithmetic.error_rate", self.error_rate, "expected [0, 1]"
        )
        for name in (
            "corpus_size",
            "sft_steps",
            "sft_batch_size",
            "grpo_steps",
            "prompts_per_step",
            "eval_prompts",
            "eval_samples",
            "eval_every",
        ):
            v = getattr(self, name)
            _check(v >= 1, f"arithmetic.{name}", v, "expected >= 1")
        _check(self.num_samples >= 2, "arithmetic.num_samples", self.num_samples, "expected >= 2")


@dataclass
class DemoConfig:
    """Config of :func:`run_demo`. The defaults are the full demo (about 10 minutes on a
    2-core CPU); :data:`QUICK` holds the overrides of ``--quick`` (under a minute)."""

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
    arithmetic: DemoArithmetic = field(
        default_factory=DemoArithmetic, metadata={"help": "part two: verifiable reward"}
    )

    def __post_init__(self) -> None:
        from rlhf_core.models import BUILTIN_SIZES

        _check(
            self.model_size in BUILTIN_SIZES,
            "model_size",
            self.model_size,
            f"expected one of {sorted(BUILTIN_SIZES)}",
        )
        unknown = [m for m in self.methods if m not in METHODS]
        _check(
            not unknown, "methods", self.methods, f"unknown {unknown}; expected any of {METHODS}"
        )
        _check(
            len(set(self.methods)) == len(self.methods),
            "methods",
            self.methods,
            "each method at most once",
        )
        _check(self.max_new_tokens >= 8, "max_new_tokens", self.max_new_tokens, "expected >= 8")
        _check(self.eval_samples >= 1, "eval_samples", self.eval_samples, "expected >= 1")
        _check(
            self.early_stop_patience >= 1,
            "early_stop_patience",
            self.early_stop_patience,
            "expected >= 1",
        )
        _check(
            self.early_stop_min_delta >= 0,
            "early_stop_min_delta",
            self.early_stop_min_delta,
            "expected >= 0",
        )
        _check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
        _check(self.threads >= 0, "threads", self.threads, "expected >= 0 (0 = torch's default)")


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
    "reward.steps": 100,
    "reward.batch_size": 32,
    "reward.learning_rate": 3e-3,
    "reward.eval_every": 20,
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
            merged.update(_flatten(tomllib.load(fh)))
    if overrides:
        extra = (
            dict(overrides)
            if isinstance(overrides, Mapping)
            else dict(parse_overrides(list(overrides)))
        )
        merged.update({str(k).replace("-", "_"): v for k, v in extra.items()})
    return load_config(DemoConfig, None, merged)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the report (also in ``run_dir/report.json``), the path
    of ``report.md``, the terminal summary, and whether the run had already finished."""

    report: Any
    report_path: pathlib.Path
    summary: str
    already_finished: bool = False
    seconds: float = 0.0


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from an interrupted run
    return rows


def _write_jsonl(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _latest_step(run_dir: pathlib.Path) -> int:
    from rlhf_core.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


class _Demo:
    """One demo run; each ``stage_*`` method is skipped when its ``stage.json`` exists."""

    def __init__(self, config: DemoConfig, *, out: Any = None) -> None:
        from rlhf_core import tasks
        from rlhf_core.models import load_tokenizer

        self.cfg = config
        self.root = pathlib.Path(config.run_dir)
        self.out = out if out is not None else sys.stdout
        self.tok = load_tokenizer()
        self.timings: dict[str, float] = {}
        self.ran: list[str] = []  # stages that ran (or finished) in this call
        self.eval_prompts = [
            tasks.make_prompt(s, t)
            for s in tasks.SUBJECTS
            for t in range(len(tasks.PROMPT_TEMPLATES))
        ]
        self.eval_seed = config.seed + 1000
        # the prompts whose samples the report shows: three animals, three templates
        step = len(self.eval_prompts) // 3 + 1
        self.sample_prompts = [0, step, 2 * step]
        self._stage_no = 0
        self._num_stages = len(self.expected_stages()) + 1  # + the report

    # ---- small helpers ----------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def header(self, title: str) -> None:
        self._stage_no += 1
        self.say(f"\n[{self._stage_no}/{self._num_stages}] {title}")

    def stage_file(self, name: str) -> pathlib.Path:
        return self.root / name / "stage.json"

    def done(self, name: str) -> dict[str, Any] | None:
        p = self.stage_file(name)
        if self.cfg.resume and p.is_file():
            data = json.loads(p.read_text(encoding="utf-8"))
            self.timings[name] = float(data.get("seconds", 0.0))
            return dict(data)
        return None

    def finish(self, name: str, data: dict[str, Any], t0: float) -> dict[str, Any]:
        data = dict(data)
        data["seconds"] = round(time.time() - t0, 2)
        self.timings[name] = data["seconds"]
        self.ran.append(name)
        p = self.stage_file(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name("stage.json.tmp")
        tmp.write_text(json.dumps(_json_safe(data), indent=1, allow_nan=False), encoding="utf-8")
        os.replace(tmp, p)
        return data

    def trainer_fields(self, name: str) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "run_dir": str(self.root / name),
            "seed": cfg.seed,
            "progress_bar": False,
            "tensorboard": cfg.tensorboard,
            "device": cfg.device,
            "resume": True,
        }

    def bar(self, total: int, initial: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not self.cfg.progress_bar,
            dynamic_ncols=True,
            leave=True,
        )

    def save_model(self, model: Any, path: pathlib.Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        self.tok.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)

    def train_with_evals(
        self,
        trainer: Any,
        name: str,
        every: int,
        evaluate: Callable[[int], dict[str, Any]],
        first: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """Train ``trainer`` to its ``total_steps`` in slices of ``every`` steps (each slice
        ends with a checkpoint), calling ``evaluate(step)`` after each. Evaluation records go
        to ``<run_dir>/evals.jsonl`` so an interrupted demo continues where it stopped.
        ``first`` is the record of step 0 (the starting policy), when known."""
        run_dir = pathlib.Path(trainer.config.run_dir)
        total = int(trainer.config.total_steps)
        done = _latest_step(run_dir)
        path = run_dir / "evals.jsonl"
        records = {int(r["step"]): r for r in _read_jsonl(path) if int(r["step"]) <= done}
        if first is not None:
            records.setdefault(0, dict(first, step=0))
        elif 0 not in records:
            records[0] = evaluate(0)
        _write_jsonl(path, [records[k] for k in sorted(records)])
        targets = sorted(set(range(every, total, every)) | {total})
        bar = self.bar(total, done, name)
        try:
            for t in targets:
                if t < done:
                    continue
                if t > done:
                    trainer.train(stop_at_step=t)
                    bar.update(t - done)
                    done = t
                if t not in records:
                    if trainer.global_step != t:  # resumed exactly at t: load its weights
                        trainer.load(run_dir)
                    records[t] = evaluate(t)
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(_json_safe(records[t]), allow_nan=False) + "\n")
                r = records[t]
                bar.set_postfix(
                    {k: f"{r[k]:.3g}" for k in ("proxy", "gold", "kl", "accuracy") if k in r},
                    refresh=True,
                )
        finally:
            bar.close()
        return [records[k] for k in sorted(records)]

    # ---- language evaluation ----------------------------------------------------------------
    def eval_language(self, policy: Any, step: int, *, num_samples: int | None = None) -> dict:
        from rlhf_core import tasks

        n = num_samples or self.cfg.eval_samples
        ev = evaluate_policy(
            policy,
            self.tok,
            self.eval_prompts,
            {"proxy": self.scorer, "gold": tasks.gold_reward},
            reference=self.reference,
            num_samples=n,
            max_new_tokens=self.cfg.max_new_tokens,
            seed=self.eval_seed,
        )
        s = ev.summary()
        picks = [i * n for i in self.sample_prompts]  # the first sample of three prompts
        return {
            "step": int(step),
            "proxy": s["reward/proxy"],
            "gold": s["reward/gold"],
            "kl": s["kl"],
            "response_length": s["response_length/mean"],
            "frac_truncated": s["response_length/frac_truncated"],
            "samples": [
                {
                    "prompt": ev.prompts[i],
                    "text": ev.texts[i],
                    "gold": float(ev.scores["gold"][i]),
                    "proxy": float(ev.scores["proxy"][i]),
                }
                for i in picks
            ],
        }

    # ---- stages -----------------------------------------------------------------------------
    def stage_sft(self) -> Any:
        from rlhf_core import tasks
        from rlhf_core.models import build_builtin_policy, load_policy
        from rlhf_core.trainers.sft import SFTConfig, SFTTrainer

        c = self.cfg.sft
        self.header(
            f"SFT: the built-in {self.cfg.model_size} model learns the synthetic language "
            f"({c.steps} steps)"
        )
        model_dir = self.root / "sft" / "model"
        data = self.done("sft")
        if data is not None and model_dir.is_dir():
            self.say(f"  done before: loss {data['loss']:.3f}")
            return load_policy(model_dir, device=self._device())
        t0 = time.time()
        policy = build_builtin_policy(self.tok, seed=self.cfg.seed, size=self.cfg.model_size)
        corpus = tasks.sft_corpus(c.corpus_size, seed=self.cfg.seed)
        fields = self.trainer_fields("sft")
        fields["progress_bar"] = self.cfg.progress_bar
        trainer = SFTTrainer(
            SFTConfig(
                **fields,
                total_steps=c.steps,
                batch_size=c.batch_size,
                learning_rate=c.learning_rate,
                lr_scheduler="cosine",
                warmup_steps=min(c.warmup_steps, c.steps - 1),
                save_every=max(1, c.steps // 4),
            ),
            policy,
            self.tok,
            corpus,
        )
        res = trainer.train()
        rows = [r for r in _read_metrics(self.root / "sft") if "loss" in r]
        tail = rows[-max(1, len(rows) // 10) :]
        loss = float(np.mean([r["loss"] for r in tail])) if tail else float("nan")
        self.save_model(policy, model_dir)
        self.finish("sft", {"loss": loss, "steps": res.step}, t0)
        self.say(f"  SFT loss {loss:.3f} (last 10% of steps)")
        return policy

    def stage_preferences(self, policy: Any) -> tuple[list[dict], list[dict], dict]:
        from rlhf_core import tasks
        from rlhf_core.generation import generate
        from rlhf_core.rewards import label_pairs

        c = self.cfg.preferences
        self.header(
            f"preferences: the hidden gold reward labels {c.num_pairs} pairs of SFT samples "
            f"(Bradley-Terry noise, beta={c.beta:g})"
        )
        folder = self.root / "preferences"
        data = self.done("preferences")
        if data is not None:
            train = _read_jsonl(folder / "train.jsonl")
            held = _read_jsonl(folder / "heldout.jsonl")
            if train and held:
                self.say(f"  done before: {len(train)} training and {len(held)} held-out pairs")
                return train, held, data
        t0 = time.time()
        prompts = tasks.prompt_set(c.num_pairs, seed=self.cfg.seed + 1)
        comp = generate(
            policy,
            self.tok,
            prompts,
            num_samples=2,
            max_new_tokens=self.cfg.max_new_tokens,
            seed=self.cfg.seed + 2,
            batch_size=256,
        )
        a, b = comp.texts[0::2], comp.texts[1::2]
        rows = label_pairs(
            prompts, a, b, tasks.gold_reward, sample=True, beta=c.beta, seed=self.cfg.seed + 3
        )
        same = sum(r["chosen"] == r["rejected"] for r in rows)
        rows = [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                "p_chosen": r["p_chosen"],
                "chosen_gold": r["chosen_score"],
                "rejected_gold": r["rejected_score"],
            }
            for r in rows
            if r["chosen"] != r["rejected"]
        ]
        if len(rows) <= c.heldout_pairs:
            raise RuntimeError(
                f"only {len(rows)} usable pairs (of {c.num_pairs}; {same} had two identical "
                f"completions): raise preferences.num_pairs above heldout_pairs + some"
            )
        held, train = rows[: c.heldout_pairs], rows[c.heldout_pairs :]
        ga = np.array([r["chosen_gold"] for r in held])
        gb = np.array([r["rejected_gold"] for r in held])
        ceiling = tasks.bradley_terry_ceiling(ga, gb, beta=c.beta)
        agree = float(np.mean(ga > gb) + 0.5 * np.mean(ga == gb))
        _write_jsonl(folder / "train.jsonl", train)
        _write_jsonl(folder / "heldout.jsonl", held)
        data = self.finish(
            "preferences",
            {
                "num_train": len(train),
                "num_heldout": len(held),
                "identical_dropped": int(same),
                "ceiling": ceiling,
                "label_gold_agreement": agree,
                "gold_mean_sft": float(
                    np.nanmean(tasks.gold_reward(comp.prompts, comp.texts))  # type: ignore[arg-type]
                ),
            },
            t0,
        )
        self.say(
            f"  {len(train)} training / {len(held)} held-out pairs ({same} identical pairs "
            f"dropped); noise ceiling on the held-out pairs {ceiling:.3f}"
        )
        return train, held, data

    def stage_reward(
        self, policy: Any, train: list[dict], held: list[dict], prefs: dict
    ) -> tuple[Any, dict]:
        from rlhf_core.models import RewardModel
        from rlhf_core.trainers.reward import RewardConfig, RewardTrainer

        c = self.cfg.reward
        self.header(f"proxy reward model: Bradley-Terry on the SFT body ({c.steps} steps)")
        rm_dir = self.root / "reward" / "reward_model"
        data = self.done("reward")
        if data is not None and rm_dir.is_dir():
            self.say(f"  done before: held-out accuracy {data['accuracy']:.3f}")
            return RewardModel.from_pretrained(rm_dir).to(self._device()), data
        t0 = time.time()
        rm = RewardModel.from_policy(policy, seed=self.cfg.seed)
        fields = self.trainer_fields("reward")
        fields["progress_bar"] = self.cfg.progress_bar
        trainer = RewardTrainer(
            RewardConfig(
                **fields,
                total_steps=c.steps,
                batch_size=c.batch_size,
                learning_rate=c.learning_rate,
                lr_scheduler="cosine",
                warmup_steps=min(10, c.steps - 1),
                eval_every=c.eval_every,
                save_every=max(1, c.steps // 4),
            ),
            rm,
            self.tok,
            train,
            eval_pairs=held,
        )
        trainer.train()
        rows = _read_metrics(self.root / "reward")
        curve = [(int(r["step"]), float(r["eval/accuracy"])) for r in rows if "eval/accuracy" in r]
        accs = [float(r["accuracy"]) for r in rows if "accuracy" in r]
        train_acc = float(np.mean(accs[-max(1, len(accs) // 10) :])) if accs else None
        final = trainer.evaluate()
        # agreement with the noise-free gold order (what the labels only sample)
        from rlhf_core.rewards import RewardModelScorer

        scorer = RewardModelScorer(rm, self.tok, batch_size=64)
        pc = np.array(scorer([r["prompt"] for r in held], [r["chosen"] for r in held]))
        pr = np.array(scorer([r["prompt"] for r in held], [r["rejected"] for r in held]))
        g = np.array([r["chosen_gold"] - r["rejected_gold"] for r in held])
        ok = g != 0
        gold_order = float(np.mean(np.sign(pc - pr)[ok] == np.sign(g)[ok])) if ok.any() else None
        self.save_model(rm, rm_dir)
        data = self.finish(
            "reward",
            {
                "accuracy": final["accuracy"],
                "margin": final["margin"],
                "num_pairs": len(held),
                "ceiling": prefs["ceiling"],
                "train_accuracy": train_acc,
                "gold_order_accuracy": gold_order,
                "curve": curve,
            },
            t0,
        )
        self.say(
            f"  held-out accuracy {final['accuracy']:.3f} (noise ceiling {prefs['ceiling']:.3f}, "
            f"chance 0.5); agrees with the noise-free gold order on "
            f"{gold_order if gold_order is not None else float('nan'):.3f} of pairs"
        )
        return rm, data

    def stage_baseline(self, policy: Any) -> dict:
        self.header("evaluation of the SFT policy (the starting point of every method)")
        data = self.done("baseline")
        if data is not None:
            self.say(f"  done before: proxy {data['proxy']:.3f}, gold {data['gold']:.3f}")
            return data
        t0 = time.time()
        rec = self.eval_language(policy, 0)
        data = self.finish("baseline", rec, t0)
        self.say(
            f"  {len(self.eval_prompts)} prompts x {self.cfg.eval_samples} samples: proxy "
            f"{rec['proxy']:.3f}, gold {rec['gold']:.3f}, mean length "
            f"{rec['response_length']:.1f} tokens"
        )
        return data

    def stage_best_of_n(self, policy: Any) -> dict:
        from rlhf_core import tasks

        ns = list(self.cfg.best_of_n.ns)
        self.header(f"best-of-N: sample N from the SFT policy, keep the proxy's favourite (N={ns})")
        data = self.done("best_of_n")
        if data is not None:
            self.say_best_of_n(data["records"])
            return data
        t0 = time.time()
        nmax = max(ns)
        ev = evaluate_policy(
            policy,
            self.tok,
            self.eval_prompts,
            {"proxy": self.scorer, "gold": tasks.gold_reward},
            num_samples=nmax,
            max_new_tokens=self.cfg.max_new_tokens,
            seed=self.eval_seed + 1,
            batch_size=256,
        )
        p = len(self.eval_prompts)
        proxy = ev.scores["proxy"].reshape(p, nmax)
        gold = ev.scores["gold"].reshape(p, nmax)
        curve = best_of_n_curve(proxy, gold, ns)
        samples = []
        for i in self.sample_prompts:
            j = int(np.argmax(np.where(np.isfinite(proxy[i]), proxy[i], -np.inf)))
            samples.append(
                {
                    "prompt": self.eval_prompts[i],
                    "text": ev.texts[i * nmax + j],
                    "gold": float(gold[i, j]),
                    "proxy": float(proxy[i, j]),
                }
            )
        records: list[dict[str, Any]] = [
            {"step": n, "kl": kl, "proxy": px, "gold": g, "label": f"N={n}"}
            for n, kl, px, g in curve
        ]
        data = self.finish(
            "best_of_n", {"records": records, "samples": samples, "num_prompts": p}, t0
        )
        self.say_best_of_n(records)
        return data

    def say_best_of_n(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self.say(
                f"  N={r['step']:<4d} sqrt(KL) {math.sqrt(r['kl']):.2f}  proxy {r['proxy']:.3f}"
                f"  gold {r['gold']:.3f}"
            )

    def say_curve(self, records: Sequence[Mapping[str, Any]]) -> None:
        """One line per method: start, gold peak and end of its evaluations."""
        first, last = records[0], records[-1]
        peak = max(records, key=lambda r: r["gold"])
        self.say(
            f"  step {first['step']}: proxy {first['proxy']:.3f}, gold {first['gold']:.3f}; "
            f"gold peak at step {peak['step']} ({peak['gold']:.3f}); step {last['step']}: "
            f"proxy {last['proxy']:.3f}, gold {last['gold']:.3f}, "
            f"sqrt(KL) {math.sqrt(max(last['kl'], 0.0)):.2f}"
        )

    def rl_prompts(self) -> list[str]:
        from rlhf_core import tasks

        return tasks.prompt_set(4096, seed=self.cfg.seed + 5)

    def stage_ppo(self, sft: Any, rm: Any, baseline: dict) -> dict:
        from rlhf_core import tasks
        from rlhf_core.trainers.ppo import PPOConfig, PPOTrainer

        c = self.cfg.ppo
        self.header(f"PPO against the proxy ({c.steps} steps, kl_coef {c.kl_coef:g})")
        data = self.done("ppo")
        if data is not None:
            self.say_curve(data["records"])
            return data
        t0 = time.time()
        policy = copy.deepcopy(sft)
        trainer = PPOTrainer(
            PPOConfig(
                **self.trainer_fields("ppo"),
                total_steps=c.steps,
                learning_rate=c.learning_rate,
                value_learning_rate=c.value_learning_rate,
                rollout_batch_size=c.rollout_batch_size,
                minibatch_size=c.minibatch_size,
                ppo_epochs=c.ppo_epochs,
                max_new_tokens=self.cfg.max_new_tokens,
                kl_coef=c.kl_coef,
                reward_weights=[1.0, 0.0],
            ),
            policy,
            self.tok,
            self.rl_prompts(),
            [rm, tasks.gold_reward],
            reference=self.reference,
        )
        records = self.train_with_evals(
            trainer, "ppo", c.eval_every, lambda s: self.eval_language(policy, s), baseline
        )
        self.say_curve(records)
        return self.finish("ppo", {"records": records}, t0)

    def stage_grpo(self, sft: Any, rm: Any, baseline: dict) -> dict:
        from rlhf_core import tasks
        from rlhf_core.trainers.grpo import GRPOConfig, GRPOTrainer

        c = self.cfg.grpo
        self.header(
            f"GRPO against the proxy ({c.steps} steps, G={c.num_samples}, kl_coef {c.kl_coef:g})"
        )
        data = self.done("grpo")
        if data is not None:
            self.say_curve(data["records"])
            return data
        t0 = time.time()
        policy = copy.deepcopy(sft)
        trainer = GRPOTrainer(
            GRPOConfig(
                **self.trainer_fields("grpo"),
                total_steps=c.steps,
                learning_rate=c.learning_rate,
                rollout_batch_size=c.prompts_per_step * c.num_samples,
                num_samples=c.num_samples,
                max_new_tokens=self.cfg.max_new_tokens,
                kl_coef=c.kl_coef,
                reward_weights=[1.0, 0.0],
            ),
            policy,
            self.tok,
            self.rl_prompts(),
            [rm, tasks.gold_reward],
            reference=self.reference,
        )
        records = self.train_with_evals(
            trainer, "grpo", c.eval_every, lambda s: self.eval_language(policy, s), baseline
        )
        self.say_curve(records)
        return self.finish("grpo", {"records": records}, t0)

    def stage_dpo(self, sft: Any, train: list[dict], baseline: dict) -> dict:
        from rlhf_core.trainers.dpo import DPOConfig, DPOTrainer

        c = self.cfg.dpo
        self.header(f"DPO on the reward model's training pairs ({c.steps} steps, beta {c.beta:g})")
        data = self.done("dpo")
        if data is not None:
            self.say_curve(data["records"])
            return data
        t0 = time.time()
        policy = copy.deepcopy(sft)
        trainer = DPOTrainer(
            DPOConfig(
                **self.trainer_fields("dpo"),
                total_steps=c.steps,
                learning_rate=c.learning_rate,
                batch_size=c.batch_size,
                beta=c.beta,
            ),
            policy,
            self.tok,
            [(r["prompt"], r["chosen"], r["rejected"]) for r in train],
            reference=self.reference,
        )
        records = self.train_with_evals(
            trainer, "dpo", c.eval_every, lambda s: self.eval_language(policy, s), baseline
        )
        self.say_curve(records)
        return self.finish("dpo", {"records": records}, t0)

    def stage_arithmetic(self) -> dict:
        from rlhf_core import tasks
        from rlhf_core.models import build_builtin_policy, load_policy
        from rlhf_core.trainers.grpo import GRPOConfig, GRPOTrainer
        from rlhf_core.trainers.sft import SFTConfig, SFTTrainer

        c = self.cfg.arithmetic
        self.header(
            f"verifiable reward: GRPO on arithmetic (operands 0..{c.max_operand}, answers "
            f"checked exactly); SFT first on answers that are wrong {c.error_rate:.0%} of the time"
        )
        data = self.done("arithmetic")
        if data is not None:
            self.say(
                f"  done before: accuracy {data['accuracy_before']:.3f} -> "
                f"{data['accuracy_after']:.3f}"
            )
            return data
        t0 = time.time()
        sft_dir = self.root / "arithmetic" / "sft"
        model_dir = sft_dir / "model"
        if (sft_dir / "stage.json").is_file() and model_dir.is_dir() and self.cfg.resume:
            policy = load_policy(model_dir, device=self._device())
        else:
            policy = build_builtin_policy(self.tok, seed=self.cfg.seed + 7, size=c.model_size)
            corpus = tasks.arithmetic_sft_corpus(
                c.corpus_size,
                seed=self.cfg.seed,
                max_operand=c.max_operand,
                ops=c.ops,
                error_rate=c.error_rate,
            )
            fields = self.trainer_fields("arithmetic/sft")
            fields["progress_bar"] = self.cfg.progress_bar
            SFTTrainer(
                SFTConfig(
                    **fields,
                    total_steps=c.sft_steps,
                    batch_size=c.sft_batch_size,
                    learning_rate=c.sft_learning_rate,
                    lr_scheduler="cosine",
                    warmup_steps=min(20, c.sft_steps - 1),
                    save_every=max(1, c.sft_steps // 4),
                ),
                policy,
                self.tok,
                [(r["prompt"], r["completion"]) for r in corpus],
            ).train()
            self.save_model(policy, model_dir)
            (sft_dir / "stage.json").write_text("{}", encoding="utf-8")
        eval_rows = tasks.arithmetic_dataset(
            c.eval_prompts, seed=self.cfg.seed + 21, max_operand=c.max_operand, ops=c.ops
        )
        eval_prompts = [r["prompt"] for r in eval_rows]
        answers = [r["answer"] for r in eval_rows]

        def accuracy(model: Any, step: int) -> dict[str, Any]:
            sampled = evaluate_policy(
                model,
                self.tok,
                eval_prompts,
                {"exact": tasks.arithmetic_reward},
                columns={"answer": answers},
                num_samples=c.eval_samples,
                max_new_tokens=6,
                seed=self.eval_seed + 2,
                batch_size=512,
            )
            greedy = evaluate_policy(
                model,
                self.tok,
                eval_prompts,
                {"exact": tasks.arithmetic_reward},
                columns={"answer": answers},
                temperature=0.0,
                max_new_tokens=6,
                batch_size=512,
            )
            return {
                "step": int(step),
                "accuracy": float(np.nanmean(sampled.scores["exact"])),
                "greedy_accuracy": float(np.nanmean(greedy.scores["exact"])),
                "samples": [
                    {
                        "prompt": sampled.prompts[i * c.eval_samples],
                        "text": sampled.texts[i * c.eval_samples],
                        "answer": answers[i],
                    }
                    for i in range(3)
                ],
            }

        trainer = GRPOTrainer(
            GRPOConfig(
                **self.trainer_fields("arithmetic/grpo"),
                total_steps=c.grpo_steps,
                learning_rate=c.learning_rate,
                rollout_batch_size=c.prompts_per_step * c.num_samples,
                num_samples=c.num_samples,
                max_new_tokens=6,
                kl_coef=0.0,
            ),
            policy,
            self.tok,
            tasks.arithmetic_dataset(
                4096, seed=self.cfg.seed + 22, max_operand=c.max_operand, ops=c.ops
            ),
            tasks.arithmetic_reward,
        )
        records = self.train_with_evals(
            trainer, "arithmetic grpo", c.eval_every, lambda s: accuracy(policy, s), None
        )
        first, last = records[0], records[-1]
        data = self.finish(
            "arithmetic",
            {
                "accuracy_before": first["accuracy"],
                "accuracy_after": last["accuracy"],
                "greedy_before": first["greedy_accuracy"],
                "greedy_after": last["greedy_accuracy"],
                "num_prompts": len(eval_prompts),
                "records": records,
            },
            t0,
        )
        self.say(
            f"  accuracy of samples (temperature 1) {first['accuracy']:.3f} -> "
            f"{last['accuracy']:.3f}; greedy {first['greedy_accuracy']:.3f} -> "
            f"{last['greedy_accuracy']:.3f}"
        )
        return data

    def _device(self) -> Any:
        from rlhf_core.trainers.base import resolve_device

        return resolve_device(self.cfg.device)

    # ---- the whole run ----------------------------------------------------------------------
    def check_run_dir(self) -> None:
        from rlhf_core.config import ConfigError, config_to_dict, dump_config, load_config

        saved = self.root / "config.toml"
        if saved.is_file():
            if not self.cfg.resume:
                raise FileExistsError(
                    f"{self.root} already holds a demo run; pass --resume true to continue it, "
                    "or choose another --run-dir"
                )
            try:
                old = _flatten(config_to_dict(load_config(DemoConfig, saved)))
            except ConfigError as exc:
                raise FileExistsError(
                    f"{self.root} holds a demo config that does not load ({exc}); choose another "
                    "--run-dir"
                ) from exc
            new = _flatten(config_to_dict(self.cfg))
            free = {"run_dir", "resume", "progress_bar", "tensorboard", "device", "threads"}
            diff = [
                k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)
            ]
            if diff:
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
                raise FileExistsError(
                    f"{self.root} holds a demo run with a different config ({shown}); choose "
                    "another --run-dir (or delete that folder) to run this config"
                )
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise FileExistsError(
                f"{self.root} exists and is not empty but holds no demo config.toml; choose "
                "another --run-dir"
            )
        dump_config(self.cfg, saved, header="rlhf-core demo: the resolved config of this run")

    def run(self) -> DemoResult:
        from rlhf_core import report as R
        from rlhf_core.models import make_reference
        from rlhf_core.rewards import RewardModelScorer

        t_start = time.time()
        self.check_run_dir()
        finished_before = (
            all(self.stage_file(s).is_file() for s in self.expected_stages())
            and (self.root / "report.json").is_file()
        )
        self.say(
            f"rlhf-core demo: {self.root} ({'quick' if self.cfg.model_size == 'tiny' else 'full'}"
            f" scale, built-in {self.cfg.model_size} model; nothing is downloaded)"
        )
        sft = self.stage_sft()
        train, held, prefs = self.stage_preferences(sft)
        rm, rm_data = self.stage_reward(sft, train, held, prefs)
        self.scorer = RewardModelScorer(rm, self.tok, batch_size=128)
        self.reference = make_reference(sft)
        results: dict[str, dict] = {}
        baseline = self.stage_baseline(sft)
        for m in self.cfg.methods:
            if m == "best_of_n":
                results[m] = self.stage_best_of_n(sft)
            elif m == "ppo":
                results[m] = self.stage_ppo(sft, rm, baseline)
            elif m == "grpo":
                results[m] = self.stage_grpo(sft, rm, baseline)
            elif m == "dpo":
                results[m] = self.stage_dpo(sft, train, baseline)
        arith = self.stage_arithmetic() if self.cfg.arithmetic.enabled else None
        self.header("report")
        rep = self.build_report(baseline, results, rm_data, arith)
        path = R.write_report(self.root, rep)
        summary = R.summary_table(rep)
        self.say("")
        self.say(summary)
        total = time.time() - t_start
        if finished_before:
            self.say(
                f"\nthis demo had already finished in {self.root}; nothing was trained again "
                "(choose another --run-dir for a new run)"
            )
        else:
            redone = ", ".join(self.ran) if self.ran else "none"
            self.say(f"\nfinished in {total:.0f} s (stages run now: {redone})")
        self.say(f"report: {path}  plots: {self.root / 'plots'}")
        return DemoResult(rep, path, summary, already_finished=finished_before, seconds=total)

    def expected_stages(self) -> list[str]:
        out = ["sft", "preferences", "reward", "baseline", *self.cfg.methods]
        if self.cfg.arithmetic.enabled:
            out.append("arithmetic")
        return out

    def build_report(
        self, baseline: dict, results: dict[str, dict], rm: dict, arith: dict | None
    ) -> Any:
        from rlhf_core import report as R
        from rlhf_core.config import config_to_dict
        from rlhf_core.monitor import OveroptimizationMonitor

        names = {"best_of_n": "best-of-N", "ppo": "PPO", "grpo": "GRPO", "dpo": "DPO"}
        curves = []
        notes = []
        samples = []
        for m, data in results.items():
            mon = OveroptimizationMonitor(
                patience=self.cfg.early_stop_patience, min_delta=self.cfg.early_stop_min_delta
            )
            for r in data["records"]:
                mon.update(int(r["step"]), r["proxy"], r["gold"], r["kl"])
            curve = R.MethodCurve.from_monitor(names[m], mon)
            for p, r in zip(curve.points, data["records"], strict=True):
                p.label = r.get("label")
            curves.append(curve)
            unit = "N=" if m == "best_of_n" else "step "
            peak, stop, last = curve.peak, curve.stop, curve.points[-1]
            if peak is not None:
                cut = (
                    f"early stopping (patience {self.cfg.early_stop_patience}) would cut at "
                    f"{unit}{stop.step} (gold {stop.gold:.3f})"
                    if stop is not None
                    else "early stopping would not have cut"
                )
                notes.append(
                    f"{names[m]}: gold peaks at {unit}{peak.step} ({peak.gold:.3f}, proxy "
                    f"{peak.proxy:.3f}); {cut}; last {unit}{last.step}: proxy {last.proxy:.3f}, "
                    f"gold {last.gold:.3f}, sqrt(KL) {math.sqrt(max(last.kl, 0.0)):.2f}"
                )
            after = data["samples"] if m == "best_of_n" else data["records"][-1]["samples"]
            for b, a in zip(baseline["samples"], after, strict=False):
                samples.append(
                    R.SampleComparison(
                        prompt=b["prompt"],
                        before=b["text"],
                        after=a["text"],
                        gold_before=b["gold"],
                        gold_after=a["gold"],
                        method=names[m]
                        + (f" (N={max(self.cfg.best_of_n.ns)})" if m == "best_of_n" else ""),
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
            f"evaluation: {len(self.eval_prompts)} fixed prompts x {self.cfg.eval_samples} "
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
            timings=dict(self.timings),
            config=config_to_dict(self.cfg),
        )


def _read_metrics(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    from rlhf_core.monitor import read_metrics

    return read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []


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


def run_demo(config: DemoConfig | None = None, *, out: Any = None) -> DemoResult:
    """Run the demo (see the module docstring) and write its report.

    Args:
        config: a :class:`DemoConfig` (default: the full demo; see :func:`load_demo_config`
            for ``quick`` and overrides).
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
            return _Demo(cfg, out=out).run()
    finally:
        torch.set_num_threads(threads)
