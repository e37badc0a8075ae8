"""Checkpoints a run resumes from exactly.

Layout of a run folder::

    run_dir/checkpoints/
        step_000123/
            meta.json              step, format version, file of each model, time
            models/<name>.safetensors    (or <name>.pt when safetensors cannot hold it)
            optimizers/<name>.pt
            schedulers/<name>.pt
            rng.pt                 python `random`, numpy global, torch CPU (+ CUDA) states
            extra_state.pt         anything picklable: buffer state_dict, sampler position, ...
        latest                     text file naming the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder next to its final place and renamed
into place with :func:`os.replace`, then ``latest`` is rewritten the same way, so a crash at any
moment leaves either the previous checkpoint or the new one, never half of one.

What is *not* captured: random generators the trainer owns (``numpy.random.Generator``,
``torch.Generator``). Put their states in ``extra_state`` (``gen.bit_generator.state`` /
``gen.get_state()``). Checkpoints are loaded with ``torch.load(weights_only=False)`` for the
optimizer, RNG and extra state: load only checkpoints you (or someone you trust) wrote.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhf_core._io import atomic_write_text

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "checkpoint_dir",
    "capture_rng_state",
    "restore_rng_state",
    "resume_or_start",
    "ResumeInfo",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match what is being restored."""


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> pathlib.Path:
    """``run_dir/checkpoints/step_{step:06d}``."""
    return pathlib.Path(run_dir) / "checkpoints" / f"step_{int(step):06d}"


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states: python ``random``, numpy's legacy global generator, torch CPU and
    (when CUDA is initialised) every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured. CUDA states are restored when CUDA is
    available and the number of devices matches (otherwise a warning is logged)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint holds RNG states for %d CUDA device(s) but %d are available; "
                "CUDA random draws will differ from the original run",
                len(cuda),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )


def _save_model(
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    folder: pathlib.Path,
    name: str,
    use_st: bool,
) -> str:
    if isinstance(model, Mapping):  # a full state dict gathered from a sharded (FSDP2) model
        fname = f"{name}.pt"
        torch.save({k: v.detach() for k, v in model.items()}, folder / fname)
        return fname
    if use_st:
        try:
            from safetensors.torch import save_model

            fname = f"{name}.safetensors"
            save_model(model, str(folder / fname))
            return fname
        except Exception as exc:  # non-tensor state, exotic storage, ...
            logger.info("safetensors could not save model %r (%s); using torch.save", name, exc)
    fname = f"{name}.pt"
    torch.save(model.state_dict(), folder / fname)
    return fname


def _check_name(kind: str, name: str) -> None:
    if not re.match(r"^[A-Za-z0-9_.-]+$", name) or name.startswith("."):
        raise ValueError(
            f"{kind} name {name!r} must use letters, digits, '_', '-' or '.' (it names a file)"
        )


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    models: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
    safetensors: bool = True,
) -> pathlib.Path:
    """Write an atomic checkpoint of ``step`` under ``run_dir/checkpoints`` and return its folder.

    Args:
        run_dir: the run folder.
        step: the number of completed training steps (resuming starts at ``step``).
        models: name -> ``nn.Module``; saved as safetensors (shared/tied tensors handled) when
            possible, else ``torch.save`` of the state dict. Frozen models (reference, reward)
            need not be saved if they are rebuilt from their source. A mapping of tensors
            instead of a module (the full state dict gathered from an FSDP2-sharded model, see
            :func:`rlhf_core.parallel.gather_full_state_dict`) is saved with
            ``torch.save``.
        optimizers / schedulers: name -> object with ``state_dict()``.
        extra_state: anything ``torch.save`` can pickle (buffer state, sampler position,
            trainer counters, KL controller, monitor states, generator states).
        keep_last: keep only the newest ``keep_last`` checkpoints (None or 0: keep all).
        safetensors: False forces ``torch.save`` for models.

    Saving a step that already has a checkpoint replaces it.
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0 or None, got {keep_last}")
    root = pathlib.Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp_{final.name}_{os.getpid()}_{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": {},
            "optimizers": [],
            "schedulers": [],
        }
        for kind, objs in (("model", models), ("optimizer", optimizers), ("scheduler", schedulers)):
            for name in objs or {}:
                _check_name(kind, name)
        if models:
            (tmp / "models").mkdir()
            for name, model in models.items():
                meta["models"][name] = _save_model(model, tmp / "models", name, safetensors)
        for kind, stateful in (("optimizers", optimizers), ("schedulers", schedulers)):
            if stateful:
                (tmp / kind).mkdir()
                for name, obj in stateful.items():
                    torch.save(obj.state_dict(), tmp / kind / f"{name}.pt")
                    meta[kind].append(name)
        torch.save(capture_rng_state(), tmp / "rng.pt")
        torch.save(dict(extra_state or {}), tmp / "extra_state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if final.exists():
            old = root / f".old_{final.name}_{os.getpid()}_{time.monotonic_ns()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", final.name + "\n")
    if keep_last:
        for _, path in list_checkpoints(run_dir)[:-keep_last]:
            if path != final:
                shutil.rmtree(path, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, pathlib.Path]]:
    """Complete checkpoints (those with ``meta.json``) of ``run_dir``, oldest first."""
    root = pathlib.Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / "meta.json").is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> pathlib.Path | None:
    """The newest complete checkpoint folder of ``run_dir``, or None.

    Follows the ``latest`` marker; if it is missing or names a folder that is gone or
    incomplete, falls back to the highest-step complete checkpoint."""
    root = pathlib.Path(run_dir) / "checkpoints"
    marker = root / "latest"
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip()
        cand = root / name
        if _STEP_DIR.match(name) and (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _resolve(path: str | os.PathLike[str]) -> pathlib.Path:
    p = pathlib.Path(path)
    if (p / "meta.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        if p.name.startswith("step_") or (p.parent.name == "checkpoints"):
            raise CheckpointError(f"{p} is not a complete checkpoint (no meta.json)")
        raise CheckpointError(f"no checkpoint found in {p} (looked in {p / 'checkpoints'})")
    return latest


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    models: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint into the given objects; return ``(step, extra_state)``.

    ``path`` is a run folder (its latest checkpoint is used) or a ``step_NNNNNN`` folder.
    Every model, optimizer and scheduler passed must exist in the checkpoint (names are the
    keys used at save time); those in the checkpoint but not passed are left alone. Model
    weights are loaded with ``strict`` key matching; an FSDP2-sharded model is given the full
    state dict on every rank and keeps its slices
    (:func:`rlhf_core.parallel.load_full_state_dict`, a collective: every rank loads). RNG states are restored unless
    ``restore_rng=False``. Optimizer states are loaded onto ``map_location`` first; the
    optimizer moves them to its parameters' device.
    """
    from rlhf_core import parallel as D

    ckpt = _resolve(path)
    meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: format_version {meta.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    for name, model in (models or {}).items():
        fname = meta["models"].get(name)
        if fname is None:
            raise CheckpointError(
                f"{ckpt}: no model named {name!r}; it holds {sorted(meta['models'])}"
            )
        fpath = ckpt / "models" / fname
        if D.is_fsdp2(model):
            if fname.endswith(".safetensors"):
                from safetensors.torch import load_file

                full = load_file(str(fpath))
            else:
                full = torch.load(fpath, map_location="cpu", weights_only=True)
            D.load_full_state_dict(model, full, strict=strict)
        elif fname.endswith(".safetensors"):
            from safetensors.torch import load_model

            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            missing, unexpected = load_model(model, str(fpath), strict=strict, device=str(device))
        else:
            sd = torch.load(fpath, map_location=map_location, weights_only=True)
            model.load_state_dict(sd, strict=strict)
    for kind, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
        for name, obj in (objs or {}).items():
            if name not in meta[kind]:
                raise CheckpointError(
                    f"{ckpt}: no {kind[:-1]} named {name!r}; it holds {sorted(meta[kind])}"
                )
            sd = torch.load(
                ckpt / kind / f"{name}.pt", map_location=map_location, weights_only=False
            )
            obj.load_state_dict(sd)
    extra = torch.load(ckpt / "extra_state.pt", map_location=map_location, weights_only=False)
    if restore_rng:
        restore_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    return int(meta["step"]), extra


@dataclass
class ResumeInfo:
    """What :func:`resume_or_start` decided.

    ``checkpoint``: the folder to load (None = start from scratch); ``step``: the step to start
    from; ``finished``: the run already reached ``total_steps`` (nothing left to do);
    ``message``: one sentence for the user saying which of these happened.
    """

    checkpoint: pathlib.Path | None
    step: int
    finished: bool
    message: str

    def load(self, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """:func:`load_checkpoint` of :attr:`checkpoint` (same keyword arguments)."""
        if self.checkpoint is None:
            raise CheckpointError("there is no checkpoint to load: the run starts from step 0")
        return load_checkpoint(self.checkpoint, **kwargs)


def resume_or_start(
    run_dir: str | os.PathLike[str], resume: bool, total_steps: int | None = None
) -> ResumeInfo:
    """Decide whether a run starts fresh or continues, and say so.

    - ``resume=False`` and the folder already holds checkpoints: :class:`CheckpointError`
      (continuing or overwriting silently would both be surprises): pass ``resume=True`` or
      choose another folder.
    - ``resume=True`` with no checkpoint: start from step 0 (logged as a warning, so a typo in
      the folder name is visible).
    - ``resume=True`` with a checkpoint at step ``s >= total_steps``: ``finished=True`` and a
      message saying the run is complete; the caller should report it and exit instead of
      training zero steps in silence. The message is also logged as a warning.
    """
    run = pathlib.Path(run_dir)
    latest = latest_checkpoint(run)
    if not resume:
        if latest is not None:
            raise CheckpointError(
                f"{run} already holds checkpoints (latest: {latest.name}); pass --resume to "
                "continue that run, or choose a new run folder"
            )
        return ResumeInfo(None, 0, False, f"starting a new run in {run}")
    if latest is None:
        msg = f"--resume given but {run} holds no checkpoint; starting from step 0"
        logger.warning(msg)
        return ResumeInfo(None, 0, False, msg)
    meta = json.loads((latest / "meta.json").read_text(encoding="utf-8"))
    step = int(meta["step"])
    if total_steps is not None and step >= total_steps:
        msg = (
            f"the run in {run} is already finished: its latest checkpoint is at step {step} "
            f"of {total_steps}; nothing to do (raise the total number of steps to train longer, "
            "or choose a new run folder)"
        )
        logger.warning(msg)
        return ResumeInfo(latest, step, True, msg)
    total = f" of {total_steps}" if total_steps is not None else ""
    return ResumeInfo(latest, step, False, f"resuming {run} from step {step}{total} ({latest})")
