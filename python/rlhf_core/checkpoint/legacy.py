"""Checkpoints of format 1 (before this version): optimizer, scheduler, RNG and extra-state
files were pickles (``*.pt`` read with ``torch.load(weights_only=False)``), and reading a
pickle can run any code it names. They are not loaded; :func:`upgrade_legacy_checkpoint`
rewrites one, once, in format 2, for a checkpoint you trust::

    python -m rlhf_core.checkpoint upgrade runs/grpo/checkpoints/step_000100
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from typing import Any

import torch

__all__ = ["legacy_format_error", "upgrade_legacy_checkpoint"]


def legacy_format_error(ckpt: pathlib.Path) -> Any:
    """The :class:`~rlhf_core.checkpoint.CheckpointError` for a format-1 checkpoint."""
    from rlhf_core.checkpoint.store import CheckpointError

    return CheckpointError(
        f"{ckpt} is a checkpoint of format 1 (written by an earlier rlhf_core: its optimizer, "
        "RNG and extra-state files are pickles, and loading a pickle can run code). It is not "
        "loaded. If you trust where it came from, convert it once to format 2 with "
        f"'python -m rlhf_core.checkpoint upgrade {ckpt}' and resume again"
    )


def upgrade_legacy_checkpoint(path: str | os.PathLike[str]) -> pathlib.Path:
    """Rewrite the format-1 checkpoint folder ``path`` in format 2 (same step, models, states,
    RNG), replacing it atomically; returns the folder. This unpickles its files: call it only
    on a checkpoint you trust."""
    from rlhf_core.checkpoint.state_files import save_state
    from rlhf_core.checkpoint.store import (
        FORMAT_VERSION,
        CheckpointError,
        _check_name,
        write_meta,
    )

    ckpt = pathlib.Path(path)
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt / 'meta.json'}: cannot be read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != 1:
        raise CheckpointError(f"{ckpt} is not a format-1 checkpoint")
    tmp = ckpt.with_name(f".upgrade_{ckpt.name}_{os.getpid()}_{time.monotonic_ns()}")
    tmp.mkdir()
    try:
        new: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "step": int(meta["step"]),
            "time": meta.get("time", ""),
            "models": {},
            "optimizers": [],
            "schedulers": [],
        }
        models = meta.get("models") or {}
        if models:
            (tmp / "models").mkdir()
        for name, fname in models.items():
            _check_name("model", name)
            if fname not in (f"{name}.safetensors", f"{name}.pt"):
                raise CheckpointError(f"{ckpt}: model {name!r} names the file {fname!r}")
            shutil.copy2(ckpt / "models" / fname, tmp / "models" / fname)
            new["models"][name] = fname
        for kind in ("optimizers", "schedulers"):
            names = meta.get(kind) or []
            if names:
                (tmp / kind).mkdir()
            for name in names:
                _check_name(kind[:-1], name)
                state = torch.load(ckpt / kind / f"{name}.pt", map_location="cpu",
                                   weights_only=False)  # fmt: skip  # trusted by the caller
                save_state(tmp / kind, name, state, what=f"{kind}/{name}")
                new[kind].append(name)
        for stem in ("rng", "extra_state"):
            state = torch.load(ckpt / f"{stem}.pt", map_location="cpu", weights_only=False)
            save_state(tmp, stem, state, what=stem)
        write_meta(tmp, new)
        old = ckpt.with_name(f".old_{ckpt.name}_{os.getpid()}_{time.monotonic_ns()}")
        os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt
