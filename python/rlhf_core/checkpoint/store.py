"""Writing, checking and reading one checkpoint folder (format 2: no pickles, a SHA-256 per
file). See :mod:`rlhf_core.checkpoint` for the layout."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import pickle
import random
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rlhf_core._io import atomic_write_text
from rlhf_core.checkpoint.state_files import StateFileError, load_state, save_state, sha256_file

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "DamagedCheckpointError",
    "capture_rng_state",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_meta",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
    "write_meta",
]

logger = logging.getLogger("rlhf_core.checkpoint")

FORMAT_VERSION = 2
STEP_DIR = re.compile(r"^step_(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_REL_FILE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match what is being restored."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files are not what its ``meta.json`` recorded (truncated, changed,
    missing, unreadable). ``checkpoint`` is the folder, ``file`` the first bad file."""

    def __init__(self, message: str, checkpoint: pathlib.Path, file: str) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.file = file


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
    torch.set_rng_state(state["torch_cpu"].cpu())
    cuda = state.get("torch_cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
        else:
            logger.warning(
                "checkpoint holds RNG states for %d CUDA device(s) but %d are available; "
                "CUDA random draws will differ from the original run",
                len(cuda),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r} must use letters, digits, '_', '-' or '.' and not start "
            "with '.' or '-' (it names a file)"
        )


def _save_model(
    model: torch.nn.Module | Mapping[str, torch.Tensor], folder: pathlib.Path, name: str,
    use_st: bool,
) -> str:  # fmt: skip
    from safetensors.torch import save_file, save_model

    if isinstance(model, Mapping):  # a full state dict gathered from a sharded (FSDP2) model
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for k, v in model.items():
            t = v.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[k] = t.clone() if ptr in seen else t
            seen.add(ptr)
        save_file(tensors, str(folder / f"{name}.safetensors"))
        return f"{name}.safetensors"
    if use_st:
        try:
            save_model(model, str(folder / f"{name}.safetensors"))
            return f"{name}.safetensors"
        except Exception as exc:  # non-tensor extra state, exotic storage, ...
            logger.info("safetensors could not save model %r (%s); using torch.save", name, exc)
            (folder / f"{name}.safetensors").unlink(missing_ok=True)
    torch.save(model.state_dict(), folder / f"{name}.pt")  # read back with weights_only=True
    return f"{name}.pt"


def _meta_digest(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def write_meta(folder: pathlib.Path, meta: dict[str, Any]) -> None:
    """Complete ``meta`` with the size and SHA-256 of every file under ``folder`` and its own
    checksum, and write it as ``folder/meta.json`` (the last file of a checkpoint)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json")
    meta["files"] = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in files
    }
    meta["meta_sha256"] = _meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


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
            possible, else a ``torch.save`` of the state dict (read back with
            ``weights_only=True``). A mapping of tensors instead of a module (the full state
            dict gathered from an FSDP2-sharded model) is saved as safetensors too.
        optimizers / schedulers: name -> object with ``state_dict()``.
        extra_state: data only: numbers, strings, lists, tuples, dicts, tensors, numpy arrays
            (buffer state, sampler position, counters, KL controller, generator states).
        keep_last: keep only the newest ``keep_last`` checkpoints (None or 0: keep all).
        safetensors: False forces ``torch.save`` for models.

    Optimizer, scheduler, RNG and extra states are written as JSON plus safetensors (never
    pickled); ``meta.json`` records the SHA-256 and size of every file. Saving a step that
    already has a checkpoint replaces it.
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0 or None, got {keep_last}")
    for kind, objs in (("model", models), ("optimizer", optimizers), ("scheduler", schedulers)):
        for name in objs or {}:
            _check_name(kind, name)
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
        if models:
            (tmp / "models").mkdir()
            for name, model in models.items():
                meta["models"][name] = _save_model(model, tmp / "models", name, safetensors)
        for kind, stateful in (("optimizers", optimizers), ("schedulers", schedulers)):
            if stateful:
                (tmp / kind).mkdir()
                for name, obj in stateful.items():
                    save_state(tmp / kind, name, obj.state_dict(), what=f"{kind}/{name}")
                    meta[kind].append(name)
        save_state(tmp, "rng", capture_rng_state(), what="rng")
        save_state(tmp, "extra_state", dict(extra_state or {}), what="extra_state")
        write_meta(tmp, meta)
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
    """Complete checkpoints (those with ``meta.json``) of ``run_dir``, oldest first. Complete
    means fully written; :func:`verify_checkpoint` says whether the files are intact."""
    root = pathlib.Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
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
        try:
            name = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        cand = root / name
        if STEP_DIR.match(name) and (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _damaged(ckpt: pathlib.Path, file: str, what: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"checkpoint {ckpt} is damaged: {file}: {what}", ckpt, file)


def read_meta(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``meta.json`` of a checkpoint folder (its own checksum, its fields, the file
    names it refers to); :class:`DamagedCheckpointError` naming what is wrong, or
    :class:`CheckpointError` for a checkpoint of another format."""
    from rlhf_core.checkpoint.legacy import legacy_format_error

    ckpt = pathlib.Path(ckpt)
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _damaged(ckpt, "meta.json", "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(ckpt, "meta.json", f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _damaged(ckpt, "meta.json", "not a JSON object")
    version = meta.get("format_version")
    if version == 1:
        raise legacy_format_error(ckpt)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: format_version {version!r} is not supported (expected {FORMAT_VERSION}): "
            "written by another version of rlhf_core, or meta.json is damaged"
        )
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise _damaged(ckpt, "meta.json", "its checksum does not match its contents")
    try:
        step = meta["step"]
        models, files = meta["models"], meta["files"]
        ok = (
            isinstance(step, int) and step >= 0 and isinstance(models, dict)
            and isinstance(files, dict)
            and all(isinstance(meta[k], list) for k in ("optimizers", "schedulers"))
        )  # fmt: skip
    except KeyError as exc:
        raise _damaged(ckpt, "meta.json", f"has no {exc.args[0]!r} entry") from None
    if not ok:
        raise _damaged(ckpt, "meta.json", "an entry has the wrong type")
    for name, fname in models.items():
        try:
            _check_name("model", name)
        except ValueError as exc:
            raise _damaged(ckpt, "meta.json", str(exc)) from None
        if fname not in (f"{name}.safetensors", f"{name}.pt"):
            raise _damaged(
                ckpt, "meta.json", f"model {name!r} names the file {fname!r}; expected "
                f"{name}.safetensors or {name}.pt in models/",
            )  # fmt: skip
    for kind in ("optimizers", "schedulers"):
        for name in meta[kind]:
            try:
                _check_name(kind[:-1], name)
            except ValueError as exc:
                raise _damaged(ckpt, "meta.json", str(exc)) from None
    for rel in files:
        if not isinstance(rel, str) or not _REL_FILE.match(rel):
            raise _damaged(ckpt, "meta.json", f"lists a file outside the checkpoint: {rel!r}")
    needed = {"rng.json", "extra_state.json"}
    needed |= {f"models/{f}" for f in models.values()}
    for kind in ("optimizers", "schedulers"):
        needed |= {f"{kind}/{name}.json" for name in meta[kind]}
    missing = sorted(needed - set(files))
    if missing:
        raise _damaged(ckpt, "meta.json", f"does not list {missing[0]}")
    return meta


def verify_checkpoint(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint folder: ``meta.json`` (see :func:`read_meta`), then every file it
    lists: present, of the recorded size and SHA-256. Returns the meta; raises
    :class:`DamagedCheckpointError` naming the first bad file and what is wrong with it."""
    ckpt = pathlib.Path(ckpt)
    meta = read_meta(ckpt)
    for rel, rec in sorted(meta["files"].items()):
        path = ckpt / rel
        if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
            raise _damaged(ckpt, "meta.json", f"the entry of {rel} has no sha256")
        if not path.is_file():
            raise _damaged(ckpt, rel, "missing")
        size = path.stat().st_size
        if size != rec.get("bytes"):
            raise _damaged(ckpt, rel, f"{size} bytes where {rec.get('bytes')} were written "
                           "(truncated or changed)")  # fmt: skip
        if sha256_file(path) != rec["sha256"]:
            raise _damaged(ckpt, rel, "its SHA-256 does not match the one recorded when it was "
                           "written (the bytes changed)")  # fmt: skip
    return meta


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


def _read_state(ckpt: pathlib.Path, folder: pathlib.Path, stem: str, map_location: Any) -> Any:
    try:
        return load_state(folder, stem, map_location=map_location)
    except StateFileError as exc:
        rel = (folder / stem).relative_to(ckpt).as_posix()
        raise _damaged(ckpt, f"{rel}.json", str(exc)) from None


def _with_tied_names(model: torch.nn.Module, sd: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:  # fmt: skip
    """``sd`` with every name of a group of tied tensors (one storage in ``model``) present
    when one of them is: safetensors' ``save_model`` keeps one name per group, a gathered full
    state dict has them all."""
    groups: dict[tuple[int, int], list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if v.device.type != "meta" and v.numel():
            groups.setdefault((v.untyped_storage().data_ptr(), v.storage_offset()), []).append(k)
    out = dict(sd)
    for names in groups.values():
        present = [n for n in names if n in sd]
        if present and len(names) > 1:
            for n in names:
                out.setdefault(n, sd[present[0]])
    return out


def _load_model(model: torch.nn.Module, fpath: pathlib.Path, strict: bool, ckpt: pathlib.Path
                ) -> None:  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from rlhf_core import parallel as P

    rel = fpath.relative_to(ckpt).as_posix()
    try:
        if P.is_fsdp2(model):
            if fpath.suffix == ".safetensors":
                full = load_file(str(fpath))
            else:
                full = torch.load(fpath, map_location="cpu", weights_only=True)
            P.load_full_state_dict(model, full, strict=strict)
        elif fpath.suffix == ".safetensors":
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            sd = load_file(str(fpath), device=str(device))
            model.load_state_dict(_with_tied_names(model, sd), strict=strict)
        else:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            model.load_state_dict(
                torch.load(fpath, map_location=device, weights_only=True), strict=strict
            )
    except (SafetensorError, OSError, EOFError) as exc:
        raise _damaged(ckpt, rel, f"cannot be read ({exc})") from None
    except pickle.UnpicklingError as exc:  # weights_only=True met something not a tensor
        lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler" in ln]
        first = lines[0] if lines else str(exc).strip().split("\n")[0]
        raise CheckpointError(
            f"{ckpt}: {rel} holds something other than tensors and is not loaded "
            f"(nothing in it was run): {first}"
        ) from None
    except RuntimeError as exc:  # missing / unexpected keys, shapes; weights_only refusals
        raise CheckpointError(f"{ckpt}: {rel} does not fit the model: {exc}") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    models: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    verify: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint into the given objects; return ``(step, extra_state)``.

    ``path`` is a run folder (its latest checkpoint is used) or a ``step_NNNNNN`` folder.
    Every file is checked against the SHA-256 recorded in ``meta.json`` first (``verify``;
    :class:`DamagedCheckpointError` names the first bad file). Every model, optimizer and
    scheduler passed must exist in the checkpoint (names are the keys used at save time);
    those in the checkpoint but not passed are left alone. Model weights are loaded with
    ``strict`` key matching; an FSDP2-sharded model is given the full state dict on every rank
    and keeps its slices (a collective: every rank loads). RNG states are restored unless
    ``restore_rng=False``. Optimizer states are loaded onto ``map_location`` first; the
    optimizer moves them to its parameters' device. Nothing is unpickled.
    """
    ckpt = _resolve(path)
    meta = verify_checkpoint(ckpt) if verify else read_meta(ckpt)
    for name, model in (models or {}).items():
        fname = meta["models"].get(name)
        if fname is None:
            raise CheckpointError(
                f"{ckpt}: no model named {name!r}; it holds {sorted(meta['models'])}"
            )
        _load_model(model, ckpt / "models" / fname, strict, ckpt)
    for kind, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
        for name, obj in (objs or {}).items():
            if name not in meta[kind]:
                raise CheckpointError(
                    f"{ckpt}: no {kind[:-1]} named {name!r}; it holds {sorted(meta[kind])}"
                )
            sd = _read_state(ckpt, ckpt / kind, name, map_location)
            try:
                obj.load_state_dict(sd)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{ckpt}: {kind}/{name}.json does not fit the {kind[:-1]}: {exc}"
                ) from None
    extra = _read_state(ckpt, ckpt, "extra_state", map_location)
    if not isinstance(extra, dict):
        raise _damaged(ckpt, "extra_state.json", "does not hold a mapping")
    if restore_rng:
        rng = _read_state(ckpt, ckpt, "rng", "cpu")
        try:
            restore_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _damaged(ckpt, "rng.json", f"not a set of RNG states ({exc})") from None
    return int(meta["step"]), extra
