"""The ``rlhf-core`` command line.

::

    rlhf-core demo [--quick]                      the built-in end-to-end demo (nothing downloaded)
    rlhf-core sft | reward | dpo                  offline trainers
    rlhf-core ppo | grpo | rloo | reinforce-pp | best-of-n     on-policy trainers
    rlhf-core label                               preference pairs from a policy and a judge
    rlhf-core eval                                score a policy; KL from a reference

Every command reads ``--config file.toml`` (presets in ``configs/``) and takes ``--key value``
overrides generated from its config dataclass (``rlhf-core ppo --help`` lists every field with
its help, type and default; precedence: defaults < file < overrides). Each run writes into its
``--run_dir`` (``--run-dir``): the resolved ``config.toml``, ``metrics.jsonl`` and TensorBoard
events, checkpoints, the final model(s) and ``plots/``. ``--resume RUN_DIR`` continues the run
saved in that folder with its own ``config.toml`` (overrides still apply, e.g. a larger
``--total_steps``); a run that already finished says so and trains nothing.

Models: ``"builtin"``, ``"builtin:tiny"``, ``"builtin:small"`` (the built-in Llama-style model,
randomly initialised from ``seed``) or a local folder written by ``save_pretrained``; nothing
is downloaded. Datasets: a JSONL / JSON / Parquet file or a ``datasets`` ``save_to_disk``
folder in TRL's columns (see ``docs/data.md``), or ``builtin:language`` /
``builtin:arithmetic`` (the demo's synthetic tasks). Reward functions: ``module:function``,
``path/to/file.py:function`` or a shortcut (``gold``, ``arithmetic``, ``exact_match``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import pathlib
import random
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_core.config import (
    ConfigError,
    add_dataclass_arguments,
    config_to_dict,
    dump_config,
    dumps_toml,
    load_config,
    overrides_from_namespace,
)
from rlhf_core.trainers.best_of_n import BestOfNConfig
from rlhf_core.trainers.dpo import DPOConfig
from rlhf_core.trainers.grpo import GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_core.trainers.ppo import PPOConfig
from rlhf_core.trainers.reward import RewardConfig
from rlhf_core.trainers.sft import SFTConfig

__all__ = [
    "COMMANDS",
    "CLIError",
    "main",
    "build_parser",
    "resolve_reward_function",
    "REWARD_SHORTCUTS",
    "SFTRunConfig",
    "RewardRunConfig",
    "DPORunConfig",
    "PPORunConfig",
    "GRPORunConfig",
    "RLOORunConfig",
    "ReinforcePPRunConfig",
    "BestOfNRunConfig",
    "LabelConfig",
    "EvalConfig",
    "plot_metrics",
]

#: Reward-function shortcuts accepted wherever a ``module:function`` is.
REWARD_SHORTCUTS: dict[str, str] = {
    "gold": "rlhf_core.tasks:gold_reward",
    "arithmetic": "rlhf_core.tasks:arithmetic_reward",
    "exact_match": "rlhf_core.rewards:exact_match_reward",
}

BUILTIN_DATASETS = ("builtin:language", "builtin:arithmetic")


class CLIError(Exception):
    """A problem with what the user asked for (a bad path, a missing judge): printed as one
    line, exit status 2."""


def _check(ok: bool, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: {fix}")


# --------------------------------------------------------------------------------------------
# fields shared by the command configs


def _model_field(default: str = "builtin:tiny", what: str = "policy") -> Any:
    return field(
        default=default,
        metadata={
            "help": f"{what}: 'builtin', 'builtin:tiny', 'builtin:small' (built-in model, "
            "initialised from seed) or a local folder written by save_pretrained"
        },
    )


def _tokenizer_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "tokenizer folder; none = the model folder's own tokenizer (the built-in "
            "one for builtin models)"
        },
    )


def _dataset_field(kind: str, default: str = "builtin:language") -> Any:
    return field(
        default=default,
        metadata={
            "help": f"{kind}: a .jsonl/.json/.parquet file or a datasets save_to_disk folder "
            "(TRL columns), or builtin:language / builtin:arithmetic (generated)"
        },
    )


def _dataset_size_field(default: int = 2000) -> Any:
    return field(
        default=default, metadata={"help": "rows generated for a builtin:* dataset (>= 1)"}
    )


def _on_error_field() -> Any:
    return field(
        default="raise",
        metadata={"help": "a malformed data row: 'raise' an error naming it, or 'skip' it"},
    )


def _reward_model_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "reward model folder (from 'rlhf-core reward', or a sequence-classification "
            "checkpoint with one label); scored on the policy's token ids"
        },
    )


def _reward_funcs_field() -> Any:
    return field(
        default_factory=list,
        metadata={
            "help": "reward functions fn(prompts, completions, **columns): 'module:function', "
            "'file.py:function' or a shortcut (" + ", ".join(REWARD_SHORTCUTS) + "); weighted "
            "by reward_weights after the reward model"
        },
    )


def _reference_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "frozen reference model folder (or builtin:*); none = a copy of the "
            "starting policy"
        },
    )


def _check_common(cfg: Any) -> None:
    _check(cfg.dataset_size >= 1, "dataset_size", cfg.dataset_size, "expected >= 1 generated rows")
    _check(
        cfg.data_on_error in ("raise", "skip"),
        "data_on_error",
        cfg.data_on_error,
        "expected 'raise' or 'skip'",
    )


def _check_rewards(cfg: Any, *, required: bool = True) -> None:
    n = (1 if cfg.reward_model else 0) + len(cfg.reward_funcs)
    if required:
        _check(
            n >= 1,
            "reward_funcs",
            cfg.reward_funcs,
            "give a reward source: --reward_model FOLDER and/or --reward_funcs module:function",
        )
    w = getattr(cfg, "reward_weights", None)
    if w is not None:
        _check(
            len(w) == n,
            "reward_weights",
            w,
            f"expected one weight per reward source ({n}: the reward model first, then each "
            "reward function)",
        )


# --------------------------------------------------------------------------------------------
# command configs (trainer configs + where the model and data come from)


@dataclass
class SFTRunConfig(SFTConfig):
    """``rlhf-core sft``: :class:`~rlhf_core.trainers.SFTConfig` plus model and data."""

    run_dir: str = field(default="runs/sft", metadata={"help": "output folder of the run"})
    model: str = _model_field()
    tokenizer: str | None = _tokenizer_field()
    dataset: str = _dataset_field("prompt-completion data (columns prompt, completion)")
    dataset_size: int = _dataset_size_field()
    data_on_error: str = _on_error_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)


@dataclass
class RewardRunConfig(RewardConfig):
    """``rlhf-core reward``: :class:`~rlhf_core.trainers.RewardConfig` plus model and data."""

    run_dir: str = field(default="runs/reward", metadata={"help": "output folder of the run"})
    model: str = _model_field(
        what="body of the reward model (a policy: a fresh head is added; or a reward model "
        "folder to continue training)"
    )
    tokenizer: str | None = _tokenizer_field()
    dataset: str = _dataset_field("preference pairs (columns prompt, chosen, rejected)")
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "held-out pairs file; none = eval_fraction of dataset is held out"},
    )
    dataset_size: int = _dataset_size_field()
    data_on_error: str = _on_error_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)


@dataclass
class DPORunConfig(DPOConfig):
    """``rlhf-core dpo``: :class:`~rlhf_core.trainers.DPOConfig` plus model and data."""

    run_dir: str = field(default="runs/dpo", metadata={"help": "output folder of the run"})
    model: str = _model_field()
    tokenizer: str | None = _tokenizer_field()
    reference: str | None = _reference_field()
    dataset: str = _dataset_field("preference pairs (columns prompt, chosen, rejected)")
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "held-out pairs file; none = eval_fraction of dataset is held out"},
    )
    dataset_size: int = _dataset_size_field()
    data_on_error: str = _on_error_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)


@dataclass
class _PromptRunFields:
    """Model, prompt data and reward fields of the sampling commands (``ppo``, ``grpo``,
    ``rloo``, ``reinforce-pp``, ``best-of-n``); mixed in before the trainer's config, whose
    fields come first."""

    model: str = _model_field()
    tokenizer: str | None = _tokenizer_field()
    reference: str | None = _reference_field()
    dataset: str = _dataset_field("prompts (column prompt, extra columns go to reward functions)")
    dataset_size: int = _dataset_size_field()
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "a longer prompt (in tokens) is a malformed row"}
    )
    data_on_error: str = _on_error_field()
    reward_model: str | None = _reward_model_field()
    reward_funcs: list[str] = _reward_funcs_field()

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # the trainer config's checks
        _check_common(self)
        _check_rewards(self)
        _check(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            self.max_prompt_length,
            "expected >= 1 or none",
        )


@dataclass
class PPORunConfig(_PromptRunFields, PPOConfig):
    """``rlhf-core ppo``: :class:`~rlhf_core.trainers.PPOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/ppo", metadata={"help": "output folder of the run"})
    value_model: str | None = field(
        default=None,
        metadata={
            "help": "value model folder (a reward or value model); none = value_init decides"
        },
    )


@dataclass
class GRPORunConfig(_PromptRunFields, GRPOConfig):
    """``rlhf-core grpo``: :class:`~rlhf_core.trainers.GRPOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/grpo", metadata={"help": "output folder of the run"})


@dataclass
class RLOORunConfig(_PromptRunFields, RLOOConfig):
    """``rlhf-core rloo``: :class:`~rlhf_core.trainers.RLOOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/rloo", metadata={"help": "output folder of the run"})


@dataclass
class ReinforcePPRunConfig(_PromptRunFields, ReinforcePPConfig):
    """``rlhf-core reinforce-pp``: :class:`~rlhf_core.trainers.ReinforcePPConfig` plus model,
    data, rewards."""

    run_dir: str = field(default="runs/reinforce_pp", metadata={"help": "output folder of the run"})


@dataclass
class BestOfNRunConfig(_PromptRunFields, BestOfNConfig):
    """``rlhf-core best-of-n``: :class:`~rlhf_core.trainers.BestOfNConfig` plus model, data,
    rewards."""

    run_dir: str = field(default="runs/best_of_n", metadata={"help": "output folder of the run"})


@dataclass
class _SamplingFields:
    """Fields shared by ``label`` and ``eval``."""

    run_dir: str = field(default="runs/out", metadata={"help": "output folder"})
    seed: int = field(default=0, metadata={"help": "seed of sampling and builtin data"})
    model: str = _model_field()
    tokenizer: str | None = _tokenizer_field()
    dataset: str = _dataset_field("prompts (column prompt, extra columns go to reward functions)")
    dataset_size: int = _dataset_size_field(256)
    num_prompts: int | None = field(
        default=None, metadata={"help": "use only the first this many prompts; none = all"}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "a longer prompt (in tokens) is a malformed row"}
    )
    data_on_error: str = _on_error_field()
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    batch_size: int = field(default=64, metadata={"help": "rows per generate / forward call"})
    reward_model: str | None = _reward_model_field()
    reward_funcs: list[str] = _reward_funcs_field()
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "weight of each reward source (reward model first); none = all 1"},
    )
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'"}
    )

    def _check_sampling(self) -> None:
        _check_common(self)
        _check(
            self.num_prompts is None or self.num_prompts >= 1,
            "num_prompts",
            self.num_prompts,
            "expected >= 1 or none",
        )
        _check(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            self.max_prompt_length,
            "expected >= 1 or none",
        )
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "expected >= 1")
        _check(self.temperature >= 0, "temperature", self.temperature, "expected >= 0")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "expected in (0, 1]")
        _check(self.top_k >= 0, "top_k", self.top_k, "expected >= 0 (0 = off)")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "expected >= 1")
        _check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )


@dataclass
class LabelConfig(_SamplingFields):
    """``rlhf-core label``: sample two completions per prompt from a policy and let a judge
    pick the better one; writes preference pairs in TRL's columns (``prompt``, ``chosen``,
    ``rejected``, plus ``p_chosen``, scores and the prompt's extra columns) as JSONL.

    Exactly one kind of judge: a reward model and/or reward functions (scored, then
    ``P(a > b) = sigmoid(beta * (r_a - r_b))``), or a causal LM judge (RLAIF: it is asked which
    answer is better, in both orders, see :class:`rlhf_core.rewards.JudgeLabeler`)."""

    run_dir: str = field(default="runs/label", metadata={"help": "output folder"})
    judge_model: str | None = field(
        default=None,
        metadata={"help": "causal LM judge folder (or builtin:*) asked 'A or B?' (RLAIF)"},
    )
    judge_tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer of the judge; none = the judge folder's"}
    )
    judge_template: str | None = field(
        default=None,
        metadata={
            "help": "judge prompt with {prompt}, {answer_a}, {answer_b}; none = the default one"
        },
    )
    sample_labels: bool = field(
        default=False,
        metadata={
            "help": "draw each label with the judged probability (Bradley-Terry noise) "
            "instead of taking the more likely side"
        },
    )
    beta: float = field(
        default=1.0, metadata={"help": "scored judges: P(a > b) = sigmoid(beta * (r_a - r_b))"}
    )
    output: str | None = field(
        default=None, metadata={"help": "output JSONL file; none = run_dir/preferences.jsonl"}
    )

    def __post_init__(self) -> None:
        self._check_sampling()
        scored = bool(self.reward_model) or bool(self.reward_funcs)
        _check(
            scored != (self.judge_model is not None),
            "judge_model",
            self.judge_model,
            "give exactly one judge: --reward_model / --reward_funcs (scored), or "
            "--judge_model (an LM asked which answer is better)",
        )
        if scored:
            _check_rewards(self)
        _check(
            math.isfinite(self.beta) and self.beta > 0, "beta", self.beta, "expected > 0 (e.g. 1)"
        )
        if self.judge_template is not None:
            for part in ("{prompt}", "{answer_a}", "{answer_b}"):
                _check(
                    part in self.judge_template,
                    "judge_template",
                    self.judge_template,
                    f"the template must contain {part}",
                )


@dataclass
class EvalConfig(_SamplingFields):
    """``rlhf-core eval``: sample a policy on a prompt set, score the samples with a reward
    model / reward functions, and measure the KL from a reference; writes ``eval.json`` (the
    means) and ``samples.jsonl`` (every completion and its scores)."""

    run_dir: str = field(default="runs/eval", metadata={"help": "output folder"})
    num_samples: int = field(default=1, metadata={"help": "completions per prompt"})
    reference: str | None = field(
        default=None,
        metadata={
            "help": "reference model folder (or builtin:*) for KL(policy || reference); none = "
            "no KL"
        },
    )

    def __post_init__(self) -> None:
        self._check_sampling()
        _check(self.num_samples >= 1, "num_samples", self.num_samples, "expected >= 1")
        _check_rewards(self, required=self.reference is None)


# --------------------------------------------------------------------------------------------
# loading models, data and reward functions


def _is_builtin(name: str) -> bool:
    return name == "builtin" or name.startswith("builtin:")


def load_tokenizer_for(model: str, tokenizer: str | None, *, field_name: str = "model") -> Any:
    """The tokenizer of a ``model`` argument: ``tokenizer`` when given, the built-in one for a
    builtin model, else the one saved in the model folder."""
    from rlhf_core.models import load_tokenizer

    if tokenizer is not None:
        if not _is_builtin(tokenizer) and not pathlib.Path(tokenizer).is_dir():
            raise CLIError(f"tokenizer={tokenizer!r}: no such folder")
        return load_tokenizer(None if _is_builtin(tokenizer) else tokenizer)
    if _is_builtin(model):
        return load_tokenizer()
    p = pathlib.Path(model)
    if not p.is_dir():
        raise CLIError(
            f"{field_name}={model!r}: no such folder (expected 'builtin', 'builtin:tiny', "
            "'builtin:small' or a local folder written by save_pretrained; nothing is downloaded)"
        )
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise CLIError(
            f"{field_name}={model!r} holds no tokenizer (tokenizer.json); pass --tokenizer FOLDER"
        )
    return load_tokenizer(p)


def load_model(name: str, tokenizer: Any, *, seed: int, field_name: str = "model") -> Any:
    """A causal LM from ``"builtin[:size]"`` or a local folder (errors name ``field_name``)."""
    from rlhf_core.models import load_policy

    if not _is_builtin(name) and not pathlib.Path(name).is_dir():
        raise CLIError(
            f"{field_name}={name!r}: no such folder (expected 'builtin', 'builtin:tiny', "
            "'builtin:small' or a local folder written by save_pretrained)"
        )
    try:
        return load_policy(name, tokenizer=tokenizer, seed=seed)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={name!r}: cannot load a causal LM: {exc}") from exc


def _load_scalar(cls: Any, path: str, field_name: str) -> Any:
    if not pathlib.Path(path).is_dir():
        raise CLIError(f"{field_name}={path!r}: no such folder")
    try:
        return cls.from_pretrained(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={path!r}: {exc}") from exc


def resolve_reward_function(spec: str, *, field_name: str = "reward_funcs") -> Callable[..., Any]:
    """A reward function from ``"module:function"``, ``"path/to/file.py:function"`` or a
    shortcut of :data:`REWARD_SHORTCUTS`. The attribute may be dotted (``"mod:Class.method"``).
    Errors name ``field_name`` and say what was wrong."""
    target = REWARD_SHORTCUTS.get(spec, spec)
    if ":" not in target:
        raise CLIError(
            f"{field_name}: {spec!r} is not 'module:function', 'file.py:function' or one of "
            f"the shortcuts {sorted(REWARD_SHORTCUTS)}"
        )
    mod_name, attr = target.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = pathlib.Path(mod_name)
        if not path.is_file():
            raise CLIError(f"{field_name}: {spec!r}: no such file {str(path)!r}")
        unique = f"rlhf_core_user_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(unique, path)
        if module_spec is None or module_spec.loader is None:
            raise CLIError(f"{field_name}: {spec!r}: cannot import {str(path)!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise CLIError(f"{field_name}: {spec!r}: cannot import {mod_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"{field_name}: {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"{field_name}: {spec!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def _reward_sources(cfg: Any) -> list[Any]:
    """[RewardModel (if any), *functions], in the order reward_weights refers to."""
    from rlhf_core.models import RewardModel

    out: list[Any] = []
    if cfg.reward_model:
        out.append(_load_scalar(RewardModel, cfg.reward_model, "reward_model"))
    out += [
        resolve_reward_function(s, field_name=f"reward_funcs[{i}]")
        for i, s in enumerate(cfg.reward_funcs)
    ]
    return out


def _check_dataset(name: str) -> None:
    if name.startswith("builtin") and name not in BUILTIN_DATASETS:
        raise CLIError(f"dataset={name!r}: unknown; the built-in ones are {BUILTIN_DATASETS}")
    if not name.startswith("builtin") and not pathlib.Path(name).exists():
        raise CLIError(f"dataset={name!r}: no such file or folder")


def load_sft_data(cfg: Any, tokenizer: Any) -> list[dict[str, str]]:
    """Prompt-completion rows of ``cfg.dataset``."""
    from rlhf_core import tasks
    from rlhf_core.data import load_prompt_completions

    _check_dataset(cfg.dataset)
    if cfg.dataset == "builtin:language":
        return tasks.sft_corpus(cfg.dataset_size, seed=cfg.seed)
    if cfg.dataset == "builtin:arithmetic":
        return [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in tasks.arithmetic_sft_corpus(cfg.dataset_size, seed=cfg.seed)
        ]
    ds = load_prompt_completions(cfg.dataset, tokenizer=tokenizer, on_error=cfg.data_on_error)
    _report_skips(ds)
    return [{"prompt": p, "completion": c} for p, c in zip(ds.prompts, ds.completions, strict=True)]


def builtin_preferences(name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Preference pairs of a built-in task. ``builtin:language``: two grammar samples for one
    prompt, labelled by the hidden gold reward with Bradley-Terry noise; ``builtin:arithmetic``:
    the right answer against a wrong one."""
    from rlhf_core import tasks
    from rlhf_core.rewards import label_pairs

    if name == "builtin:arithmetic":
        rng = random.Random(f"arith-pairs-{seed}")
        rows = []
        for r in tasks.arithmetic_dataset(n, seed=seed):
            wrong = int(r["answer"]) + rng.choice((-2, -1, 1, 2, 10))
            rows.append({"prompt": r["prompt"], "chosen": r["answer"], "rejected": str(abs(wrong))})
        return [r for r in rows if r["chosen"] != r["rejected"]]
    rng = random.Random(f"pairs-{seed}")
    prompts = tasks.prompt_set(n, seed=seed)
    subjects = [tasks.prompt_subject(p) or tasks.SUBJECTS[0] for p in prompts]
    a = [tasks.sample_completion(rng, s) for s in subjects]
    b = [tasks.sample_completion(rng, s) for s in subjects]
    rows = label_pairs(prompts, a, b, tasks.gold_reward, sample=True, seed=seed)
    return [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in rows
        if r["chosen"] != r["rejected"]
    ]


def load_pairs(path: str, cfg: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """Preference pairs from ``path`` (a file/folder or ``builtin:*``)."""
    from rlhf_core.data import load_preferences

    _check_dataset(path)
    if path.startswith("builtin:"):
        return builtin_preferences(path, cfg.dataset_size, cfg.seed)
    ds = load_preferences(path, tokenizer=tokenizer, on_error=cfg.data_on_error)
    _report_skips(ds)
    return [ds[i] for i in range(len(ds))]


def load_prompt_rows(cfg: Any, tokenizer: Any) -> Any:
    """Prompts (with extra columns) of ``cfg.dataset``: a list of mappings (``builtin:*``) or a
    :class:`rlhf_core.data.PromptDataset`, cut to ``num_prompts`` when the config has it."""
    from rlhf_core import tasks
    from rlhf_core.data import load_prompts

    _check_dataset(cfg.dataset)
    limit = getattr(cfg, "num_prompts", None)
    if cfg.dataset == "builtin:language":
        n = limit or cfg.dataset_size
        return [{"prompt": p} for p in tasks.prompt_set(n, seed=cfg.seed)]
    if cfg.dataset == "builtin:arithmetic":
        return tasks.arithmetic_dataset(limit or cfg.dataset_size, seed=cfg.seed)
    ds = load_prompts(
        cfg.dataset,
        tokenizer=tokenizer,
        max_prompt_length=cfg.max_prompt_length,
        on_error=cfg.data_on_error,
    )
    _report_skips(ds)
    if limit is not None and limit < len(ds):
        ds = ds.select(list(range(limit)))
    return ds


def _report_skips(ds: Any) -> None:
    rep = getattr(ds, "report", None)
    if rep is not None and rep.num_skipped:
        print(f"data: {rep}", file=sys.stderr)
    if len(ds) == 0:
        raise CLIError(f"{getattr(ds, 'source', 'dataset')}: no usable rows")


def _prompts_and_columns(rows: Any) -> tuple[list[str], dict[str, list[Any]]]:
    from rlhf_core.trainers.on_policy import prompt_table

    return prompt_table(rows)


# --------------------------------------------------------------------------------------------
# outputs


def _save_model(model: Any, tokenizer: Any, path: pathlib.Path) -> pathlib.Path:
    """``save_pretrained`` of the model and its tokenizer into ``path`` (replaced whole)."""
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def plot_metrics(
    run_dir: str | os.PathLike[str],
    keys: Sequence[str],
    path: str | os.PathLike[str] | None = None,
) -> pathlib.Path | None:
    """One panel per metric of ``keys`` found in ``run_dir/metrics.jsonl`` (against the step);
    written to ``path`` (default ``run_dir/plots/metrics.png``). Returns the path, or None when
    none of the keys was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rlhf_core.monitor import read_metrics

    run = pathlib.Path(run_dir)
    if not (run / "metrics.jsonl").is_file():
        return None
    rows = read_metrics(run)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.8 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, k in enumerate(present):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float))]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "-o", ms=2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    out = pathlib.Path(path) if path is not None else run / "plots" / "metrics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _finish_training(
    name: str, cfg: Any, result: Any, keys: Sequence[str], saved: Mapping[str, pathlib.Path]
) -> int:
    run = pathlib.Path(cfg.run_dir)
    plot = plot_metrics(run, keys)
    last = {k: v for k, v in result.metrics.items() if k in keys or k.startswith("eval/")}
    if last:
        print(f"{name}: step {result.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    for what, p in saved.items():
        print(f"{name}: {what} saved to {p}")
    print(
        f"{name}: run folder {run} (config.toml, metrics.jsonl, checkpoints/"
        + (", plots/metrics.png" if plot else "")
        + ")"
    )
    return 0


def _already_finished(name: str, result: Any) -> int:
    print(f"{name}: {result.message}")
    return 0


# --------------------------------------------------------------------------------------------
# commands


def _device_of(cfg: Any) -> Any:
    from rlhf_core.trainers.base import resolve_device

    try:
        return resolve_device(cfg.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _reference(cfg: Any, tokenizer: Any) -> Any:
    from rlhf_core.models import make_reference

    if cfg.reference is None:
        return None
    return make_reference(
        load_model(cfg.reference, tokenizer, seed=cfg.seed, field_name="reference")
    )


def run_sft(cfg: SFTRunConfig) -> int:
    from rlhf_core.trainers.sft import SFTTrainer

    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    model = load_model(cfg.model, tok, seed=cfg.seed)
    trainer = SFTTrainer(cfg, model, tok, load_sft_data(cfg, tok))
    res = trainer.train()
    if res.already_finished:
        return _already_finished("sft", res)
    saved = {"model": _save_model(model, tok, pathlib.Path(cfg.run_dir) / "model")}
    return _finish_training("sft", cfg, res, ["loss", "grad_norm", "lr"], saved)


def run_reward(cfg: RewardRunConfig) -> int:
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers.reward import RewardTrainer

    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    if not _is_builtin(cfg.model) and (pathlib.Path(cfg.model) / "rlhf_core_head.json").is_file():
        rm = _load_scalar(RewardModel, cfg.model, "model")
    else:
        rm = RewardModel.from_policy(load_model(cfg.model, tok, seed=cfg.seed), seed=cfg.seed)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    held = load_pairs(cfg.eval_dataset, cfg, tok) if cfg.eval_dataset else None
    trainer = RewardTrainer(cfg, rm, tok, pairs, eval_pairs=held)
    res = trainer.train()
    if res.already_finished:
        return _already_finished("reward", res)
    saved = {"reward model": _save_model(rm, tok, pathlib.Path(cfg.run_dir) / "reward_model")}
    keys = ["loss", "accuracy", "margin", "eval/accuracy", "eval/margin", "grad_norm"]
    return _finish_training("reward", cfg, res, keys, saved)


def run_dpo(cfg: DPORunConfig) -> int:
    from rlhf_core.trainers.dpo import DPOTrainer

    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    held = load_pairs(cfg.eval_dataset, cfg, tok) if cfg.eval_dataset else None
    trainer = DPOTrainer(cfg, policy, tok, pairs, reference=_reference(cfg, tok), eval_pairs=held)
    res = trainer.train()
    if res.already_finished:
        return _already_finished("dpo", res)
    saved = {"model": _save_model(policy, tok, pathlib.Path(cfg.run_dir) / "model")}
    keys = ["loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"]
    return _finish_training("dpo", cfg, res, keys, saved)


_RL_KEYS = [
    "reward/mean",
    "kl",
    "response_length/mean",
    "entropy",
    "policy_loss",
    "clip_frac",
    "value_loss",
    "best_of_n/selected_reward",
    "loss",
]


def _run_rl(name: str, cfg: Any, trainer_cls: Any) -> int:
    from rlhf_core.models import ValueModel

    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed)
    prompts = load_prompt_rows(cfg, tok)
    sources = _reward_sources(cfg)
    kwargs: dict[str, Any] = {"reference": _reference(cfg, tok)}
    if getattr(cfg, "value_model", None):
        kwargs["value_model"] = _load_scalar(ValueModel, cfg.value_model, "value_model")
    trainer = trainer_cls(cfg, policy, tok, prompts, sources, **kwargs)
    res = trainer.train()
    if res.already_finished:
        return _already_finished(name, res)
    saved = {"model": _save_model(policy, tok, pathlib.Path(cfg.run_dir) / "model")}
    keys = list(_RL_KEYS) + [
        k for k in res.metrics if k.startswith("reward/") and k not in _RL_KEYS
    ]
    return _finish_training(name, cfg, res, keys, saved)


def run_ppo(cfg: PPORunConfig) -> int:
    from rlhf_core.trainers.ppo import PPOTrainer

    return _run_rl("ppo", cfg, PPOTrainer)


def run_grpo(cfg: GRPORunConfig) -> int:
    from rlhf_core.trainers.grpo import GRPOTrainer

    return _run_rl("grpo", cfg, GRPOTrainer)


def run_rloo(cfg: RLOORunConfig) -> int:
    from rlhf_core.trainers.grpo import RLOOTrainer

    return _run_rl("rloo", cfg, RLOOTrainer)


def run_reinforce_pp(cfg: ReinforcePPRunConfig) -> int:
    from rlhf_core.trainers.grpo import ReinforcePPTrainer

    return _run_rl("reinforce-pp", cfg, ReinforcePPTrainer)


def run_best_of_n(cfg: BestOfNRunConfig) -> int:
    from rlhf_core.trainers.best_of_n import BestOfNTrainer

    return _run_rl("best-of-n", cfg, BestOfNTrainer)


def _scorers(cfg: Any, tokenizer: Any, device: Any) -> tuple[list[Any], list[str]]:
    """Reward sources as reward functions (a reward model wrapped in a scorer) and names."""
    from rlhf_core.models import RewardModel
    from rlhf_core.rewards import RewardModelScorer, reward_function_name

    fns: list[Any] = []
    names: list[str] = []
    for src in _reward_sources(cfg):
        if isinstance(src, RewardModel):
            src = RewardModelScorer(src.to(device).eval(), tokenizer, batch_size=cfg.batch_size)
        base = reward_function_name(src)
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        fns.append(src)
        names.append(name)
    return fns, names


def _write_jsonl(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(_plain(r), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def run_label(cfg: LabelConfig) -> int:
    from rlhf_core.generation import generate
    from rlhf_core.rewards import DEFAULT_JUDGE_TEMPLATE, JudgeLabeler, combine_rewards, label_pairs

    device = _device_of(cfg)
    run = pathlib.Path(cfg.run_dir)
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed).to(device)
    prompts, columns = _prompts_and_columns(load_prompt_rows(cfg, tok))
    comp = generate(
        policy,
        tok,
        prompts,
        num_samples=2,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    a, b = comp.texts[0::2], comp.texts[1::2]
    judge: Any
    if cfg.judge_model is not None:
        jtok = load_tokenizer_for(cfg.judge_model, cfg.judge_tokenizer, field_name="judge_model")
        jm = load_model(cfg.judge_model, jtok, seed=cfg.seed, field_name="judge_model")
        judge = JudgeLabeler(
            jm.to(device).eval(),
            jtok,
            template=cfg.judge_template or DEFAULT_JUDGE_TEMPLATE,
            batch_size=cfg.batch_size,
        )
        kind = f"LM judge {cfg.judge_model}"
    else:
        fns, names = _scorers(cfg, tok, device)

        def judge(prompts: list[str], completions: list[str], **cols: Any) -> np.ndarray:
            out = combine_rewards(fns, cfg.reward_weights, prompts, completions, **cols)
            assert isinstance(out, np.ndarray)
            return out

        kind = "reward " + " + ".join(names)
    rows = label_pairs(
        prompts,
        a,
        b,
        judge,
        sample=cfg.sample_labels,
        beta=cfg.beta,
        seed=cfg.seed,
        **({} if cfg.judge_model is not None else columns),
    )
    identical = sum(r["chosen"] == r["rejected"] for r in rows)
    out_rows = []
    for r in rows:
        if r["chosen"] == r["rejected"]:
            continue
        i = int(r.pop("index"))
        out_rows.append({**r, **{k: v[i] for k, v in columns.items() if k not in r}})
    output = pathlib.Path(cfg.output) if cfg.output else run / "preferences.jsonl"
    _write_jsonl(output, out_rows)
    summary = {
        "judge": kind,
        "num_prompts": len(prompts),
        "num_pairs": len(out_rows),
        "dropped_identical": int(identical),
        "dropped_unscorable_or_tied": len(prompts) - len(rows),
        "mean_p_chosen": float(np.mean([r["p_chosen"] for r in out_rows])) if out_rows else None,
        "sample_labels": cfg.sample_labels,
        "output": str(output),
    }
    (run / "label_summary.json").write_text(json.dumps(_plain(summary), indent=2) + "\n")
    print(
        f"label: {len(out_rows)} pairs from {len(prompts)} prompts judged by {kind} -> {output} "
        f"(dropped {identical} identical, {summary['dropped_unscorable_or_tied']} unscorable or "
        "tied)"
    )
    return 0


def run_eval(cfg: EvalConfig) -> int:
    from rlhf_core.demo import evaluate_policy

    device = _device_of(cfg)
    run = pathlib.Path(cfg.run_dir)
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed).to(device)
    prompts, columns = _prompts_and_columns(load_prompt_rows(cfg, tok))
    fns, names = _scorers(cfg, tok, device)
    ref = _reference(cfg, tok)
    ev = evaluate_policy(
        policy,
        tok,
        prompts,
        dict(zip(names, fns, strict=True)),
        reference=None if ref is None else ref.to(device),
        columns=columns,
        num_samples=cfg.num_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    summary = ev.summary()
    if len(names) > 1:
        w = cfg.reward_weights or [1.0] * len(names)
        total = np.zeros(len(ev), dtype=np.float64)
        for wk, n in zip(w, names, strict=True):
            total += float(wk) * ev.scores[n]  # NaN where any source could not score
        ok = total[np.isfinite(total)]
        summary["reward/combined"] = float(ok.mean()) if ok.size else math.nan
    rows = []
    for i in range(len(ev)):
        row: dict[str, Any] = {"prompt": ev.prompts[i], "completion": ev.texts[i]}
        row.update({f"reward/{n}": float(ev.scores[n][i]) for n in names})
        if ev.kl is not None:
            row["kl"] = float(ev.kl[i])
        row["length"] = int(ev.response_lengths[i])
        row.update({k: v[i] for k, v in ev.columns.items() if k not in row})
        rows.append(row)
    _write_jsonl(run / "samples.jsonl", rows)
    out = {"model": cfg.model, "reference": cfg.reference, "num_prompts": len(prompts), **summary}
    (run / "eval.json").write_text(json.dumps(_plain(out), indent=2) + "\n")
    width = max(len(k) for k in summary)
    print(f"eval: {cfg.model} on {len(prompts)} prompts x {cfg.num_samples} samples")
    for k, v in summary.items():
        print(f"  {k.ljust(width)}  {v:.4g}")
    print(f"eval: {run / 'eval.json'}, {run / 'samples.jsonl'}")
    return 0


def run_demo_command(cfg: Any) -> int:
    import logging

    from rlhf_core.demo import run_demo

    # the demo prints its own progress; the trainers' per-slice notes would repeat it
    logging.getLogger("rlhf_core.trainers").setLevel(logging.WARNING)
    run_demo(cfg)
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, config class and runner."""

    name: str
    help: str
    config: type
    run: Callable[[Any], int]
    description: str = ""


def _demo_config_cls() -> type:
    from rlhf_core.demo import DemoConfig

    return DemoConfig


_RL_DESCRIPTION = """\
Samples completions of the prompts in --dataset from --model, scores them with
--reward_model and/or --reward_funcs (weighted by --reward_weights, the reward model
first), and updates the policy; the final policy is saved to RUN_DIR/model.
Example (the built-in task, scored by its hidden gold reward):
  rlhf-core {name} --config configs/{preset}.toml --total_steps 20"""

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "demo",
            "the built-in end-to-end demo: SFT -> gold-labelled pairs -> reward model -> "
            "best-of-N / PPO / GRPO / DPO -> report with plots; then GRPO on arithmetic",
            _demo_config_cls(),
            run_demo_command,
            "Writes RUN_DIR/report.md, report.json and plots/*.png (proxy and gold reward\n"
            "against sqrt(KL) per method, reward-model accuracy, arithmetic accuracy).\n"
            "Nothing is downloaded. Running it again on the same --run_dir continues an\n"
            "interrupted demo, or prints the summary of a finished one.",
        ),
        Command(
            "sft",
            "supervised fine-tuning on prompt-completion data",
            SFTRunConfig,
            run_sft,
            "Trains --model on --dataset (columns prompt, completion; conversational rows use\n"
            "the tokenizer's chat template); the final model goes to RUN_DIR/model.",
        ),
        Command(
            "reward",
            "train a reward model on preference pairs (Bradley-Terry)",
            RewardRunConfig,
            run_reward,
            "A scalar head on the body of --model, trained on --dataset (columns prompt,\n"
            "chosen, rejected); held-out accuracy is logged as eval/accuracy. The reward model\n"
            "goes to RUN_DIR/reward_model (use it as --reward_model of ppo/grpo/label/eval).",
        ),
        Command(
            "ppo",
            "PPO with a value model, GAE and a KL penalty",
            PPORunConfig,
            run_ppo,
            _RL_DESCRIPTION.format(name="ppo", preset="ppo"),
        ),
        Command(
            "grpo",
            "GRPO (Dr.GRPO, DAPO options): group-relative advantages, no value model",
            GRPORunConfig,
            run_grpo,
            _RL_DESCRIPTION.format(name="grpo", preset="grpo"),
        ),
        Command(
            "rloo",
            "RLOO: leave-one-out baseline, KL in the reward",
            RLOORunConfig,
            run_rloo,
            _RL_DESCRIPTION.format(name="rloo", preset="rloo"),
        ),
        Command(
            "reinforce-pp",
            "REINFORCE++: per-token returns, batch-whitened advantages",
            ReinforcePPRunConfig,
            run_reinforce_pp,
            _RL_DESCRIPTION.format(name="reinforce-pp", preset="reinforce_pp"),
        ),
        Command(
            "best-of-n",
            "rejection sampling: keep the best of N samples per prompt, SFT on them",
            BestOfNRunConfig,
            run_best_of_n,
            _RL_DESCRIPTION.format(name="best-of-n", preset="best_of_n"),
        ),
        Command(
            "dpo",
            "DPO / IPO on preference pairs against a frozen reference",
            DPORunConfig,
            run_dpo,
            "Trains --model on --dataset (columns prompt, chosen, rejected); the reference is\n"
            "a frozen copy of the starting model unless --reference is given. The final model\n"
            "goes to RUN_DIR/model.",
        ),
        Command(
            "label",
            "preference pairs from a policy's samples and a judge (reward model, reward "
            "function, or an LM asked which answer is better)",
            LabelConfig,
            run_label,
            "Samples two completions per prompt from --model and labels the pair with one\n"
            "judge: --reward_model / --reward_funcs (P(a>b) = sigmoid(beta (r_a - r_b))) or\n"
            "--judge_model (RLAIF: an LM asked 'A or B?' in both orders). Writes JSONL rows\n"
            "{prompt, chosen, rejected, p_chosen, ...} (TRL columns) to --output or\n"
            "RUN_DIR/preferences.jsonl, ready for 'rlhf-core reward' and 'rlhf-core dpo'.",
        ),
        Command(
            "eval",
            "score a policy's samples with reward models / functions; KL from a reference",
            EvalConfig,
            run_eval,
            "Samples --num_samples completions per prompt, scores them with --reward_model\n"
            "and/or --reward_funcs, and with --reference measures KL(policy || reference) as\n"
            "the mean over samples of sum_t log pi - log pi_ref. Writes RUN_DIR/eval.json and\n"
            "RUN_DIR/samples.jsonl.",
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# parsing and main

_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off", "y", "n", "t", "f"}

_EPILOG = """\
Values come from the field defaults, then --config FILE.toml, then the options above
(--key value, --key=value; dotted names for nested tables; --flag alone means true;
lists as a,b or [a, b]). --run-dir is --run_dir.

--resume RUN_DIR continues the run saved in RUN_DIR with its config.toml (options given
here still apply); --resume true/false only says whether to continue the run in --run_dir.
A finished run says so and trains nothing (raise --total_steps to train longer).

Outputs in the run folder: config.toml (resolved), metrics.jsonl, tensorboard/,
checkpoints/, the final model (model/ or reward_model/), plots/metrics.png.
"""


def build_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of subcommand ``name``: ``--config``, ``--print-config`` (and
    ``--quick`` for the demo) plus one option per config field."""
    if name not in COMMANDS:
        raise KeyError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
    cmd = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=f"rlhf-core {name}",
        description=cmd.help + (f"\n\n{cmd.description}" if cmd.description else ""),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file with values for the fields below (presets in configs/)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as TOML and exit without running",
    )
    if name == "demo":
        parser.add_argument(
            "--quick",
            action="store_true",
            help="the demo at small scale (tiny model, few steps, under a minute on 2 CPU "
            "cores; default run folder runs/demo-quick), same stages and outputs",
        )
    add_dataclass_arguments(parser, cmd.config)
    return parser


def _apply_resume(overrides: dict[str, Any], toml: str | None) -> tuple[str | None, dict[str, Any]]:
    """``--resume RUN_DIR``: read RUN_DIR/config.toml and continue in RUN_DIR."""
    value = overrides.get("resume")
    if value is None or str(value).strip().lower() in _BOOL_WORDS:
        return toml, overrides
    folder = pathlib.Path(str(value))
    saved = folder / "config.toml"
    if not saved.is_file():
        raise CLIError(
            f"--resume {value}: expected true/false or a run folder holding config.toml "
            f"({saved} does not exist)"
        )
    if toml is not None:
        raise CLIError(
            f"--resume {value} reads {saved}; do not also pass --config (use options to change "
            "single values)"
        )
    out = dict(overrides)
    out["resume"] = "true"
    out.setdefault("run_dir", str(folder))
    return str(saved), out


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: rlhf-core <command> [--config FILE.toml] [--key value ...]",
        "",
        "RLHF with a Rust core: reward models, PPO, GRPO, RLOO, REINFORCE++, best-of-N, DPO.",
        "",
        "commands:",
    ]
    for n, c in COMMANDS.items():
        wrapped = textwrap.wrap(c.help, width=88 - width - 4)
        lines.append(f"  {n.ljust(width)}  {wrapped[0]}")
        lines += [" " * (width + 4) + w for w in wrapped[1:]]
    lines += [
        "",
        "Start with 'rlhf-core demo --quick' (under a minute) or 'rlhf-core demo' (about ten",
        "minutes on 2 CPU cores); nothing is downloaded. 'rlhf-core <command> --help' lists",
        "every option of a command.",
    ]
    return "\n".join(lines)


def _setup_logging() -> None:
    import logging

    lib = logging.getLogger("rlhf_core")
    if not lib.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        lib.addHandler(handler)
        lib.setLevel(logging.INFO)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file weight loading bars
    except ImportError:  # pragma: no cover
        pass


def _error(name: str, exc: BaseException) -> None:
    print(f"rlhf-core {name}: error: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlhf-core`` (``python -m rlhf_core``). Returns the exit status: 0 on
    success, 1 when a run failed on its data or folder, 2 for a bad command line or config."""
    from rlhf_core.checkpoint import CheckpointError, latest_checkpoint, resume_or_start
    from rlhf_core.data import DataError

    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if args_in else 2
    if args_in[0] in ("-V", "--version"):
        from rlhf_core import __version__

        print(f"rlhf-core {__version__}")
        return 0
    name = args_in[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(
            f"rlhf-core: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    cmd = COMMANDS[name]
    parser = build_parser(name)
    ns, unknown = parser.parse_known_args(args_in[1:])
    if unknown:
        import difflib

        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        bad = (
            next(u for u in unknown if u.startswith("-"))
            if any(u.startswith("-") for u in unknown)
            else unknown[0]
        )
        close = difflib.get_close_matches(bad.split("=", 1)[0], options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(
            f"rlhf-core {name}: error: unrecognized argument {bad!r}{hint} "
            f"(rlhf-core {name} --help lists the options)",
            file=sys.stderr,
        )
        return 2
    overrides: dict[str, Any] = overrides_from_namespace(ns, cmd.config)
    try:
        toml, overrides = _apply_resume(overrides, ns.config)
        if name == "demo":
            from rlhf_core.demo import load_demo_config

            cfg: Any = load_demo_config(toml, overrides, quick=ns.quick)
        else:
            cfg = load_config(cmd.config, toml, overrides)
    except (ConfigError, CLIError) as exc:
        _error(name, exc)
        return 2
    if ns.print_config:
        print(dumps_toml(config_to_dict(cfg)), end="")
        return 0
    _setup_logging()
    run_dir = pathlib.Path(cfg.run_dir)
    try:
        if hasattr(cfg, "total_steps") and not cfg.resume and latest_checkpoint(run_dir):
            resume_or_start(run_dir, False, cfg.total_steps)  # raises, naming the folder
        if name != "demo":
            dump_config(
                cfg,
                run_dir / "config.toml",
                header=f"rlhf-core {name}: the resolved config of this run "
                f"(rerun or continue: rlhf-core {name} --resume {run_dir})",
            )
        return cmd.run(cfg)
    except (CLIError, ConfigError) as exc:
        _error(name, exc)
        return 2
    except (DataError, CheckpointError, FileExistsError, FileNotFoundError) as exc:
        _error(name, exc)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nrlhf-core {name}: interrupted; run the same command again (or --resume "
            f"{run_dir}) to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
