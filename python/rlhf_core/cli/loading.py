"""From the strings of a command config to objects: tokenizers, models, the reference, reward
sources (reward models and reward functions), datasets and the device.

Errors in what the user gave (a missing folder, an unknown shortcut) are :class:`CLIError`s
that name the field.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import random
import sys
from collections.abc import Callable
from typing import Any

import torch

from rlhf_core import tasks
from rlhf_core.cli.parser import CLIError
from rlhf_core.cli.reward_models import load_ensemble
from rlhf_core.cli.run_fields import BUILTIN_DATASETS, REWARD_SHORTCUTS
from rlhf_core.data import load_preferences, load_prompt_completions, load_prompts
from rlhf_core.models import (
    RewardEnsemble,
    RewardModel,
    is_reward_ensemble,
    load_policy,
    load_tokenizer,
    make_reference,
)
from rlhf_core.reward_ensemble import RewardEnsembleScorer
from rlhf_core.rewards import RewardModelScorer, label_pairs, reward_function_name
from rlhf_core.rollout import prompt_table
from rlhf_core.trainers.runtime import resolve_device

__all__ = [
    "is_builtin",
    "load_tokenizer_for",
    "load_model",
    "load_scalar_model",
    "load_reference",
    "resolve_reward_function",
    "load_reward_sources",
    "load_scorers",
    "load_sft_data",
    "builtin_preferences",
    "load_pairs",
    "load_prompt_rows",
    "load_prompt_table",
    "device_for",
]


def is_builtin(name: str) -> bool:
    """Whether a model argument names the built-in model (``builtin`` or ``builtin:<size>``)."""
    return name == "builtin" or name.startswith("builtin:")


# --------------------------------------------------------------------------------------------
# tokenizers and models


def load_tokenizer_for(model: str, tokenizer: str | None, *, field_name: str = "model") -> Any:
    """The tokenizer of a ``model`` argument: ``tokenizer`` when given, the built-in one for a
    builtin model, else the one saved in the model folder."""
    if tokenizer is not None:
        if not is_builtin(tokenizer) and not pathlib.Path(tokenizer).is_dir():
            raise CLIError(f"tokenizer={tokenizer!r}: no such folder")
        return load_tokenizer(None if is_builtin(tokenizer) else tokenizer)
    if is_builtin(model):
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
    if not is_builtin(name) and not pathlib.Path(name).is_dir():
        raise CLIError(
            f"{field_name}={name!r}: no such folder (expected 'builtin', 'builtin:tiny', "
            "'builtin:small' or a local folder written by save_pretrained)"
        )
    try:
        return load_policy(name, tokenizer=tokenizer, seed=seed)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={name!r}: cannot load a causal LM: {exc}") from exc


def load_scalar_model(cls: Any, path: str, field_name: str) -> Any:
    """``cls.from_pretrained(path)`` for a scalar-head model class (reward or value model)."""
    if not pathlib.Path(path).is_dir():
        raise CLIError(f"{field_name}={path!r}: no such folder")
    try:
        return cls.from_pretrained(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={path!r}: {exc}") from exc


def load_reference(cfg: Any, tokenizer: Any) -> Any:
    """The frozen reference of ``cfg.reference``, or None when the config names none."""
    if cfg.reference is None:
        return None
    return make_reference(
        load_model(cfg.reference, tokenizer, seed=cfg.seed, field_name="reference")
    )


def device_for(cfg: Any) -> torch.device:
    """The ``torch.device`` of ``cfg.device`` (``"auto"``: CUDA when available)."""
    try:
        return resolve_device(cfg.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# reward sources


def resolve_reward_function(spec: str, *, field_name: str = "reward_funcs") -> Callable[..., Any]:
    """A reward function from ``"module:function"``, ``"path/to/file.py:function"`` or a
    shortcut of :data:`~rlhf_core.cli.run_fields.REWARD_SHORTCUTS`. The attribute may be
    dotted (``"mod:Class.method"``). Errors name ``field_name`` and say what was wrong."""
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


def load_reward_sources(cfg: Any) -> list[Any]:
    """[RewardModel or RewardEnsemble (if any), *functions], in the order ``reward_weights``
    refers to."""
    out: list[Any] = []
    if cfg.reward_model and is_reward_ensemble(cfg.reward_model):
        out.append(load_ensemble(cfg.reward_model, "reward_model"))
    elif cfg.reward_model:
        out.append(load_scalar_model(RewardModel, cfg.reward_model, "reward_model"))
    out += [
        resolve_reward_function(s, field_name=f"reward_funcs[{i}]")
        for i, s in enumerate(cfg.reward_funcs)
    ]
    return out


def load_scorers(cfg: Any, tokenizer: Any, device: Any) -> tuple[list[Any], list[str]]:
    """The reward sources as reward functions (a reward model wrapped in a
    :class:`~rlhf_core.rewards.RewardModelScorer` on ``device``) and their names, made unique
    with ``_1``, ``_2``, ... in order."""
    fns: list[Any] = []
    names: list[str] = []
    for src in load_reward_sources(cfg):
        if isinstance(src, RewardEnsemble):
            src = RewardEnsembleScorer(
                src.to(device).eval(),
                tokenizer,
                reduce=getattr(cfg, "ensemble_reduce", "mean"),
                lam=getattr(cfg, "ensemble_lambda", 1.0),
                batch_size=cfg.batch_size,
            )
        elif isinstance(src, RewardModel):
            src = RewardModelScorer(src.to(device).eval(), tokenizer, batch_size=cfg.batch_size)
        base = reward_function_name(src)
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        fns.append(src)
        names.append(name)
    return fns, names


# --------------------------------------------------------------------------------------------
# datasets


def _check_dataset(name: str) -> None:
    if name.startswith("builtin") and name not in BUILTIN_DATASETS:
        raise CLIError(f"dataset={name!r}: unknown; the built-in ones are {BUILTIN_DATASETS}")
    if not name.startswith("builtin") and not pathlib.Path(name).exists():
        raise CLIError(f"dataset={name!r}: no such file or folder")


def _report_skips(ds: Any) -> None:
    rep = getattr(ds, "report", None)
    if rep is not None and rep.num_skipped:
        print(f"data: {rep}", file=sys.stderr)
    if len(ds) == 0:
        raise CLIError(f"{getattr(ds, 'source', 'dataset')}: no usable rows")


def load_sft_data(cfg: Any, tokenizer: Any) -> list[dict[str, str]]:
    """Prompt-completion rows of ``cfg.dataset``."""
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
    _check_dataset(path)
    if path.startswith("builtin:"):
        return builtin_preferences(path, cfg.dataset_size, cfg.seed)
    ds = load_preferences(path, tokenizer=tokenizer, on_error=cfg.data_on_error)
    _report_skips(ds)
    return [ds[i] for i in range(len(ds))]


def load_prompt_rows(cfg: Any, tokenizer: Any) -> Any:
    """Prompts (with extra columns) of ``cfg.dataset``: a list of mappings (``builtin:*``) or a
    :class:`rlhf_core.data.PromptDataset`, cut to ``num_prompts`` when the config has it."""
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


def load_prompt_table(cfg: Any, tokenizer: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """The prompts of ``cfg.dataset`` as texts and extra columns (one entry per prompt each),
    the form the reward functions take."""
    return prompt_table(load_prompt_rows(cfg, tokenizer))
