"""The ``rlhf-core`` command line.

::

    rlhf-core demo [--quick]                      the built-in end-to-end demo (nothing downloaded)
    rlhf-core sft | reward | dpo                  offline trainers
    rlhf-core ppo | grpo | rloo | reinforce-pp | best-of-n     on-policy trainers
    rlhf-core label                               preference pairs from a policy and a judge
    rlhf-core eval                                score a policy; KL from a reference

Every command reads ``--config file.toml`` (or ``.yaml`` / ``.json``, e.g. a TRL recipe; presets
in ``configs/``) and takes ``--key value`` overrides generated from its config dataclass
(``rlhf-core ppo --help`` lists every field with its help, type and default, and TRL's
spellings it accepts; precedence: defaults < file < overrides). Each run writes into its
``--run_dir`` (``--run-dir``): the resolved ``config.toml``, ``metrics.jsonl`` and TensorBoard
events (``--report_to`` adds W&B, trackio, MLflow), ``samples.jsonl`` (``--log_completions``),
checkpoints, the final model(s) with a model card (``README.md``) and ``plots/``. ``--resume RUN_DIR`` continues the run
saved in that folder with its own ``config.toml`` (overrides still apply, e.g. a larger
``--total_steps``); a run that already finished says so and trains nothing.

Models (required): a Hugging Face Hub id (``org/name``, ``org/name@revision``) through the
Hugging Face cache (offline with ``HF_HUB_OFFLINE=1``), a local folder written by
``save_pretrained``, or ``"builtin"``, ``"builtin:tiny"``, ``"builtin:small"`` (the built-in
Llama-style model, randomly initialised from ``seed``; the presets use it). Datasets
(required): a Hub dataset id through ``datasets.load_dataset``, a JSONL / JSON / Parquet file, a
``save_to_disk`` folder or a folder of data files in TRL's formats (see ``docs/data.md``), or
``builtin:language`` / ``builtin:arithmetic`` (the demo's synthetic tasks). Reward functions: ``module:function``,
``path/to/file.py:function`` or a shortcut (``gold``, ``arithmetic``, ``exact_match``).

Layout (one module per concern; torch is imported only once a command runs, so
``rlhf-core --help`` answers at once):

- ``parser``: the command table, argparse, help, suggestions, ``--resume RUN_DIR``;
- ``aliases``: TRL's spellings of options;
- ``run_configs`` / ``run_fields``: one config dataclass per command and the fields they share;
- ``loading``: tokenizers, models, reward sources and datasets from those fields;
- ``outputs``: the final model, ``plots/metrics.png``, JSON summaries;
- ``commands/``: ``train`` (every trainer), ``label``, ``eval``, ``demo``.

The generic dataclass <-> TOML <-> argparse machinery is :mod:`rlhf_core.config`.
"""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from rlhf_core import __version__
from rlhf_core.cli.aliases import aliases_for, hints_for
from rlhf_core.cli.parser import (
    COMMANDS,
    TRAINING_COMMANDS,
    CLIError,
    Command,
    alias_overrides,
    apply_resume,
    build_parser,
    top_help,
    unknown_command_message,
    unknown_option_message,
)
from rlhf_core.cli.paths import absolute_paths
from rlhf_core.config import (
    ConfigError,
    apply_aliases,
    config_to_dict,
    dumps_toml,
    load_config,
    overrides_from_namespace,
)
from rlhf_core.data import DataError

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

#: names this package has always offered, imported from their module on first use (they pull
#: in torch and the trainers)
_LAZY = {
    "REWARD_SHORTCUTS": "run_fields",
    "BUILTIN_DATASETS": "run_fields",
    **{
        name: "run_configs"
        for name in (
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
        )
    },
    **{
        name: "loading"
        for name in (
            "resolve_reward_function",
            "load_tokenizer_for",
            "load_model",
            "load_sft_data",
            "builtin_preferences",
            "load_pairs",
            "load_prompt_rows",
        )
    },
    "plot_metrics": "outputs",
    **{
        name: "commands.train"
        for name in (
            "run_sft",
            "run_reward",
            "run_dpo",
            "run_ppo",
            "run_grpo",
            "run_rloo",
            "run_reinforce_pp",
            "run_best_of_n",
        )
    },
    "run_label": "commands.label",
    "run_eval": "commands.eval",
    "run_demo_command": "commands.demo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"rlhf_core.cli.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rlhf_core.cli' has no attribute {name!r}")


def _setup_logging() -> None:
    lib = logging.getLogger("rlhf_core")
    if not lib.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        lib.addHandler(handler)
        lib.setLevel(logging.INFO)
    try:
        from transformers.utils import logging as hf_logging  # heavy: only once a command runs

        hf_logging.disable_progress_bar()  # per-file weight loading bars
    except ImportError:  # pragma: no cover
        pass


def _error(name: str, exc: BaseException) -> None:
    print(f"rlhf-core {name}: error: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlhf-core`` (``python -m rlhf_core``). Returns the exit status: 0 on
    success, 1 when a run failed on its data, a reward function or its folder, 2 for a bad
    command line or config."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] in ("-h", "--help", "help"):
        print(top_help())
        return 0 if args_in else 2
    if args_in[0] in ("-V", "--version"):
        print(f"rlhf-core {__version__}")
        return 0
    name = args_in[0]
    if name not in COMMANDS:
        print(unknown_command_message(name), file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    parser = build_parser(name)
    ns, unknown = parser.parse_known_args(args_in[1:])
    if unknown:
        print(unknown_option_message(name, parser, unknown), file=sys.stderr)
        return 2
    overrides: dict[str, Any] = overrides_from_namespace(ns, cmd.config)
    aliases, hints = aliases_for(cmd.config), hints_for(cmd.config)
    try:
        overrides = apply_aliases(
            {**overrides, **alias_overrides(ns)}, aliases, where="command line", hints=hints
        )
        toml, overrides = apply_resume(overrides, ns.config)
        if name == "demo":
            from rlhf_core.demo import load_demo_config  # with the command: the demo needs torch

            cfg: Any = load_demo_config(toml, overrides, quick=ns.quick)
        else:
            cfg = load_config(cmd.config, toml, overrides, aliases=aliases, hints=hints)
    except (ConfigError, CLIError) as exc:
        _error(name, exc)
        return 2
    if ns.print_config:
        print(dumps_toml(config_to_dict(cfg)), end="")
        return 0
    if name != "demo":
        try:
            cfg = absolute_paths(cfg)  # the record names the files this run reads
        except ValueError as exc:
            _error(name, exc)
            return 2
    return _run(cmd, cfg)


def _claim(name: str, cfg: Any, run_dir: pathlib.Path) -> Any:
    """Claim the run folder before anything is loaded (fails fast on a folder in use, holding
    something else, or, for a resumed training run, holding other options): a training
    command checks it as its trainer will; ``label`` / ``eval`` keep their own record; the
    demo takes the lock of its folder and checks the rest itself. Returns the
    :class:`~rlhf_core.run_dir.RunFolder` (None for the demo)."""
    from rlhf_core.checkpoint import latest_checkpoint, resume_or_start
    from rlhf_core.run_dir import RunFolder, lock_run_dir

    if name == "demo":
        lock_run_dir(run_dir)
        return None
    if name in TRAINING_COMMANDS:
        from rlhf_core.cli.commands.train import trainer_kind

        if not cfg.resume and latest_checkpoint(run_dir):
            resume_or_start(run_dir, False, cfg.total_steps)  # raises, naming the folder
        return RunFolder.claim(run_dir, kind=trainer_kind(name), config=cfg, resume=cfg.resume)
    return RunFolder.claim(run_dir, kind=name, config=cfg, compare=False)


def _run(cmd: Command, cfg: Any) -> int:
    """Run ``cmd`` on its resolved config; map the errors to exit statuses.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) only the training commands run; rank 0 claims the
    run folder and writes its shared files (the trainer and :mod:`rlhf_core.cli.outputs` see
    to that), every rank trains."""
    from rlhf_core.checkpoint import CheckpointError  # torch
    from rlhf_core.demo.workers import DemoStageError
    from rlhf_core.monitor.tracking import TrackerNotInstalledError, require_backends
    from rlhf_core.rewards import RewardFunctionError, UnscorableStepError
    from rlhf_core.run_dir import RunDirError, check_run_dir_path, release_run_dir

    name = cmd.name
    _setup_logging()
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and name not in TRAINING_COMMANDS:
        _error(name, CLIError(f"{name} runs in one process; start it without torchrun"))
        return 2
    try:
        run_dir = check_run_dir_path(cfg.run_dir)
    except RunDirError as exc:
        _error(name, exc)
        return 2
    claimed = None
    try:
        require_backends(getattr(cfg, "report_to", ()))  # before any model is loaded
        if rank == 0:
            claimed = _claim(name, cfg, run_dir)
        status = cmd.run(cfg)
        if claimed is not None and name not in TRAINING_COMMANDS and status == 0:
            claimed.write_record(cfg)  # label / eval: what made the files beside it
        return status
    except (CLIError, ConfigError, TrackerNotInstalledError) as exc:
        _error(name, exc)
        return 2
    except (DataError, RewardFunctionError, CheckpointError, RunDirError, UnscorableStepError,
            FileExistsError, FileNotFoundError, DemoStageError) as exc:  # fmt: skip
        _error(name, exc)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nrlhf-core {name}: interrupted; run the same command again (or --resume "
            f"{run_dir}) to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        if rank == 0:
            release_run_dir(run_dir)
