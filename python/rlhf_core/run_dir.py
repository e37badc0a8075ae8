"""A run folder belongs to one run: the path rules, the lock, what may be in it, and the
record of the run's config.

- **Path**: an empty path, the filesystem root and the home folder are refused (a run writes
  ``config.toml``, ``model/``, ``metrics.jsonl`` into its folder); ``~`` is not expanded.
- **Lock**: the process that trains a run holds an exclusive ``fcntl.flock`` on
  ``RUN_DIR/run.lock`` for as long as it lives (or until :func:`release_run_dir`); the file
  names the holder (PID, host, start time, command). A second process gets a
  :class:`RunDirError` naming the holder. A lock whose holder died (killed, crashed) is free
  at the OS level; the next run takes it over and says whose it was. Under ``torchrun`` only
  rank 0 locks (it writes the folder's shared files).
- **Contents**: a folder is used when it is new or empty, when it holds the record of a run
  (``run.json``, written by this module), or when it holds checkpoints of an earlier version
  (no ``run.json`` yet). Anything else is refused, naming a few of the files found.
- **Record**: ``run.json`` holds the kind of run (the trainer or command), the rlhf_core
  version and the resolved config, lossless (``null`` for an option set to none, non-finite
  numbers as ``"nan"`` / ``"inf"`` / ``"-inf"``); ``config.toml`` beside it is the same config
  for people and for ``--config`` (``key = "none"`` for none). Both are written only once every
  check of the run has passed. A resume compares its config with the record: an option that
  differs is refused, naming it and both values, unless it is in :data:`MAY_CHANGE_ON_RESUME`.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import os
import pathlib
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from rlhf_core._io import atomic_write_text, dataclass_to_dict, dumps_toml

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "MAY_CHANGE_ON_RESUME",
    "RECORD_FILE",
    "RunDirError",
    "RunFolder",
    "check_run_dir_path",
    "config_changes",
    "config_record",
    "lock_run_dir",
    "read_record",
    "release_run_dir",
]

log = logging.getLogger("rlhf_core.run_dir")

LOCK_FILE = "run.lock"
RECORD_FILE = "run.json"
CONFIG_TOML = "config.toml"

#: Options a resumed run may set differently from the run it continues: how long to train,
#: how often to save and how many checkpoints to keep, what is shown and logged, where it runs
#: (device, DDP or FSDP2) and how memory is traded for compute (micro-batches, gradient
#: checkpointing), none of which changes the update. Every other option is the run's identity.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "run_dir",
        "resume",
        "resume_last_good",
        "total_steps",
        "save_every",
        "keep_last",
        "progress_bar",
        "tensorboard",
        "device",
        "parallel",
        "micro_batch_size",
        "gradient_checkpointing",
    }
)


class RunDirError(ValueError):
    """A run folder cannot be used: a refused path, a folder locked by another process,
    holding files of something else, or holding a run whose options differ."""


def check_run_dir_path(path: str | os.PathLike[str], *, field: str = "run_dir") -> pathlib.Path:
    """The absolute path of a run folder, or :class:`RunDirError` naming ``field`` for an
    empty path, ``~`` (not expanded here), the filesystem root or the home folder."""
    text = os.fspath(path)
    if not str(text).strip():
        raise RunDirError(f"{field} is empty: give the run its own folder (e.g. runs/grpo)")
    if str(text).startswith("~"):
        raise RunDirError(
            f"{field}={str(text)!r}: '~' is not expanded here; write the folder's full path"
        )
    p = pathlib.Path(text).absolute()
    real = p.resolve()
    if real == pathlib.Path(real.anchor):
        raise RunDirError(f"{field}={str(text)!r} is the filesystem root; give the run its own "
                          "folder (e.g. runs/grpo)")  # fmt: skip
    if real == pathlib.Path.home().resolve():
        raise RunDirError(f"{field}={str(text)!r} is your home folder; give the run its own "
                          "folder (e.g. ~/runs/grpo written out in full)")  # fmt: skip
    return p


# --------------------------------------------------------------------------------------------
# the lock


class _Lock:
    def __init__(self, folder: pathlib.Path, fd: int) -> None:
        self.folder = folder
        self.fd = fd

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)  # a lock file with content is a holder that died
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1


_HELD: dict[str, _Lock] = {}


def _holder_text(raw: str) -> str:
    try:
        info = json.loads(raw)
        return (
            f"PID {info.get('pid')} on host {info.get('host')!r} (started "
            f"{info.get('started')}: {info.get('command')})"
        )
    except (json.JSONDecodeError, AttributeError):
        return repr(raw.strip()[:200])


def _lock(folder: pathlib.Path) -> _Lock:
    key = str(folder.resolve())
    held = _HELD.get(key)
    if held is not None and held.fd >= 0:
        return held  # this process holds it already (a second trainer on the same run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                raise RunDirError(
                    f"run folder {folder} is in use by another process: "
                    f"{_holder_text(raw)}, which holds {path}. Wait for it to finish, stop it, "
                    "or choose another run folder"
                ) from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if previous.strip():
            log.warning(
                "run folder %s: took over the lock left by %s, which no longer runs (it was "
                "killed or crashed)", folder, _holder_text(previous),
            )  # fmt: skip
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
    except BaseException:
        os.close(fd)
        raise
    lock = _Lock(folder, fd)
    _HELD[key] = lock
    return lock


def lock_run_dir(path: str | os.PathLike[str]) -> None:
    """Take this process's lock on the run folder ``path`` (created if missing), as
    :meth:`RunFolder.claim` does, without checking what it holds: for a caller with rules of
    its own for the folder's contents (the demo). :class:`RunDirError` naming the holder when
    another process has it."""
    _lock(check_run_dir_path(path))


def release_run_dir(path: str | os.PathLike[str]) -> bool:
    """Release this process's lock on the run folder ``path`` (also done when the process
    exits); returns whether it held one."""
    lock = _HELD.pop(str(pathlib.Path(path).resolve()), None)
    if lock is None:
        return False
    lock.release()
    return True


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _HELD.pop(key).release()


# --------------------------------------------------------------------------------------------
# the record


def _encode(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "nan", "inf", "-inf": the config readers parse them back
    if isinstance(v, Mapping):
        return {str(k): _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    return v


def config_record(config: Any) -> dict[str, Any]:
    """The config as it is recorded in ``run.json``: a plain nested dict of its fields, ``None``
    kept, non-finite numbers as strings, tuples as lists, paths as strings."""
    out = _encode(dataclass_to_dict(config))
    assert isinstance(out, dict)
    return out


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` of a run folder (None when it has none); :class:`RunDirError` when it
    is not a run record."""
    path = pathlib.Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(rec, dict) or rec.get("rlhf_core_run") != 1 or not isinstance(
        rec.get("config"), dict
    ):
        raise RunDirError(f"{path} is not the record of an rlhf_core run")
    return rec


def _defaults(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _encode(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            d = f.default_factory()
            out[f.name] = config_record(d) if dataclasses.is_dataclass(d) else _encode(d)
    return out


def config_changes(saved: Mapping[str, Any], config: Any) -> list[tuple[str, Any, Any]]:
    """``(option, saved value, value now)`` for every option of ``config`` that differs from
    the recorded ``saved`` config (an option the record lacks, from an earlier version,
    counts as its default), except :data:`MAY_CHANGE_ON_RESUME`."""
    now = config_record(config)
    defaults = _defaults(config)
    out = []
    for key, value in now.items():
        if key in MAY_CHANGE_ON_RESUME:
            continue
        old = saved.get(key, defaults.get(key, "<absent>"))
        if old != value:
            out.append((key, old, value))
    return out


def _render(v: Any) -> str:
    return "none" if v is None else repr(v)


class RunFolder:
    """A run folder this process has claimed (:meth:`claim`): path checked, lock held, contents
    checked. ``is_new``: nothing of a run was in it; ``record``: its ``run.json`` (None when new
    or written by an earlier version)."""

    def __init__(self, path: pathlib.Path, kind: str, record: dict[str, Any] | None,
                 is_new: bool) -> None:  # fmt: skip
        self.path = path
        self.kind = kind
        self.record = record
        self.is_new = is_new

    @classmethod
    def claim(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        kind: str,
        config: Any = None,
        resume: bool = True,
        compare: bool = True,
        field: str = "run_dir",
    ) -> RunFolder:
        """Check the path, take the lock and check what the folder holds (see the module).

        ``kind`` names the run (the trainer, or a command such as ``eval``): a folder that
        holds a run of another kind is refused. With ``compare`` and ``resume``, ``config``
        must equal the recorded one but for :data:`MAY_CHANGE_ON_RESUME` (a refusal names each
        option that differs and both values). Nothing is written but the lock file."""
        path = check_run_dir_path(run_dir, field=field)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{field}={os.fspath(run_dir)!r} is a file, not a folder")
        held_before = str(path.resolve()) in _HELD
        had_lock_file = (path / LOCK_FILE).exists()
        _lock(path)
        try:
            return cls._check(path, run_dir, kind, config, resume, compare, field)
        except RunDirError:
            if not held_before:  # leave a refused folder as it was
                release_run_dir(path)
                if not had_lock_file:
                    (path / LOCK_FILE).unlink(missing_ok=True)
            raise

    @classmethod
    def _check(
        cls, path: pathlib.Path, run_dir: Any, kind: str, config: Any, resume: bool,
        compare: bool, field: str,
    ) -> RunFolder:  # fmt: skip
        record = read_record(path)
        if record is None:
            entries = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
            has_ckpt = (path / "checkpoints").is_dir() and any(
                (c / "meta.json").is_file() for c in (path / "checkpoints").iterdir()
            )
            if entries and not has_ckpt:
                shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                raise RunDirError(
                    f"{field}={os.fspath(run_dir)!r}: the folder {path} already holds files "
                    f"that are not an rlhf_core run's ({shown}); a run writes config.toml, "
                    "model/, metrics.jsonl and more into its folder: choose a new or empty one"
                )
            return cls(path, kind, None, is_new=not entries)
        if record.get("kind") != kind:
            raise RunDirError(
                f"run folder {path} holds a run written by the {record.get('kind')!r} trainer "
                f"or command; this is {kind!r}: choose another run folder"
            )
        if compare and resume and config is not None:
            changes = config_changes(record["config"], config)
            if changes:
                shown = "; ".join(f"{k}: {_render(a)} (saved) vs {_render(b)} (now)"
                                  for k, a, b in changes)  # fmt: skip
                raise RunDirError(
                    f"run folder {path} holds a run whose options differ from this one: "
                    f"{shown}. A resumed run keeps the options it started with; only these "
                    f"may change: {', '.join(sorted(MAY_CHANGE_ON_RESUME))}. Resume with the "
                    "saved options, or choose a new run folder for the new ones"
                )
        return cls(path, kind, record, is_new=False)

    def write_record(self, config: Any, *, header: str = "") -> None:
        """Write ``run.json`` and ``config.toml`` for ``config`` (atomically, each)."""
        from rlhf_core import __version__

        plain = dataclass_to_dict(config)
        rec = {
            "rlhf_core_run": 1,
            "kind": self.kind,
            "rlhf_core_version": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config_record(config),
        }
        atomic_write_text(self.path / RECORD_FILE, json.dumps(rec, indent=2) + "\n")
        head = header or f"rlhf_core {self.kind}: the resolved config of the run in {self.path}"
        lines = [*head.splitlines(), "written with run.json (the record a resume is checked "
                 "against); 'none' marks an option set to none"]  # fmt: skip
        text = "".join(f"# {line}\n" for line in lines) + dumps_toml(plain)
        atomic_write_text(self.path / CONFIG_TOML, text)
        self.record = rec
        self.is_new = False
