"""Tests of rlhf_core.config: TOML + overrides +
argparse over any help-annotated dataclass."""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from rlhf_core.config import (
    ConfigError,
    add_dataclass_arguments,
    config_from_dict,
    config_to_dict,
    dump_config,
    dumps_toml,
    field_docs,
    load_config,
    overrides_from_namespace,
    parse_overrides,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Optim:
    lr: float = field(default=1e-5, metadata={"help": "learning rate"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps"})

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}; use e.g. 1e-5")


@dataclass
class Cfg:
    name: str = field(default="run", metadata={"help": "run name (100% yours)"})
    steps: int = field(default=10, metadata={"help": "number of steps"})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient"})
    use_kl: bool = field(default=True, metadata={"help": "add KL to the loss"})
    loss: Literal["token-mean", "seq-mean-token-mean"] = field(
        default="token-mean", metadata={"help": "aggregation"}
    )
    seed: Optional[int] = field(default=None, metadata={"help": "seed"})  # noqa: UP045
    temp: float | None = field(default=1.0, metadata={"help": "temperature"})
    stop: list[str] = field(default_factory=list, metadata={"help": "stop strings"})
    sizes: tuple[int, ...] = field(default=(1, 2), metadata={"help": "sizes"})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "reward weights"})
    out: pathlib.Path = field(default=pathlib.Path("runs"), metadata={"help": "output dir"})
    optim: Optim = field(default_factory=Optim, metadata={"help": "optimizer"})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}; set steps to at least 1")


def test_defaults() -> None:
    assert load_config(Cfg) == Cfg()


def test_toml_and_overrides_precedence(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('name = "a"\nsteps = 5\n[optim]\nlr = 0.001\nbetas = [0.8, 0.9]\n')
    cfg = load_config(Cfg, p, ["--steps", "7", "optim.warmup_steps=3", "--use-kl", "false"])
    assert cfg.name == "a"
    assert cfg.steps == 7
    assert cfg.use_kl is False
    assert cfg.optim == Optim(lr=1e-3, betas=(0.8, 0.9), warmup_steps=3)


def test_dotted_keys_in_toml(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("optim.lr = 0.5\n")
    assert load_config(Cfg, p).optim.lr == 0.5


@pytest.mark.parametrize(
    ("override", "attr", "expected"),
    [
        ("steps=1_000", "steps", 1000),
        ("steps=1e3", "steps", 1000),
        ("beta=2", "beta", 2.0),
        ("use_kl=yes", "use_kl", True),
        ("use_kl=0", "use_kl", False),
        ("loss=seq-mean-token-mean", "loss", "seq-mean-token-mean"),
        ("seed=none", "seed", None),
        ("seed=3", "seed", 3),
        ("temp=null", "temp", None),
        ("stop=a,b", "stop", ["a", "b"]),
        ('stop=["x y", "z"]', "stop", ["x y", "z"]),
        ("sizes=[3, 4, 5]", "sizes", (3, 4, 5)),
        ("sizes=", "sizes", ()),
        ("weights={a = 1, b = 0.5}", "weights", {"a": 1.0, "b": 0.5}),
        ('weights={"a": 2}', "weights", {"a": 2.0}),
        ("out=/tmp/x", "out", pathlib.Path("/tmp/x")),
        ("optim.betas=(0.5, 0.6)", "optim", Optim(betas=(0.5, 0.6))),
    ],
)
def test_string_coercion(override: str, attr: str, expected: object) -> None:
    cfg = load_config(Cfg, overrides=[override])
    assert getattr(cfg, attr) == expected
    if isinstance(expected, float):
        assert isinstance(getattr(cfg, attr), float)


def test_bare_flag_means_true() -> None:
    cfg = load_config(Cfg, overrides=["--use_kl", "--steps", "3"])
    assert cfg.use_kl is True and cfg.steps == 3


def test_dict_overrides_typed_and_nested() -> None:
    cfg = load_config(Cfg, overrides={"optim.lr": 0.1, "steps": "4", "seed": None})
    assert cfg.optim.lr == 0.1 and cfg.steps == 4 and cfg.seed is None
    cfg2 = load_config(Cfg, overrides={"optim": {"lr": 0.2}})
    assert cfg2.optim.lr == 0.2 and cfg2.optim.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("stpes=3", ["'stpes'", "'steps'"]),
        ("optim.lrr=3", ["'optim.lrr'", "'optim.lr'"]),
        ("lr=3", ["'lr'", "'optim.lr'"]),
        ("steps=abc", ["'steps'", "integer", "'abc'"]),
        ("steps=1.5", ["'steps'", "integer"]),
        ("beta=fast", ["'beta'", "number"]),
        ("use_kl=maybe", ["'use_kl'", "boolean"]),
        ("loss=mean", ["'loss'", "'token-mean'"]),
        ("optim.betas=[1, 2, 3]", ["'optim.betas'", "2 items"]),
        ("sizes=[1, x]", ["'sizes[1]'", "integer"]),
        ("steps=0", ["steps must be >= 1"]),
        ("optim.lr=-1", ["lr must be > 0", "'optim'"]),
    ],
)
def test_errors_name_key(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, overrides=[override])
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert isinstance(info.value, ValueError)


def test_toml_type_error_names_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('steps = "many"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*'steps'.*integer"):
        load_config(Cfg, p)
    p.write_text("[optim]\nlrate = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*'optim\.lrate'.*'optim\.lr'"):
        load_config(Cfg, p)
    p.write_text("steps = true\n")
    with pytest.raises(ConfigError, match="integer"):
        load_config(Cfg, p)
    p.write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.toml")


def test_section(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[ppo]\nsteps = 9\n[grpo]\nsteps = 2\n")
    assert load_config(Cfg, p, section="grpo").steps == 2
    with pytest.raises(ConfigError, match=r"\[dpo\]"):
        load_config(Cfg, p, section="dpo")


def test_required_field_missing() -> None:
    @dataclass
    class Req:
        path: str = field(metadata={"help": "where"})
        n: int = field(default=1, metadata={"help": "n"})

    with pytest.raises(ConfigError, match="missing required.*'path'"):
        load_config(Req)
    assert load_config(Req, overrides=["path=x"]).path == "x"


def test_parse_overrides_forms() -> None:
    assert parse_overrides(["--a.b", "1", "--c=2", "d=3", "--flag", "--e", "x=y"]) == {
        "a.b": "1",
        "c": "2",
        "d": "3",
        "flag": "true",
        "e": "x=y",
    }
    with pytest.raises(ConfigError, match="'oops'"):
        parse_overrides(["oops"])
    with pytest.raises(TypeError):
        load_config(Cfg, overrides="steps=3")  # type: ignore[arg-type]


def test_dump_roundtrip(tmp_path: pathlib.Path) -> None:
    cfg = load_config(
        Cfg,
        overrides={
            "name": 'quote " back \\ slash\nnewline',
            "stop": ["a", "b c"],
            "weights": {"gold.reward": 1.5, "len": -0.25},
            "beta": 1e-7,
            "seed": 4,
            "optim.betas": (0.5, 0.25),
        },
    )
    path = dump_config(cfg, tmp_path / "sub" / "config.toml", header="resolved config")
    text = path.read_text()
    assert text.startswith("# resolved config\n")
    tomllib.loads(text)  # valid TOML
    assert load_config(Cfg, path) == cfg
    # None fields are written with the marker "none" and read back as None, also where the
    # default is not None (a comment would silently bring the default back)
    cfg2 = Cfg(seed=None)
    p2 = dump_config(cfg2, tmp_path / "c2.toml")
    assert 'seed = "none"' in p2.read_text()
    assert load_config(Cfg, p2) == cfg2
    cfg3 = Cfg(temp=None)  # the default is 1.0
    assert load_config(Cfg, dump_config(cfg3, tmp_path / "c3.toml")).temp is None


def test_dumps_toml_special_floats_and_nesting() -> None:
    text = dumps_toml({"a": math.inf, "b": -math.inf, "c": math.nan, "t": {"u": {"v": 1}}})
    data = tomllib.loads(text)
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])
    assert data["t"]["u"]["v"] == 1
    with pytest.raises(ConfigError, match="'x'"):
        dumps_toml({"x": [1, None]})
    with pytest.raises(ConfigError, match="object"):
        dumps_toml({"x": object()})


def test_config_to_from_dict() -> None:
    cfg = Cfg(steps=3, optim=Optim(lr=0.3))
    d = config_to_dict(cfg)
    assert d["optim"]["lr"] == 0.3 and d["out"] == "runs" and d["sizes"] == [1, 2]
    assert config_from_dict(Cfg, d) == cfg
    with pytest.raises(TypeError):
        config_to_dict(Cfg)


def test_argparse_options_and_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--config")
    add_dataclass_arguments(parser, Cfg)
    help_text = parser.format_help()
    for name, _tp, _default, doc in field_docs(Cfg):
        assert f"--{name}" in help_text
        assert doc.split()[0] in help_text
    assert "default: 10" in help_text  # steps
    assert "100% yours" in help_text  # % escaped correctly
    assert "--optim.lr" in help_text and "default: 1e-05" in help_text
    assert "{token-mean,seq-mean-token-mean}" in help_text

    ns = parser.parse_args(["--steps", "4", "--optim.lr", "0.01", "--use-kl", "--config", "f"])
    over = overrides_from_namespace(ns, Cfg)
    assert over == {"steps": "4", "optim.lr": "0.01", "use_kl": "true"}
    cfg = load_config(Cfg, overrides=over)
    assert cfg.steps == 4 and cfg.optim.lr == 0.01 and cfg.use_kl is True
    # nothing given: empty overrides (defaults stay defaults, TOML values are not clobbered)
    assert overrides_from_namespace(parser.parse_args([]), Cfg) == {}


def test_field_docs_lists_nested() -> None:
    names = [d[0] for d in field_docs(Cfg)]
    assert "optim.lr" in names and "optim" not in names and "steps" in names
    with pytest.raises(TypeError):
        field_docs(int)


# --------------------------------------------------------------------------------------------
# YAML / JSON files and aliases


def test_yaml_and_json_files(tmp_path: pathlib.Path) -> None:
    from rlhf_core.config import read_config_file

    y = tmp_path / "c.yaml"
    y.write_text(
        "name: y\nsteps: 7\nseed: null\ntemp: null\nstop: [a, b]\nweights: {x: 0.5}\n"
        "optim:\n  lr: 3.0e-4\n  betas: [0.8, 0.9]\n"
    )
    cfg = load_config(Cfg, y)
    assert (cfg.name, cfg.steps, cfg.seed, cfg.temp, cfg.stop) == ("y", 7, None, None, ["a", "b"])
    assert cfg.weights == {"x": 0.5} and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    (tmp_path / "c.yml").write_text("steps: 2\n")
    assert load_config(Cfg, tmp_path / "c.yml", ["--steps", "3"]).steps == 3  # overrides win
    (tmp_path / "c.json").write_text('{"steps": 4, "optim.lr": 0.1}')
    cfg = load_config(Cfg, tmp_path / "c.json")
    assert cfg.steps == 4 and cfg.optim.lr == 0.1
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert read_config_file(tmp_path / "empty.yaml") == {}
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        load_config(Cfg, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of option names"):
        load_config(Cfg, tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'stepz'.*'steps'"):
        load_config(Cfg, tmp_path / "typo.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(Cfg, tmp_path / "bad.json")


def test_aliases_map_onto_fields_and_refuse_doubles(tmp_path: pathlib.Path) -> None:
    from rlhf_core.config import apply_aliases

    aliases = {"max_steps": "steps", "run_name": "name"}
    hints = {"epochs": "set steps instead"}
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 5\nrun_name: r\n")
    cfg = load_config(Cfg, y, ["--max-steps", "6"], aliases=aliases)
    assert (cfg.steps, cfg.name) == (6, "r")  # the alias on the command line wins too
    y.write_text("max_steps: 5\nsteps: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: 'max_steps' and 'steps' are the same option"):
        load_config(Cfg, y, aliases=aliases)
    with pytest.raises(ConfigError, match="overrides: 'steps' and 'max_steps'"):
        load_config(Cfg, None, {"steps": 1, "max_steps": 2}, aliases=aliases)
    # an alias in the file and its field in the overrides: two layers, the overrides win
    y.write_text("max_steps: 5\n")
    assert load_config(Cfg, y, {"steps": 9}, aliases=aliases).steps == 9
    with pytest.raises(ConfigError, match="'epochs' has no equivalent here: set steps instead"):
        apply_aliases({"epochs": 3}, aliases, hints=hints)
    assert apply_aliases({"max-steps": 1, "beta": 2}, aliases) == {"steps": 1, "beta": 2}


def test_trl_aliases_follow_each_command() -> None:
    from rlhf_core import cli
    from rlhf_core.cli.aliases import TRL_ALIASES, aliases_for

    grpo = aliases_for(cli.GRPORunConfig)
    assert grpo["beta"] == "kl_coef" and grpo["num_generations"] == "num_samples"
    assert grpo["output_dir"] == "run_dir" and grpo["model_name_or_path"] == "model"
    dpo = aliases_for(cli.DPORunConfig)
    assert "beta" not in dpo and "num_generations" not in dpo  # DPO's beta is its own
    assert "beta" not in aliases_for(cli.LabelConfig)
    fields = {name for c in cli.COMMANDS.values() for name, *_ in field_docs(c.config)}
    assert set(TRL_ALIASES.values()) <= fields  # every alias names a real field somewhere
    assert not set(TRL_ALIASES) & set(TRL_ALIASES.values())
