"""Model cards: a README.md with a Hugging Face front-matter header (library_name, tags,
base_model, datasets), the method, final metrics, the resolved config and the version."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from rlhf_core import __version__
from rlhf_core.model_card import METHODS, write_model_card


def front_matter(text: str) -> dict[str, object]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def test_card_fields(tmp_path: pathlib.Path) -> None:
    config = 'run_dir = "runs/x"\nreport_to = ["wandb"]\nkl_coef = 0.05\n'
    path = write_model_card(
        tmp_path,
        base_model="org/base: a \"quoted\" name",
        method="grpo",
        config_toml=config,
        datasets=["data/prompts.jsonl", "builtin:arithmetic", "data/prompts.jsonl"],
        metrics={"reward/mean": 0.123456789, "eval/accuracy": 0.5, "time/training": 3.0},
        title="my run",
    )
    text = path.read_text()
    assert path == tmp_path / "README.md"
    meta = front_matter(text)
    assert meta == {
        "library_name": "transformers",
        "base_model": 'org/base: a "quoted" name',
        "tags": ["rlhf_core", "grpo", "rlhf"],
        "datasets": ["data/prompts.jsonl", "builtin:arithmetic"],
    }
    assert "# my run" in text and METHODS["grpo"] in text
    assert f"rlhf_core {__version__}" in text
    assert "| `reward/mean` | 0.123457 |" in text and "| `eval/accuracy` | 0.5 |" in text
    assert "time/training" not in text  # timings are not a model's metrics
    assert "```toml\n" + config + "```" in text


def test_adapter_folder_is_a_peft_card(tmp_path: pathlib.Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "README.md").write_text("the card save_pretrained wrote")
    write_model_card(tmp_path, base_model="builtin:tiny", method="dpo", tags=["lora"])
    text = (tmp_path / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "peft" and meta["tags"] == ["rlhf_core", "dpo", "rlhf", "lora"]
    assert "datasets" not in meta and "## Final metrics" not in text and "## Config" not in text


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_cli_trainer_has_a_method_line(method: str) -> None:
    from rlhf_core.cli import COMMANDS

    assert method in COMMANDS
