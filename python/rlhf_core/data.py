"""Prompt, prompt-completion and preference datasets in TRL's column conventions.

Sources: a JSONL file (``.jsonl``; ``.json`` holding JSON lines or one array of objects), a
Parquet file (``.parquet``, read with pyarrow), a folder written by ``datasets``'
``save_to_disk`` (read with ``datasets`` when it is installed, otherwise straight from its
Arrow files with pyarrow), or an in-memory list of dicts.

Columns (names configurable):

- ``prompt``: plain text, or *conversational*: a list of ``{"role", "content"}`` messages with
  roles ``system`` (first only), then ``user`` and ``assistant`` alternating, ending with
  ``user``.
- ``chosen`` / ``rejected`` (preferences) and ``completion`` (prompt-completion): plain text,
  or a list of messages continuing the prompt's conversation (starting with ``assistant``).
  Plain and conversational columns are not mixed within a row. A conversational preference row
  may leave out ``prompt``: the messages ``chosen`` and ``rejected`` share at the start are the
  prompt (TRL's "implicit prompt").
- Every other column is kept (e.g. ``answer`` for verifiable rewards) and handed to reward
  functions as keyword arguments.

Conversations become text through the tokenizer's chat template when a tokenizer with one is
given (prompt with ``add_generation_prompt=True``; a completion is the rest of the rendered full
conversation), otherwise through a plain ``"role: content\\n"`` format.

A malformed row raises :class:`DataError` naming the file, the row (1-based; the line number in
a JSONL file, the record position otherwise) and the column, or, with ``on_error="skip"``, is
skipped and counted by reason in the dataset's :class:`LoadReport`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DataError",
    "LoadReport",
    "PromptDataset",
    "PromptCompletionDataset",
    "PreferenceDataset",
    "ROLES",
    "load_prompts",
    "load_prompt_completions",
    "load_preferences",
    "read_records",
    "render_messages",
]

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
OnError = Literal["raise", "skip"]
Message = dict[str, Any]


class DataError(ValueError):
    """A row (or the whole source) is unusable.

    Attributes: ``file`` (path or ``"<list>"``), ``row`` (1-based, None for a whole-source
    problem), ``column`` (None for a whole-row problem such as invalid JSON), ``kind`` (a short
    reason key, e.g. ``"missing_column"``, used for the skip counts) and ``detail``.
    """

    def __init__(
        self,
        file: str,
        row: int | None,
        column: str | None,
        kind: str,
        detail: str,
        *,
        row_note: str = "",
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.kind = kind
        self.detail = detail
        where = file
        if row is not None:
            where += f": row {row}{row_note}"
        where += (
            f", column {column!r}"
            if column is not None
            else (" (whole row)" if row is not None else "")
        )
        super().__init__(f"{where}: {detail}")


class _RowError(Exception):
    def __init__(self, column: str | None, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.column = column
        self.kind = kind
        self.detail = detail


@dataclass
class LoadReport:
    """What loading did: rows read, rows kept, skipped rows counted by reason, and the first
    few skip messages (for the user to look at)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.source}: {self.kept} rows"
        reasons = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
        return f"{self.source}: kept {self.kept} of {self.total} rows; skipped {reasons}"


@dataclass
class _Base:
    source: str
    rows: list[int]
    columns: dict[str, list[Any]]
    report: LoadReport
    conversational: bool

    def __len__(self) -> int:
        return len(self.rows)

    def reward_columns(
        self, indices: Sequence[int] | None = None, *, repeat: int = 1
    ) -> dict[str, list[Any]]:
        """The extra columns as keyword arguments for a reward function
        ``fn(prompts, completions, **columns)``: for rows ``indices`` (all by default), each
        value repeated ``repeat`` times in a row (prompt-major, matching ``num_samples``)."""
        idx = range(len(self)) if indices is None else indices
        return {k: [v[i] for i in idx for _ in range(repeat)] for k, v in self.columns.items()}


@dataclass
class PromptDataset(_Base):
    """Prompts for RL. ``prompts[i]`` is the text to generate from (chat template applied to
    conversational prompts); ``messages[i]`` the original conversation (None for plain text);
    ``columns`` the other columns; ``rows[i]`` the source row number."""

    prompts: list[str] = field(default_factory=list)
    messages: list[list[Message] | None] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prompt": self.prompts[i], **{k: v[i] for k, v in self.columns.items()}}

    def select(self, indices: Sequence[int]) -> PromptDataset:
        """A new dataset of rows ``indices`` (in that order)."""
        return dataclasses.replace(
            self,
            rows=[self.rows[i] for i in indices],
            columns={k: [v[i] for i in indices] for k, v in self.columns.items()},
            prompts=[self.prompts[i] for i in indices],
            messages=[self.messages[i] for i in indices],
        )


@dataclass
class PromptCompletionDataset(_Base):
    """Prompt-completion pairs for supervised fine-tuning (rendered text)."""

    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "prompt": self.prompts[i],
            "completion": self.completions[i],
            **{k: v[i] for k, v in self.columns.items()},
        }


@dataclass
class PreferenceDataset(_Base):
    """Preference pairs. ``prompts[i]`` is the rendered prompt, ``chosen[i]`` / ``rejected[i]``
    the rendered completions that follow it (so ``prompts[i] + chosen[i]`` is the full text)."""

    prompts: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "prompt": self.prompts[i],
            "chosen": self.chosen[i],
            "rejected": self.rejected[i],
            **{k: v[i] for k, v in self.columns.items()},
        }


# --------------------------------------------------------------------------------------------
# reading raw records


def _jsonl_records(path: pathlib.Path) -> Iterator[tuple[int, Any, DataError | None]]:
    src = str(path)
    with path.open("r", encoding="utf-8") as fh:
        text = fh.read()
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(src, None, None, "invalid_json", f"invalid JSON: {exc}") from exc
        for i, rec in enumerate(arr, start=1):
            err = None
            if not isinstance(rec, dict):
                err = DataError(
                    src,
                    i,
                    None,
                    "not_object",
                    f"expected a JSON object, got {_type_name(rec)}",
                    row_note=f" (index {i - 1})",
                )
            yield i, rec, err
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, None, DataError(src, lineno, None, "invalid_json", f"invalid JSON: {exc}")
            continue
        if not isinstance(rec, dict):
            yield (
                lineno,
                None,
                DataError(
                    src,
                    lineno,
                    None,
                    "not_object",
                    f"expected a JSON object, got {_type_name(rec)}",
                ),
            )
            continue
        yield lineno, rec, None


def _arrow_rows(table: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _parquet_records(path: pathlib.Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the data/dev extras
        raise ImportError(f"reading {path} needs pyarrow: pip install 'rlhf-core[data]'") from exc
    try:
        return _arrow_rows(pq.read_table(path))
    except Exception as exc:
        raise DataError(str(path), None, None, "unreadable", f"cannot read Parquet: {exc}") from exc


def _datasets_dir_records(
    path: pathlib.Path, split: str | None
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    folder = path
    dd = path / "dataset_dict.json"
    if dd.is_file():
        splits = list(json.loads(dd.read_text(encoding="utf-8")).get("splits", []))
        if split is None:
            if len(splits) == 1:
                split = splits[0]
            elif "train" in splits:
                split = "train"
            else:
                raise DataError(
                    str(path),
                    None,
                    None,
                    "split",
                    f"a DatasetDict with splits {splits}; pass split= to choose one",
                )
        if split not in splits:
            raise DataError(str(path), None, None, "split", f"no split {split!r}; it has {splits}")
        folder = path / split
    elif split is not None:
        raise DataError(
            str(path), None, None, "split", f"split={split!r} given but {path} holds one dataset"
        )
    if not (folder / "state.json").is_file():
        raise DataError(
            str(folder),
            None,
            None,
            "unreadable",
            "not a dataset folder written by datasets' save_to_disk (no state.json)",
        )
    try:
        import datasets

        ds = datasets.load_from_disk(str(folder))
        return folder, list(ds.to_list())
    except ImportError:
        pass
    import pyarrow as pa

    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tables = []
    for entry in state.get("_data_files", []):
        fpath = folder / entry["filename"]
        with pa.memory_map(str(fpath), "r") as source:
            try:
                tables.append(pa.ipc.open_stream(source).read_all())
            except pa.ArrowInvalid:
                source.seek(0)
                tables.append(pa.ipc.open_file(source).read_all())
    if not tables:
        return folder, []
    return folder, _arrow_rows(pa.concat_tables(tables))


def read_records(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]], *, split: str | None = None
) -> tuple[str, list[tuple[int, Any, DataError | None]], str]:
    """Raw records of a source: ``(source name, [(row, record, error or None)], row note)``.

    ``row note`` is ``""`` for JSONL (rows are line numbers) and ``"index"`` for sources whose
    rows are record positions (the message then also gives the 0-based index)."""
    if not isinstance(path, (str, os.PathLike)):
        recs: list[tuple[int, Any, DataError | None]] = []
        for i, rec in enumerate(path, start=1):
            err = None
            if not isinstance(rec, Mapping):
                err = DataError(
                    "<list>",
                    i,
                    None,
                    "not_object",
                    f"expected a dict, got {_type_name(rec)}",
                    row_note=f" (index {i - 1})",
                )
            recs.append((i, rec, err))
        return "<list>", recs, "index"
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset {str(p)!r} does not exist")
    if p.is_dir():
        folder, rows = _datasets_dir_records(p, split)
        return str(folder), [(i, r, None) for i, r in enumerate(rows, start=1)], "index"
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        recs = list(_jsonl_records(p))
        array = (
            bool(recs)
            and recs[0][2] is None
            and p.suffix == ".json"
            and (p.read_text(encoding="utf-8").lstrip().startswith("["))
        )
        return str(p), recs, "index" if array else ""
    if suffix in (".parquet", ".pq"):
        return str(p), [(i, r, None) for i, r in enumerate(_parquet_records(p), start=1)], "index"
    raise ValueError(
        f"cannot tell the format of {str(p)!r}: expected .jsonl, .json, .parquet or a folder "
        "written by datasets' save_to_disk"
    )


# --------------------------------------------------------------------------------------------
# checking


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _is_conversation(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _check_text(v: Any, column: str) -> str:
    if not isinstance(v, str):
        raise _RowError(
            column,
            "wrong_type",
            f"expected a string or a list of {{role, content}} messages, got {_type_name(v)}",
        )
    if not v.strip():
        raise _RowError(column, "empty_text", "empty text")
    return v


def _check_messages(v: Any, column: str) -> list[Message]:
    if not _is_conversation(v):
        raise _RowError(
            column,
            "wrong_type",
            f"expected a string or a list of {{role, content}} messages, got {_type_name(v)}",
        )
    if len(v) == 0:
        raise _RowError(column, "empty_text", "empty conversation (no messages)")
    out: list[Message] = []
    for j, m in enumerate(v, start=1):
        if not isinstance(m, Mapping):
            raise _RowError(
                column,
                "wrong_type",
                f"message {j} is {_type_name(m)}, expected an object with 'role' and 'content'",
            )
        if "role" not in m or m["role"] is None:
            raise _RowError(column, "missing_role", f"message {j} has no 'role'")
        role = m["role"]
        if not isinstance(role, str):
            raise _RowError(
                column,
                "wrong_type",
                f"message {j}: 'role' is {_type_name(role)}, expected a string",
            )
        if role not in ROLES:
            raise _RowError(
                column,
                "unknown_role",
                f"message {j} has unknown role {role!r}; expected one of {list(ROLES)}",
            )
        if "content" not in m or m["content"] is None:
            raise _RowError(column, "missing_content", f"message {j} ({role}) has no 'content'")
        content = m["content"]
        if not isinstance(content, str):
            raise _RowError(
                column,
                "wrong_type",
                f"message {j} ({role}): 'content' is {_type_name(content)}, expected a string",
            )
        if not content.strip():
            raise _RowError(column, "empty_text", f"message {j} ({role}) has empty content")
        out.append(dict(m))
    return out


def _check_turns(msgs: Sequence[Message], column: str, *, start_index: int = 0) -> None:
    """System only first; then user/assistant alternating starting with user. ``msgs`` is the
    whole conversation; errors report positions from ``start_index`` on against ``column``."""
    expect = "user"
    for j, m in enumerate(msgs):
        role = m["role"]
        if role == "system":
            if j != 0:
                raise _RowError(
                    column,
                    "non_alternating_roles",
                    f"message {j + 1 - start_index} is a system message; only the first message may be",
                )
            continue
        if role != expect:
            pos = j + 1 - start_index
            raise _RowError(
                column,
                "non_alternating_roles",
                f"roles must alternate user/assistant starting with user: message {pos} is "
                f"{role!r} where {expect!r} was expected",
            )
        expect = "assistant" if role == "user" else "user"


def _check_prompt_end(msgs: Sequence[Message], column: str) -> None:
    if msgs[-1]["role"] != "user":
        raise _RowError(
            column,
            "non_alternating_roles",
            f"a prompt conversation must end with a user message, it ends with {msgs[-1]['role']!r}",
        )


def render_messages(
    messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False
) -> str:
    """The plain rendering used when no tokenizer chat template is available:
    ``"role: content\\n"`` per message, then ``"assistant: "`` when a reply is to follow."""
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


class _Renderer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.use_template = tokenizer is not None and bool(
            getattr(tokenizer, "chat_template", None)
        )
        if tokenizer is not None and not self.use_template:
            logger.info(
                "tokenizer has no chat template; conversations use the plain role: content format"
            )

    def prompt(self, msgs: list[Message]) -> str:
        if self.use_template:
            out = str(
                self.tokenizer.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=True
                )
            )
            return self._strip_bos(out)
        return render_messages(msgs, add_generation_prompt=True)

    def _strip_bos(self, text: str) -> str:
        """Drop a leading BOS the template wrote when encoding the text adds one anyway.

        Rendered prompts are later encoded with special tokens, so a template-written BOS
        would otherwise appear twice (``<bos><bos>...``).
        """
        bos = getattr(self.tokenizer, "bos_token", None)
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if not bos or bos_id is None or not text.startswith(bos):
            return text
        ids = self.tokenizer("x")["input_ids"]
        return text[len(bos) :] if ids and ids[0] == bos_id else text

    def completion(
        self,
        prompt_msgs: list[Message],
        completion_msgs: list[Message],
        prompt_text: str,
        column: str,
    ) -> str:
        full_msgs = prompt_msgs + completion_msgs
        if self.use_template:
            full = self._strip_bos(
                str(self.tokenizer.apply_chat_template(full_msgs, tokenize=False))
            )
        else:
            full = render_messages(full_msgs)
        if not full.startswith(prompt_text):
            raise _RowError(
                column,
                "template_mismatch",
                "the chat template renders prompt+completion so that it does not start with the "
                "rendered prompt; cannot split the completion off",
            )
        return full[len(prompt_text) :]


class _Lengths:
    def __init__(self, tokenizer: Any, unit: str | None) -> None:
        if unit is None:
            unit = "tokens" if tokenizer is not None else "chars"
        if unit not in ("chars", "tokens"):
            raise ValueError(f"length_unit must be 'chars' or 'tokens', got {unit!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("length_unit='tokens' needs a tokenizer")
        self.unit = unit
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def check(self, text: str, limit: int | None, column: str, what: str) -> None:
        if limit is None:
            return
        n = self(text)
        if n > limit:
            raise _RowError(
                column, "too_long", f"{what} is {n} {self.unit} long, over the limit of {limit}"
            )


# --------------------------------------------------------------------------------------------
# loading


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _run(
    path: Any,
    split: str | None,
    on_error: str,
    handle: Any,
    reserved: set[str],
) -> tuple[str, LoadReport, list[int], list[Any], dict[str, list[Any]]]:
    """Read records, run ``handle(rec) -> item`` on each, collect extra columns."""
    _check_on_error(on_error)
    source, records, note = read_records(path, split=split)
    report = LoadReport(source=source)
    rows: list[int] = []
    items: list[Any] = []
    extras: list[dict[str, Any]] = []
    for row, rec, err in records:
        report.total += 1
        if err is None:
            try:
                items.append(handle(rec))
                rows.append(row)
                extras.append({k: v for k, v in rec.items() if k not in reserved})
                report.kept += 1
                continue
            except _RowError as exc:
                err = DataError(
                    source,
                    row,
                    exc.column,
                    exc.kind,
                    exc.detail,
                    row_note=f" (index {row - 1})" if note else "",
                )
        if on_error == "raise":
            raise err
        report.skipped[err.kind] += 1
        if len(report.examples) < 5:
            report.examples.append(str(err))
    if report.skipped:
        logger.warning("%s", report)
    if report.kept == 0:
        detail = "no usable rows" + (f" ({report})" if report.total else " (empty)")
        raise DataError(source, None, None, "empty", detail)
    names: list[str] = []
    for e in extras:
        for k in e:
            if k not in names:
                names.append(k)
    columns = {k: [e.get(k) for e in extras] for k in names}
    return source, report, rows, items, columns


def _missing(rec: Mapping[str, Any]) -> str:
    return f"missing column (the row has {sorted(map(str, rec))})"


def _check_required(rec: Mapping[str, Any], required: Sequence[str]) -> None:
    for col in required:
        if col not in rec:
            raise _RowError(col, "missing_column", _missing(rec))


def load_prompts(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    prompt_column: str = "prompt",
    required_columns: Sequence[str] = (),
    tokenizer: Any = None,
    max_prompt_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
) -> PromptDataset:
    """Load a prompt-only dataset (for RL).

    Args:
        path: JSONL/JSON/Parquet file, ``save_to_disk`` folder, or a list of dicts.
        prompt_column: the column holding the prompt (text or messages).
        required_columns: extra columns every row must have (e.g. ``("answer",)``).
        tokenizer: renders conversational prompts with its chat template and measures lengths
            in tokens.
        max_prompt_length: rows whose rendered prompt is longer are malformed.
        length_unit: ``"chars"`` or ``"tokens"``; default tokens when a tokenizer is given.
        on_error: ``"raise"`` the first :class:`DataError`, or ``"skip"`` bad rows (counted in
            ``dataset.report``; a warning summarises them).
        split: which split of a ``DatasetDict`` folder (default: the only one, or ``train``).
    """
    render = _Renderer(tokenizer)
    lengths = _Lengths(tokenizer, length_unit)

    def handle(rec: Mapping[str, Any]) -> tuple[str, list[Message] | None]:
        _check_required(rec, [prompt_column, *required_columns])
        value = rec[prompt_column]
        if _is_conversation(value):
            msgs = _check_messages(value, prompt_column)
            _check_turns(msgs, prompt_column)
            _check_prompt_end(msgs, prompt_column)
            text = render.prompt(msgs)
            conv: list[Message] | None = msgs
        else:
            text = _check_text(value, prompt_column)
            conv = None
        lengths.check(text, max_prompt_length, prompt_column, "the prompt")
        return text, conv

    source, report, rows, items, columns = _run(path, split, on_error, handle, {prompt_column})
    return PromptDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(m is not None for _, m in items),
        prompts=[t for t, _ in items],
        messages=[m for _, m in items],
    )


def _pair_part(
    rec: Mapping[str, Any],
    column: str,
    prompt_msgs: list[Message] | None,
    prompt_text: str,
    render: _Renderer,
) -> str:
    value = rec[column]
    if prompt_msgs is not None:
        if not _is_conversation(value):
            if isinstance(value, str):
                raise _RowError(
                    column,
                    "mixed_format",
                    "the prompt is a conversation but this column is plain text; use the same "
                    "format for all columns of a row",
                )
            _check_messages(value, column)  # raises wrong_type
        msgs = _check_messages(value, column)
        _check_turns(prompt_msgs + msgs, column, start_index=len(prompt_msgs))
        return render.completion(prompt_msgs, msgs, prompt_text, column)
    if _is_conversation(value):
        raise _RowError(
            column,
            "mixed_format",
            "this column is a conversation but the prompt is plain text; use the same format "
            "for all columns of a row",
        )
    return _check_text(value, column)


def _implicit_prompt(
    rec: Mapping[str, Any], chosen: str, rejected: str
) -> tuple[list[Message], list[Message], list[Message]]:
    c = _check_messages(rec[chosen], chosen)
    r = _check_messages(rec[rejected], rejected)
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    if n == 0:
        raise _RowError(
            "prompt",
            "missing_column",
            "missing column, and chosen/rejected share no leading messages to take the prompt from",
        )
    while n > 0 and c[n - 1]["role"] != "user":
        n -= 1
    if n == 0:
        raise _RowError(
            "prompt",
            "missing_column",
            "missing column, and the messages chosen/rejected share do not end with a user turn",
        )
    return c[:n], c[n:], r[n:]


def load_preferences(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    prompt_column: str | None = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    tokenizer: Any = None,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
) -> PreferenceDataset:
    """Load a preference dataset (``prompt``, ``chosen``, ``rejected``).

    ``prompt_column=None`` means the rows have no prompt (plain-text pairs scored on their
    own; prompts come back as ``""``). Conversational rows without a prompt column take the
    messages ``chosen`` and ``rejected`` share as the prompt. A row whose chosen and rejected
    completions are equal is malformed (it carries no preference). ``max_prompt_length`` limits
    the rendered prompt, ``max_length`` the rendered prompt + completion (each side). Other
    arguments as in :func:`load_prompts`.
    """
    render = _Renderer(tokenizer)
    lengths = _Lengths(tokenizer, length_unit)

    def handle(rec: Mapping[str, Any]) -> tuple[str, str, str, bool]:
        _check_required(rec, [chosen_column, rejected_column])
        prompt_msgs: list[Message] | None = None
        if prompt_column is not None and prompt_column not in rec:
            if _is_conversation(rec[chosen_column]) and _is_conversation(rec[rejected_column]):
                prompt_msgs, c_msgs, r_msgs = _implicit_prompt(rec, chosen_column, rejected_column)
                rec = {**rec, chosen_column: c_msgs, rejected_column: r_msgs}
            else:
                raise _RowError(prompt_column, "missing_column", _missing(rec))
        elif prompt_column is not None:
            value = rec[prompt_column]
            if _is_conversation(value):
                prompt_msgs = _check_messages(value, prompt_column)
                _check_turns(prompt_msgs, prompt_column)
                _check_prompt_end(prompt_msgs, prompt_column)
            else:
                _check_text(value, prompt_column)
        if prompt_msgs is not None:
            ptext = render.prompt(prompt_msgs)
        elif prompt_column is not None:
            ptext = rec[prompt_column]
        else:
            ptext = ""
        pcol = prompt_column or "prompt"
        lengths.check(ptext, max_prompt_length, pcol, "the prompt")
        chosen = _pair_part(rec, chosen_column, prompt_msgs, ptext, render)
        rejected = _pair_part(rec, rejected_column, prompt_msgs, ptext, render)
        if chosen == rejected:
            raise _RowError(
                rejected_column, "same_pair", "chosen and rejected are identical (no preference)"
            )
        for col, text in ((chosen_column, chosen), (rejected_column, rejected)):
            lengths.check(ptext + text, max_length, col, "prompt + completion")
        return ptext, chosen, rejected, prompt_msgs is not None

    reserved = {chosen_column, rejected_column} | ({prompt_column} if prompt_column else set())
    source, report, rows, items, columns = _run(path, split, on_error, handle, reserved)
    return PreferenceDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(c for *_, c in items),
        prompts=[p for p, *_ in items],
        chosen=[c for _, c, _, _ in items],
        rejected=[r for _, _, r, _ in items],
    )


def load_prompt_completions(
    path: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    tokenizer: Any = None,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
) -> PromptCompletionDataset:
    """Load prompt-completion pairs for supervised fine-tuning (TRL's prompt-completion
    format); rules as in :func:`load_preferences` with one completion column."""
    render = _Renderer(tokenizer)
    lengths = _Lengths(tokenizer, length_unit)

    def handle(rec: Mapping[str, Any]) -> tuple[str, str, bool]:
        _check_required(rec, [prompt_column, completion_column])
        value = rec[prompt_column]
        prompt_msgs: list[Message] | None = None
        if _is_conversation(value):
            prompt_msgs = _check_messages(value, prompt_column)
            _check_turns(prompt_msgs, prompt_column)
            _check_prompt_end(prompt_msgs, prompt_column)
            ptext = render.prompt(prompt_msgs)
        else:
            ptext = _check_text(value, prompt_column)
        lengths.check(ptext, max_prompt_length, prompt_column, "the prompt")
        completion = _pair_part(rec, completion_column, prompt_msgs, ptext, render)
        lengths.check(ptext + completion, max_length, completion_column, "prompt + completion")
        return ptext, completion, prompt_msgs is not None

    source, report, rows, items, columns = _run(
        path, split, on_error, handle, {prompt_column, completion_column}
    )
    return PromptCompletionDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(c for *_, c in items),
        prompts=[p for p, _, _ in items],
        completions=[c for _, c, _ in items],
    )
