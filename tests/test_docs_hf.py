"""The Hugging Face / TRL parts of the docs stay true: the Python blocks of docs/data.md and
docs/config.md run, the commands in docs/cli.md exist with the options they use, the TRL
alias table of docs/config.md is the one the command line applies, and its YAML recipe loads."""

from __future__ import annotations

import pathlib
import re
import shlex
import sys
import types

import pytest

from rlhf_core import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(doc: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    return [body for kind, body in FENCE.findall(text) if kind == lang]


@pytest.mark.parametrize("doc", ["data.md", "config.md"])
def test_python_blocks_run(
    doc: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    found = blocks(doc, "python")
    assert found
    for i, code in enumerate(found):
        module = types.ModuleType(f"docs_block_{i}")  # dataclasses look their module up
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(code, f"docs/{doc} python block {i + 1}", "exec"), module.__dict__)


def test_cli_doc_commands_exist_with_their_options() -> None:
    seen = 0
    for doc in ("cli.md", "config.md"):
        for body in blocks(doc, "bash"):
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line.startswith("rlhf-core "):
                    continue
                argv = shlex.split(line)
                ns = cli.build_parser(argv[1]).parse_args(argv[2:])  # unknown options exit
                if ns.config:
                    assert (ROOT / ns.config).is_file(), line
                seen += 1
    assert seen >= 4


def test_alias_table_in_config_md_is_the_applied_one() -> None:
    from rlhf_core.cli.aliases import TRL_ALIASES, TRL_HINTS

    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    section = text.split("## TRL's spellings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| `([a-z_]+)`(?: \([A-Z]+\))?(?: / `([a-z_]+)`)? \| `([a-z_]+)`(?: / `([a-z_]+)`)? \|",
        section,
        re.M,
    )
    table: dict[str, str] = {}
    for a1, a2, f1, f2 in rows:
        table[a1] = f1
        if a2:
            table[a2] = f2
    assert table == TRL_ALIASES
    for key in TRL_HINTS:
        assert f"`{key}`" in section, key


def test_config_md_yaml_recipe_loads(tmp_path: pathlib.Path) -> None:
    from rlhf_core.cli.aliases import aliases_for, hints_for
    from rlhf_core.config import load_config

    (yaml_block,) = blocks("config.md", "yaml")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml_block)
    cls = cli.GRPORunConfig
    cfg = load_config(cls, path, aliases=aliases_for(cls), hints=hints_for(cls))
    assert cfg.model == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.num_samples == 8
    assert cfg.total_steps == 500 and cfg.kl_coef == 0.0 and cfg.clip_high == 0.28
