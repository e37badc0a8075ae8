"""What the user typed: the command table, the argument parser of each command, the top-level
``--help``, suggestions for unknown commands and options, and ``--resume RUN_DIR``.

This module imports neither torch nor the trainers: a :class:`Command` names its config class
and runner as ``"module:attribute"`` and imports them on first use, so ``rlhf-core --help``
and a mistyped command answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pathlib
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_core.cli.aliases import TRL_HINTS, aliases_for
from rlhf_core.config.fields import BOOL_WORDS, strip_optional, type_hints
from rlhf_core.config.options import add_dataclass_arguments

__all__ = [
    "CLIError",
    "Command",
    "COMMANDS",
    "TRAINING_COMMANDS",
    "build_parser",
    "top_help",
    "unknown_command_message",
    "unknown_option_message",
    "apply_resume",
    "alias_overrides",
]


class CLIError(Exception):
    """A problem with what the user asked for (a bad path, a missing judge): printed as one
    line, exit status 2."""


def _resolve(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its config class and runner (``"module:attribute"``,
    imported when first asked for) and the longer description of its ``--help``."""

    name: str
    help: str
    config_ref: str
    run_ref: str
    description: str = ""

    @property
    def config(self) -> type:
        """The config dataclass of the command; its fields are the command's options."""
        cls = _resolve(self.config_ref)
        assert isinstance(cls, type)
        return cls

    @property
    def run(self) -> Callable[[Any], int]:
        """``run(cfg) -> exit status``."""
        fn = _resolve(self.run_ref)
        assert callable(fn)
        return fn  # type: ignore[no-any-return]


_CONFIGS = "rlhf_core.cli.run_configs"
_TRAIN = "rlhf_core.cli.commands.train"

_RL_DESCRIPTION = """\
Samples completions of the prompts in --dataset from --model, scores them with
--reward_model and/or --reward_funcs (weighted by --reward_weights, the reward model
first), and updates the policy; the final policy is saved to RUN_DIR/model.
Example (the built-in task, scored by its hidden gold reward):
  rlhf-core {name} --config configs/{preset}.toml --total_steps 20"""


def _rl(name: str, help_line: str, config: str, run: str) -> Command:
    preset = name.replace("-", "_")
    description = _RL_DESCRIPTION.format(name=name, preset=preset)
    return Command(name, help_line, f"{_CONFIGS}:{config}", f"{_TRAIN}:{run}", description)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "demo",
            "the built-in end-to-end demo: SFT -> gold-labelled pairs -> reward model -> "
            "best-of-N / PPO / GRPO / DPO -> report with plots; then GRPO on arithmetic",
            "rlhf_core.cli.commands.demo:DemoConfig",
            "rlhf_core.cli.commands.demo:run_demo_command",
            "Writes RUN_DIR/report.md, report.json and plots/*.png (proxy and gold reward\n"
            "against sqrt(KL) per method, reward-model accuracy, arithmetic accuracy).\n"
            "Nothing is downloaded. Running it again on the same --run_dir continues an\n"
            "interrupted demo, or prints the summary of a finished one.",
        ),
        Command(
            "sft",
            "supervised fine-tuning on prompt-completion data",
            f"{_CONFIGS}:SFTRunConfig",
            f"{_TRAIN}:run_sft",
            "Trains --model on --dataset (columns prompt, completion; conversational rows use\n"
            "the tokenizer's chat template); the final model goes to RUN_DIR/model.",
        ),
        Command(
            "reward",
            "train a reward model on preference pairs (Bradley-Terry)",
            f"{_CONFIGS}:RewardRunConfig",
            f"{_TRAIN}:run_reward",
            "A scalar head on the body of --model, trained on --dataset (columns prompt,\n"
            "chosen, rejected); held-out accuracy is logged as eval/accuracy. The reward model\n"
            "goes to RUN_DIR/reward_model (use it as --reward_model of ppo/grpo/label/eval).",
        ),
        _rl("ppo", "PPO with a value model, GAE and a KL penalty", "PPORunConfig", "run_ppo"),
        _rl(
            "grpo",
            "GRPO (Dr.GRPO, DAPO options): group-relative advantages, no value model",
            "GRPORunConfig",
            "run_grpo",
        ),
        _rl("rloo", "RLOO: leave-one-out baseline, KL in the reward", "RLOORunConfig", "run_rloo"),
        _rl(
            "reinforce-pp",
            "REINFORCE++: per-token returns, batch-whitened advantages",
            "ReinforcePPRunConfig",
            "run_reinforce_pp",
        ),
        _rl(
            "best-of-n",
            "rejection sampling: keep the best of N samples per prompt, SFT on them",
            "BestOfNRunConfig",
            "run_best_of_n",
        ),
        Command(
            "dpo",
            "DPO / IPO on preference pairs against a frozen reference",
            f"{_CONFIGS}:DPORunConfig",
            f"{_TRAIN}:run_dpo",
            "Trains --model on --dataset (columns prompt, chosen, rejected); the reference is\n"
            "a frozen copy of the starting model unless --reference is given. The final model\n"
            "goes to RUN_DIR/model.",
        ),
        Command(
            "label",
            "preference pairs from a policy's samples and a judge (reward model, reward "
            "function, or an LM asked which answer is better)",
            f"{_CONFIGS}:LabelConfig",
            "rlhf_core.cli.commands.label:run_label",
            "Samples two completions per prompt from --model and labels the pair with one\n"
            "judge: --reward_model / --reward_funcs (P(a>b) = sigmoid(beta (r_a - r_b))) or\n"
            "--judge_model (RLAIF: an LM asked 'A or B?' in both orders). Writes JSONL rows\n"
            "{prompt, chosen, rejected, p_chosen, ...} (TRL columns) to --output or\n"
            "RUN_DIR/preferences.jsonl, ready for 'rlhf-core reward' and 'rlhf-core dpo'.",
        ),
        Command(
            "eval",
            "score a policy's samples with reward models / functions; KL from a reference",
            f"{_CONFIGS}:EvalConfig",
            "rlhf_core.cli.commands.eval:run_eval",
            "Samples --num_samples completions per prompt, scores them with --reward_model\n"
            "and/or --reward_funcs, and with --reference measures KL(policy || reference) as\n"
            "the mean over samples of sum_t log pi - log pi_ref. Writes RUN_DIR/eval.json and\n"
            "RUN_DIR/samples.jsonl.",
        ),
    ]
}


#: the commands that train (and run under torchrun): their run folder holds a trainer's run
TRAINING_COMMANDS = ("sft", "reward", "dpo", "ppo", "grpo", "rloo", "reinforce-pp", "best-of-n")


# --------------------------------------------------------------------------------------------
# parsers and help

_EPILOG = """\
Values come from the field defaults, then --config FILE (TOML; YAML for .yaml/.yml, JSON
for .json), then the options above (--key value, --key=value; dotted names for nested
tables; --flag alone means true; lists as a,b or [a, b] or several words: --report_to
wandb trackio). --run-dir is --run_dir. TRL's
spellings of options are accepted in the file and here (listed above); an alias and its
option in one place is an error.

--resume RUN_DIR continues the run saved in RUN_DIR with its config.toml (options given
here still apply); --resume true/false only says whether to continue the run in --run_dir.
A finished run says so and trains nothing (raise --total_steps to train longer).

Outputs in the run folder: config.toml and run.json (resolved), metrics.jsonl, tensorboard/
(and the --report_to trackers: wandb/, trackio, MLflow), samples.jsonl (--log_completions),
checkpoints/, the final model (model/, reward_model/, or with LoRA adapter/ and, with
--merge_lora, model/; each with a README.md model card), plots/metrics.png.
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
        metavar="FILE",
        help="config file with values for the fields below: TOML, or YAML (.yaml/.yml) or "
        "JSON (.json), e.g. a TRL recipe (presets in configs/)",
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
    aliases = aliases_for(cmd.config)
    if aliases:
        group = parser.add_argument_group(
            "TRL's spellings (each sets the option after '=', in a config file too)"
        )
        hints = type_hints(cmd.config)
        for alias, name in sorted(aliases.items()):
            flag = strip_optional(hints.get(name))[0] is bool  # may be given bare
            kwargs: dict[str, Any] = {"nargs": "?", "const": "true"} if flag else {}
            group.add_argument(
                f"--{alias}",
                dest=f"alias.{alias}",
                default=argparse.SUPPRESS,
                metavar="BOOL" if flag else "VALUE",
                help=f"= --{name}",
                **kwargs,
            )
    return parser


def alias_overrides(namespace: argparse.Namespace) -> dict[str, Any]:
    """The TRL-spelled options the user typed, by their TRL name (see
    :func:`build_parser`)."""
    return {
        k.removeprefix("alias."): v for k, v in vars(namespace).items() if k.startswith("alias.")
    }


def top_help() -> str:
    """The text of ``rlhf-core --help``: every command with its help line."""
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: rlhf-core <command> [--config FILE.toml|.yaml] [--key value ...]",
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


def unknown_command_message(name: str) -> str:
    """The error for a command that does not exist, with the closest one suggested."""
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"rlhf-core: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})"


def unknown_option_message(
    name: str, parser: argparse.ArgumentParser, unknown: Sequence[str]
) -> str:
    """The error for the arguments ``parser`` did not recognise: the first option among them
    (else the first argument), with the closest option of the command suggested."""
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    bad = next((u for u in unknown if u.startswith("-")), unknown[0])
    key = bad.split("=", 1)[0].lstrip("-").replace("-", "_")
    if key in TRL_HINTS:
        return f"rlhf-core {name}: error: --{key} (TRL's) has no equivalent here: {TRL_HINTS[key]}"
    close = difflib.get_close_matches(bad.split("=", 1)[0], options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (
        f"rlhf-core {name}: error: unrecognized argument {bad!r}{hint} "
        f"(rlhf-core {name} --help lists the options)"
    )


# --------------------------------------------------------------------------------------------
# --resume RUN_DIR


def apply_resume(overrides: dict[str, Any], toml: str | None) -> tuple[str | None, dict[str, Any]]:
    """``--resume RUN_DIR``: continue the run saved in RUN_DIR with the options it recorded.
    Returns the config file to read and the overrides; a boolean ``--resume`` leaves both as
    they are.

    The options come from ``RUN_DIR/run.json`` (the lossless record: options set to none
    stay none, paths are the absolute ones the run started with), else, for a folder of an
    earlier version or of the demo, from ``RUN_DIR/config.toml``. Options typed with
    ``--resume`` apply on top (the trainer refuses those that may not change)."""
    import json

    value = overrides.get("resume")
    if value is None or str(value).strip().lower() in BOOL_WORDS:
        return toml, overrides
    folder = pathlib.Path(str(value))
    record, saved = folder / "run.json", folder / "config.toml"
    if not record.is_file() and not saved.is_file():
        raise CLIError(
            f"--resume {value}: expected true/false or a run folder holding run.json or "
            f"config.toml ({record} does not exist)"
        )
    if toml is not None:
        raise CLIError(
            f"--resume {value} reads {record if record.is_file() else saved}; do not also "
            "pass --config (use options to change single values)"
        )
    typed = {k: v for k, v in overrides.items() if k != "resume"}
    if not record.is_file():
        return str(saved), {"run_dir": str(folder), **typed, "resume": "true"}
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        options = dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"--resume {value}: {record} is not a run record ({exc})") from None
    return None, {**options, "run_dir": str(folder), **typed, "resume": "true"}
