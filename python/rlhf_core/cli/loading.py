"""From the strings of a command config to objects: tokenizers, models, the reference, reward
sources (reward models and reward functions), datasets and the device.

Models and datasets are named by Hub id (through the Hugging Face cache), local path or
``builtin:*``. Errors in what the user gave (a missing folder, a Hub id that is nowhere, an
unknown shortcut) are :class:`CLIError`s that name the field.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pathlib
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rlhf_core import tasks
from rlhf_core.cli.parser import CLIError
from rlhf_core.cli.reward_models import load_ensemble
from rlhf_core.cli.run_fields import BUILTIN_DATASETS, REWARD_SHORTCUTS
from rlhf_core.data import (
    DataError,
    is_hub_dataset_id,
    load_preferences,
    load_prompts,
    load_sft_dataset,
)
from rlhf_core.models import (
    ModelNotFoundError,
    RewardEnsemble,
    RewardModel,
    is_builtin,
    is_reward_ensemble,
    load_policy,
    load_tokenizer,
    make_reference,
)
from rlhf_core.rewards import RewardModelScorer, label_pairs, reward_function_name
from rlhf_core.rewards.ensemble import RewardEnsembleScorer
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
    "load_reward_tokenizer",
    "load_scorers",
    "load_sft_data",
    "builtin_preferences",
    "load_pairs",
    "load_eval_pairs",
    "load_prompt_rows",
    "load_eval_prompt_rows",
    "load_prompt_table",
    "device_for",
]


# --------------------------------------------------------------------------------------------
# tokenizers and models


def _pretrained_options(cfg: Any) -> dict[str, Any]:
    """``dtype``, ``attn_implementation`` and ``trust_remote_code`` of a command config
    (defaults when the config has no such field)."""
    return {
        "dtype": getattr(cfg, "dtype", "float32"),
        "attn_implementation": getattr(cfg, "attn_implementation", None),
        "trust_remote_code": bool(getattr(cfg, "trust_remote_code", False)),
    }


def _revision(cfg: Any, field_name: str) -> str | None:
    """``revision`` applies to the policy (``model``) and its tokenizer only."""
    return getattr(cfg, "revision", None) if field_name == "model" else None


def load_tokenizer_for(
    model: str, tokenizer: str | None, *, field_name: str = "model", cfg: Any = None
) -> Any:
    """The tokenizer of a ``model`` argument: ``tokenizer`` when given, the built-in one for a
    builtin model, else the model's own (a local folder or a Hub id)."""
    trust = bool(getattr(cfg, "trust_remote_code", False))
    if tokenizer is not None:
        try:
            return load_tokenizer(
                None if is_builtin(tokenizer) else tokenizer, trust_remote_code=trust
            )
        except (ModelNotFoundError, ValueError, OSError) as exc:
            raise CLIError(f"tokenizer={tokenizer!r}: {exc}") from exc
    if is_builtin(model):
        return load_tokenizer()
    p = pathlib.Path(model)
    if p.is_dir() and not any(
        (p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise CLIError(
            f"{field_name}={model!r} holds no tokenizer (tokenizer.json); pass --tokenizer FOLDER"
        )
    try:
        return load_tokenizer(
            model,
            revision=_revision(cfg, field_name),
            trust_remote_code=trust,
            what=field_name.replace("_", " "),
        )
    except (ModelNotFoundError, ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={model!r}: {exc}") from exc


def load_model(
    name: str, tokenizer: Any, *, seed: int, field_name: str = "model", cfg: Any = None
) -> Any:
    """A causal LM from ``"builtin[:size]"``, a local folder or a Hub id, with the load options
    of ``cfg`` (errors name ``field_name``)."""
    try:
        return load_policy(
            name,
            tokenizer=tokenizer,
            seed=seed,
            revision=_revision(cfg, field_name),
            **_pretrained_options(cfg),
        )
    except ModelNotFoundError as exc:
        raise CLIError(f"{field_name}={name!r}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={name!r}: cannot load a causal LM: {exc}") from exc


def load_scalar_model(cls: Any, path: str, field_name: str, cfg: Any = None) -> Any:
    """``cls.from_pretrained(path)`` for a scalar-head model class (reward or value model): a
    local folder or a Hub id, with the load options of ``cfg``."""
    try:
        return cls.from_pretrained(path, **_pretrained_options(cfg))
    except ModelNotFoundError as exc:
        raise CLIError(f"{field_name}={path!r}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={path!r}: {exc}") from exc


def load_reference(cfg: Any, tokenizer: Any) -> Any:
    """The frozen reference of ``cfg.reference``, or None when the config names none."""
    if cfg.reference is None:
        return None
    return make_reference(
        load_model(cfg.reference, tokenizer, seed=cfg.seed, field_name="reference", cfg=cfg)
    )


def device_for(cfg: Any) -> torch.device:
    """The ``torch.device`` of ``cfg.device`` (``"auto"``: CUDA when available)."""
    try:
        return resolve_device(cfg.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# reward sources


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The working directory on ``sys.path`` while a user's module is imported (as for
    ``python -m``: ``my_rewards.score`` finds ``./my_rewards.py``); the path is restored."""
    cwd = str(pathlib.Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_module(name: str) -> Any:
    with _cwd_importable():
        return importlib.import_module(name)


def _import_attribute(spec: str, mod_name: str, attr: str, field_name: str) -> Any:
    """``attr`` (possibly dotted) of module ``mod_name`` (a module path or a ``.py`` file)."""
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
            module = _import_module(mod_name)
        except ImportError as exc:
            raise CLIError(f"{field_name}: {spec!r}: cannot import {mod_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"{field_name}: {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _dotted(spec: str, field_name: str) -> Any:
    """``"package.module.function"`` (TRL's spelling): the longest importable module prefix,
    then the attributes after it."""
    parts = spec.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise CLIError(
            f"{field_name}: {spec!r} is not 'module:function', 'package.module.function' "
            f"(TRL's spelling), 'file.py:function' or one of the shortcuts "
            f"{sorted(REWARD_SHORTCUTS)}"
        )
    for cut in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:cut])
        try:
            _import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not mod_name.startswith(exc.name):
                raise CLIError(
                    f"{field_name}: {spec!r}: cannot import {mod_name!r}: {exc}"
                ) from exc
            continue  # not a module: try a shorter prefix
        except ImportError as exc:
            raise CLIError(f"{field_name}: {spec!r}: cannot import {mod_name!r}: {exc}") from exc
        return _import_attribute(spec, mod_name, ".".join(parts[cut:]), field_name)
    raise CLIError(f"{field_name}: {spec!r}: no module {parts[0]!r} to import")


def resolve_reward_function(spec: str, *, field_name: str = "reward_funcs") -> Callable[..., Any]:
    """A reward function from ``"package.module.function"`` (TRL's spelling),
    ``"module:function"``, ``"path/to/file.py:function"`` or a shortcut of
    :data:`~rlhf_core.cli.run_fields.REWARD_SHORTCUTS`. After a colon the attribute may be
    dotted (``"mod:Class.method"``). Errors name ``field_name`` and say what was wrong."""
    target = REWARD_SHORTCUTS.get(spec, spec)
    if ":" in target:
        mod_name, attr = target.rsplit(":", 1)
        obj = _import_attribute(spec, mod_name, attr, field_name)
    else:
        obj = _dotted(target, field_name)
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
        out.append(load_scalar_model(RewardModel, cfg.reward_model, "reward_model", cfg))
    out += [
        resolve_reward_function(s, field_name=f"reward_funcs[{i}]")
        for i, s in enumerate(cfg.reward_funcs)
    ]
    return out


def load_reward_tokenizer(cfg: Any, policy_tokenizer: Any) -> Any:
    """The tokenizer of ``cfg.reward_model`` (its own, saved beside it; the policy's when it
    has none, said on stderr). Scoring compares it with the policy's
    (:func:`rlhf_core.models.same_tokenizer`): the same one scores the sampled token ids, another
    one re-encodes the texts with the reward model's chat template."""
    if is_builtin(cfg.reward_model):
        return load_tokenizer()
    try:
        return load_tokenizer_for(cfg.reward_model, None, field_name="reward_model", cfg=cfg)
    except CLIError as exc:
        print(f"reward_model: {exc}; scoring with the policy's tokenizer", file=sys.stderr)
        return policy_tokenizer


def load_scorers(cfg: Any, tokenizer: Any, device: Any) -> tuple[list[Any], list[str]]:
    """The reward sources as reward functions (a reward model wrapped in a
    :class:`~rlhf_core.rewards.RewardModelScorer` on ``device``, with its own tokenizer) and
    their names, made unique with ``_1``, ``_2``, ... in order."""
    fns: list[Any] = []
    names: list[str] = []
    for src in load_reward_sources(cfg):
        if isinstance(src, RewardEnsemble):
            src = RewardEnsembleScorer(
                src.to(device).eval(),
                load_reward_tokenizer(cfg, tokenizer),
                reduce=getattr(cfg, "ensemble_reduce", "mean"),
                lam=getattr(cfg, "ensemble_lambda", 1.0),
                batch_size=cfg.batch_size,
            )
        elif isinstance(src, RewardModel):
            src = RewardModelScorer(
                src.to(device).eval(), load_reward_tokenizer(cfg, tokenizer),
                policy_tokenizer=tokenizer, chat_template_kwargs=cfg.chat_template_kwargs,
                batch_size=cfg.batch_size,
            )  # fmt: skip
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


def _check_dataset(name: str, field_name: str = "dataset") -> None:
    if name.startswith("builtin") and name not in BUILTIN_DATASETS:
        raise CLIError(f"{field_name}={name!r}: unknown; the built-in ones are {BUILTIN_DATASETS}")
    if name.startswith("builtin") or pathlib.Path(name).exists():
        return
    if not is_hub_dataset_id(name):
        raise CLIError(
            f"{field_name}={name!r}: no such file or folder (and not a Hub dataset id, org/name)"
        )


def _source(cfg: Any, split: str | None = None) -> dict[str, Any]:
    """The ``datasets.load_dataset`` options of ``cfg`` (``split`` overrides its split)."""
    return {
        "split": split if split is not None else getattr(cfg, "dataset_split", None),
        "config": getattr(cfg, "dataset_config", None),
        "streaming": bool(getattr(cfg, "dataset_streaming", False)),
    }


def _loaded(load: Callable[..., Any], name: str, field_name: str, **kwargs: Any) -> Any:
    """``load(name, **kwargs)`` with a whole-source problem (a Hub id that is nowhere, a split
    or configuration that does not exist) raised as a :class:`CLIError` naming the field;
    errors of single rows stay :class:`DataError`s."""
    try:
        return load(name, **kwargs)
    except DataError as exc:
        if exc.row is None and exc.kind in ("not_found", "split", "config", "unreadable"):
            raise CLIError(f"{field_name}={name!r}: {exc.detail}") from exc
        raise


def _report_skips(ds: Any) -> None:
    rep = getattr(ds, "report", None)
    if rep is not None and rep.num_skipped:
        print(f"data: {rep}", file=sys.stderr)
    if len(ds) == 0:
        raise CLIError(f"{getattr(ds, 'source', 'dataset')}: no usable rows")


def load_sft_data(cfg: Any, tokenizer: Any) -> Any:
    """Supervised examples of ``cfg.dataset`` for :class:`rlhf_core.trainers.SFTTrainer`:
    prompt-completion rows as they are, ``text`` rows as completions of an empty prompt, and
    ``messages`` rows as whole conversations (the trainer encodes each with
    :func:`rlhf_core.data.encode_conversation`, the loss on its assistant turns only)."""
    _check_dataset(cfg.dataset)
    if cfg.dataset == "builtin:language":
        return tasks.sft_corpus(cfg.dataset_size, seed=cfg.seed)
    if cfg.dataset == "builtin:arithmetic":
        return [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in tasks.arithmetic_sft_corpus(cfg.dataset_size, seed=cfg.seed)
        ]
    ds = _loaded(
        load_sft_dataset,
        cfg.dataset,
        "dataset",
        tokenizer=tokenizer,
        chat_template_kwargs=cfg.chat_template_kwargs,
        on_error=cfg.data_on_error,
        **_source(cfg),
    )
    _report_skips(ds)
    if hasattr(ds, "turns"):
        turns = sum(len(t) for t in ds.turns)
        print(
            f"data: {len(ds)} conversations of {ds.source}: {turns} assistant turns to learn",
            file=sys.stderr,
        )
        return [{"messages": m, "tools": t} for m, t in zip(ds.messages, ds.tools, strict=True)]
    return ds.examples()


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


def load_pairs(
    path: str,
    cfg: Any,
    tokenizer: Any,
    *,
    split: str | None = None,
    field_name: str = "dataset",
) -> list[dict[str, Any]]:
    """Preference pairs from ``path`` (a file, folder, Hub id or ``builtin:*``); ``split``
    overrides ``cfg.dataset_split``."""
    _check_dataset(path, field_name)
    if path.startswith("builtin:"):
        return builtin_preferences(path, cfg.dataset_size, cfg.seed)
    ds = _loaded(
        load_preferences,
        path,
        field_name,
        tokenizer=tokenizer,
        chat_template_kwargs=cfg.chat_template_kwargs,
        on_error=cfg.data_on_error,
        **_source(cfg, split),
    )
    _report_skips(ds)
    return [ds[i] for i in range(len(ds))]


def load_eval_pairs(cfg: Any, tokenizer: Any) -> list[dict[str, Any]] | None:
    """Held-out pairs of the reward and DPO commands: ``eval_dataset`` (at ``eval_split``
    when given), else the ``eval_split`` of ``dataset``; None when neither is set (the
    trainer then holds out ``eval_fraction`` of the training pairs)."""
    if cfg.eval_dataset:
        return load_pairs(
            cfg.eval_dataset, cfg, tokenizer, split=cfg.eval_split, field_name="eval_dataset"
        )
    if cfg.eval_split:
        if cfg.dataset.startswith("builtin:"):
            raise CLIError(f"eval_split={cfg.eval_split!r}: builtin datasets have no splits")
        return load_pairs(cfg.dataset, cfg, tokenizer, split=cfg.eval_split)
    return None


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
    ds = _loaded(
        load_prompts,
        cfg.dataset,
        "dataset",
        tokenizer=tokenizer,
        chat_template_kwargs=cfg.chat_template_kwargs,
        max_prompt_length=cfg.max_prompt_length,
        on_error=cfg.data_on_error,
        limit=limit,
        **_source(cfg),
    )
    _report_skips(ds)
    return ds


def load_eval_prompt_rows(cfg: Any, tokenizer: Any) -> Any:
    """The held-out prompts of ``cfg.eval_dataset`` (None when it names none), loaded like
    ``--dataset``; a ``builtin:*`` one has ``eval_dataset_size`` prompts generated with seed
    ``seed + 1``, so they are not the training prompts' draw."""
    name = cfg.eval_dataset
    if name is None:
        return None
    try:
        _check_dataset(name)
    except CLIError as exc:
        raise CLIError(str(exc).replace("dataset=", "eval_dataset=", 1)) from None
    if name == "builtin:language":
        return [{"prompt": p} for p in tasks.prompt_set(cfg.eval_dataset_size, seed=cfg.seed + 1)]
    if name == "builtin:arithmetic":
        return tasks.arithmetic_dataset(cfg.eval_dataset_size, seed=cfg.seed + 1)
    ds = load_prompts(
        name,
        tokenizer=tokenizer,
        max_prompt_length=cfg.max_prompt_length,
        on_error=cfg.data_on_error,
    )
    _report_skips(ds)
    return ds


def load_prompt_table(cfg: Any, tokenizer: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """The prompts of ``cfg.dataset`` as texts and extra columns (one entry per prompt each),
    the form the reward functions take."""
    return prompt_table(load_prompt_rows(cfg, tokenizer))
