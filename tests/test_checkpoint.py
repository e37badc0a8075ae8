"""Tests of rlhf_core.checkpoint: atomic save/load, RNG capture, keep-last, resume decisions."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_core import models
from rlhf_core.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    StateFileError,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_state,
    resume_or_start,
    save_checkpoint,
    save_state,
)


class Tied(nn.Module):
    """Embedding and output head share one weight (like tied LM embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(ids))))


def make(seed: int) -> tuple[Tied, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train_step(model: Tied, opt: torch.optim.Optimizer, sched: object) -> list[float]:
    """One step whose data comes from all three global RNGs; returns the draws."""
    draws = [random.random(), float(np.random.rand())]
    ids = torch.randint(0, 11, (4, 5))
    noise = torch.randn(4, 5, 11) * 0.01
    loss = ((model(ids) + noise) ** 2).mean() * (1 + draws[0] + draws[1])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()  # type: ignore[attr-defined]
    model.count += 1
    return [*draws, float(ids.sum()), float(noise.sum())]


def seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_resume_continues_exactly(tmp_path: pathlib.Path) -> None:
    seed_all(0)
    model, opt, sched = make(0)
    for _ in range(3):
        train_step(model, opt, sched)
    save_checkpoint(
        tmp_path,
        3,
        models={"policy": model},
        optimizers={"policy": opt},
        schedulers={"policy": sched},
        extra_state={"sampler_pos": 12, "buffer": {"x": np.arange(3)}, "kl_coef": 0.1},
    )
    straight = [train_step(model, opt, sched) for _ in range(3)]
    straight_params = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process: different init, different RNG state
    seed_all(123)
    model2, opt2, sched2 = make(99)
    step, extra = load_checkpoint(
        tmp_path,
        models={"policy": model2},
        optimizers={"policy": opt2},
        schedulers={"policy": sched2},
    )
    assert step == 3
    assert extra["sampler_pos"] == 12 and extra["kl_coef"] == 0.1
    np.testing.assert_array_equal(extra["buffer"]["x"], np.arange(3))
    resumed = [train_step(model2, opt2, sched2) for _ in range(3)]
    assert resumed == straight
    for k, v in model2.state_dict().items():
        assert torch.equal(v, straight_params[k]), k
    assert model2.head.weight is model2.emb.weight  # tying survives loading
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_layout_latest_and_files(tmp_path: pathlib.Path) -> None:
    model, opt, sched = make(0)
    train_step(model, opt, sched)  # the optimizer has state tensors
    path = save_checkpoint(tmp_path, 123, models={"policy": model}, optimizers={"adam": opt})
    assert path == tmp_path / "checkpoints" / "step_000123" == checkpoint_dir(tmp_path, 123)
    assert (path / "models" / "policy.safetensors").is_file()
    assert (path / "optimizers" / "adam.json").is_file()
    assert (path / "optimizers" / "adam.safetensors").is_file()
    assert (path / "rng.json").is_file() and (path / "rng.safetensors").is_file()
    assert (path / "extra_state.json").is_file()
    assert not list(path.rglob("*.pt"))  # nothing pickled
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 123 and meta["models"] == {"policy": "policy.safetensors"}
    assert meta["format_version"] == 2
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [f for f in on_disk if f != "meta.json"]
    for rel, rec in meta["files"].items():
        assert rec["bytes"] == (path / rel).stat().st_size
        assert rec["sha256"] == hashlib.sha256((path / rel).read_bytes()).hexdigest()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000123"
    assert latest_checkpoint(tmp_path) == path
    # no temporary folders left behind
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] in (
        ["step_000123", "latest"],
        ["latest", "step_000123"],
    )


def test_keep_last_and_fallback_when_marker_is_stale(tmp_path: pathlib.Path) -> None:
    model, _, _ = make(0)
    for s in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, s, models={"m": model}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    (tmp_path / "checkpoints" / "latest").write_text("step_000099\n")
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)
    # an incomplete folder (crash before meta.json) is ignored
    (tmp_path / "checkpoints" / "step_000009").mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)
    for s in (6, 7):
        save_checkpoint(tmp_path, s, models={"m": model}, keep_last=None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 6, 7]


def test_resave_same_step_replaces(tmp_path: pathlib.Path) -> None:
    save_checkpoint(tmp_path, 1, extra_state={"v": 1})
    save_checkpoint(tmp_path, 1, extra_state={"v": 2})
    assert load_checkpoint(tmp_path, restore_rng=False)[1] == {"v": 2}
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2


def test_failed_save_leaves_previous_checkpoint(tmp_path: pathlib.Path) -> None:
    class Boom:
        def state_dict(self) -> dict[str, int]:
            raise RuntimeError("disk full")

    save_checkpoint(tmp_path, 1, extra_state={"v": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, optimizers={"o": Boom()})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 1)


def test_torch_save_fallback_and_forced(tmp_path: pathlib.Path) -> None:
    class WithExtra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.tag = "a"

        def get_extra_state(self) -> dict[str, str]:
            return {"tag": self.tag}

        def set_extra_state(self, state: dict[str, str]) -> None:
            self.tag = state["tag"]

    m = WithExtra()
    m.tag = "saved"
    path = save_checkpoint(tmp_path, 0, models={"m": m})
    assert (path / "models" / "m.pt").is_file()  # safetensors cannot hold the extra state
    m2 = WithExtra()
    load_checkpoint(tmp_path, models={"m": m2}, restore_rng=False)
    assert m2.tag == "saved" and torch.equal(m2.lin.weight, m.lin.weight)

    model, _, _ = make(1)
    p2 = save_checkpoint(tmp_path / "b", 0, models={"m": model}, safetensors=False)
    assert (p2 / "models" / "m.pt").is_file()
    model2, _, _ = make(2)
    load_checkpoint(p2, models={"m": model2}, restore_rng=False)
    assert torch.equal(model2.mid.weight, model.mid.weight)


def test_load_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path)
    model, opt, _ = make(0)
    save_checkpoint(tmp_path, 1, models={"policy": model})
    with pytest.raises(CheckpointError, match=r"no model named 'value'.*\['policy'\]"):
        load_checkpoint(tmp_path, models={"value": model})
    with pytest.raises(CheckpointError, match="no optimizer named 'adam'"):
        load_checkpoint(tmp_path, optimizers={"adam": opt})
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_checkpoint(tmp_path / "checkpoints" / "step_000777")
    with pytest.raises(ValueError, match="step must be"):
        save_checkpoint(tmp_path, -1)
    with pytest.raises(ValueError, match="model name"):
        save_checkpoint(tmp_path, 2, models={"a/b": model})
    meta = tmp_path / "checkpoints" / "step_000001" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path)


def test_restore_rng_false_leaves_rng_alone(tmp_path: pathlib.Path) -> None:
    seed_all(5)
    save_checkpoint(tmp_path, 0)
    seed_all(6)
    expected = torch.rand(3)
    seed_all(6)
    load_checkpoint(tmp_path, restore_rng=False)
    assert torch.equal(torch.rand(3), expected)
    load_checkpoint(tmp_path)
    seed_all(5)
    a = torch.rand(3)
    load_checkpoint(tmp_path)
    assert torch.equal(torch.rand(3), a)


def test_builtin_policy_roundtrip(tmp_path: pathlib.Path) -> None:
    tok = models.load_tokenizer()
    a = models.build_builtin_policy(tok, seed=0, size="tiny")
    b = models.build_builtin_policy(tok, seed=1, size="tiny")
    save_checkpoint(tmp_path, 1, models={"policy": a})
    load_checkpoint(tmp_path, models={"policy": b}, restore_rng=False)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_or_start(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    info = resume_or_start(tmp_path / "new", resume=False, total_steps=10)
    assert info.checkpoint is None and info.step == 0 and not info.finished
    with pytest.raises(CheckpointError, match="no checkpoint to load"):
        info.load()
    with caplog.at_level(logging.WARNING, logger="rlhf_core.checkpoint"):
        info = resume_or_start(tmp_path / "empty", resume=True, total_steps=10)
    assert info.step == 0 and "holds no checkpoint" in info.message
    assert any("holds no checkpoint" in r.getMessage() for r in caplog.records)

    save_checkpoint(tmp_path / "run", 4, extra_state={"k": 1})
    with pytest.raises(CheckpointError, match="pass --resume"):
        resume_or_start(tmp_path / "run", resume=False, total_steps=10)
    info = resume_or_start(tmp_path / "run", resume=True, total_steps=10)
    assert info.step == 4 and not info.finished and "resuming" in info.message
    assert info.load(restore_rng=False) == (4, {"k": 1})

    save_checkpoint(tmp_path / "run", 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlhf_core.checkpoint"):
        info = resume_or_start(tmp_path / "run", resume=True, total_steps=10)
    assert info.finished and info.step == 10
    assert "already finished" in info.message and "step 10 of 10" in info.message
    assert any("already finished" in r.getMessage() for r in caplog.records)
    assert os.path.samefile(info.checkpoint, checkpoint_dir(tmp_path / "run", 10))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# damaged checkpoints (issue 18, finding 9) and pickles (finding 10)


def _two_checkpoints(run: pathlib.Path) -> pathlib.Path:
    """Checkpoints at steps 1 and 2 of a trained model; returns step 2's folder."""
    seed_all(0)
    model, opt, sched = make(0)
    for step in (1, 2):
        train_step(model, opt, sched)
        path = save_checkpoint(run, step, models={"policy": model}, optimizers={"policy": opt},
                               schedulers={"policy": sched},
                               extra_state={"buffer": {"x": np.arange(5)}, "kl": 0.1})  # fmt: skip
    return path


def _truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 9] ^= 0x01  # a byte of the last tensor's data
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": ("models/policy.safetensors", _truncate),
    "flipped weights": ("models/policy.safetensors", _flip),
    "truncated optimizer": ("optimizers/policy.safetensors", _truncate),
    "truncated optimizer json": ("optimizers/policy.json", _truncate),
    "truncated rng": ("rng.safetensors", _truncate),
    "truncated extra state": ("extra_state.json", _truncate),
    "missing extra tensors": ("extra_state.safetensors", lambda p: p.unlink()),
    "bad meta.json": ("meta.json", lambda p: p.write_text('{"format_version": 2, "step"')),
    "changed meta.json": (
        "meta.json",
        lambda p: p.write_text(p.read_text().replace('"step": 2', '"step": 3')),
    ),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_offered(
    tmp_path: pathlib.Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    latest = _two_checkpoints(tmp_path)
    rel, damage = DAMAGE[what]
    damage(latest / rel)
    with pytest.raises(DamagedCheckpointError) as info:
        resume_or_start(tmp_path, resume=True, total_steps=10)
    msg = str(info.value)
    assert f"checkpoint {latest} is damaged: {rel}:" in msg
    assert "The previous checkpoint step_000001 is intact" in msg and "resume_last_good" in msg
    assert info.value.file == rel
    with pytest.raises(DamagedCheckpointError, match=rel.replace(".", r"\.")):
        load_checkpoint(tmp_path)  # loading it directly also checks every file
    # opting in takes the previous complete checkpoint, says so, and sets the damaged aside
    with caplog.at_level(logging.WARNING, logger="rlhf_core.checkpoint"):
        chosen = resume_or_start(tmp_path, resume=True, total_steps=10, last_good=True)
    assert chosen.step == 1 and chosen.checkpoint == checkpoint_dir(tmp_path, 1)
    assert "resuming from the intact checkpoint step_000001" in caplog.text
    model, opt, sched = make(5)
    assert chosen.load(models={"policy": model}, optimizers={"policy": opt},
                       schedulers={"policy": sched})[0] == 1  # fmt: skip
    assert chosen.set_aside_damaged() == [tmp_path / "checkpoints" / "damaged_step_000002"]
    assert resume_or_start(tmp_path, resume=True, total_steps=10).step == 1


def test_no_intact_checkpoint_left(tmp_path: pathlib.Path) -> None:
    latest = _two_checkpoints(tmp_path)
    _truncate(latest / "models" / "policy.safetensors")
    _truncate(checkpoint_dir(tmp_path, 1) / "rng.json")
    with pytest.raises(DamagedCheckpointError, match="No earlier intact checkpoint remains"):
        resume_or_start(tmp_path, resume=True, total_steps=10, last_good=True)


def test_model_file_names_are_checked_on_load(tmp_path: pathlib.Path) -> None:
    """A meta.json naming ``../step_000001/...`` (checksum recomputed, as an attacker would) is
    refused, not followed."""
    from rlhf_core.checkpoint.store import _meta_digest

    latest = _two_checkpoints(tmp_path)
    meta = json.loads((latest / "meta.json").read_text())
    meta["models"]["policy"] = "../../step_000001/models/policy.safetensors"
    meta["meta_sha256"] = _meta_digest(meta)
    (latest / "meta.json").write_text(json.dumps(meta))
    model, _, _ = make(3)
    with pytest.raises(DamagedCheckpointError, match=r"model 'policy' names the file '\.\./"):
        load_checkpoint(latest, models={"policy": model})
    meta["models"] = {"policy": "policy.safetensors"}
    meta["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
    meta["meta_sha256"] = _meta_digest(meta)
    (latest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedCheckpointError, match="a file outside the checkpoint"):
        load_checkpoint(latest, models={"policy": model})


class _RunsCode:
    """Unpickling this runs ``open(marker, "w")``: what a crafted checkpoint file would do."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _legacy_checkpoint(run: pathlib.Path, rng: object) -> pathlib.Path:
    """A checkpoint as format 1 wrote it: pickled optimizer, RNG and extra state."""
    model, opt, sched = make(0)
    train_step(model, opt, sched)
    path = checkpoint_dir(run, 3)
    (path / "models").mkdir(parents=True)
    (path / "optimizers").mkdir()
    from safetensors.torch import save_model

    save_model(model, str(path / "models" / "policy.safetensors"))
    torch.save(opt.state_dict(), path / "optimizers" / "policy.pt")
    torch.save(rng, path / "rng.pt")
    torch.save({"kl": 0.5, "buffer": {"x": np.arange(3)}}, path / "extra_state.pt")
    meta = {"format_version": 1, "step": 3, "time": "", "models": {"policy": "policy.safetensors"},
            "optimizers": ["policy"], "schedulers": []}  # fmt: skip
    (path / "meta.json").write_text(json.dumps(meta))
    (run / "checkpoints" / "latest").write_text("step_000003\n")
    return path


def test_a_crafted_rng_file_does_not_run_code(tmp_path: pathlib.Path) -> None:
    """Finding 10: a crafted ``rng.pt`` ran a command on --resume."""
    marker = tmp_path / "ran"
    _legacy_checkpoint(tmp_path / "run", _RunsCode(marker))
    model, opt, _ = make(1)
    with pytest.raises(CheckpointError, match="format 1") as info:
        load_checkpoint(tmp_path / "run", models={"policy": model}, optimizers={"policy": opt})
    assert "python -m rlhf_core.checkpoint upgrade" in str(info.value)
    with pytest.raises(CheckpointError, match="format 1"):
        resume_or_start(tmp_path / "run", resume=True, total_steps=10)
    assert not marker.exists()


def test_a_crafted_model_file_does_not_run_code(tmp_path: pathlib.Path) -> None:
    """A format-2 checkpoint whose ``models/policy.pt`` is a crafted pickle (meta.json made to
    match, as an attacker would): refused by ``weights_only=True``, nothing runs."""
    marker = tmp_path / "ran"
    model, _, _ = make(0)
    path = save_checkpoint(tmp_path, 1, models={"policy": model}, safetensors=False)
    torch.save({"weight": _RunsCode(marker)}, path / "models" / "policy.pt")
    from rlhf_core.checkpoint.store import write_meta

    meta = json.loads((path / "meta.json").read_text())
    del meta["files"], meta["meta_sha256"]
    write_meta(path, meta)
    with pytest.raises(CheckpointError, match="models/policy.pt"):
        load_checkpoint(tmp_path, models={"policy": make(1)[0]})
    assert not marker.exists()


def test_a_trusted_legacy_checkpoint_is_upgraded(tmp_path: pathlib.Path) -> None:
    seed_all(7)
    rng_state = {"python": random.getstate(), "numpy": np.random.get_state(),
                 "torch_cpu": torch.get_rng_state()}  # fmt: skip
    expected = torch.rand(3)
    path = _legacy_checkpoint(tmp_path, rng_state)
    res = subprocess.run([sys.executable, "-m", "rlhf_core.checkpoint", "upgrade", str(path)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "upgraded" in res.stdout and not list(path.rglob("*.pt"))
    model, opt, _ = make(1)
    seed_all(99)
    step, extra = load_checkpoint(tmp_path, models={"policy": model}, optimizers={"policy": opt})
    assert step == 3 and extra["kl"] == 0.5
    np.testing.assert_array_equal(extra["buffer"]["x"], np.arange(3))
    assert torch.equal(torch.rand(3), expected)  # the RNG state came through
    res = subprocess.run([sys.executable, "-m", "rlhf_core.checkpoint", "verify", str(path)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0 and "intact (step 3" in res.stdout


def test_state_files_round_trip_and_refuse_objects(tmp_path: pathlib.Path) -> None:
    state = {
        "ints": {0: 1, 5: 2}, "tuple": (1, 2.5, None), "nan": float("nan"), "inf": -math.inf,
        "arr": np.arange(6, dtype=np.uint32).reshape(2, 3), "t": torch.ones(2, dtype=torch.bfloat16),
        "scalar": np.float32(1.5), "bytes": b"\x00\xff", "__dunder": "kept",
        "shared": [torch.arange(4)] * 2, "view": torch.arange(10)[2:5],
    }  # fmt: skip
    save_state(tmp_path, "s", state)
    back = load_state(tmp_path, "s")
    assert back["ints"] == {0: 1, 5: 2} and back["tuple"] == (1, 2.5, None)
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["t"].dtype == torch.bfloat16 and back["scalar"] == np.float32(1.5)
    assert isinstance(back["scalar"], np.float32) and back["bytes"] == b"\x00\xff"
    assert back["__dunder"] == "kept" and torch.equal(back["view"], torch.arange(2, 5))
    assert all(torch.equal(t, torch.arange(4)) for t in back["shared"])
    with pytest.raises(StateFileError, match=r"extra/obj: cannot store a object"):
        save_state(tmp_path, "bad", {"obj": object()}, what="extra")
