"""Where a model named by the user comes from: the built-in model, a local folder, or a
Hugging Face Hub id resolved through the Hugging Face cache with ``from_pretrained``'s own
rules (``revision``; downloads when the Hub can be reached; from the cache alone when
``HF_HUB_OFFLINE=1``). A model that cannot be found is one :class:`ModelNotFoundError` that
says what was looked for (the id and revision), where (the local path, the cache folder) and
whether the machine is offline — not the loader's bare ``OSError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ModelNotFoundError",
    "hub_cache_dir",
    "is_builtin",
    "is_hub_id",
    "is_offline",
    "optional_file",
    "pretrained",
    "split_revision",
]

T = TypeVar("T")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class ModelNotFoundError(FileNotFoundError):
    """A model, tokenizer or one of their files is neither a local folder nor reachable on the
    Hub or in its cache. The message says what was looked for and where."""


def is_builtin(name: str) -> bool:
    """Whether a model argument names the built-in model (``builtin`` or ``builtin:<size>``)."""
    return name == "builtin" or name.startswith("builtin:")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repository id (``org/name`` or ``name``; no
    path separators beyond the one, no leading ``.``, ``/`` or ``~``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith(".")


def split_revision(name: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; a local path or a name without ``@``
    -> ``(name, None)``."""
    if "@" not in name or Path(name).exists():
        return name, None
    base, rev = name.rsplit("@", 1)
    if not base or not rev:
        raise ValueError(f"{name!r}: expected 'org/name@revision' (a branch, tag or commit)")
    return base, rev


def is_offline() -> bool:
    """Whether Hub downloads are off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    words = ("1", "ON", "YES", "TRUE")
    env = any(
        os.environ.get(v, "").strip().upper() in words
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return bool(constants.HF_HUB_OFFLINE) or env


def hub_cache_dir() -> Path:
    """The Hugging Face model cache (``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _where(name: str) -> Path:
    return hub_cache_dir() / ("models--" + name.replace("/", "--"))


def _not_found(what: str, name: str, revision: str | None, exc: BaseException) -> str:
    rev = revision or "main"
    if not is_hub_id(name):
        return (
            f"{what} {name!r} does not exist: no such local folder, and not a Hugging Face Hub "
            "id ('org/name', optionally 'org/name@revision')"
        )
    folder = _where(name)
    cached = (
        f"the Hugging Face cache holds {folder} but not what is needed ({exc})"
        if folder.is_dir()
        else f"it is not in the Hugging Face cache (looked for {folder})"
    )
    if is_offline():
        return (
            f"{what} {name!r} (revision {rev!r}) is not a local folder, and {cached}; the machine "
            "is offline (HF_HUB_OFFLINE=1), so nothing was downloaded. Download it where the Hub "
            f"can be reached (`hf download {name}`), or pass a local folder"
        )
    return (
        f"{what} {name!r} (revision {rev!r}) is not a local folder, and could not be fetched from "
        f"the Hugging Face Hub ({type(exc).__name__}: {exc}); a private or gated model needs "
        f"`hf auth login`, an unreachable Hub HF_HUB_OFFLINE=1 with the model in the cache "
        f"({folder})"
    )


def pretrained(
    load: Callable[..., T],
    name: str,
    *,
    what: str,
    revision: str | None = None,
    **kwargs: Any,
) -> T:
    """``load(name, revision=revision, **kwargs)`` (a ``from_pretrained``), with a missing
    local folder, an unknown Hub id or a model absent from the offline cache raised as one
    :class:`ModelNotFoundError` naming ``what`` (e.g. ``"model"``, ``"reward model"``)."""
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"{what} {name!r} is a file; expected a model folder")
        if revision is not None:
            raise ValueError(
                f"{what} {name!r} is a local folder; a revision ({revision!r}) applies to Hub ids"
            )
        return load(str(local), **kwargs)
    if not is_hub_id(name):
        raise ModelNotFoundError(_not_found(what, name, revision, FileNotFoundError(name)))
    try:
        return load(name, revision=revision, **kwargs)
    except OSError as exc:  # transformers / huggingface_hub: missing repo, file or connection
        raise ModelNotFoundError(_not_found(what, name, revision, exc)) from exc


def optional_file(name: str, filename: str, revision: str | None = None) -> Path | None:
    """The local path of ``filename`` in a model folder or Hub repository (cached, or fetched
    when online), or None when the repository has no such file or cannot be reached."""
    local = Path(name).expanduser()
    if local.is_dir():
        p = local / filename
        return p if p.is_file() else None
    if not is_hub_id(name):
        return None
    from transformers.utils import cached_file

    found = cached_file(
        name,
        filename,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return Path(found) if found else None
