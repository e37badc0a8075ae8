"""The README must stay true: its Python blocks run, its shell commands exist with the options
they use, its data examples load, and its links point at files that exist."""

from __future__ import annotations

import json
import pathlib
import re
import shlex

import pytest

from rlhf_core import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def shell_lines(text: str) -> list[str]:
    """Logical lines (backslash continuations joined, comments and blanks dropped)."""
    out: list[str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def test_two_commands_section_is_first_and_true() -> None:
    head, _, rest = README.partition("## Two commands")
    assert rest, "the README lost its 'Two commands' section"
    assert "##" not in head.replace("# rlhf_core", "", 1), (
        "'Two commands' must be the first section"
    )
    section = rest.split("\n## ", 1)[0]
    commands = [line for body in FENCE.findall(section) for line in shell_lines(body[1])]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo_rule = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert demo_rule and "rlhf-core demo" in demo_rule.group(1)
    assert re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(
    index: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = blocks("python")[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})


def test_there_are_python_blocks() -> None:
    text = "\n".join(blocks("python"))
    assert len(blocks("python")) >= 4
    for api in ("ops.gae", "RolloutBuffer", "GRPOTrainer", "combine_rewards"):
        assert api in text


def test_shell_commands_exist_with_their_options() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    seen: set[str] = set()
    for body in blocks("bash"):
        for line in shell_lines(body):
            argv = shlex.split(line)
            if argv[0] == "torchrun":  # torchrun [its options] -m rlhf_core <command> ...
                assert argv[argv.index("-m") + 1] == "rlhf_core", line
                argv = ["rlhf-core", *argv[argv.index("-m") + 2 :]]
                assert argv[1] in cli.COMMANDS, line
            if argv[0] == "make":
                assert re.search(rf"^{re.escape(argv[1])}:", makefile, re.M), line
            elif argv[0] == "rlhf-core":
                if argv[1:] == ["--help"]:
                    continue
                name = argv[1]
                assert name in cli.COMMANDS, line
                seen.add(name)
                if "--help" in argv:
                    continue
                ns = cli.build_parser(name).parse_args(argv[2:])  # unknown options exit
                if ns.config:
                    assert (ROOT / ns.config).is_file(), line
            elif argv[0] == "pip":
                pass
            elif argv[0] == "maturin":
                if "-E" in argv:
                    extra = argv[argv.index("-E") + 1]
                    assert f"\n{extra} = [" in (ROOT / "pyproject.toml").read_text(), line
            else:
                raise AssertionError(f"README runs an unexpected program: {line}")
    assert {"demo", "sft", "reward", "ppo", "eval", "label", "dpo", "grpo"} <= seen


def test_commands_named_in_prose_exist() -> None:
    for name in re.findall(r"`rlhf-core ([a-z-]+)", README):
        assert name in cli.COMMANDS, name
    listed = re.search(r"Commands: (.*?)\.\s", README, re.S)
    assert listed is not None
    names = re.findall(r"`([a-z-]+)`", listed.group(1))
    assert set(names) == set(cli.COMMANDS)


def test_data_examples_load(tmp_path: pathlib.Path) -> None:
    from rlhf_core.data import load_preferences, load_prompts
    from rlhf_core.models import load_tokenizer

    rows = [json.loads(line) for body in blocks("json") for line in body.splitlines() if line]
    assert rows
    tok = load_tokenizer()
    for row in rows:
        if "chosen" in row:
            assert len(load_preferences([row], tokenizer=tok)) == 1
        else:
            ds = load_prompts([row], tokenizer=tok)
            assert len(ds) == 1 and ds.columns["answer"] == [row["answer"]]


def test_links_point_at_files() -> None:
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local
    for t in local:
        assert (ROOT / t).exists(), f"README links to missing {t}"


#: tiny step counts and sizes for each command of the README's pipeline
_TINY = {
    "sft": ["--total_steps", "2", "--batch_size", "4"],
    "reward": ["--total_steps", "2", "--batch_size", "4", "--dataset_size", "60"],
    "ppo": ["--total_steps", "2", "--rollout_batch_size", "8", "--minibatch_size", "4"],
    "eval": ["--num_prompts", "4"],
    "label": ["--num_prompts", "16"],
    "dpo": ["--total_steps", "2", "--batch_size", "2"],
}


def test_readme_cli_pipeline_runs_end_to_end(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's pipeline on the built-in task, command by command as written (presets
    from configs/), with tiny step counts: what one command writes, the next reads."""
    pipeline = next(b for b in blocks("bash") if "rlhf-core sft --config configs/sft.toml" in b)
    monkeypatch.chdir(tmp_path)
    ran: list[str] = []
    for line in shell_lines(pipeline):
        argv = shlex.split(line)
        if argv[0] != "rlhf-core" or argv[1] not in _TINY or "--config" not in argv:
            continue
        i = argv.index("--config") + 1
        argv[i] = str(ROOT / argv[i])
        extra = list(_TINY[argv[1]])
        if argv[1] not in ("sft", "reward", "dpo"):
            extra += ["--max_new_tokens", "12"]
        if argv[1] not in ("eval", "label"):
            extra += ["--progress_bar", "false", "--tensorboard", "false"]
        rc = cli.main(argv[1:] + extra)
        err = capsys.readouterr().err
        assert rc == 0, f"{line}: {err}"
        ran.append(argv[1])
    assert ran[:3] == ["sft", "reward", "ppo"] and ran[-1] == "dpo" and "label" in ran
    pairs = (tmp_path / "runs" / "label" / "preferences.jsonl").read_text().splitlines()
    assert pairs and (tmp_path / "runs" / "dpo" / "model" / "config.json").is_file()
