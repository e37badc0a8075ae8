"""State without pickles: a nested state (an optimizer's ``state_dict()``, RNG states, a
buffer's ``state_dict()``, counters) as a JSON file for its structure plus a safetensors file
for its tensors and arrays, and the SHA-256 of a file.

Nothing here ever unpickles: JSON and safetensors hold data only, so loading a crafted file
can fail but cannot run code.

What the JSON holds, value by value:

- ``None``, ``bool``, ``int``, ``str``, finite ``float`` and lists: themselves;
- non-finite floats: ``{"__float__": "nan" | "inf" | "-inf"}``;
- tuples: ``{"__tuple__": [...]}`` (optimizer betas and RNG states come back as tuples);
- a dict whose keys are strings not starting with ``__``: itself; any other dict (the int keys
  of an optimizer's ``state``): ``{"__dict__": [[key, value], ...]}``;
- a torch tensor / numpy array: ``{"__tensor__": key}`` / ``{"__ndarray__": key}``, the data in
  the safetensors file under ``key`` (dtype and shape kept exactly; loaded back as the same
  kind); numpy scalars: ``{"__np__": dtype, "value": ...}``; bytes: ``{"__bytes__": base64}``.

Anything else (a custom object) is refused with the path of the value in the state, so a
trainer's state is always made of data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["StateFileError", "save_state", "load_state", "sha256_file"]

_TAGS = ("__float__", "__tuple__", "__dict__", "__tensor__", "__ndarray__", "__np__", "__bytes__")


class StateFileError(ValueError):
    """A state cannot be written (a value of an unsupported type) or read back (a file that is
    not what :func:`save_state` writes); the message names the file or the value's path."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Packer:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[tuple[int, int]] = set()

    def _key(self, path: str) -> str:
        key, k = path or "value", 0
        while key in self.tensors:
            k += 1
            key = f"{path}#{k}"
        return key

    def _store(self, t: torch.Tensor, path: str) -> str:
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        span = (storage.data_ptr(), storage.nbytes())
        whole = t.storage_offset() == 0 and t.numel() * t.element_size() == span[1]
        if span in self._storages or not whole:
            t = t.clone()  # safetensors wants every tensor to own its storage
        else:
            self._storages.add(span)
        key = self._key(path)
        self.tensors[key] = t
        return key

    def pack(self, v: Any, path: str) -> Any:  # noqa: C901 - one dispatch on types
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, torch.Tensor):
            return {"__tensor__": self._store(v, path)}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise StateFileError(f"{path}: cannot store a numpy array of dtype {v.dtype}")
            arr = np.array(v, order="C", copy=True)  # a copy of its own (views share memory)
            return {"__ndarray__": self._store(torch.from_numpy(arr), path)}
        if isinstance(v, np.generic):
            if v.dtype.kind not in "biuf":
                raise StateFileError(f"{path}: cannot store a numpy {v.dtype} scalar")
            return {"__np__": v.dtype.str, "value": self.pack(v.item(), path)}
        if isinstance(v, bytes):
            return {"__bytes__": base64.b64encode(v).decode("ascii")}
        if isinstance(v, tuple):
            return {"__tuple__": [self.pack(x, f"{path}/{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.pack(x, f"{path}/{i}") for i, x in enumerate(v)]
        if isinstance(v, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: self.pack(x, f"{path}/{k}") for k, x in v.items()}
            return {
                "__dict__": [
                    [self.pack(k, f"{path}/<key>"), self.pack(x, f"{path}/{k}")]
                    for k, x in v.items()
                ]
            }
        raise StateFileError(
            f"{path or 'the state'}: cannot store a {type(v).__name__} in a checkpoint (states "
            "are made of numbers, strings, lists, tuples, dicts, tensors and numpy arrays)"
        )


def _unpack(v: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:  # noqa: C901
    if isinstance(v, list):
        return [_unpack(x, tensors, where) for x in v]
    if not isinstance(v, dict):
        return v
    tag = next((t for t in _TAGS if t in v), None)
    if tag is None:
        return {k: _unpack(x, tensors, where) for k, x in v.items()}
    body = v[tag]
    try:
        if tag == "__float__":
            if body not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float {body!r}")
            return float(body)
        if tag == "__tuple__":
            return tuple(_unpack(x, tensors, where) for x in body)
        if tag == "__dict__":
            return {_unpack(k, tensors, where): _unpack(x, tensors, where) for k, x in body}
        if tag in ("__tensor__", "__ndarray__"):
            t = tensors[body]
            return t if tag == "__tensor__" else t.numpy()
        if tag == "__np__":
            return np.dtype(body).type(v["value"])
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{where}: malformed {tag} entry ({exc})") from None


def save_state(folder: pathlib.Path, stem: str, state: Any, *, what: str = "") -> list[str]:
    """Write ``state`` as ``folder/stem.json`` (+ ``folder/stem.safetensors`` when it holds
    tensors or arrays); return the names of the files written. ``what`` names the state in
    errors (e.g. ``"extra_state"``)."""
    from safetensors.torch import save_file

    packer = _Packer()
    doc = {"format": "rlhf_core.state/1", "state": packer.pack(state, what or stem)}
    names = [f"{stem}.json"]
    if packer.tensors:
        doc["tensors"] = f"{stem}.safetensors"
        save_file(packer.tensors, str(folder / f"{stem}.safetensors"))
        names.append(f"{stem}.safetensors")
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    (folder / f"{stem}.json").write_text(text, encoding="utf-8")
    return names


def load_state(
    folder: pathlib.Path, stem: str, *, map_location: str | torch.device = "cpu"
) -> Any:
    """Read what :func:`save_state` wrote; :class:`StateFileError` naming the file when it is
    not valid."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / f"{stem}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != "rlhf_core.state/1" or "state" not in doc:
        raise StateFileError(f"{path}: not a state file written by rlhf_core")
    tensors: dict[str, torch.Tensor] = {}
    if doc.get("tensors") is not None:
        if doc["tensors"] != f"{stem}.safetensors":
            raise StateFileError(f"{path}: names tensor file {doc['tensors']!r}")
        tpath = folder / doc["tensors"]
        try:
            tensors = load_file(str(tpath), device=str(map_location))
        except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
            raise StateFileError(f"{tpath}: cannot be read as safetensors ({exc})") from None
    return _unpack(doc["state"], tensors, str(path))
