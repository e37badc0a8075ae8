"""Raw records of a data source, each with its row number and a per-row error (or None).

Sources, by what the name is:

- an in-memory list of dicts;
- a local JSON Lines file (``.jsonl``, ``.ndjson``, or ``.json`` holding JSON lines or one array
  of objects), read here line by line: this reader is the validation layer, not a file parser
  of its own — ``json`` parses each line, and what it adds is what a whole-file reader cannot
  give: a row number for every error, skipping one bad line (invalid JSON, invalid UTF-8)
  without losing the others, and no type unification across rows (``datasets`` would refuse
  a whole file whose one row has a number where the others have text). Lines end at ``\\n``
  only (``\\r\\n`` too); U+2028, U+2029 and U+0085 inside a row are data;
- a local Parquet file (pyarrow);
- a local folder: one written by ``datasets``' ``save_to_disk`` (``load_from_disk``), or any
  folder of data files ``datasets.load_dataset`` reads;
- anything else that looks like a Hub id (``org/name`` or ``name``): ``datasets.load_dataset``
  with ``config`` (its ``name``), ``split``, ``revision`` and ``streaming``, through the
  Hugging Face cache (offline, ``HF_HUB_OFFLINE=1``, from the cache alone).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rlhf_core.data.errors import DataError, type_name

__all__ = [
    "FILE_SUFFIXES",
    "Record",
    "is_hub_dataset_id",
    "iter_records",
    "read_records",
]

#: ``(row, record or None, error or None)``
Record = tuple[int, Any, DataError | None]

#: the file suffixes read as local files (anything else that is not a folder is a Hub id or
#: an error)
FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".pq")

#: names ending so are meant as files, never as Hub ids
_FILE_LIKE = (*FILE_SUFFIXES, ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst", ".bz2", ".xz")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_hub_dataset_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub dataset id (``org/name`` or ``name``) and not of
    a data file name (no ``.jsonl``, ``.json``, ``.parquet``, ``.csv``, ... suffix)."""
    return bool(_HUB_ID.match(name)) and not name.lower().endswith(_FILE_LIKE)


# --------------------------------------------------------------------------------------------
# local JSON / JSON Lines


def _not_object(src: str, row: int, rec: Any, note: str = "") -> DataError:
    return DataError(
        src, row, None, "not_object", f"expected a JSON object, got {type_name(rec)}", row_note=note
    )


def _bad_utf8(exc: UnicodeDecodeError, raw: bytes, base: int) -> str:
    byte = raw[exc.start]
    return (
        f"invalid UTF-8: byte 0x{byte:02x} at byte offset {base + exc.start} of the file "
        f"({exc.reason})"
    )


def _json_array(src: str, data: bytes) -> Iterator[Record]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(src, None, None, "invalid_utf8", _bad_utf8(exc, data, 0)) from None
    try:
        arr = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(src, None, None, "invalid_json", f"invalid JSON: {exc}") from exc
    for i, rec in enumerate(arr, start=1):
        err = None if isinstance(rec, dict) else _not_object(src, i, rec, f" (index {i - 1})")
        yield i, rec, err


def _json_lines(src: str, data: bytes) -> Iterator[Record]:
    offset = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        base = offset
        offset += len(raw) + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            detail = _bad_utf8(exc, raw, base)
            yield lineno, None, DataError(src, lineno, None, "invalid_utf8", detail)
            continue
        if not line.strip(" \t\r"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, None, DataError(src, lineno, None, "invalid_json", f"invalid JSON: {exc}")
            continue
        if not isinstance(rec, dict):
            yield lineno, None, _not_object(src, lineno, rec)
            continue
        yield lineno, rec, None


def _is_json_array(path: pathlib.Path, data: bytes) -> bool:
    return path.suffix.lower() == ".json" and data.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"["


# --------------------------------------------------------------------------------------------
# Parquet, datasets folders, the Hub


def _parquet_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise DataError(str(path), None, None, "unreadable", f"cannot read Parquet: {exc}") from exc
    return rows


def _pick_split(src: str, splits: Sequence[str], split: str | None) -> str:
    """The split to read of a dataset with ``splits``: ``split`` when given, else the only one,
    else ``train``."""
    if split is None:
        if len(splits) == 1:
            return splits[0]
        if "train" in splits:
            return "train"
        raise DataError(
            src,
            None,
            None,
            "split",
            f"a DatasetDict with splits {list(splits)}; pass split= to choose one",
        )
    if split not in splits:
        raise DataError(src, None, None, "split", f"no split {split!r}; it has {list(splits)}")
    return split


def _folder_rows(path: pathlib.Path, config: str | None, split: str | None) -> tuple[str, Any]:
    import datasets

    dd = path / "dataset_dict.json"
    if dd.is_file():
        splits = list(json.loads(dd.read_text(encoding="utf-8")).get("splits", []))
        folder = path / _pick_split(str(path), splits, split)
        return str(folder), datasets.load_from_disk(str(folder))
    if (path / "state.json").is_file():
        if split is not None:
            raise DataError(
                str(path),
                None,
                None,
                "split",
                f"split={split!r} given but {path} holds one dataset",
            )
        return str(path), datasets.load_from_disk(str(path))
    try:
        loaded = datasets.load_dataset(str(path), config)
    except Exception as exc:
        raise DataError(
            str(path),
            None,
            None,
            "unreadable",
            "neither a folder written by datasets' save_to_disk (no state.json) nor a folder of "
            f"data files datasets can read: {exc}",
        ) from exc
    chosen = _pick_split(str(path), list(loaded), split)
    return f"{path} (split {chosen!r})", loaded[chosen]


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or env


def _hub_rows(
    name: str, config: str | None, split: str | None, revision: str | None, streaming: bool
) -> tuple[str, Any]:
    import datasets

    what = repr(name) + (f" (config {config!r})" if config else "")
    what += f" at revision {revision!r}" if revision else ""
    try:
        loaded = datasets.load_dataset(
            name, config, split=split, revision=revision, streaming=streaming
        )
    except (ConnectionError, FileNotFoundError) as exc:
        if _offline():
            where = datasets.config.HF_DATASETS_CACHE
            detail = (
                f"dataset {what} is not a local file or folder, and not in the datasets cache "
                f"at {where}; the machine is offline (HF_HUB_OFFLINE=1), so nothing was "
                "downloaded. Load it once where the Hub can be reached (it is then cached), or "
                f"pass a local file ({exc})"
            )
        else:
            detail = (
                f"dataset {what} is not a local file or folder, and the Hugging Face Hub has no "
                f"such dataset (or it is private or gated: log in with `hf auth login`): {exc}"
            )
        raise DataError(name, None, None, "not_found", detail) from exc
    except ValueError as exc:
        text = str(exc)
        kind = (
            "split" if "split" in text.lower() else "config" if "config" in text else "unreadable"
        )
        raise DataError(name, None, None, kind, f"cannot load dataset {what}: {text}") from exc
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split = _pick_split(name, list(loaded), split)
        loaded = loaded[split]
    src = name + (f" [{config}]" if config else "") + (f" split {split!r}" if split else "")
    return src, loaded


# --------------------------------------------------------------------------------------------
# entry points


def iter_records(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
) -> tuple[str, Iterator[Record], str]:
    """Raw records of a source, lazily: ``(source name, iterator of (row, record, error or
    None), row note)``. A whole-source problem (no such file, an offline Hub id that is not
    cached, a split that does not exist) raises :class:`DataError` (or ``FileNotFoundError``
    for a missing local file) at once.

    ``row note`` is ``""`` for JSON Lines (rows are line numbers) and ``"index"`` for sources
    whose rows are record positions (messages then also give the 0-based index). ``config``,
    ``revision`` and ``streaming`` apply to Hub datasets (``config`` also to data folders);
    ``split`` to anything with splits."""
    if not isinstance(path, (str, os.PathLike)):
        return "<list>", _list_records(path), "index"
    p = pathlib.Path(path)
    name = os.fspath(path)
    if not p.exists():
        if isinstance(path, str) and is_hub_dataset_id(name):
            src, ds = _hub_rows(name, config, split, revision, streaming)
            return src, _positions(ds), "index"
        raise FileNotFoundError(f"dataset {name!r} does not exist")
    if p.is_dir():
        src, ds = _folder_rows(p, config, split)
        return src, _positions(ds), "index"
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        data = p.read_bytes()
        if _is_json_array(p, data):
            return str(p), _json_array(str(p), data), "index"
        return str(p), _json_lines(str(p), data), ""
    if suffix in (".parquet", ".pq"):
        return str(p), _positions(_parquet_rows(p)), "index"
    raise ValueError(
        f"cannot tell the format of {str(p)!r}: expected .jsonl, .json, .parquet, a folder "
        "written by datasets' save_to_disk or of data files, or a Hub dataset id"
    )


def _list_records(rows: Sequence[Any]) -> Iterator[Record]:
    for i, rec in enumerate(rows, start=1):
        err = None
        if not isinstance(rec, Mapping):
            err = DataError(
                "<list>",
                i,
                None,
                "not_object",
                f"expected a dict, got {type_name(rec)}",
                row_note=f" (index {i - 1})",
            )
        yield i, rec, err


def _positions(rows: Any) -> Iterator[Record]:
    for i, rec in enumerate(rows, start=1):
        yield i, rec, None


def read_records(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
) -> tuple[str, list[Record], str]:
    """:func:`iter_records` read to the end (no streaming): ``(source name, [(row, record,
    error or None)], row note)``."""
    src, recs, note = iter_records(path, split=split, config=config, revision=revision)
    return src, list(recs), note
